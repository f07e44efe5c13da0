"""`status:` (the stamp an entity's outcome leaves) and the `before:`/`after:` SQL steps."""

from __future__ import annotations

from runner import spec
from runner.config.builder import Builder, check_sql
from runner.config.project import qualified


class StatusSection(Builder):
    """`status:` and the `before:`/`after:` steps."""

    def status(self, name: str, columns: frozenset[str] | None, listed: bool) -> spec.Status | None:
        raw = self.section("status", {})
        if listed:  # a page is no entity: a stamp would have been keyed by the page number
            if isinstance(self.raw.get("status"), dict):
                self.add(
                    ("status",),
                    "a list source has no entities to stamp: write status: false (rows of a status"
                    " table are written by a write, e.g. mode: insert)",
                )
            return None
        if raw is None or raw is False:
            return None
        roots = self.mapping_roots(columns, record=False)
        return spec.Status(
            set=self.assignments(("status", "set"), raw.get("set", {}), roots),
            table=qualified(raw["table"]) if "table" in raw else self.project.status_table,
            key=raw.get("key", self.project.status_key),
            column=raw.get("column", f"last_{name}_sync"),
            **{k: raw[k] for k in ("stamp_on_skip", "error_columns") if k in raw},
        )

    def steps(self, key: str) -> tuple[spec.Step, ...] | None:
        raw = self.section(key, [])
        if raw is None:
            return None
        steps = [(i, step) for i, step in enumerate(raw) if self.usable((key, i))]
        for i, step in steps:
            check_sql(self, (key, i, "sql"), step["sql"], allowed=("job_id", "started_at", "source"), required=())
        return tuple(spec.Step(sql=step["sql"], when=spec.StepWhen(step.get("when", "always"))) for _, step in steps)
