"""runner/body.py's fast JSON path (msgspec) against its stdlib path, the reference: for every body,
`parse_json` gives exactly what the stdlib path gives (the same value, types, key order and float
bits; the same refusal and message). Generated JSON texts, numbers, strings and escapes, mangled
texts and raw bytes; what hypothesis once found stays as an @example."""

from __future__ import annotations

import json
import math
import sys
from decimal import Decimal, localcontext
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from runner import jsontext as reader


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same types, key order and float bits (== says 1 == 1.0 == True, 0.0 == -0.0)."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return math.copysign(1.0, a) == math.copysign(1.0, b) and (a == b or (math.isnan(a) and math.isnan(b)))
    if type(a) is dict:
        return list(a) == list(b) and all(_same(a[key], b[key]) for key in a)
    if type(a) is list:
        return len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


def _check(raw: bytes) -> None:
    """parse_json(raw) is the stdlib path's answer; the fast path, when it answers, answers the same."""
    reference = reader._stdlib(raw, json.detect_encoding(raw), "application/json") if raw.strip() else (None, "")
    got = reader.parse_json(raw)
    assert got[1] == reference[1]
    assert _same(got[0], reference[0]), (got, reference)
    if raw[:1] in (b"[", b"{") and raw[1:2] != b"\0":
        fast = reader._fast(raw)
        if fast is not None:
            assert reference[1] == ""
            assert _same(fast[0], reference[0])


# Numbers as JSON writes them, and some it does not (leading zeros, "1.", ".5", "+1"): long mantissas
# (correct rounding past 17 digits), huge and tiny exponents (overflow, underflow to 0.0 and -0.0).
_NUMBER = st.from_regex(r"\A[-+]?(0|[0-9]{1,40})(\.[0-9]{0,40})?([eE][-+]?[0-9]{1,5})?\Z")
_ESCAPE = st.sampled_from(
    ["\\ud800", "\\udc00", "\\udbff\\udfff", "\\ud83d\\ude00", "\\u0000", "\\u001f", "\\/", "\\x", "\\", "\\u12"]
)
_CHAR = st.characters(codec=None, exclude_categories=())  # surrogates included: they fail to encode
_WORDS = ["true", "false", "null", "NaN", "Infinity", "-Infinity", "1e999", "-0", "-0.0"]
_PIECE = _NUMBER | _ESCAPE | st.sampled_from([*'[]{}",: \t\r\n\x0b\x0c\x00\x01\x1f\x7f\u00e9\u2028\ufeff', *_WORDS])
_JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**4299), max_value=10**4299)  # json.dumps writes no more digits
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(_CHAR.filter(lambda c: not 0xD800 <= ord(c) <= 0xDFFF)),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(value=_JSONISH, ascii_only=st.booleans(), spaced=st.booleans())
@example(value={"a": [1, -0.0, 2.5e-324, 1e308, 10**40, -(10**4299)]}, ascii_only=True, spaced=False)
def test_json_texts_parse_the_same_both_ways(value: Any, ascii_only: bool, spaced: bool) -> None:
    text = json.dumps([value], ensure_ascii=ascii_only, indent=1 if spaced else None)
    _check(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=600, deadline=None)
@given(pieces=st.lists(_PIECE | st.text(_CHAR, max_size=3), max_size=20), opening=st.sampled_from(["[", "{", '{"k":']))
@example(pieces=['"', "\\ud800", '"', "]"], opening="[")  # a lone surrogate escape
@example(pieces=['"a', "\x01", '"]'], opening="[")  # a raw control character
@example(pieces=["1e-400", ",", "-1e-400", "]"], opening="[")  # underflow to 0.0 and -0.0
@example(pieces=["1.7976931348623159e308", "]"], opening="[")  # rounds past the largest double
@example(pieces=["2.2250738585072011e-308", "]"], opening="[")
@example(pieces=["0.1000000000000000055511151231257827", "]"], opening="[")
@example(pieces=['"a":1,"b":2,"a":3}'], opening="{")  # duplicate key: last value, first position
@example(pieces=["1", "]", "\x0c"], opening="[")  # whitespace JSON does not know
@example(pieces=["1", "]", "\u00e9"], opening="[")  # trailing data
@example(pieces=["[" * 130, "]" * 130, "]"], opening="[")  # past MAX_DEPTH
@example(pieces=["[" * 126, "]" * 126, "]"], opening="[")  # at MAX_DEPTH
@example(pieces=["[" * 2000, "]" * 2000, "]"], opening="[")  # past the recursion limit
@example(pieces=["9" * 4301, "]"], opening="[")
@example(pieces=["9" * 4300, "]"], opening="[")
def test_mangled_texts_parse_the_same_both_ways(pieces: list[str], opening: str) -> None:
    _check((opening + "".join(pieces)).encode("utf-8", "surrogatepass"))


