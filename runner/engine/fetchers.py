"""Entity-shaped sources' fetching: the producer hands groups of selected entities to `concurrency`
fetchers; each fetches (runner/fetch.py, under the limiter), classifies, and queues the traces for
the writer. The breaker judges each outcome as soon as it is known."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import replace

import psycopg

from runner import breaker, fetch, spec
from runner.engine import batches, classification, writes
from runner.engine.report import Trace
from runner.engine.state import DONE, Run
from runner.errors import DatabaseError, EntityError, RunFailed, Stopped
from runner.expressions import JSON

log = logging.getLogger("syncrun")

Chunk = list[dict[str, JSON]] | None  # a claimed chunk of entities; None: the selection is exhausted
_CLAIM_WAIT = 10.0  # seconds a cut producer waits for its running claim statement (then the lease frees it)
# _STAGGER: the first chunk's groups are handed over one event-loop pass apart. Handed over at once,
# every fetcher built and started its request (~0.3 ms each) before the loop saw the first connection
# open, so the run's first request went out after all of them; now the first connection's steps
# take turns with the later fetchers' starts. Later chunks go at once (a pass per entity costs).


async def produce(
    state: Run, chunks: Iterator[list[dict[str, JSON]]], claimed: asyncio.Future[Chunk] | None = None
) -> None:
    """Feed the fetchers groups of entities: one each, or `request.batch.size` for batched requests
    (grouped here, in selection order, so batches are full and deterministic). `claimed`: the first
    chunk's claim, already started (`claim`)."""
    size = state.source.request.batch.size if state.source.request.batch else 1
    group: list[dict[str, JSON]] = []
    first = True
    while not state.stop.is_set():
        try:
            chunk = await (claimed if first and claimed is not None else _next(chunks))
        except (DatabaseError, psycopg.Error) as error:
            state.halt("failed", f"selecting entities: {error}")
            break
        if chunk is None:
            state.exhausted = True
            break
        for entity in chunk:
            group.append(entity)
            if len(group) == size:
                await hand_over(state, group)
                group = []
                if first:  # one pass apart (_STAGGER above)
                    await asyncio.sleep(0)
        first = False
    if group:
        await hand_over(state, group)
    # Not in a `finally`: a producer cut by the grace period (or a bug) must not then wait on a full
    # queue that no fetcher reads any more (a hang seen when every fetcher had crashed); the
    # fetchers are cut with it, so nobody waits for these.
    for _ in range(state.source.concurrency):
        await state.entities.put(DONE)


def claim(chunks: Iterator[list[dict[str, JSON]]]) -> asyncio.Future[Chunk]:
    """The next chunk's selection and claim, started now (`settle` it if `produce` never takes it)."""
    return asyncio.ensure_future(_next(chunks))


async def settle(claimed: asyncio.Future[Chunk]) -> None:
    """Let a claim started by `claim` end, taken or not: its statement runs on the select connection,
    and the run releases its claims only after it (what it claimed is released with them)."""
    await asyncio.wait({claimed})
    if not claimed.cancelled():
        claimed.exception()  # read: `produce` reported it, or the run ended before it could


async def _next(chunks: Iterator[list[dict[str, JSON]]]) -> Chunk:
    """The next chunk, selected and claimed in a worker thread. A producer cut by the grace period
    first lets a claim statement already running finish (a thread cannot be cancelled), so the claims
    it takes exist when the run's end releases what it holds."""
    claiming = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
    try:
        return await asyncio.shield(claiming)
    except asyncio.CancelledError:
        await asyncio.wait({claiming}, timeout=_CLAIM_WAIT)
        if claiming.done() and not claiming.cancelled():
            claiming.exception()  # read: an error here has nobody left to report it to
        raise


async def hand_over(state: Run, group: list[dict[str, JSON]]) -> None:
    if state.stop.is_set():
        state.unprocessed.extend(entity[state.source.entities.key] for entity in group)
    else:
        await state.entities.put(group)


async def fetcher(state: Run) -> None:
    while (group := await state.entities.get()) is not DONE:
        assert isinstance(group, list)
        keys = [entity[state.source.entities.key] for entity in group]
        if state.stop.is_set():
            state.unprocessed.extend(keys)
            continue
        state.inflight.update(keys)
        traces = await (batches.process(state, group) if state.source.request.batch else process(state, group[0]))
        if not traces:  # the run failed under this group (Retry-After beyond max_wait): release it
            state.unprocessed.extend(keys)
        for trace in traces:
            judge(state, trace)
            await writes.hand_over(state, trace)
        state.inflight.difference_update(keys)
        state.claim_size.done(len(keys))


async def process(state: Run, entity: dict[str, JSON]) -> list[Trace]:
    trace = Trace(entity)
    try:
        ask = state.validators.headers(entity)
        listing = await fetch.entity(
            state.http, state.source, entity, state.settings, limiter=state.limiter, sleep=state.sleep, headers=ask
        )
        keep = listing[-1].keep if listing else None
        trace.result = classification.classify(state, entity, classification.replies(state, listing), trace, keep=keep)
        if listing and listing[-1].capped:  # the rows beyond the cap were not read: replace_by deletes none
            trace.result = replace(trace.result, partial=True)
            classification.capped(state, trace, listing[-1].capped)
    except RunFailed as error:
        state.halt("failed", state.settings.redact(str(error)))
        return []
    except Stopped:
        return []  # never sent: left for a later run
    except EntityError as error:
        trace.result = classification.failure(state, entity, str(error), definitive=error.definitive)
    return [trace]


def judge(state: Run, trace: Trace) -> None:
    """Each outcome reaches the breaker when known, not when written (a batch of bad-key requests later)."""
    assert trace.result is not None
    result = trace.result
    if result.outcome is spec.Outcome.ERROR and not result.definitive and trace.status in breaker.AUTH_STATUSES:
        trace.result = replace(result, refused=True)  # recorded as such (syncrun_state.refused)
    if trip := state.breaker.judge(trace.result, trace.status, known_bad=state.history.known_bad(trace.entity)):
        log.error("%s: %s", state.source.name, trip)
        state.halt("failed", trip)
