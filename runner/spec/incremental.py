"""`incremental:`: a list source's watermark."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from runner.expressions import Expression


class IncrementalFrom(StrEnum):
    CURSOR = "cursor"  # the largest cursor value among the listing's records
    LISTING_START = "listing_start"  # when the completed listing started


@dataclass(frozen=True, slots=True, kw_only=True)
class Incremental:
    """A list source's watermark (runner/watermarks.py), read by requests as ${incremental.since}.
    `start` is a timezone-aware datetime or an int; `lookback` is seconds (timestamps) or an int."""

    cursor: Expression | None = None  # required unless `from` is listing_start
    from_: IncrementalFrom = IncrementalFrom.CURSOR
    start: datetime | int
    lookback: float | int = 0
