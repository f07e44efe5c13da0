"""One write target's rows into PostgreSQL, inside the writer's batch transaction (runner.writer): the
target's plan (runner.writeplan: types, converters, statements, compiled once per run) executed.

Per target, in this order:
- lookups: a lookup column arrives holding the dimension's natural key (mapping puts the lookup's
  evaluated `value` under the lookup's `column`); `select key, returning from <table> where key =
  any(...)` swaps it for the dimension's id. Dimension rows written by an earlier write of the batch
  are visible (same transaction, declared order). A value with no dimension row raises `Failed`
  naming the table, key and value; a null stays null.
- replace_by: the rows of each replaced scope are deleted first (one `delete ... using unnest(...)`
  for the batch's scopes), so links that disappeared from the API go. A scope is one successful
  entity's `replace_by` values, worked out by `WritePlan.scope` from the entity alone: the columns'
  mappings evaluated over `{"entity": ...}`. They must therefore be mapped from `entity.*` or
  literals (`parent_appid: entity.appid`, `source: "'storefront'"`); that is what lets an entity
  whose list came back empty still clear its stale links.
- table writes: one `insert ... on conflict (key) do update` sets only the mapped columns, so other
  sources' columns on the same row survive; `merge` rules are evaluated in that statement
  (`greatest`, `coalesce`), never read-then-write; `mode: insert` is `on conflict do nothing`. Rows
  are deduplicated on the key (last wins) because one statement cannot update a row twice. How the
  rows travel (numbers below):
  - from `COPY_FROM` rows (batch writes only): COPY into a temp table + one `insert ... select`. The
    temp table, one per target, is `create temp table if not exists ... on commit delete rows; delete
    from it` at the start of every use: no create + drop per batch, and still right behind a
    transaction-mode pooler (pgbouncer), where each transaction may land on another server session:
    wherever it lands, the statement creates the table or finds it there, empty. The COPY is binary
    when every written column is an integer, text, boolean or double column and the batch's values
    of the matching Python types (`WritePlan.binary`: what lands is what the text form gives); else text.
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

from typing import Any

import psycopg

from runner import writeplan
from runner.statements import DATA_ERRORS, Failed, Scoped, array_casts, arrays, counted, describe, run
from runner.values import show
from runner.writeplan import Resolve, WritePlan

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

Row = dict[str, Any]


def write(
    cursor: psycopg.Cursor[Any],
    plan: WritePlan,
    rows: list[Row],
    scopes: list[tuple[Any, ...]],
    *,
    bulk: bool,
    count: bool = False,
    typed: bool = False,
) -> tuple[int, int]:
    """Resolve lookups, delete the `scopes`' rows, then upsert `rows` (or call the function per row).
    With `count`, (rows inserted, rows updated) by the upsert (`counted`); else (0, 0). `typed`: every
    value is known to be of its column's own Python type (the writer found the rows need no
    conversion: int for integer columns, str for text, ...), so the COPY may go binary unchecked."""
    for resolve in plan.lookups:
        rows = _resolve(cursor, plan, resolve, rows)
    if plan.key:
        rows = _dedup(plan, rows)
    params = writeplan.params(rows, plan.columns)
    if plan.function is not None:
        run(cursor, plan.label, plan.function, params)
        return 0, 0
    delete_scopes(cursor, plan, plan.replaced, sorted(set(scopes), key=str))
    if not params:
        return 0, 0
    if bulk and len(params) >= COPY_FROM:
        return _copy(cursor, plan, params, count, typed)
    casts = array_casts(plan.table_types, plan.columns, params) if len(params) >= UNNEST_FROM else None
    bound: list[Any]
    if casts is None:
        statement, bound = plan.upsert, params
    else:
        statement, bound = plan.unnest_upsert(casts), [arrays(params)]
    if not count:
        run(cursor, plan.label, statement, bound)
        return 0, 0
    return _counts(cursor, plan.label, counted(statement), bound)


def _counts(cursor: psycopg.Cursor[Any], table: str, statement: Any, params: list[Any]) -> tuple[int, int]:
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


def delete_scopes(cursor: psycopg.Cursor[Any], plan: WritePlan, by: Scoped, scopes: list[tuple[Any, ...]]) -> None:
    """The scopes' rows: one statement from arrays, or one per scope if they cannot go as arrays."""
    if not scopes:
        return
    casts = array_casts(plan.types, by.columns, scopes) if len(scopes) > 1 else None
    if casts is None:
        run(cursor, str(by.table), plan.delete(by, None), scopes)
    else:
        run(cursor, str(by.table), plan.delete(by, casts), [arrays(scopes)])


