"""A source's writes compiled once per run: the writer only executes what is here.

`values.fit` looked every column's type up in the catalog and its converter up in a cache, for every
value of every row, and the statements were looked up (or built) per batch by hashing the write's
spec: the path climbed back from writer to targets to values on every call. A `WritePlan` resolves,
once per target and catalog, the column types and converters, the written columns, the statements
(upsert in its three forms, the COPY temp table, the function call, each lookup's select, the delete
of replace_by and delete_by scopes) and the mappings of the scopes; `SourcePlan` holds the plans of a
source's writes, the status stamp's plan (runner.stamps), which write `primary` counts, and what the
per-source state needs. `compiled(source, catalog)` makes one on first use; later calls of the same
run get the same object.

`fit` only calls each value's converter; messages are values.fit's own: a row that does not fit is
converted again by it, which raises the Unfit naming the table, column and value.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any, NamedTuple

from jmespath.exceptions import JMESPathError
from psycopg import sql

from runner import statements
from runner.expressions import Expression
from runner.migrations import Catalog
from runner.spec import Backoff, Lookup, Merge, SelectionType, Source, Write
from runner.stamps import StampPlan
from runner.statements import Scoped
from runner.values import FAULTS, Unfit, column_types, converter, fit, unchanged

Row = dict[str, Any]
Columns = dict[str, list[Any]]  # rows' values by column, every row with the same columns


class Resolve(NamedTuple):
    """A lookup and its select, typed for the dimension's key column."""

    lookup: Lookup
    query: sql.Composed


