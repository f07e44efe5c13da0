"""outcomes.classify: the first truthy rule decides; messages, stamps and skip_until."""

from __future__ import annotations

import pytest

from runner import spec
from runner.client import Reply
from runner.errors import OutcomeError
from runner.expressions import JSON, Expression
from runner.outcomes import Decision, classify


def reply(status: int = 200, body: JSON = None) -> Reply:
    return Reply(status=status, headers={"x-a": "1"}, body=body, raw=b"", url="u", elapsed=0.0, content_type="")


def rule(when: str, outcome: spec.Outcome, **kw: object) -> spec.OutcomeRule:
    return spec.OutcomeRule(when=Expression.compile(when), outcome=outcome, **kw)  # type: ignore[arg-type]


def message(*parts: str | Expression) -> spec.MessageTemplate:
    return spec.MessageTemplate(text="", parts=parts)


RULES = (
    rule("body.success == `false`", spec.Outcome.SKIP, name="not on the store"),
    rule("status == `429`", spec.Outcome.SKIP_UNTIL, duration=3600.0),
    rule(
        "status >= `400`",
        spec.Outcome.ERROR,
        message=message("API said ", Expression.compile("body.error"), " for ", Expression.compile("entity.appid")),
    ),
    rule("status >= `200` && status < `300`", spec.Outcome.SUCCESS),
)


def test_first_truthy_rule_decides() -> None:
    """A 200 with success false matches the skip rule before the 2xx rule."""
    decision = classify(RULES, reply(200, {"success": False}), {"appid": 1}, stamp_on_skip=True)
    assert decision == Decision(
        outcome=spec.Outcome.SKIP, rule="not on the store", message=None, stamp=True, until=None
    )


def test_success_stamps() -> None:
    """A plain 2xx is success, named by position, and stamps."""
    decision = classify(RULES, reply(200, {"success": True}), {"appid": 1}, stamp_on_skip=False)
    assert (decision.outcome, decision.rule, decision.stamp) == (spec.Outcome.SUCCESS, "rule 4", True)


def test_error_message_renders_expressions() -> None:
    """Error messages interpolate expressions over the context; null renders as `null`."""
    decision = classify(RULES, reply(400, {"error": "bad id"}), {"appid": 7}, stamp_on_skip=False)
    assert (decision.outcome, decision.message, decision.stamp) == (spec.Outcome.ERROR, "API said bad id for 7", False)
    assert classify(RULES, reply(400, None), {"appid": 7}, stamp_on_skip=False).message == "API said null for 7"


def test_skip_until_carries_its_duration() -> None:
    """skip_until returns the rule's duration as `until`."""
    decision = classify(RULES, reply(429), {"appid": 1}, stamp_on_skip=False)
    assert (decision.outcome, decision.until) == (spec.Outcome.SKIP_UNTIL, 3600.0)


@pytest.mark.parametrize(
    ("rule_stamp", "default", "expected"), [(None, True, True), (None, False, False), (True, False, True)]
)
def test_skip_stamp_defaults_to_the_status_setting(rule_stamp: bool | None, default: bool, expected: bool) -> None:
    """A skip rule's stamp falls back to status.stamp_on_skip."""
    rules = (rule("`true`", spec.Outcome.SKIP, stamp=rule_stamp),)
    assert classify(rules, reply(), {}, stamp_on_skip=default).stamp is expected


@pytest.mark.parametrize(
    ("value", "matches"), [("`0`", True), ("`[]`", False), ("`{}`", False), ("''", False), ("`null`", False)]
)
def test_jmespath_truthiness(value: str, matches: bool) -> None:
    """`when` uses JMESPath truthiness: 0 is true; empty list/object/string and null are false."""
    rules = (rule(value, spec.Outcome.SUCCESS),)
    assert (classify(rules, reply(), {}, stamp_on_skip=False).outcome is spec.Outcome.SUCCESS) is matches


def test_context_has_headers_and_entity() -> None:
    """Rules see lower-case headers and the entity."""
    rules = (rule("headers.\"x-a\" == '1' && entity.appid == `5`", spec.Outcome.SUCCESS),)
    assert classify(rules, reply(), {"appid": 5}, stamp_on_skip=False).outcome is spec.Outcome.SUCCESS


def test_no_matching_rule_is_an_error() -> None:
    """No rule matched: an error naming the status."""
    decision = classify((), reply(302), {}, stamp_on_skip=False)
    assert (decision.outcome, decision.message, decision.rule) == (
        spec.Outcome.ERROR,
        "no outcome rule matched HTTP 302",
        "",
    )


def test_failing_expression_is_an_outcome_error() -> None:
    """A rule whose expression fails at runtime is an OutcomeError naming the rule."""
    rules = (rule("abs(body)", spec.Outcome.SUCCESS),)
    with pytest.raises(OutcomeError, match=r"outcome rule 1: abs\(body\) failed"):
        classify(rules, reply(200, "text"), {}, stamp_on_skip=False)


def test_a_builtin_that_raises_is_an_outcome_error_with_its_type() -> None:
    """to_string of a 4301-digit integer raises ValueError inside jmespath: the entity's OutcomeError,
    naming the rule and the exception, never the run's crash."""
    rules = (rule("to_string(body.n) == 'x'", spec.Outcome.SUCCESS, name="huge"),)
    with pytest.raises(OutcomeError, match=r"^outcome huge: to_string\(body.n\) == 'x' failed: ValueError: .*4300"):
        classify(rules, reply(200, {"n": 10**4400}), {}, stamp_on_skip=False)


def test_an_error_message_quoting_an_unwritable_value_is_still_a_message() -> None:
    """A message part that JSON cannot write (a 4301-digit integer) is described, not raised."""
    rules = (rule("`true`", spec.Outcome.ERROR, message=message("got ", Expression.compile("body.n"))),)
    decision = classify(rules, reply(500, {"n": 10**4400}), {}, stamp_on_skip=False)
    assert decision.message == "got <int that cannot be shown>"
