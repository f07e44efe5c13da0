"""`syncrun status`: per source, what is due, what is backing off or failing, and the last runs.

Failing is counted two ways (runner.backoff): `failing`, entities with definitive errors since their
last success (they back off at once); `failing_transiently`, entities with runs that failed
transiently since (5xx, timeouts: they back off after `backoff.transient_runs` such runs). An entity
can be in both. `refused`: entities whose latest attempt was refused with HTTP 401/403
(syncrun_state.refused): recorded, never counted against them, but shown so that a few entities the
API refuses one by one (a private or removed item) are not invisible. `held_back`: entities at the
cut-off (`entities.max_consecutive_errors`), never selected again until a run by `--ids` succeeds.

The text form prints the two populations on two lines: `status table: syncable N   due now …   never
synced …` (rows of the status table, `syncable_column` true) and `state, syncable or not: backing
off …   failing …` (every entity with a `syncrun_state` row for the source, also one made unsyncable
since), so no line mixes counts of different groups.

Read-only queries over the status table, `syncrun_state` and the jobs table. "Due now" is counted
with the default selection's own query (selection's SQL, without claiming), so it never disagrees
with what a run would pick; the other selection types (function, sql, list) decide in user code,
so for them it is not counted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from runner import backoff, jobs, migrations, selection, watermarks
from runner.database import identifier
from runner.errors import SchemaMismatch
from runner.redaction import Redactor
from runner.spec import SelectionType, Source

_COUNT_ALL = 2_000_000_000  # the default selection's limit when counting every due entity
TOP_ERRORS = 5


@dataclass(frozen=True, slots=True)
class Run:
    id: str
    status: str
    started_at: str | None
    duration: float | None  # seconds; so far, for a running job
    processed: int
    succeeded: int
    failed: int
    skipped: int
    unchanged: int  # a 304 Not Modified (conditional requests): stamped, nothing rewritten
    requests: int
    rate: float | None  # requests_made / duration
    error: str | None


@dataclass(slots=True)
class SourceState:
    source: str
    job_type: str
    selection: str
    entities: int | None = None  # rows of the status table that are syncable
    due: int | None = None
    never_synced: int | None = None
    backoff: int = 0
    skip_until: int = 0
    claimed: int = 0
    failing: int = 0  # with definitive errors since their last success (syncrun_state.consecutive_errors)
    failing_transiently: int = 0  # with runs that failed transiently since their last success (transient_runs)
    refused: int = 0  # latest attempt refused with 401/403 (syncrun_state.refused): no backoff, but seen
    held_back: int | None = None  # at the cut-off (entities.max_consecutive_errors); None: the source has none
    deleted: int = 0  # found gone by an `outcome: delete` (syncrun_state.deleted_at): never selected again
    top_errors: list[tuple[str, int]] = field(default_factory=list)
    # an incremental list source's watermark (runner/watermarks.py): {"value", "pending", "advanced_at"}
    watermark: dict[str, Any] | None = None
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _exists(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("select to_regclass(%s) is not null", (name,)).fetchone()
    return bool(row and row[0])


def collect(conn: psycopg.Connection, source: Source, *, runs: int = 5) -> SourceState:
    """Everything `status` shows for one source. Raises SchemaMismatch when syncrun's tables are missing."""
    state = SourceState(source.name, source.job_type, source.entities.type.value)
    with conn.transaction():
        missing = [t for t in ("syncrun_state", str(migrations.JOBS_TABLE)) if not _exists(conn, t)]
    if missing:
        raise SchemaMismatch(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing: this database has not been"
            f" set up for syncrun; run `syncrun migrate {source.path}` (with the same DATABASE_URL)"
        )
    _entities(conn, source, state)
    _state(conn, source, state)
    _watermark(conn, source, state)
    state.runs = [_run(job) for job in jobs.recent(conn, source.job_type, runs)]
    return state


