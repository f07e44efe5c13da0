"""`sync_jobs` rows: start, heartbeat, finish, reap stale ones, list recent ones.

Every function runs in its own short transaction and leaves the connection idle, so a job row is
visible to dashboards (and to other runners' `reap`) as soon as it changes. Error messages arrive
already redacted. The table defaults to `sync_jobs`; Tiger's is `ops.sync_jobs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from runner.database import identifier
from runner.migrations import JOBS_TABLE
from runner.spec import QualifiedName

FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
# error_message of a job `reap` failed (docs/cli.md lists the stable texts; tests pin them)
ABANDONED = "abandoned: no heartbeat for {seconds}s"


@dataclass(frozen=True, slots=True)
class Counters:
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0  # entities found gone (outcome delete): their rows were removed
    requests: int = 0
    unchanged: int = 0  # entities a 304 Not Modified showed unchanged: stamped, nothing rewritten

    def params(self) -> dict[str, int]:
        return {
            "processed": self.processed,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "created": self.created,
            "updated": self.updated,
            "deleted": self.deleted,
            "requests": self.requests,
            "unchanged": self.unchanged,
        }


@dataclass(frozen=True, slots=True)
class Job:
    """One row of the jobs table, as `recent` returns it."""

    id: str
    job_type: str
    status: str
    started_at: datetime | None
    completed_at: datetime | None
    heartbeat_at: datetime | None
    counters: Counters
    error_message: str | None


_SET_COUNTERS = sql.SQL(
    "items_processed = %(processed)s, items_succeeded = %(succeeded)s, items_failed = %(failed)s,"
    " items_skipped = %(skipped)s, items_created = %(created)s, items_updated = %(updated)s,"
    " items_deleted = %(deleted)s, items_unchanged = %(unchanged)s,"
    " requests_made = %(requests)s"
)


def start(
    conn: psycopg.Connection,
    job_type: str,
    *,
    batch_size: int | None = None,
    github_run_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    started_at: datetime | None = None,
    table: QualifiedName = JOBS_TABLE,
) -> str:
    """Insert a `running` job row (heartbeat now) and return its id. `started_at` (default now) is the
    run's own clock, so `run.started_at` in mappings equals the job row's (the applist run token)."""
    query = sql.SQL(
        "insert into {} (job_type, status, batch_size, github_run_id, metadata, heartbeat_at, started_at)"
        " values (%s, 'running', %s, %s, %s, now(), coalesce(%s, now())) returning id::text"
    ).format(identifier(table))
    with conn.transaction():
        row = conn.execute(
            query,
            (job_type, batch_size, github_run_id, None if metadata is None else Jsonb(metadata), started_at),
        ).fetchone()
    assert row is not None
    return str(row[0])


def heartbeat(conn: psycopg.Connection, job_id: str, counters: Counters, *, table: QualifiedName = JOBS_TABLE) -> None:
    """Say the job is alive, with its counters so far. A finished job is left as it is: a heartbeat that
    lands after the final update must not roll its counters back."""
    query = _beat(table)
    with conn.transaction():
        conn.execute(query, {**counters.params(), "id": job_id})


def _beat(table: QualifiedName) -> sql.Composed:
    """The running job's counters and heartbeat: left alone once it finished (see `heartbeat`)."""
    return sql.SQL("update {} set heartbeat_at = now(), {} where id = %(id)s and status = 'running'").format(
        identifier(table), _SET_COUNTERS
    )


_WITHIN = sql.SQL("savepoint syncrun_counters; {}; release savepoint syncrun_counters")


def beat_within(
    conn: psycopg.Connection, job_id: str, counters: Counters, *, table: QualifiedName = JOBS_TABLE
) -> None:
    """`heartbeat` inside the caller's transaction (the writer's batch: the counters commit with it),
    in a savepoint of its own: refused (a trigger), the update is undone and the error raised, and the
    caller's transaction goes on. Savepoint, update and release go as one query (the values bound by
    psycopg on this side): one round trip where `heartbeat`'s nested transaction took three."""
    query = _beat(table)
    bound = psycopg.ClientCursor(conn).mogrify(query, {**counters.params(), "id": job_id})
    try:
        conn.execute(_WITHIN.format(sql.SQL(bound)))  # no parameters: one simple query, three statements
    except psycopg.Error:
        if not conn.broken:
            conn.execute("rollback to savepoint syncrun_counters")
        raise


