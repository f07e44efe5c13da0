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


SQL_SOURCE = """\
name: since
entities:
  type: sql
  columns: {appid: int, since: text}
  sql: >-
    select appid, since from seen where appid > coalesce(%(after_key)s, 0) and active
    order by appid limit %(limit)s
request:
  url: "${env.API_URL}/apps/{appid}?since={since}"
rate_limit: {requests: 100, per: 1s}
records: body
writes:
  - table: apps
    key: [appid]
    columns: {appid: entity.appid, name: record.name}
"""


@pytest.mark.parametrize("command", ["test-read", "run"])
def test_ids_on_an_sql_selection_run_the_selection_itself(
    command: str, env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--ids` on an sql selection crashed with KeyError 'since' (exit 70): the ids now go through the
    source's own query, so every column it returns is in the request; ids it leaves out exit 2."""
    source = write_source(tmp_path)
    seed(env, source, appids=[])
    env.run(
        "create table seen (appid int primary key, since text, active boolean);"
        " insert into seen values (1, '2024-01-01', true), (2, '2024-02-02', false)"
    )
    sql_source = tmp_path / "since.yaml"
    sql_source.write_text(SQL_SOURCE)
    assert cli.main(["migrate", str(sql_source)]) == 0
    api.route("/apps/1", app(1))
    args = [command, str(sql_source), "--ids", "1", *(["--dry-run"] if command == "run" else [])]
    assert cli.main(args) == 0
    assert [r.target for r in api.requests] == ["/apps/1?since=2024-01-01"]
    capsys.readouterr()
    assert cli.main([command, str(sql_source), "--ids", "1,2,3", *args[4:]]) == 2
    assert "--ids 2,3: entities.sql does not return them" in capsys.readouterr().err
    assert len(api.requests) == 1  # refused before any request
    assert env.scalar("select count(*) from sync_jobs") == 0
