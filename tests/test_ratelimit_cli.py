"""Rate limits as a user runs them: a real `syncrun` process, signals while waiting for a grant, and the
bundled SteamSpy catalogue source through a slow TLS network."""

from __future__ import annotations

import contextlib
import itertools
import signal
import time
from pathlib import Path

import pytest

from runner.ratelimit.local import FRESH
from tests.apiserver import ApiServer, Recorded, Reply
from tests.netproxy import DelayProxy, certificate
from tests.pg import Database
from tests.test_cli import start, wait_for
from tests.test_engine import app, seed, write_source
from tests.test_ratelimit_redis import REDIS_URL, _reachable

pytestmark = pytest.mark.timing  # every test here reads real time, or shares a module with those that do

ROOT = Path(__file__).resolve().parent.parent


def limited_source(tmp_path: Path, bucket: str, per: str, shared: str) -> Path:
    """The engine tests' source with `1 per <per>` in `bucket`, shared as given."""
    source = write_source(tmp_path, bucket=bucket)
    text = source.read_text()
    limit = text[text.index("rate_limit:") : text.index("\n", text.index("rate_limit:"))]
    declared = f"rate_limit: {{requests: 1, per: {per}, burst: 1, bucket: {bucket}, shared: {shared}}}"
    source.write_text(text.replace(limit, declared))
    return source


