"""`write(conn, source, results)`: rows + status stamp + per-source state, one transaction per batch.

The rows of entities whose outcome is `delete` go first, in reverse write order (runner.deletes);
then write targets go in declaration order (lookups, replace_by, upserts, function calls:
runner.targets), then the status stamps, then the per-source state: the same lock order in every runner.

A value that does not fit its column (by the catalog types; see runner.values) turns its entity into
an error result before anything is sent, as does a `replace_by` column that cannot be worked out
from the entity. If the batch still fails on a data error (FK, check, not-null, a function's
`raise exception`, a lookup miss), it is replayed one entity per savepoint so one bad entity cannot
sink the others. Deadlocks and serialization failures retry the whole batch; a lost connection is
the caller's (DatabaseError).

Per-source state (syncrun_state), per entity: success/skip reset the error counts (definitive and
`transient_runs`) and backoff (and clear `deleted_at`); delete resets them too and sets `deleted_at`,
which keeps selections away; a definitive error backs off on the source's ladder (`backoff:`
`initial * factor^(n-1)` capped at `cap`; by default 15 min, 30 min, 1 h, ... 24 h); a transient
error (retries exhausted) records the error without advancing the backoff here: the run counts its
transiently failed runs at its end (runner.backoff). Every processed entity's claim is released.

Statements per batch, whatever its size: one delete per deleting table when the batch has deleted
entities (runner.deletes), the targets' (runner.targets), one status stamp per set of
`status.set` columns (usually one; an `insert ... select from unnest(...) on conflict`), one update
of the seed's error columns, one `syncrun_state` upsert from arrays (plus one per extra occurrence of
an entity repeated in the batch), for sources with conditional requests one validators upsert and
one delete when needed (runner.conditional), and, from the engine (`before_commit`), the job row's
counters: savepoint, update and release in one query (jobs.beat_within), so that a batch costs one
commit, one WAL flush (~4 ms here), not two. Row by row, a 500-entity batch was ~1,000 statements: ~178 µs per
entity against the hand-written baseline's ~35; now ~34 (`python -m bench.writer`, local PG 15).
Values that cannot go as arrays (array-typed or unknown columns, mixed Python types) fall back to a
pipelined executemany of the row-by-row statements.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from runner import conditional, deletes, stamps, targets, writeplan
from runner.errors import DatabaseError
from runner.migrations import Catalog
from runner.results import EntityResult
from runner.spec import Outcome, Source
from runner.statements import MAX_MESSAGE, Failed, run
from runner.values import Unfit, fit
from runner.writeplan import SourcePlan

ATTEMPTS = 3  # whole-batch attempts on deadlock / serialization failure
# 40P01 / 40001 (and the rest of class 40): the whole batch can simply run again
_RETRYABLE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure, pg_errors.TransactionRollback)


@dataclass(slots=True)
class Tally:
    """Rows of the source's primary write (`primary`) that committed batches inserted and updated:
    the job row's items_created / items_updated. Only what committed is added."""

    created: int = 0
    updated: int = 0

    def add(self, other: Tally) -> None:
        self.created += other.created
        self.updated += other.updated


# called last inside a batch's transaction: (connection, the results that failed, the primary write's counts)
BeforeCommit = Callable[[psycopg.Connection, list[EntityResult], Tally], None]

primary = writeplan.primary  # the write items_created / items_updated count (spec and conditional name it here)


def write(
    conn: psycopg.Connection,
    source: Source,
    results: Sequence[EntityResult],
    *,
    catalog: Catalog,
    job_id: str | None = None,
    holder: str | None = None,
    tally: Tally | None = None,
    before_commit: BeforeCommit | None = None,
) -> list[EntityResult]:
    """Write a batch in one transaction; return the results that failed here, as error results.

    The source's writes are compiled under `catalog` on the run's first batch (writeplan.compiled);
    from there on only that plan is executed. `holder`: release only this holder's claims (None
    releases any). `job_id` is not stored today. `tally`: gets the primary write's inserted /
    updated rows added, once the batch committed. `before_commit(conn, failed, counts)`: called
    last inside the batch's transaction with what this attempt came to (the results that failed,
    the primary write's counts), so what it writes commits with the batch, or not at all (the job
    row's counters: one commit, one WAL flush, per batch instead of two).
    """
    plan = writeplan.compiled(source, catalog)
    as_is = _as_is(plan, results)
    batch = [_checked(plan, result, as_is) for result in results]
    unfit = [checked for checked, result in zip(batch, results, strict=True) if checked.outcome is not result.outcome]
    typed = frozenset(index for index in as_is if not plan.writes[index].lookups)  # lookups change values
    for attempt in range(1, ATTEMPTS + 1):
        counts = Tally()  # an attempt that rolls back counts nothing
        try:
            failed = _attempt(conn, plan, batch, holder, counts, unfit, before_commit, typed)
            if tally is not None:
                tally.add(counts)
            return failed
        except _RETRYABLE as error:
            if attempt == ATTEMPTS:
                raise DatabaseError(f"writing {plan.name}: gave up after {ATTEMPTS} attempts: {error}") from error
            time.sleep(0.1 * attempt)
        except psycopg.Error as error:  # connection lost, or a schema changed under us: the caller's
            raise DatabaseError(f"writing {plan.name}: {error}") from error
    raise AssertionError("unreachable")  # pragma: no cover


