"""`before:` / `after:`: SQL run around a source's entities."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class StepWhen(StrEnum):
    ALWAYS = "always"
    COMPLETE = "complete"  # all pages, not capped, not cancelled, no failures


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """SQL run before or after the entities (e.g. mark apps SteamSpy never listed). Parameters:
    %(job_id)s, %(started_at)s, %(source)s."""

    sql: str
    when: StepWhen = StepWhen.ALWAYS
