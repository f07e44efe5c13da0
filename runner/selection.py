"""Picking due entities (default / function / sql / explicit ids), in keyset chunks, with claims.

`chunks(...)` yields lists of entity dicts (the declared `entities.columns`), at most `chunk_size`
each and `limit` in total (`--ids`: every id named; the limit caps a selection, not a list the user
wrote out). It never uses OFFSET and never one unbounded statement.

- default: the status table's due-ness query. Order: the declared `entities.order` terms, never
  synced for this source first, then priority desc, oldest stamp, key. Every sort key is made
  ascending (priority negated, a sentinel for the null stamp) so one row comparison
  `(a, b, c, d) > (...)` is the keyset cursor. (Entities that failed last time keep their place: the
  breaker does not count them, runner/history.py.)
  Not due: not syncable, stamp younger than its interval, backoff (next_attempt_at) or skip_until
  in the future, gone (syncrun_state.deleted_at: an `outcome: delete`), held back by the cut-off
  (`entities.max_consecutive_errors`, runner.backoff), or a live claim by another holder. A row
  with a NULL key is never claimed, so never run; a run counts the due ones once, after its first
  chunk, and says so (a warning). The
  backoff, skip_until, deleted_at and cut-off checks apply to function and sql selections too,
  in the claim. `entities.join/where/order` add declared filters and sort terms (runner.filters,
  placed before the built-in order); `--ids` ignores them like it ignores due-ness.
- function / sql: the user's own statement, paged with `after_key` (runner/picks.py).
- ids: exactly these entities (`--ids`), whether due or not (backoff is ignored, claims are not);
  their columns come from the source's own selection (runner.ids). An id another runner holds is
  not run: it goes to the caller's `busy` list (with its holder), so the run can say so.

Claims (runner/claims.py): every chunk is claimed in the same statement that selects it, so several
runners of one source never process the same entity at once; claims commit before a chunk is yielded.

Static sharding (`--partition i/n`): runner/partitions.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from runner import backoff, claims, filters, filtersql, picks
from runner import ids as ids_
from runner.claims import Entity, Held
from runner.database import identifier
from runner.errors import SelectionError
from runner.partitions import Partition, partition_sql
from runner.spec import SelectionType, Source
from runner.values import show

CHUNK_SIZE = 500
NEVER = datetime(1900, 1, 1, tzinfo=UTC)  # sort sentinel for a null stamp (never-synced rows sort first anyway)
_INTERNAL = "__"  # prefix of the selection's own columns (sort keys, __claimed): never an entity's


def chunks(
    conn: psycopg.Connection,
    source: Source,
    *,
    limit: int,
    holder: str,
    lease_seconds: float,
    after: Any = None,
    ids: Sequence[Any] | None = None,
    partition: tuple[int, int] | None = None,
    claim: bool = True,
    chunk_size: int | Callable[[], int] = CHUNK_SIZE,
    busy: list[Held] | None = None,
) -> Iterator[list[Entity]]:
    """Entities in chunks, `limit` in total, each chunk claimed for `holder` before it is yielded.
    `ids` are run whole whatever `limit` says (review revJ F2: 100 of 150 ids ran, reported completed).

    `after` starts past that key; `claim=False` (dry runs) selects without claiming anything.
    `chunk_size` may be a callable asked before each chunk (runner/claimsize.py: a runner claims what
    it will finish soon, so several runners of one source share the due set). `busy` collects the
    `ids` another runner holds (other selections skip those silently: they are not due for this runner).
    """
    claimer = claims.Claim(source.name, holder, lease_seconds, claim, backoff.held_back_sql(source))
    part = Partition(*partition) if partition is not None else None
    budget = picks.Budget(limit if ids is None else len(ids), chunk_size)
    fetch: picks.Fetch = partial(_fetch, conn, source=source)
    if ids is not None:
        pages = _by_ids(conn, source, list(ids), claimer, budget, busy if busy is not None else [])
    elif source.entities.type is SelectionType.DEFAULT:
        pages = _default(conn, source, claimer, part, after, budget)
    elif source.entities.type is SelectionType.FUNCTION:
        pages = picks.function(conn, fetch, source, claimer, part, after, budget)
    elif source.entities.type is SelectionType.SQL:
        pages = picks.user_sql(conn, fetch, source, claimer, part, after, budget)
    else:
        raise ValueError(f"{source.name}: a list-shaped source has no entity selection")
    # Pages can be empty (every candidate claimed by someone else); the caller never sees those.
    yield from (page for page in pages if page)


# --- default selection ----------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _default_sql(
    source: Source, keyset: bool, partitioned: bool, after: bool, claiming: bool, types: filters.Types = ()
) -> sql.Composed:
    """`types`: the catalog types of the columns `entities.order` names (filters.types)."""
    entities, status = source.entities, source.status
    assert status is not None
    key = sql.Identifier(entities.key)
    order = [*filtersql.order_sql(entities, types), *_order_exprs(source)]
    names = [sql.Identifier(f"__o{i}") for i in range(len(order) - 1)]  # the last sort key is the key itself
    where = [
        *_due_terms(source),
        sql.SQL("(st.source is null or ({} and {}))").format(
            claims.waiting(backoff.held_back_sql(source)), claims.FREE
        ),
        sql.SQL("s.{} is not null").format(key),  # names no entity: never due (_nulls counts them)
    ]
    if keyset:
        cursor = sql.SQL(", ").join(sql.Placeholder(f"c{i}") for i in range(len(order)))
        where.append(sql.SQL("({}) > ({})").format(sql.SQL(", ").join(order), cursor))
    if partitioned:
        where.append(
            sql.SQL("{} = %(part_index)s").format(
                partition_sql(sql.SQL("s.{}").format(key), sql.Placeholder("part_count"))
            )
        )
    if after:
        where.append(sql.SQL("s.{} > %(after)s").format(key))
    columns = sql.SQL(", ").join(sql.SQL("s.{0} as {0}").format(sql.Identifier(c.name)) for c in entities.columns)
    internal = sql.SQL(", ").join(
        sql.SQL("{} as {}").format(expr, name) for expr, name in zip(order, names, strict=False)
    )
    return sql.SQL(
        "with candidates as (select {columns}, {internal} from {status} s"
        " left join syncrun_state st on st.source = %(source)s and st.entity_key = s.{key}::text{joins}"
        " where {where} order by {order} limit %(n)s),"
        " claimed as ({claim})"
        " select c.*, k.entity_key is not null as __claimed from candidates c"
        " left join claimed k on k.entity_key = c.{key}::text order by {internal_order}"
    ).format(
        columns=columns,
        internal=internal,
        status=identifier(status.table),
        joins=filtersql.joins_sql(entities),
        key=key,
        where=sql.SQL(" and ").join(where),
        order=sql.SQL(", ").join(order),
        claim=claims.claim_sql(
            sql.SQL("select {}::text from candidates").format(key),
            True,
            backoff.held_back_sql(source),
        )
        if claiming
        else sql.SQL("select {}::text as entity_key from candidates").format(key),
        internal_order=sql.SQL(", ").join([*names, sql.SQL("c.{}").format(key)]),
    )


def _due_terms(source: Source) -> list[sql.Composable]:
    """A status row is due: syncable, its stamp older than its interval, the declared `where` terms."""
    entities, status = source.entities, source.status
    assert status is not None
    return [
        sql.SQL("coalesce(s.{}, true)").format(sql.Identifier(entities.syncable_column))
        if entities.syncable_column
        else sql.SQL("true"),
        sql.SQL("(s.{0} is null or s.{0} < now() - {1})").format(sql.Identifier(status.column), _interval(source)),
        *filtersql.where_sql(entities),
    ]


def _order_exprs(source: Source) -> list[sql.Composable]:
    """(synced?, -priority, stamp, key): all ascending, none null, so a row comparison is the keyset."""
    assert source.status is not None
    stamp, priority = sql.Identifier(source.status.column), source.entities.priority_column
    return [
        sql.SQL("(s.{} is not null)").format(stamp),
        # `0::int`, not `0`: a bare integer in ORDER BY is a column position ("position 0 is not in select list")
        sql.SQL("-coalesce(s.{}, 0)").format(sql.Identifier(priority)) if priority else sql.SQL("0::int"),
        sql.SQL("coalesce(s.{}, {})").format(stamp, sql.Literal(NEVER)),
        sql.SQL("s.{}").format(sql.Identifier(source.entities.key)),
    ]


def _interval(source: Source) -> sql.Composable:
    default = sql.SQL("{}::float8 * interval '1 second'").format(sql.Literal(source.entities.refresh_interval))
    column = source.entities.interval_column
    if not column:
        return default
    return sql.SQL("coalesce(s.{} * interval '1 hour', {})").format(sql.Identifier(column), default)


def _default(
    conn: psycopg.Connection,
    source: Source,
    claim: claims.Claim,
    partition: Partition | None,
    after: Any,
    budget: picks.Budget,
) -> Iterator[list[Entity]]:
    cursor: tuple[Any, ...] | None = None
    types = filters.types(conn, source)
    counted = False
    while (size := budget.next()) > 0:
        query = _default_sql(source, cursor is not None, partition is not None, after is not None, claim.enabled, types)
        params = {**claim.params(), **filtersql.params(source.entities), "n": size, "after": after}
        if partition is not None:
            params.update(part_index=partition.shard, part_count=partition.shards)
        params.update({f"c{i}": value for i, value in enumerate(cursor or ())})
        try:
            rows = _fetch(conn, query, params, source)
        except SelectionError:
            _twice(conn, source)  # a clearer message when the claim failed on a key the table holds twice
            raise
        if rows:
            last = rows[-1]
            cursor = (*(value for name, value in last.items() if name.startswith("__o")), last[source.entities.key])
            yield budget.spend([_public(row) for row in rows if row["__claimed"]])
        if not counted:  # after the first chunk is handed over: the count never delays the first request
            _nulls(conn, source)
            counted = True
        if len(rows) < size:
            return


def _nulls(conn: psycopg.Connection, source: Source) -> None:
    """Warn (once a run) about the due rows with a NULL key: the selection leaves them out."""
    assert source.status is not None
    query = sql.SQL("select count(*) as n from {} s{} where s.{} is null and {}").format(
        identifier(source.status.table),
        filtersql.joins_sql(source.entities),
        sql.Identifier(source.entities.key),
        sql.SQL(" and ").join(_due_terms(source)),
    )
    [row] = _fetch(conn, query, filtersql.params(source.entities), source)
    if row["n"]:
        picks.null_keys(source, str(source.status.table), row["n"], "give them a key or delete them")


def _twice(conn: psycopg.Connection, source: Source) -> None:
    """SelectionError naming a key the status table holds twice (the claim cannot claim it twice)."""
    assert source.status is not None
    key = sql.Identifier(source.entities.key)
    query = sql.SQL("select {0} from {1} where {0} is not null group by {0} having count(*) > 1 limit 1")
    try:
        with conn.transaction():
            row = conn.execute(query.format(key, identifier(source.status.table))).fetchone()
    except psycopg.errors.ProgrammingError:  # no such column or table: the caller's error says so
        return
    if row is not None:
        table, name = source.status.table, source.entities.key
        raise SelectionError(
            f"{source.name}: {table} holds {name} {show(row[0])} more than once: an entity is selected once"
            f" per key, so keep one row per {name} in {table} (a primary key on {name})"
        )


def _fetch(
    conn: psycopg.Connection, query: sql.SQL | sql.Composed, params: dict[str, Any], source: Source
) -> list[Entity]:
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
            return cursor.execute(query, params).fetchall()
    except _SETTING_ERRORS as error:
        raise SelectionError(_failed(source, error)) from None
    except (ValueError, RecursionError) as error:  # a value psycopg cannot load (json past 4300 digits, deep)
        raise SelectionError(
            f"{source.name}: selecting entities with {setting(source)} failed: a value it returned cannot be"
            f" read ({show(str(error))}); return the entity columns as plain values"
        ) from None


# What a selection's own settings can cause (an unknown or mistyped column, the user's SQL or function
# raising); a lost connection stays a psycopg error, the caller's to report as such.
_SETTING_ERRORS = (psycopg.errors.ProgrammingError, psycopg.errors.DataError, psycopg.errors.RaiseException)


def setting(source: Source) -> str:
    """The settings a source's selection is built from, as the user wrote them."""
    entities = source.entities
    if entities.type in (SelectionType.SQL, SelectionType.FUNCTION):
        return picks.setting(source)
    named = [
        f"{name}: {value}"
        for name, value in (
            ("priority_column", entities.priority_column),
            ("interval_column", entities.interval_column),
            ("syncable_column", entities.syncable_column),
        )
        if value
    ]
    named += [
        f"{name}: {len(terms)}"
        for name, terms in (("join", entities.join), ("where", entities.where), ("order", entities.order))
        if terms
    ]
    table = source.status.table if source.status else "?"
    return f"the default selection over {table} (entities: {', '.join(named) or 'no optional columns'})"


