"""Which selected entities failed on their previous attempt: what the circuit breaker must not count.

A block of entities that fail every time (a broken item, a private one answering 401/403), first in
the selection order, would otherwise trip the breaker at the same place on every run and starve the
healthy entities behind it (review13b N2/N4). Moving them to the back of the order starved them
instead: one transient blip put an entity behind every due healthy one for good (review13c R1). So
the order stays what it was and the breaker looks at history instead: a failure of an entity whose
previous attempt failed too neither extends nor resets its streak (runner/breaker.py). Such an entity
is still attempted once per run, and backs off on the ladder like any other (runner/backoff.py); a
real outage still trips the breaker on the entities that were healthy until now.

"Failed on its previous attempt" (`syncrun_state`, read as each chunk is selected, on the selection's
connection, before any of the chunk is fetched): an error after the last success (`last_error_at >
last_success_at`, any kind), refused with 401/403, or a count not yet reset by a success
(`consecutive_errors`, `transient_runs`). An entity with no state row has no history: it counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg

from runner.expressions import JSON
from runner.spec import Source

_FAILED = (
    "select entity_key from syncrun_state where source = %(source)s and entity_key = any(%(keys)s::text[])"
    " and (last_error_at > coalesce(last_success_at, '-infinity') or refused"
    " or consecutive_errors > 0 or transient_runs > 0)"
)


def failed_before(conn: psycopg.Connection[Any], source: str, keys: list[JSON]) -> set[str]:
    """The keys (as text) among these whose previous attempt failed: one query."""
    if not keys:
        return set()
    with conn.transaction():
        rows = conn.execute(_FAILED, {"source": source, "keys": [str(k) for k in keys]}).fetchall()
    return {str(row[0]) for row in rows}


class History:
    """The known-bad keys of the chunks selected so far in this run."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.failed: set[str] = set()

    def attach(
        self, conn: psycopg.Connection[Any] | None, chunks: Iterator[list[dict[str, JSON]]]
    ) -> Iterator[list[dict[str, JSON]]]:
        """The chunks as they are, each one's known-bad keys loaded before it is handed on."""
        key = self.source.entities.key
        for chunk in chunks:
            if conn is not None and chunk:
                self.failed.update(failed_before(conn, self.source.name, [entity[key] for entity in chunk]))
            yield chunk

    def known_bad(self, entity: dict[str, JSON]) -> bool:
        return str(entity.get(self.source.entities.key)) in self.failed
