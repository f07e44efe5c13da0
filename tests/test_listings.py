"""listings: one reader per list source's listing (review16 F17). A second run started while the
first is reading exits 75 before any job row or request, without touching the checkpoint; real
PostgreSQL advisory locks, a real loopback API, the first run a real `syncrun` process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from runner import cli, listings
from tests.apiserver import ApiServer, Recorded, Reply
from tests.pg import Database
from tests.test_incremental import env, source, stored, timestamps

__all__ = ["env"]
ROOT = Path(__file__).resolve().parent.parent


def test_a_second_run_of_a_listing_being_read_exits_75(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """Run A (a process) is held on page 2; run B of the same source exits 75 at once, naming A's
    job, with no job row, no request and A's checkpoint as it was. A then completes the listing."""
    changes = timestamps(api)
    file = source(tmp_path, env)
    arrived, gate = threading.Event(), threading.Event()

    def held(request: Recorded) -> Reply:
        if request.query.get("offset") == "2":
            arrived.set()
            gate.wait(60)
        return changes.reply(request)

    api.route("/changes", held)
    first = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(file)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert arrived.wait(60), "run A never reached page 2"
        requests, checkpoint = len(api.requests), env.rows("select cursor from syncrun_cursors")
        job = env.scalar("select id::text from sync_jobs where status = 'running'")
        assert cli.main(["run", str(file)]) == 75
        assert len(api.requests) == requests
        assert env.rows("select cursor from syncrun_cursors") == checkpoint
        assert env.scalar("select count(*) from sync_jobs") == 1
    finally:
        gate.set()
        _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert stored(env) == {"type": "timestamp", "value": "2021-03-02T15:05:00+01:00"}
    assert cli.main(["run", str(file)]) == 0  # the lock went with run A's connection
    assert job is not None


def test_the_lock_is_the_sources_own(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Held by another session: this source is busy (the message says so), and exits 75 with no job
    row; released: it runs. Another source's lock is another key."""
    timestamps(api)
    file = source(tmp_path, env)
    with psycopg.connect(env.dsn, autocommit=True) as other:  # the same schema: the same key
        other.execute(f"select pg_advisory_lock({listings.KEY})", ("changes",))
        capsys.readouterr()
        assert cli.main(["run", str(file)]) == 75
        assert (
            "another run of changes is reading its listing; this run read nothing (exit 75" in capsys.readouterr().err
        )
        assert env.scalar("select count(*) from sync_jobs") == 0
        other.execute(f"select pg_advisory_unlock({listings.KEY})", ("changes",))
    assert cli.main(["run", str(file)]) == 0