@settings(max_examples=400, deadline=None)
@given(raw=st.binary(max_size=200), opening=st.sampled_from([b"[", b"{", b'["', b'{"a":"', b""]))
@example(raw=b'"\xed\xa0\x80"]', opening=b"[")  # a surrogate encoded in UTF-8
@example(raw=b'"\xc0\x80"]', opening=b"[")  # an overlong NUL
@example(raw=b'"\xf4\x90\x80\x80"]', opening=b"[")  # past U+10FFFF
@example(raw=b"\x00]", opening=b"[")  # UTF-16: detected, never the fast path
@example(raw=b"\xef\xbb\xbf[1]", opening=b"")  # a UTF-8 BOM
def test_bytes_parse_the_same_both_ways(raw: bytes, opening: bytes) -> None:
    _check(opening + raw)


@pytest.mark.parametrize(
    "raw",
    [
        "[1]".encode("utf-16-le"),
        "[1]".encode("utf-16-be"),
        "[1]".encode("utf-32"),
        "\ufeff[1]".encode(),
        b"[1]\xff",
        b"[\x00]",
        b'[" \x00"]',
        b'{"a": "\\u0000"}',
    ],
)
def test_encodings_and_odd_bytes_parse_the_same_both_ways(raw: bytes) -> None:
    _check(raw)


def test_a_lower_integer_digit_limit_is_kept() -> None:
    """The stdlib path refuses integers past sys.get_int_max_str_digits(); the fast path must not take them."""
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)
    try:
        for digits in (640, 641, 1000):
            _check(b"[" + b"7" * digits + b"]")
    finally:
        sys.set_int_max_str_digits(before)


@settings(max_examples=300, deadline=None)
@given(x=st.floats(min_value=0.0, allow_nan=False, allow_infinity=False), negative=st.booleans())
@example(x=5e-324, negative=False)
@example(x=2.2250738585072014e-308, negative=True)
@example(x=1.7976931348623157e308, negative=False)  # its midpoint to the next rounds to infinity: refused
@example(x=9007199254740993.0, negative=False)
def test_floats_round_the_same_both_ways(x: float, negative: bool) -> None:
    """The hard cases of rounding: a double's exact decimal expansion, and the exact midpoint between it
    and the next double up (ties to even), besides its shortest and long forms."""
    exact = Decimal(x)
    with localcontext(prec=1200):  # a double's expansion has at most 767 significant digits: exact
        midpoint = exact + (Decimal(math.nextafter(x, math.inf)) - exact) / 2
    sign = "-" if negative else ""
    for literal in (repr(x), f"{x:.20e}", f"{x:.30g}", str(exact), f"{midpoint:f}", f"{midpoint:e}"):
        literal = literal.replace("E", "e").replace("e+", "e")
        if "." not in literal and "e" not in literal:
            literal += ".0"
        _check(f"[{sign}{literal}]".encode())


def test_a_msgspec_before_0_19_leaves_every_body_to_the_stdlib_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """msgspec 0.18.x read some 20-digit integers past 2**64 as a wrong int64, and the fast path would
    have taken its answer (review revN F1): pyproject asks for 0.19, and an older one found anyway is
    not used."""
    import msgspec

    raw = b'{"big": -19718315575968634510}'
    monkeypatch.setattr(msgspec, "__version__", "0.18.6")
    monkeypatch.setattr(reader, "_MSGSPEC", None)
    assert reader._fast(raw) is None
    assert reader._MSGSPEC is reader._refuse
    assert reader.parse_json(raw) == ({"big": -19718315575968634510}, "")
