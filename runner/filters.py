"""Declarative `where`, `order` and `join` of the default selection: read, checked, compiled to SQL.

What the hand-written workers said in SQL, said in YAML, with no SQL text in it:

    entities:
      join: [{table: apps}]                       # left join apps on apps.appid = sync_status.appid
      where:                                      # every filter must hold
        - any:
            - {column: apps.release_date, op: is_null}
            - {column: apps.release_date, op: "<=", value: {today: "+7d"}}
            - {column: last_known_total_reviews, op: ">", value: 0}
      order:                                      # before the built-in order
        - first: {column: apps.is_released, op: "=", value: true}
        - {column: last_known_total_reviews, direction: desc, nulls: last}

A column is a status-table column (`release_date`) or a joined table's (`apps.release_date`). Values
are bound as parameters (never spliced into the text); `{now: true}`, `{now: "-1h"}` are the
database's now() plus an offset, `{today: "+7d"}` the UTC date plus whole days. SQL's null logic
holds: a comparison with a null column does not hold, so write `is_null` inside an `any` to keep
nulls. A join is a left join on the entity key: an entity without a joined row stays selectable,
its joined columns are null. The shape is inspired by Airbyte's and dlt's filter objects
(column / operator / value, combined with and/or) rather than a SQL string.

`read` builds the spec from the schema-checked YAML (runner.config calls it); `check` compares the
columns, joins and values with the catalog at run start (SelectionError: exit 2); runner/filtersql.py
compiles them into the selection's query. Text orders ascending only (there is no negated text).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime
from typing import Any

import psycopg

from runner import spec
from runner.catalog import table_columns, unique_keys
from runner.errors import SelectionError
from runner.expressions import JSON
from runner.sourcefile import show

Types = tuple[tuple[spec.ColumnRef, str], ...]  # column -> format_type text, hashable for lru_cache
Problem = Callable[[tuple[str | int, ...], str], None]  # (path under entities, message)
_OFFSET = re.compile(r"^([+-]?)(.+)$")
_NUMBER = ("smallint", "integer", "bigint", "numeric", "real", "double precision")
_TEXT = ("text", "character varying", "character")
_TIMESTAMP = ("timestamp with time zone", "timestamp without time zone")


# --- reading (schema-checked YAML -> spec) ------------------------------------------------------------
def read(raw: Mapping[str, JSON], key: str, problem: Problem, duration: Callable[[JSON], float]) -> dict[str, Any]:
    """The `join`, `where` and `order` fields of spec.Entities from the entities block. `duration`
    parses an offset's magnitude (config.parse_duration, raising ValueError)."""
    joins = tuple(
        spec.Join(table=_qualified(j["table"]), as_=j.get("as", j["table"].rpartition(".")[2]), on=j.get("on", key))
        for j in raw.get("join", [])
    )
    aliases = [j.as_ for j in joins]
    for index, alias in enumerate(aliases):
        if aliases.index(alias) != index:
            problem(("join", index, "as"), f"'{alias}' names two joins: give one another `as`")
    reader = _Reader(frozenset(aliases), problem, duration)
    fields: dict[str, Any] = {}
    if joins:
        fields["join"] = joins
    if "where" in raw:
        fields["where"] = tuple(reader.filter(("where", i), f) for i, f in enumerate(raw["where"]))
    if "order" in raw:
        fields["order"] = tuple(reader.order(("order", i), t) for i, t in enumerate(raw["order"]))
    return fields


