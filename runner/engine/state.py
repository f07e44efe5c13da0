"""One source's run in progress: its queues, counters and claims, and the one way it stops (`halt`).

The other engine modules are functions over this state; it emits what happens to the run's
observers (runner/events.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg

from runner import backoff, breaker, history, listings, mapping, spec
from runner.claims import Held
from runner.claimsize import ClaimSize
from runner.conditional import Store
from runner.engine.report import Options, Report, Trace
from runner.events import Event, Halted, Observer
from runner.expressions import JSON
from runner.ratelimit import Limiter
from runner.templating import Settings

log = logging.getLogger("syncrun")

DONE = object()  # end of a queue
PAGE = "page"  # list-shaped sources: the page number stands in for the entity key

Connect = Callable[[], psycopg.Connection[Any]]


class Run:
    def __init__(
        self,
        source: spec.Source,
        options: Options,
        settings: Settings,
        limiter: Limiter,
        http: httpx.AsyncClient,
        connect: Connect | None,
        catalog: Any,
        sleep: Callable[[float], Any],
        stop: asyncio.Event | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.source, self.options, self.settings = source, options, settings
        self.limiter, self.http, self.connect, self.catalog, self.sleep = limiter, http, connect, catalog, sleep
        self.observers = observers
        self.report = Report(source.name)
        self.stop = stop or asyncio.Event()
        self.started = time.monotonic()
        self.now = datetime.now(UTC)
        self.entities: asyncio.Queue[object] = asyncio.Queue(maxsize=source.concurrency * 2)
        self.results = Outbox()
        self.queued = max(source.write_batch * 2, 16)  # traces `results` holds at most: fetchers wait in `room`
        # Estimated bytes of the rows queued or batched for the writer, not yet committed: fetchers wait
        # in `room` while it is past writes.HOLD_BYTES, so memory follows it, not write_batch (F7).
        self.held = 0
        self.room = asyncio.Condition()
        self.waiting = 0  # fetchers waiting in `room`: the writer commits what it has at once
        self.unprocessed: list[JSON] = []
        self.exhausted = False  # the selection had no more entities (a breaker trip then stopped nothing)
        self.transients = backoff.Transients(source)  # counted at the end of the run (runner.backoff)
        # Claim about a quarter second of this runner's work at a time: runners of one source share
        # the due set instead of the first one claiming all of it.
        per_request = source.request.batch.size if source.request.batch else 1
        self.claim_size = ClaimSize(source.concurrency * per_request)
        self.inflight: set[JSON] = set()  # keys being fetched: released if the grace period cuts them
        self.busy: list[Held] = []  # `--ids` another runner holds: not run, so the run is not complete
        self.breaker = breaker.Breaker(transient_runs=source.backoff.transient_runs)
        self.history = history.History(source)  # known-bad entities: the breaker does not count them
        self.lease: listings.Lease | None = None  # a list source's lease on its listing, renewed with the heartbeat
        # ETag/Last-Modified per entity, loaded as selected; a dry run sends none (it shows the API's answer)
        self.validators = Store(source, catalog=catalog, ask=not options.dry_run, settings=settings)
        self.write_failed = False
        self.complete = True  # before-steps see True; after-steps see whether the run really was complete
        # A list source's listing may span runs (a cap, an interruption): %(started_at)s of its steps is
        # when the listing started, carried by its checkpoint; None when a checkpoint did not say.
        self.listing_started: datetime | None = self.now
        self._run_values: tuple[str | None, dict[str, JSON]] | None = None

    def emit(self, event: Event) -> None:
        for observer in self.observers:
            observer.notice(event)

    def halt(self, status: str, error: str | None = None, signum: int | None = None, *, reason: str = "") -> None:
        """Take no new entities; in-flight ones finish (within the grace period) and are written.
        `reason`: a graceful stop asked for from outside (max_runtime, SIGTERM, SIGINT), which the
        job row's metadata keeps ({"graceful_stop": true, "stop_reason": "max_runtime"})."""
        if not self.stop.is_set():
            # Redacted here too: a halt message may quote an exception (`{error!r}`) nobody redacted.
            error = self.settings.redact(error) if error is not None else None
            self.report.status, self.report.error, self.report.signal = status, error, signum
            if reason:
                self.report.metadata.update({"graceful_stop": True, "stop_reason": reason})
            self.stop.set()
            self.emit(Halted(self.source.name, status, error, reason))
        elif status == "failed" and self.report.status == "completed":
            # A failure while --max-runtime lets in-flight work finish (a token endpoint that never
            # answered, say) is still a failure: the run must not end `completed`, exit 0.
            self.report.status = status
            self.report.error = self.settings.redact(error) if error is not None else None
        elif status == "failed" and self.report.status == "cancelled" and error is not None:
            # A failure while a signal's stop lets in-flight work finish (a token renewal that failed:
            # the refresh token may be spent) is not dropped: the run stays cancelled, and says it, once
            # (every request that waited for the renewal gets the same failure).
            error = self.settings.redact(error)
            if error in (self.report.error or ""):
                return
            log.warning("%s: while stopping: %s", self.source.name, error)
            self.report.error = f"{self.report.error}; while stopping: {error}"

    @property
    def limit(self) -> int:
        """Entities this run takes of the source: the run's --limit, else the source's entities.limit
        (a multi-source run without --limit gives each source its own)."""
        return self.options.limit or self.source.entities.limit

    def run_values(self) -> dict[str, JSON]:
        """The mapping context's `run` section, made once per job id (it was two isoformat calls and a
        date per reply); callers only read it (mapping.context copies it into each document)."""
        job_id = self.report.job_id
        if self._run_values is None or self._run_values[0] != job_id:
            self._run_values = (job_id, mapping.run_values(self.now, job_id))
        return self._run_values[1]


class Outbox:
    """The traces the fetchers handed over and the writer has not taken yet (runner/engine/writes.py),
    and the writer's sleep. The writer is woken when there is a batch for it, or something that wants
    one written (a fetcher waiting for room, the end, the first trace for a writer that has no timer
    armed), not once per trace: an `asyncio.Queue` cost a wake-up, a `wait_for` task and a timer per
    entity on the event loop."""

    def __init__(self) -> None:
        self.traces: deque[Trace] = deque()
        self.weight = 0  # of `traces` (writes.weight)
        self.last = 0.0  # time.monotonic() of the latest trace handed over
        self.done = False  # no more traces come: the writer writes what is left and ends
        self.timed = False  # the writer sleeps with a timer armed (it has traces waiting for more)
        self._bell: asyncio.Future[None] | None = None

    @property
    def asleep(self) -> bool:
        return self._bell is not None

    async def put(self, item: object) -> None:
        """`DONE`: the fetchers are over (the pipeline says so, once)."""
        assert item is DONE
        self.done = True
        self.wake()

    def wake(self) -> None:
        if self._bell is not None and not self._bell.done():
            self._bell.set_result(None)

    async def sleep(self, timeout: float | None) -> None:
        """Until `wake`, or `timeout` seconds (None: no timer)."""
        loop = asyncio.get_running_loop()
        self._bell = bell = loop.create_future()
        self.timed = timeout is not None
        timer = None if timeout is None else loop.call_later(timeout, self.wake)
        try:
            await bell
        finally:
            self._bell = None
            if timer is not None:
                timer.cancel()
