"""functions: the custom JMESPath functions, each returning null instead of raising on bad input."""

from __future__ import annotations

import contextlib
from pathlib import Path

import jmespath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.expressions import JSON, Expression
from runner.functions import CUSTOM_FUNCTIONS, OPTIONS


def _eval(expression: str, data: JSON = None) -> JSON:
    return Expression.compile(expression).search(data)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Dec 21, 2012", "2012-12-21"),
        ("21 Dec, 2012", "2012-12-21"),
        ("2012-12-21", "2012-12-21"),
        ("December 2012", "2012-12-01"),
        ("Sept 3, 2020", "2020-09-03"),
        ("  Dec  21,   2012 ", "2012-12-21"),
        ("Q2 2021", "2021-04-01"),  # the worker's explicit rules: a quarter's first month, a year's January
        ("Q4 2021", "2021-10-01"),
        ("q1 2020", "2020-01-01"),
        ("2012", "2012-01-01"),
        ("Q5 2021", None),
        ("Q2", None),
        ("20120", None),
        ("Coming soon", None),
        ("Summer 2025", None),
        ("Feb 30, 2025", None),
        ("", None),
        ("Foo 1, 2020", None),
    ],
)
def test_parse_date(text: str, expected: str | None) -> None:
    """Steam release dates become ISO days (a quarter or a bare year by the worker's rules); anything
    else that names no real day is null, never a guess."""
    assert _eval("parse_date(@)", text) == expected


def test_parse_date_of_non_text_is_null() -> None:
    """A number or null is not a date."""
    assert _eval("parse_date(@)", 20121221) is None
    assert _eval("parse_date(@)", None) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("42", 42),
        (42.0, 42),
        ("1,234", 1234),
        (" -7 ", -7),
        ("3.0", 3),
        (3.5, None),
        ("x", None),
        (True, None),
        (None, None),
    ],
)
def test_as_int(value: JSON, expected: int | None) -> None:
    """as_int takes ints, whole floats and numeric text (with thousands commas); else null."""
    assert _eval("as_int(@)", value) == expected


@pytest.mark.parametrize(("value", "expected"), [("1.5", 1.5), (2, 2.0), ("nan", None), ("inf", None), (False, None)])
def test_as_float(value: JSON, expected: float | None) -> None:
    """as_float takes numbers and numeric text; NaN, infinities and booleans are null."""
    assert _eval("as_float(@)", value) == expected


def test_clamp_or_null() -> None:
    """A value outside [lo, hi] is null, not clamped."""
    assert _eval("clamp_or_null(@, `0`, `50000`)", "1200") == 1200
    assert _eval("clamp_or_null(@, `0`, `50000`)", 50001) is None
    assert _eval("clamp_or_null(@, `0`, `50000`)", "abc") is None


def test_text_functions() -> None:
    """lower, trim and concat pass null through and skip null parts."""
    assert _eval("lower(@)", "GaMe") == "game"
    assert _eval("lower(@)", None) is None
    assert _eval("trim(@)", "  x ") == "x"
    assert _eval("concat(a, `null`, b)", {"a": "x", "b": 1}) == "x1"


def test_coalesce_and_enum_or() -> None:
    """coalesce picks the first non-null; enum_or falls back outside the allowed list."""
    assert _eval("coalesce(a, b, `0`)", {"b": 2}) == 2
    assert _eval("enum_or(@, ['game', 'dlc'], 'game')", "dlc") == "dlc"
    assert _eval("enum_or(@, ['game', 'dlc'], 'game')", "mod") == "game"


def test_unix_times() -> None:
    """Unix seconds and milliseconds become UTC timestamps or dates."""
    assert _eval("from_unix(@)", 0) == "1970-01-01T00:00:00+00:00"
    assert _eval("from_unix_ms(@)", 1500) == "1970-01-01T00:00:01.500000+00:00"
    assert _eval("unix_date(@)", 86400 * 365) == "1971-01-01"
    assert _eval("from_unix(@)", "soon") is None


def test_ranges_and_ints() -> None:
    """SteamSpy owner ranges split into bounds; id lists become sorted positive unique ints."""
    assert _eval("range_low(@)", "0 .. 20,000") == 0
    assert _eval("range_high(@)", "20,000 .. 50,000") == 50000
    assert _eval("range_high(@)", "many") is None
    assert _eval("sorted_ints(@)", [30, "10", 10, -1, "x", 0, 20.0]) == [10, 20, 30]
    assert _eval("sorted_ints(@)", None) == []


def test_arithmetic() -> None:
    """add/sub/mul are null when either side is; max0 and greatest ignore nulls sensibly."""
    assert _eval("add(a, b)", {"a": 1, "b": "2"}) == 3
    assert _eval("sub(a, b)", {"a": 1}) is None
    assert _eval("mul(a, b)", {"a": 2, "b": 1.5}) == 3.0
    assert _eval("max0(sub(a, b))", {"a": 1, "b": 5}) == 0
    assert _eval("greatest(a, b)", {"a": None, "b": 3}) == 3
    assert _eval("greatest(a, b)", {}) is None


