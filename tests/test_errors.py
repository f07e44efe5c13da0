"""Errors that teach: the exact text of the common user-facing errors (what, where, what to do)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner import cli
from tests.pg import Database
from tests.test_engine import env, seed, write_source

__all__ = ["env"]
ROOT = Path(__file__).resolve().parent.parent


def test_missing_setting(
    env: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unset ${secret.X}: names the variable and the template, says to set it."""
    source = write_source(tmp_path)
    source.write_text(source.read_text().replace("${secret.API_TOKEN:-tok-default}", "${secret.API_TOKEN}"))
    monkeypatch.delenv("API_TOKEN")
    assert cli.main(["run", str(source)]) == 2
    assert capsys.readouterr().err == (
        "error: missing setting: API_TOKEN (${secret.API_TOKEN}) — set the environment variable before running\n"
    )


def test_missing_column_names_the_migrate_command(
    env: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing status column: names table.column and the exact `syncrun migrate` command."""
    source = write_source(tmp_path)
    seed(env, source, appids=[1])
    env.run("alter table sync_status drop column last_alpha_sync")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["run", "alpha.yaml"]) == 2
    assert (
        capsys.readouterr().err == "error: sync_status.last_alpha_sync is missing: run `syncrun migrate alpha.yaml`\n"
    )


@pytest.mark.parametrize(
    ("args", "batch_size", "message"),
    [
        ([], "abc", "error: BATCH_SIZE must be a positive integer, got 'abc'\n"),
        ([], "-5", "error: BATCH_SIZE must be a positive integer, got '-5'\n"),
        (["--partition", "4"], "", "error: --partition must look like i/n (e.g. 0/4), got '4'\n"),
        (["--partition", "4/4"], "", "error: --partition 4/4: i must be between 0 and n-1\n"),
    ],
)
def test_bad_usage(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    batch_size: str,
    message: str,
) -> None:
    """Bad BATCH_SIZE and --partition values: exit 2 before connecting, with the exact text."""
    monkeypatch.setenv("BATCH_SIZE", batch_size)
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@127.0.0.1:1/x")
    assert cli.main(["run", str(write_source(tmp_path)), *args]) == 2
    assert capsys.readouterr().err == message


def test_unreachable_database_url(tmp_path: Path) -> None:
    """An unreachable DATABASE_URL: the redacted DSN and the driver's reason; exit 1, no fallback."""
    env = {**os.environ, "DATABASE_URL": "postgresql://u:hunter22@127.0.0.1:1/x", "API_URL": "http://127.0.0.1:1"}
    result = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(write_source(tmp_path))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot connect to postgresql://u:***@127.0.0.1:1/x: ")
    assert "hunter22" not in result.stderr