def _failed(source: Source, error: psycopg.Error) -> str:
    reason = error.diag.message_primary or str(error).strip()
    return f"{source.name}: selecting entities with {setting(source)} failed: {reason}"


def check(conn: psycopg.Connection, source: Source) -> None:
    """Plan the source's first selection statement (EXPLAIN: nothing runs, nothing is claimed), so a
    broken query or column setting stops the run at its start (SelectionError, exit 2), named."""
    entities = source.entities
    if entities.type is SelectionType.LIST or (entities.type is SelectionType.DEFAULT and source.status is None):
        return
    params: dict[str, Any] = {**claims.Claim(source.name, "check", 1.0).params(), "n": 1, "after": None}
    if entities.type is SelectionType.DEFAULT:
        filters.check(conn, source)
        params.update(filtersql.params(entities))
        query: sql.SQL | sql.Composed = _default_sql(source, False, False, False, True, filters.types(conn, source))
    elif entities.type is SelectionType.FUNCTION:
        query = picks.function_sql(source, 1, None)
    else:
        assert entities.sql is not None
        query, params = sql.SQL(entities.sql), {"limit": 1, "after_key": None, "source": source.name}
    _fetch(conn, sql.SQL("explain ") + query, params, source)


def _public(row: Entity) -> Entity:
    return {name: value for name, value in row.items() if not name.startswith(_INTERNAL)}


