"""The shared limiters through an outage of their store: PostgreSQL or Redis behind a proxy that is cut
(connections reset, connects refused) for a few seconds while grants are being taken, as a restart
or a failover does. The run's own connections wait ~17 s for their database (database.Link); the
limiter's must too, and the limit must hold across it."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runner import spec
from runner.ratelimit import DatabaseLimiter, RedisLimiter
from runner.ratelimit.shared import SharedLimiter
from tests.cutproxy import CutProxy
from tests.pg import Database
from tests.test_ratelimit_redis import REDIS_URL, _reachable

OUTAGE = 4.0  # seconds: the outside tester's; well inside database.RECONNECT_WAITS (~17 s)


def rate(scope: spec.LimitScope, bucket: str) -> spec.RateLimit:
    return spec.RateLimit(requests=4, per=0.4, burst=4, bucket=bucket, shared=scope)


@pytest.fixture
def pg_proxy(db: Database) -> Iterator[tuple[Database, CutProxy, str]]:
    """(db, a CutProxy to its server, a DSN for db through it), migrated."""
    db.migrate()
    info = conninfo_to_dict(db.dsn)
    with CutProxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)) as proxy:
        yield db, proxy, make_conninfo(db.dsn, host="127.0.0.1", port=str(proxy.port))


@pytest.fixture
def redis_proxy() -> Iterator[tuple[CutProxy, str]]:
    if (reason := _reachable()) is not None:
        pytest.skip(reason)
    parts = urlsplit(REDIS_URL)
    with CutProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        yield proxy, f"redis://127.0.0.1:{proxy.port}{parts.path or '/0'}"


def through_an_outage(limiter: SharedLimiter, cut: CutProxy, grants: int = 16) -> list[float]:
    """Three tasks take `grants` grants; after the 4th the proxy is cut for OUTAGE seconds. Returns the
    grant times (our clock). Every acquire must succeed: none may see the outage."""
    times: list[float] = []
    outage: list[threading.Thread] = []

    def down() -> None:
        cut.cut()
        time.sleep(OUTAGE)
        cut.restore()

    async def task(count: int) -> None:
        for _ in range(count):
            await limiter.acquire()
            times.append(time.monotonic())
            if len(times) == 4 and not outage:
                outage.append(threading.Thread(target=down))
                outage[0].start()

    async def main() -> None:
        try:
            await asyncio.gather(*(task(grants // 4) for _ in range(4)))
        finally:
            await limiter.aclose()

    asyncio.run(main())
    outage[0].join()
    return times


def test_a_database_limiter_reconnects_through_an_outage(
    pg_proxy: tuple[Database, CutProxy, str], caplog: pytest.LogCaptureFixture
) -> None:
    db, proxy, dsn = pg_proxy
    limiter = DatabaseLimiter(rate(spec.LimitScope.DATABASE, "outage"), dsn)
    with caplog.at_level(logging.WARNING, logger="runner.ratelimit"):
        times = through_an_outage(limiter, proxy)
    assert len(times) == 16
    assert "reconnecting in" in caplog.text
    assert max(b - a for a, b in itertools.pairwise(times)) >= OUTAGE / 2  # it did wait it out
    # The log, by the database's clock, never holds more than 4 in 0.4 s (+ margin): reservations whose
    # reply was lost stay there unused, which only makes it stricter.
    ats = [row[0] for row in db.rows("select extract(epoch from at)::float8 from syncrun_rate_log order by at")]
    window = 0.4 + limiter.margin
    assert len(ats) >= 16
    assert max(sum(1 for t in ats if s <= t < s + window - 1e-6) for s in ats) <= 4


def test_a_redis_limiter_reconnects_through_an_outage(
    redis_proxy: tuple[CutProxy, str], caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    proxy, url = redis_proxy
    bucket = f"outage-{uuid.uuid4().hex[:8]}"
    limiter = RedisLimiter(rate(spec.LimitScope.REDIS, bucket), url)
    with caplog.at_level(logging.WARNING, logger="runner.ratelimit"):
        times = through_an_outage(limiter, proxy)
    assert len(times) == 16
    assert "reconnecting in" in caplog.text
    client = redis.Redis.from_url(REDIS_URL)
    try:
        ats = sorted(score for _, score in client.zrange(limiter.keys[0], 0, -1, withscores=True))
    finally:
        client.close()
    window = 0.4 + limiter.margin  # (the keys before the outage expired during it: idle > 1 s)
    assert max(sum(1 for t in ats if s <= t < s + window - 1e-6) for s in ats) <= 4


def test_a_reserve_waiting_to_reconnect_is_cancelled_at_once(redis_proxy: tuple[CutProxy, str]) -> None:
    """A stopped run cancels the reserves waiting for a grant (RateLimitedTransport): one waiting to
    reconnect to a store that is gone ends then, not after the ~17 s of waits."""
    proxy, url = redis_proxy
    limiter = RedisLimiter(rate(spec.LimitScope.REDIS, f"gone-{uuid.uuid4().hex[:8]}"), url)
    proxy.cut()

    async def main() -> float:
        waiting = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(1.0)  # in its first waits by now
        assert not waiting.done()
        cancelled = time.monotonic()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await limiter.aclose()
        return time.monotonic() - cancelled

    assert asyncio.run(main()) < 3.0  # the waits are asyncio sleeps: cancelled in the same step