def _attempt(
    conn: psycopg.Connection,
    plan: SourcePlan,
    batch: list[EntityResult],
    holder: str | None,
    counts: Tally,
    unfit: list[EntityResult],
    before_commit: BeforeCommit | None,
    typed: frozenset[int] = frozenset(),
) -> list[EntityResult]:
    try:
        whole = Tally()
        with conn.transaction():
            kept, lost = _fence(conn, plan, batch, holder)
            _write_all(conn, plan, kept, holder, counts=whole, typed=typed)
            if before_commit is not None:
                before_commit(conn, unfit + lost, whole)
        counts.add(whole)
        return unfit + lost
    except Failed:
        pass  # rolled back: find the culprits one entity at a time
    return _replay(conn, plan, batch, holder, counts, unfit, before_commit)


def _fence(
    conn: psycopg.Connection, plan: SourcePlan, batch: list[EntityResult], holder: str | None
) -> tuple[list[EntityResult], list[EntityResult]]:
    """Writes are fenced to the claim holder: lock the claims this runner still holds (so none can be
    taken over until we commit) and drop the entities whose claim expired and went to another runner
    meanwhile — their rows, status and state are that runner's to write now."""
    if holder is None or plan.listing or not batch:
        return batch, []
    keys = sorted({str(result.key) for result in batch})
    held = {
        row[0]
        for row in conn.execute(
            "select entity_key from syncrun_state where source = %s and entity_key = any(%s)"
            " and claimed_by = %s order by entity_key for update",
            (plan.name, keys, holder),
        )
    }
    if len(held) == len(keys):  # every claim still ours (held is a subset of keys): the usual case
        return batch, []
    kept = [result for result in batch if str(result.key) in held]
    lost = [
        replace(
            result.failed("claim lost: the lease expired and another runner took this entity; not written"),
            definitive=False,
        )
        for result in batch
        if str(result.key) not in held
    ]
    return kept, lost


def _replay(
    conn: psycopg.Connection,
    plan: SourcePlan,
    batch: list[EntityResult],
    holder: str | None,
    counts: Tally,
    unfit: list[EntityResult],
    before_commit: BeforeCommit | None,
) -> list[EntityResult]:
    failures: list[EntityResult] = []
    kept = Tally()
    with conn.transaction():
        batch, failures = _fence(conn, plan, batch, holder)
        for result in batch:
            try:
                one = Tally()
                with conn.transaction():  # a savepoint
                    _write_all(conn, plan, [result], holder, bulk=False, counts=one)
                kept.add(one)  # the savepoint was released: these rows stay
            except Failed as failure:
                bad = result.failed(str(failure))
                with conn.transaction():
                    _write_all(conn, plan, [bad], holder, bulk=False)
                failures.append(bad)
        if before_commit is not None:
            before_commit(conn, unfit + failures, kept)
    counts.add(kept)
    return unfit + failures


