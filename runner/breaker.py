"""The circuit breaker: stop a run whose failures are the API's, not the entities'.

Two trips, both ending the run as `failed` with one clear message and penalising no entity
(their errors are recorded, but their backoff does not advance):

- **credentials**: `AUTH_TRIP` consecutive 401/403 answers. A revoked key fails every entity the
  same way; there is no point spending the rate budget of the whole run to learn that.
- **outage**: `OUTAGE_TRIP` consecutive entities that failed with transient errors (5xx, 429,
  timeouts, connection resets) after all their retries: the API is down, not those entities.

Any success or skip closes the breaker again (resets both counts). The engine counts each entity as
its outcome is decided, not when its write batch commits, so at most `AUTH_TRIP` refused requests (plus
those already in flight, up to `concurrency - 1`) go out before the run stops. The trip is reported
once, with the count that tripped it; entities that were already in flight and finish after it are
counted apart (`late`, `late_failed`), and `message` says so at the end of the run, so the log and
the summary tell the same story: "stopped after 5 consecutive authentication failures (HTTP 401/403);
7 more entities were already in flight (7 failed too)".

"Stopped" only when it did stop something: a trip on the run's last entities, with nothing selected
left to process, ends the run as `failed` all the same, but says "the run ended on ... (nothing was
left to stop)" (`message(stopped=False)`).
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.spec import Outcome
from runner.writer import EntityResult

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

    def judge(self, result: EntityResult, status: int | None) -> str | None:
        """Count one entity's outcome as soon as it is known (before it is written): a refused
        credential is an auth failure, any other non-definitive failure a transient one."""
        failed = result.outcome is Outcome.ERROR
        auth = failed and status in AUTH_STATUSES
        return self.observe(failed=failed, auth=auth, transient=failed and not result.definitive and not auth)

    def observe(self, *, failed: bool, auth: bool, transient: bool) -> str | None:
        """Count one finished entity; the trip message when the breaker opens, else None (also for
        each entity finishing after the trip: it was in flight, and is counted in `late`)."""
        if self.tripped is not None:
            self.late += 1
            self.late_failed += failed
            return None
        if not failed:
            self.auth = self.outage = 0
            return None
        self.auth = self.auth + 1 if auth else 0
        self.outage = self.outage + 1 if transient else 0
        if self.auth >= AUTH_TRIP:
            self.what = f"{self.auth} consecutive authentication failures (HTTP 401/403)"
            self.tripped = (
                f"circuit breaker: stopped after {self.what}"
                " — the API refused our credentials: check the source's secrets; no entity was penalised"
            )
        elif self.outage >= OUTAGE_TRIP:
            self.what = f"{self.outage} consecutive entities failed with transient errors after every retry"
            self.tripped = f"circuit breaker: stopped after {self.what} — the API looks down; no entity was penalised"
        return self.tripped
