"""The in-process limiter (`shared: process`), the constants every limiter shares, and `Grant`.

`N` requests `per` P seconds means: in every sliding window of length P, at most N requests arrive at
the API (retries and pages included), at most `burst` of them back to back. The token form (`rate` +
`burst`) means: a bucket of `burst` tokens, refilled one every P seconds (GCRA). docs/rate-limits.md
has the proof sketches and the measurements.

How the limit is kept as the API counts it, not as the client grants:

- Every grant enters the log *open*: it counts until it is stamped with the moment its bytes actually
  leave (RateLimitedTransport stamps it from httpcore's `trace` extension, right before the socket
  write). Time lost between the grant and the send only moves the stamp later, which is always safe.
- Grants are *scheduled* against ideal slots (the burst rule spaces slots, not wake-ups), so an
  oversleeping `asyncio.sleep` delays one request, not every later one.
- A grant is handed out `lead` seconds before its slot, `lead` being the connection set-up time
  seen lately (connect, TLS); the transport then waits at the write until the slot. So a request that
  must open a connection (after a keep-alive expired) still leaves on time instead of shifting the
  schedule by its set-up time.

Why not pyrate-limiter (measured, 10 per 0.5 s, 30 concurrent tasks): its `InMemoryBucket` stacked
with a pacing rate reached 93.9 % of the limit with `buffer_ms=1` and 49 % with the default 50 ms,
because it works in whole milliseconds and adds the buffer to every wait; it cannot take an injected
clock or sleep; it records the grant, not the send; and a Retry-After pause would have to be layered
on top anyway.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from runner import spec
from runner.errors import UsageError

# Every window is padded by this much (the token form: every interval). The log
# stamps a request when its bytes are handed to the socket; the API counts it when it has read them.
# What varies in between (transit, the server's own scheduling) can bunch arrivals stamped
# `per + margin` apart only if it varies by more than the margin. 10 ms costs 1 % of the rate at
# per = 1 s, 2 % at 0.5 s.
MARGIN = 0.010
# ... at least this share of the period, though: transit varies by more than 10 ms between two requests
# a minute apart on a real network, and for a long period one request over can cost a ban for the
# whole period. 0.5 % of the rate buys it (300 ms at 1 per 60 s, 45 ms at 3 per 9 s).
MARGIN_SHARE = 0.005

# Request extension key: called, with the request about to be sent (AuthTransport's copy when the
# source has `auth:`), right after the budget is granted. client.send uses it to start an attempt's
# timeout clock then, so time spent waiting for the budget never counts as a timeout.
GRANTED = "syncrun.granted"
# Request extension key: called, with the request, when an attempt goes back to wait after an answer
# (runner/auth.py, after a 401: for a renewed token, then for the budget again); client.send stops the
# attempt's timeout clock there, until GRANTED starts it again. Otherwise the renewal and the wait ran
# on the clock of the first grant, and a deadline that fired in the wait cancelled the renewal.
WAITING = "syncrun.waiting"
# Request extension key: an async callable awaited with the request once its budget is granted, right
# before it is sent (before GRANTED's clock starts). runner/auth.py puts the credentials on there, so a
# request that waited for the limiter never carries a token that expired while it waited.
AUTHORIZE = "syncrun.authorize"

# A request on a plain-HTTP connection opened for it is logged as sent this much later than it was
# (not with TLS: the handshake needs the server, so it has taken the connection by then). Plain HTTP
# lets the client write as soon as the kernel completed the handshake, before the server's accept loop
# has taken the connection (and started a thread or task for it): on this 2-CPU machine the fifth of
# five simultaneous new connections was counted 24 ms after the write, benchmarks saw 23-42 ms. Moving
# a stamp later is always safe; it costs one shift of at most this much per new connection.
FRESH = 0.050

# Shared limiters: a reservation used more than this after its time is re-stamped on the server (or,
# if another reservation already relies on it, left unused and taken again). Half the margin: the rest
# absorbs the jitter after the grant.
LATE = MARGIN / 2

# The most a grant is handed out ahead of its slot (see `lead`): a connection set-up slower than
# this shifts the schedule by the rest, once per new connection.
LEAD_CAP = 2.0

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Grant:
    """One request's place in a limiter's budget, from `reserve()` until it is sent.

    `at`: the moment it may leave (its slot; for a shared limiter, its reservation), by the limiter's
    clock. `sent`: when its bytes left, once `sending()` stamped it; None while open. `seq`: its number
    in a shared log (0 in-process). `handed`: when `reserve` returned it.
    """

    __slots__ = ("at", "handed", "paused_until", "sent", "seq")

    def __init__(self, at: float, paused_until: float, *, handed: float, seq: int = 0) -> None:
        self.at = at
        self.paused_until = paused_until  # the bucket's pause when granted (shared limiters)
        self.handed = handed
        self.seq = seq
        self.sent: float | None = None


def check(rate: spec.RateLimit) -> None:
    if rate.form is spec.LimitForm.TOKEN:
        if rate.requests != 1 or rate.burst < 1:
            raise UsageError(f"a token-bucket rate_limit needs requests 1 and burst >= 1, got {rate}")
    elif not 1 <= rate.burst <= rate.requests:
        raise UsageError(f"rate_limit.burst must be between 1 and requests ({rate.requests}), got {rate.burst}")


class Limiter:
    """At most `requests` sends in every window of `per` (+ margin) seconds, at most `burst` back to back;
    or (token form) a bucket of `burst` tokens, one more every `per` seconds.

    limiter = Limiter(spec.RateLimit(requests=10, per=1.0, bucket="steam"))
    await limiter.acquire()  # waits until one more request may be sent, and counts it as sent now
    limiter.pause(30)        # a Retry-After: every holder of this bucket waits 30 s

    The transport splits `acquire` in three, so that the log holds when requests really left:
    `grant = await reserve()` (an open grant), `await sending(grant)` right before the bytes go (waits
    for the slot if the grant came early, then stamps it), `release(grant)` when the attempt is over
    (stamps it now if it never got that far: a failed connect, a cancellation).

    Window form, for a grant at time T (W = per + margin, B = burst):
    - window: the open grants, plus the sends stamped after T - W, are at most requests - 1. Open
      grants count whatever their slot, so a request that leaves late can never be missed.
    - burst: T >= the slot B grants ago + W * B / requests. Slots, not stamps: a grant that woke
      late does not push the schedule back (no drift); the window rule still sees when it left.
    Token form (I = per + margin): GCRA over the stamps, every open grant taken as sent with the new
    one: T >= tat + (open - B + 1) * I, where tat folds the stamps as max(tat, t) + I; at most B - 1
    other grants open.
    Both: T >= the pause, and >= the moment the caller asked.
    """

    holds_open = True  # a grant may stay open (counted in every window) until its answer starts

    def __init__(
        self,
        rate: spec.RateLimit,
        *,
        margin: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        time_scale: float = 1.0,
    ) -> None:
        check(rate)
        self.rate = rate
        self.token = rate.form is spec.LimitForm.TOKEN
        # `--replay --rate-scale K`: the caller scales `rate.per`; server-given pauses scale here
        self.time_scale = time_scale
        self.requests = 0  # requests sent with a grant: every attempt of every page (a grant given up unsent not)
        if margin is None:  # the caller's (tests, benchmarks) first, then the source's, then the default
            margin = rate.margin if rate.margin is not None else max(MARGIN, rate.per * MARGIN_SHARE)
        self.margin = margin
        self._window = rate.per + self.margin
        self._spacing = self._window * rate.burst / rate.requests  # `burst` grants per spacing
        self._slots: deque[float] = deque(maxlen=rate.burst)  # scheduled times of the last `burst` grants
        self._sent: list[float] = []  # stamps of sent grants, ascending; the last `requests` matter
        self._tat = -math.inf  # token form: GCRA over the stamps
        self._open = 0  # grants not stamped yet
        self._stamped: asyncio.Future[None] | None = None  # resolved when an open grant is stamped
        self._paused_until = -math.inf
        self._setups: deque[float] = deque(maxlen=8)  # connection set-up times seen lately
        self._clock, self._sleep = clock, sleep
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None  # per event loop
        self._closed = False

    @property
    def lead(self) -> float:
        """How long before its slot a grant is handed out: the slowest recent connection set-up."""
        return min(max(self._setups, default=0.0), LEAD_CAP)

    async def acquire(self) -> Grant:
        """Wait until one more request fits the budget (FIFO among waiters), then count it as sent now."""
        grant = await self.reserve()
        await self.sending(grant)
        return grant

    async def reserve(self) -> Grant:
        """Wait until one more request fits the budget (FIFO among waiters), less `lead`; the grant stays
        open (counted) until `sending` or `release` stamps it."""
        self._check_open()
        async with self._loop_lock():  # one waiter at a time keeps the order fair and the log consistent
            asked = self._clock()
            while (slot := self._slot(asked)) - self.lead > (now := self._clock()):
                if slot == math.inf:  # too many grants are open: wait until one is stamped
                    self._stamped = asyncio.get_running_loop().create_future()
                    await self._stamped
                else:
                    await self._sleep(slot - self.lead - now)
            self._slots.append(slot)
            self._open += 1
            self.requests += 1
            return Grant(slot, self._paused_until, handed=self._clock())

    def try_reserve(self) -> Grant | None:
        """`reserve()` without waiting: the grant when one fits the budget now and nobody waits before
        this caller (the lock is free), else None (then `reserve()`). Saves the transport a task and
        a wait per request when the budget has room. A subclass that reserves elsewhere (a shared
        limiter) has no such grant."""
        if type(self).reserve is not Limiter.reserve or self._closed:
            return None
        if self._lock is not None:
            loop, lock = self._lock
            # asyncio.Lock's own test for taking it at once: a woken waiter keeps its turn
            waiters = getattr(lock, "_waiters", None)
            if lock.locked() or waiters or loop is not asyncio.get_running_loop():
                return None
        now = self._clock()
        slot = self._slot(now)
        if slot - self.lead > now:
            return None
        self._slots.append(slot)
        self._open += 1
        self.requests += 1
        return Grant(slot, self._paused_until, handed=now)

    async def sending(self, grant: Grant, *, later: float = 0.0, learn: bool = False) -> bool:
        """Its bytes leave now: wait for its slot if it came early, then stamp it (once), as if `later`
        seconds from now (FRESH for a new connection). `learn`: the time since it was handed out
        teaches `lead` (the transport's trace; not for callers that wait on purpose).
        Returns whether it was granted again (never here)."""
        if grant.sent is not None:
            return False
        if learn:  # the time since it was handed out: connection set-up, a pool wait, a busy loop
            self._setups.append(self._clock() - grant.handed)
        await self._until(grant.at)
        self._stamp(grant, later)
        return False

    async def sending_unseen(self, grant: Grant) -> bool:
        """Its bytes leave now on a new plain-HTTP connection, whose arrival the server may count any
        time until it answers (an accept queue, a proxy: 100-300 ms were seen): wait for the slot, learn
        the set-up time, and leave the grant open; `answered` stamps it when the answer starts. Shared
        limiters cannot hold a reservation open: they stamp now, FRESH later (see SharedLimiter)."""
        if not self.holds_open:
            return await self.sending(grant, later=FRESH, learn=True)
        if grant.sent is None:
            self._setups.append(self._clock() - grant.handed)
            await self._until(grant.at)
        return False

    def answered(self, grant: Grant) -> None:
        """The answer's headers arrived: the server has counted the request by now."""
        self._stamp(grant)

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

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"rate limiter for bucket '{self.rate.bucket}' is closed")

    async def _until(self, moment: float) -> None:
        """Sleep until `moment` by our clock (a grant handed out `lead` early waits here, at the write)."""
        while (remaining := moment - self._clock()) > 0:
            await self._sleep(remaining)

    def _loop_lock(self) -> asyncio.Lock:
        """An asyncio.Lock belongs to one event loop; a limiter may outlive one `asyncio.run`."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        return self._lock[1]

    def _slot(self, asked: float) -> float:
        """The earliest time the next grant may have, given the log as it is (inf: none until a stamp)."""
        slot = max(asked, self._paused_until)
        if self.token:
            if self._open >= self.rate.burst:
                return math.inf
            return max(slot, self._tat + (self._open - self.rate.burst + 1) * self._window)
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
        # an out-of-order stamp folds to a later tat than in order would: conservative
        self._tat = max(self._tat, now) + self._window  # token form: the interval, padded like a window
        bisect.insort(self._sent, now)  # nearly always at the end; an out-of-order stamp goes in place
        if len(self._sent) > 2 * self.rate.requests:  # trim in batches: O(1) amortised
            del self._sent[: -self.rate.requests]
        if self._stamped is not None and not self._stamped.done():
            with contextlib.suppress(RuntimeError):  # its event loop may be gone
                self._stamped.set_result(None)
