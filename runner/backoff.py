"""When a failing entity is asked again: the backoff ladder, transiently failed runs, the cut-off.

Per (source, entity), in `syncrun_state` (the source of truth; the seed's `sync_status` columns are
for dashboards, runner/stamps.py):

- **Definitive failures** (the entity's own answer was unusable) back off at once, in the writer's
  state upsert: the n-th in a row waits `initial * factor^(n-1)`, at most `cap` (`spec.Backoff`;
  default 15 min, 30 min, 1 h, ... 24 h).
- **Transient failures** (5xx, 429, timeouts: retries exhausted) cost nothing at first: the API may
  be having a bad minute. But an entity that fails transiently on every run must not be retried with
  full retries forever, unseen: `transient_runs` counts the runs in a row, since its last success, in
  which it failed transiently, and from `backoff.transient_runs` such runs (default 3) it climbs the
  same ladder. The count is added once per run, at its end (`record`), for the entities the run
  wrote as failed transiently — not for a refused credential (the source's problem), not for an
  entity whose claim was lost. A run the circuit breaker stopped counts too: 20 entities that fail
  every time at the front of the selection order trip it on every run, and uncounted they would never
  back off and nothing behind them would ever be fetched (review13 F1). In a real outage that costs
  the entities each run tried (the breaker stops it after ~20) one count per run, a back-off only
  after K runs in a row, reset by their next success. Only an entity whose latest event is still that
  failure is counted (another runner's later success wins).
- **The cut-off** (`entities.max_consecutive_errors`): an entity whose definitive errors in a row
  since its last success (`consecutive_errors`) reach it is no longer selected (`--ids` still runs
  it); `syncrun status` counts those held back. Transiently failed runs do not count toward it
  (review13b N1): an API-wide outage of K runs counts one for each entity each run tried — the head
  of the order — and a cut-off fed by them would hold back those healthy entities for good; they
  back off on the ladder instead, and their next success resets it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from runner.breaker import AUTH_STATUSES
from runner.spec import Outcome, SelectionType, Source

if TYPE_CHECKING:
    from runner.results import EntityResult

CHUNK = 5_000  # keys per statement at the end of a run: bounded statements and lock sets


def held_back_sql(source: Source) -> sql.Composable | None:
    """The cut-off over `syncrun_state st`; None when the source has none."""
    limit = source.entities.max_consecutive_errors
    if limit is None:
        return None
    return sql.SQL("st.consecutive_errors >= {}").format(sql.Literal(limit))


@dataclass(slots=True)
class Transients:
    """The keys of the entities this run wrote as failed transiently (their own failures only)."""

    source: Source
    keys: list[str] = field(default_factory=list)

    def note(self, results: Iterable[tuple[EntityResult, int | None]]) -> None:
        """Written results with their first reply's HTTP status (None: no reply, e.g. a timeout)."""
        if self.source.entities.type is SelectionType.LIST:  # a page is no entity: no state
            return
        self.keys += [
            str(result.key)
            for result, status in results
            if result.outcome is Outcome.ERROR and not result.definitive and status not in AUTH_STATUSES
        ]


_RECORD = sql.SQL(
    """update syncrun_state as st set
    transient_runs = st.transient_runs + 1,
    next_attempt_at = case
        when %(after)s::int > 0 and st.transient_runs + 1 >= %(after)s::int then greatest(
            coalesce(st.next_attempt_at, '-infinity'),
            now() + least(%(initial)s::float8 * power(%(factor)s::float8,
                least(st.transient_runs + 1 - %(after)s::int, 30)), %(cap)s::float8) * interval '1 second')
        else st.next_attempt_at end,
    updated_at = now()
from (select entity_key from syncrun_state where source = %(source)s and entity_key = any(%(keys)s::text[])
      order by entity_key for update) as locked
where st.source = %(source)s and st.entity_key = locked.entity_key
    and st.last_error_at is not null and st.deleted_at is null
    and (st.last_success_at is null or st.last_success_at < st.last_error_at)"""
)


def record(conn: psycopg.Connection[Any], source: Source, keys: list[str]) -> int:
    """Count one more transiently failed run for these entities (the end of a run); how many were."""
    backoff, counted = source.backoff, 0
    unique = sorted(set(keys))  # the same lock order as every other writer of syncrun_state
    for start in range(0, len(unique), CHUNK):
        params = {
            "source": source.name,
            "keys": unique[start : start + CHUNK],
            "after": backoff.transient_runs,
            "initial": backoff.initial,
            "factor": backoff.factor,
            "cap": backoff.cap,
        }
        with conn.transaction():
            counted += conn.execute(_RECORD, params).rowcount
    return counted