def _entities(conn: psycopg.Connection, source: Source, state: SourceState) -> None:
    status = source.status
    if status is None or source.entities.type is not SelectionType.DEFAULT:
        state.notes.append(f"due entities are decided by the {source.entities.type.value} selection: not counted")
        return
    with conn.transaction():
        columns = migrations.table_columns(conn, status.table)
    if columns is None or status.column not in columns:
        where = status.table if columns is None else f"{status.table}.{status.column}"
        state.notes.append(f"{where} is missing: run `syncrun migrate {source.path}`")
        return
    syncable = source.entities.syncable_column
    alive = (
        sql.SQL("coalesce(s.{}, true)").format(sql.Identifier(syncable))
        if syncable and syncable in columns
        else sql.SQL("true")
    )
    counts = sql.SQL(
        "select count(*) filter (where {alive}), count(*) filter (where {alive} and s.{stamp} is null) from {table} s"
    ).format(alive=alive, stamp=sql.Identifier(status.column), table=identifier(status.table))
    # The run's own query, not claiming: an entity claimed by a live runner is not due.
    due, filter_params = selection.due_sql(conn, source)
    params = {**filter_params, "source": source.name, "holder": "", "lease": 0.0, "n": _COUNT_ALL, "after": None}
    with conn.transaction():
        row = conn.execute(counts).fetchone()
        due_row = conn.execute(sql.SQL("select count(*) from ({}) due").format(due), params).fetchone()
    assert row is not None
    assert due_row is not None
    state.entities, state.never_synced, state.due = int(row[0]), int(row[1]), int(due_row[0])


def _state(conn: psycopg.Connection, source: Source, state: SourceState) -> None:
    held_back = backoff.held_back_sql(source) or sql.SQL("false")
    with conn.transaction():
        row = conn.execute(
            sql.SQL(
                "select count(*) filter (where next_attempt_at > now()),"
                " count(*) filter (where skip_until > now()),"
                " count(*) filter (where claimed_by is not null and claim_expires_at > now()),"
                " count(*) filter (where consecutive_errors > 0),"
                " count(*) filter (where deleted_at is not null),"
                " count(*) filter (where transient_runs > 0),"
                " count(*) filter (where deleted_at is null and {}),"
                " count(*) filter (where refused and deleted_at is null)"
                " from syncrun_state st where source = %s"
            ).format(held_back),
            (source.name,),
        ).fetchone()
        errors = conn.execute(
            "select last_error, count(*) from syncrun_state"
            " where source = %s and (consecutive_errors > 0 or transient_runs > 0 or refused)"
            " and last_error is not null"
            " group by last_error order by count(*) desc, last_error limit %s",
            (source.name, TOP_ERRORS),
        ).fetchall()
    assert row is not None
    state.backoff, state.skip_until, state.claimed, state.failing, state.deleted = (int(v) for v in row[:5])
    state.failing_transiently = int(row[5])
    state.refused = int(row[7])
    state.held_back = int(row[6]) if source.entities.max_consecutive_errors is not None else None
    state.top_errors = [(str(message), int(count)) for message, count in errors]


def _watermark(conn: psycopg.Connection, source: Source, state: SourceState) -> None:
    """Where an incremental source's next listing asks from: the watermark (None before the first
    complete listing: it asks from incremental.start), what an unfinished listing has seen so far."""
    if source.incremental is None:
        return
    with conn.transaction():
        row = (
            conn.execute(
                "select value->'value', pending->'value', advanced_at from syncrun_watermarks where source = %s",
                (source.name,),
            ).fetchone()
            if _exists(conn, "syncrun_watermarks")
            else None
        )
    value, pending, advanced = row if row is not None else (None, None, None)
    state.watermark = {
        "value": value,
        "pending": pending,
        "advanced_at": advanced.isoformat() if advanced is not None else None,
        "start": watermarks.text(source.incremental.start),
    }


