"""`rate_limit:`, `retry:`, `backoff:`, `schedule:`: how fast and how often a source asks."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class LimitScope(StrEnum):
    PROCESS = "process"  # one limiter per bucket name in this process
    DATABASE = "database"  # shared across processes through PostgreSQL
    REDIS = "redis"


class LimitForm(StrEnum):
    WINDOW = "window"  # `requests` per `per`: at most that many in every sliding window
    TOKEN = "token"  # `rate` + `burst`: a token bucket (GCRA), one token every `per` seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """At most `requests` requests in every sliding window of `per` seconds, measured at arrival; or, in
    the token form (`rate: 0.33/s`, `burst: 3`), a bucket of `burst` tokens refilled one every `per`
    seconds (requests = 1): `burst` at once, then one every `per`."""

    requests: int
    per: float
    burst: int = 1
    bucket: str  # defaults to the source name
    shared: LimitScope = LimitScope.PROCESS
    form: LimitForm = LimitForm.WINDOW
    margin: float | None = None  # seconds every window is padded by; None: max(10 ms, 0.5 % of per)

    @property
    def rate(self) -> float:
        return self.requests / self.per


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    attempts: int = 4  # total attempts, the first included
    initial: float = 1.0  # first backoff, seconds
    factor: float = 2.0
    max_delay: float = 30.0  # cap on one backoff
    jitter: float = 0.1  # +/- fraction of each backoff
    statuses: frozenset[int] = frozenset({408, 429, *range(500, 600)})
    max_wait: float = 300.0  # longest Retry-After honoured; beyond it the run fails


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """When a failing entity is asked again (runner/backoff.py): the n-th definitive failure in a row
    waits `initial * factor^(n-1)`, at most `cap`; `transient_runs` runs in a row that failed
    transiently (retries exhausted) start the same ladder (0: transient failures never back off)."""

    initial: float = 15 * 60.0  # seconds
    factor: float = 2.0
    cap: float = 24 * 3600.0  # a broken entity is still retried daily
    transient_runs: int = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """How `syncrun workflow` schedules the source on GitHub Actions."""

    cron: str  # UTC, five fields
    timeout_minutes: int | None = None  # default: derived from limit / rate with margin
    partitions: int | None = None  # run as a matrix of N static shards (--partition i/N)
