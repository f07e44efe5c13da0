"""One write target's rows into PostgreSQL, inside the writer's batch transaction (runner.writer).

Per target, in this order:
- lookups: a lookup column arrives holding the dimension's natural key (mapping puts the lookup's
  evaluated `value` under the lookup's `column`); `select key, returning from <table> where key =
  any(...)` swaps it for the dimension's id. Dimension rows written by an earlier write of the batch
  are visible (same transaction, declared order). A value with no dimension row raises `Failed`
  naming the table, key and value; a null stays null.
- replace_by: the rows of each replaced scope are deleted first (one `delete ... using unnest(...)`
  for the batch's scopes), so links that disappeared from the
  API go. A scope is one successful entity's `replace_by` values, worked out by `scope` from the
  entity alone: the columns' mappings evaluated over `{"entity": ...}`. They must therefore be mapped
  from `entity.*` or literals (`parent_appid: entity.appid`, `source: "'storefront'"`); that is
  what lets an entity whose list came back empty still clear its stale links.
- table writes: one `insert ... on conflict (key) do update` sets only the mapped columns, so other
  sources' columns on the same row survive; `merge` rules are evaluated in that statement
  (`greatest`, `coalesce`), never read-then-write; `mode: insert` is `on conflict do nothing`. Rows
  are deduplicated on the key (last wins) because one statement cannot update a row twice. How the
  rows travel (numbers below):
  - from `COPY_FROM` rows (batch writes only): COPY into a temp table + one `insert ... select`. The
    temp table, one per target, is `create temp table if not exists ... on commit delete rows; delete
    from it` at the start of every use: no create + drop per batch, and still right behind a transaction-mode pooler
    (pgbouncer), where each transaction may land on another server session: wherever it lands, the
    statement creates the table or finds it there, empty.
  - from 2 rows: one `insert ... select ... from unnest(%b::int[], %b::text[], ...)`, one binary
    array parameter per column: one statement, no temp table, nothing kept between transactions.
  - one row, or columns that cannot go as arrays (an array-typed or unknown column, or values of
    mixed Python types: `values.array_cast`): a pipelined `executemany` of `insert ... values`.
- function writes (RPC targets): `select fn(column => value, ...)` per row, the named arguments
  being the mapped columns, cast to the argument types `migrations.check` found. Rows are
  deduplicated only when the write declares a key.

A data error (check, FK, not-null, a function's or trigger's `raise exception`) raises `Failed`,
which makes the writer replay the batch one entity per savepoint.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any, NamedTuple

import psycopg
from jmespath.exceptions import JMESPathError
from psycopg import errors as pg_errors
from psycopg import sql

from runner import writeplan
from runner.database import identifier
from runner.migrations import Catalog
from runner.spec import Lookup, Merge, QualifiedName, Write, WriteMode
from runner.values import Unfit, array_cast, column_types, fit, show

MAX_MESSAGE = 1000  # characters of an error message stored in the database
# Rows of one table in a batch, by size (`python -m bench.writer --batch N [--copy-from N]`: whole
# `writer.write` calls, bench source of 6 columns, local PG 15, 2 busy cores; µs per entity, wall /
# this process's CPU, best of 5):
#   rows/batch    executemany    unnest (%b)    COPY (temp table kept)
#   10            208 / 85       198 / 91       246 / 96     (per-batch costs dominate)
#   100            73 / 30        46 / 22        51 / 22
#   200            78 / 26        37 / 20        39 / 18
#   500             -             32 / 17        33 / 16
#   5,000 (bulk)    -            8.7 / 5.0      7.5 / 4.0    (per row; 5 entities of 1,000 rows)
# executemany sends a statement per row; unnest is one statement but dumps every value into arrays
# (more CPU, which the event loop feels: the writer runs in a thread); COPY costs two more round trips
# (create-if-not-exists, copy) and wins from a few hundred rows. The earlier create + drop of the temp
# table per batch cost ~1-3 µs per entity more at 500 rows.
COPY_FROM = 100
UNNEST_FROM = 2  # one row: a plain insert ... values
# P0001 is a function's or trigger's `raise exception`: about the data it was given, like a check
DATA_ERRORS = (pg_errors.DataError, pg_errors.IntegrityError, pg_errors.RaiseException)

Row = dict[str, Any]


class Failed(Exception):
    """A data problem while writing (a constraint, a lookup miss): the writer replays the batch entity
    by entity. The message names the table and the cause; it becomes the failing entity's error."""


