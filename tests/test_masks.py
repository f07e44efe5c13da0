"""runner/masks.py: masks laid onto a JSON body keep it JSON, whatever a secret holds."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runner.body import parse_json
from runner.redaction import FRAGMENT, MASK, Redactor
from tests.test_redaction import assert_unreadable

# What JSON escapes (`"`, `\`, control characters), what other escapes start with, non-ASCII.
_CHARS = st.one_of(
    st.sampled_from(list("\"\\/\n\t\x00\x1f'%&#;+ ~<>ux0Aé✓𝄞")),
    st.characters(codec="utf-8", exclude_categories=("Cs",)),
)
_AROUND = st.text(st.sampled_from(list("ab /x0é")), max_size=6)


def _escape_strings(value: object) -> str:
    if isinstance(value, str):
        units = value.encode("utf-16-be", "surrogatepass")
        codes = [int.from_bytes(units[i : i + 2], "big") for i in range(0, len(units), 2)]
        return '"' + "".join(chr(c) if chr(c).isascii() and chr(c).isalnum() else f"\\u{c:04x}" for c in codes) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(map(_escape_strings, value)) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{_escape_strings(k)}: {_escape_strings(v)}" for k, v in value.items()) + "}"


@settings(
    max_examples=int(os.environ.get("REDACTION_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    secret=st.text(_CHARS, min_size=FRAGMENT, max_size=24),
    cuts=st.tuples(st.integers(0, 23), st.integers(1, 24)),
    around=st.tuples(_AROUND, _AROUND),
    style=st.sampled_from(["ascii", "utf-8", "every-char"]),
)
# Found by the fuzzing of revJ's F3 (and again here): a secret whose start is a string's end reads up
# to the document's closing quote; one starting with ` "` reads the space and quote before a value.
@example(secret='e%h\té\n>"g\t', cuts=(0, 7), around=("x", "y"), style="ascii")
@example(secret=" \"a0\x00~g'+fxb'>é<&d", cuts=(2, 24), around=("x", "y"), style="ascii")
@example(secret='abc", "defgh', cuts=(0, 12), around=("", ""), style="utf-8")
@example(secret='x\\"y\\\\z"\\u0022q', cuts=(0, 24), around=("\\", "/"), style="every-char")
def test_a_json_body_stays_json_whatever_the_secret_holds(
    secret: str, cuts: tuple[int, int], around: tuple[str, str], style: str
) -> None:
    """A secret holding `"`, `\\`, control characters or anything else, echoed inside a JSON body as
    an API sends it (escaped as `json.dumps` does, with or without `\\u` for non-ASCII, or with every
    character but letters and digits as `\\uXXXX`), whole, cut, and its start and end in strings of
    their own: the redacted body still parses and reads no FRAGMENT-character piece of the secret."""
    start, stop = sorted(cuts)
    before, after = around
    value = {
        "echo": before + secret + after,
        "piece": before + secret[start : stop + 1] + after,
        "parts": [secret[:start], secret[start:], secret[: stop + 1]],
        secret[:FRAGMENT]: "key",
    }
    if style == "every-char":
        body = _escape_strings(value)
        assert json.loads(body) == value
    else:
        body = json.dumps(value, ensure_ascii=style == "ascii")
    clean = Redactor([secret])(body)
    json.loads(clean)
    assert_unreadable(clean, secret)


@pytest.mark.parametrize("before", ["", "  \n", "\ufeff", "\ufeff \n"])
def test_a_json_body_after_a_bom_or_space_stays_json(before: str) -> None:
    """A body opening with a UTF-8 BOM is a JSON document as runner/body.py's parse_json reads it: a
    bare quote inside a masked stretch is its own and stays (review revN F4: `"e%h\\té\\n>"` then
    `"g\\t"` of a secret read up to the string's closing quote, which was masked: the replay failed)."""
    secret = 'e%h\té\n>"g\t'
    document = json.dumps({"a": "e%h\té\n>", "b": [1, 2]}, ensure_ascii=False)
    clean = Redactor([secret])(before + document)
    value, problem = parse_json(clean.encode())
    assert problem == ""
    assert value == {"a": MASK, "b": [1, 2]}
