"""What a run reports while it goes, for the faces that show it: the engine emits, observers notice.

The command line passes the observers in (runner/progress.py `observers`: the progress bar, the
periodic `progress` log lines and failed-entity warnings, which the "github" log format turns into
Actions annotations, and the step summary of runner/workflow.py). The engine knows only this module.

    EntityDone    an entity (a list source's page) was counted: its outcome, the counters after it
    BatchWritten  a batch of results committed: rows, status and state in one transaction
    Halted        a source takes no new entities (signal, --max-runtime, a failure): status and why
    Finished      every source's run is over: their reports, in order

Observers run on the event loop, between entities: they must be quick and must not raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from runner import spec
from runner.expressions import JSON
from runner.jobs import Counters

if TYPE_CHECKING:
    from runner.engine.report import Report


@dataclass(frozen=True, slots=True)
class EntityDone:
    source: str
    key: JSON
    outcome: spec.Outcome
    error: str | None
    counters: Counters  # the source's counters after this entity
    items: int  # what it counted as: 1, or the records of a list source's page
    requests: int  # requests the source's limiter granted so far
    elapsed: float  # seconds since the source's run started


@dataclass(frozen=True, slots=True)
class BatchWritten:
    source: str
    entities: int
    counters: Counters


@dataclass(frozen=True, slots=True)
class Halted:
    source: str
    status: str  # completed (a graceful stop) | failed | cancelled
    error: str | None
    reason: str  # max_runtime, SIGTERM, SIGINT; empty for a failure


@dataclass(frozen=True, slots=True)
class Finished:
    reports: Sequence[Report]


Event = EntityDone | BatchWritten | Halted | Finished


class Observer(Protocol):
    def notice(self, event: Event) -> None: ...
