"""`shared: redis`: the budget and pause of a bucket in Redis, one atomic Lua script per grant."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from runner import spec
from runner.database import redact_dsn
from runner.errors import DatabaseError, StoreUnreachable, UsageError
from runner.ratelimit.local import Clock, Sleep
from runner.ratelimit.shared import Reservation, SharedLimiter, refused

if TYPE_CHECKING:
    import redis.asyncio
    import redis.commands.core

# RedisLimiter: the bucket's keys are REDIS_PREFIX + bucket (its log) and that + ":state".
REDIS_PREFIX = "syncrun:ratelimit:"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# One grant, atomically (a script runs alone on the server). KEYS[1]: the bucket's log, a sorted set of
# its last grants (member: the grant's number; score: its time, epoch seconds by this server's clock).
# KEYS[2]: its state, a hash {seq: grants so far, paused_until, last: the latest grant's time, tat: the
# token form's GCRA state}. KEYS[3]: the token form's tat right after each grant (a hash by seq), which a
# re-stamp refolds from the grant it moves. ARGV: requests, window (per + margin; token form: the tolerance), burst,
# pause (seconds to extend the shared pause by first; <= 0: none), interval (> 0: the token form's
# seconds per token), the bucket's name (for messages). The rules are syncrun_rate_reserve's (migration
# 0011), including the refusal of another limit while the bucket's last grant still binds. Returns {the grant's
# time, now, seq} as strings, and passes scores as strings: Lua numbers would be truncated to integers
# on return and rounded to 14 digits (100 us) when passed to a command.
REDIS_GRANT = """
pcall(redis.replicate_commands)  -- Redis < 5: allow writes after TIME
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local requests, window, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local pause, interval = tonumber(ARGV[4]), tonumber(ARGV[5])
local state = redis.call('HMGET', KEYS[2], 'seq', 'paused_until', 'last', 'tat', 'declared', 'declared_for')
local declared
if interval > 0 then declared = string.format('a token every %.6f s, burst %d', interval, burst)
else declared = string.format('%d per %.6f s, burst %d', requests, window, burst) end
if state[5] and state[5] ~= declared and (tonumber(state[3]) or 0) + (tonumber(state[6]) or 0) > now then
  return redis.error_reply('syncrun: rate-limit bucket ' .. ARGV[6] .. ' is in use with another limit ('
    .. state[5] .. ') than this process declares (' .. declared .. ')')
end
local seq = (tonumber(state[1]) or 0) + 1
local paused = tonumber(state[2]) or 0
local last = tonumber(state[3]) or 0
local tat = tonumber(state[4]) or 0
if pause > 0 then paused = math.max(paused, now + pause) end
local function ago(n, plus)  -- the n-th latest grant time in the log + plus; 0 if none
  local row = redis.call('ZRANGE', KEYS[1], -n, -n, 'WITHSCORES')
  if row[2] then return tonumber(row[2]) + plus end
  return 0
end
local at
if interval > 0 then  -- token form: GCRA, `window` is the tolerance
  at = math.max(now, paused, last, tat - window)
  tat = math.max(tat, at) + interval
else  -- no `last` floor: a re-stamp moved it, and the exact n-th latest keeps the window (docs/rate-limits.md)
  at = math.max(now, paused, ago(requests, window), ago(burst, window * burst / requests))
end
local when = string.format('%.6f', at)
last = math.max(last, at)  -- the latest grant time, whichever grant it is
redis.call('ZADD', KEYS[1], when, string.format('%d', seq))
local gone = redis.call('ZRANGE', KEYS[1], 0, -(requests + burst + 64) - 1)
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('HDEL', KEYS[3], unpack(gone))
end
if interval > 0 then redis.call('HSET', KEYS[3], string.format('%d', seq), string.format('%.6f', tat)) end
redis.call('HSET', KEYS[2], 'seq', string.format('%d', seq), 'paused_until', string.format('%.6f', paused),
           'last', string.format('%.6f', last), 'tat', string.format('%.6f', tat),
           'declared', declared, 'declared_for', string.format('%.6f', math.max(window, interval)))
