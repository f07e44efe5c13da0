"""`outcomes:`: the ordered rules that classify a reply, and the defaults after them."""

from __future__ import annotations

from typing import cast

from runner import spec
from runner.config.builder import Builder
from runner.exprcheck import Roots, message_template, split_message
from runner.expressions import JSON, Expression
from runner.sourcefile import Path_


def _rule(name: str, when: str, outcome: spec.Outcome, message: str | None = None) -> spec.OutcomeRule:
    template = message_template(message) if message else None
    return spec.OutcomeRule(name=name, when=Expression.compile(when), outcome=outcome, message=template)


# Appended after the user's rules, so a source only states what is special about its API.
DEFAULT_OUTCOMES = (
    _rule("default 2xx", "status >= `200` && status < `300`", spec.Outcome.SUCCESS),
    _rule("default 404", "status == `404`", spec.Outcome.SKIP),
    _rule("default 4xx", "status >= `400` && status < `500`", spec.Outcome.ERROR, "HTTP {status}"),
)


class OutcomesSection(Builder):
    """`outcomes:` rules, their messages, and the defaults appended after them."""

    def outcomes(self, columns: frozenset[str] | None) -> tuple[spec.OutcomeRule, ...] | None:
        raw = self.section("outcomes", [])
        if raw is None:
            return None
        roots: Roots = {"status": None, "headers": None, "body": None, "entity": columns}
        rules: list[spec.OutcomeRule] = []
        names: dict[str, int] = {}
        for i, rule in enumerate(raw):
            path = ("outcomes", i)
            if not self.usable(path):
                continue
            name = rule.get("name", f"rule {i + 1}")
            if "name" in rule and names.setdefault(name, i) != i:
                self.add((*path, "name"), f"duplicate rule name '{name}' (also outcomes[{names[name]}])")
            when = self.expression((*path, "when"), rule["when"], roots)
            extra: dict[str, JSON] = {k: rule[k] for k in ("stamp",) if k in rule}
            if "message" in rule:
                extra["message"] = self.message((*path, "message"), rule["message"], roots)
            if "duration" in rule:
                extra["duration"] = self.duration((*path, "duration"), rule["duration"], positive=True)
            extra["set"] = self.assignments((*path, "set"), rule.get("set", {}), roots)
            if when is not None:
                rules.append(spec.OutcomeRule(name=name, when=when, outcome=spec.Outcome(rule["outcome"]), **extra))
        return (*rules, *DEFAULT_OUTCOMES)

    def message(self, path: Path_, text: str, roots: Roots) -> spec.MessageTemplate | None:
        try:
            parts = split_message(text)
        except ValueError as error:
            self.add(path, str(error))
            return None
        compiled = [self.expression(path, part, roots) if is_expression else part for is_expression, part in parts]
        if any(part is None for part in compiled):
            return None
        return spec.MessageTemplate(text=text, parts=tuple(cast(list[str | Expression], compiled)))
