"""Claims, so several runners of one source never process the same entity at once: every chunk is
claimed in the same statement that selects it, with `insert into syncrun_state ... on conflict do
update set claimed_by = ... where <the claim is free or expired or ours>` returning the keys won.
Under READ COMMITTED a concurrent claimer of the same row waits for the other's commit, then the
WHERE is re-checked on the committed row, so exactly one wins; rows are claimed in key order, so
two claimers cannot deadlock. Unlike `FOR UPDATE SKIP LOCKED` on the status table this takes no
lock on the user's table (seed workers keep updating it) and leaves a lease that outlives the
transaction, which is what a run of minutes needs. Claims commit before a chunk is yielded.

`renew` extends a holder's claims with the job heartbeat; `release` gives back the ones it did not
process, `release_held` every one it still holds when its run ends (a write releases its entities'
claims in the same transaction, so what is left was not finished: queued, in flight, or claimed by a
selection statement the run stopped waiting for). `held` says who holds the keys a claim did not win.
runner/selection.py claims every chunk it selects through `Claim`, `claim_sql` and `claimed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from runner.spec import Source

Entity = dict[str, Any]  # an entity's declared columns, from runner.selection


def renew(conn: psycopg.Connection, source: Source | str, holder: str, lease_seconds: float) -> int:
    """Extend every claim `holder` has on `source` (call with the job heartbeat); returns how many."""
    with conn.transaction():
        cursor = conn.execute(
            "update syncrun_state set claim_expires_at = now() + %s::float8 * interval '1 second'"
            " where source = %s and claimed_by = %s",
            (lease_seconds, _name(source), holder),
        )
    return cursor.rowcount


def release(conn: psycopg.Connection, source: Source | str, holder: str, keys: Sequence[Any]) -> int:
    """Drop `holder`'s claims on these entities (they were not processed)."""
    with conn.transaction():
        cursor = conn.execute(
            "update syncrun_state set claimed_by = null, claim_expires_at = null"
            " where source = %s and claimed_by = %s and entity_key = any(%s::text[])",
            (_name(source), holder, [str(k) for k in keys]),
        )
    return cursor.rowcount


def release_held(conn: psycopg.Connection, source: Source | str, holder: str) -> int:
    """Drop every claim `holder` still has on `source` (its run is over: none of them will be written)."""
    with conn.transaction():
        cursor = conn.execute(
            "update syncrun_state set claimed_by = null, claim_expires_at = null where source = %s and claimed_by = %s",
            (_name(source), holder),
        )
    return cursor.rowcount


@dataclass(frozen=True, slots=True)
class Held:
    """An entity a claim did not win: its key, who holds it and until when unless renewed (None: the
    claim lapsed since)."""

    key: Any
    holder: str | None
    until: datetime | None


def held(conn: psycopg.Connection, source: Source | str, keys: Sequence[Any]) -> list[Held]:
    """Who holds these entities' live claims (keys no claim of ours won), one per key in the order given."""
    with conn.transaction():
        rows = conn.execute(
            "select entity_key, claimed_by, claim_expires_at from syncrun_state where source = %s"
            " and entity_key = any(%s::text[]) and claimed_by is not null and claim_expires_at > now()",
            (_name(source), [str(k) for k in keys]),
        ).fetchall()
    found = {row[0]: (row[1], row[2]) for row in rows}
    return [Held(key, *found.get(str(key), (None, None))) for key in keys]


def _name(source: Source | str) -> str:
    return source if isinstance(source, str) else source.name


@dataclass(frozen=True, slots=True)
class Claim:
    """Whose claims a selection takes, for how long; `enabled=False` (dry runs) claims nothing."""

    source: str
    holder: str
    lease: float
    enabled: bool = True
    held_back: sql.Composable | None = None  # the cut-off (entities.max_consecutive_errors), if any

    def params(self) -> dict[str, Any]:
        return {"source": self.source, "holder": self.holder, "lease": self.lease}


FREE = sql.SQL("(st.claimed_by is null or st.claimed_by = {holder} or st.claim_expires_at <= now())").format(
    holder=sql.Placeholder("holder")
)
# A deleted entity counts as backing off forever: only `--ids` (which ignores backoff) takes it again.
_NOT_BACKING_OFF = sql.SQL(
    "coalesce(st.next_attempt_at, '-infinity') <= now() and coalesce(st.skip_until, '-infinity') <= now()"
    " and st.deleted_at is null"
)


def waiting(held_back: sql.Composable | None) -> sql.Composable:
    """Backing off, skipped until later, gone, or held back by the cut-off: not to be taken now."""
    return _NOT_BACKING_OFF if held_back is None else sql.SQL("{} and not {}").format(_NOT_BACKING_OFF, held_back)


def claim_sql(
    candidates: sql.Composable, respect_backoff: bool, held_back: sql.Composable | None = None
) -> sql.Composed:
    """insert ... on conflict do update ... where free: the keys (as text) this holder won."""
    condition = sql.SQL(" and ").join([FREE, waiting(held_back)] if respect_backoff else [FREE])
    return sql.SQL(
        "insert into syncrun_state as st (source, entity_key, claimed_by, claim_expires_at)"
        " select %(source)s, k, %(holder)s, now() + %(lease)s::float8 * interval '1 second'"
        " from ({}) c(k) order by k"
        " on conflict (source, entity_key) do update"
        " set claimed_by = excluded.claimed_by, claim_expires_at = excluded.claim_expires_at,"
        " updated_at = now() where {} returning st.entity_key"
    ).format(candidates, condition)


def _claim_keys(conn: psycopg.Connection, claim: Claim, keys: list[Any], respect_backoff: bool) -> set[str]:
    query = claim_sql(sql.SQL("select unnest(%(keys)s::text[])"), respect_backoff, claim.held_back)
    with conn.transaction():
        rows = conn.execute(query, {**claim.params(), "keys": [str(k) for k in keys]}).fetchall()
    return {row[0] for row in rows}


def claimed(conn: psycopg.Connection, claim: Claim, rows: list[Entity], key: str, backoff: bool) -> list[Entity]:
    """The rows this holder won (all of them when claiming is off)."""
    if not claim.enabled:
        return rows
    won = _claim_keys(conn, claim, [row[key] for row in rows], backoff) if rows else set()
    return [row for row in rows if str(row[key]) in won]