-- an idle bucket vanishes 1 s after its log imposes nothing and its pause is over: the window form's
-- latest grant + window; the token form's tat (the bucket is full again then; `window` there is the
-- burst's tolerance, which made the keys live (burst - 1) intervals too long)
local imposes = tat
if interval <= 0 then imposes = last + math.max(window, 0) end
local ttl = math.ceil((math.max(imposes, paused) - now) * 1000) + 1000
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return {when, string.format('%.6f', now), string.format('%d', seq)}
"""

# Reservation ARGV[1] is used ARGV[2] seconds late: move it that much later unless a reservation already
# made relies on it where it was (syncrun_rate_restamp's rules, migration 0003). ARGV[3..6]: requests,
# window, burst, interval (> 0: token form; KEYS[3] holds the fold). Returns the
# new time as a string, or false (nil to the client) when refused.
# Give back reservation ARGV[1], never used (its run stopped while waiting), if it is the latest: a
# younger one was computed from it (syncrun_rate_unreserve's rule, migration 0003). Returns 1 if it went.
REDIS_UNRESERVE = """
if tonumber(redis.call('HGET', KEYS[2], 'seq')) ~= tonumber(ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local prev = string.format('%d', tonumber(ARGV[1]) - 1)
local top, tat = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES'), redis.call('HGET', KEYS[3], prev)
redis.call('HSET', KEYS[2], 'seq', prev, 'last', top[2] or '0', 'tat', tat or '0')
return 1
"""

REDIS_RESTAMP = """
local member, late = ARGV[1], tonumber(ARGV[2])
local requests, window, burst = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local interval = tonumber(ARGV[6])
local old = tonumber(redis.call('ZSCORE', KEYS[1], member))
if not old then return false end
local s = old + math.max(late, 0)
local function f(x) return string.format('%.6f', x) end
-- a Retry-After came meanwhile: a late request must not go out inside it
if s < (tonumber(redis.call('HGET', KEYS[2], 'paused_until')) or 0) then return false end
if interval > 0 then  -- GCRA over the log in order of (time, seq), the moved grant at its new time
  local rows, tats = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'), redis.call('HGETALL', KEYS[3])
  local tat_after, k, tat = {}, tonumber(member), nil
  for i = 1, #tats, 2 do tat_after[tats[i]] = tonumber(tats[i + 1]) end
  local from = {}  -- the grants from the moved one on, in order; tat: the fold just before them
  local function before(a, b) if a.at ~= b.at then return a.at < b.at end return a.seq < b.seq end
  local all = {}
  for i = 1, #rows, 2 do all[#all + 1] = {seq = tonumber(rows[i]), at = tonumber(rows[i + 1])} end
  table.sort(all, before)
  for _, e in ipairs(all) do
    if before(e, {seq = k, at = old}) then tat = tat_after[string.format('%d', e.seq)]
    else from[#from + 1] = {seq = e.seq, at = (e.seq == k) and s or e.at} end
  end
  table.sort(from, before)
  local out = {}
  for _, e in ipairs(from) do
    if tat and e.at < tat - window - 0.000001 then return false end
    tat = math.max(tat or e.at, e.at) + interval
    out[#out + 1] = string.format('%d', e.seq)
    out[#out + 1] = f(tat)
  end
  redis.call('HSET', KEYS[3], unpack(out))
  redis.call('HSET', KEYS[2], 'tat', f(tat))
else
  local function fits(t, span, most)  -- the window (t - span, t], holding s, holds at most `most`
    local n = redis.call('ZCOUNT', KEYS[1], '(' .. f(t - span), f(t))
    if old > t - span and old <= t then n = n - 1 end
    return n + 1 <= most
  end
  local ends = redis.call('ZRANGEBYSCORE', KEYS[1], f(s), '(' .. f(s + window), 'WITHSCORES')
  local points = {s}
  for i = 2, #ends, 2 do points[#points + 1] = tonumber(ends[i]) end
  for _, t in ipairs(points) do
    if not fits(t, window, requests) then return false end
    if burst < requests and not fits(t, window * burst / requests, burst) then return false end
  end
end
redis.call('ZADD', KEYS[1], f(s), member)
local last = tonumber(redis.call('HGET', KEYS[2], 'last')) or 0
if s > last then redis.call('HSET', KEYS[2], 'last', f(s)) end
-- as REDIS_GRANT's, from `old` (no TIME here; at most the lateness more)
local imposes = s + math.max(window, 0)
if interval > 0 then imposes = tonumber(redis.call('HGET', KEYS[2], 'tat')) or s end
local ttl = math.ceil((imposes - old) * 1000) + 1000
if redis.call('PTTL', KEYS[1]) < ttl then
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
end
return f(s)
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


class RedisLimiter(SharedLimiter):
    """A `Limiter` whose budget and pause live in Redis, shared by every process using the bucket there.

    Same semantics as `DatabaseLimiter`, by the Redis server's clock (`TIME`, read inside the script):
    each grant is one atomic Lua script, REDIS_GRANT (EVALSHA, loaded again if the server lost it),
    which reserves the earliest moment the window, burst and pause rules allow and records it in the
    bucket's sorted set; the caller sleeps until then. A grant used more than LATE after its time is
    moved on the server by REDIS_RESTAMP, unless a younger reservation relies on it; then, or when a
    pause overtook it, it is left unused and taken again. `pause()` applies locally at once and is
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
        margin: float | None = None,
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
        self.keys = [
            REDIS_PREFIX + rate.bucket,
            REDIS_PREFIX + rate.bucket + ":state",
            REDIS_PREFIX + rate.bucket + ":tat",
        ]
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

    async def _remote_grant(self, pause: float) -> Reservation:
        requests, window, burst, interval = self._args()
        args = (
            requests,
            repr(window),
            burst,
            repr(pause if pause > 0 else 0.0),
            repr(interval or 0.0),
            self.rate.bucket,
        )
        at, now, seq = await self._store(
            lambda: self._call(self._client()[1].grant(keys=self.keys, args=args)), "a reservation"
        )
        return Reservation(float(at), float(now), int(seq))

    async def _remote_restamp(self, seq: int, late: float) -> float | None:
        requests, window, burst, interval = self._restamp_args()
        args = (str(seq), repr(late), requests, repr(window), burst, repr(interval or 0.0))
        moved = await self._restamp_once(lambda: self._call(self._client()[1].restamp(keys=self.keys, args=args)))
        return None if moved is None else float(moved)

    async def _remote_unreserve(self, seq: int) -> bool:
        unreserve = lambda: self._call(self._client()[1].unreserve(keys=self.keys, args=(str(seq),)))  # noqa: E731
        return bool(await self._store(unreserve, "the give-back"))

    def _remote_pause(self, seconds: float) -> Coroutine[Any, Any, None]:
        _, scripts = self._client()  # now: a `close()` right after this call waits for the write
        return self._store(lambda: self._call(scripts.pause(keys=self.keys, args=(repr(seconds),))), "the pause")

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
            scripts = _Scripts(
                client.register_script(REDIS_GRANT),
                client.register_script(REDIS_PAUSE),
                client.register_script(REDIS_RESTAMP),
                client.register_script(REDIS_UNRESERVE),
            )
            self._redis = (loop, client, scripts)
        return self._redis[1], self._redis[2]

    async def _call(self, command: Awaitable[Any]) -> Any:
        import redis.exceptions

        try:
            return await command
        except redis.exceptions.ResponseError as exc:
            if not str(exc).startswith("syncrun: "):
                raise DatabaseError(
                    f"rate-limit bucket '{self.rate.bucket}': Redis at {redact_dsn(self.url)} failed: {exc}"
                ) from None
            message = str(exc).removeprefix("syncrun: ")
            raise refused(message, f"redis-cli -u {redact_dsn(self.url)} DEL {' '.join(self.keys)}") from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            # a restart, a failover, a network blip: the client reconnects on the next call
            raise StoreUnreachable(
                f"rate-limit bucket '{self.rate.bucket}': Redis at {redact_dsn(self.url)} failed: {exc}"
            ) from None
        except redis.exceptions.RedisError as exc:
            raise DatabaseError(
                f"rate-limit bucket '{self.rate.bucket}': Redis at {redact_dsn(self.url)} failed: {exc}"
            ) from None


class _Scripts(NamedTuple):
    grant: redis.commands.core.AsyncScript
    pause: redis.commands.core.AsyncScript
    restamp: redis.commands.core.AsyncScript
    unreserve: redis.commands.core.AsyncScript