def describe(table: str, error: psycopg.Error) -> str:
    """`apps: new row for relation "apps" violates check constraint "apps_price_check"` (+ FK detail)."""
    message = f"{table}: {error.diag.message_primary or str(error).strip()}"
    detail = error.diag.message_detail
    if detail and detail.startswith("Key ("):  # FK / unique: says which key; "Failing row" would echo data
        message += f" ({detail})"
    return message[:MAX_MESSAGE]


def scope(target: Write, entity: dict[str, Any], catalog: Catalog) -> tuple[Any, ...]:
    """The entity's `replace_by` values, from those columns' mappings over the entity alone.

    Raises Unfit when a mapping needs more than the entity (`record.*`, `item`, a lookup) or a value
    does not fit its column: without a value from the entity, an empty list could not clear links.
    """
    expressions = {f.column: f.expression for f in target.columns}
    values: dict[str, Any] = {}
    for column in target.replace_by:
        expression = expressions.get(column)
        try:
            values[column] = None if expression is None else expression.search({"entity": entity})
        except JMESPathError:
            values[column] = None
        if values[column] is None:
            mapped = repr(expression.text) if expression else "a lookup"
            raise Unfit(
                f"{target.table}.{column}: replace_by needs a value from the entity alone"
                f" (map it from entity.* or a literal, not {mapped})"
            )
    return tuple(fit(str(target.table), column_types(target, catalog), values).values())


def write(
    cursor: psycopg.Cursor[Any],
    target: Write,
    rows: list[Row],
    scopes: list[tuple[Any, ...]],
    catalog: Catalog,
    *,
    bulk: bool,
    count: bool = False,
) -> tuple[int, int]:
    """Resolve lookups, delete the `scopes`' rows, then upsert `rows` (or call the function per row).
    With `count`, (rows inserted, rows updated) by the upsert (`counted`); else (0, 0)."""
    for lookup in target.lookups:
        rows = _resolve(cursor, target, lookup, rows, catalog)
    if target.key:
        rows = _dedup(target, rows)
    columns = written_columns(target)
    params = writeplan.params(rows, columns)
    if target.function is not None:
        types = column_types(target, catalog)
        run(cursor, str(target.function), function_sql(target, tuple(types.get(c) for c in columns)), params)
        return 0, 0
    delete_scopes(
        cursor, Scoped(target.table, target.replace_by), sorted(set(scopes), key=str), column_types(target, catalog)
    )
    types = catalog.get(target.table, {})
    touch = "updated_at" in types
    if not params:
        return 0, 0
    if bulk and len(params) >= COPY_FROM:
        return _copy(cursor, target, touch, params, count)
    casts = array_casts(types, columns, params) if len(params) >= UNNEST_FROM else None
    bound: list[Any]
    if casts is None:
        statement, bound = upsert_sql(target, touch), params
    else:
        statement, bound = unnest_upsert_sql(target, touch, casts), [arrays(params)]
    if not count:
        run(cursor, str(target.table), statement, bound)
        return 0, 0
    return _counts(cursor, str(target.table), counted(statement), bound)


def counted(statement: sql.Composed) -> sql.Composed:
    """The upsert reporting (inserted, updated): a row version the statement inserted has no xmax; one
    `on conflict do update` rewrote carries the updating transaction's lock in it. `do nothing`
    returns only the rows it inserted. One result row per statement, whatever the rows written."""
    return sql.SQL(
        "with w as ({} returning (xmax = 0) as created)"
        " select count(*) filter (where created), count(*) filter (where not created) from w"
    ).format(statement)


def _counts(cursor: psycopg.Cursor[Any], table: str, statement: sql.Composed, params: list[Any]) -> tuple[int, int]:
    created = updated = 0
    try:
        cursor.executemany(statement, params, returning=True)
        while True:
            row = cursor.fetchone()
            if row is not None:
                created, updated = created + int(row[0]), updated + int(row[1])
            if not cursor.nextset():
                break
    except DATA_ERRORS as error:
        raise Failed(describe(table, error)) from error
    return created, updated


def array_casts(types: dict[str, str], names: tuple[str, ...], params: list[tuple[Any, ...]]) -> tuple[str, ...] | None:
    """The array type of each column of `params` (rows of values for `names`), or None when some
    column cannot go as one array parameter (values.array_cast)."""
    casts = []
    for index, name in enumerate(names):
        cast = array_cast(types.get(name), (row[index] for row in params))
        if cast is None:
            return None
        casts.append(cast)
    return tuple(casts)


