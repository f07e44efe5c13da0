"""The circuit breaker: stop a run whose failures look like the API's, not the entities'.

Two trips, both ending the run as `failed` with one clear message. What the breaker spares is the
rate budget and the definitive penalty, not the record: every failed entity's error is recorded
(syncrun_state.last_error, the seed's `last_error_*` and `consecutive_errors`), none is filed as a
definitive failure (so none backs off at once), and

- **credentials**: `AUTH_TRIP` consecutive 401/403 answers. A revoked key fails every entity the
  same way; there is no point spending the rate budget of the whole run to learn that. A refused
  credential is the source's problem: it never counts against an entity (no backoff, ever).
- **outage**: `OUTAGE_TRIP` consecutive entities that failed with transient errors (5xx, 429,
  timeouts, connection resets) after all their retries: the API looks down. Each of them counts one
  transiently failed run, like in any other run (runner/backoff.py), and only an entity that failed
  like this in `backoff.transient_runs` runs in a row backs off: a real outage costs at most the few
  entities each run tried, a mild ladder from `initial`, reset by their next success.

**Known-bad entities are not counted** (runner/history.py): the failure of an entity whose previous
attempt failed too (any kind, 401/403 included) neither extends nor resets either streak. Otherwise a
block of entities that fail every time, first in the selection order, would trip the breaker at the
same place on every run and nothing behind it would ever be fetched; now each of them is attempted
once per run (and backs off on the ladder), and the run goes on to the rest. An outage still trips
quickly: the entities failing then were healthy until now. Entities never attempted have no history
and count; a block of new broken entities trips one run, and is known-bad from the next.

Any success or skip closes the breaker again (resets both counts). The engine counts each entity as
its outcome is decided, not when its write batch commits, so at most `AUTH_TRIP` refused requests (plus
those already in flight, up to `concurrency - 1`) go out before the run stops. The trip is reported
once, with the count that tripped it; entities that were already in flight and finish after it are
counted apart (`late`, `late_failed`), and `message` says so at the end of the run, so the log and
the summary tell the same story: "stopped after 5 consecutive authentication failures (HTTP 401/403);
7 more entities were already in flight (7 failed too)".

"Stopped" only when it did stop something: a trip on the run's last entities, with nothing selected
left to process, ends the run as `failed` all the same, but says "the run ended on ... (nothing was
left to stop)" (`message(stopped=False)`). Every message starts with `circuit breaker: ` (the
stable prefix docs/cli.md lists).
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.results import EntityResult
from runner.spec import Outcome

AUTH_STATUSES = frozenset({401, 403})
AUTH_TRIP = 5
OUTAGE_TRIP = 20


@dataclass(slots=True)
class Breaker:
    auth: int = 0
    outage: int = 0
    tripped: str | None = None  # the trip message, without what finished after it
    what: str = ""  # what tripped it: "5 consecutive authentication failures (HTTP 401/403)"
    late: int = 0  # entities that finished after the trip (they were in flight)
    late_failed: int = 0
    transient_runs: int = 3  # the source's backoff.transient_runs, for the outage message

    def message(self, *, stopped: bool = True) -> str | None:
        """The trip message with the in-flight entities that finished after it; None if not tripped.
        `stopped=False`: nothing was left to process when it tripped, so it stopped nothing."""
        if self.tripped is None:
            return None
        head, _, tail = self.tripped.partition(" — ")
        if not stopped:
            head = f"circuit breaker: the run ended on {self.what} (nothing was left to stop)"
        if self.late:
            were = "entity was" if self.late == 1 else "entities were"
            head = f"{head}; {self.late} more {were} already in flight ({self.late_failed} failed too)"
        return f"{head} — {tail}"

    def judge(self, result: EntityResult, status: int | None, *, known_bad: bool = False) -> str | None:
        """Count one entity's outcome as soon as it is known (before it is written): a refused
        credential is an auth failure, any other non-definitive failure a transient one. `known_bad`:
        the entity's previous attempt failed too (runner/history.py), so its failure is not counted."""
        failed = result.outcome is Outcome.ERROR
        auth = failed and status in AUTH_STATUSES
        transient = failed and not result.definitive and not auth
        return self.observe(failed=failed, auth=auth, transient=transient, known_bad=known_bad)

    def observe(self, *, failed: bool, auth: bool, transient: bool, known_bad: bool = False) -> str | None:
        """Count one finished entity; the trip message when the breaker opens, else None (also for
        each entity finishing after the trip: it was in flight, and is counted in `late`). A failure
        of a known-bad entity changes neither streak."""
        if self.tripped is not None:
            self.late += 1
            self.late_failed += failed
            return None
        if failed and known_bad:
            return None
        if not failed:
            self.auth = self.outage = 0
            return None
        self.auth = self.auth + 1 if auth else 0
        self.outage = self.outage + 1 if transient else 0
        if self.auth >= AUTH_TRIP:
            self.what = f"{self.auth} consecutive authentication failures (HTTP 401/403)"
            self.tripped = f"circuit breaker: stopped after {self.what} — {AUTH_TAIL}"
        elif self.outage >= OUTAGE_TRIP:
            self.what = f"{self.outage} consecutive entities failed with transient errors after every retry"
            self.tripped = f"circuit breaker: stopped after {self.what} — {outage_tail(self.transient_runs)}"
        return self.tripped


AUTH_TAIL = "the API refused our credentials: check the source's secrets; errors recorded, no entity backs off for them"


def outage_tail(transient_runs: int) -> str:
    """What an outage trip did to the entities (docs/cli.md lists it; tests pin it)."""
    then = (
        "never backs off for it (backoff.transient_runs: 0)"
        if transient_runs == 0
        else f"backs off only from its {_nth(transient_runs)} such run in a row"
    )
    return f"the API looks down, or these entities fail every time; each counts one transiently failed run and {then}"


def _nth(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
