"""How many entities a runner claims at a time: about `horizon` seconds of its own work.

Runners of one source without `--partition` share the due set through claims (runner/claims.py).
A runner that claimed a fixed 500 at once took every due entity of a small run before the others
had started (four runners did 400/0/0/0). Claiming what this runner will finish in the next quarter
second keeps every runner coming back for more while the others do too, so each gets a share in
proportion to its speed, and what a crashed runner holds (until its lease expires) stays small.

The first claim is `floor` (the source's concurrency: every fetcher gets one); later ones follow the
rate this runner has completed entities at so far, between `floor` and `ceiling` (one claim
statement per chunk: at thousands of entities a second, small chunks would cost a round trip each).
"""

from __future__ import annotations

import time
from collections.abc import Callable

HORIZON = 0.25  # seconds of this runner's own work claimed at once
CEILING = 500  # entities per claim at most (selection.CHUNK_SIZE)


class ClaimSize:
    """`size()`: the next claim's size; `done(n)`: n entities were completed."""

    def __init__(
        self,
        floor: int,
        *,
        ceiling: int = CEILING,
        horizon: float = HORIZON,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.floor, self.ceiling, self.horizon, self.clock = max(1, floor), max(1, ceiling, floor), horizon, clock
        self.completed = 0
        self.since: float | None = None  # when the first claim was asked for

    def done(self, count: int = 1) -> None:
        self.completed += count

    def size(self) -> int:
        now = self.clock()
        if self.since is None:
            self.since = now
        elapsed = now - self.since
        if not self.completed or elapsed <= 0:
            return self.floor
        wanted = int(self.completed / elapsed * self.horizon)
        return max(self.floor, min(self.ceiling, wanted))
