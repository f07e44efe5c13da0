"""`syncrun status`: due, never synced, backoff, claims, failing entities and the last runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner import cli, config, overview
from tests.apiserver import ApiServer, Reply
from tests.pg import Database
from tests.test_engine import app, env, seed, write_source

__all__ = ["env"]  # the fixture, re-used


def test_status_counts_after_a_run(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a run with one failure: due/never synced/failing counts, top error and the run's counters."""
    source = write_source(tmp_path)
    seed(env, source, appids=[1, 2, 3, 4])
    api.route("/apps/1", app(1))
    api.route("/apps/2", app(2))
    api.route("/apps/3", Reply(400, json={"error": "nope"}))
    api.route("/apps/4", app(4))
    assert cli.main(["run", str(source), "--limit", "3"]) == 0
    env.run(
        "insert into syncrun_state (source, entity_key, claimed_by, claim_expires_at)"
        " values ('alpha', '4', 'other', now() + interval '1 hour')"
    )
    capsys.readouterr()
    assert cli.main(["status", str(source), "--json"]) == 0
    (state,) = json.loads(capsys.readouterr().out)["sources"]
    assert state["source"] == "alpha"
    assert state["entities"] == 4
    assert state["never_synced"] == 2  # 3 failed, 4 never asked
    assert state["due"] == 0  # 3 backs off, 4 is claimed by another runner
    assert (state["backoff"], state["claimed"], state["failing"]) == (1, 1, 1)
    assert state["top_errors"] == [{"message": "HTTP 400", "count": 1}]
    (run,) = state["runs"]
    assert (run["status"], run["processed"], run["succeeded"], run["failed"]) == ("completed", 3, 2, 1)
    assert run["requests"] == 3
    assert run["rate"] > 0


def test_status_text(env: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The text form names the source, its counts and says when there are no runs yet."""
    source = write_source(tmp_path)
    seed(env, source, appids=[1, 2])
    capsys.readouterr()
    assert cli.main(["status", str(source)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("alpha (job type alpha, default selection)\n")
    # one population a line (review13 F8): the status table's syncable rows, then syncrun_state's entities
    assert "  status table: syncable 2   due now 2   never synced 2\n" in out
    assert (
        "  state, syncable or not: backing off 0   skip-until 0   claimed 0   failing 0   failing transiently 0\n"
        in out
    )
    assert "  no runs yet\n" in out


def test_status_before_migrate_says_to_migrate(env: Database, tmp_path: Path) -> None:
    """On a database without syncrun's tables, status says which command sets it up."""
    source = config.load(write_source(tmp_path))
    with pytest.raises(Exception, match=r"syncrun_state, sync_jobs are missing: .* run `syncrun migrate "):
        overview.collect(env.conn, source)
