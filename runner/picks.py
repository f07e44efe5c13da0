"""The user's own selections (`entities.type: sql` and `function`): their statement asked page by page
(or once), and the rows it returns made into entities.

- function: `select * from fn(name => value, ...)`. A function taking the `after_key` parameter
  is paged with it; any other function is called once with the whole limit.
- sql: the user's query with `%(limit)s`, `%(after_key)s` (null first) and `%(source)s`; it must
  return the key column, order by it and start after `after_key`. Paged with after_key.

Rows become entities (`entities`): the declared columns, one entity per key. A key returned twice
is one entity, fetched once (its claim, stamp and state are per key); twice with different columns
in one page it would be two requests for one entity: SelectionError, naming them. Across pages the
first row is kept.

runner/selection.py calls these with its statement runner (`Fetch`: errors named by the setting)
and its claim; runner/ids.py runs the same statement restricted to `--ids`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from runner import claims
from runner.claims import Entity
from runner.database import identifier
from runner.errors import SelectionError
from runner.partitions import Partition, partition_of
from runner.spec import SelectionType, Source
from runner.values import show

Statement = sql.SQL | sql.Composed
Fetch = Callable[[Statement, dict[str, Any]], list[Entity]]  # a statement's rows; errors name the setting


@dataclass(slots=True)
class Budget:
    """How many entities may still be claimed: no chunk ever claims more than the run will process."""

    left: int
    size: int | Callable[[], int]

    def next(self) -> int:
        size = self.size() if callable(self.size) else self.size
        return max(0, min(max(1, size), self.left))

    def spend(self, rows: list[Entity]) -> list[Entity]:
        self.left -= len(rows)
        return rows


def setting(source: Source) -> str:
    """The setting a user selection is, as the user wrote it (for messages)."""
    if source.entities.type is SelectionType.SQL:
        return "entities.sql"
    return f"entities.function ({source.entities.function})"


def function_sql(source: Source, limit: int, after: Any) -> sql.Composed:
    """`select * from fn(name => value, ...)`; values are literals, safely quoted by psycopg."""
    engine = {"limit": limit, "after_key": after, "source": source.name}
    args = [
        sql.SQL("{} => {}").format(
            sql.Identifier(name), sql.Literal(engine[arg.parameter] if arg.parameter else arg.value)
        )
        for name, arg in source.entities.args
    ]
    assert source.entities.function is not None
    return sql.SQL("select * from {}({})").format(identifier(source.entities.function), sql.SQL(", ").join(args))


def function(
    conn: psycopg.Connection,
    fetch: Fetch,
    source: Source,
    claim: claims.Claim,
    partition: Partition | None,
    after: Any,
    budget: Budget,
) -> Iterator[list[Entity]]:
    if any(arg.parameter == "after_key" for _, arg in source.entities.args):
        yield from _paged(
            conn, fetch, source, claim, partition, after, budget, lambda n, a: (function_sql(source, n, a), {})
        )
        return
    # Called once: a function without after_key cannot be paged. With --partition it is asked for
    # limit x count rows so that this shard still gets about `limit` after filtering.
    # Entities backing off are dropped after the call, so fewer than `limit` may come back.
    wanted = budget.left * (partition.shards if partition else 1)
    rows = _shard(source, entities(source, fetch(function_sql(source, wanted, after), {})), partition)
    while rows and (size := budget.next()) > 0:
        page, rows = rows[:size], rows[size:]
        yield budget.spend(claims.claimed(conn, claim, page, source.entities.key, backoff=True))


def user_sql(
    conn: psycopg.Connection,
    fetch: Fetch,
    source: Source,
    claim: claims.Claim,
    partition: Partition | None,
    after: Any,
    budget: Budget,
) -> Iterator[list[Entity]]:
    assert source.entities.sql is not None
    query = sql.SQL(source.entities.sql)

    def page(n: int, after_key: Any) -> tuple[sql.SQL, dict[str, Any]]:
        return query, {"limit": n, "after_key": after_key, "source": source.name}

    yield from _paged(conn, fetch, source, claim, partition, after, budget, page)


def _paged(
    conn: psycopg.Connection,
    fetch: Fetch,
    source: Source,
    claim: claims.Claim,
    partition: Partition | None,
    after: Any,
    budget: Budget,
    page: Callable[[int, Any], tuple[Statement, dict[str, Any]]],
) -> Iterator[list[Entity]]:
    """Call `page(n, after_key)` until it returns fewer than n rows or nothing new."""
    key, seen = source.entities.key, set[Any]()
    while (size := budget.next()) > 0:
        query, params = page(size, after)
        rows = fetch(query, params)
        fresh = [row for row in rows if row[key] not in seen]
        if not fresh:
            return  # also guards against a query that ignores after_key
        seen.update(row[key] for row in fresh)
        after = rows[-1][key]
        kept = _shard(source, entities(source, fresh), partition)[:size]
        yield budget.spend(claims.claimed(conn, claim, kept, key, backoff=True))
        if len(rows) < size:
            return


def _shard(source: Source, rows: list[Entity], partition: Partition | None) -> list[Entity]:
    if partition is None:
        return rows
    key = source.entities.key
    return [row for row in rows if partition_of(row[key], partition.shards) == partition.shard]


def entities(source: Source, rows: list[Entity]) -> list[Entity]:
    """The declared columns the rows have, one entity per key (module docstring)."""
    names, key = [c.name for c in source.entities.columns], source.entities.key
    kept: dict[Any, Entity] = {}
    for row in rows:
        entity = {n: row[n] for n in names if n in row}
        first = kept.setdefault(entity[key], entity)
        if (differs := next((n for n in names if not _equal(first.get(n), entity.get(n))), None)) is not None:
            raise SelectionError(
                f"{source.name}: {setting(source)} returned {key} {show(entity[key])} twice, with {differs}"
                f" {show(first.get(differs))} and {show(entity.get(differs))}: an entity is selected once"
                f" per key, so return one row per {key}"
            )
    return list(kept.values())


def _equal(one: Any, other: Any) -> bool:
    return bool(one == other or repr(one) == repr(other))  # NaN != NaN, also inside json (revF F5, revG F4)
