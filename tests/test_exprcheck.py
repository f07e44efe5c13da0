"""exprcheck: load-time checks of JMESPath text, over every kind of syntax jmespath parses."""

from __future__ import annotations

import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

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


_TOKENS = st.sampled_from(
    [
        *("body", "status", "a", "entity", ".", "[", "]", "(", ")", "{", "}", ":", ",", "*", "?", "!", "&"),
        *("&&", "||", "|", "==", "!=", "<", ">=", "@", "-1", "0", "::", "`1`", "`[`", '`{"a": [1]}`', "'x'"),
        *('"y"', "sort_by(", "length(", "as_int(", "nope(", "$", " ", "\\", "`", "'", '"', "\n", "\u00e9"),
    ]
)


@settings(
    max_examples=int(os.environ.get("SYNCRUN_FUZZ_EXAMPLES", "1000")),
    derandomize=os.environ.get("CI", "").lower() == "true",
    deadline=None,
)
@given(text=st.lists(_TOKENS, max_size=40).map("".join) | st.text(max_size=60))
@example(text="body[0:1]")  # found: the loader crashed on every slice
@example(text="sort_by(body, &a)[::2]")
@example(text="`" + "[" * 3000 + "`")  # json's recursion inside a literal
def test_fuzz_any_text_is_an_expression_or_messages(text: str) -> None:
    """Whatever the text, compile_checked returns an expression or messages; it never raises."""
    expression, messages = compile_checked(text, ROOTS)
    assert (expression is None) == bool(messages)
    assert all("\n" not in message for message in messages)  # one line: it ends up in `file:line: path: message`
