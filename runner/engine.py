"""One source run: select due entities -> fetch them concurrently under the limiter -> classify ->
map -> write in batches (rows, status and state in one transaction) -> finish the job row.

The concurrency of syncrun lives here and only here. Database calls are synchronous psycopg on
connections owned by one task each, run in worker threads so the event loop keeps fetching.

    producer ──entities──▶ fetchers (×concurrency) ──results──▶ writer (batches of write_batch)
        ▲                                                          │
        └───── stop (signal, --max-runtime, run failure) ──────────┘   heartbeat every few seconds
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg

from runner import (
    backoff,
    breaker,
    client,
    database,
    fetch,
    history,
    jobs,
    listings,
    mapping,
    outcomes,
    progress,
    selection,
    spec,
    steps,
    writer,
)
from runner.auth import Tokens
from runner.auth import for_source as authenticator_for
from runner.claimsize import ClaimSize
from runner.conditional import NOT_ASKED, Store
from runner.conditional import forget as forget_validators
from runner.config import DEFAULT_OUTCOMES
from runner.errors import DatabaseError, EntityError, MappingError, PaginationError, RunFailed, Stopped
from runner.expressions import JSON
from runner.ratelimit import Limiter
from runner.templating import Settings
from runner.watermarks import Tracker
from runner.watermarks import text as watermark_text

log = logging.getLogger("syncrun")

_DONE = object()  # end of a queue
_PAGE = "page"  # list-shaped sources: the page number stands in for the entity key
_FLUSH_EVERY = 0.25  # seconds a partial write batch may wait for more results
# Job rows' error_message texts that dashboards may match on (docs/cli.md lists them; tests pin them)
FAIL_RATIO = "{failed} of {processed} {what} failed, above fail_ratio {ratio}"
CANCELLED = "cancelled by {signal}"
LISTING_PAGE_FAILED = "page {page} of the listing failed: {error}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    limit: int
    ids: tuple[str, ...] | None = None
    dry_run: bool = False
    max_runtime: float | None = None
    grace: float = 5.0  # after a stop, how long in-flight entities may take to finish
    partition: tuple[int, int] | None = None  # (i, n): static shard i of n
    progress_every: int = 100
    heartbeat_every: float = 5.0
    lease: float = 600.0  # entity claim lifetime, renewed with the heartbeat
    holder: str = ""  # this runner's claim identity
    github_run_id: str | None = None
    restart: bool = False  # list-shaped sources: ignore the checkpointed cursor
    stale_after: float = 300.0  # reap running jobs whose heartbeat is older than this
    metadata: dict[str, JSON] = field(default_factory=dict)
    # list sources: records this run writes at most (an explicit --limit): pagination.max_items for this run
    max_items: int | None = None
    overridden: frozenset[str] = frozenset()  # `--set` paths (incremental.start overrides the watermark)


@dataclass(slots=True)
class Trace:
    """What happened to one entity, for --dry-run and test-read explanations."""

    entity: dict[str, JSON]
    requests: list[str] = field(default_factory=list)
    status: int | None = None
    elapsed: float = 0.0
    excerpt: str = ""
    rule: str = ""
    result: writer.EntityResult | None = None
    declared: bool = False  # the deciding outcome rule is the source's own, not a default one
    capped: str = ""  # why a cap (max_pages, max_items, the default page cap) cut this entity's listing
    items: int | None = None  # a list source's page: the records it counts as (None: one entity)


@dataclass(slots=True)
class Report:
    source: str
    status: str = "completed"  # completed | failed | cancelled | busy (runner/listings.py: read nothing)
    job_id: str | None = None
    counters: jobs.Counters = field(default_factory=jobs.Counters)
    error: str | None = None
    signal: int | None = None
    traces: list[Trace] = field(default_factory=list)
    elapsed: float = 0.0
    listing: str | None = None  # a list source's listing that did not end: "listing not complete: …"
    capped: int = 0  # entity listings cut by max_pages/max_items (the default page cap): not complete
    metadata: dict[str, JSON] = field(default_factory=dict)  # merged into the job row's metadata at the end


Connect = Callable[[], psycopg.Connection[Any]]


class _Run:
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
    ) -> None:
        self.source, self.options, self.settings = source, options, settings
        self.limiter, self.http, self.connect, self.catalog, self.sleep = limiter, http, connect, catalog, sleep
        self.report = Report(source.name)
        self.stop = stop or asyncio.Event()
        self.started = time.monotonic()
        self.now = datetime.now(UTC)
        self.entities: asyncio.Queue[object] = asyncio.Queue(maxsize=source.concurrency * 2)
        self.results: asyncio.Queue[object] = asyncio.Queue(maxsize=max(source.write_batch * 2, 16))
        self.unprocessed: list[JSON] = []
        self.exhausted = False  # the selection had no more entities (a breaker trip then stopped nothing)
        self.transients = backoff.Transients(source)  # counted at the end of the run (runner.backoff)
        # Claim about a quarter second of this runner's work at a time: runners of one source share
        # the due set instead of the first one claiming all of it.
        per_request = source.request.batch.size if source.request.batch else 1
        self.claim_size = ClaimSize(source.concurrency * per_request)
        self.inflight: set[JSON] = set()  # keys being fetched: released if the grace period cuts them
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

    # --- stopping ---------------------------------------------------------------------------------
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
        elif status == "failed" and self.report.status == "completed":
            # A failure while --max-runtime lets in-flight work finish (a token endpoint that never
            # answered, say) is still a failure: the run must not end `completed`, exit 0.
            self.report.status = status
            self.report.error = self.settings.redact(error) if error is not None else None

    # --- the pipeline -----------------------------------------------------------------------------
    async def produce(self, chunks: Iterator[list[dict[str, JSON]]]) -> None:
        """Feed the fetchers groups of entities: one each, or `request.batch.size` for batched requests
        (grouped here, in selection order, so batches are full and deterministic)."""
        size = self.source.request.batch.size if self.source.request.batch else 1
        group: list[dict[str, JSON]] = []
        while not self.stop.is_set():
            try:
                chunk = await asyncio.to_thread(next, chunks, None)
            except (DatabaseError, psycopg.Error) as error:
                self.halt("failed", f"selecting entities: {error}")
                break
            if chunk is None:
                self.exhausted = True
                break
            for entity in chunk:
                group.append(entity)
                if len(group) == size:
                    await self.hand_over(group)
                    group = []
        if group:
            await self.hand_over(group)
        # Not in a `finally`: a producer cut by the grace period (or a bug) must not then wait on a full
        # queue that no fetcher reads any more (a hang seen when every fetcher had crashed); the
        # fetchers are cut with it, so nobody waits for these.
        for _ in range(self.source.concurrency):
            await self.entities.put(_DONE)

    async def hand_over(self, group: list[dict[str, JSON]]) -> None:
        if self.stop.is_set():
            self.unprocessed.extend(entity[self.source.entities.key] for entity in group)
        else:
            await self.entities.put(group)

    async def fetcher(self) -> None:
        while (group := await self.entities.get()) is not _DONE:
            assert isinstance(group, list)
            keys = [entity[self.source.entities.key] for entity in group]
            if self.stop.is_set():
                self.unprocessed.extend(keys)
                continue
            self.inflight.update(keys)
            traces = await (self.process_batch(group) if self.source.request.batch else self.process(group[0]))
            if not traces:  # the run failed under this group (Retry-After beyond max_wait): release it
                self.unprocessed.extend(keys)
            for trace in traces:
                self.judge(trace)
                await self.results.put(trace)
            self.inflight.difference_update(keys)
            self.claim_size.done(len(keys))

    async def process(self, entity: dict[str, JSON]) -> list[Trace]:
        trace = Trace(entity)
        try:
            ask = self.validators.headers(entity)
            listing = await fetch.entity(
                self.http, self.source, entity, self.settings, limiter=self.limiter, sleep=self.sleep, headers=ask
            )
            keep = listing[-1].keep if listing else None
            trace.result = self.classify(entity, self.replies(listing), trace, keep=keep)
            if listing and listing[-1].capped:  # the rows beyond the cap were not read: replace_by deletes none
                trace.result = replace(trace.result, partial=True)
                self.capped(trace, listing[-1].capped)
        except RunFailed as error:
            self.halt("failed", self.settings.redact(str(error)))
            return []
        except Stopped:
            return []  # never sent: left for a later run
        except EntityError as error:
            trace.result = self.failure(entity, str(error), definitive=error.definitive)
        return [trace]

    async def process_batch(self, group: list[dict[str, JSON]]) -> list[Trace]:
        """One request for several entities; each *requested* entity gets its own outcome, so an id
        the API left out is "no data" for that entity and a failed request fails every one of them."""
        batch = self.source.request.batch
        assert batch is not None
        key = self.source.entities.key
        group = sorted(group, key=lambda entity: entity[key])  # deterministic requests (and replays)
        joined = batch.separator.join(str(entity[key]) for entity in group)
        traces = [Trace(entity) for entity in group]
        try:
            listing = await fetch.entity(
                self.http,
                self.source,
                group[0],
                self.settings,
                limiter=self.limiter,
                sleep=self.sleep,
                params={batch.param: joined},
            )
        except RunFailed as error:
            self.halt("failed", self.settings.redact(str(error)))
            return []
        except Stopped:
            return []
        except EntityError as error:
            for trace in traces:
                trace.result = self.failure(trace.entity, str(error), definitive=error.definitive)
            return traces
        replies = self.replies(listing)
        for trace in traces:
            try:
                parts = [self.part(reply, trace.entity) for reply in replies]
                trace.result = self.classify(trace.entity, parts, trace, whole=replies[0].body, keep=listing[-1].keep)
                if listing[-1].capped:
                    trace.result = replace(trace.result, partial=True)
                    self.capped(trace, listing[-1].capped)
            except EntityError as error:
                trace.result = self.failure(trace.entity, str(error), definitive=error.definitive)
        return traces

    def replies(self, listing: list[fetch.Page]) -> list[fetch.Reply]:
        """The replies of an entity's listing; one cut by max_pages/max_items makes the run not complete."""
        if listing and listing[-1].capped:
            self.complete = False
        return [page.reply for page in listing]

    def capped(self, trace: Trace, why: str) -> None:
        """An entity's listing cut by a cap: counted for the summary line and the job's metadata
        ({"capped_entities": N}), logged, and shown by test-read; its rows beyond the cap were not read."""
        trace.capped = why
        self.report.capped += 1
        self.report.metadata["capped_entities"] = self.report.capped
        key = trace.entity.get(self.source.entities.key)
        log.warning(
            "%s: the listing of %s=%s was capped (%s): not complete, its pages beyond the cap were not read",
            self.source.name,
            self.source.entities.key,
            self.settings.redact(str(key)),
            why,
        )

    def part(self, reply: fetch.Reply, entity: dict[str, JSON]) -> fetch.Reply:
        """This entity's view of a batched reply: `body` is what `batch.record` picks for it."""
        batch = self.source.request.batch
        assert batch is not None
        document = mapping.context(reply.body, reply.status, reply.headers, entity, self.run_values())
        return replace(reply, body=batch.record.search(document) if reply.body is not None else None)

    def classify(
        self,
        entity: dict[str, JSON],
        replies: list[fetch.Reply],
        trace: Trace,
        *,
        whole: JSON = None,
        keep: int | None = None,
    ) -> writer.EntityResult:
        """The entity's outcome and rows; `keep`: only the first records of the last reply (max_items)."""
        first = replies[0]
        trace.requests = [reply.url for reply in replies]
        trace.status, trace.elapsed = first.status, sum(r.elapsed for r in replies)
        trace.excerpt = fetch.describe(first)
        stamp_on_skip = self.source.status.stamp_on_skip if self.source.status else False
        if first.status == 304 and self.validators.enabled:  # Not Modified: only an answer to validators sent
            unchanged = self.result(entity, spec.Outcome.SKIP, stamp=True, unchanged=True)
            return unchanged if self.validators.asked(entity) else unchanged.failed(NOT_ASKED)
        decision = outcomes.classify(self.source.outcomes, first, entity, stamp_on_skip=stamp_on_skip)
        trace.rule = decision.rule
        rule = self.source.outcomes[decision.index - 1] if decision.index else None
        trace.declared = rule is not None and not any(rule is default for default in DEFAULT_OUTCOMES)
        if decision.outcome is spec.Outcome.ERROR:
            # A refused credential is the source's problem, not the entity's: record, don't penalise.
            definitive = first.status not in breaker.AUTH_STATUSES
            return self.failure(entity, decision.message or f"HTTP {first.status}", definitive=definitive)
        if decision.outcome is not spec.Outcome.SUCCESS:
            return self.result(
                entity, decision.outcome, stamp=decision.stamp, skip_until=decision.until, values=dict(decision.values)
            )
        rows: dict[int, list[mapping.Row]] = {index: [] for index in range(len(self.source.writes))}
        values: dict[str, JSON] = dict(decision.values)
        for number, reply in enumerate(replies, start=1):
            if reply.body is None:
                raise MappingError(f"expected a JSON body, got {fetch.describe(reply)}")
            base = mapping.context(reply.body, reply.status, reply.headers, entity, self.run_values(), whole=whole)
            redact = self.settings.redact.value  # an API that echoes a token never gets it stored
            cut = keep if number == len(replies) else None
            idle = self.settings.redact.idle  # no secret yet: redacting returns every value as it is
            for index, produced in mapping.rows(self.source, base, keep=cut).items():
                rows[index].extend(produced if idle else mapping.redacted(produced, redact))
            if self.source.status is not None:
                status = mapping.status_values(self.source.status, base)
                values.update({column: redact(value) for column, value in status.items()})
        validators = self.validators.kept(first, self.settings.redact) if self.validators.enabled else None
        return self.result(entity, spec.Outcome.SUCCESS, rows=rows, stamp=True, values=values, validators=validators)

    def result(self, entity: dict[str, JSON], outcome: spec.Outcome, **fields: Any) -> writer.EntityResult:
        return writer.EntityResult(
            key=entity.get(self.source.entities.key, entity.get(_PAGE)),
            entity=entity,
            outcome=outcome,
            rows=fields.get("rows", {}),
            error=fields.get("error"),
            definitive=fields.get("definitive", True),
            stamp=fields.get("stamp", False),
            skip_until=fields.get("skip_until"),
            error_source=self.source.name,
            status_values=fields.get("values", {}),
            validators=fields.get("validators"),
            unchanged=fields.get("unchanged", False),
        )

    def failure(self, entity: dict[str, JSON], message: str, *, definitive: bool) -> writer.EntityResult:
        # API text can echo a token back (an error page quoting the request): redact before storing.
        return self.result(entity, spec.Outcome.ERROR, error=self.settings.redact(message), definitive=definitive)

    def run_values(self) -> dict[str, JSON]:
        return mapping.run_values(self.now, self.report.job_id)

    async def write(self, conn: database.Link | None) -> None:
        """Batch results into write transactions until the fetchers are done. The writer never stops
        consuming before that, even after a failure: a fetcher blocked on a full queue would hang the
        run (and leave its job `running`)."""
        batch: list[Trace] = []
        finished = False
        crash: BaseException | None = None
        while not finished:
            ready = self.results.qsize()  # wait_for makes a task per call: only when nothing is ready
            try:
                item = self.results.get_nowait() if ready else await asyncio.wait_for(self.results.get(), _FLUSH_EVERY)
            except TimeoutError:
                item = None
            finished = item is _DONE
            if isinstance(item, Trace):
                batch.append(item)
            if batch and (finished or item is None or len(batch) >= self.source.write_batch):
                try:
                    await self.flush(conn, batch)
                except Exception as error:  # a bug: stop the run, keep draining, surface it at the end
                    crash = crash or error
                    self.write_failed = True
                    self.halt("failed", f"internal error while writing: {error!r}")
                batch = []
        if crash is not None:
            raise crash

    async def flush(self, conn: database.Link | None, batch: list[Trace]) -> None:
        results = [t.result for t in batch if t.result is not None]
        if conn is not None:
            if self.write_failed:  # the database is gone: nothing more is written or counted
                self.unprocessed.extend(result.key for result in results)
                return
            tally = writer.Tally()
            try:
                failed = await asyncio.to_thread(
                    conn.call,
                    writer.write,
                    self.source,
                    results,
                    catalog=self.catalog,
                    job_id=self.report.job_id,
                    holder=self.options.holder,
                    tally=tally,
                )
            except (DatabaseError, psycopg.Error) as error:
                # Nothing of this batch committed (one transaction), so none of it is counted.
                self.write_failed = True
                self.unprocessed.extend(result.key for result in results)
                self.halt("failed", self.settings.redact(f"writing to the database failed: {error}"))
                return
            c = self.report.counters  # rows of the primary target this batch inserted / updated
            self.report.counters = replace(c, created=c.created + tally.created, updated=c.updated + tally.updated)
            replaced = {id(f.entity): f for f in failed}
            # as written: a claim lost or a value that turned out not to fit is no transient failure
            self.transients.note(
                (t.result, t.status) for t in batch if t.result is not None and id(t.result.entity) not in replaced
            )
            for trace in batch:
                if trace.result is not None and id(trace.result.entity) in replaced:
                    trace.result = replaced[id(trace.result.entity)]
        for trace in batch:
            self.count(trace)
        if conn is not None and self.report.job_id is not None and results:
            # The job row's counters follow the commits (one cheap update per batch): a runner killed
            # outright leaves a row, reaped later, that says what it committed (jobs.heartbeat).
            counters = replace(self.report.counters, requests=self.limiter.requests)
            try:
                await asyncio.to_thread(conn.call, jobs.heartbeat, self.report.job_id, counters)
            except (DatabaseError, psycopg.Error) as error:
                log.warning("%s: could not update the job's counters (%s)", self.source.name, error)
        if self.options.dry_run:
            self.report.traces.extend(batch)

    def count(self, trace: Trace) -> None:
        result = trace.result
        assert result is not None
        c = self.report.counters
        kind = {"success": "succeeded", "error": "failed", "delete": "deleted"}.get(result.outcome.value, "skipped")
        kind = "unchanged" if result.unchanged and result.outcome is not spec.Outcome.ERROR else kind
        n = 1 if trace.items is None else trace.items  # a list source counts a page's records, not the page
        if trace.items is not None:
            pages = self.report.metadata
            pages["pages"] = int(pages.get("pages") or 0) + 1
            if result.outcome is spec.Outcome.ERROR:
                pages["pages_failed"] = int(pages.get("pages_failed") or 0) + 1
        c = replace(c, processed=c.processed + n, **{kind: getattr(c, kind) + n})
        self.report.counters = c
        progress.tick(self.source.name, c, result.error)
        if result.outcome is spec.Outcome.ERROR:
            log.warning("%s %s failed: %s", self.source.name, result.key, result.error)
        every = self.options.progress_every
        if c.processed // every > (c.processed - n) // every:
            log.info("progress", extra={"source": self.source.name, **self.progress()})

    def judge(self, trace: Trace) -> None:
        """Each outcome reaches the breaker when known, not when written (a batch of bad-key requests later)."""
        assert trace.result is not None
        result = trace.result
        if result.outcome is spec.Outcome.ERROR and not result.definitive and trace.status in breaker.AUTH_STATUSES:
            trace.result = replace(result, refused=True)  # recorded as such (syncrun_state.refused)
        if trip := self.breaker.judge(trace.result, trace.status, known_bad=self.history.known_bad(trace.entity)):
            log.error("%s: %s", self.source.name, trip)
            self.halt("failed", trip)

    def progress(self) -> dict[str, JSON]:
        c = self.report.counters
        elapsed = time.monotonic() - self.started
        return {
            "processed": c.processed,
            "succeeded": c.succeeded,
            "failed": c.failed,
            "skipped": c.skipped,
            "requests": self.limiter.requests,
            "rate": round(c.processed / elapsed, 2) if elapsed else 0.0,
        }