class WritePlan:
    """`target` compiled under `catalog`: types, converters, columns, statements, scope mappings."""

    def __init__(self, target: Write, catalog: Catalog) -> None:
        self.target, self.catalog = target, catalog
        self.label = str(target.function or target.table)
        self.types = column_types(target, catalog)  # a lookup column typed as the dimension's key
        self.converters: dict[str, Callable[[Any], Any] | None] = {
            column: converter(name) for column, name in self.types.items()
        }
        self.columns = statements.written_columns(target)
        self.key = target.key
        self.spelled = tuple(c for c, how in target.merge if how is Merge.PREFERRED_SPELLING)
        self.lookups = tuple(
            Resolve(lookup, statements.lookup_sql(lookup, catalog.get(lookup.table, {}).get(lookup.key)))
            for lookup in target.lookups
        )
        self.table_types = catalog.get(target.table, {})
        self.function: sql.Composed | None = None
        if target.function is not None:
            self.function = statements.function_sql(target, tuple(self.types.get(c) for c in self.columns))
        touch = "updated_at" in self.table_types
        self.touch = touch
        self.upsert = statements.upsert_sql(target, touch)
        self.temp = statements.temp_sql(target, self.table_types)
        self.copy = statements.copy_sql(target, self.table_types)
        # COPY in binary when every written column is of a type whose binary form the rows' values
        # (checked per batch: `binary`) map onto exactly as their text form does; else as text
        self.binary_types = _binary_types(self.table_types, self.columns)  # the table's: lookups resolved
        self.copy_types = [_BINARY[name][0] for name in self.binary_types or ()]
        self.copy_binary = statements.copy_sql(target, self.table_types, binary=True)
        self.copy_upsert = statements.copy_upsert_sql(target, self.table_types, touch)
        self.temp_checked = statements.checked_temp_sql(target, self.table_types)
        self.written_types = {c: self.table_types.get(c) for c in statements.written_columns(target)}
        self.copy_upsert_binary = statements.copy_upsert_sql(target, self.table_types, touch, binary=True)
        self.replaced = Scoped(target.table, target.replace_by)
        self.deleting = target.deleting
        self.removed = Scoped(target.table, target.delete_by)
        mapped = {f.column: f.expression for f in target.columns}
        self._scope = tuple((column, mapped.get(column)) for column in target.replace_by)
        self._removal = tuple((column, mapped[column]) for column in target.delete_by) if self.deleting else ()
        self._unnest: dict[tuple[str, ...], sql.Composed] = {}
        self._deletes: dict[tuple[Scoped, tuple[str, ...] | None], sql.Composed] = {}

    def as_is(self, rows: list[Row], columns: Columns | None = None) -> bool:
        """Whether `fit` would return every row as it is: each column's values come through their
        converter unchanged (`values.unchanged`, the column at once). The writer asks it of a whole
        batch's rows; true for them is true for any part of them. `columns`: the rows' values by
        column, when every row has the same columns (the engine's, made once for weighing too)."""
        if columns is None:
            columns = {}
        return all(
            convert is None or unchanged(self.types[column], columns.get(column) or column_values(rows, column))
            for column, convert in self.converters.items()
        )

    def fit(self, rows: list[Row]) -> list[Row]:
        """Every row with its values converted for their columns; raises Unfit naming the first misfit.

        Column by column first (`values.unchanged`): a column whose values all come through as they
        are (integers in range, plain text: most of a bulk page) needs no call per value; only the
        others are converted row by row."""
        if not rows:
            return []
        converters = {
            column: convert
            for column, convert in self.converters.items()
            if convert is not None and not unchanged(self.types[column], column_values(rows, column))
        }
        if not converters:
            return list(rows)  # the rows are the mapping's own, made for this result and never changed
        fitted: list[Row] = []
        for row in rows:
            try:
                out = {}
                for column, value in row.items():
                    convert = None if value is None else converters.get(column)
                    out[column] = value if convert is None else convert(value)
            except (Unfit, *FAULTS):
                fit(self.label, self.types, row)  # raises the message naming table, column and value
                raise  # pragma: no cover - fit converts what failed here the same way
            fitted.append(out)
        return fitted

    def scope(self, entity: dict[str, Any]) -> tuple[Any, ...]:
        """The entity's `replace_by` values, from those columns' mappings over the entity alone.

        Raises Unfit when a mapping needs more than the entity (`record.*`, `item`, a lookup) or a value
        does not fit its column: without a value from the entity, an empty list could not clear links.
        """
        values: dict[str, Any] = {}
        for column, expression in self._scope:
            values[column] = _over(expression, entity)
            if values[column] is None:
                mapped = repr(expression.text) if expression else "a lookup"
                raise Unfit(
                    f"{self.target.table}.{column}: replace_by needs a value from the entity alone"
                    f" (map it from entity.* or a literal, not {mapped})"
                )
        return tuple(fit(str(self.target.table), self.types, values).values())

    def removal(self, entity: dict[str, Any]) -> tuple[Any, ...]:
        """The entity's delete_by values, typed for their columns (Unfit if they do not fit)."""
        values = {column: expression.search({"entity": entity}) for column, expression in self._removal}
        return tuple(fit(str(self.target.table), self.types, values).values())

    def binary_temp(self, cursor: Any) -> bool:
        """Make the binary COPY's temp table ready and say whether the written columns still have the
        types this plan was made for, in one round trip (per batch of 100 rows or more): the bytes are
        encoded for those types, and a column altered since the run began (text to integer, say) must
        take the text COPY, whose temp table is shaped like the table as it is now (review2 N1); the
        binary one, empty, is then simply not used."""
        cursor.execute(self.temp_checked)
        while cursor.nextset():  # the results of create and delete, then the types
            pass
        return dict(cursor.fetchall()) == self.written_types

    def binary(self, params: list[tuple[Any, ...]]) -> bool:
        """Whether `params` (rows of values for the written columns) can go by binary COPY: each
        column's values all of the one Python type its binary form is made from (or null)."""
        if self.binary_types is None:
            return False
        for index, name in enumerate(self.binary_types):
            kinds = set(map(type, map(itemgetter(index), params)))
            kinds.discard(_NONE)
            if not kinds <= _BINARY[name][1]:
                return False
        return True

    def unnest_upsert(self, casts: tuple[str, ...]) -> sql.Composed:
        """The upsert from one array per column of types `casts` (those depend on the batch's values)."""
        found = self._unnest.get(casts)
        if found is None:
            found = self._unnest[casts] = statements.unnest_upsert_sql(self.target, self.touch, casts)
        return found

    def delete(self, by: Scoped, casts: tuple[str, ...] | None) -> sql.Composed:
        """The delete of `by`'s scopes: one per scope (`casts` None), or many from one array per column."""
        found = self._deletes.get((by, casts))
        if found is None:
            made = statements.delete_sql(by) if casts is None else statements.delete_many_sql(by, casts)
            found = self._deletes[by, casts] = made
        return found


