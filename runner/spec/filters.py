"""The declarative join, filters and order of the default selection (compiled by runner/filtersql.py)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from runner.spec.writes import QualifiedName


@dataclass(frozen=True, slots=True)
class ColumnRef:
    """`release_date` (a status-table column) or `apps.release_date` (a joined table's column)."""

    table: str | None  # a join's alias; None: the status table
    column: str

    def __str__(self) -> str:
        return f"{self.table}.{self.column}" if self.table else self.column


class FilterOp(StrEnum):
    EQ = "="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    IN = "in"
    NOT_IN = "not_in"
    IS_NULL = "is_null"
    IS_NOT_NULL = "is_not_null"


@dataclass(frozen=True, slots=True)
class Clock:
    """`{now: true}` / `{now: "-1h"}`: the database's now() plus seconds; `{today: "+7d"}`: the UTC date
    plus whole days."""

    unit: str  # "now" | "today"
    offset: float = 0.0  # seconds for now, days for today


FilterValue = str | int | float | bool | Clock


@dataclass(frozen=True, slots=True)
class Condition:
    column: ColumnRef
    op: FilterOp
    value: FilterValue | tuple[FilterValue, ...] | None = None  # a tuple for in / not_in; None for is_null


@dataclass(frozen=True, slots=True)
class AnyOf:
    """`{any: [...]}`: at least one holds."""

    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class AllOf:
    """`{all: [...]}`: every one holds (the `where` list itself is one)."""

    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class NotOf:
    """`{not: ...}`: it does not hold (a null comparison counts as not holding)."""

    filter: Filter


Filter = Condition | AnyOf | AllOf | NotOf


class Direction(StrEnum):
    ASC = "asc"
    DESC = "desc"


class Nulls(StrEnum):
    FIRST = "first"
    LAST = "last"


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderTerm:
    """`{column: c, direction: desc, nulls: last}`, or `{first: <filter>}`: entities it holds for first."""

    column: ColumnRef | None = None
    direction: Direction = Direction.ASC
    nulls: Nulls = Nulls.LAST
    first: Filter | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Join:
    """`{table: apps}`: `left join apps on apps.<on> = <status>.<key>`; its columns are `<as>.<column>`."""

    table: QualifiedName
    as_: str  # YAML `as`; defaults to the table's name without its schema
    on: str  # the joined table's column equal to the entity key (default: the key's name)