async def run(
    sources: list[spec.Source],
    options: Options,
    *,
    settings: Settings,
    limiters: dict[str, Limiter],
    connect: Connect | None,
    catalog: Any = None,
    transport: Callable[[spec.Source], httpx.AsyncBaseTransport | None] | None = None,
    sleep: Callable[[float], Any] = asyncio.sleep,
    install_signals: bool = True,
    tokens: Tokens | None = None,
) -> list[Report]:
    """Run sources side by side to the end (or until stopped); one Report each, in order.

    Sources naming the same rate-limit bucket share its limiter. With `options.dry_run` nothing is
    written: no job row, no rows, no status. `connect` may then be None when `--ids` names the
    entities and the selection needs no database. `tokens`: the run's OAuth2 tokens (runner/auth.py).
    """
    stops = [asyncio.Event() for _ in sources]
    tokens = tokens or Tokens()  # sources using one auth block share its token
    clients = [
        client.build(
            s.request,
            limiters[s.rate_limit.bucket],
            transport=transport(s) if transport else None,
            max_connections=s.concurrency,
            stop=stop,  # a request still waiting for its grant when the run stops is not sent
            authenticator=authenticator_for(s, settings, tokens, limiters[s.rate_limit.bucket]),
        )
        for s, stop in zip(sources, stops, strict=True)
    ]
    states = [
        _Run(s, options, settings, limiters[s.rate_limit.bucket], http, connect, catalog, sleep, stop)
        for s, http, stop in zip(sources, clients, stops, strict=True)
    ]
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if install_signals else ()
    for signum in signals:
        loop.add_signal_handler(signum, _halt_all, states, signum)
    try:
        return list(await asyncio.gather(*(_drive(state) for state in states)))
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        for http in clients:
            await http.aclose()


