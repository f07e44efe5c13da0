"""What `DatabaseLimiter` and `RedisLimiter` have in common: the log lives on a server, each grant is a
reservation made there by the server's clock, mapped onto ours, and slept until.

A reservation used late is *re-stamped* on the server (one statement: its log entry moves to the
real send time) instead of being thrown away at the cost of a whole slot. The server refuses only when
another reservation, already made, relies on the entry where it was; then, and only then, the grant
is left unused (it still counts; `discarded`) and a new one is taken. Lateness is expected: a request
that has to open a connection (the first of a run, or after its keep-alive expired) leaves after the
connect and TLS set-up, tens to hundreds of ms after its slot. `lead` hands grants out that much early
(the transport waits at the write for the slot), so that usually no re-stamp is needed at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from runner import spec
from runner.database import RECONNECT_WAITS
from runner.errors import StoreUnreachable, UsageError
from runner.ratelimit.local import LATE, Clock, Grant, Limiter, Sleep

log = logging.getLogger("runner.ratelimit")
T = TypeVar("T")

# How long a sample of the offset between our clock and the server's stays usable.
OFFSET_MEMORY = 10.0

# How long a reservation waits for this process's grants that are being connected (see `_overdue`):
# a connection set-up, TLS included, rarely takes longer on a real network.
OVERDUE_WAIT = 0.5

# A re-stamp is tried this many times (each covers the time its own round trip took) before the
# grant is left unused and taken again.
RESTAMPS = 3


_PADDED = re.compile(r"\b(\d+\.\d+) s\b")


def refused(message: str, reset: str) -> UsageError:
    """The store's "in use with another limit" refusal, for people: its numbers as written ("10 per
    1.01 s", not "1.010000 s": the store compares the padded text between processes, old and new, so
    only the display changes), and how to take a bucket over that no process uses any more (a limit
    of `per: 365d` would otherwise bind for a year). `reset`: the store's command to clear it."""
    shown = _PADDED.sub(lambda m: f"{float(m[1]):.6f}".rstrip("0").rstrip(".") + " s", message)
    return UsageError(
        f"{shown}: every process sharing a bucket must declare the same limit. If no process uses the old"
        f" limit any more, clear the bucket (its budget starts afresh) with: {reset}"
    )


class Reservation:
    """What the server answered: the slot (epoch seconds, its clock), its now, and the log entry's id."""

    __slots__ = ("at", "now", "seq")

    def __init__(self, at: float, now: float, seq: int) -> None:
        self.at, self.now, self.seq = at, now, seq


GIVE_BACK_WAIT = 2.0  # seconds a stopping run spends returning an unused reservation


