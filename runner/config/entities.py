"""`entities:`: which entities a run picks and the columns it gives them."""

from __future__ import annotations

from typing import cast

from runner import filters, spec
from runner.config.builder import Builder, check_sql
from runner.config.project import qualified
from runner.config.units import parse_duration
from runner.expressions import JSON
from runner.sourcefile import Path_

DEFAULT_LIMIT = 100

ENGINE_PARAMETERS = ("limit", "after_key", "source")


class EntitiesSection(Builder):
    """`entities:` (selection types, key, columns, sql, function, join/where/order via runner/filters.py)."""

    def entities(self) -> spec.Entities | None:
        raw = self.section("entities")
        if raw is None:
            return None
        kind = spec.SelectionType(raw.get("type", "default"))
        key = raw.get("key", self.project.key)
        declared = list(raw.get("columns", {}).items())
        key_type = self.key_type(raw, dict(declared), key)
        if declared and declared[0][0] != key:
            self.add(
                ("entities", "columns"), f"the key column '{key}' must come first (columns: {{{key}: {key_type}, ...}})"
            )
        if kind is spec.SelectionType.LIST:
            declared = []
            if "limit" in raw:  # a catalogue has no entities to count: its cap is on records
                self.add(
                    ("entities", "limit"),
                    "does not apply to a list source: cap the records a run writes with pagination.max_items"
                    " (or --limit)",
                )
        elif not declared:
            declared = [(key, key_type)]
        extra: dict[str, JSON] = {
            k: raw[k]
            for k in ("interval_column", "priority_column", "syncable_column", "max_consecutive_errors")
            if k in raw
        }
        if "refresh_interval" in raw:
            extra["refresh_interval"] = self.duration(("entities", "refresh_interval"), raw["refresh_interval"])
        if "sql" in raw:
            extra["sql"] = self.sql(("entities", "sql"), raw["sql"])
        if "function" in raw:
            extra["function"] = qualified(raw["function"])
            extra["args"] = tuple((name, _function_arg(value)) for name, value in raw.get("args", {}).items())
        # join / where / order (type default only: the schema refuses them elsewhere)
        extra.update(
            filters.read(raw, key, lambda path, message: self.add(("entities", *path), message), parse_duration)
        )
        columns = tuple(spec.EntityColumn(name, type_) for name, type_ in declared)
        return spec.Entities(
            type=kind, key=key, key_type=key_type, columns=columns, limit=raw.get("limit", DEFAULT_LIMIT), **extra
        )

    def key_type(self, raw: dict[str, JSON], columns: dict[str, str], key: str) -> str:
        explicit, declared = raw.get("key_type"), columns.get(key)
        if explicit and declared and explicit != declared:
            self.add(("entities", "columns", key), f"type {declared} differs from key_type {explicit}: make them equal")
        key_type = cast(str, explicit or declared or self.project.key_type)
        if key_type not in ("int", "bigint", "text"):
            self.add(("entities", "columns", key), f"the key column must be int, bigint or text, not {key_type}")
        return key_type

    def sql(self, path: Path_, text: str) -> str:
        check_sql(self, path, text, allowed=ENGINE_PARAMETERS, required=("limit", "after_key"))
        return text


def _function_arg(value: JSON) -> spec.FunctionArg:
    if isinstance(value, dict):
        return spec.FunctionArg(parameter=value["param"])
    return spec.FunctionArg(value=value)