def _halt_all(states: list[_Run], signum: int) -> None:
    log.warning("received %s: finishing in-flight entities, taking no new ones", signal.Signals(signum).name)
    for state in states:
        name = signal.Signals(signum).name
        state.halt("cancelled", CANCELLED.format(signal=name), signum, reason=name)


async def _drive(state: _Run) -> Report:
    source, options = state.source, state.options
    select_conn = state.connect() if state.connect else None
    write_link = database.Link(state.connect) if state.connect and not options.dry_run else None
    job_link = database.Link(state.connect) if state.connect and not options.dry_run else None
    side: list[asyncio.Task[None]] = []
    lease = None
    try:
        if job_link is not None and source.entities.type is spec.SelectionType.LIST:
            lease = listings.Lease(source.name, state.options.heartbeat_every)
            if not await asyncio.to_thread(job_link.call, lease.take):
                state.report.status, state.report.error, lease = "busy", lease.busy, None
                log.warning("%s: %s", source.name, state.report.error)
                return state.report
            state.lease = lease
        if job_link is not None:
            state.report.job_id = await asyncio.to_thread(
                job_link.call,
                jobs.start,
                source.job_type,
                batch_size=options.limit,
                github_run_id=options.github_run_id,
                metadata=options.metadata,
                started_at=state.now,
            )
            if lease is not None:
                await asyncio.to_thread(job_link.call, lease.bind, state.report.job_id)
            await _steps(state, job_link, source.before, "before")
        side = [asyncio.create_task(_heartbeat(state, job_link)), asyncio.create_task(_deadline(state))]
        if source.entities.type is spec.SelectionType.LIST:
            await _catalogue(state, write_link, job_link)
        else:
            await _pipeline(state, select_conn, write_link)
        await _cancel(side)
        _conclude(state)
        if job_link is not None:
            await _steps(state, job_link, source.after, "after")
    except BaseException as error:
        state.report.status = "failed"
        state.report.error = state.settings.redact(f"{type(error).__name__}: {error}")
        raise
    finally:
        await _cancel(side)  # no heartbeat may start after the final update (a running one is waited for)
        _close(state, job_link)
        if lease is not None and job_link is not None:  # else it lapses LEASE_BEATS heartbeats later
            with contextlib.suppress(DatabaseError, psycopg.Error):
                job_link.call(lease.release)
        if select_conn is not None:
            select_conn.close()
        for link in (write_link, job_link):
            if link is not None:
                link.close()
    return state.report