def _resolve(cursor: psycopg.Cursor[Any], plan: WritePlan, resolve: Resolve, rows: list[Row]) -> list[Row]:
    """Rows with the lookup column's natural key replaced by the dimension row's `returning` value."""
    lookup = resolve.lookup
    wanted = sorted({row[lookup.column] for row in rows if row.get(lookup.column) is not None}, key=str)
    if not wanted:
        return rows
    try:
        found = dict(cursor.execute(resolve.query, (wanted,)).fetchall())
    except DATA_ERRORS as error:
        raise Failed(describe(str(lookup.table), error)) from error
    for value in wanted:
        if value not in found:
            where = f"{plan.target.table}.{lookup.column}"
            raise Failed(f"{where}: no {lookup.table} row with {lookup.key} = {show(value)}")
    return [{**row, lookup.column: found.get(row.get(lookup.column))} for row in rows]


def _dedup(plan: WritePlan, rows: list[Row]) -> list[Row]:
    """One row per conflict key, the last one winning, in key order (the same lock order everywhere).
    A `preferred_spelling` column keeps the preferred value among the key's rows instead (the rule
    the upsert applies against the stored row), so the result does not depend on the batch's order."""
    if len(plan.key) == 1 and not plan.spelled:  # by the values themselves: no 1-tuple per row
        (column,) = plan.key
        by = dict(zip(writeplan.column_values(rows, column), rows, strict=True))
        try:
            keys = sorted(by)  # the order of the 1-tuples below: a tuple compares by its element
        except TypeError:
            keys = sorted(by, key=lambda value: str((value,)))
        return [by[key] for key in keys]
    unique = dict(zip(writeplan.params(rows, plan.key), rows, strict=True))
    if plan.spelled and len(unique) < len(rows):
        for row in rows:
            kept = unique[tuple(row.get(k) for k in plan.key)]
            for column in plan.spelled:
                if spelling_rank(row.get(column)) < spelling_rank(kept.get(column)):
                    kept = unique[tuple(row.get(k) for k in plan.key)] = {**kept, column: row[column]}
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
    cursor: psycopg.Cursor[Any], plan: WritePlan, params: list[tuple[Any, ...]], count: bool, typed: bool = False
) -> tuple[int, int]:
    """COPY into a temp table shaped like the written columns, then one insert ... select ... on conflict.

    The temp table (one per target: `statements.temp_sql`) is created if missing, and emptied, inside
    every transaction: no create + drop per batch, and still right through a transaction-mode pooler
    that hands each transaction a different server session.
    """
    try:
        # rows that need no conversion hold exactly the Python types the binary forms are made from
        # (values.unchanged: int, str, bool, float), so `binary`'s scan of every value is not needed
        binary = ((typed and plan.binary_types is not None) or plan.binary(params)) and plan.binary_temp(cursor)
        if not binary:
            cursor.execute(plan.temp)
        with cursor.copy(plan.copy_binary if binary else plan.copy) as copy:
            if binary:
                copy.set_types(plan.copy_types)
            for row in params:
                copy.write_row(row)
        upsert = plan.copy_upsert_binary if binary else plan.copy_upsert
        if not count:
            cursor.execute(upsert)
            return 0, 0
        found = cursor.execute(counted(upsert)).fetchone()
    except DATA_ERRORS as error:
        raise Failed(describe(plan.label, error)) from error
    return (0, 0) if found is None else (int(found[0]), int(found[1]))