def run_env(db: Database, api: ApiServer, monkeypatch: pytest.MonkeyPatch, *, redis: str = REDIS_URL) -> dict[str, str]:
    """The environment a run of that source needs, also set in this process (for `seed`)."""
    env = {"DATABASE_URL": db.dsn, "API_URL": api.url, "API_TOKEN": "s3cr3t-token-value", "SYNCRUN_REDIS_URL": redis}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shared", "signum", "code"),
    [
        ("process", signal.SIGTERM, 143),
        ("process", signal.SIGINT, 130),
        ("database", signal.SIGTERM, 143),
        ("redis", signal.SIGTERM, 143),
    ],
)
def test_a_run_waiting_for_a_grant_stops_within_the_grace_period(
    shared: str, signum: int, code: int, db: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 request a minute: the first goes at once, the second waits ~60 s for its grant. A signal then
    ends the run within the grace period (2 s here): exit 128 + signal, job `cancelled`."""
    if shared == "redis" and (reason := _reachable()) is not None:
        pytest.skip(reason)
    source = limited_source(tmp_path, f"wait-{shared}-{time.time_ns()}", "60s", shared)
    env = run_env(db, api, monkeypatch)
    seed(db, source, appids=range(1, 4))
    for appid in range(1, 4):
        api.route(f"/apps/{appid}", app(appid))
    process = start(["run", str(source), "--grace", "2"], env)
    try:
        wait_for(lambda: len(api.requests) >= 1, timeout=20)
        time.sleep(1.0)  # the next tasks are now waiting for their grants (59 s away)
        assert len(api.requests) == 1
        signalled = time.monotonic()
        process.send_signal(signum)
        _, err = process.communicate(timeout=15)
        stopped = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == code, err
    assert stopped < 2 + 2.0, f"took {stopped:.1f} s after the signal"  # grace + shutdown
    assert db.scalar("select status from sync_jobs") == "cancelled"


def steamspy_page(recorded: Recorded) -> Reply:
    """Pages 0 and 1 hold two apps each; page 2 is the end of the catalogue (`{}`)."""
    page = int(recorded.query.get("page", "0"))
    apps = {
        str(appid): {"appid": appid, "name": f"App {appid}", "owners": "0 .. 20,000", "price": "999", "ccu": 3}
        for appid in (10 * page + 1, 10 * page + 2)
    }
    return Reply(200, json=apps if page < 2 else {}, headers={"Connection": "close"})


@pytest.mark.slow
@pytest.mark.parametrize("network", ["slow-tls", "loopback"])
def test_bundled_steamspy_source_requests_pages_a_minute_apart(
    network: str, db: Database, api: ApiServer, tmp_path: Path
) -> None:
    """sources/steamspy-all.yaml as shipped (1 per 60 s, shared: database) against a fake SteamSpy, every
    page on a new connection: `slow-tls` behind a TLS proxy whose connections take 100-300 ms to open and
    50 ms each way; `loopback` plain HTTP straight to the fake (issue #10's reproduction: one page in
    200 s, reservations minutes ahead). 3 pages, 60 +- 1 s apart at the server, the run completes, and
    the bucket's last reservation is not ahead of real time. About 2 minutes each."""
    api.route("/api.php", steamspy_page)
    cert, key = certificate(tmp_path)
    env = {"DATABASE_URL": db.dsn, "SSL_CERT_FILE": str(cert)}
    source = str(ROOT / "sources" / "steamspy-all.yaml")
    migrate = start(["migrate", "--tables", "steam", source], env)
    _, err = migrate.communicate(timeout=60)
    assert migrate.returncode == 0, err
    with contextlib.ExitStack() as stack:
        url = api.url
        if network == "slow-tls":
            url = stack.enter_context(DelayProxy(api.url, one_way=0.05, tls=(cert, key), lifetime=300)).url
        process = start(["run", source], {**env, "STEAMSPY_URL": url})
        try:
            _, err = process.communicate(timeout=200)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0, err
    arrivals = api.arrivals("/api.php")
    assert [r.query["page"] for r in api.requests] == ["0", "1", "2"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert all(60.0 <= gap <= 61.0 for gap in gaps), gaps
    assert db.scalar("select status from sync_jobs") == "completed"
    assert db.scalar("select seq from syncrun_rate_limits where bucket = 'steamspy-all'") == 3
    # Issue #10's reservations were minutes ahead. A send on a new plain-HTTP connection is stamped
    # FRESH (50 ms) later on purpose (the server may count it until it answers), so a run that ends
    # within 50 ms of its last send leaves that much ahead: 23 ms was seen in CI once runs got faster.
    ahead = db.scalar("select extract(epoch from last_at - clock_timestamp()) from syncrun_rate_limits")
    assert ahead < FRESH, f"the last reservation is {ahead:.3f} s in the future"


@pytest.mark.parametrize("shared", ["database", "redis"])
def test_a_limiter_failing_mid_run_leaves_the_requests_counted_and_no_task_dumps(
    shared: str, db: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bucket's declaration changes under the run (as another process declaring another limit): the
    next reservation is refused, every fetcher meets the refusal, and the run exits 2 with that message
    alone (no asyncio "Task exception was never retrieved" dump); the job row counts the requests that
    reached the server (it said 0)."""
    if shared == "redis" and (reason := _reachable()) is not None:
        pytest.skip(reason)
    bucket = f"midrun-{shared}-{time.time_ns()}"
    source = limited_source(tmp_path, bucket, "2s", shared)
    env = run_env(db, api, monkeypatch)
    seed(db, source, appids=range(1, 6))
    for appid in range(1, 6):
        api.route(f"/apps/{appid}", app(appid))
    process = start(["run", str(source), "--log-format", "json"], env)
    try:
        wait_for(lambda: len(api.requests) >= 1, timeout=20)
        if shared == "database":
            db.run(f"update syncrun_rate_limits set declared = 'another' where bucket = '{bucket}'")
        else:
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            client.hset(f"syncrun:ratelimit:{bucket}:state", "declared", "another")
            client.close()
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 2, err
    assert "is in use with another limit (another)" in err
    assert "never retrieved" not in err, err
    assert "Traceback" not in err, err
    status, made = db.rows("select status, requests_made from sync_jobs")[0]
    assert status == "failed"
    assert made == len(api.requests) >= 1


@pytest.mark.slow
def test_a_run_whose_limiter_waits_to_reconnect_stops_within_the_grace_period(
    db: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis cut under the run (the proxy refuses and resets): its reserves wait to reconnect (~17 s of
    waits); a SIGTERM then ends the run within the grace period, job `cancelled`, requests counted."""
    from tests.cutproxy import CutProxy

    if (reason := _reachable()) is not None:
        pytest.skip(reason)
    source = limited_source(tmp_path, f"cut-{time.time_ns()}", "1s", "redis")
    with CutProxy("127.0.0.1", 6379) as proxy:
        env = run_env(db, api, monkeypatch, redis=f"redis://127.0.0.1:{proxy.port}/0")
        seed(db, source, appids=range(1, 6))
        for appid in range(1, 6):
            api.route(f"/apps/{appid}", app(appid))
        process = start(["run", str(source), "--grace", "2"], env)
        try:
            wait_for(lambda: len(api.requests) >= 1, timeout=20)
            proxy.cut()
            time.sleep(1.5)  # the next reserve meets the cut and waits to reconnect (0.5 s, then 1 s, ...)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=15)
            stopped = time.monotonic() - signalled
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 143, err
    assert "reconnecting in" in err
    assert stopped < 2 + 2.0, f"took {stopped:.1f} s after the signal"  # grace + shutdown (the waits: 17 s)
    status, made = db.rows("select status, requests_made from sync_jobs")[0]
    assert status == "cancelled"
    assert made == len(api.requests) >= 1
