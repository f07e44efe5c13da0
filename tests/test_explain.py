"""`syncrun test-read`: the dry run's explanation per entity, on the same code path, writing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import cli
from tests.apiserver import ApiServer, Reply
from tests.pg import Database
from tests.test_engine import app, env, seed, write_source

__all__ = ["env"]


def test_test_read_explains_each_entity(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """URL (secret masked), status, time, body, outcome and rule, rows per table; nothing written."""
    source = write_source(tmp_path)
    source.write_text(source.read_text().replace("{appid}", "{appid}?token=${secret.API_TOKEN}"))
    seed(env, source, appids=[1, 2])
    api.route("/apps/1", app(1))
    api.route("/apps/2", Reply(404))
    assert cli.main(["test-read", str(source), "--ids", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "── alpha appid=1 " in out
    assert "/apps/1?token=***" in out
    assert "  response  HTTP 200 in " in out
    assert '  body      HTTP 200 application/json: \'{"name": "App 1"' in out
    assert "  outcome   success (decided by: " in out
    assert "  apps: 1 row(s)\n" in out
    assert '"name": "App 1"' in out
    assert "  outcome   skip (decided by: " in out
    assert "s3cr3t-token-value" not in out
    assert "Dry run: nothing was written." in out
    assert env.scalar("select count(*) from apps") == 0
    assert env.scalar("select count(*) from sync_jobs") == 0


def test_test_read_needs_ids(capsys: pytest.CaptureFixture[str]) -> None:
    """--ids is required: test-read reads named entities, never the selection."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["test-read", "sources/example.yaml"])
    assert exit_info.value.code == 2
    assert "--ids" in capsys.readouterr().err
