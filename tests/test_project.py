"""`syncrun init`: a new project that validates, refuses to overwrite, and runs against the demo API."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from runner import cli, demo, project
from tests.pg import Database

EXPECTED = {
    "syncrun.yaml",
    "sources/example.yaml",
    ".github/workflows/syncrun-validate.yml",
    ".github/workflows/syncrun-example.yml",
    "requirements.txt",
    ".gitignore",
    "README.md",
}


def _written(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def test_init_writes_a_project_that_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 0; every file listed; `syncrun validate` (default sources/*.yaml) passes inside it."""
    assert cli.main(["init", str(tmp_path / "proj")]) == 0
    root = tmp_path / "proj"
    assert _written(root) == EXPECTED
    monkeypatch.chdir(root)
    assert cli.main(["validate"]) == 0
    example = (root / "sources" / "example.yaml").read_text()
    assert example.startswith("# The annotated example source")
    assert "$schema" not in example  # the checkout's schema path means nothing in a project
    assert f"syncrun=={metadata.version('syncrun')}" in (root / "requirements.txt").read_text().splitlines()


def test_init_workflows_validate_and_run_on_schedule(tmp_path: Path) -> None:
    """Both workflows are YAML GitHub accepts the shape of; validation on push, the example on a cron,
    both installing syncrun from requirements.txt."""
    project.init(tmp_path)
    flows = tmp_path / ".github" / "workflows"
    check = yaml.safe_load((flows / "syncrun-validate.yml").read_text())
    steps = [step.get("run", "") for step in check["jobs"]["validate"]["steps"]]
    assert set(check[True]) == {"push", "pull_request"}  # YAML 1.1 reads the key `on` as True
    assert "syncrun validate" in steps
    scheduled = yaml.safe_load((flows / "syncrun-example.yml").read_text())
    assert scheduled[True]["schedule"][0]["cron"]
    run_steps = [step.get("run", "") for step in scheduled["jobs"]["sync"]["steps"]]
    assert "python -m pip install -r requirements.txt" in run_steps
    assert any(step.startswith("exec syncrun run sources/example.yaml") for step in run_steps)
    assert "python -m pip install -r requirements.txt" in steps


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2 naming every file init would write that exists; nothing is written, the existing files
    are untouched."""
    (tmp_path / "requirements.txt").write_text("mine\n")
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / "example.yaml").write_text("name: mine\n")
    assert cli.main(["init", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "requirements.txt") in err
    assert str(tmp_path / "sources" / "example.yaml") in err
    assert _written(tmp_path) == {"requirements.txt", "sources/example.yaml"}
    assert (tmp_path / "requirements.txt").read_text() == "mine\n"


def test_init_into_an_existing_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unrelated files do not stop init, and a repository's own README.md and .gitignore are kept as
    they are (said on stderr, with the line .gitignore needs); the rest is written and validates."""
    (tmp_path / "README.md").write_text("# my repo\n")
    (tmp_path / ".gitignore").write_text("*.pyc\n")
    (tmp_path / "main.py").write_text("print()\n")
    assert cli.main(["init", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert _written(tmp_path) == EXPECTED | {"main.py"}
    assert (tmp_path / "README.md").read_text() == "# my repo\n"
    assert (tmp_path / ".gitignore").read_text() == "*.pyc\n"
    assert "wrote" not in " ".join(line for line in captured.out.splitlines() if "README" in line)
    assert f"kept {tmp_path / 'README.md'} as it is" in captured.err
    assert "add .syncrun/" in captured.err
    monkeypatch.chdir(tmp_path)
    assert cli.main(["validate"]) == 0


def test_init_inside_another_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A parent folder's syncrun.yaml (a monorepo, another project) with other defaults does not
    decide the new project's: init validates against its own syncrun.yaml, writes everything, and
    the project validates from inside it."""
    (tmp_path / "syncrun.yaml").write_text("entities:\n  key: station_id\n  key_type: text\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", "myproj"]) == 0
    assert _written(tmp_path / "myproj") == EXPECTED
    monkeypatch.chdir(tmp_path / "myproj")
    assert cli.main(["validate"]) == 0


def test_init_files_end_with_one_newline(tmp_path: Path) -> None:
    """Every file init writes, the README included, ends with exactly one newline."""
    written, kept = project.init(tmp_path)
    assert kept == []
    assert len(written) == len(EXPECTED)
    for path in written:
        text = path.read_text()
        assert text.endswith("\n"), path
        assert not text.endswith("\n\n"), path


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    """`syncrun --version` prints the installed distribution's version and exits 0."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"syncrun {metadata.version('syncrun')}\n"


@pytest.mark.slow
def test_the_example_runs_against_the_demo_api(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The project README's flow: `demo --serve --seed` (tables, 40 apps, the API), then a run: exit 0,
    every app stamped but the unknown one, a games row per listed app."""
    project.init(tmp_path)
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "DATABASE_URL": db.dsn}
    with subprocess.Popen(
        [sys.executable, "-m", "runner", "demo", "--serve", "--port", "0", "--seed", "sources/example.yaml"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    ) as server:
        try:
            assert server.stdout is not None
            seeded = server.stdout.readline()
            assert "40 demo app(s) added to sync_status" in seeded, seeded
            url = server.stdout.readline().split()[3]  # "demo API on http://127.0.0.1:PORT (Ctrl-C stops it)"
            monkeypatch.setenv("DATABASE_URL", db.dsn)
            monkeypatch.setenv("EXAMPLE_API_URL", url)
            assert cli.main(["sources/example.yaml"]) == 0
        finally:
            server.terminate()
    # every app but the unknown one (a 404 is a skip that is not stamped) carries the stamp
    stamped = db.scalar("select count(*) from sync_status where last_example_sync is not null")
    assert stamped == len(demo.DEMO_APPIDS) - 1
    assert db.scalar("select count(*) from games") == len(demo.DEMO_APPIDS) - 2  # delisted and unknown have none