def _write_all(
    conn: psycopg.Connection,
    plan: SourcePlan,
    batch: list[EntityResult],
    holder: str | None,
    bulk: bool = True,
    counts: Tally | None = None,
    typed: frozenset[int] = frozenset(),
) -> None:
    """Targets in declaration order, then status, then state: the same lock order in every runner.
    `typed`: the writes whose rows are known to hold each column's own Python type (`_as_is`)."""
    live = [result for result in batch if result.outcome is not Outcome.ERROR]
    main = plan.primary if counts is not None else None
    with conn.cursor() as cursor:
        deletes.write(cursor, plan, live)
        for index, target in enumerate(plan.writes):
            rows = [row for result in live for row in result.rows.get(index, [])]
            scopes = [result.scopes[index] for result in live if index in result.scopes]
            created, updated = targets.write(
                cursor, target, rows, scopes, bulk=bulk, count=index == main, typed=index in typed
            )
            if counts is not None and index == main:
                counts.created, counts.updated = counts.created + created, counts.updated + updated
        stamps.write(cursor, plan.stamp, batch)
        if not plan.listing:  # a catalogue page is no entity: no state
            _write_state(cursor, plan, batch, holder)
            conditional.write(cursor, plan.source, batch)


def _as_is(plan: SourcePlan, results: Sequence[EntityResult]) -> frozenset[int]:
    """The writes whose rows, over the whole batch, need no conversion (`WritePlan.as_is`): from each
    result's `fits` when every one has it (`fitted`, worked out as the engine handed them over), else
    checked a column at a time for all the batch's rows at once, so that an entity of those writes
    costs no call per row. Each entity's rows are a part of the batch's, so they need none either;
    and the batch's need none when no entity's do (each value is judged on its own)."""
    live = [result for result in results if result.outcome is not Outcome.ERROR]
    indexes = {index for result in live for index in result.rows}
    fits = [(result.rows, result.fits) for result in live if result.fits is not None]
    found = set()
    for index in indexes:
        if len(fits) == len(live):  # every result's known
            if all(index in known for rows, known in fits if index in rows):
                found.add(index)
            continue
        rows = [row for result in live for row in result.rows.get(index, ())]
        if plan.writes[index].as_is(rows):
            found.add(index)
    return frozenset(found)


FITTED_FROM = 100  # rows of an entity from which `fitted` pays: a few rows are checked cheaper with the batch's


def fitted(
    source: Source,
    catalog: Catalog,
    result: EntityResult,
    columns: Mapping[int, writeplan.Columns | None] | None = None,
) -> EntityResult:
    """`result` with `fits` worked out (`_as_is` then reads it): the engine calls this as it hands a
    result of many rows (a bulk page) over to the writer, so the column checks of its rows are not
    made on the write path, where the writer waits for them between round trips. A result of fewer
    than FITTED_FROM rows is returned as it is (checked with its batch, as before). `columns`: a write's
    rows' values by column, when the caller has them (the engine weighs them too)."""
    if result.outcome is Outcome.ERROR or sum(map(len, result.rows.values())) < FITTED_FROM:
        return result
    plan = writeplan.compiled(source, catalog)
    shared = columns or {}
    fits = frozenset(index for index, rows in result.rows.items() if plan.writes[index].as_is(rows, shared.get(index)))
    return replace(result, fits=fits)


def _checked(plan: SourcePlan, result: EntityResult, as_is: frozenset[int] = frozenset()) -> EntityResult:
    """The result with its values converted for their columns and its replace scopes worked out; or,
    when something does not fit, the result failed with a message naming table, column and value.
    `as_is`: writes whose rows need no conversion in this batch. A result with nothing to convert or
    work out is returned as it is (a copy per entity was a third of the writer's Python time)."""
    if result.outcome is Outcome.ERROR:
        return result
    try:
        if result.status_values and plan.stamp is not None:
            fit(str(plan.stamp.status.table), plan.stamp.columns, result.status_values)
        rows = result.rows
        if not as_is.issuperset(rows):
            rows = {index: rows if index in as_is else plan.writes[index].fit(rows) for index, rows in rows.items()}
        replacing = result.outcome is Outcome.SUCCESS and not result.partial
        scopes = {
            index: plan.writes[index].scope(result.entity)
            for index in plan.replacing
            if replacing and index in result.rows
        }
        deleted = result.outcome is Outcome.DELETE
        removals = {index: plan.writes[index].removal(result.entity) for index in plan.deleting} if deleted else {}
    except Unfit as unfit:
        return result.failed(str(unfit))
    if rows is result.rows and not (scopes or removals or result.scopes or result.removals):
        return result
    return replace(result, rows=rows, scopes=scopes, removals=removals)


