"""listings: one reader per list source's listing (review16 F17, review16b N3/N4). A second run
started while the first is reading exits 75 before any job row or request, without touching the
checkpoint; the lease is a row (`syncrun_listings`), so a run through pgbouncer in transaction mode
leaves nothing held, and a SIGKILLed holder's lease lapses. Real PostgreSQL, a real loopback API,
the holder a real `syncrun` process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bench import faultlib
from runner import cli, listings
from tests.apiserver import ApiServer, Recorded, Reply
from tests.cluster import unavailable
from tests.pg import Database, make_source
from tests.test_incremental import SOURCE, TIMESTAMPS, env, source, stored, timestamps

__all__ = ["env"]
ROOT = Path(__file__).resolve().parent.parent


def _holder(file: Path, *args: str) -> subprocess.Popen[str]:
    """Run A: a real `syncrun run` process."""
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(file), *args],
        cwd=file.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )


def _held_at_page_2(api: ApiServer, changes: object) -> tuple[threading.Event, threading.Event]:
    arrived, gate = threading.Event(), threading.Event()

    def held(request: Recorded) -> Reply:
        if request.query.get("offset") == "2":
            arrived.set()
            gate.wait(60)
        return changes.reply(request)  # type: ignore[attr-defined]

    api.route("/changes", held)
    return arrived, gate


def test_a_second_run_of_a_listing_being_read_exits_75(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run A (a process) is held on page 2; run B of the same source exits 75 at once, naming A's
    job and when its lease lapses, with no job row, no request and A's checkpoint as it was. A then
    completes the listing and gives the lease back."""
    changes = timestamps(api)
    file = source(tmp_path, env)
    arrived, gate = _held_at_page_2(api, changes)
    first = _holder(file)
    try:
        assert arrived.wait(60), "run A never reached page 2"
        requests, checkpoint = len(api.requests), env.rows("select cursor from syncrun_cursors")
        job = env.scalar("select id::text from sync_jobs where status = 'running'")
        capsys.readouterr()
        assert cli.main(["run", str(file)]) == 75
        err = capsys.readouterr().err
        assert f"another run of changes is reading its listing (job {job}; its lease lapses at " in err
        assert "unless renewed); this run read nothing (exit 75: try again later)" in err
        assert len(api.requests) == requests
        assert env.rows("select cursor from syncrun_cursors") == checkpoint
        assert env.scalar("select count(*) from sync_jobs") == 1
    finally:
        gate.set()
        _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert stored(env) == {"type": "timestamp", "value": "2021-03-02T15:05:00+01:00"}
    assert env.scalar("select count(*) from syncrun_listings") == 0  # released at the end
    assert cli.main(["run", str(file)]) == 0
    assert job is not None


def test_a_sigkilled_holders_lease_lapses(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """Run A (heartbeat 0.2 s: a lease of 1.2 s) is killed with SIGKILL on page 2; its lease names its
    job and lapses without a heartbeat, and the next run takes it over and resumes A's checkpoint
    (review16b N4: no connection or session keeps a listing held)."""
    changes = timestamps(api)
    file = source(tmp_path, env)
    arrived, gate = _held_at_page_2(api, changes)
    first = _holder(file, "--heartbeat", "0.2")
    try:
        assert arrived.wait(60), "run A never reached page 2"
        job = env.scalar("select id::text from sync_jobs where status = 'running'")
        assert env.scalar("select job_id::text from syncrun_listings where source = 'changes'") == job
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    finally:
        gate.set()
    deadline = time.monotonic() + 30  # the database's clock decides; wait for it, not a fixed sleep
    while not env.scalar("select expires_at < now() from syncrun_listings where source = 'changes'"):
        assert time.monotonic() < deadline, "the lease never lapsed"
        time.sleep(0.05)
    assert cli.main(["run", str(file)]) == 0
    assert stored(env) == {"type": "timestamp", "value": "2021-03-02T15:05:00+01:00"}
    assert env.scalar("select count(*) from syncrun_listings") == 0
    # A's row stays `running` until a run reaps it (--stale-after), as for any killed runner
    assert env.scalar("select status from sync_jobs where id = %s", (job,)) == "running"


def test_a_lease_whose_job_was_reaped_is_taken_over(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A lease that has not lapsed, but whose job is no longer running (reaped by --stale-after, or
    finished without releasing it), is free; one whose job runs is not."""
    timestamps(api)
    file = source(tmp_path, env)
    job = env.scalar("insert into sync_jobs (job_type, status) values ('changes', 'running') returning id::text")
    env.run(
        "insert into syncrun_listings (source, holder, job_id, expires_at)"
        f" values ('changes', 'someone', '{job}', now() + interval '1 hour')"
    )
    assert cli.main(["run", str(file)]) == 75
    env.run(f"update sync_jobs set status = 'failed' where id = '{job}'")
    assert cli.main(["run", str(file)]) == 0
    assert env.scalar("select count(*) from syncrun_listings") == 0


def test_a_holder_that_lost_its_lease_stops_reading(db: Database) -> None:
    """A frozen holder (SIGSTOP) whose lease was taken over finds out at its next renewal: False, and
    the engine fails its run with LOST rather than read alongside the new holder."""
    db.migrate(make_source())
    # a lease of -6 s: lapsed when taken (the database's clock, no waiting)
    first, second = listings.Lease("changes", -1.0), listings.Lease("changes", 5.0)
    assert first.take(db.conn)
    assert second.take(db.conn)
    assert not first.renew(db.conn)
    first.release(db.conn)  # touches only its own lease
    assert db.scalar("select holder from syncrun_listings") == second.holder
    assert not listings.Lease("changes", 5.0).take(db.conn)


@pytest.fixture
def bouncer(cluster: faultlib.Cluster) -> Iterator[faultlib.Bouncer]:
    if shutil.which("pgbouncer") is None:
        unavailable("pgbouncer is not installed")
    proxy = faultlib.Bouncer(cluster)
    yield proxy
    proxy.close()


def test_through_pgbouncer_in_transaction_mode_the_next_run_is_not_busy(
    cluster: faultlib.Cluster,
    bouncer: faultlib.Bouncer,
    api: ApiServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """review16b N3: a completed run through a transaction-mode pooler leaves nothing held (the old
    session advisory lock stayed on a pooled server connection): the next runs, pooled or direct, read."""
    cluster.create_database("listings")
    pooled, direct = cluster.dsn("listings", port=bouncer.port), cluster.dsn("listings")
    timestamps(api)
    file = tmp_path / "changes.yaml"
    file.write_text(SOURCE.format(name="changes", incremental=TIMESTAMPS, cap=""))
    monkeypatch.setenv("API_URL", api.url)
    monkeypatch.setenv("DATABASE_URL", pooled)
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute("create table things (id int primary key, name text)")
        assert cli.main(["migrate", str(file)]) == 0
        for url in (pooled, pooled, direct, pooled):
            monkeypatch.setenv("DATABASE_URL", url)
            assert cli.main(["run", str(file), "--restart"]) == 0
            assert conn.execute("select count(*) from pg_locks where locktype = 'advisory'").fetchone() == (0,)
            assert conn.execute("select count(*) from syncrun_listings").fetchone() == (0,)
        assert conn.execute("select count(*) from things").fetchone() == (5,)
        assert conn.execute("select count(*) from sync_jobs where status = 'completed'").fetchone() == (4,)
