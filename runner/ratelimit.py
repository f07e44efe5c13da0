"""Rate limits: one `Limiter` per bucket name, and the transport that spends its budget per attempt.

`N` requests `per` P seconds means: in every sliding window of length P, at most N requests are sent
(retries and pages included), at most `burst` of them back to back. Does not retry; see client.send.

Why not pyrate-limiter (measured, 10 per 0.5 s, 30 concurrent tasks): its `InMemoryBucket` stacked
with a pacing rate reached 93.9 % of the limit with `buffer_ms=1` and 49 % with the default 50 ms,
because it works in whole milliseconds and adds the buffer to every wait; it cannot take an injected
clock or sleep; and a Retry-After pause would have to be layered on top anyway. The sliding-window
log below is ~40 lines, float-precise, FIFO-fair, and reached 97–98 % with the safety margin (see
`MARGIN`). pyrate-limiter stays the planned backend for `shared: database` (its `PostgresBucket`):
when that lands, this is still the only module that imports it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

import httpx

from runner import spec
from runner.errors import UsageError

# Every window is padded by this much. The limiter grants at the client; the API counts at arrival,
# and latency jitter (connection set-up, GIL hand-over, a busy event loop) can bunch arrivals that
# were granted exactly `per / requests` apart. 10 ms costs 1 % of the rate at per = 1 s, 2 % at 0.5 s.
MARGIN = 0.010

# Request extension key: called right after the budget is granted. client.send uses it to start an
# attempt's timeout clock then, so time spent waiting for the budget never counts as a timeout.
GRANTED = "syncrun.granted"

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Limiter:
    """At most `requests` grants in every window of `per` (+ margin) seconds, at most `burst` back to back.

    limiter = Limiter(spec.RateLimit(requests=10, per=1.0, bucket="steam"))
    await limiter.acquire()  # waits until one more request may be sent
    limiter.pause(30)        # a Retry-After: every holder of this bucket waits 30 s
    """

    def __init__(
        self,
        rate: spec.RateLimit,
        *,
        margin: float = MARGIN,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not 1 <= rate.burst <= rate.requests:
            raise UsageError(f"rate_limit.burst must be between 1 and requests ({rate.requests}), got {rate.burst}")
        self.rate = rate
        self.requests = 0  # grants so far: every attempt of every page
        self._window = rate.per + margin
        self._spacing = self._window * rate.burst / rate.requests  # `burst` grants per spacing
        self._grants: deque[float] = deque(maxlen=rate.requests)
        self._paused_until = float("-inf")
        self._clock, self._sleep = clock, sleep
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None  # per event loop
        self._closed = False

    async def acquire(self) -> None:
        """Wait until one more request fits the budget (FIFO among waiters), then count it."""
        if self._closed:
            raise RuntimeError(f"rate limiter for bucket '{self.rate.bucket}' is closed")
        async with self._loop_lock():  # one waiter at a time keeps the order fair and the log consistent
            while (wait := self._wait(self._clock())) > 0:
                await self._sleep(wait)
            self._grants.append(self._clock())
            self.requests += 1

    def pause(self, seconds: float) -> None:
        """Grant nothing for `seconds` from now (never shortens an earlier, longer pause)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def close(self) -> None:
        self._closed = True

    def _loop_lock(self) -> asyncio.Lock:
        """An asyncio.Lock belongs to one event loop; a limiter may outlive one `asyncio.run`."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        return self._lock[1]

    def _wait(self, now: float) -> float:
        grants, burst = self._grants, self.rate.burst
        waits = [self._paused_until - now]
        if len(grants) == grants.maxlen:
            waits.append(grants[0] + self._window - now)
        if len(grants) >= burst:
            waits.append(grants[-burst] + self._spacing - now)
        return max(waits)


def limiters(rate_limits: Iterable[spec.RateLimit], *, margin: float = MARGIN) -> dict[str, Limiter]:
    """One limiter per bucket name: sources naming the same bucket share it.

    Sources sharing a bucket must declare the same requests/per/burst: a silent "stricter wins"
    would hide a typo and cannot rank 10/s against 500/min, so a mismatch is a UsageError.
    """
    by_bucket: dict[str, Limiter] = {}
    for rate in rate_limits:
        if rate.shared is not spec.LimitScope.PROCESS:
            raise UsageError(
                f"rate_limit.shared: {rate.shared} (bucket '{rate.bucket}') is not supported yet;"
                " use shared: process (the default)"
            )
        if (existing := by_bucket.get(rate.bucket)) is None:
            by_bucket[rate.bucket] = Limiter(rate, margin=margin)
        elif _limits(existing.rate) != _limits(rate):
            raise UsageError(
                f"rate-limit bucket '{rate.bucket}' is declared twice with different limits"
                f" ({_describe(existing.rate)} and {_describe(rate)}); sources sharing a bucket must declare"
                " the same requests, per and burst"
            )
    return by_bucket


def _limits(rate: spec.RateLimit) -> tuple[int, float, int]:
    return rate.requests, rate.per, rate.burst


def _describe(rate: spec.RateLimit) -> str:
    return f"{rate.requests} per {rate.per:g} s, burst {rate.burst}"


class RateLimitedTransport(httpx.AsyncBaseTransport):
    """Wait for the bucket's budget before every request an `AsyncClient` sends, retries included.

    Wraps rather than subclasses, so tests build `RateLimitedTransport(httpx.MockTransport(h), limiter)`
    and exercise the production path.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, limiter: Limiter) -> None:
        self._inner, self._limiter = inner, limiter

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._limiter.acquire()
        if callable(granted := request.extensions.get(GRANTED)):
            granted()
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