async def _pipeline(state: _Run, select_conn: psycopg.Connection[Any] | None, write_conn: database.Link | None) -> None:
    """Entity-shaped sources: selection -> concurrent fetchers -> batched writer."""
    if state.options.restart and write_conn is not None and state.validators.enabled:
        forgotten = await asyncio.to_thread(write_conn.call, forget_validators, state.source.name)
        log.info(
            "%s: --restart: forgot %d stored validator(s); requests are unconditional", state.source.name, forgotten
        )
    tasks = [
        asyncio.create_task(
            state.produce(
                state.validators.attach(select_conn, state.history.attach(select_conn, _chunks(state, select_conn)))
            )
        ),
        *(asyncio.create_task(state.fetcher()) for _ in range(state.source.concurrency)),
    ]
    writer_task = asyncio.create_task(state.write(write_conn))
    try:
        await _finish_fetching(state, tasks)
    finally:  # even when a fetcher crashed: what was fetched is written, and counted, before the run ends
        await state.results.put(_DONE)
        await writer_task
    state.complete = state.complete and state.report.counters.failed == 0


async def _catalogue(state: _Run, write_conn: database.Link | None, cursor_conn: database.Link | None) -> None:
    """List-shaped sources: the page is the unit. Pages are sequential (each needs the previous
    cursor); each page's rows commit, then its cursor is checkpointed with the listing's start time
    and page count, so an interrupted or capped run resumes where it stopped (`--restart` starts
    over). Reading to the natural end clears the checkpoint.

    A page either succeeds or is the listing's declared end (a skip by an outcome rule of the source's
    own, as SteamSpy's `end of catalogue`); anything else, a default rule's skip of a 404 included,
    fails the run: a listing with a hole in it is never complete."""
    source, options = state.source, state.options
    start, done = None, 0  # done: pages of this listing read by earlier runs
    # `--set incremental.start=…` asks from that point for this run: a new listing, whatever was stored
    again = "incremental.start" in options.overridden and source.incremental is not None
    url = listings.address(source, state.settings)  # a checkpoint is resumed only by the same listing
    if cursor_conn is not None and not options.restart and not again:
        checkpoint = await asyncio.to_thread(cursor_conn.call, jobs.load_cursor, source.name)
        if checkpoint is not None and not listings.resumable(checkpoint, url):
            log.warning(
                "%s: the checkpoint was made for another URL (%s, now %s): not resumed, the listing starts over",
                source.name,
                checkpoint.url,
                url,
            )
        elif checkpoint is not None:
            start, done, state.listing_started = checkpoint.position, checkpoint.pages, checkpoint.listing_started_at
            log.info("%s: resuming at %s (use --restart to start over)", source.name, _where(state, start, done))
    # incremental: ${incremental.since}, advanced at the end, never past when the listing started
    marks = Tracker(source, cursor_conn, ceiling=state.listing_started or state.now)
    state.settings = await marks.begin(
        state.settings, restart=options.restart, resumed=start is not None, override=again
    )
    paged = _record_cap(source, options.max_items)
    pages = fetch.pages(state.http, paged, {}, state.settings, limiter=state.limiter, sleep=state.sleep, start=start)
    number, capped, resume = done, "", start
    try:
        while (page := await fetch.next_page(pages, state.stop, state.options.grace)) is not None:
            trace = Trace({_PAGE: number}, items=page.items)
            try:
                trace.result = state.classify({_PAGE: number}, [page.reply], trace, keep=page.keep)
                if (problem := _not_a_page(trace)) is not None:
                    trace.result = state.failure({_PAGE: number}, problem, definitive=True)
            except EntityError as error:
                trace.result = state.failure({_PAGE: number}, str(error), definitive=error.definitive)
            await state.flush(write_conn, [trace])
            if trace.result is None or trace.result.outcome is spec.Outcome.ERROR:
                # The next cursor came from a page we could not use: stop here, resume later. A
                # listing that stopped early is never a completed run.
                state.complete = False
                state.halt(
                    "failed",
                    LISTING_PAGE_FAILED.format(
                        page=number + 1, error=trace.result.error if trace.result else "no result"
                    ),
                )
                return
            # A page cut by max_items is read again from its start when the listing resumes.
            number += 1 if page.keep is None else 0
            await marks.page(page.reply, trace.result.outcome, state.report.job_id)  # before the checkpoint
            if cursor_conn is not None:
                if page.resume is None:
                    await asyncio.to_thread(cursor_conn.call, jobs.clear_cursor, source.name)
                elif state.settings.redact(str(page.resume)) != str(page.resume):
                    # A next link echoing a secret under a name the source does not send it as: never
                    # stored. The previous checkpoint stays: an interrupted listing re-reads pages.
                    log.warning("%s: the position of page %d holds a secret: not checkpointed", source.name, number + 1)
                else:
                    await asyncio.to_thread(
                        cursor_conn.call,
                        jobs.save_cursor,
                        source.name,
                        page.resume,
                        state.report.job_id,
                        listing_started_at=state.listing_started,
                        pages=number,
                        url=url,
                    )
            capped, resume = page.capped, page.resume
            if state.stop.is_set():
                break
        ended = number > done and resume is None and not capped  # the last page read had no next one
        if state.stop.is_set() and not ended and not capped:  # a signal, --max-runtime, a slow page: resume later
            _unfinished(state, "interrupted", "the run stopped before its end", resume, number)
            return
        if capped:  # declared by the user (or the default page cap): the run completes, the listing does not
            _unfinished(state, "capped", capped, resume, number)
            return
        # The pages ran out by themselves (an empty or last page): the whole catalogue was read, so
        # after-steps with `when: complete` may run and the next run starts over.
        state.report.metadata["listing"] = "complete"
        if state.listing_started is None:
            state.complete = False
            log.warning(
                "%s: the listing is complete, but it resumed from a checkpoint that did not record when the"
                " listing started; `when: complete` steps are not run this time",
                source.name,
            )
        else:
            state.report.metadata["listing_started_at"] = state.listing_started.isoformat()
        if cursor_conn is not None:
            await asyncio.to_thread(cursor_conn.call, jobs.clear_cursor, source.name)
        await marks.complete(state.listing_started, state.report.job_id)
    except RunFailed as error:
        state.complete = False
        state.halt("failed", state.settings.redact(str(error)))
    except Stopped:  # the next page's request never left: resume from the checkpoint
        _unfinished(state, "interrupted", "the run stopped before its end", resume, number)
    except PaginationError as error:  # going on would lose items: the listing is partial, the run fails
        state.complete = False
        state.halt("failed", str(error))
    except EntityError as error:
        state.complete = False
        trace = Trace({_PAGE: number})
        trace.result = state.failure({_PAGE: number}, str(error), definitive=error.definitive)
        await state.flush(write_conn, [trace])
        state.halt("failed", LISTING_PAGE_FAILED.format(page=number + 1, error=error))
    finally:
        if marks.beyond:
            state.report.metadata["watermark_capped"] = marks.beyond
            log.warning(
                "%s: %d record(s) had an incremental.cursor later than when the listing started (latest %s):"
                " the watermark does not pass %s",
                source.name,
                marks.beyond,
                state.settings.redact(watermark_text(marks.latest) if marks.latest is not None else "?"),
                watermark_text(marks.ceiling) if marks.ceiling is not None else "?",
            )
        if not state.complete and "listing" not in state.report.metadata:
            state.report.metadata["listing"] = "failed" if state.report.status == "failed" else "interrupted"
        await pages.aclose()


