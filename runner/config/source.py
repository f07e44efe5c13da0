"""A whole source file: every section built, then the `spec.Source` they make together."""

from __future__ import annotations

from runner import spec
from runner.config.entities import EntitiesSection
from runner.config.incremental import IncrementalSection
from runner.config.outcomes import OutcomesSection
from runner.config.paging import PaginationSection
from runner.config.request import RequestSection
from runner.config.status import StatusSection
from runner.config.timing import TimingSection
from runner.config.writes import WritesSection
from runner.expressions import JSON


class SourceBuilder(
    EntitiesSection,
    RequestSection,
    PaginationSection,
    TimingSection,
    OutcomesSection,
    WritesSection,
    IncrementalSection,
    StatusSection,
):
    """Turns a schema-checked document into spec objects: each section's builder is a mixin in its own
    module (they only call each other through `Builder`); `source` builds them in order."""

    def source(self) -> spec.Source | None:
        if not isinstance(self.doc.data, dict):
            return None
        name = self.section("name")
        entities = self.entities()
        columns = None if entities is None else entities.column_names
        request = self.request(columns, entities is not None and entities.type is spec.SelectionType.LIST)
        parts: dict[str, JSON] = {
            "pagination": self.pagination(),
            "rate_limit": self.rate_limit(name or "source"),
            "retry": self.retry(),
            "backoff": self.backoff(),
            "outcomes": self.outcomes(columns),
            "records": self.optional_expression(("records",), self.mapping_roots(columns, record=False)),
            "incremental": self.incremental(columns, entities, request),
            "writes": self.deletes(self.writes(columns), entities),
            "status": self.status(name or "source", columns, entities is not None and entities.type.value == "list"),
            "before": self.steps("before"),
            "after": self.steps("after"),
            "schedule": self.schedule(),
            "auth": self.auth(),
        }
        self.incremental_steps(parts["incremental"], parts["after"])
        keys = ("description", "job_type", "concurrency", "write_batch", "fail_ratio")
        scalars: dict[str, JSON] = {k: self.raw[k] for k in keys if k in self.raw and self.usable((k,))}
        if "fail_ratio" in scalars:
            scalars["fail_ratio"] = float(scalars["fail_ratio"])
        if self.problems or name is None or entities is None or request is None:
            return None
        scalars.setdefault("job_type", name)
        return spec.Source(name=name, path=self.path, entities=entities, request=request, **parts, **scalars)
