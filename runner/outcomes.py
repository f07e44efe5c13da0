"""Classifying a reply: the first outcome rule whose `when` is truthy decides success, skip, skip_until
or error. The rules are data (spec.OutcomeRule); this module only evaluates them in order.

A rule's own error message about a reply that is not JSON (an HTML page, JSON cut short) keeps what
arrived: `storefront sent no JSON object (HTTP 200 text/html: '<html>…')`, the engine's bounded
description (reply.describe: 80 characters, and why it is not JSON), redacted with the message —
otherwise a source's rule would replace the one diagnostic an operator needs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from jmespath.exceptions import JMESPathError

from runner import spec
from runner.errors import OutcomeError
from runner.expressions import EVALUATION_FAULTS, JSON, Expression, truthy
from runner.reply import Reply, describe


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    outcome: spec.Outcome
    rule: str  # the rule's name, "rule 3", or "" when no rule matched
    message: str | None  # error: the entity's error text
    stamp: bool  # stamp the success column
    until: float | None  # skip_until: seconds the entity is left alone
    values: Mapping[str, JSON] = field(default_factory=dict)  # the rule's `set:` status columns, evaluated
    index: int = field(default=0, compare=False)  # the rule's place in `rules`, from 1; 0 when no rule matched


def classify(
    rules: Sequence[spec.OutcomeRule], reply: Reply, entity: Mapping[str, JSON], *, stamp_on_skip: bool
) -> Decision:
    """The decision of the first rule whose `when` is truthy over {status, headers, body, entity}.

    No matching rule is an error "no outcome rule matched HTTP <status>". `stamp_on_skip` is the
    status section's default for skip rules that do not say `stamp`.
    """
    headers = reply.headers if type(reply.headers) is dict else dict(reply.headers)  # read, never changed
    context = {"status": reply.status, "headers": headers, "body": reply.body, "entity": _plain(entity)}
    for index, rule in enumerate(rules, start=1):
        name = rule.name or f"rule {index}"
        if truthy(_search(rule.when, context, name)):
            decision = _constant(rule, stamp_on_skip, index)
            if decision is None:
                decision = _decide(rule, name, context, stamp_on_skip, index)
            if decision.message is not None and rule.message and reply.body is None and (reply.raw or reply.problem):
                decision = replace(decision, message=f"{decision.message} ({describe(reply)})")  # rare: errors only
            return decision
    return Decision(
        outcome=spec.Outcome.ERROR,
        rule="",
        message=f"no outcome rule matched HTTP {reply.status}",
        stamp=False,
        until=None,
    )


def _plain(entity: Mapping[str, JSON]) -> dict[str, JSON]:
    return entity if type(entity) is dict else dict(entity)


# A rule's decision that does not depend on the reply (no message, no `set:`), made once: (rule, decision)
# by the rule's id, the rule kept so that its id is never reused while the entry exists.
_decisions: dict[tuple[int, bool, int], tuple[spec.OutcomeRule, Decision]] = {}


def _constant(rule: spec.OutcomeRule, stamp_on_skip: bool, index: int) -> Decision | None:
    """The decision of a rule that says the same of every reply (a success, a skip), made once per
    rule instead of once per reply; None for one that reads the reply (an error's message, `set:`)."""
    if rule.outcome is spec.Outcome.ERROR or rule.set:
        return None
    key = (id(rule), stamp_on_skip, index)
    entry = _decisions.get(key)
    if entry is None or entry[0] is not rule:
        name = rule.name or f"rule {index}"
        entry = _decisions[key] = (rule, _decide(rule, name, {}, stamp_on_skip, index))
    return entry[1]


def _decide(rule: spec.OutcomeRule, name: str, context: JSON, stamp_on_skip: bool, index: int) -> Decision:
    outcome = rule.outcome
    skipping = outcome in (spec.Outcome.SKIP, spec.Outcome.SKIP_UNTIL)
    message = None
    if outcome is spec.Outcome.ERROR:
        message = (
            _message(rule.message, context, name)
            if rule.message
            else f"HTTP {context['status']} classified as an error by outcome {name}"
        )
    return Decision(
        outcome=outcome,
        rule=name,
        message=message,
        stamp=outcome is spec.Outcome.SUCCESS
        or (skipping and (rule.stamp if rule.stamp is not None else stamp_on_skip)),
        until=rule.duration if outcome is spec.Outcome.SKIP_UNTIL else None,
        values={f.column: _search(f.expression, context, name) for f in rule.set},
        index=index,
    )


def _message(template: spec.MessageTemplate, context: JSON, name: str) -> str:
    parts = []
    for part in template.parts:
        if isinstance(part, str):
            parts.append(part)
            continue
        value = _search(part, context, name)
        parts.append("null" if value is None else value if isinstance(value, str) else _json(value))
    return "".join(parts)


def _json(value: JSON) -> str:
    """A value quoted into an error message; one JSON cannot write (a 4301-digit integer) is named."""
    try:
        return json.dumps(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__} that cannot be shown>"


def _search(expression: Expression, context: JSON, name: str) -> JSON:
    try:
        return expression.search(context)
    except JMESPathError as exc:
        raise OutcomeError(f"outcome {name}: {expression.text} failed: {exc}") from None
    except EVALUATION_FAULTS as exc:  # a value no function should have met: the entity's error, named
        raise OutcomeError(f"outcome {name}: {expression.text} failed: {type(exc).__name__}: {exc}") from None