def due_sql(conn: psycopg.Connection, source: Source) -> tuple[sql.Composed, dict[str, Any]]:
    """The default selection's query without claiming (every row it returns is due), and its filter
    parameters; the caller adds source, holder, lease, n and after."""
    return _default_sql(source, False, False, False, False, filters.types(conn, source)), filtersql.params(
        source.entities
    )


# --- explicit ids (runner.ids finds their columns) ---------------------------------------------------
cast_key = ids_.cast_key  # the command line and the engine cast --ids here
keys_of = ids_.keys_of  # ... and take each once


def _by_ids(
    conn: psycopg.Connection,
    source: Source,
    ids: list[Any],
    claim: claims.Claim,
    budget: picks.Budget,
    busy: list[Held],
) -> Iterator[list[Entity]]:
    key = source.entities.key
    typed, gone = ids_.keys_of(source, ids), list[Any]()
    while typed and (size := budget.next()) > 0:
        page, typed = typed[:size], typed[size:]
        rows = ids_.rows(conn, source, page)
        gone += [value for value in page if value not in {row[key] for row in rows}]
        won = claims.claimed(conn, claim, rows, key, backoff=False)
        if len(won) < len(rows):  # backoff is ignored: only a live claim of another runner refuses an id
            taken = {row[key] for row in won}
            busy.extend(claims.held(conn, source, [row[key] for row in rows if row[key] not in taken]))
        yield budget.spend(won)
    if gone:  # checked at the start (ids.missing), gone since: a subset of the ids is not a completed run
        raise SelectionError(ids_.gone(source, gone))
