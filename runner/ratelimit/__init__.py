"""Rate limits: one `Limiter` per bucket name, and the transport that spends its budget per attempt.

    local.py        the in-process limiter (`shared: process`), Grant, the constants
    shared.py       what the shared limiters have in common: reservations, re-stamps, clock offsets
    database.py     `shared: database` (migrations 0002, 0003, 0011)
    redisstore.py   `shared: redis` (one Lua script per grant)
    transport.py    RateLimitedTransport: reserve, stamp at the socket write, release

Does not retry; see client.send. docs/rate-limits.md has the proof sketches and the measurements.
"""

from __future__ import annotations

from collections.abc import Iterable

from runner import spec
from runner.errors import UsageError
from runner.ratelimit.database import DatabaseLimiter
from runner.ratelimit.local import (
    FRESH,
    GRANTED,
    LATE,
    LEAD_CAP,
    MARGIN,
    MARGIN_SHARE,
    WAITING,
    Clock,
    Grant,
    Limiter,
    Sleep,
)
from runner.ratelimit.redisstore import (
    DEFAULT_REDIS_URL,
    REDIS_GRANT,
    REDIS_PAUSE,
    REDIS_PREFIX,
    REDIS_RESTAMP,
    RedisLimiter,
    redis_url_from_env,
)
from runner.ratelimit.shared import OFFSET_MEMORY, SharedLimiter
from runner.ratelimit.transport import RateLimitedTransport

__all__ = [
    "DEFAULT_REDIS_URL",
    "FRESH",
    "GRANTED",
    "LATE",
    "LEAD_CAP",
    "MARGIN",
    "MARGIN_SHARE",
    "OFFSET_MEMORY",
    "REDIS_GRANT",
    "REDIS_PAUSE",
    "REDIS_PREFIX",
    "REDIS_RESTAMP",
    "WAITING",
    "Clock",
    "DatabaseLimiter",
    "Grant",
    "Limiter",
    "RateLimitedTransport",
    "RedisLimiter",
    "SharedLimiter",
    "Sleep",
    "limiters",
    "redis_url_from_env",
]


def limiters(
    rate_limits: Iterable[spec.RateLimit],
    *,
    margin: float | None = None,
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
                    " declare the same requests, per (or rate), burst, margin and shared"
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


def _limits(rate: spec.RateLimit) -> tuple[int, float, int, spec.LimitScope, spec.LimitForm, float | None]:
    return rate.requests, rate.per, rate.burst, rate.shared, rate.form, rate.margin


def _describe(rate: spec.RateLimit) -> str:
    shared = "" if rate.shared is spec.LimitScope.PROCESS else f", shared: {rate.shared}"
    shared += "" if rate.margin is None else f", margin {rate.margin:g} s"
    if rate.form is spec.LimitForm.TOKEN:
        return f"rate {1 / rate.per:g}/s, burst {rate.burst}{shared}"
    return f"{rate.requests} per {rate.per:g} s, burst {rate.burst}{shared}"