def _record_cap(source: spec.Source, limit: int | None) -> spec.Source:
    """The source as this run pages it: an explicit --limit caps the records like max_items does."""
    cap = source.pagination.max_items
    if limit is None or (cap is not None and cap <= limit):
        return source
    return replace(source, pagination=replace(source.pagination, max_items=limit))


def _not_a_page(trace: Trace) -> str | None:
    """Why a list source's reply is neither a page nor the listing's declared end; None when it is one.
    A default rule's skip (a 404 from a typo'd URL) is not an end: taken as one, the `when: complete`
    cleanup would delete every row the listing wrote."""
    result = trace.result
    if result is None or result.outcome in (spec.Outcome.SUCCESS, spec.Outcome.ERROR):
        return None
    if trace.declared and result.outcome in (spec.Outcome.SKIP, spec.Outcome.SKIP_UNTIL):
        return None
    url = trace.requests[-1] if trace.requests else "?"
    how = f"the default outcome rule '{trace.rule}'" if not trace.declared else f"outcome rule '{trace.rule}'"
    return (
        f"HTTP {trace.status} from {url}: {how} files it as {result.outcome.value}, but a list source's page"
        " must succeed; only a skip by an outcome rule of the source's own ends a listing"
    )


def _where(state: _Run, position: JSON, pages: int) -> str:
    """A checkpoint in words: `page 3 (cursor=abc)`, redacted."""
    name = state.source.pagination.param or "next page"
    return state.settings.redact(f"page {pages + 1} ({name}={position})")


