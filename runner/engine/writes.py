"""The write side: traces batched into write transactions (runner/writer.py: rows, status and state
commit together), the counters that follow the commits, and the events observers see for them.

What waits for a commit is bounded in bytes as well as in entities: a 10 MB JSON body (max_body)
can decode into ~270 MB of Python objects, and `write_batch` (100) such entities, plus a results
queue twice that long, once held 4.4 GB for 16 of them. Each trace's rows are weighed when its
fetcher hands it over (`weight`: about 64 bytes a JSON value plus string lengths); past HOLD_BYTES
waiting, fetchers wait and the writer commits what it has. A batch still holds whole entities, so
an entity's rows and stamp still commit together; one entity heavier than the bound goes alone."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from operator import itemgetter
from typing import Any

import psycopg

from runner import database, jobs, spec, writer
from runner.engine.report import Trace
from runner.engine.state import Run
from runner.errors import DatabaseError
from runner.events import BatchWritten, EntitiesDone
from runner.results import EntityResult, counted

log = logging.getLogger("syncrun")

_FLUSH_EVERY = 0.25  # seconds a partial write batch may wait for more results
HOLD_BYTES = 64 * 2**20  # rows waiting for their commit, estimated (docs/reliability.md: memory)
_VALUE = 64  # bytes a decoded JSON value costs Python, about: an empty list is 56, plus its slot


def weight(trace: Trace, shared: Shared | None = None) -> int:
    """About the bytes `trace`'s rows hold: _VALUE per row and per JSON value in them, nested ones
    included, plus the length of each string. Counting stops past HOLD_BYTES (such a trace is
    written alone anyway), so weighing one costs at most ~1 M steps. Rows of the same columns are
    weighed a column at a time (`_columns`): a column of numbers or text, most of a bulk page, costs
    no Python step per value; a few rows (one per entity, most often) are walked value by value.
    `shared`: `columns(trace.result)`, when the caller made them (hand_over: `writer.fitted` reads them too)."""
    result = trace.result
    if result is None:
        return _VALUE
    if shared is None:
        shared = columns(result.rows)
    total, pending = _VALUE, list[Any]()
    for index, rows in result.rows.items():
        total += _VALUE * len(rows)
        by_name = shared.get(index)
        if by_name is None:
            for row in rows:
                pending.extend(row.values())
            continue
        for values in by_name.values():
            kinds = set(map(type, values))
            if kinds <= _FLAT:
                total += _VALUE * len(values)
                if str in kinds:
                    total += sum(map(len, values) if kinds == _TEXT else (len(v) for v in values if type(v) is str))
            else:
                pending.extend(values)
    while pending and total <= HOLD_BYTES:
        value = pending.pop()
        total += _VALUE
        kind = type(value)
        if kind is str:
            total += len(value)
        elif kind is list:
            pending.extend(value)
        elif kind is dict:
            pending.extend(value.values())
    return total


_COLUMNWISE = 8  # rows from which weighing a column at a time pays (its sets and lists cost more for one row)
_FLAT = frozenset({str, int, float, bool, type(None)})  # what a JSON value without nesting is
_TEXT = frozenset({str})


Shared = dict[int, dict[str, list[Any]] | None]  # per write: its rows' values by column (`columns`)


def columns(rows: dict[int, list[dict[str, Any]]]) -> Shared:
    """Each write's rows column by column (`_columns`), for the writes of at least _COLUMNWISE rows."""
    return {index: _columns(each) if len(each) >= _COLUMNWISE else None for index, each in rows.items()}


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]] | None:
    """The values of `rows` column by column, when every row has the first row's columns (and no
    other); else None."""
    if not rows:
        return {}
    names = list(rows[0])
    if set(map(len, rows)) != {len(names)}:
        return None
    try:
        return {name: list(map(itemgetter(name), rows)) for name in names}
    except KeyError:
        return None


