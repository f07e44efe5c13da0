"""`entities:`: which entities a run selects, and the columns the selection gives them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from runner.spec.filters import Filter, Join, OrderTerm
from runner.spec.writes import QualifiedName


class SelectionType(StrEnum):
    DEFAULT = "default"  # syncrun's generic due-ness query over the status table
    FUNCTION = "function"  # a named Postgres function, e.g. get_apps_for_sync(p_source, p_limit)
    SQL = "sql"  # a query with %(limit)s and %(after_key)s named parameters
    LIST = "list"  # list-shaped: pages through a catalogue, no entity selection


@dataclass(frozen=True, slots=True)
class EntityColumn:
    name: str
    type: str  # "int" | "bigint" | "text" | "float" | "bool" | "json" | "timestamptz" | "date"


@dataclass(frozen=True, slots=True, kw_only=True)
class Entities:
    type: SelectionType
    key: str  # the entity key column, e.g. "appid"
    key_type: str  # "int" | "bigint" | "text"
    columns: tuple[EntityColumn, ...]  # what the selection returns; key first
    limit: int  # entities per run (overridden by --limit / --batch-size / BATCH_SIZE)
    function: QualifiedName | None = None
    args: tuple[tuple[str, FunctionArg], ...] = ()
    sql: str | None = None
    refresh_interval: float = 86400.0  # default selection: how old a stamp may get (seconds)
    interval_column: str | None = "sync_interval_hours"  # per-entity override, in hours, when present
    priority_column: str | None = "priority_score"
    syncable_column: str | None = "is_syncable"
    # the cut-off: an entity with this many failed runs since its last success is not selected (None: never)
    max_consecutive_errors: int | None = None
    join: tuple[Join, ...] = ()  # default selection: tables left-joined on the key (runner/filtersql.py)
    where: tuple[Filter, ...] = ()  # default selection: all must hold for an entity to be due
    order: tuple[OrderTerm, ...] = ()  # default selection: sort terms before the built-in ones

    @property
    def column_names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.columns)


@dataclass(frozen=True, slots=True)
class FunctionArg:
    """A function argument: a literal, or one of the engine's named parameters (`limit`, `after_key`,
    `source`)."""

    value: str | int | float | bool | None = None
    parameter: str | None = None