def _unfinished(state: _Run, kind: str, why: str, resume: JSON, pages: int) -> None:
    """A listing that stopped before its end without failing: capped or interrupted. The run says so
    (summary line, job metadata); its `when: complete` steps do not run."""
    state.complete = False
    where = _where(state, resume, pages) if resume is not None else "its first page (no page was read)"
    state.report.listing = f"listing not complete: {why}; resumes at {where}"
    state.report.metadata.update({"listing": kind, "resumes_at_page": pages + 1})


async def _steps(state: _Run, conn: database.Link, steps_: tuple[spec.Step, ...], phase: str) -> None:
    if not steps_:
        return
    complete = state.complete and state.report.status == "completed"
    # A list source's listing may span runs: its steps get the time the listing started (its first
    # run), so `delete … where seen_at < %(started_at)s` spares what the earlier runs of it wrote.
    listing = state.source.entities.type is spec.SelectionType.LIST
    started = state.listing_started if listing and state.listing_started is not None else state.now
    params = {"job_id": state.report.job_id, "started_at": started, "source": state.source.name}
    await asyncio.to_thread(conn.call, steps.run, steps_, phase=phase, complete=complete, params=params)


def _chunks(state: _Run, conn: psycopg.Connection[Any] | None) -> Iterator[list[dict[str, JSON]]]:
    source, options = state.source, state.options
    if conn is None:  # dry run with --ids and a key-only selection: no database needed
        key = source.entities.key
        ids = [selection.cast_key(source, value) for value in options.ids or ()]
        return iter([[{key: value} for value in ids]] if ids else [])
    return selection.chunks(
        conn,
        source,
        limit=options.limit,
        holder=options.holder,
        lease_seconds=options.lease,
        ids=options.ids,
        partition=options.partition,
        claim=not options.dry_run,
        chunk_size=state.claim_size.size,
    )


