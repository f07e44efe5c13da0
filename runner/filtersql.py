"""The declared `join`, `where` and `order` of the default selection (runner/filters.py) as SQL.

`joins_sql`, `where_sql`, `order_sql` and `params` are what runner.selection puts into its query.
Values are bound as parameters (never spliced into the text). Every order term becomes ascending,
never-null expressions (a null flag, then the value: descending numbers, dates and timestamps are
negated as numbers), so the selection's single row comparison stays its keyset cursor. Text orders
ascending only (check refuses desc).
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from runner import spec
from runner.database import identifier
from runner.filters import Types, kind

STATUS_ALIAS = "s"  # runner.selection's alias of the status table


def joins_sql(entities: spec.Entities) -> sql.Composable:
    """` left join apps j0 on j0.appid = s.appid ...` (empty without joins)."""
    return sql.SQL("").join(
        sql.SQL(" left join {} {} on {}.{} = {}.{}").format(
            identifier(j.table),
            sql.Identifier(f"j{i}"),
            sql.Identifier(f"j{i}"),
            sql.Identifier(j.on),
            sql.Identifier(STATUS_ALIAS),
            sql.Identifier(entities.key),
        )
        for i, j in enumerate(entities.join)
    )


def where_sql(entities: spec.Entities) -> list[sql.Composable]:
    return _Compiler(entities).where()


def order_sql(entities: spec.Entities, column_types: Types) -> list[sql.Composable]:
    """Each term as ascending, never-null expressions, to go before the built-in order."""
    compiler = _Compiler(entities)
    compiler.where()  # numbers the where list's placeholders first, as `params` does
    return compiler.order(dict(column_types))


def params(entities: spec.Entities) -> dict[str, Any]:
    """The values the compiled filters bind, by placeholder name."""
    compiler = _Compiler(entities)
    compiler.where()
    compiler.order({})
    return compiler.params


_OPERATORS = {
    spec.FilterOp.EQ: "=",
    spec.FilterOp.NE: "<>",
    spec.FilterOp.LT: "<",
    spec.FilterOp.LE: "<=",
    spec.FilterOp.GT: ">",
    spec.FilterOp.GE: ">=",
}


class _Compiler:
    """Filters to SQL over the selection's aliases, numbering the placeholders f0, f1, ... in walk order."""

    def __init__(self, entities: spec.Entities):
        self.entities = entities
        self.aliases = {j.as_: f"j{i}" for i, j in enumerate(entities.join)}
        self.params: dict[str, Any] = {}

    def where(self) -> list[sql.Composable]:
        return [self.filter(node) for node in self.entities.where]

    def order(self, column_types: dict[spec.ColumnRef, str]) -> list[sql.Composable]:
        terms: list[sql.Composable] = []
        for term in self.entities.order:
            if term.first is not None:  # false (holds) sorts before true
                terms.append(sql.SQL("(not coalesce({}, false))").format(self.filter(term.first)))
                continue
            assert term.column is not None
            column = self.column(term.column)
            flag = "is not null" if term.nulls is spec.Nulls.FIRST else "is null"
            terms.append(sql.SQL("({} {})").format(column, sql.SQL(flag)))
            terms.append(_value(column, kind(column_types.get(term.column, "text")), term.direction))
        return terms

    def filter(self, node: spec.Filter) -> sql.Composable:
        if isinstance(node, spec.AnyOf | spec.AllOf):
            joiner = " or " if isinstance(node, spec.AnyOf) else " and "
            parts = [self.filter(child) for child in node.filters]
            return sql.SQL("({})").format(sql.SQL(joiner).join(parts)) if parts else sql.SQL("true")
        if isinstance(node, spec.NotOf):
            return sql.SQL("(not coalesce({}, false))").format(self.filter(node.filter))
        column = self.column(node.column)
        if node.op is spec.FilterOp.IS_NULL:
            return sql.SQL("({} is null)").format(column)
        if node.op is spec.FilterOp.IS_NOT_NULL:
            return sql.SQL("({} is not null)").format(column)
        if node.op in (spec.FilterOp.IN, spec.FilterOp.NOT_IN):
            values = node.value if isinstance(node.value, tuple) else ()
            if not values:
                return sql.SQL("false" if node.op is spec.FilterOp.IN else "true")
            listed = sql.SQL(", ").join(self.bind(v) for v in values)
            negation = "not " if node.op is spec.FilterOp.NOT_IN else ""
            return sql.SQL("({} {}in ({}))").format(column, sql.SQL(negation), listed)
        assert node.value is not None
        assert not isinstance(node.value, tuple)
        return sql.SQL("({} {} {})").format(column, sql.SQL(_OPERATORS[node.op]), self.bind(node.value))

    def column(self, ref: spec.ColumnRef) -> sql.Composable:
        alias = STATUS_ALIAS if ref.table is None else self.aliases.get(ref.table, ref.table)
        return sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(ref.column))

    def bind(self, value: spec.FilterValue) -> sql.Composable:
        name = f"f{len(self.params)}"
        if isinstance(value, spec.Clock):
            self.params[name] = value.offset if value.unit == "now" else int(value.offset)
            if value.unit == "now":
                return sql.SQL("(now() + {}::float8 * interval '1 second')").format(sql.Placeholder(name))
            return sql.SQL("((now() at time zone 'utc')::date + {}::int)").format(sql.Placeholder(name))
        self.params[name] = value
        return sql.Placeholder(name)


def _value(column: sql.Composable, column_kind: str, direction: spec.Direction) -> sql.Composable:
    """The column as a never-null value that sorts ascending in `direction`'s order."""
    desc = direction is spec.Direction.DESC
    if column_kind == "text":  # ascending only (check refuses desc)
        return sql.SQL("coalesce({}, '')").format(column)
    if column_kind == "bool":
        as_number = sql.SQL("({}::int)").format(column)
    elif column_kind == "date":
        as_number = sql.SQL("({} - date '1970-01-01')").format(column)
    elif column_kind == "timestamp":
        as_number = sql.SQL("extract(epoch from {})").format(column)
    else:
        as_number = sql.SQL("({}::numeric)").format(column)
    return sql.SQL("coalesce({}{}, 0)").format(sql.SQL("-" if desc else ""), as_number)
