"""exprcheck: load-time checks of JMESPath text, over every kind of syntax jmespath parses."""

from __future__ import annotations

import pytest

from runner.exprcheck import compile_checked
from runner.expressions import MAX_EXPRESSION_LENGTH, MAX_NESTING

ROOTS = {"body": None, "status": None}


@pytest.mark.parametrize(
    ("text", "data", "result"),
    [
        ("body[0:2]", {"body": [1, 2, 3]}, [1, 2]),
        ("body[::-1]", {"body": [1, 2, 3]}, [3, 2, 1]),
        ("body[:1] | [0]", {"body": [7, 8]}, 7),
        ("sort_by(body, &a)[0:1].a", {"body": [{"a": 2}, {"a": 1}]}, [1]),
        ("body[0:1] == `[1]` && status == `200`", {"body": [1], "status": 200}, True),
        ("body.*[0:1]", {"body": {"x": [1, 2]}}, [[1]]),
        ("{first: body[0], rest: body[1:]}", {"body": [1, 2]}, {"first": 1, "rest": [2]}),
    ],
)
def test_every_syntax_compiles_and_runs(text: str, data: object, result: object) -> None:
    """Slices (whose parsed children are numbers, not nodes), projections, multi-selects: compiled,
    checked and evaluated like jmespath does — they once made the loader crash."""
    expression, messages = compile_checked(text, ROOTS)
    assert messages == []
    assert expression is not None
    assert expression.search(data) == result


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("(" * 49 + "body" + ")" * 49, f"nested more than {MAX_NESTING} levels deep"),
        ("!" * 49 + "body", f"nested more than {MAX_NESTING} levels deep"),
        ("body" + "[*].a" * 49, f"nested more than {MAX_NESTING} levels deep"),
        (" || ".join(["body"] * 50), f"nested more than {MAX_NESTING} levels deep"),
        ("`" + "[" * 49 + "]" * 49 + "`", f"nested more than {MAX_NESTING} levels deep"),
        ("b" * (MAX_EXPRESSION_LENGTH + 1), f"longer than {MAX_EXPRESSION_LENGTH} characters"),
    ],
)
def test_too_deep_or_long_is_a_message(text: str, message: str) -> None:
    """Nesting jmespath would recurse through (or a tree the evaluator would): a message, not a RecursionError."""
    expression, messages = compile_checked(text, ROOTS)
    assert expression is None
    assert len(messages) == 1
    assert messages[0].endswith(f": {message} — split it into simpler expressions")


@pytest.mark.parametrize(
    "text",
    [
        "(" * 40 + "body" + ")" * 40,
        " || ".join(["body"] * 40),
        "body != status && body != status",  # `!=` and `&&` are operators, not prefixes
        "'((((((((((((((((((((((((((((((((((((((((((((((((((((((('",  # brackets inside a raw string
    ],
)
def test_deep_but_reasonable_is_fine(text: str) -> None:
    """Below the bounds nothing is refused."""
    expression, messages = compile_checked(text, ROOTS)
    assert (expression is not None, messages) == (True, [])
