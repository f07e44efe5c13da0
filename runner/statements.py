"""The SQL of a write target, built once per run by its plan (runner.writeplan), and how a statement
runs inside the writer's transaction: a data error becomes `Failed`, naming the table.

The upsert comes in three forms, one per way the rows travel (runner.targets says which when):
`insert ... values` (one row per statement, pipelined), `insert ... select ... from unnest(...)` (one
binary array parameter per column) and `insert ... select ... from <temp table>` (after a COPY). All
three set only the mapped columns on conflict, with each column's `merge` rule evaluated by the
statement itself against the locked row, never read-then-write. Also: the delete of a set of scopes
(replace_by, outcome delete), a lookup's select, a function writer's call, and `counted`, the
upsert reporting how many rows it inserted and updated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from runner.database import identifier, regclass_text
from runner.spec import Lookup, Merge, QualifiedName, Write, WriteMode
from runner.values import array_cast

MAX_MESSAGE = 1000  # characters of an error message stored in the database
# P0001 is a function's or trigger's `raise exception`: about the data it was given, like a check
DATA_ERRORS = (pg_errors.DataError, pg_errors.IntegrityError, pg_errors.RaiseException)


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


def run(cursor: psycopg.Cursor[Any], table: str, statement: sql.SQL | sql.Composed, params: list[Any]) -> None:
    """`executemany` (pipelined), or `execute` for one set of parameters (one round trip where a
    pipeline takes three: the writer's array statements have one); a data error becomes `Failed`
    naming `table`."""
    if not params:
        return
    try:
        if len(params) == 1:
            cursor.execute(statement, params[0])
        else:
            cursor.executemany(statement, params)
    except DATA_ERRORS as error:
        raise Failed(describe(table, error)) from error


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


def counted(statement: sql.Composed) -> sql.Composed:
    """The upsert reporting (inserted, updated): a row version the statement inserted has no xmax; one
    `on conflict do update` rewrote carries the updating transaction's lock in it. `do nothing`
    returns only the rows it inserted. One result row per statement, whatever the rows written."""
    return sql.SQL(
        "with w as ({} returning (xmax = 0) as created)"
        " select count(*) filter (where created), count(*) filter (where not created) from w"
    ).format(statement)


def unnest_sql(names: tuple[str, ...], casts: tuple[str, ...]) -> sql.Composed:
    """`unnest(%s::int[], %s::text[]) as v(a, b)`: rows from one array parameter per column."""
    parameters = sql.SQL(", ").join(sql.SQL("%b::") + sql.SQL(cast) for cast in casts)
    return sql.SQL("unnest({}) as v({})").format(parameters, sql.SQL(", ").join(map(sql.Identifier, names)))


class Scoped(NamedTuple):
    """Rows of a table picked by the values of some columns: a replace_by scope, or a deleted entity's
    rows (runner.deletes)."""

    table: QualifiedName
    columns: tuple[str, ...]


def written_columns(target: Write) -> tuple[str, ...]:
    """The mapped columns, then the lookup columns: what each row carries and the statement writes."""
    return (*target.column_names, *(lookup.column for lookup in target.lookups))


def _temp(target: Write, types: Mapping[str, str], binary: bool) -> sql.Identifier:
    """The temp table's name for a target: its table, written columns, their types and the COPY format,
    hashed (names are <= 63 bytes). The types are in the name because the table outlives the run behind
    a pooler in transaction mode: a later run after an `alter table ... type` must not COPY into the
    old shape (binary bytes read as the old type stored bigint 2147483647 as 0: review15 F2)."""
    columns = written_columns(target)
    shape = repr((str(target.table), columns, tuple(types.get(c) for c in columns), binary)).encode()
    return sql.Identifier("_syncrun_rows_" + hashlib.blake2b(shape, digest_size=8).hexdigest())


def temp_sql(target: Write, types: Mapping[str, str], binary: bool = False) -> sql.Composed:
    """create temp table if not exists ... on commit delete rows; then empty it, for a caller whose
    transaction spans batches (no commit between them: a savepoint each). Two statements, one round
    trip: no parameters, so psycopg sends them as one query.

    For text COPY the table is shaped `as select` from the target as it is now: text is parsed into the
    column's current type, so a column altered since the run started (text to integer) still takes it.
    For binary COPY it is typed with `types` (the write plan's: the catalog as the run read it), which
    is what the bytes were encoded for; the `insert ... select` converts into a column altered since, as
    PostgreSQL converts any assignment (an alter with no such cast fails the batch, never misreads it)."""
    columns = written_columns(target)
    name = _temp(target, types, binary)
    if not binary or not all(types.get(c) for c in columns):
        return sql.SQL(
            "create temp table if not exists {0} on commit delete rows as select {1} from {2} with no data;"
            " delete from {0}"
        ).format(name, sql.SQL(", ").join(map(sql.Identifier, columns)), identifier(target.table))
    # format_type text is PostgreSQL's own rendering of a type name, quoted where it must be
    shape = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(types[c])) for c in columns)
    return sql.SQL("create temp table if not exists {0} ({1}) on commit delete rows; delete from {0}").format(
        name, shape
    )


def types_sql(target: Write) -> sql.Composed:
    """The written columns' types as the table has them now: (name, format_type text) rows. The table
    and names go in as literals, so the query can ride in one simple query after the temp table's
    statements (`checked_temp_sql`)."""
    return sql.SQL(
        "select attname, format_type(atttypid, atttypmod) from pg_attribute"
        " where attrelid = to_regclass({}) and attname = any({}::text[]) and attnum > 0 and not attisdropped"
    ).format(sql.Literal(regclass_text(target.table)), sql.Literal(list(written_columns(target))))


def checked_temp_sql(target: Write, types: Mapping[str, str]) -> sql.Composed:
    """The binary COPY's temp table statements, then `types_sql`: three statements, one round trip."""
    return sql.SQL("{}; {}").format(temp_sql(target, types, binary=True), types_sql(target))


def copy_sql(target: Write, types: Mapping[str, str], binary: bool = False) -> sql.Composed:
    """COPY into the temp table, as text or (`binary`) in PostgreSQL's binary format."""
    return sql.SQL("copy {} ({}) from stdin{}").format(
        _temp(target, types, binary),
        sql.SQL(", ").join(map(sql.Identifier, written_columns(target))),
        sql.SQL(" (format binary)" if binary else ""),
    )


# --- statements (built once per write target, by its plan) ---------------------------------------------
def delete_sql(by: Scoped) -> sql.Composed:
    """delete the rows of one scope: `where c1 = %s and c2 = %s` (the scope's columns)."""
    where = sql.SQL(" and ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in by.columns)
    return sql.SQL("delete from {} where {}").format(identifier(by.table), where)


def delete_many_sql(by: Scoped, casts: tuple[str, ...]) -> sql.Composed:
    """delete the rows of many scopes, bound as one array per column."""
    where = sql.SQL(" and ").join(sql.SQL("t.{0} = v.{0}").format(sql.Identifier(c)) for c in by.columns)
    return sql.SQL("delete from {} as t using {} where {}").format(
        identifier(by.table), unnest_sql(by.columns, casts), where
    )


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


def upsert_sql(target: Write, touch_updated_at: bool) -> sql.Composed:
    """insert ... values (...) on conflict (key) do update set <mapped columns only> (or do nothing)."""
    columns, values, action = _upsert_parts(target, touch_updated_at)
    return sql.SQL("insert into {} as t ({}) values ({}) on conflict ({}) {}").format(
        identifier(target.table), columns, values, sql.SQL(", ").join(map(sql.Identifier, target.key)), action
    )


def copy_upsert_sql(
    target: Write, types: Mapping[str, str], touch_updated_at: bool, binary: bool = False
) -> sql.Composed:
    """The same upsert, reading the rows COPY put into the temp table (the binary or the text one)."""
    names = written_columns(target)
    return _upsert_from(target, touch_updated_at, map(sql.Identifier, names), _temp(target, types, binary))


def unnest_upsert_sql(target: Write, touch_updated_at: bool, casts: tuple[str, ...]) -> sql.Composed:
    """The same upsert, reading the rows from one array parameter per written column (`casts`)."""
    names = written_columns(target)
    selected = (sql.SQL("v.{}").format(sql.Identifier(c)) for c in names)
    return _upsert_from(target, touch_updated_at, selected, unnest_sql(names, casts))


def _upsert_from(
    target: Write, touch_updated_at: bool, selected: Iterable[sql.Composable], rows: sql.Composable
) -> sql.Composed:
    """`insert ... select <selected> from <rows> on conflict ...`: the upsert fed by a set of rows."""
    columns, _, action = _upsert_parts(target, touch_updated_at)
    values = sql.SQL(", ").join([*selected, *([sql.SQL("now()")] if _touches(target, touch_updated_at) else [])])
    return sql.SQL("insert into {} as t ({}) select {} from {} on conflict ({}) {}").format(
        identifier(target.table), columns, values, rows, sql.SQL(", ").join(map(sql.Identifier, target.key)), action
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
