"""Rate limits: one `Limiter` per bucket name, and the transport that spends its budget per attempt.

`N` requests `per` P seconds means: in every sliding window of length P, at most N requests arrive at
the API (retries and pages included), at most `burst` of them back to back. Does not retry; see
client.send. docs/rate-limits.md has the proof sketch and the measurements.

How the window is kept as the API counts it, not as the client grants:

- Every grant enters the log *open*: it counts in every window until it is stamped with the moment
  its bytes actually leave. `RateLimitedTransport` stamps it from httpcore's `trace` extension at
  `send_request_headers.started`, after the pool handed out a connection (and connected it), with no
  await left before the socket write. Time lost between the grant and the send (a busy event loop,
  a descheduled process, connection set-up) only moves the stamp later, which is always safe.
- Grants are *scheduled* against ideal slots (the burst rule spaces slots, not wake-ups), so an
  oversleeping `asyncio.sleep` delays one request, not every later one.

Why not pyrate-limiter (measured, 10 per 0.5 s, 30 concurrent tasks): its `InMemoryBucket` stacked
with a pacing rate reached 93.9 % of the limit with `buffer_ms=1` and 49 % with the default 50 ms,
because it works in whole milliseconds and adds the buffer to every wait; it cannot take an injected
clock or sleep; it records the grant, not the send; and a Retry-After pause would have to be layered
on top anyway. `shared: database` has its own table (see DatabaseLimiter and docs/rate-limits.md),
`shared: redis` its own Lua script (RedisLimiter).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, LiteralString, NamedTuple

import httpx
import psycopg

from runner import spec
from runner.database import redact_dsn
from runner.errors import DatabaseError, SchemaMismatch, UsageError

if TYPE_CHECKING:
    import redis.asyncio
    import redis.commands.core

log = logging.getLogger(__name__)

# Every window is padded by this much. The log stamps a request when its bytes are handed to the
# socket; the API counts it when it has read them. What varies in between (loopback or network
# transit, the server's own scheduling) can bunch arrivals stamped `per + margin` apart only if it
# varies by more than the margin. 10 ms costs 1 % of the rate at per = 1 s, 2 % at 0.5 s.
MARGIN = 0.010

# Request extension key: called right after the budget is granted. client.send uses it to start an
# attempt's timeout clock then, so time spent waiting for the budget never counts as a timeout.
GRANTED = "syncrun.granted"

# A request on a connection opened for it is logged as sent this much later than it was. Plain HTTP
# lets the client write as soon as the kernel completed the handshake, before the server's accept loop
# has taken the connection (and started a thread or task for it): on this 2-CPU machine the fifth of
# five simultaneous new connections was counted 24 ms after the write, benchmarks saw 23-42 ms. Moving
# a stamp later is always safe; it costs one shift of at most this much per new connection.
FRESH = 0.050

# DatabaseLimiter, RedisLimiter: a grant is a reservation of a moment, recorded before it is used (unlike the in-process
# log, which records when the grant actually happens). A process that gets to use it later than this
# (a reply delayed by the network, a busy CPU) leaves it unused and takes another, rather than bunch
# with the other processes' next grants. Half the margin: the rest absorbs the jitter after the grant.
LATE = MARGIN / 2

# DatabaseLimiter, RedisLimiter: how long a sample of the offset between our clock and the database's stays usable.
OFFSET_MEMORY = 10.0

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Grant:
    """One request's place in a limiter's budget, from `reserve()` until it is sent.

    `at`: the moment the grant was due (its scheduled slot; for `shared: database`, its reservation),
    by the limiter's clock. `sent`: when its bytes left, once `sending()` stamped it; None while open.
    """

    __slots__ = ("at", "paused_until", "sent")

    def __init__(self, at: float, paused_until: float) -> None:
        self.at = at
        self.paused_until = paused_until  # the bucket's pause when granted (DatabaseLimiter)
        self.sent: float | None = None


class Limiter:
    """At most `requests` sends in every window of `per` (+ margin) seconds, at most `burst` back to back.

    limiter = Limiter(spec.RateLimit(requests=10, per=1.0, bucket="steam"))
    await limiter.acquire()  # waits until one more request may be sent, and counts it as sent now
    limiter.pause(30)        # a Retry-After: every holder of this bucket waits 30 s

    The transport splits `acquire` in three, so that the log holds when requests really left:
    `grant = await reserve()` (an open grant: counted in every window), `await sending(grant)` right
    before the bytes go (stamps it), `release(grant)` when the attempt is over (stamps it now if it
    never got that far: a failed connect, a cancellation).

    The rules, for a grant at time T (W = per + margin, B = burst):
    - window: the open grants, plus the sends stamped after T - W, are at most requests - 1. Open
      grants count whatever their slot, so a request that leaves late can never be missed; stamps
      only ever move later than the slot, which only makes the limiter stricter.
    - burst: T >= the slot B grants ago + W * B / requests. Slots, not stamps: a grant that woke
      late does not push the schedule back (no drift); the window rule still sees when it left.
    - T >= the pause, and >= the moment the caller asked.
    """

    def __init__(
        self,
        rate: spec.RateLimit,
        *,
        margin: float = MARGIN,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        time_scale: float = 1.0,
    ) -> None:
        if not 1 <= rate.burst <= rate.requests:
            raise UsageError(f"rate_limit.burst must be between 1 and requests ({rate.requests}), got {rate.burst}")
        self.rate = rate
        # `--replay --rate-scale K`: the caller scales `rate.per`; server-given pauses scale here
        self.time_scale = time_scale
        self.requests = 0  # grants so far: every attempt of every page
        self._window = rate.per + margin
        self._spacing = self._window * rate.burst / rate.requests  # `burst` grants per spacing
        self._slots: deque[float] = deque(maxlen=rate.burst)  # scheduled times of the last `burst` grants
        self._sent: list[float] = []  # stamps of sent grants, ascending; the last `requests` matter
        self._open = 0  # grants not stamped yet
        self._stamped: asyncio.Future[None] | None = None  # resolved when an open grant is stamped
        self._paused_until = float("-inf")
        self._clock, self._sleep = clock, sleep
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None  # per event loop
        self._closed = False

    async def acquire(self) -> Grant:
        """Wait until one more request fits the budget (FIFO among waiters), then count it as sent now."""
        grant = await self.reserve()
        await self.sending(grant)
        return grant

    async def reserve(self) -> Grant:
        """Wait until one more request fits the budget (FIFO among waiters); the grant stays open
        (counted in every window) until `sending` or `release` stamps it."""
        if self._closed:
            raise RuntimeError(f"rate limiter for bucket '{self.rate.bucket}' is closed")
        async with self._loop_lock():  # one waiter at a time keeps the order fair and the log consistent
            asked = self._clock()
            while (slot := self._slot(asked)) > (now := self._clock()):
                if slot == math.inf:  # `requests` grants are open: wait until one is stamped
                    self._stamped = asyncio.get_running_loop().create_future()
                    await self._stamped
                else:
                    await self._sleep(slot - now)
            self._slots.append(slot)
            self._open += 1
            self.requests += 1
            return Grant(slot, self._paused_until)

    async def sending(self, grant: Grant, *, later: float = 0.0) -> bool:
        """Its bytes leave now: stamp `grant` (once), as if `later` seconds from now (FRESH for a new
        connection). Returns whether it was granted again (never here; see DatabaseLimiter)."""
        self._stamp(grant, later)
        return False

    def release(self, grant: Grant) -> None:
        """The attempt is over: a grant never stamped (the send failed before, or was cancelled) is
        stamped now, since it may have left at any moment until now."""
        self._stamp(grant)

    def pause(self, seconds: float) -> None:
        """Grant nothing for `seconds` (the server's Retry-After, divided by `time_scale`) from now;
        never shortens an earlier, longer pause."""
        self._paused_until = max(self._paused_until, self._clock() + seconds / self.time_scale)

    def close(self) -> None:
        self._closed = True

    async def aclose(self) -> None:
        """Close from inside the event loop (a shared limiter flushes its last pause first)."""
        self.close()

    def _loop_lock(self) -> asyncio.Lock:
        """An asyncio.Lock belongs to one event loop; a limiter may outlive one `asyncio.run`."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        return self._lock[1]

    def _slot(self, asked: float) -> float:
        """The earliest time the next grant may have, given the log as it is (inf: none until a stamp)."""
        slot = max(asked, self._paused_until)
        if len(self._slots) == self.rate.burst:
            slot = max(slot, self._slots[0] + self._spacing)
        room = self.rate.requests - self._open  # sends the window may still hold, the new one included
        if room <= 0:
            return math.inf
        if len(self._sent) >= room:  # the room-th latest send must have left the window
            slot = max(slot, self._sent[-room] + self._window)
        return slot

    def _stamp(self, grant: Grant, later: float = 0.0) -> None:
        if grant.sent is not None:
            return
        grant.sent = now = max(self._clock(), grant.at) + later
        self._open -= 1
        bisect.insort(self._sent, now)  # nearly always at the end; an out-of-order stamp goes in place
        if len(self._sent) > 2 * self.rate.requests:  # trim in batches: O(1) amortised
            del self._sent[: -self.rate.requests]
        if self._stamped is not None and not self._stamped.done():
            with contextlib.suppress(RuntimeError):  # its event loop may be gone
                self._stamped.set_result(None)


class _SharedLimiter(Limiter):
    """What `DatabaseLimiter` and `RedisLimiter` have in common: the log lives on a server, each grant is
    a reservation made there by the server's clock, mapped onto ours, slept until, and left unused
    (taken again) if used more than LATE after its time or overtaken by a pause.

    Subclasses provide `_remote_grant` (reserve one grant; returns (its time, the server's now), epoch
    seconds of the server's clock; `pause` > 0 first extends the shared pause) and `_remote_pause`.
    """

    def __init__(
        self,
        rate: spec.RateLimit,
        *,
        margin: float = MARGIN,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__(rate, margin=margin, clock=clock, sleep=sleep, time_scale=time_scale)
        self._flushes: set[asyncio.Task[None]] = set()  # background pause writes, kept referenced
        self._offsets: deque[tuple[float, float]] = deque()  # (our time, clock offset sample)
        self.discarded = 0  # grants reserved but not used: too late, or inside a pause

    async def reserve(self) -> Grant:
        if self._closed:
            raise RuntimeError(f"rate limiter for bucket '{self.rate.bucket}' is closed")
        async with self._loop_lock():
            while True:
                paused_until = self._paused_until
                granted_at, server_now = await self._remote_grant(paused_until - self._clock())
                deadline = granted_at + self._offset(self._clock() - server_now)
                while (remaining := deadline - self._clock()) > 0:
                    await self._sleep(remaining)
                if self._clock() - deadline > LATE:
                    # the grant came back (or we woke) too late: sent now, the request could bunch with
                    # the next processes' on-time ones. Leave it unused (it still counts) and take another.
                    self.discarded += 1
                elif self._paused_until > paused_until:
                    self.discarded += 1  # paused meanwhile: this grant falls inside the pause
                else:
                    break
            self.requests += 1
            return Grant(deadline, paused_until)

    async def sending(self, grant: Grant, *, later: float = 0.0) -> bool:
        """The same check at the moment the bytes leave, which may be well after `reserve` returned
        (the first request of a run connects first; a busy loop delays the write): a reservation now
        more than LATE old, or overtaken by a pause, is left unused and a new one taken before the
        write. Returns whether that happened (the caller restarts its attempt clock). `later` cannot
        be honoured: the reservation is already in the shared log."""
        if grant.sent is not None:
            return False
        regranted = False
        while self._clock() - grant.at > LATE or self._paused_until > grant.paused_until:
            self.requests -= 1  # it was counted as used
            self.discarded += 1
            fresh = await self.reserve()
            grant.at, grant.paused_until, regranted = fresh.at, fresh.paused_until, True
        grant.sent = self._clock()
        return regranted

    def release(self, grant: Grant) -> None:
        """Nothing to record: the server's log holds the reservation, which the send never precedes."""
        if grant.sent is None:
            grant.sent = self._clock()

    def pause(self, seconds: float) -> None:
        super().pause(seconds)
        seconds /= self.time_scale
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._pause_outside_loop(seconds)
            return
        task = loop.create_task(self._remote_pause(seconds))
        self._flushes.add(task)
        task.add_done_callback(self._flushed)

    async def _remote_grant(self, pause: float) -> tuple[float, float]:
        raise NotImplementedError

    async def _remote_pause(self, seconds: float) -> None:
        raise NotImplementedError

    def _pause_outside_loop(self, seconds: float) -> None:
        """`pause` called with no event loop running: the pause travels with the next grant."""

    def _offset(self, sample: float) -> float:
        """Our clock minus the server's, from `sample` = (our time on receipt - its time on reply).

        A sample overstates the offset by the reply's travel time, which varies (network, thread
        hand-over, a busy CPU); the smallest recent sample is the closest to the truth. Using it rather
        than this reply's own keeps that variation out of the send times (it would bunch arrivals), and
        it can never make a grant early, since every sample is >= the true offset. Samples expire after
        OFFSET_MEMORY seconds so clock drift cannot accumulate.
        """
        now, samples = self._clock(), self._offsets
        samples.append((now, sample))
        while samples[0][0] < now - OFFSET_MEMORY:
            samples.popleft()
        return min(s for _, s in samples)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning(
                "could not share the pause of bucket '%s' (it travels with the next grant): %s", self.rate.bucket, exc
            )


class DatabaseLimiter(_SharedLimiter):
    """A `Limiter` whose budget and pause live in PostgreSQL, shared by every process using the bucket.

    Each grant is one statement, `syncrun_rate_grant(...)` (runner/sql/0002_rate_limits.sql): under
    the bucket row's lock it reserves the earliest moment the sliding-window and burst rules allow,
    by the database's clock, records it in the row's ring of the last `requests` grants and returns
    the wait. The caller then sleeps that long. One process holds at most one reservation at a time
    (its waiters queue FIFO behind an asyncio lock, as in `Limiter`), so processes take turns.

    `pause()` records the Retry-After locally at once and in the row (`paused_until`) in the
    background; every later reservation by any process starts after it. A reservation granted
    before the pause was recorded may still be used, like a request already in flight in-process.

    Blocking psycopg calls run in a worker thread (`asyncio.to_thread`): one autocommit connection per
    limiter, opened on the first acquire, closed by `close()`.
    """

    def __init__(
        self,
        rate: spec.RateLimit,
        dsn: str,
        *,
        margin: float = MARGIN,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__(rate, margin=margin, clock=clock, sleep=sleep, time_scale=time_scale)
        self._dsn = dsn
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._conn_lock = threading.Lock()  # grant and pause threads share the connection

    async def connect(self) -> None:
        """Open the connection now and check the migration is there (else `acquire` does it lazily)."""
        found = await asyncio.to_thread(self._call, "select to_regproc('syncrun_rate_grant') is not null", ())
        if not found:
            raise self._missing()

    def close(self) -> None:
        super().close()
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def _remote_grant(self, pause: float) -> tuple[float, float]:
        return await asyncio.to_thread(self._grant, pause)

    async def _remote_pause(self, seconds: float) -> None:
        await asyncio.to_thread(self._write_pause, seconds)

    def _pause_outside_loop(self, seconds: float) -> None:
        self._write_pause(seconds)

    # --- blocking, in a worker thread ---
    def _grant(self, pause: float) -> tuple[float, float]:
        """Reserve one grant: (its time, the time now), epoch seconds by the database's clock.
        `pause` > 0 also extends the shared pause."""
        rate = self.rate
        granted_at, db_now = self._call(
            "select syncrun_rate_grant(%s, %s, %s, %s, %s)",
            (rate.bucket, rate.requests, self._window, rate.burst, pause if pause > 0 else None),
        )
        return float(granted_at), float(db_now)

    def _write_pause(self, seconds: float) -> None:
        self._call("select syncrun_rate_pause(%s, %s)", (self.rate.bucket, seconds))

    def _call(self, query: LiteralString, params: tuple[Any, ...]) -> Any:
        with self._conn_lock:
            if self._closed:
                raise RuntimeError(f"rate limiter for bucket '{self.rate.bucket}' is closed")
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self._dsn, autocommit=True, prepare_threshold=None)
                row = self._conn.execute(query, params).fetchone()
            except psycopg.errors.UndefinedFunction:
                raise self._missing() from None
            except psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    self._conn = None  # reconnect on the next grant
                raise DatabaseError(f"rate-limit bucket '{self.rate.bucket}': PostgreSQL failed: {exc}") from None
            assert row is not None
            return row[0]

    def _missing(self) -> SchemaMismatch:
        return SchemaMismatch(
            f"rate_limit.shared: database (bucket '{self.rate.bucket}') needs syncrun's syncrun_rate_limits"
            " table (migration 0002); run `syncrun migrate` against this database"
        )


# RedisLimiter: the bucket's keys are REDIS_PREFIX + bucket (its log) and that + ":state".
REDIS_PREFIX = "syncrun:ratelimit:"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# One grant, atomically (a script runs alone on the server). KEYS[1]: the bucket's log, a sorted set of
# its last `requests` grant times (score: epoch seconds by this server's clock). KEYS[2]: its state, a
# hash {seq: grants so far, paused_until}. ARGV: requests, window (per + margin), burst, pause (seconds
# to extend the shared pause by first; <= 0: none). The rules are syncrun_rate_grant's (migration 0002).
# Returns {the grant's time, now} as strings, and passes scores as strings: Lua numbers would be
# truncated to integers on return and rounded to 14 digits (100 us) when passed to a command.
REDIS_GRANT = """
pcall(redis.replicate_commands)  -- Redis < 5: allow writes after TIME
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local requests, window, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local pause = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[2], 'seq', 'paused_until')
local seq = (tonumber(state[1]) or 0) + 1
local paused = tonumber(state[2]) or 0
if pause > 0 then paused = math.max(paused, now + pause) end
local function ago(n, plus)  -- the grant n ago (the n-th latest in the log) + plus; 0 if none
  local row = redis.call('ZRANGE', KEYS[1], -n, -n, 'WITHSCORES')
  if row[2] then return tonumber(row[2]) + plus end
  return 0
end
local at = math.max(now, paused, ago(1, 0), ago(requests, window), ago(burst, window * burst / requests))
local when = string.format('%.6f', at)
redis.call('ZADD', KEYS[1], when, string.format('%d:', seq) .. when)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -requests - 1)
redis.call('HSET', KEYS[2], 'seq', string.format('%d', seq), 'paused_until', string.format('%.6f', paused))
-- an idle bucket vanishes once its log imposes nothing (and its pause is over), plus a second
local ttl = math.ceil((math.max(at + window, paused) - now) * 1000) + 1000
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return {when, string.format('%.6f', now)}
"""

# A Retry-After: grant nothing in the bucket for ARGV[1] seconds from now (never shortens a longer pause).
REDIS_PAUSE = """
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local paused = math.max(tonumber(redis.call('HGET', KEYS[2], 'paused_until')) or 0, now + tonumber(ARGV[1]))
redis.call('HSET', KEYS[2], 'paused_until', string.format('%.6f', paused))
local ttl = math.ceil((paused - now) * 1000) + 1000
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return string.format('%.6f', paused)
"""


def redis_url_from_env(environ: Mapping[str, str]) -> str:
    """`$SYNCRUN_REDIS_URL`, else DEFAULT_REDIS_URL (a Redis on this machine)."""
    return environ.get("SYNCRUN_REDIS_URL") or DEFAULT_REDIS_URL


class RedisLimiter(_SharedLimiter):
    """A `Limiter` whose budget and pause live in Redis, shared by every process using the bucket there.

    Same semantics as `DatabaseLimiter`, by the Redis server's clock (`TIME`, read inside the script):
    each grant is one atomic Lua script, REDIS_GRANT (EVALSHA, loaded again if the server lost it),
    which reserves the earliest moment the window, burst and pause rules allow and records it in the
    bucket's sorted set; the caller sleeps until then. Grants used more than LATE after their time, or
    overtaken by a pause, are left unused and taken again. `pause()` applies locally at once and is
    written to the bucket's state in the background (and travels with the next grant).

    `redis.asyncio`, imported here so syncrun works without the package: one connection per limiter
    (per event loop), opened on the first acquire. `close()` inside its event loop closes it in a task
    (after any pause still being written); `await aclose()` also waits for that.
    """

    def __init__(
        self,
        rate: spec.RateLimit,
        url: str = DEFAULT_REDIS_URL,
        *,
        margin: float = MARGIN,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        time_scale: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        try:
            import redis.asyncio  # noqa: F401  # lazily: an optional dependency
        except ImportError:
            raise UsageError(
                f"rate_limit.shared: redis (bucket '{rate.bucket}') needs the redis package:"
                " pip install 'syncrun[redis]' (or use shared: database or shared: process)"
            ) from None
        super().__init__(rate, margin=margin, clock=clock, sleep=sleep, time_scale=time_scale)
        self.url = url
        self.keys = [REDIS_PREFIX + rate.bucket, REDIS_PREFIX + rate.bucket + ":state"]
        self._timeout = timeout
        self._redis: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis, _Scripts] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        """Check Redis answers now (else `acquire` connects lazily)."""
        client, _ = self._client()
        await self._call(client.ping())

    def close(self) -> None:
        super().close()
        if self._redis is None:
            return
        loop, client, _ = self._redis
        self._redis = None
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        shutdown = self._shutdown(client, set(self._flushes))
        if running is loop:
            # close() is synchronous: a task, whose first step (the disconnect, unless a pause is still
            # being written) runs before `asyncio.run` cancels what is left at its end
            task = loop.create_task(shutdown)
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        elif running is None and not loop.is_closed():
            loop.run_until_complete(shutdown)
        else:  # its event loop is gone, and its connection with it
            shutdown.close()

    async def aclose(self) -> None:
        """`close()`, and wait until the connection is closed."""
        self.close()
        await asyncio.gather(*self._closing, return_exceptions=True)

    @staticmethod
    async def _shutdown(client: redis.asyncio.Redis, flushes: set[asyncio.Task[None]]) -> None:
        """Close the client's one connection once the pauses being written are written."""
        try:
            await asyncio.gather(*flushes, return_exceptions=True)
        finally:
            connection, client.connection = client.connection, None
            if connection is not None:
                await connection.disconnect(nowait=True)  # no await inside: done in this step

    async def _remote_grant(self, pause: float) -> tuple[float, float]:
        rate = self.rate
        _, scripts = self._client()
        args = (rate.requests, repr(self._window), rate.burst, repr(pause if pause > 0 else 0.0))
        granted_at, server_now = await self._call(scripts.grant(keys=self.keys, args=args))
        return float(granted_at), float(server_now)

    def _remote_pause(self, seconds: float) -> Coroutine[Any, Any, None]:
        _, scripts = self._client()  # now: a `close()` right after this call waits for the write
        return self._call(scripts.pause(keys=self.keys, args=(repr(seconds),)))

    def _client(self) -> tuple[redis.asyncio.Redis, _Scripts]:
        """This event loop's client (a limiter may outlive one `asyncio.run`), made on first use."""
        if self._closed:
            raise RuntimeError(f"rate limiter for bucket '{self.rate.bucket}' is closed")
        loop = asyncio.get_running_loop()
        if self._redis is None or self._redis[0] is not loop:
            import redis.asyncio
            import redis.asyncio.retry
            import redis.backoff

            client = redis.asyncio.Redis.from_url(
                self.url,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                single_connection_client=True,  # one connection per limiter, as for shared: database
                retry=redis.asyncio.retry.Retry(redis.backoff.ExponentialBackoff(cap=0.5, base=0.05), 2),
            )
            scripts = _Scripts(client.register_script(REDIS_GRANT), client.register_script(REDIS_PAUSE))
            self._redis = (loop, client, scripts)
        return self._redis[1], self._redis[2]

    async def _call(self, command: Awaitable[Any]) -> Any:
        import redis.exceptions

        try:
            return await command
        except (redis.exceptions.RedisError, OSError) as exc:
            raise DatabaseError(
                f"rate-limit bucket '{self.rate.bucket}': Redis at {redact_dsn(self.url)} failed: {exc}"
            ) from None


class _Scripts(NamedTuple):
    grant: redis.commands.core.AsyncScript
    pause: redis.commands.core.AsyncScript


def limiters(
    rate_limits: Iterable[spec.RateLimit],
    *,
    margin: float = MARGIN,
    dsn: str | None = None,
    redis_url: str | None = None,
    time_scale: float = 1.0,
) -> dict[str, Limiter]:
    """One limiter per bucket name: sources naming the same bucket share it.

    `shared: database` buckets get a `DatabaseLimiter` on `dsn` (the run's database; its first
    search_path schema must hold migration 0002's `syncrun_rate_limits`), shared by every process
    that uses the bucket name there. `shared: redis` buckets get a `RedisLimiter` on `redis_url`
    (None: DEFAULT_REDIS_URL; the CLI passes `redis_url_from_env`); without the redis package that
    is a UsageError. No connection is opened until the first `acquire`.

    Sources sharing a bucket must declare the same requests/per/burst/shared: a silent "stricter wins"
    would hide a typo and cannot rank 10/s against 500/min, so a mismatch is a UsageError.
    """
    by_bucket: dict[str, Limiter] = {}
    for rate in rate_limits:
        if (existing := by_bucket.get(rate.bucket)) is not None:
            if _limits(existing.rate) != _limits(rate):
                raise UsageError(
                    f"rate-limit bucket '{rate.bucket}' is declared twice with different limits"
                    f" ({_describe(existing.rate)} and {_describe(rate)}); sources sharing a bucket must"
                    " declare the same requests, per, burst and shared"
                )
            continue
        if rate.shared is spec.LimitScope.PROCESS:
            by_bucket[rate.bucket] = Limiter(rate, margin=margin, time_scale=time_scale)
        elif rate.shared is spec.LimitScope.DATABASE:
            if dsn is None:
                raise UsageError(
                    f"rate_limit.shared: database (bucket '{rate.bucket}') needs a database:"
                    " set DATABASE_URL (or --dsn), or use shared: process"
                )
            by_bucket[rate.bucket] = DatabaseLimiter(rate, dsn, margin=margin, time_scale=time_scale)
        elif rate.shared is spec.LimitScope.REDIS:
            url = redis_url or DEFAULT_REDIS_URL
            by_bucket[rate.bucket] = RedisLimiter(rate, url, margin=margin, time_scale=time_scale)
        else:
            raise UsageError(
                f"rate_limit.shared: {rate.shared} (bucket '{rate.bucket}') is not supported;"
                " use shared: process, database or redis"
            )
    return by_bucket


def _limits(rate: spec.RateLimit) -> tuple[int, float, int, spec.LimitScope]:
    return rate.requests, rate.per, rate.burst, rate.shared


def _describe(rate: spec.RateLimit) -> str:
    shared = "" if rate.shared is spec.LimitScope.PROCESS else f", shared: {rate.shared}"
    return f"{rate.requests} per {rate.per:g} s, burst {rate.burst}{shared}"


class RateLimitedTransport(httpx.AsyncBaseTransport):
    """Wait for the bucket's budget before every request an `AsyncClient` sends, retries included, and
    stamp the grant when the request's bytes actually leave.

    With httpx's own transport (httpcore) the stamp comes from the `trace` extension at
    `send_request_headers.started`: the connection is taken from the pool (and connected) by then, and
    nothing awaits between that event and the socket write. Any other inner transport (MockTransport,
    httpx-aiohttp) has no such event: the grant is stamped as it is handed over, and what that
    transport does before writing (connecting, its own pool) is not seen; see docs/rate-limits.md.

    Wraps rather than subclasses, so tests build `RateLimitedTransport(httpx.MockTransport(h), limiter)`
    and exercise the production path.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, limiter: Limiter) -> None:
        self._inner, self._limiter = inner, limiter
        self._traced = isinstance(inner, httpx.AsyncHTTPTransport)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        limiter = self._limiter
        grant = await limiter.reserve()
        extensions = request.extensions
        previous = extensions.get("trace")
        try:
            granted = extensions.get(GRANTED)
            if callable(granted):
                granted()
            if not self._traced:
                if await limiter.sending(grant) and callable(granted):
                    granted()
                return await self._inner.handle_async_request(request)

            fresh = False  # this request opened its connection

            async def trace(event: str, info: dict[str, Any]) -> None:
                nonlocal fresh
                if previous is not None:
                    await previous(event, info)
                if event.startswith("connection.connect_tcp."):
                    fresh = True
                elif not event.endswith(".send_request_headers.started"):
                    return
                # the last thing before the write: nothing awaits between this stamp and the socket
                elif await limiter.sending(grant, later=FRESH if fresh else 0.0) and callable(granted):
                    granted()  # granted again (DatabaseLimiter): restart the attempt's clock

            extensions["trace"] = trace
            return await self._inner.handle_async_request(request)
        finally:
            limiter.release(grant)
            if previous is None:
                extensions.pop("trace", None)
            else:
                extensions["trace"] = previous

    async def aclose(self) -> None:
        await self._inner.aclose()