class SharedLimiter(Limiter):
    """Subclasses provide `_remote_grant(pause)` (reserve one; `pause` > 0 first extends the shared pause),
    `_remote_restamp(seq, late)` (move entry `seq` `late` seconds later; None if refused) and
    `_remote_pause(seconds)`."""

    holds_open = False  # a reservation is in the shared log already: it is used, or re-stamped, at the write

    def __init__(
        self,
        rate: spec.RateLimit,
        *,
        margin: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__(rate, margin=margin, clock=clock, sleep=sleep, time_scale=time_scale)
        self._flushes: set[asyncio.Task[None]] = set()  # background pause writes, kept referenced
        self._reconnecting: set[asyncio.Task[Any]] = set()  # tasks waiting to reconnect to the store
        self._offsets: deque[tuple[float, float]] = deque()  # (our time, clock offset sample)
        self._trip = 0.0  # how long the last statement took, there and back
        self._unsent: set[Grant] = set()  # handed out, not written yet
        self._left: asyncio.Future[None] | None = None  # resolved when one of them is written (or dropped)
        self.discarded = 0  # grants reserved but not used: refused a re-stamp, or inside a pause
        self.restamped = 0  # grants used late and moved on the server
        self._trips: deque[float] = deque(maxlen=8)  # recent round trips: how far a clock mapping may err
        self.requests_given_back = 0  # reservations returned unused by a run stopped while waiting
        # this process's own slots, by our clock, in the order they were used (see `_floor`)
        self._mine: deque[float] = deque(maxlen=max(rate.requests, rate.burst))

    async def reserve(self) -> Grant:
        """Reserve on the server, sleep until the reservation less `lead`, and hand it out. The next
        waiter of this process reserves from the hand-out on: the grants of one burst all go out early
        enough to connect. (So a process may hold a reservation made up to `lead` early when a pause
        comes: the pause reaches it at its next one.)"""
        self._check_open()
        async with self._loop_lock():
            await self._overdue()
            while True:
                paused_until = self._paused_until
                asked = self._clock()
                granted = await self._remote_grant(paused_until - asked)
                self._trip = self._clock() - asked
                deadline = granted.at + self._offset(self._clock() - granted.now)
                self._trips.append(self._trip)
                floor = self._floor()
                if floor <= deadline + LATE + max(self._trips):
                    floor = deadline  # within what the clock mapping can tell apart (a round trip)
                try:
                    await self._until(floor - self.lead)
                except asyncio.CancelledError:  # stopped while waiting: the next run may have the slot
                    await self._give_back(granted.seq)
                    raise
                if self._paused_until > paused_until:
                    self.discarded += 1  # paused meanwhile: this grant falls inside the pause
                    continue
                if floor > deadline:  # the server's clock stepped: move the reservation to our use
                    if await self._remote_restamp(granted.seq, floor - deadline) is not None:
                        self.restamped += 1
                    deadline = floor  # refused: it stays early there, but we do not send early
                self.requests += 1
                grant = Grant(deadline, paused_until, handed=self._clock(), seq=granted.seq)
                self._unsent.add(grant)
                return grant

    async def sending(self, grant: Grant, *, later: float = 0.0, learn: bool = False) -> bool:
        """At the write: wait for the slot if the grant came early. If it is now more than LATE past its
        slot (+ `later`, FRESH for a new connection), re-stamp it on the server to cover the real send;
        if that is refused, or a pause overtook it, leave it unused and take a new one before the
        write. Returns whether a new one was taken (the caller restarts its attempt clock)."""
        if grant.sent is not None:
            return False
        if learn:  # the time since it was handed out: connection set-up, a pool wait, a busy loop
            self._setups.append(self._clock() - grant.handed)
        try:
            await self._until(grant.at)
        except asyncio.CancelledError:  # handed out `lead` early, stopped before its slot: never used
            await self._give_back(grant.seq)
            raise
        regranted = False
        tries = 0
        while True:
            if self._paused_until > grant.paused_until:
                await self._regrant(grant)
                regranted, later, tries = True, 0.0, 0
                continue
            late = self._clock() - grant.at + later
            if late <= LATE:
                break
            # cover the time the statement itself takes, and the write after it
            cover = late + self._trip + LATE
            tries += 1
            if tries <= RESTAMPS and await self._remote_restamp(grant.seq, cover) is not None:
                self.restamped += 1
                grant.at += cover  # its entry, by our clock; `later` stays in the check above
                continue
            await self._regrant(grant)
            regranted, later, tries = True, 0.0, 0
        self._written(grant)
        return regranted

    def release(self, grant: Grant) -> None:
        """Nothing to record: the server's log holds the reservation, which the send never precedes."""
        if grant.sent is None:
            self._written(grant)

    def _written(self, grant: Grant) -> None:
        grant.sent = self._clock()
        self._mine.append(grant.at)
        self._dropped(grant)

    def _floor(self) -> float:
        """The earliest next slot that this process's own used slots allow, by our clock alone.

        The server's clock decides every grant, and it is a wall clock: if it steps forward (NTP on the
        database host, a virtual machine resumed), reservations made before the step map onto our
        clock that much early, and a 1-per-60 s bucket was seen granting 54 s apart. Our monotonic clock
        does not step, so no process exceeds the limit with its own requests, whatever the server's
        clock does. Normally the server's slot is the later one and this costs nothing. Slots are
        kept in the order they were used, nearly their time order (a re-stamp moves one a little)."""
        mine, floor = self._mine, -math.inf
        if self.token:  # a conforming GCRA sequence has at most `burst` grants in any one interval
            if len(mine) >= self.rate.burst:
                floor = mine[-self.rate.burst] + self._window
            return floor
        if len(mine) >= self.rate.requests:
            floor = mine[-self.rate.requests] + self._window
        if len(mine) >= self.rate.burst:
            floor = max(floor, mine[-self.rate.burst] + self._spacing)
        return floor

    def _dropped(self, grant: Grant) -> None:
        """`grant` is no longer waiting to be written: wake a reserve waiting in `_overdue`."""
        self._unsent.discard(grant)
        if self._left is not None and not self._left.done():
            with contextlib.suppress(RuntimeError):  # its event loop may be gone
                self._left.set_result(None)

    async def _overdue(self) -> None:
        """Wait (at most OVERDUE_WAIT) until none of this process's grants is past its slot and unwritten.

        Such a grant is being connected (the first of a run, before `lead` knows the set-up time) and
        will be re-stamped to its real send time. A reservation made meanwhile would be computed from
        its old time, and the server would then have to refuse the re-stamp (the grant is lost).
        Waiting costs nothing: the next reservation is usually a window away anyway."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OVERDUE_WAIT
        while any(g.at <= self._clock() for g in self._unsent) and (left := deadline - loop.time()) > 0:
            self._left = loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._left), left)

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

    def close(self) -> None:
        super().close()
        # A pause still being retried would hold the close (and the run's exit) up to a reconnect
        # wait; it travels with the next grant of whoever runs next.
        for task in self._flushes & self._reconnecting:
            if not task.get_loop().is_closed():
                task.get_loop().call_soon_threadsafe(task.cancel)

    async def _store(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """`attempt()`, again after each of database.RECONNECT_WAITS while it raises StoreUnreachable
        (the store restarting, failing over, a network blip): the run's own connections survive a
        ~17 s outage, and the limiter must not fail the run sooner. The waits are cancellable, so a
        stopped run (the transport cancels a reserve waiting for its grant) ends within its grace.

        Only calls that may run twice come here: a reserve whose reply was lost may have been recorded,
        and then it stays in the log unused (it costs a slot, never the limit); a pause and a give-back
        are idempotent. A re-stamp is not: moved twice, its entry would sit later than the send, so
        `_remote_restamp` takes one attempt and a broken one counts as refused (the grant is taken
        again, through here)."""
        for wait in (*RECONNECT_WAITS, None):
            try:
                return await attempt()
            except StoreUnreachable as exc:
                if wait is None:
                    raise
                log.warning("%s; reconnecting in %.1fs to retry %s", exc, wait, what)
            task = asyncio.current_task()
            if task is not None:
                self._reconnecting.add(task)
            try:
                await asyncio.sleep(wait)
            finally:
                self._reconnecting.discard(task)
            self._check_open()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _restamp_once(self, attempt: Callable[[], Awaitable[float | None]]) -> float | None:
        """A re-stamp, once (see `_store`): a broken connection counts as a refusal."""
        try:
            return await attempt()
        except StoreUnreachable as exc:
            log.warning("%s; a re-stamp counts as refused: the grant is taken again", exc)
            return None

    async def _regrant(self, grant: Grant) -> None:
        """Leave `grant` unused (it still counts on the server) and take a new one in its place."""
        self.requests -= 1  # it was counted as used
        self.discarded += 1
        self._mine.append(grant.at)  # it still counts, where it was
        self._dropped(grant)  # else a waiter in `_overdue` holds the lock this reserve needs, for LEAD_CAP
        fresh = await self.reserve()
        self._unsent.discard(fresh)
        self._unsent.add(grant)
        await self._until(fresh.at)
        grant.at, grant.paused_until, grant.seq = fresh.at, fresh.paused_until, fresh.seq

    def _args(self) -> tuple[int, float, int, float | None]:
        """(requests, window, burst, interval) for the server: the token form sends its GCRA tolerance
        as the window and the time per token as the interval."""
        rate = self.rate
        if self.token:
            return rate.requests, (rate.burst - 1) * self._window, rate.burst, self._window
        return rate.requests, self._window, rate.burst, None

    def _restamp_args(self) -> tuple[int, float, int, float | None]:
        """`_args` for a re-stamp: the window form checks a late send against the window alone.

        The burst rule lays the schedule out (as the in-process limiter's does, on slots): at a saturated
        bucket the next slot, one spacing on, is always reserved already, so a re-stamp checked against
        it was always refused and every late send cost a slot (24 % of grants with two CPU burners,
        and a fresh plain-HTTP connection is always 'late' by FRESH). A late send may sit closer to
        the next one than the spacing; no window ever holds more than `requests`."""
        requests, window, burst, interval = self._args()
        return requests, window, burst if self.token else requests, interval

    async def _give_back(self, seq: int) -> None:
        """Best effort, and bounded: the run is stopping, and a reservation left in place only costs time."""
        with contextlib.suppress(Exception):
            if await asyncio.wait_for(self._remote_unreserve(seq), GIVE_BACK_WAIT):
                self.requests_given_back += 1

    async def _remote_unreserve(self, seq: int) -> bool:
        return False  # a store that cannot give one back keeps it (the reservation expires with its window)

    async def _remote_grant(self, pause: float) -> Reservation:
        raise NotImplementedError

    async def _remote_restamp(self, seq: int, late: float) -> float | None:
        raise NotImplementedError

    def _remote_pause(self, seconds: float) -> Coroutine[Any, Any, None]:
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