# --- per-source state --------------------------------------------------------------------------------------
# One row per entity from arrays: kind is ok (success/skip), skip_until, error (definitive: backoff),
# transient (recorded, no backoff), refused (a 401/403: recorded like transient, and `refused` set) or
# deleted. `on conflict do update` sees only the proposed row
# (excluded), so the update reads the kind back from it: error <=> consecutive_errors = 1; transient <=>
# an error message with consecutive_errors = 0; ok/skip_until <=> last_success_at (skip_until: skip_until
# too); deleted <=> deleted_at. An answer other than gone or an error means the entity exists again.
_STATE = sql.SQL(
    """insert into syncrun_state as st (source, entity_key, consecutive_errors, last_error, last_error_at,
    next_attempt_at, skip_until, last_success_at, deleted_at, claimed_by, claim_expires_at, updated_at, transient_runs,
    refused)
select %(source)s::text, v.key,
    case when v.kind = 'error' then 1 else 0 end,
    v.error,
    case when v.error is not null then now() end,
    case when v.kind = 'error' then now() + %(base)s::float8 * interval '1 second' end,
    case when v.kind = 'skip_until' then now() + v.until * interval '1 second' end,
    case when v.kind in ('ok', 'skip_until') then now() end,
    case when v.kind = 'deleted' then now() end,
    null, null, now(), 0, v.kind = 'refused'
from unnest(%(keys)s::text[], %(kinds)s::text[], %(errors)s::text[], %(untils)s::float8[]) as v(key, kind, error, until)
on conflict (source, entity_key) do update set
    consecutive_errors = case when excluded.consecutive_errors = 1 then st.consecutive_errors + 1
        when excluded.last_error is not null then st.consecutive_errors else 0 end,
    last_error = coalesce(excluded.last_error, st.last_error),
    last_error_at = coalesce(excluded.last_error_at, st.last_error_at),
    next_attempt_at = case
        when excluded.consecutive_errors = 1
            then now() + least(%(base)s::float8 * power(%(factor)s::float8, least(st.consecutive_errors, 30)),
                %(cap)s::float8) * interval '1 second'
        when excluded.last_error is not null then st.next_attempt_at end,
    transient_runs = case when excluded.last_error is not null then st.transient_runs else 0 end,
    refused = excluded.refused,
    skip_until = case when excluded.last_success_at is not null then excluded.skip_until else st.skip_until end,
    last_success_at = coalesce(excluded.last_success_at, st.last_success_at),
    deleted_at = case when excluded.deleted_at is not null then excluded.deleted_at
        when excluded.last_success_at is not null then null else st.deleted_at end,
    claimed_by = case when %(holder)s::text is null or st.claimed_by = %(holder)s::text then null
        else st.claimed_by end,
    claim_expires_at = case when %(holder)s::text is null or st.claimed_by = %(holder)s::text then null
        else st.claim_expires_at end,
    updated_at = now()"""
)


def _write_state(cursor: psycopg.Cursor[Any], plan: SourcePlan, batch: list[EntityResult], holder: str | None) -> None:
    """One statement per round: an entity that occurs twice in the batch (one statement cannot update a
    row twice) goes again in the next round, so its outcomes apply in order as they did row by row."""
    keyed = [str(result.key) for result in batch]
    rounds: list[dict[str, EntityResult]] = []
    if len(set(keyed)) == len(keyed):  # the usual case, every entity once: one round, no search per entity
        rounds = [dict(zip(keyed, batch, strict=True))] if keyed else []
    else:
        for key, result in zip(keyed, batch, strict=True):
            place = next((r for r in rounds if key not in r), None)
            if place is None:
                place = {}
                rounds.append(place)
            place[key] = result
    for entities in rounds:
        keys = sorted(entities)  # the same lock order in every runner
        rows = [_state_row(entities[key]) for key in keys]
        params = {
            "source": plan.name,
            "keys": keys,
            "kinds": [row[0] for row in rows],
            "errors": [row[1] for row in rows],
            "untils": [row[2] for row in rows],
            "base": plan.backoff.initial,
            "factor": plan.backoff.factor,
            "cap": plan.backoff.cap,
            "holder": holder,
        }
        run(cursor, "syncrun_state", _STATE, [params])


def _state_row(result: EntityResult) -> tuple[str, str | None, float | None]:
    """(kind, error message, skip seconds)."""
    if result.outcome is Outcome.ERROR:
        kind = "error" if result.definitive else "refused" if result.refused else "transient"
        return (kind, (result.error or "error")[:MAX_MESSAGE], None)
    if result.outcome is Outcome.DELETE:
        return ("deleted", None, None)
    if result.skip_until is not None:
        return ("skip_until", None, float(result.skip_until))
    return ("ok", None, None)
