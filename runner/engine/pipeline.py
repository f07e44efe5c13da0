"""The entry point and the main pipeline: sources side by side, each select -> fetch -> write."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import psycopg

from runner import client, database, jobs, listings, selection, spec
from runner.auth import Tokens
from runner.auth import for_source as authenticator_for
from runner.conditional import forget as forget_validators
from runner.engine import bookkeeping, fetchers, stopping, writes
from runner.engine.report import Options, Report
from runner.engine.state import DONE, Connect, Run
from runner.errors import DatabaseError
from runner.events import Finished, Observer
from runner.expressions import JSON
from runner.ratelimit import Limiter
from runner.templating import Settings

log = logging.getLogger("syncrun")


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
    observers: Sequence[Observer] = (),
) -> list[Report]:
    """Run sources side by side to the end (or until stopped); one Report each, in order.

    Sources naming the same rate-limit bucket share its limiter. With `options.dry_run` nothing is
    written: no job row, no rows, no status. `connect` may then be None when `--ids` names the
    entities and the selection needs no database. `tokens`: the run's OAuth2 tokens (runner/auth.py).
    `observers` are told what happens (runner/events.py), the reports last.
    """
    stops = [asyncio.Event() for _ in sources]
    tokens = tokens or Tokens(grace=options.grace)  # sources using one auth block share its token
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
        Run(s, options, settings, limiters[s.rate_limit.bucket], http, connect, catalog, sleep, stop, observers)
        for s, http, stop in zip(sources, clients, stops, strict=True)
    ]
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if install_signals else ()
    for signum in signals:
        loop.add_signal_handler(signum, stopping.halt_all, states, signum, tokens)
    drives = [asyncio.ensure_future(_drive(state)) for state in states]
    try:
        with _collector():
            reports = list(await asyncio.gather(*drives))
    except BaseException:
        # one source failed the run: the others stop now, each finishing its job row and closing its
        # connections while the event loop and the HTTP clients are still up
        for drive in drives:
            drive.cancel()
        await asyncio.gather(*drives, return_exceptions=True)
        raise
    finally:
        try:  # a renewal in flight may hold the close up to --grace: a second signal ends that wait
            for http in clients:
                await http.aclose()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
    for observer in observers:
        observer.notice(Finished(reports))
    return reports


# Young objects a collection of the youngest generation waits for during a run (CPython's default: 700).
# An entity allocates a few hundred containers that die young by reference counting; at 700 the
# collector ran every few entities and a full collection every few hundred, each walking the whole heap.
_GEN0 = 10_000
# Set by `start_up_frozen`: this process froze its start-up's objects itself (runner/cli.py does).
_frozen_at_start = False


def start_up_frozen() -> None:
    """Tell the runs of this process that it froze the objects its start-up made (runner/cli.py, once
    its modules are imported), so that `_collector` knows without asking the collector: in CPython 3.11
    `gc.get_freeze_count()` walks every frozen object (~90,000 after the import, 2-20 ms of each start)."""
    global _frozen_at_start
    _frozen_at_start = True


@contextlib.contextmanager
def _collector() -> Iterator[None]:
    """The garbage collector tuned for the run: what start-up built (modules, specs, compiled plans) is
    frozen, so full collections no longer walk it, and the youngest generation is collected less
    often. Cyclic garbage is still collected, later: at most _GEN0 young objects more wait for it.
    Both are undone when the run ends (a process running several, tests, gets its defaults back). A
    process that froze objects before (runner/cli.py freezes what importing it made) is left as it
    is: freezing again could not be undone without unfreezing its objects too, and each run of such
    a process would keep its start-up's objects, garbage or not, for good."""
    threshold, freezing = gc.get_threshold(), not _frozen_at_start and gc.get_freeze_count() == 0
    if freezing:
        gc.freeze()
    gc.set_threshold(max(threshold[0], _GEN0), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        if freezing:
            gc.unfreeze()


async def _drive(state: Run) -> Report:
    source, options = state.source, state.options
    select_conn: psycopg.Connection[Any] | None = None
    write_link = job_link = None
    side: list[asyncio.Task[None]] = []
    lease = None
    selected: Selected | None = None
    try:
        # inside the `try`: a connection that fails to open closes the ones opened before it
        if state.connect:
            select_conn = state.connect()
            if not options.dry_run:
                write_link = database.Link(state.connect)
                job_link = database.Link(state.connect)
        if job_link is not None and source.entities.type is spec.SelectionType.LIST:
            lease = listings.Lease(source.name, state.options.heartbeat_every)
            if not await asyncio.to_thread(job_link.call, lease.take):
                state.report.status, state.report.error, lease = "busy", lease.busy, None
                log.warning("%s: %s", source.name, state.report.error)
                return state.report
            state.lease = lease
        if job_link is not None:
            if _claims_early(state):  # the first claim beside the job row's insert, not after it
                chunks, _ = _selected(state, select_conn)
                selected = (chunks, fetchers.claim(chunks))
            await _start_job(state, job_link)
            if lease is not None:
                await asyncio.to_thread(job_link.call, lease.bind, state.report.job_id)
            await bookkeeping.run_steps(state, job_link, source.before, "before")
        side = [
            asyncio.create_task(bookkeeping.heartbeat(state, job_link)),
            asyncio.create_task(stopping.deadline(state)),
        ]
        if source.entities.type is spec.SelectionType.LIST:
            # imported for a list-shaped source only: with runner.pagination, ~3 ms of every start
            from runner.engine import catalogue

            await catalogue.read(state, write_link, job_link)
        else:
            await _pipeline(state, write_link, selected or _selected(state, select_conn))
        await stopping.cancel(side)
        bookkeeping.conclude(state)
        if job_link is not None:
            await bookkeeping.run_steps(state, job_link, source.after, "after")
    except psycopg.Error as error:
        # a statement of the run's own bookkeeping refused (the job row's insert behind a trigger, a
        # permission): the run's failure with the server's message (exit 1), not a traceback (exit 70)
        state.report.status = "failed"
        state.report.error = state.settings.redact(str(DatabaseError.refused(error)))
        raise DatabaseError(f"{source.name}: {state.report.error}") from error
    except BaseException as error:
        state.report.status = "failed"
        if isinstance(error, asyncio.CancelledError):  # `run`: another source failed the run
            state.report.error = "stopped before it finished: the run ended (another source failed)"
        else:
            state.report.error = state.settings.redact(f"{type(error).__name__}: {error}")
        raise
    finally:
        if selected is not None and selected[1] is not None:  # its claim statement ends before claims are released
            await fetchers.settle(selected[1])
        await stopping.cancel(side)  # no heartbeat may start after the final update (a running one is waited for)
        try:
            bookkeeping.close(state, job_link)  # its final update refused (a trigger): the rest still runs
        finally:
            if lease is not None and job_link is not None:  # else it lapses LEASE_BEATS heartbeats later
                with contextlib.suppress(DatabaseError, psycopg.Error):
                    job_link.call(lease.release)
            if select_conn is not None:
                select_conn.close()
            for link in (write_link, job_link):
                if link is not None:
                    link.close()
    return state.report


async def _start_job(state: Run, job_link: database.Link) -> None:
    """Insert the job row and keep its id, also when this task is cancelled meanwhile (another
    source's failure ends the run): the thread inserting it cannot be stopped, and a row whose id
    is lost could never be finished (it would stay `running` until a later run reaps it)."""
    source, options = state.source, state.options
    inserting = asyncio.ensure_future(
        asyncio.to_thread(
            job_link.call,
            jobs.start,
            source.job_type,
            batch_size=state.limit,
            github_run_id=options.github_run_id,
            metadata=options.metadata,
            started_at=state.now,
        )
    )
    try:
        state.report.job_id = await asyncio.shield(inserting)
    except asyncio.CancelledError:
        await asyncio.wait({inserting})
        if not inserting.cancelled() and inserting.exception() is None:
            state.report.job_id = inserting.result()
        raise


# An entity-shaped source's selection: its chunks (claimed as they are taken), and the first one's claim
# when it was started early (`_claims_early`).
Selected = tuple[Iterator[list[dict[str, JSON]]], asyncio.Future[fetchers.Chunk] | None]


def _claims_early(state: Run) -> bool:
    """Whether the first chunk may be claimed while the job row is inserted (2-6 ms sooner): an
    entity-shaped source with a database, whose selection nothing run before it may change (`before`
    steps, `--restart`'s forgetting the validators the chunks load). The claims do not name the job."""
    source = state.source
    return source.entities.type is not spec.SelectionType.LIST and not source.before and not state.options.restart


def _selected(state: Run, conn: psycopg.Connection[Any] | None) -> Selected:
    return state.validators.attach(conn, state.history.attach(conn, _chunks(state, conn))), None


async def _pipeline(state: Run, write_conn: database.Link | None, selected: Selected) -> None:
    """Entity-shaped sources: selection -> concurrent fetchers -> batched writer."""
    if state.options.restart and write_conn is not None and state.validators.enabled:
        forgotten = await asyncio.to_thread(write_conn.call, forget_validators, state.source.name)
        log.info(
            "%s: --restart: forgot %d stored validator(s); requests are unconditional", state.source.name, forgotten
        )
    tasks = [
        asyncio.create_task(fetchers.produce(state, *selected)),
        *(asyncio.create_task(fetchers.fetcher(state)) for _ in range(state.source.concurrency)),
    ]
    writer_task = asyncio.create_task(writes.write(state, write_conn))
    try:
        await stopping.finish_fetching(state, tasks)
    finally:  # even when a fetcher crashed: what was fetched is written, and counted, before the run ends
        await state.results.put(DONE)
        await writer_task
    state.complete = state.complete and state.report.counters.failed == 0


def _chunks(state: Run, conn: psycopg.Connection[Any] | None) -> Iterator[list[dict[str, JSON]]]:
    source, options = state.source, state.options
    if conn is None:  # dry run with --ids and a key-only selection: no database needed
        key = source.entities.key
        ids = selection.keys_of(source, options.ids or ())
        return iter([[{key: value} for value in ids]] if ids else [])
    return selection.chunks(
        conn,
        source,
        limit=state.limit,
        holder=options.holder,
        lease_seconds=options.lease,
        ids=options.ids,
        partition=options.partition,
        claim=not options.dry_run,
        chunk_size=state.claim_size.size,
        busy=state.busy,
    )