class _Reader:
    def __init__(self, aliases: frozenset[str], problem: Problem, duration: Callable[[JSON], float]):
        self.aliases, self.problem, self.duration = aliases, problem, duration

    def filter(self, path: tuple[str | int, ...], raw: Mapping[str, JSON]) -> spec.Filter:
        if "any" in raw:
            return spec.AnyOf(tuple(self.filter((*path, "any", i), f) for i, f in enumerate(raw["any"])))
        if "all" in raw:
            return spec.AllOf(tuple(self.filter((*path, "all", i), f) for i, f in enumerate(raw["all"])))
        if "not" in raw:
            return spec.NotOf(self.filter((*path, "not"), raw["not"]))
        op = spec.FilterOp(raw["op"])
        column = self.column((*path, "column"), raw["column"])
        if op in (spec.FilterOp.IS_NULL, spec.FilterOp.IS_NOT_NULL):
            if "value" in raw:
                self.problem((*path, "value"), f"op {op.value} takes no value: remove it")
            return spec.Condition(column, op)
        if "value" not in raw:
            self.problem((*path, "value"), f"op {op.value} needs a value")
            return spec.Condition(column, op)
        value = raw["value"]
        if op in (spec.FilterOp.IN, spec.FilterOp.NOT_IN):
            if not isinstance(value, list):
                self.problem((*path, "value"), f"op {op.value} needs a list of values, e.g. [game, dlc]")
                return spec.Condition(column, op, ())
            return spec.Condition(column, op, tuple(self.value((*path, "value", i), v) for i, v in enumerate(value)))
        if isinstance(value, list):
            self.problem((*path, "value"), f"op {op.value} compares with one value; a list needs op: in")
            return spec.Condition(column, op)
        return spec.Condition(column, op, self.value((*path, "value"), value))

    def order(self, path: tuple[str | int, ...], raw: Mapping[str, JSON]) -> spec.OrderTerm:
        if "first" in raw:
            return spec.OrderTerm(first=self.filter((*path, "first"), raw["first"]))
        return spec.OrderTerm(
            column=self.column((*path, "column"), raw["column"]),
            direction=spec.Direction(raw.get("direction", "asc")),
            nulls=spec.Nulls(raw.get("nulls", "last")),
        )

    def column(self, path: tuple[str | int, ...], text: str) -> spec.ColumnRef:
        table, _, column = text.rpartition(".")
        if table and table not in self.aliases:
            known = ", ".join(sorted(self.aliases)) or "none"
            self.problem(path, f"'{table}' is not a joined table (joins: {known}): add join: [{{table: {table}}}]")
        return spec.ColumnRef(table or None, column)

    def value(self, path: tuple[str | int, ...], raw: JSON) -> spec.FilterValue:
        if not isinstance(raw, dict):
            return raw  # type: ignore[no-any-return]  # the schema allows only str, number and bool here
        unit, offset = next(iter(raw.items()))
        if offset is True:
            return spec.Clock(unit)
        match = _OFFSET.match(offset) if isinstance(offset, str) else None
        try:
            if match is None:
                raise ValueError(f"{offset!r} is not an offset")
            seconds = self.duration(match[2]) * (-1 if match[1] == "-" else 1)
        except ValueError as error:
            self.problem((*path, unit), f"{error}: write true, or an offset like +7d or -1h")
            return spec.Clock(unit)
        if unit == "today":
            if seconds % 86400:
                self.problem((*path, unit), f"today moves by whole days (+7d), not {offset}")
            return spec.Clock(unit, seconds // 86400)
        return spec.Clock(unit, seconds)


def _qualified(text: str) -> spec.QualifiedName:
    schema_name, _, name = text.rpartition(".")
    return spec.QualifiedName(schema_name or None, name)


def walk(entities: spec.Entities) -> Iterator[spec.Condition]:
    """Every condition of the where list and the order terms, in order."""

    def conditions(node: spec.Filter) -> Iterator[spec.Condition]:
        if isinstance(node, spec.Condition):
            yield node
        elif isinstance(node, spec.NotOf):
            yield from conditions(node.filter)
        else:
            for child in node.filters:
                yield from conditions(child)

    for node in entities.where:
        yield from conditions(node)
    for term in entities.order:
        if term.first is not None:
            yield from conditions(term.first)


# --- checking against the catalog (run start) ---------------------------------------------------------
def used(entities: spec.Entities) -> bool:
    return bool(entities.join or entities.where or entities.order)


def types(conn: psycopg.Connection, source: spec.Source) -> Types:
    """The type of every column the filters and order terms name (absent ones left out)."""
    entities = source.entities
    if not used(entities) or source.status is None:
        return ()
    tables: dict[str | None, spec.QualifiedName] = {None: source.status.table}
    tables.update((j.as_, j.table) for j in entities.join)
    with conn.transaction():
        catalog = {alias: table_columns(conn, table) or {} for alias, table in tables.items()}
    refs = [c.column for c in walk(entities)] + [t.column for t in entities.order if t.column is not None]
    return tuple(
        (ref, catalog[ref.table][ref.column])
        for ref in dict.fromkeys(refs)
        if ref.table in catalog and ref.column in catalog[ref.table]
    )


def check(conn: psycopg.Connection, source: spec.Source) -> None:
    """Joins, columns, values and order terms against the catalog; SelectionError naming each problem."""
    entities = source.entities
    if not used(entities) or source.status is None:
        return
    problems: list[str] = []
    status = source.status.table
    with conn.transaction():
        tables: dict[str | None, dict[str, str]] = {None: table_columns(conn, status) or {}}
        for index, join in enumerate(entities.join):
            where = f"entities.join[{index}]"
            columns = table_columns(conn, join.table)
            if columns is None:
                problems.append(f"{where}: {join.table} is missing")
                continue
            tables[join.as_] = columns
            if join.on not in columns:
                problems.append(f"{where}: {join.table} has no column {join.on} (on)")
            elif frozenset([join.on]) not in unique_keys(conn, join.table):
                problems.append(
                    f"{where}: {join.table}.{join.on} is not unique (no primary key or unique index on it):"
                    " the join would repeat entities"
                )
    found = dict(types(conn, source))
    names: dict[str | None, str] = {None: str(status)}
    names.update((j.as_, str(j.table)) for j in entities.join)
    for ref in dict.fromkeys([*(c.column for c in walk(entities)), *_order_columns(entities)]):
        if ref.table in tables and ref not in found:
            problems.append(f"entities: {ref}: {names[ref.table]} has no column {ref.column}")
    for condition in walk(entities):
        if condition.column in found:
            problems += _value_problems(condition, found[condition.column])
    for term in entities.order:
        if term.column is not None and term.column in found:
            problems += _order_problems(term, found[term.column])
    if problems:
        detail = "\n  ".join(dict.fromkeys(problems))
        raise SelectionError(f"{source.name}: the selection's join/where/order do not fit the database:\n  {detail}")


def _order_columns(entities: spec.Entities) -> list[spec.ColumnRef]:
    return [t.column for t in entities.order if t.column is not None]


def kind(type_name: str) -> str:
    """number | bool | date | timestamp | text | other, from format_type text."""
    base = type_name.partition("(")[0]
    if base in _NUMBER:
        return "number"
    if base in _TEXT:
        return "text"
    if base in _TIMESTAMP:
        return "timestamp"
    return {"boolean": "bool", "date": "date"}.get(base, "other")


def _value_problems(condition: spec.Condition, type_name: str) -> list[str]:
    if condition.value is None:
        return []
    values = condition.value if isinstance(condition.value, tuple) else (condition.value,)
    problems = []
    for value in values:
        if (reason := _unfit(value, kind(type_name))) is not None:
            shown = f"{{{value.unit}: ...}}" if isinstance(value, spec.Clock) else show(value)
            problems.append(f"entities: {condition.column} ({type_name}) {condition.op.value} {shown}: {reason}")
    return problems


def _unfit(value: spec.FilterValue, column_kind: str) -> str | None:
    """Why `value` cannot be compared with a column of this kind; None when it can."""
    if isinstance(value, spec.Clock):
        return None if column_kind in ("date", "timestamp") else "now/today compare with a date or timestamp column"
    if column_kind == "number":
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "the column holds numbers"
    if column_kind == "bool":
        return None if isinstance(value, bool) else "the column holds true/false"
    if column_kind == "text":
        return None if isinstance(value, str) else "the column holds text: quote the value"
    if column_kind in ("date", "timestamp"):
        if not isinstance(value, str):
            return "write a date as 'YYYY-MM-DD' text, or {now: ...} / {today: ...}"
        try:
            (date if column_kind == "date" else datetime).fromisoformat(value)
        except ValueError:
            return f"{value!r} is not an ISO {column_kind}"
    return None  # enums, domains: PostgreSQL reads the text (the EXPLAIN at run start tells)


def _order_problems(term: spec.OrderTerm, type_name: str) -> list[str]:
    column_kind = kind(type_name)
    if column_kind == "other":
        return [f"entities: order by {term.column}: its type {type_name} cannot be ordered by the selection"]
    if column_kind == "text" and term.direction is spec.Direction.DESC:
        return [f"entities: order by {term.column}: a text column orders ascending only"]
    return []
