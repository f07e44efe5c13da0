"""`writes:` and `status:`: the rows a reply becomes, where they go, and the entity's stamp."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from runner.expressions import Expression


@dataclass(frozen=True, slots=True)
class QualifiedName:
    schema: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass(frozen=True, slots=True)
class Field:
    column: str
    expression: Expression


class Merge(StrEnum):
    REPLACE = "replace"  # excluded.col (the default)
    GREATEST = "greatest"  # greatest(existing, new): never lowered
    KEEP_EXISTING_IF_NULL = "keep_existing_if_null"  # coalesce(new, existing)
    # the new value only when the write's `greatest` column took its new value (ccu_source follows ccu_peak)
    WITH_GREATEST = "with_greatest"
    # one spelling per key whatever the arrival order: initcap(v) = v first, then shortest, then code points
    PREFERRED_SPELLING = "preferred_spelling"


class OnDelete(StrEnum):
    """What an `outcome: delete` does to a write's rows for the entity."""

    DELETE = "delete"  # the default: the entity's rows go with it
    KEEP = "keep"  # history (daily metrics) outlives the entity


class WriteMode(StrEnum):
    UPSERT = "upsert"  # insert ... on conflict (key) do update set <mapped columns>
    INSERT = "insert"  # append only: on conflict (key) do nothing


@dataclass(frozen=True, slots=True, kw_only=True)
class Lookup:
    """A column filled from a dimension row looked up (or created earlier in the same transaction by
    a preceding write) by a natural key: `developer_id` = developers.id where normalized_name = value."""

    column: str
    table: QualifiedName
    key: str  # the dimension's natural-key column
    returning: str  # the dimension column to copy into `column`
    value: Expression  # evaluated over the row's context, compared with `key`


@dataclass(frozen=True, slots=True, kw_only=True)
class Write:
    table: QualifiedName
    key: tuple[str, ...]
    columns: tuple[Field, ...]
    mode: WriteMode = WriteMode.UPSERT
    rows: Expression | None = None  # one row per item of this list (the item is `item` in the context)
    merge: tuple[tuple[str, Merge], ...] = ()
    when: Expression | None = None  # write only records for which this is truthy
    replace_by: tuple[str, ...] = ()  # delete this entity's rows matching these columns first (stale links go)
    lookups: tuple[Lookup, ...] = ()
    function: QualifiedName | None = None  # an RPC target: select fn(column => value, ...) per row
    on_delete: OnDelete = OnDelete.DELETE
    # `outcome: delete` removes the rows where these columns equal their value for the entity: the key
    # and replace_by columns mapped to exactly `entity.<key>` or to a constant (runner.deletes.columns)
    delete_by: tuple[str, ...] = ()
    primary: bool = False  # its rows are the ones items_created / items_updated count (writer.primary)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.columns)

    @property
    def deleting(self) -> bool:
        """`outcome: delete` removes this write's rows of the entity: the one rule deletes and writeplan read."""
        return self.on_delete is OnDelete.DELETE and bool(self.delete_by)


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """Where the seed-compatible success stamp goes: `update table set column = now() where key = ...`."""

    table: QualifiedName
    key: str
    column: str  # default last_<name>_sync
    stamp_on_skip: bool = False
    error_columns: bool = True  # also write the seed's last_error_source/message/at (dashboards only)
    set: tuple[Field, ...] = ()  # extra status columns written on success (storefront_accessible: true)
