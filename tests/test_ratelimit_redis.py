"""ratelimit, `shared: redis`: one bucket across limiters and OS processes through Redis (RedisLimiter).

The tests that talk to Redis use the server on 127.0.0.1:6379 (SYNCRUN_TEST_REDIS_URL to change it) and
skip when none answers: Redis is an optional backend. Every test uses its own bucket name, since CI and
other runs share that server.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from runner import spec
from runner.errors import DatabaseError, UsageError
from runner.ratelimit import (
    DEFAULT_REDIS_URL,
    LATE,
    MARGIN,
    REDIS_PREFIX,
    Limiter,
    RedisLimiter,
    limiters,
    redis_url_from_env,
)
from tests.apiserver import ApiServer, Reply, SkippingClock
from tests.noise import Noise
from tests.test_ratelimit_shared import check_shared_rate, check_shared_window, wait_workers

pytestmark = pytest.mark.timing  # every test here reads real time, or shares a module with those that do

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("SYNCRUN_TEST_REDIS_URL", DEFAULT_REDIS_URL)


def shared(requests: int, per: float, *, burst: int = 1, bucket: str = "b") -> spec.RateLimit:
    return spec.RateLimit(requests=requests, per=per, burst=burst, bucket=bucket, shared=spec.LimitScope.REDIS)


class FakeTime(SkippingClock):
    """Our clock for a limiter against the real Redis: sleeps skipped (by `extra` more than asked, once,
    if set), `slept` adds them up."""

    def __init__(self) -> None:
        super().__init__()
        self.slept, self.extra = 0.0, 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds + self.extra
        self.slept += seconds + self.extra
        self.extra = 0.0


def _reachable() -> str | None:
    """None if a Redis answers PING at REDIS_URL, else why not."""
    try:
        import redis
    except ImportError:
        return "the redis package is not installed (pip install 'syncrun[redis]')"
    parts = urlsplit(REDIS_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=0.5).close()
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=1.0)
        try:
            client.ping()
        finally:
            client.close()
    except (OSError, redis.RedisError) as exc:
        return f"no Redis at {REDIS_URL} ({exc}); shared: redis is an optional backend"
    return None


@pytest.fixture(scope="module")
def redis_url() -> str:
    if (reason := _reachable()) is not None:
        if os.environ.get("CI") == "true":  # CI provides a Redis: a missing one must fail, not pass quietly
            pytest.fail(reason)
        pytest.skip(reason)
    return REDIS_URL


@pytest.fixture
def bucket(redis_url: str) -> Iterator[str]:
    """A bucket name of this test's own; its keys are deleted afterwards."""
    import redis

    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(REDIS_PREFIX + name, REDIS_PREFIX + name + ":state", REDIS_PREFIX + name + ":tat")
    finally:
        client.close()


def _log(redis_url: str, bucket: str) -> tuple[list[float], dict[bytes, bytes], int]:
    """The bucket's grant times (ascending), its state hash and the log's TTL in ms."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        times = [score for _, score in client.zrange(REDIS_PREFIX + bucket, 0, -1, withscores=True)]
        return times, client.hgetall(REDIS_PREFIX + bucket + ":state"), client.pttl(REDIS_PREFIX + bucket)
    finally:
        client.close()


# --- without a server ------------------------------------------------------------------------------------
def test_registry_builds_redis_limiters() -> None:
    """shared: redis buckets get a RedisLimiter on the given URL (default: DEFAULT_REDIS_URL); no
    connection is opened until the first acquire."""
    pytest.importorskip("redis")
    process = spec.RateLimit(requests=5, per=1.0, bucket="local")
    registry = limiters([shared(10, 1.0, bucket="steam"), process], redis_url="redis://cache:6380/2")
    steam = registry["steam"]
    assert isinstance(steam, RedisLimiter)
    assert steam.url == "redis://cache:6380/2"
    assert steam.keys == ["syncrun:ratelimit:steam", "syncrun:ratelimit:steam:state", "syncrun:ratelimit:steam:tat"]
    assert type(registry["local"]) is Limiter
    default = limiters([shared(10, 1.0)])["b"]
    assert isinstance(default, RedisLimiter)
    assert default.url == DEFAULT_REDIS_URL
    for limiter in [*registry.values(), default]:
        limiter.close()


def test_redis_url_from_env() -> None:
    assert redis_url_from_env({}) == DEFAULT_REDIS_URL == "redis://127.0.0.1:6379/0"
    assert redis_url_from_env({"SYNCRUN_REDIS_URL": ""}) == DEFAULT_REDIS_URL
    assert redis_url_from_env({"SYNCRUN_REDIS_URL": "redis://h:1/3"}) == "redis://h:1/3"


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the redis package, shared: redis is a UsageError naming the fix; syncrun itself imports."""
    monkeypatch.setitem(sys.modules, "redis", None)  # `import redis` now raises ImportError
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(
        UsageError, match=r"shared: redis \(bucket 'b'\) needs the redis package: pip install 'syncrun\[redis\]'"
    ):
        limiters([shared(10, 1.0)])


