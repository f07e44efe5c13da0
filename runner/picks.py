"""The user's own selections (`entities.type: sql` and `function`): their statement asked page by page
(or once), and the rows it returns made into entities.

- function: `select * from fn(name => value, ...)`. A function taking the `after_key` parameter
  is paged with it; any other function is called once with the whole limit.
- sql: the user's query with `%(limit)s`, `%(after_key)s` (null first) and `%(source)s`; it must
  return the key column, order by it and start after `after_key`. Paged with after_key.

Paging: after_key is the last key of the page as the query returned it (it orders in its own type:
after ' 1' comes '01', the entity 1 again for an int key, then '5'). A page of keys already seen
does not end the selection, nor does a page of NULL keys (a `desc` order puts them first: that page
is asked again, wider, until a key follows them). A page that cannot move on - its last key was an
after_key already (the query ignores after_key), or only NULL keys past NULL_PAST of them - fails
the selection (SelectionError, naming the source and the setting): ending it there would report
the entities not reached as a completed run.

Rows become entities (`entities`): the declared columns, one entity per key.

- The key is read as `entities.key_type` (`typed`), as PostgreSQL's own cast would read it, so the
  request, the claim, the stamp and the rows all name one entity: for int/bigint an integer, or a
  text of ASCII digits with an optional sign and the whitespace the cast skips ('01' and ' 1 ' are
  1), or an integral numeric; for text a text as written (' 1' and '1' are two keys) or an integer,
  numeric or uuid as its text. Anything else ('abc', '1.5', '1e3', past the type's range, a float
  for a text key) is a query returning the wrong type, not an entity's outcome: SelectionError,
  naming the key, the setting and the source, before that page is claimed.
- A NULL key names no entity (there is no request, claim or stamp for it): the row is left out
  with a warning naming the source and the setting; the other entities run.
- A key returned twice is one entity, fetched once (its claim, stamp and state are per key); twice
  with different columns in one page it would be two requests for one entity: SelectionError,
  naming them. Across pages the first row is kept.

runner/selection.py calls these with its statement runner (`Fetch`: errors named by the setting)
and its claim; runner/ids.py runs the same statement restricted to `--ids`.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
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

log = logging.getLogger("syncrun")

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
    """Call `page(n, after_key)` until it returns fewer than n rows (module docstring: paging).

    after_key is the last non-NULL key of the rows taken, as the query returned it (the query orders
    in its own type: after '01' for an int key, not after 1). A page of keys already seen goes on;
    a page that cannot move (its last key was an after_key already, or NULL keys only, past
    NULL_PAST of them) fails the selection: silently ending it would call a partial run complete."""
    key, kind, origin = source.entities.key, source.entities.key_type, setting(source)
    seen, asked, widen = set[Any](), {after}, 0
    while (size := budget.next()) > 0:
        limit = size + widen  # widened past a run of NULL keys the last page was made of
        query, params = page(limit, after)
        rows = fetch(query, params)
        by_key = {entity[key]: entity for entity in entities(source, rows, warn=False)}
        taken, fresh = len(rows), list[Entity]()
        for i, row in enumerate(rows):
            if row[key] is None or (typed_key := typed(kind, row[key])) in seen:
                continue
            if len(fresh) == size:  # the rest is the next page's (it starts after the last row taken)
                taken = i
                break
            seen.add(typed_key)
            fresh.append(by_key[typed_key])
        last = next((row[key] for row in reversed(rows[:taken]) if row[key] is not None), None)
        ended = len(rows) < limit and taken == len(rows)
        if last is None and not ended:  # NULL keys only: after_key cannot move past them
            if len(rows) >= NULL_PAST:
                raise SelectionError(_stuck_on_nulls(source, origin, len(rows), after))
            widen = 2 * len(rows)
            continue
        if nulls := sum(row[key] is None for row in rows[:taken]):
            null_keys(source, origin, nulls, f"leave them out of the selection (where {key} is not null)")
        if kept := _shard(source, fresh, partition):
            yield budget.spend(claims.claimed(conn, claim, kept, key, backoff=True))
        if ended:
            return
        if last in asked:  # the query's own last key did not move: the same page again and again
            raise SelectionError(
                f"{source.name}: {origin} returned a page ending at {key} {show(last)} again (after_key"
                f" {show(after)}): it cannot page on, so the run stops rather than skip the rest; start"
                f" after after_key, ordered by {key} (entities.key)"
            )
        asked.add(last)
        after, widen = last, 0


NULL_PAST = 10_000  # NULL-key rows a page is widened past (ordered first, e.g. `desc`) before failing


def _stuck_on_nulls(source: Source, origin: str, count: int, after: Any) -> str:
    key = source.entities.key
    return (
        f"{source.name}: {origin} returned {count} rows with a NULL {key} and no {key} after them"
        f" (after_key {show(after)}): after_key cannot move past them, so the run stops rather than skip"
        f" the rest; leave them out of the selection (where {key} is not null)"
    )


def _shard(source: Source, rows: list[Entity], partition: Partition | None) -> list[Entity]:
    if partition is None:
        return rows
    key = source.entities.key
    return [row for row in rows if partition_of(row[key], partition.shards) == partition.shard]


def entities(
    source: Source, rows: list[Entity], origin: str | None = None, *, warn: bool = True, remedy: str = ""
) -> list[Entity]:
    """The declared columns of the rows, one entity per key, the key as key_type; rows with a NULL
    key left out, with a warning unless `warn` is false (the caller counts them). `origin`: what
    returned the rows (the setting); `remedy`: what to do about a key twice."""
    names, key, kind = [c.name for c in source.entities.columns], source.entities.key, source.entities.key_type
    origin = origin or setting(source)
    kept: dict[Any, Entity] = {}
    nulls = 0
    for row in rows:
        if (absent := next((n for n in names if n not in row), None)) is not None:  # was a KeyError (exit 70)
            raise SelectionError(
                f"{source.name}: {origin} returned no {absent} column: return the key (entities.key)"
                if absent == key
                else f"{source.name}: {origin} returned no {absent} column: return every entities.columns"
                f" column ({', '.join(names)})"
            )
        entity = {n: row[n] for n in names}
        if entity[key] is None:
            nulls += 1
            continue
        try:
            entity[key] = typed(kind, entity[key])
        except ValueError as error:
            raise SelectionError(
                f"{source.name}: {origin} returned {key} {error}; the key is {kind} (entities.key_type),"
                f" so return {kind} keys (or change key_type)"
            ) from None
        first = kept.setdefault(entity[key], entity)
        if (differs := next((n for n in names if not _equal(first.get(n), entity.get(n))), None)) is not None:
            raise SelectionError(
                f"{source.name}: {origin} returned {key} {show(entity[key])} twice, with {differs}"
                f" {show(first.get(differs))} and {show(entity.get(differs))}: an entity is selected once"
                f" per key, so {remedy or 'return'} one row per {key}"
            )
    if nulls and warn:
        null_keys(source, origin, nulls, f"leave them out of the selection (where {key} is not null)")
    return list(kept.values())


def null_keys(source: Source, origin: str, count: int, remedy: str) -> None:
    """Say that `origin` returned `count` rows with a NULL key, which are not run."""
    rows = "a row" if count == 1 else f"{count} rows"
    log.warning(
        "%s: %s returned %s with a NULL %s: not run (a NULL key names no entity); %s",
        *(source.name, origin, rows, source.entities.key, remedy),
    )


_INTEGERS = {"int": (-(2**31), 2**31 - 1), "bigint": (-(2**63), 2**63 - 1)}  # PostgreSQL's ranges
_BLANK = " \t\n\r\v\f"  # what PostgreSQL's integer input skips around the digits (ASCII only)


def typed(kind: str, value: Any) -> int | str:
    """A key (not NULL) as `kind` (entities.key_type); ValueError("<value> <why not>") when it is not one.

    >>> typed("int", " 01 "), typed("text", 7)
    (1, '7')
    """
    if kind == "text":
        if isinstance(value, str):
            return value
        if isinstance(value, int | Decimal | uuid.UUID) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{show(value)} is a {type(value).__name__}, not text")
    low, high = _INTEGERS[kind]
    number = _whole(value)
    if number is None:
        raise ValueError(f"{show(value)} is not a whole number")
    if not low <= number <= high:
        raise ValueError(f"{show(value)} is out of {kind}'s range")
    return number


def _whole(value: Any) -> int | None:
    """The integer `value` stands for, None when it stands for none; past 2**64 only its sign is
    kept (never a huge int built from hostile text: it is out of every key's range anyway)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip(_BLANK)
        digits = text[1:] if text[:1] in "+-" else text
        if not (digits.isascii() and digits.isdigit()):
            return None
        sign, digits = -1 if text[:1] == "-" else 1, digits.lstrip("0") or "0"  # int() refuses 4300+ digits
        return sign * int(digits) if len(digits) <= 20 else sign * 2**64
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value) if value.adjusted() <= 20 else (1 if value > 0 else -1) * 2**64
    return None


def _equal(one: Any, other: Any) -> bool:
    return bool(one == other or repr(one) == repr(other))  # NaN != NaN, also inside json (revF F5, revG F4)