async def _finish_fetching(state: _Run, tasks: list[asyncio.Task[None]]) -> None:
    """Wait for the fetchers; once stopped, give in-flight entities `grace` seconds, then cut them."""
    pending: set[asyncio.Task[Any]] = set(tasks)
    stop_wait: asyncio.Task[Any] = asyncio.create_task(state.stop.wait())
    while pending:
        done, pending = await asyncio.wait(pending | {stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        pending.discard(stop_wait)
        crashed = [t.exception() for t in done if t is not stop_wait and not t.cancelled() and t.exception()]
        if crashed:  # a bug: stop taking entities (the producer would wait forever for fetchers that are gone)
            state.halt("failed", state.settings.redact(f"internal error: {crashed[0]!r}"))
        if stop_wait in done or state.stop.is_set():
            break
    if pending:
        _, late = await asyncio.wait(pending, timeout=state.options.grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    stop_wait.cancel()
    # Every task's exception is read, not just the first one raised: several fetchers meeting the same
    # error (a shared limiter refusing the bucket) left asyncio's "Task exception was never retrieved"
    # dumps on stderr after the real message.
    errors = [task.exception() for task in tasks if task.done() and not task.cancelled()]
    for error in errors:
        if error is not None:
            raise error  # a bug in the pipeline, or the limiter's store: surface it


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _heartbeat(state: _Run, job_link: database.Link | None) -> None:
    if job_link is None or state.report.job_id is None:
        return
    while True:
        await asyncio.sleep(state.options.heartbeat_every)
        counters = replace(state.report.counters, requests=state.limiter.requests)
        try:
            await asyncio.to_thread(job_link.call, jobs.heartbeat, state.report.job_id, counters)
            # Claims live as long as their runner does: renewed with the heartbeat, expire after a crash.
            await asyncio.to_thread(
                job_link.call, selection.renew, state.source, state.options.holder, state.options.lease
            )
            if state.lease is not None and not await asyncio.to_thread(job_link.call, state.lease.renew):
                state.halt("failed", listings.LOST.format(source=state.source.name, seconds=state.lease.seconds))
        except (DatabaseError, psycopg.Error) as error:
            log.warning("%s: heartbeat failed (%s); retrying at the next beat", state.source.name, error)


async def _deadline(state: _Run) -> None:
    if state.options.max_runtime is None:
        return
    await asyncio.sleep(state.options.max_runtime)
    log.info("max runtime reached: taking no new entities")
    state.halt("completed", None, reason="max_runtime")


def _conclude(state: _Run) -> None:
    report, source = state.report, state.source
    report.elapsed = time.monotonic() - state.started
    report.counters = replace(report.counters, requests=state.limiter.requests)
    c = report.counters
    # "stopped" only if it stopped something: entities left unprocessed, or a selection not yet exhausted
    stopped = bool(state.unprocessed or state.inflight) or not state.exhausted
    if (state.breaker.late or not stopped) and (message := state.breaker.message(stopped=stopped)):
        log.error("%s: %s", source.name, message)
        report.error = state.settings.redact(message)
    if report.status == "completed" and c.processed and c.failed / c.processed > source.fail_ratio:
        report.status = "failed"
        what = "records" if source.entities.type is spec.SelectionType.LIST else "entities"
        report.error = FAIL_RATIO.format(failed=c.failed, processed=c.processed, what=what, ratio=source.fail_ratio)


def _close(state: _Run, job_link: database.Link | None) -> None:
    """Always finalise: a job row never stays `running` after its run is over (reconnecting if the
    database restarted under the run), and claims this run will not use are released."""
    report = state.report
    # Every way out counts the requests made: only a run that concluded set them, and one that failed
    # (a limiter's store gone, a bug) or was cut by a signal left the job row saying 0.
    report.counters = replace(report.counters, requests=state.limiter.requests)
    if job_link is None:
        return
    keys = [*state.unprocessed, *state.inflight]
    try:
        # a breaker run too: entities failing on every run must back off, or they stop every run (runner/breaker.py)
        if state.transients.keys:
            job_link.call(backoff.record, state.source, state.transients.keys)
    except (DatabaseError, psycopg.Error) as error:
        log.warning("%s: could not count transient failures (%s)", state.source.name, error)
    try:
        if keys:
            job_link.call(selection.release, state.source, state.options.holder, keys)
    except (DatabaseError, psycopg.Error) as error:
        log.warning("%s: could not release claims (%s); they expire with their lease", state.source.name, error)
    if report.job_id is not None:
        job_link.call(
            jobs.finish, report.job_id, report.status, report.counters, report.error, metadata=report.metadata or None
        )