def test_unreachable_redis_is_a_database_error_with_the_url_redacted() -> None:
    pytest.importorskip("redis")
    limiter = RedisLimiter(shared(10, 1.0), "redis://:s3cret@127.0.0.1:1/0", timeout=1.0)

    async def main() -> None:
        try:
            with pytest.raises(
                DatabaseError, match=r"bucket 'b': Redis at redis://:\*\*\*@127.0.0.1:1/0 failed"
            ) as info:
                await limiter.acquire()
            assert "s3cret" not in str(info.value)
        finally:
            await limiter.aclose()

    asyncio.run(main())


# --- against the server ---------------------------------------------------------------------------------
def test_grants_follow_the_in_process_rules(redis_url: str, bucket: str) -> None:
    """6 per 0.6 s, burst 2, 8 grants: the script reserves pairs (0.6 + margin) * 2 / 6 s apart by the
    server's clock (a fake sleep: no real waiting), the 7th a full window after the 1st; the log keeps
    every grant (it keeps requests + burst + 64) and expires once it imposes nothing."""
    fake = FakeTime()
    limiter = RedisLimiter(shared(6, 0.6, burst=2, bucket=bucket), redis_url, clock=fake.clock, sleep=fake.sleep)

    async def main() -> list[float]:
        try:
            return [(await limiter.acquire()).at for _ in range(8)]
        finally:
            await limiter.aclose()

    local = asyncio.run(main())
    granted, state, ttl = _log(redis_url, bucket)
    window, spacing = 0.6 + MARGIN, (0.6 + MARGIN) * 2 / 6
    assert len(granted) == 8  # trimmed beyond requests + burst + 64
    assert int(state[b"seq"]) == 8
    assert limiter.requests == 8
    assert limiter.discarded == 0
    slots = [round((t - granted[0]) / spacing) for t in granted]
    assert slots == [0, 0, 1, 1, 2, 2, 3, 3], granted
    assert all(later - earlier >= spacing - 1e-6 for earlier, later in zip(granted, granted[2:], strict=False))
    # grants 1..8 as this process saw them: the same schedule, mapped onto its clock
    assert [round((t - local[0]) / spacing) for t in local] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert granted[6] - granted[0] >= window - 1e-6  # (the first may have been re-stamped: Redis connected first)
    # the last reservation is 3 spacings after the first (made at once), + the window, + 1 s
    assert 1000 < ttl <= (3 * spacing + window + 1.0) * 1000 + 50


def test_a_late_grant_is_restamped_not_discarded(redis_url: str, bucket: str) -> None:
    """A process that wakes more than LATE after its reservation moves it on the server to cover the
    real send (nothing younger relies on it): no grant is lost, and the log shows the move."""
    fake = FakeTime()
    limiter = RedisLimiter(shared(2, 0.5, bucket=bucket), redis_url, clock=fake.clock, sleep=fake.sleep)

    async def main() -> None:
        try:
            await limiter.acquire()
            fake.extra = LATE + 0.02  # the sleep until the second reservation overshoots
            await limiter.acquire()
        finally:
            await limiter.aclose()

    asyncio.run(main())
    granted, state, _ = _log(redis_url, bucket)
    assert (limiter.requests, limiter.discarded, limiter.restamped) == (2, 0, 1)
    assert int(state[b"seq"]) == 2
    assert granted[1] - granted[0] >= (0.5 + MARGIN) / 2 + LATE + 0.02 - 1e-6


