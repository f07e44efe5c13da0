"""expressions: compiled once, keeping their text; the compiled fast path agrees with jmespath's interpreter."""

from __future__ import annotations

import jmespath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.expressions import Expression
from runner.functions import OPTIONS


def test_expression_keeps_its_text() -> None:
    """Messages quote the expression as written."""
    assert Expression.compile("record.name").text == "record.name"


# --- the compiled fast path agrees with jmespath's interpreter ------------------------------------------

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from([0.0, 1.0, 2.5]) | st.sampled_from(["", "a", "b"]),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2),
    max_leaves=6,
)
_DOCUMENTS = st.dictionaries(st.sampled_from(["a", "b", "status", "body"]), _VALUES, max_size=4)
_FAST_EXPRESSIONS = [
    "a",
    "a.b",
    "body.a.b",
    "status >= `200` && status < `300`",
    "status == `404`",
    "a == b",
    "a != b",
    "a < b",
    "a >= `1`",
    "a == `true`",
    "a == `1`",
    "b != null",
    "a || b",
    "a && b",
    "!a",
    "!(a.b)",
    "!a && (b || `0`)",
    "a == `[1]`",
    'a == `{"a": 1}`',
]


_FUNCTION_EXPRESSIONS = [
    "trim(a)",
    "lower(a)",
    "enum_or(lower(a), ['a', 'b'], 'z')",
    "as_int(a.b)",
    "length(a)",
    "to_string(a)",
    "coalesce(a, b, `1`)",
    "not_null(a, b)",
    "contains(a, 'a')",
    "[a, b]",
    "a | b",
    "@",
    "body | [a, @]",
    "concat(a, '-', to_json(b))",
    "clamp_or_null(a, `0`, b)",  # three typed arguments, checked inline
    "contains(a)",  # the wrong count: jmespath's own arity error
    "b | ['a', `1`]",  # a list of literals over a null, a value
]


def test_the_common_shapes_are_compiled() -> None:
    """Paths, literals, comparisons, logic and function calls skip the interpreter's tree walk;
    projections, indexes and `&expression` arguments do not."""
    assert all(Expression.compile(text).fast is not None for text in _FAST_EXPRESSIONS + _FUNCTION_EXPRESSIONS)
    assert Expression.compile("a[0]").fast is None
    assert Expression.compile("sort_by(a, &b)").fast is None
    assert Expression.compile("length(a[*].b)").fast is None


@settings(max_examples=400, deadline=None)
@given(document=_DOCUMENTS, text=st.sampled_from(_FUNCTION_EXPRESSIONS))
def test_compiled_function_calls_agree_with_the_interpreter(document: dict[str, object], text: str) -> None:
    """With syncrun's functions: the same value, or the same error (a signature's type error)."""
    expression = Expression.compile(text)
    try:
        expected: object = expression.parsed.search(document, options=OPTIONS)
    except Exception as error:  # whatever the interpreter raises, the compiled form must raise too
        with pytest.raises(type(error)):
            expression.search(document)
        return
    actual = expression.search(document)
    assert actual == expected
    assert type(actual) is type(expected)


@settings(max_examples=300, deadline=None)
@given(document=_DOCUMENTS, text=st.sampled_from(_FAST_EXPRESSIONS))
def test_compiled_expressions_agree_with_jmespath(document: dict[str, object], text: str) -> None:
    """Over random documents, the compiled form returns exactly what jmespath's interpreter returns
    (or raises the same kind of error)."""
    expression = Expression.compile(text)
    try:
        expected: object = jmespath.search(text, document)
    except TypeError:
        with pytest.raises(TypeError):
            expression.search(document)
        return
    actual = expression.search(document)
    assert actual == expected
    assert type(actual) is type(expected)
