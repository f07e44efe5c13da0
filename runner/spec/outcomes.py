"""`outcomes:`: the ordered rules that classify a reply."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from runner.expressions import Expression
from runner.spec.writes import Field


class Outcome(StrEnum):
    SUCCESS = "success"
    SKIP = "skip"
    ERROR = "error"
    SKIP_UNTIL = "skip_until"
    DELETE = "delete"  # the entity is gone (410 Gone): its rows go, syncrun_state.deleted_at is set


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageTemplate:
    """`"API said {body.error}"`: each `{...}` is a JMESPath expression over the outcome context."""

    text: str
    parts: tuple[str | Expression, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeRule:
    """The first rule whose `when` is truthy over {status, headers, body, entity} decides."""

    when: Expression
    outcome: Outcome
    message: MessageTemplate | None = None  # error: the entity's error text
    stamp: bool | None = None  # skip: stamp the success column? None = status.stamp_on_skip
    duration: float | None = None  # skip_until: how long the entity is left alone
    name: str = ""  # for explanations: "rule 2" or the YAML `name`
    set: tuple[Field, ...] = ()  # status-table columns written when this rule decides