def test_a_restamp_that_a_younger_reservation_relies_on_is_refused(redis_url: str, bucket: str) -> None:
    """1 per 0.5 s, two processes: A's reservation is late, but B has already reserved the next slot
    from it; moving A's would put both in one window, so A leaves it unused and reserves again after B."""
    fake = FakeTime()
    rate = shared(1, 0.5, bucket=bucket)
    a = RedisLimiter(rate, redis_url, clock=fake.clock, sleep=fake.sleep)
    b = RedisLimiter(rate, redis_url)

    async def main() -> tuple[bool, float]:
        try:
            first = await a.reserve()
            await b.reserve()  # real clock: B holds the slot one window after A's
            fake.now += LATE + 0.02
            regranted = await a.sending(first)
            return regranted, first.at
        finally:
            await a.aclose()
            await b.aclose()

    regranted, _ = asyncio.run(main())
    granted, state, _ = _log(redis_url, bucket)
    assert regranted
    assert (a.discarded, a.restamped) == (1, 0)
    assert int(state[b"seq"]) == 3
    assert granted[1] - granted[0] >= 0.5 + MARGIN - 1e-6
    assert granted[2] - granted[1] >= 0.5 + MARGIN - 1e-6


def test_a_restamp_does_not_hold_back_other_reservations_and_the_window_holds(redis_url: str, bucket: str) -> None:
    """2 per 1 s, burst 2: A's first grant is used 0.3 s late and re-stamped; B's, reserved after,
    goes at once (not at the re-stamped time, the bucket's latest grant), B's next one a window after
    the 2nd latest by time, and no window of the log holds 3 (test_ratelimit_shared's, on Redis)."""
    fake, other = FakeTime(), FakeTime()
    rate = shared(2, 1.0, burst=2, bucket=bucket)
    a = RedisLimiter(rate, redis_url, clock=fake.clock, sleep=fake.sleep)
    b = RedisLimiter(rate, redis_url, clock=other.clock, sleep=other.sleep)

    async def main() -> None:
        try:
            first = await a.reserve()
            fake.now += 0.3  # A connected slowly
            assert not await a.sending(first)
            for _ in range(2):
                await b.sending(await b.reserve())
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(main())
    granted, state, _ = _log(redis_url, bucket)
    assert (a.restamped, a.discarded, b.discarded) == (1, 0, 0)
    assert int(state[b"seq"]) == 3
    second, moved, third = granted  # ascending: B's first went before A's moved one
    assert second < moved  # B's first did not wait for A's re-stamped grant (it was >= it: the floor)
    assert third - second >= 1.0 + MARGIN - 1e-6  # the 2nd latest when it was reserved: never 3 in a window
    assert float(state[b"last"]) == third


def test_pause_is_shared_between_limiters(redis_url: str, bucket: str) -> None:
    """A Retry-After on one limiter (6 s at time_scale 10: 0.6 s) holds another limiter's next grant,
    by the server's clock, and a later, shorter pause does not shorten it."""
    fake = FakeTime()
    first = RedisLimiter(shared(100, 1.0, bucket=bucket), redis_url, time_scale=10.0)
    second = RedisLimiter(shared(100, 1.0, bucket=bucket), redis_url, clock=fake.clock, sleep=fake.sleep)

    async def main() -> float:
        try:
            await second.acquire()
            first.pause(6.0)
            first.pause(1.0)
            await asyncio.gather(*first._flushes)
            slept = fake.slept
            await second.acquire()
            return fake.slept - slept
        finally:
            await first.aclose()
            await second.aclose()

    waited = asyncio.run(main())
    assert 0.5 <= waited <= 0.6 + 1e-3, waited
    _, state, _ = _log(redis_url, bucket)
    assert float(state[b"paused_until"]) > 0


def test_the_script_is_loaded_again_when_the_server_lost_it(redis_url: str, bucket: str) -> None:
    """EVALSHA with a fallback: after SCRIPT FLUSH (a restarted server) the next grant still works."""
    import redis

    limiter = RedisLimiter(shared(100, 1.0, bucket=bucket), redis_url)

    async def main() -> None:
        try:
            await limiter.acquire()
            admin = redis.Redis.from_url(redis_url)
            try:
                admin.script_flush()
            finally:
                admin.close()
            await limiter.acquire()
        finally:
            await limiter.aclose()

    asyncio.run(main())
    assert _log(redis_url, bucket)[1][b"seq"] == b"2"


@pytest.mark.slow
def test_three_processes_share_one_limit(redis_url: str, bucket: str, api: ApiServer) -> None:
    """3 OS processes x 8 tasks on 10 per 0.5 s for 6 s (12 periods): no server-side window over 10,
    combined schedule >= 90 % of 20/s (`check_shared_rate`).
    Three processes on 2 CPUs contend for every grant: now and then a late send's re-stamp is refused
    (another process already reserved after it) and that slot is lost, ~3 % of a 6 s run (it was a
    coin toss against 90 % over 3 s; docs/rate-limits.md, re-stamps)."""
    api.route("/x", Reply(200, json={}))
    start = time.time() + 2.0  # interpreters and imports take ~0.5 s each
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [redis_url, api.url + "/x", bucket, 10, 0.5, 1, 8, start, start + 6.0]
    command = [sys.executable, "-m", "tests.shared_limit_worker", *map(str, args)]
    with Noise() as noise:
        processes = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
        workers = wait_workers(processes)
    arrivals = api.arrivals("/x")
    check_shared_window(workers, api, noise, 10, 0.5)
    check_shared_rate(workers, arrivals, noise, 20)
    assert len({r.query["w"] for r in api.requests if r.path == "/x"}) == 3