async def hand_over(state: Run, trace: Trace) -> None:
    """Hand a trace to the writer once the rows waiting for a commit leave room for it (an empty
    outbox always does: a trace heavier than HOLD_BYTES waits for the others and goes alone). With
    room and nobody waiting before it, that is a few additions: no lock, no queue, no task switch."""
    shared = None if trace.result is None else columns(trace.result.rows)  # read by both, made once
    if trace.result is not None and state.catalog is not None and not state.options.dry_run:
        # a bulk page's column checks made here, beside its fetch, not on the write path
        trace.result = writer.fitted(state.source, state.catalog, trace.result, shared)
    trace.weight = weight(trace, shared)
    if state.waiting or not _fits(state, trace.weight):
        async with state.room:
            if not _fits(state, trace.weight):
                state.waiting += 1
                state.results.wake()  # a fetcher waits: the writer commits what it has
                try:
                    await state.room.wait_for(lambda: _fits(state, trace.weight))
                finally:
                    state.waiting -= 1
            _add(state, trace)
        return
    _add(state, trace)


def _fits(state: Run, weight: int) -> bool:
    return (state.held == 0 or state.held + weight <= HOLD_BYTES) and len(state.results.traces) < state.queued


def _add(state: Run, trace: Trace) -> None:
    box = state.results
    state.held += trace.weight
    box.traces.append(trace)
    box.weight += trace.weight
    box.last = time.monotonic()
    # the writer wakes for a batch, for a fetcher waiting, or to arm its timer for this first trace
    if box.asleep and (
        not box.timed or len(box.traces) >= state.source.write_batch or box.weight >= HOLD_BYTES or state.waiting
    ):
        box.wake()


async def _take(state: Run) -> list[Trace]:
    """The next batch once there is one to write: `write_batch` traces or HOLD_BYTES of rows, or what
    there is when a fetcher waits for room, when no trace came for _FLUSH_EVERY seconds, or at the end;
    [] at the end when nothing is left."""
    box, size = state.results, state.source.write_batch
    while not (box.done or (box.traces and (len(box.traces) >= size or box.weight >= HOLD_BYTES or state.waiting))):
        if not box.traces:
            await box.sleep(None)
            continue
        idle = box.last + _FLUSH_EVERY - time.monotonic()
        if idle <= 0:
            break
        await box.sleep(idle)
    batch: list[Trace] = []
    batched = 0  # the batch's weight
    while box.traces and len(batch) < size and batched < HOLD_BYTES:
        trace = box.traces.popleft()
        batch.append(trace)
        batched += trace.weight
    box.weight -= batched
    await _notify(state)  # room in the outbox
    return batch


async def _notify(state: Run) -> None:
    if state.waiting:
        async with state.room:
            state.room.notify_all()


async def _written(state: Run, batch: list[Trace]) -> None:
    """The batch is committed (or given up): its weight leaves the writer, waiting fetchers go on."""
    state.held -= sum(trace.weight for trace in batch)
    await _notify(state)


async def write(state: Run, conn: database.Link | None) -> None:
    """Write batches of results until the fetchers are done. The writer never stops taking them
    before that, even after a failure: a fetcher waiting for room would hang the run (and leave its
    job `running`)."""
    crash: BaseException | None = None
    while batch := await _take(state):
        try:
            await flush(state, conn, batch)
        except Exception as error:  # a bug: stop the run, keep draining, surface it at the end
            crash = crash or error
            state.write_failed = True
            state.halt("failed", f"internal error while writing: {error!r}")
        finally:
            await _written(state, batch)
    if crash is not None:
        raise crash