def arrays(params: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows of values -> one list per column."""
    return [list(column) for column in zip(*params, strict=True)]


def unnest_sql(names: tuple[str, ...], casts: tuple[str, ...]) -> sql.Composed:
    """`unnest(%s::int[], %s::text[]) as v(a, b)`: rows from one array parameter per column."""
    parameters = sql.SQL(", ").join(sql.SQL("%b::") + sql.SQL(cast) for cast in casts)
    return sql.SQL("unnest({}) as v({})").format(parameters, sql.SQL(", ").join(map(sql.Identifier, names)))


class Scoped(NamedTuple):
    """Rows of a table picked by the values of some columns: a replace_by scope, or a deleted entity's
    rows (runner.deletes)."""

    table: QualifiedName
    columns: tuple[str, ...]


def delete_scopes(
    cursor: psycopg.Cursor[Any], by: Scoped, scopes: list[tuple[Any, ...]], types: dict[str, str]
) -> None:
    """The scopes' rows: one statement from arrays, or one per scope if they cannot go as arrays."""
    casts = array_casts(types, by.columns, scopes) if len(scopes) > 1 else None
    if casts is None:
        run(cursor, str(by.table), delete_sql(by), scopes)
    else:
        run(cursor, str(by.table), delete_many_sql(by, casts), [arrays(scopes)])


def run(cursor: psycopg.Cursor[Any], table: str, statement: sql.SQL | sql.Composed, params: list[Any]) -> None:
    """`executemany` (pipelined); a data error becomes `Failed` naming `table`."""
    if not params:
        return
    try:
        cursor.executemany(statement, params)
    except DATA_ERRORS as error:
        raise Failed(describe(table, error)) from error


def written_columns(target: Write) -> tuple[str, ...]:
    """The mapped columns, then the lookup columns: what each row carries and the statement writes."""
    return (*target.column_names, *(lookup.column for lookup in target.lookups))


def _resolve(
    cursor: psycopg.Cursor[Any], target: Write, lookup: Lookup, rows: list[Row], catalog: Catalog
) -> list[Row]:
    """Rows with the lookup column's natural key replaced by the dimension row's `returning` value."""
    wanted = sorted({row[lookup.column] for row in rows if row.get(lookup.column) is not None}, key=str)
    if not wanted:
        return rows
    try:
        query = lookup_sql(lookup, catalog.get(lookup.table, {}).get(lookup.key))
        found = dict(cursor.execute(query, (wanted,)).fetchall())
    except DATA_ERRORS as error:
        raise Failed(describe(str(lookup.table), error)) from error
    for value in wanted:
        if value not in found:
            raise Failed(f"{target.table}.{lookup.column}: no {lookup.table} row with {lookup.key} = {show(value)}")
    return [{**row, lookup.column: found.get(row.get(lookup.column))} for row in rows]


def _dedup(target: Write, rows: list[Row]) -> list[Row]:
    """One row per conflict key, the last one winning, in key order (the same lock order everywhere).
    A `preferred_spelling` column keeps the preferred value among the key's rows instead (the rule
    the upsert applies against the stored row), so the result does not depend on the batch's order."""
    unique = dict(zip(writeplan.params(rows, target.key), rows, strict=True))
    spelled = [c for c, how in target.merge if how is Merge.PREFERRED_SPELLING]
    if spelled and len(unique) < len(rows):
        for row in rows:
            kept = unique[tuple(row.get(k) for k in target.key)]
            for column in spelled:
                if spelling_rank(row.get(column)) < spelling_rank(kept.get(column)):
                    kept = unique[tuple(row.get(k) for k in target.key)] = {**kept, column: row[column]}
    try:
        ordered = sorted(unique)  # native order: ~4x cheaper than formatting every key as text
    except TypeError:  # mixed types in one key column: any fixed order will do
        ordered = sorted(unique, key=str)
    return [unique[k] for k in ordered]


def spelling_rank(value: Any) -> tuple[bool, int, str]:
    """The `preferred_spelling` order, lowest first, as the upsert's SQL ranks (initcap, length, code
    points); a null (or non-text) value ranks last."""
    if not isinstance(value, str):
        return (True, 1 << 62, "")
    return (value != initcap(value), len(value), value)


def initcap(text: str) -> str:
    """PostgreSQL's initcap: the first letter of each run of letters and digits upper-case, the rest
    lower-case ("o'neil 2nd" -> "O'Neil 2nd", where str.title gives "O'Neil 2Nd")."""
    out, in_word = [], False
    for char in text:
        out.append(char.lower() if in_word else char.upper())
        in_word = char.isalnum()
    return "".join(out)


def _copy(
    cursor: psycopg.Cursor[Any], target: Write, touch: bool, params: list[tuple[Any, ...]], count: bool
) -> tuple[int, int]:
    """COPY into a temp table shaped like the written columns, then one insert ... select ... on conflict.

    The temp table (one per target: `temp_sql`) is created if missing, and emptied, inside every
    transaction: no create + drop per batch, and still right through a transaction-mode pooler that
    hands each transaction a different server session.
    """
    try:
        cursor.execute(temp_sql(target))
        with cursor.copy(copy_sql(target)) as copy:
            for row in params:
                copy.write_row(row)
        if not count:
            cursor.execute(copy_upsert_sql(target, touch))
            return 0, 0
        found = cursor.execute(counted(copy_upsert_sql(target, touch))).fetchone()
    except DATA_ERRORS as error:
        raise Failed(describe(str(target.table), error)) from error
    return (0, 0) if found is None else (int(found[0]), int(found[1]))


def _temp(target: Write) -> sql.Identifier:
    """The temp table's name for a target: its table and written columns, hashed (names are <= 63 bytes)."""
    shape = repr((str(target.table), written_columns(target))).encode()
    return sql.Identifier("_syncrun_rows_" + hashlib.blake2b(shape, digest_size=8).hexdigest())


@lru_cache(maxsize=256)
def temp_sql(target: Write) -> sql.Composed:
    """create temp table if not exists ... on commit delete rows (typed like the written columns); then
    empty it, for a caller whose transaction spans batches (no commit between them: a savepoint each).
    Two statements, one round trip: no parameters, so psycopg sends them as one query."""
    return sql.SQL(
        "create temp table if not exists {0} on commit delete rows as select {1} from {2} with no data; delete from {0}"
    ).format(_temp(target), sql.SQL(", ").join(map(sql.Identifier, written_columns(target))), identifier(target.table))


@lru_cache(maxsize=256)
def copy_sql(target: Write) -> sql.Composed:
    return sql.SQL("copy {} ({}) from stdin").format(
        _temp(target), sql.SQL(", ").join(map(sql.Identifier, written_columns(target)))
    )


# --- statements (built once per write target) -----------------------------------------------------------
@lru_cache(maxsize=256)
def delete_sql(by: Scoped) -> sql.Composed:
    """delete the rows of one scope: `where c1 = %s and c2 = %s` (the scope's columns)."""
    where = sql.SQL(" and ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in by.columns)
    return sql.SQL("delete from {} where {}").format(identifier(by.table), where)


@lru_cache(maxsize=256)
def delete_many_sql(by: Scoped, casts: tuple[str, ...]) -> sql.Composed:
    """delete the rows of many scopes, bound as one array per column."""
    where = sql.SQL(" and ").join(sql.SQL("t.{0} = v.{0}").format(sql.Identifier(c)) for c in by.columns)
    return sql.SQL("delete from {} as t using {} where {}").format(
        identifier(by.table), unnest_sql(by.columns, casts), where
    )


@lru_cache(maxsize=256)
def lookup_sql(lookup: Lookup, key_type: str | None) -> sql.Composed:
    """(key, returning) of the dimension rows whose key is in the bound list.

    `key_type` comes from the catalog (format_type text, never from YAML): casting the list to it
    keeps `= any(...)` on the key's index whatever type psycopg would have sent.
    """
    values = sql.SQL("%s") if key_type is None else sql.SQL("%s::") + sql.SQL(key_type + "[]")
    return sql.SQL("select {key}, {returning} from {table} where {key} = any({values})").format(
        key=sql.Identifier(lookup.key),
        returning=sql.Identifier(lookup.returning),
        table=identifier(lookup.table),
        values=values,
    )


@lru_cache(maxsize=256)
def function_sql(target: Write, types: tuple[str | None, ...]) -> sql.Composed:
    """select fn(a => %s::integer, b => %s::text): named arguments, cast to the argument types so the
    call resolves like the user's own `fn(a => 1, b => 'x')` would (types: from the catalog)."""
    assert target.function is not None
    arguments = [
        sql.SQL("{} => %s").format(sql.Identifier(c)) + (sql.SQL("::" + t) if t else sql.SQL(""))
        for c, t in zip(written_columns(target), types, strict=True)
    ]
    return sql.SQL("select {}({})").format(identifier(target.function), sql.SQL(", ").join(arguments))


_MERGES = {
    Merge.REPLACE: "excluded.{0}",
    # evaluated by the upsert itself, against the row it has locked: no read-then-write race
    Merge.GREATEST: "greatest(t.{0}, excluded.{0})",
    Merge.KEEP_EXISTING_IF_NULL: "coalesce(excluded.{0}, t.{0})",
    # {1}: the write's greatest column; the new value when greatest took the new one (new >= old)
    Merge.WITH_GREATEST: "case when t.{1} is null or excluded.{1} >= t.{1} then excluded.{0} else t.{0} end",
    # the lower (not initcap form, length, code points) wins: the same spelling whatever the order
    Merge.PREFERRED_SPELLING: (
        "case when t.{0} is null or (excluded.{0} <> initcap(excluded.{0}), length(excluded.{0}),"
        ' excluded.{0} collate "C") < (t.{0} <> initcap(t.{0}), length(t.{0}), t.{0} collate "C")'
        " then excluded.{0} else t.{0} end"
    ),
}


@lru_cache(maxsize=256)
def upsert_sql(target: Write, touch_updated_at: bool) -> sql.Composed:
    """insert ... values (...) on conflict (key) do update set <mapped columns only> (or do nothing)."""
    columns, values, action = _upsert_parts(target, touch_updated_at)
    return sql.SQL("insert into {} as t ({}) values ({}) on conflict ({}) {}").format(
        identifier(target.table), columns, values, sql.SQL(", ").join(map(sql.Identifier, target.key)), action
    )


@lru_cache(maxsize=256)
def copy_upsert_sql(target: Write, touch_updated_at: bool) -> sql.Composed:
    """The same upsert, reading the rows COPY put into the temp table."""
    columns, _, action = _upsert_parts(target, touch_updated_at)
    values = sql.SQL(", ").join(
        [
            *map(sql.Identifier, written_columns(target)),
            *([sql.SQL("now()")] if _touches(target, touch_updated_at) else []),
        ]
    )
    return sql.SQL("insert into {} as t ({}) select {} from {} on conflict ({}) {}").format(
        identifier(target.table),
        columns,
        values,
        _temp(target),
        sql.SQL(", ").join(map(sql.Identifier, target.key)),
        action,
    )


@lru_cache(maxsize=256)
def unnest_upsert_sql(target: Write, touch_updated_at: bool, casts: tuple[str, ...]) -> sql.Composed:
    """The same upsert, reading the rows from one array parameter per written column (`casts`)."""
    columns, _, action = _upsert_parts(target, touch_updated_at)
    names = written_columns(target)
    values = sql.SQL(", ").join(
        [
            *(sql.SQL("v.{}").format(sql.Identifier(c)) for c in names),
            *([sql.SQL("now()")] if _touches(target, touch_updated_at) else []),
        ]
    )
    return sql.SQL("insert into {} as t ({}) select {} from {} on conflict ({}) {}").format(
        identifier(target.table),
        columns,
        values,
        unnest_sql(names, casts),
        sql.SQL(", ").join(map(sql.Identifier, target.key)),
        action,
    )


def _touches(target: Write, touch_updated_at: bool) -> bool:
    return touch_updated_at and "updated_at" not in written_columns(target)


def _upsert_parts(target: Write, touch_updated_at: bool) -> tuple[sql.Composed, sql.Composed, sql.Composable]:
    """(column list, values list, conflict action) shared by both upsert forms."""
    merges = dict(target.merge)
    greatest = next((c for c, how in target.merge if how is Merge.GREATEST), "")
    sets: list[sql.Composable] = [
        sql.SQL("{} = ").format(sql.Identifier(c))
        + sql.SQL(_MERGES[merges.get(c, Merge.REPLACE)]).format(sql.Identifier(c), sql.Identifier(greatest))
        for c in written_columns(target)
        if c not in target.key
    ]
    touch = _touches(target, touch_updated_at)
    if touch:
        sets.append(sql.SQL("updated_at = now()"))
    action: sql.Composable = sql.SQL("do update set {}").format(sql.SQL(", ").join(sets))
    if target.mode is WriteMode.INSERT or not sets:
        action = sql.SQL("do nothing")
    columns: list[sql.Composable] = [sql.Identifier(c) for c in written_columns(target)]
    values: list[sql.Composable] = [sql.Placeholder()] * len(columns)
    if touch:
        columns.append(sql.Identifier("updated_at"))
        values.append(sql.SQL("now()"))
    return sql.SQL(", ").join(columns), sql.SQL(", ").join(values), action