def test_misc_functions() -> None:
    """not_, to_json, keys_of, get and hours_between."""
    assert _eval("not_(@)", True) is False
    assert _eval("not_(@)", None) is None
    assert _eval("to_json(@)", {"b": 1, "a": [1]}) == '{"a":[1],"b":1}'
    assert _eval("keys_of(@)", {"730": {}}) == ["730"]
    assert _eval("keys_of(@)", [1]) is None
    assert _eval("get(@, to_string(`730`))", {"730": {"success": True}}) == {"success": True}
    assert _eval("hours_between(a, b)", {"a": "2024-01-01T00:00:00Z", "b": "2024-01-02T06:00:00+00:00"}) == 30.0


def test_every_custom_function_is_tested_here() -> None:
    """Adding a function means adding a test above."""
    source = Path(__file__).read_text()
    tested = {name for name in CUSTOM_FUNCTIONS if f"{name}(" in source}
    assert tested == set(CUSTOM_FUNCTIONS)


@pytest.mark.parametrize(
    ("expression", "value", "expected"),
    [
        ("as_int(@)", "9" * 400 + ".0", None),  # float() of it is infinity; int() of that raised
        ("as_int(@)", "9" * 5000, None),  # int() of over 4300 digits raised
        ("as_int(@)", 2**63, None),
        ("as_int(@)", str(2**63 - 1), 2**63 - 1),
        ("as_int(@)", str(-(2**63)) + ".00", -(2**63)),
        ("as_int(@)", 1e300, None),
        ("as_int(@)", float("nan"), None),
        ("as_float(@)", 10**400, None),  # beyond the float range: OverflowError
        ("as_float(@)", "1e999", None),
        ("from_unix(@)", 1e20, None),  # OverflowError
        ("from_unix(@)", -1e15, None),  # year -31686769: ValueError
        ("from_unix(@)", float("nan"), None),
        ("from_unix_ms(@)", 10**30, None),
        ("unix_date(@)", "253402300800", None),  # year 10000
        ("unix_date(@)", 253402300799, "9999-12-31"),
        ("add(@, @)", 2**62, None),  # 2^63: beyond 64 bits
        ("sub(`0`, @)", 2**62, -(2**62)),
        ("mul(@, @)", 10**3500, None),
        ("mul(@, @)", 1e200, None),  # infinity
        ("add(@, @)", 2**62 - 1, 2**63 - 2),
        ("max0(@)", float("inf"), None),
        ("greatest(@, `1`)", 10**30, 1),  # the huge one counts as no number
        ("clamp_or_null(@, `0`, `10`)", float("nan"), None),
        ("concat('#', @)", 10**4400, None),  # str() of over 4300 digits raised
        ("to_json(@)", 10**4400, None),
        ("to_json(@)", [float("inf")], None),  # NaN / Infinity is not JSON
        ("get(`{}`, @)", 10**4400, None),
        ("hours_between(@, '2024-01-01T00:00:00')", 10**4400, None),
        ("sorted_ints(@)", ["9" * 5000, 2**64, "3"], [3]),
        ("range_high(@)", "1 .. " + "9" * 5000, None),
    ],
    ids=lambda part: part if isinstance(part, str) and len(part) < 45 else type(part).__name__,
)
def test_values_beyond_the_bounds_are_null(expression: str, value: JSON, expected: JSON) -> None:
    """Each function is total: integers beyond 64 bits, NaN, infinity, dates outside years
    1..9999 and text Python cannot write are null (the reported crashes among them)."""
    assert _eval(expression, value) == expected


_HOSTILE_NUMBERS = st.sampled_from(
    [2**63, -(2**63) - 1, 1e308, -1e308, 5e-324, float("nan"), float("inf")]
) | st.sampled_from([4299, -4299, 5000]).map(lambda e: 10 ** abs(e) * (1 if e > 0 else -1))  # repr() of these raises
_HOSTILE_TEXT = st.sampled_from(
    ["9" * 400 + ".0", "9" * 5000, "1e999", "-1e15", "0 .. " + "9" * 4400, "\x00", "\ud800"]
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | _HOSTILE_NUMBERS
    | st.floats()
    | st.text(st.characters(codec=None, categories=None))  # lone surrogates too
    | _HOSTILE_TEXT
)
ANY_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=10,
)


def _arity(name: str) -> list[int]:
    """How many arguments `name` takes (a variadic one: its minimum and one more), from its signature."""
    signature = OPTIONS.custom_functions.FUNCTION_TABLE[name]["signature"]
    return [len(signature), len(signature) + 1] if signature and signature[-1].get("variadic") else [len(signature)]


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(CUSTOM_FUNCTIONS)), arguments=st.lists(ANY_JSON, min_size=3, max_size=3))
def test_no_json_value_makes_a_custom_function_raise(name: str, arguments: list[JSON]) -> None:
    """Any JSON value, in every argument of every custom function: a value or a jmespath error (a
    wrong argument type, which mapping turns into the entity's error), never another exception."""
    for arity in _arity(name):
        text = f"{name}({', '.join(f'@[{i}]' for i in range(arity))})"
        with contextlib.suppress(jmespath.exceptions.JMESPathError):
            _eval(text, arguments)
