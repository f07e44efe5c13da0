"""What a run is asked to do (Options) and what it says it did (Report, one Trace per entity)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC

from runner import jobs
from runner.claims import Held
from runner.expressions import JSON
from runner.results import EntityResult

# Job rows' error_message texts that dashboards may match on (docs/cli.md lists them; tests pin them)
FAIL_RATIO = "{failed} of {processed} {what} failed, above fail_ratio {ratio}"
CANCELLED = "cancelled by {signal}"
LISTING_PAGE_FAILED = "page {page} of the listing failed: {error}"
BUSY_IDS = (
    "{count} of the --ids were not run: another runner holds them ({ids}; {holder}); run them again when it"
    " has finished (a claim lapses --lease seconds after its runner's last heartbeat)"
)
_SHOWN = 5  # ids a message names at most


def busy(held: list[Held]) -> str:
    """BUSY_IDS for these ids: how many, the first few, and who holds the first of them till when."""
    ids = ", ".join(str(h.key) for h in held[:_SHOWN])
    ids += f" and {len(held) - _SHOWN} more" if len(held) > _SHOWN else ""
    holder = next((h for h in held if h.holder is not None and h.until is not None), None)
    by = "their claims lapsed since"
    if holder is not None and holder.until is not None:
        by = f"held by {holder.holder} until {holder.until.astimezone(UTC):%H:%M:%S} UTC"
    return BUSY_IDS.format(count=len(held), ids=ids, holder=by)


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    limit: int | None  # None: each source's own entities.limit
    ids: tuple[str, ...] | None = None
    dry_run: bool = False
    max_runtime: float | None = None
    grace: float = 5.0  # after a stop, how long in-flight entities may take to finish
    partition: tuple[int, int] | None = None  # (i, n): static shard i of n
    progress_every: int = 100  # read by the observers (runner/progress.py), not by the engine
    heartbeat_every: float = 5.0
    lease: float = 600.0  # entity claim lifetime, renewed with the heartbeat
    holder: str = ""  # this runner's claim identity
    github_run_id: str | None = None
    restart: bool = False  # list-shaped sources: ignore the checkpointed cursor
    stale_after: float = 300.0  # reap running jobs whose heartbeat is older than this
    metadata: dict[str, JSON] = field(default_factory=dict)
    # list sources: records this run writes at most (an explicit --limit): pagination.max_items for this run
    max_items: int | None = None
    overridden: frozenset[str] = frozenset()  # `--set` paths (incremental.start overrides the watermark)


@dataclass(slots=True)
class Trace:
    """What happened to one entity, for --dry-run and test-read explanations."""

    entity: dict[str, JSON]
    requests: list[str] = field(default_factory=list)
    status: int | None = None
    elapsed: float = 0.0
    excerpt: str = ""
    rule: str = ""
    result: EntityResult | None = None
    declared: bool = False  # the deciding outcome rule is the source's own, not a default one
    capped: str = ""  # why a cap (max_pages, max_items, the default page cap) cut this entity's listing
    items: int | None = None  # a list source's page: the records it counts as (None: one entity)
    weight: int = 0  # bytes its rows hold, roughly, while they wait for the writer (runner/engine/writes.py)


@dataclass(slots=True)
class Report:
    source: str
    status: str = "completed"  # completed | failed | cancelled | busy (runner/listings.py: read nothing)
    job_id: str | None = None
    counters: jobs.Counters = field(default_factory=jobs.Counters)
    error: str | None = None
    signal: int | None = None
    traces: list[Trace] = field(default_factory=list)
    elapsed: float = 0.0
    listing: str | None = None  # a list source's listing that did not end: "listing not complete: …"
    capped: int = 0  # entity listings cut by max_pages/max_items (the default page cap): not complete
    metadata: dict[str, JSON] = field(default_factory=dict)  # merged into the job row's metadata at the end