# Column types (format_type text, without a size) whose binary COPY form psycopg makes from these
# Python types byte for byte what the text form gives once PostgreSQL parses it: integers, text in
# the database's encoding (values.fit has refused NULs and lone surrogates), booleans, doubles
# (repr round-trips; NaN and infinity refused by fit). Anything else goes as text.
_BINARY: dict[str, tuple[str, frozenset[type]]] = {
    "smallint": ("int2", frozenset({int})),
    "integer": ("int4", frozenset({int})),
    "bigint": ("int8", frozenset({int})),
    "text": ("text", frozenset({str})),
    "character varying": ("varchar", frozenset({str})),
    "boolean": ("bool", frozenset({bool})),
    "double precision": ("float8", frozenset({float})),
}
_NONE = type(None)


def _binary_types(types: dict[str, str], columns: tuple[str, ...]) -> tuple[str, ...] | None:
    """The written columns' types by their names in `_BINARY`, or None when one is not there."""
    found = []
    for column in columns:
        name = types.get(column, "").partition("(")[0]
        if name not in _BINARY:
            return None
        found.append(name)
    return tuple(found)


def _over(expression: Expression | None, entity: dict[str, Any]) -> Any:
    if expression is None:
        return None
    try:
        return expression.search({"entity": entity})
    except JMESPathError:
        return None


class SourcePlan:
    """A source's writes compiled under `catalog`: what `writer.write` executes, batch after batch."""

    def __init__(self, source: Source, catalog: Catalog) -> None:
        self.source, self.catalog = source, catalog
        self.name = source.name
        self.writes = tuple(WritePlan(target, catalog) for target in source.writes)
        self.primary = primary(source)
        self.stamp = None if source.status is None else StampPlan(source.status, catalog, source.name)
        self.listing = source.entities.type is SelectionType.LIST  # a catalogue page is no entity: no state
        self.backoff: Backoff = source.backoff
        self.replacing = tuple(index for index, plan in enumerate(self.writes) if plan.target.replace_by)
        self.deleting = tuple(index for index, plan in enumerate(self.writes) if plan.deleting)


def primary(source: Source) -> int | None:
    """The index of the write whose rows items_created / items_updated count: the one marked
    `primary: true`, else the first `table:` write; None when every write calls a function."""
    marked = [index for index, target in enumerate(source.writes) if target.primary]
    tables = [index for index, target in enumerate(source.writes) if target.function is None]
    found = marked or tables
    return found[0] if found else None


def column_values(rows: list[Row], name: str) -> list[Any]:
    """The values of one column, row by row; a row without it has null there (as row.get gives)."""
    try:
        return list(map(itemgetter(name), rows))
    except KeyError:  # a row without the column: null, as row.get gives
        return [row.get(name) for row in rows]


_sources: dict[tuple[int, int], SourcePlan] = {}


def compiled(source: Source, catalog: Catalog) -> SourcePlan:
    """The plan of `source` under `catalog`, made on the run's first batch. Entries keep their objects
    alive, so an id is never reused for another source or catalog while cached; a run has a handful."""
    key = (id(source), id(catalog))
    found = _sources.get(key)
    if found is None or found.source is not source or found.catalog is not catalog:
        if len(_sources) > 64:  # tests make many sources and catalogs: keep the cache bounded
            _sources.clear()
        found = _sources[key] = SourcePlan(source, catalog)
    return found


def params(rows: list[Row], columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """Rows of values for `columns`, in order; a column a row lacks is null."""
    if not columns:
        return [() for _ in rows]
    get = itemgetter(*columns)
    try:
        values = [get(row) for row in rows]
    except KeyError:  # a row without some column: null, as row.get gives
        return [tuple(row.get(c) for c in columns) for row in rows]
    return values if len(columns) > 1 else [(value,) for value in values]
