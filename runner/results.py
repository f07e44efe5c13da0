"""`EntityResult`: what one entity's fetch came to (its rows per write, or its error), handed by the
engine to the writer, and read on the way by the breaker, the backoff, the status stamps and the
deletes. Below all of them, so none reaches up into runner.writer for the type."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any

from runner import conditional
from runner.jobs import Counters
from runner.spec import Outcome


@dataclass(frozen=True, slots=True, kw_only=True)
class EntityResult:
    """What happened to one entity: its rows (write index -> rows) or its error.

    `rows` holds an entry for every write the mapping evaluated, an empty list included: for a
    `replace_by` write, a successful entity with an entry (even empty) replaces its rows; one without
    an entry leaves them alone.
    """

    key: Any
    entity: dict[str, Any]
    outcome: Outcome
    rows: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    error: str | None = None
    definitive: bool = True  # False: a transient failure; recorded, but no backoff
    stamp: bool = False  # skip outcomes: stamp the success column anyway (success always stamps)
    skip_until: float | None = None  # seconds from now
    error_source: str = ""  # the source name, for the seed's last_error_source
    status_values: dict[str, Any] = field(default_factory=dict)  # `status.set` columns, written with the stamp
    # write index -> this entity's replace_by values (WritePlan.scope); writer.write fills it in, callers don't
    scopes: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    # outcome delete: write index -> the entity's delete_by values (WritePlan.removal); filled in like scopes
    removals: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    # a capped listing (max_pages, max_items, the default page cap): its rows are upserted, but its
    # replace_by writes delete nothing, since the rows beyond the cap were not read, not gone
    partial: bool = False
    # conditional requests: the validators a success's reply carried (None: leave the stored ones), and
    # whether a 304 showed the entity unchanged (a stamped skip that writes no rows)
    validators: conditional.Validators | None = None
    unchanged: bool = False
    # a transient failure that was a 401/403: recorded (syncrun_state.refused) but never counted against
    # the entity; the engine sets it where it knows the reply's status (engine.fetchers)
    refused: bool = False
    # the writes whose rows need no conversion for their columns (writeplan.WritePlan.as_is), worked out
    # under the run's write plan by writer.fitted as the engine hands the result over, off the write
    # path; None: not worked out (the writer checks the batch's rows itself)
    fits: frozenset[int] | None = None

    @property
    def counter(self) -> str:
        """The job row's counter this result adds to (besides `processed`)."""
        if self.outcome is Outcome.ERROR:
            return "failed"
        return "unchanged" if self.unchanged else _COUNTERS.get(self.outcome, "skipped")

    @property
    def stamped(self) -> bool:
        return self.outcome is Outcome.SUCCESS or (self.outcome is not Outcome.ERROR and self.stamp)

    def failed(self, message: str) -> EntityResult:
        """This entity as a definitive error (its rows are not written); the entity dict is kept."""
        return replace(
            self,
            outcome=Outcome.ERROR,
            rows={},
            status_values={},
            scopes={},
            removals={},
            error=message,
            definitive=True,
            stamp=False,
            fits=None,
        )


_COUNTERS = {Outcome.SUCCESS: "succeeded", Outcome.DELETE: "deleted"}  # the other outcomes: skipped


def counted(c: Counters, results: Sequence[EntityResult], items: Sequence[int | None] | None = None) -> Counters:
    """`c` with `results` counted, one object for all of them (one per entity was a dataclass copy per
    entity). `items`: what each counts as (a list source's page: its records; None: 1), else 1 each."""
    if items is None:
        counts = Counter(map(attrgetter("counter"), results))
    else:
        counts = Counter[str]()
        for result, n in zip(results, items, strict=True):
            counts[result.counter] += 1 if n is None else n
    if not counts:
        return c
    added = {name: getattr(c, name) + n for name, n in counts.items()}
    return replace(c, processed=c.processed + sum(counts.values()), **added)
