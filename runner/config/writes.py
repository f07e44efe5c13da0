"""`writes:`: each target's columns, keys, lookups and merges, and what `outcome: delete` removes."""

from __future__ import annotations

from dataclasses import replace

from runner import deletes, spec
from runner.config.builder import Builder
from runner.config.project import qualified
from runner.exprcheck import Roots
from runner.expressions import JSON, Expression
from runner.sourcefile import Path_


class WritesSection(Builder):
    """`writes:` and, with an `outcome: delete` rule, each write's `delete_by`."""

    def writes(self, columns: frozenset[str] | None) -> tuple[spec.Write, ...] | None:
        raw = self.section("writes")
        if raw is None:
            return None
        writes = (self.write(("writes", i), write, columns) for i, write in enumerate(raw))
        primary = [i for i, write in enumerate(raw) if isinstance(write, dict) and write.get("primary") is True]
        for i in primary[1:]:
            self.add(("writes", i, "primary"), f"writes[{primary[0]}] is the primary write already: keep one")
        return tuple(w for i, w in enumerate(writes) if w is not None and self.usable(("writes", i)))

    def write(self, path: Path_, raw: JSON, entity_columns: frozenset[str] | None) -> spec.Write | None:
        if not self.usable(path):
            return None
        rows = self.optional_expression((*path, "rows"), self.mapping_roots(entity_columns), raw)
        roots = self.mapping_roots(entity_columns, item="rows" in raw)
        fields = self.assignments((*path, "columns"), raw["columns"], roots)
        lookups = tuple(
            self.lookup((*path, "lookups", i), lookup, roots) for i, lookup in enumerate(raw.get("lookups", []))
        )
        mapped = [*raw["columns"], *(lookup.column for lookup in lookups)]
        self.check_columns(path, raw, mapped)
        target = "function" if "function" in raw else "table"
        return spec.Write(
            table=qualified(raw[target]),
            function=qualified(raw["function"]) if "function" in raw else None,
            key=tuple(raw.get("key", ())),
            columns=fields,
            mode=spec.WriteMode(raw.get("mode", "upsert")),
            rows=rows,
            merge=tuple((column, spec.Merge(how)) for column, how in raw.get("merge", {}).items()),
            when=self.optional_expression((*path, "when"), roots, raw),
            replace_by=tuple(raw.get("replace_by", ())),
            lookups=lookups,
            on_delete=spec.OnDelete(raw.get("on_delete", "delete")),
            primary=raw.get("primary", False),
        )

    def deletes(
        self, writes: tuple[spec.Write, ...] | None, entities: spec.Entities | None
    ) -> tuple[spec.Write, ...] | None:
        """With an `outcome: delete` rule, each deleting write's `delete_by` (runner.deletes), or why
        its rows of an entity cannot be told: never a guess."""
        rules = [
            i
            for i, r in enumerate(self.section("outcomes") or [])
            if isinstance(r, dict) and r.get("outcome") == "delete"
        ]
        if not rules or writes is None or entities is None or len(writes) != len(self.raw["writes"]):
            return writes
        if entities.type is spec.SelectionType.LIST:
            self.add(("outcomes", rules[0], "outcome"), "a list source has no entities to delete (a page is no entity)")
            return writes
        built = []
        for i, write in enumerate(writes):
            if write.on_delete is spec.OnDelete.KEEP:
                built.append(write)
                continue
            delete_by, why = deletes.columns(write, entities.key)
            if why is not None:
                where = ("writes", i, "on_delete") if "on_delete" in self.raw["writes"][i] else ("writes", i)
                self.add(where, f"outcome delete (outcomes[{rules[0]}]) {why}")
            built.append(replace(write, delete_by=delete_by))
        return tuple(built)

    def lookup(self, path: Path_, raw: JSON, roots: Roots) -> spec.Lookup:
        value = self.expression((*path, "value"), raw["value"], roots) or Expression.compile("@")
        names = {k: raw[k] for k in ("column", "key", "returning")}
        return spec.Lookup(table=qualified(raw["table"]), value=value, **names)

    def check_columns(self, path: Path_, raw: JSON, mapped: list[str]) -> None:
        """Keys, replace_by and merge name mapped columns; each column is written once."""
        for i, column in enumerate(mapped[len(raw["columns"]) :]):
            if column in mapped[: len(raw["columns"]) + i]:
                self.add((*path, "lookups", i, "column"), f"'{column}' is already written by this write")
        for part in ("key", "replace_by"):
            for i, column in enumerate(raw.get(part, ())):
                if column not in mapped:
                    self.add((*path, part, i), f"'{column}' is not a mapped column (have: {', '.join(mapped)})")
        merge = raw.get("merge", {})
        if merge and raw.get("mode") == "insert":
            self.add((*path, "merge"), "merge applies to mode: upsert only (insert never updates a row)")
        for column in merge:
            if column not in mapped or column in raw["key"]:
                reason = "is a key column" if column in mapped else "is not a mapped column"
                self.add((*path, "merge", column), f"'{column}' {reason}: only mapped non-key columns merge")
        greatest = [c for c, how in merge.items() if how == "greatest"]
        for column in (c for c, how in merge.items() if how == "with_greatest" and len(greatest) != 1):
            found = f"it has {', '.join(greatest)}" if greatest else "it has none"
            self.add((*path, "merge", column), f"with_greatest follows the write's one greatest column; {found}")
