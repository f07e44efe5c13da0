"""What a run reports while it goes, for the faces that show it: the engine emits, observers notice.

The command line passes the observers in (runner/progress.py `observers`: the progress bar, the
periodic `progress` log lines and failed-entity warnings, which the "github" log format turns into
Actions annotations, and the step summary of runner/workflow.py). The engine knows only this module.

    EntitiesDone  entities (a list source's pages) were counted, a batch at a time: each one's
                  result in order, the counters before and after them
    BatchWritten  a batch of results committed: rows, status and state in one transaction
    Halted        a source takes no new entities (signal, --max-runtime, a failure): status and why
    Finished      every source's run is over: their reports, in order

Observers run on the event loop, between entities: they must be quick and must not raise.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from runner.jobs import Counters
from runner.results import EntityResult, counted

if TYPE_CHECKING:
    from runner.engine.report import Report


@dataclass(frozen=True, slots=True)
class EntitiesDone:
    """Entities counted together (one event a batch: one per entity cost more than counting them)."""

    source: str
    results: Sequence[EntityResult]  # in the order counted
    items: Sequence[int | None] | None  # what each counted as (a list source's page: its records); None: 1 each
    before: Counters  # the source's counters before the first of them
    counters: Counters  # ... and after the last
    requests: int  # requests the source's limiter granted so far
    elapsed: float  # seconds since the source's run started

    def each(self) -> Iterator[tuple[int, EntityResult]]:
        """(`processed` after it, the result) for each entity in order."""
        processed = self.before.processed
        for index, result in enumerate(self.results):
            n = 1 if self.items is None else self.items[index]
            processed += 1 if n is None else n
            yield processed, result

    def after(self, index: int, known: tuple[int, Counters] | None = None) -> Counters:
        """The counters right after the `index`th entity: what they said then. `known`: (n, the counters
        after the first n entities), to count on from there (a walk asking at every line due stays
        linear in the batch: counting from `before` each time was quadratic, review revD F1)."""
        start, base = known or (0, self.before)
        items = None if self.items is None else self.items[start : index + 1]
        return counted(base, self.results[start : index + 1], items)


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


Event = EntitiesDone | BatchWritten | Halted | Finished


class Observer(Protocol):
    def notice(self, event: Event) -> None: ...