async def flush(state: Run, conn: database.Link | None, batch: list[Trace]) -> None:
    results = [t.result for t in batch if t.result is not None]
    if conn is not None:
        if state.write_failed:  # the database is gone: nothing more is written or counted
            state.unprocessed.extend(result.key for result in results)
            return
        tally = writer.Tally()
        try:
            failed, unbeaten = await asyncio.to_thread(conn.call, _write, state, batch, results, tally)
        except (DatabaseError, psycopg.Error) as error:
            # Nothing of this batch committed (one transaction), so none of it is counted.
            state.write_failed = True
            state.unprocessed.extend(result.key for result in results)
            state.halt("failed", state.settings.redact(f"writing to the database failed: {error}"))
            return
        if unbeaten is not None:
            log.warning("%s: could not update the job's counters (%s)", state.source.name, unbeaten)
        c = state.report.counters  # rows of the primary target this batch inserted / updated
        state.report.counters = replace(c, created=c.created + tally.created, updated=c.updated + tally.updated)
        replaced = {id(f.entity): f for f in failed}
        # as written: a claim lost or a value that turned out not to fit is no transient failure
        state.transients.note(
            (t.result, t.status) for t in batch if t.result is not None and id(t.result.entity) not in replaced
        )
        if replaced:
            for trace in batch:
                if trace.result is not None and id(trace.result.entity) in replaced:
                    trace.result = replaced[id(trace.result.entity)]
    count(state, batch)
    if conn is not None and results:
        state.emit(BatchWritten(state.source.name, len(results), state.report.counters))
    if state.options.dry_run:
        state.report.traces.extend(batch)


def _write(
    conn: psycopg.Connection, state: Run, batch: list[Trace], results: list[EntityResult], tally: writer.Tally
) -> tuple[list[EntityResult], Exception | None]:
    """`writer.write` of the batch, the job row's counters updated in the batch's own transaction
    (`writer.write`'s `before_commit`) as the loop is about to count them (`count`): they follow the
    commits, exactly, so a runner killed outright leaves a row, reaped later, that says what it
    committed; and the batch costs one commit (one WAL flush), not two. The update runs in a
    savepoint: refused (a trigger), it is only logged and the batch still commits. (failed results,
    the job row update's error.)"""
    unbeaten: list[Exception] = []

    def beat(conn: psycopg.Connection, failed: list[EntityResult], counts: writer.Tally) -> None:
        unbeaten.clear()  # a batch retried whole (a deadlock) beats again
        assert state.report.job_id is not None
        replaced = {id(f.entity): f for f in failed}
        final = [replaced.get(id(result.entity), result) for result in results] if replaced else results
        c = state.report.counters  # only the writer task changes them, and it is waiting for this call
        c = replace(c, created=c.created + counts.created, updated=c.updated + counts.updated)
        c = counted(c, final, _items(t for t in batch if t.result is not None))
        try:
            jobs.beat_within(conn, state.report.job_id, replace(c, requests=state.limiter.requests))
        except (DatabaseError, psycopg.Error) as error:
            unbeaten.append(error)

    failed = writer.write(
        conn,
        state.source,
        results,
        catalog=state.catalog,
        job_id=state.report.job_id,
        holder=state.options.holder,
        tally=tally,
        before_commit=beat if state.report.job_id is not None and results else None,
    )
    return failed, unbeaten[0] if unbeaten else None


def _items(traces: Iterable[Trace]) -> list[int | None] | None:
    """What each trace counts as (`Trace.items`), or None when each counts as one (entity sources)."""
    items = [trace.items for trace in traces]
    return items if any(n is not None for n in items) else None


def count(state: Run, batch: list[Trace]) -> None:
    """Count the batch's results into the report's counters, and say so to the observers (one event)."""
    done = [trace for trace in batch if trace.result is not None]
    results = [trace.result for trace in done if trace.result is not None]
    items = _items(done)
    if items is not None:
        pages = state.report.metadata
        for trace in done:
            if trace.items is not None and trace.result is not None:
                pages["pages"] = int(pages.get("pages") or 0) + 1
                if trace.result.outcome is spec.Outcome.ERROR:
                    pages["pages_failed"] = int(pages.get("pages_failed") or 0) + 1
    before = state.report.counters
    state.report.counters = counted(before, results, items)
    elapsed = time.monotonic() - state.started
    if results:
        counters, requests = state.report.counters, state.limiter.requests
        state.emit(EntitiesDone(state.source.name, results, items, before, counters, requests, elapsed))