def _run(job: jobs.Job) -> Run:
    end = job.completed_at or (datetime.now(UTC) if job.status == "running" else job.heartbeat_at)
    duration = (end - job.started_at).total_seconds() if end and job.started_at else None
    c = job.counters
    return Run(
        id=job.id,
        status=job.status,
        started_at=job.started_at.isoformat() if job.started_at else None,
        duration=round(duration, 1) if duration is not None else None,
        processed=c.processed,
        succeeded=c.succeeded,
        failed=c.failed,
        skipped=c.skipped,
        unchanged=c.unchanged,
        requests=c.requests,
        rate=round(c.requests / duration, 2) if duration else None,
        error=job.error_message,
    )


# --- output --------------------------------------------------------------------------------------------
# Messages were redacted when they were stored, but by that run's secrets and redactor: `status` masks
# them again with today's, before any cut or JSON escaping.
def to_json(states: list[SourceState], redact: Redactor | None = None) -> str:
    """One JSON document: {"sources": [...]} with every field of every SourceState (strings redacted)."""
    redact = redact or Redactor()
    documents: list[dict[str, Any]] = []
    for state in states:
        document = asdict(state)
        document["top_errors"] = [{"message": m, "count": n} for m, n in state.top_errors]
        documents.append(redact.value(document))
    return redact(json.dumps({"sources": documents}, indent=2)) + "\n"


def _n(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def format_text(states: list[SourceState], redact: Redactor | None = None) -> str:
    """The human form: one block per source (messages redacted, then cut)."""
    redact = redact or Redactor()
    out: list[str] = []
    for state in states:
        out.append(f"{state.source} (job type {state.job_type}, {state.selection} selection)")
        # Two populations, one line each (review13 F8): the status table's syncable rows, and every
        # entity syncrun keeps state for (a row made unsyncable since still counts there).
        out.append(
            f"  status table: syncable {_n(state.entities)}   due now {_n(state.due)}"
            f"   never synced {_n(state.never_synced)}"
        )
        out.append(
            f"  state, syncable or not: backing off {state.backoff:,}   skip-until {state.skip_until:,}"
            f"   claimed {state.claimed:,}"
            f"   failing {state.failing:,}   failing transiently {state.failing_transiently:,}"
            + (f"   refused (401/403) {state.refused:,}" if state.refused else "")
            + (f"   held back {state.held_back:,}" if state.held_back is not None else "")
            + (f"   gone {state.deleted:,}" if state.deleted else "")
        )
        if (mark := state.watermark) is not None:
            value = (
                "none yet (asks from incremental.start " + mark["start"] + ")"
                if mark["value"] is None
                else mark["value"]
            )
            out.append(
                f"  watermark {redact(str(value))}"
                + (f" (advanced {mark['advanced_at'][:19]})" if mark["advanced_at"] else "")
                + (f"   pending {redact(str(mark['pending']))}" if mark["pending"] is not None else "")
            )
        out += [f"  note: {redact(note)}" for note in state.notes]
        if state.top_errors:
            out.append("  top errors:")
            out += [f"    {count:>6,} × {redact.excerpt(message, 160)}" for message, count in state.top_errors]
        if not state.runs:
            out.append("  no runs yet")
        else:
            out.append("  last runs:")
            for run in state.runs:
                rate = "—" if run.rate is None else f"{run.rate:.2f}/s"
                out.append(
                    f"    {(run.started_at or '?')[:19]}  {run.status:9}  {_duration(run.duration):>7}"
                    f"  processed {run.processed:,} (ok {run.succeeded:,}, failed {run.failed:,},"
                    f" skipped {run.skipped:,}{f', unchanged {run.unchanged:,}' if run.unchanged else ''})"
                    f"  {run.requests:,} requests, {rate}"
                    + (f"  — {redact.excerpt(run.error, 120)}" if run.error else "")
                )
        out.append("")
    return "\n".join(out)