def test_a_reservation_abandoned_while_waiting_is_given_back(redis_url: str, bucket: str) -> None:
    """1 per 60 s: a run stopped while waiting for its second grant gives the reservation back, so the
    log holds one grant and the next reservation is the first + 60 s, not + 120 s."""
    rate = shared(1, 60.0, bucket=bucket)

    async def main() -> RedisLimiter:
        limiter = RedisLimiter(rate, redis_url)
        try:
            await limiter.acquire()
            waiting = asyncio.create_task(limiter.acquire())
            await asyncio.sleep(0.3)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        finally:
            await limiter.aclose()
        return limiter

    limiter = asyncio.run(main())
    granted, state, _ = _log(redis_url, bucket)
    assert limiter.requests_given_back == 1
    assert len(granted) == 1
    assert int(state[b"seq"]) == 1

    async def next_slot() -> float:
        other = RedisLimiter(rate, redis_url)
        try:
            return (await other._remote_grant(0.0)).at
        finally:
            await other.aclose()

    assert asyncio.run(next_slot()) == pytest.approx(granted[0] + 60.0 + limiter.margin, abs=0.01)


def test_another_limit_for_a_bucket_in_use_is_refused(redis_url: str, bucket: str) -> None:
    """As with shared: database: a different limit for a bucket whose last grant still binds is a usage
    error naming both (two processes stalled each other without a word); later, the new one takes over."""

    async def grant(rate: spec.RateLimit) -> None:
        limiter = RedisLimiter(rate, redis_url)
        try:
            await limiter.acquire()
        finally:
            await limiter.aclose()

    asyncio.run(grant(shared(2, 0.4, bucket=bucket)))
    with pytest.raises(UsageError) as refused:
        asyncio.run(grant(shared(3, 9.0, burst=3, bucket=bucket)))
    keys = f"{REDIS_PREFIX}{bucket} {REDIS_PREFIX}{bucket}:state {REDIS_PREFIX}{bucket}:tat"
    assert str(refused.value) == (
        f"rate-limit bucket {bucket} is in use with another limit (2 per 0.41 s, burst 1) than this process"
        " declares (3 per 9.045 s, burst 3): every process sharing a bucket must declare the same limit."
        " If no process uses the old limit any more, clear the bucket (its budget starts afresh) with:"
        f" redis-cli -u {redis_url} DEL {keys}"
    )
    time.sleep(0.5)
    asyncio.run(grant(shared(3, 9.0, burst=3, bucket=bucket)))
    with pytest.raises(UsageError) as refused:  # a long one binds: the recipe in the message takes it over
        asyncio.run(grant(shared(10, 365 * 86400.0, bucket=bucket)))
    assert "(3 per 9.045 s, burst 3) than this process declares (10 per 31693680 s, burst 1)" in str(refused.value)
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(*str(refused.value).split(" DEL ", 1)[1].split())
    finally:
        client.close()
    asyncio.run(grant(shared(10, 365 * 86400.0, bucket=bucket)))


def test_an_idle_token_bucket_expires_a_second_after_it_is_full_again(redis_url: str, bucket: str) -> None:
    """docs/rate-limits.md: the keys expire 1 s after the log imposes nothing. For the token form that is
    its tat (one interval after a single grant), not tat + the burst's tolerance (they lived 2x as long)."""
    rate = spec.RateLimit(
        requests=1, per=2.0, burst=3, bucket=bucket, shared=spec.LimitScope.REDIS, form=spec.LimitForm.TOKEN
    )

    async def grant() -> None:
        limiter = RedisLimiter(rate, redis_url)
        try:
            await limiter.acquire()
        finally:
            await limiter.aclose()

    asyncio.run(grant())
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        ttls = [client.pttl(key) for key in (REDIS_PREFIX + bucket, REDIS_PREFIX + bucket + ":state")]
    finally:
        client.close()
    assert all(0 < ttl <= (2.0 + 0.01) * 1000 + 1000 for ttl in ttls), ttls  # was 5020