def finish(
    conn: psycopg.Connection,
    job_id: str,
    status: str,
    counters: Counters,
    error_message: str | None = None,
    *,
    metadata: dict[str, Any] | None = None,
    table: QualifiedName = JOBS_TABLE,
) -> None:
    """Close the job: `completed`, `failed` or `cancelled`, with final counters and completed_at.
    `metadata` keys are merged into the row's metadata (a list source's {"listing": "capped"})."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"job status must be one of {sorted(FINAL_STATUSES)}, not {status!r}")
    query = sql.SQL(
        "update {} set status = %(status)s, completed_at = now(), heartbeat_at = now(),"
        " error_message = %(error)s, metadata = case when %(metadata)s::jsonb is null then metadata"
        " else coalesce(metadata, '{{}}'::jsonb) || %(metadata)s::jsonb end, {} where id = %(id)s"
    ).format(identifier(table), _SET_COUNTERS)
    extra = None if not metadata else Jsonb(metadata)
    with conn.transaction():
        conn.execute(
            query, {**counters.params(), "id": job_id, "status": status, "error": error_message, "metadata": extra}
        )


def reap(conn: psycopg.Connection, timeout_seconds: float, *, table: QualifiedName = JOBS_TABLE) -> int:
    """Fail `running` jobs of any type silent for longer than the timeout; return how many.

    Silence is measured from heartbeat_at, or started_at for rows that never had one (seed workers
    killed by a CI timeout leave those behind forever).
    """
    seconds = round(timeout_seconds)
    query = sql.SQL(
        "update {} set status = 'failed', completed_at = now(), error_message = %(message)s"
        " where status = 'running'"
        " and coalesce(heartbeat_at, started_at) < now() - make_interval(secs => %(seconds)s)"
    ).format(identifier(table))
    with conn.transaction():
        cursor = conn.execute(query, {"message": ABANDONED.format(seconds=seconds), "seconds": seconds})
    return cursor.rowcount


def recent(conn: psycopg.Connection, job_type: str, n: int = 10, *, table: QualifiedName = JOBS_TABLE) -> list[Job]:
    """The last `n` jobs of this type, newest first."""
    query = sql.SQL(
        "select id::text as id, job_type, status, started_at, completed_at, heartbeat_at, error_message,"
        " coalesce(items_processed, 0) as processed, coalesce(items_succeeded, 0) as succeeded,"
        " coalesce(items_failed, 0) as failed, coalesce(items_skipped, 0) as skipped,"
        " coalesce(items_created, 0) as created, coalesce(items_updated, 0) as updated,"
        " coalesce(items_deleted, 0) as deleted, coalesce(items_unchanged, 0) as unchanged,"
        " coalesce(requests_made, 0) as requests"
        " from {} where job_type = %s order by started_at desc nulls last limit %s"
    ).format(identifier(table))
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(query, (job_type, n)).fetchall()
    return [_job(row) for row in rows]


def _job(row: dict[str, Any]) -> Job:
    counters = Counters(**{name: row.pop(name) for name in Counters.__dataclass_fields__})
    return Job(counters=counters, **row)


# --- list-shaped sources: the catalogue cursor -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a listing stopped, and when that listing started (its first run): the listing's start
    travels with it, so `%(started_at)s` of its `when: complete` steps is the start of the whole
    listing, not of the run that read its last page. None for a checkpoint written before syncrun
    recorded it (stored as the bare position)."""

    position: Any
    listing_started_at: datetime | None
    pages: int = 0  # pages of the listing read before it (0 when not recorded)
    url: str | None = None  # the listing's URL it was made for (runner/listings.py); None: not recorded
    cut: bool = False  # a record cap cut the page it points at (runner/engine/catalogue.py)


def load_cursor(conn: psycopg.Connection, source: str) -> Checkpoint | None:
    """Where an interrupted (or capped) run of a list-shaped source stopped; None to start over."""
    with conn.transaction():
        row = conn.execute("select cursor from syncrun_cursors where source = %s", (source,)).fetchone()
    if row is None:
        return None
    stored = row[0]
    if isinstance(stored, dict) and "position" in stored:
        started = stored.get("listing_started_at")
        pages, url = stored.get("pages"), stored.get("url")
        return Checkpoint(
            stored["position"],
            datetime.fromisoformat(started) if isinstance(started, str) else None,
            pages if isinstance(pages, int) and not isinstance(pages, bool) and pages >= 0 else 0,
            url if isinstance(url, str) else None,
            stored.get("cut") is True,
        )
    return Checkpoint(stored, None)  # a bare position: written before the listing's start was kept


def save_cursor(
    conn: psycopg.Connection,
    source: str,
    cursor: Any,
    job_id: str | None,
    *,
    listing_started_at: datetime | None,
    pages: int = 0,
    url: str | None = None,
    cut: bool = False,
) -> None:
    """Checkpoint after a page's rows committed: a crash re-fetches at most that one page, and writes
    are idempotent, so nothing is lost and nothing is doubled. Stored as
    {"position": …, "listing_started_at": "<ISO 8601>", "pages": <pages read so far>, "url": "<the
    listing's URL, redacted>"}, with "cut": true when a record cap cut the page it points at."""
    stored = {
        "position": cursor,
        "listing_started_at": None if listing_started_at is None else listing_started_at.isoformat(),
        "pages": pages,
        **({"url": url} if url is not None else {}),
        **({"cut": True} if cut else {}),
    }
    with conn.transaction():
        conn.execute(
            "insert into syncrun_cursors (source, cursor, job_id, updated_at) values (%s, %s, %s, now())"
            " on conflict (source) do update set cursor = excluded.cursor, job_id = excluded.job_id,"
            " updated_at = now()",
            (source, Jsonb(stored), job_id),
        )


def clear_cursor(conn: psycopg.Connection, source: str) -> None:
    """The catalogue was read to its end: the next run starts from the first page."""
    with conn.transaction():
        conn.execute("delete from syncrun_cursors where source = %s", (source,))
