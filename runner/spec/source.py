"""The whole source: every section, and the settings its templates use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.expressions import Expression
from runner.spec.auth import Auth
from runner.spec.entities import Entities
from runner.spec.incremental import Incremental
from runner.spec.outcomes import OutcomeRule
from runner.spec.request import Pagination, Request
from runner.spec.steps import Step
from runner.spec.templates import Setting
from runner.spec.timing import Backoff, RateLimit, Retry, Schedule
from runner.spec.writes import Status, Write


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    name: str
    path: Path
    description: str = ""
    job_type: str
    entities: Entities
    request: Request
    # frozen dataclasses: one shared default instance is safe (ruff cannot see that across modules)
    pagination: Pagination = Pagination()  # noqa: RUF009
    rate_limit: RateLimit
    retry: Retry = Retry()  # noqa: RUF009
    backoff: Backoff = Backoff()  # noqa: RUF009
    outcomes: tuple[OutcomeRule, ...]  # the user's rules, then the defaults (2xx/404/4xx)
    records: Expression | None = None  # None: the whole body is the one record
    incremental: Incremental | None = None  # list sources only
    writes: tuple[Write, ...]
    status: Status | None
    concurrency: int = 4
    write_batch: int = 100  # entities per write transaction
    fail_ratio: float = 0.5  # failed/processed above this makes the run exit 1
    before: tuple[Step, ...] = ()
    after: tuple[Step, ...] = ()
    schedule: Schedule | None = None
    auth: Auth | None = None

    @property
    def settings(self) -> tuple[Setting, ...]:
        """Every ${env.*}/${secret.*} the source uses, in order of first appearance: each use with its own
        default (a variable used with two defaults, or with one and without, is two: resolving and
        masking must see both; review revG F1/F2)."""
        templates = [
            self.request.url,
            *(t for _, t in self.request.query),
            *(t for _, t in self.request.headers),
            *(self.auth.templates if self.auth else ()),
        ]
        seen: dict[tuple[str, str, str | None], Setting] = {}
        for template in templates:
            for setting in template.settings:
                if setting.kind == "incremental":  # not the environment's: the engine fills it in
                    continue
                seen.setdefault((setting.kind, setting.name, setting.default), setting)
        return tuple(seen.values())
