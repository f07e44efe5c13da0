"""runner/body.py: the bounded decoder and the strict JSON parser, byte by byte. What `client.send`
does with them over the wire (caps, codings, bombs) is tests/test_client.py's."""

from __future__ import annotations

import gzip
import json
import random
import time
import zlib

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from runner import body as reader
from runner.expressions import Expression
from runner.jsontext import _depth
from tests.pg import Database


def test_headers_are_joined_once_with_lower_case_names() -> None:
    headers = httpx.Headers([("X-Two", "1"), ("x-two", "2"), ("Content-Type", "application/json")])
    assert reader.joined(headers) == {"x-two": "1, 2", "content-type": "application/json"}
    assert reader.joined(headers) == {name: ", ".join(headers.get_list(name)) for name in headers}


@pytest.mark.parametrize("coding", ["gzip, deflate", "GZIP,deflate", " x-gzip ,  ", "identity, gzip"])
def test_the_decoder_reads_the_joined_header_as_httpx_splits_it(coding: str) -> None:
    split = [
        c.strip().lower()
        for c in httpx.Headers({"Content-Encoding": coding}).get_list("content-encoding", split_commas=True)
    ]
    expected = [c for c in split if c not in ("", "identity")]
    assert reader._Decoder(coding, limit=10).codings == (", ".join(expected) or "identity")


# --- hostile bodies: JSON ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"[" * 2000 + b"]" * 2000, "JSON nested deeper than 128 levels"),
        (b'{"a":' * 129 + b"1" + b"}" * 129, "JSON nested 129 levels deep, more than 128"),
        (b'{"a": NaN}', "unusable JSON: NaN is not a JSON number"),
        (b"[-Infinity]", "unusable JSON: -Infinity is not a JSON number"),
        (b'{"a": 1e999}', "unusable JSON: the number 1e999 is out of range for a double"),
        (b"9" * 100_000, "unusable JSON: a number has more digits than Python converts (4,300)"),
        (b'{"a": "\\ud800"}', "unusable JSON: a string holds a lone UTF-16 surrogate"),
        (b'{"\\udc00": 1}', "unusable JSON: a string holds a lone UTF-16 surrogate"),
        (b'{"a": "\xff"}', "not valid UTF-8 at byte 7: invalid start byte"),
        (b'{"a": "\xed\xa0\x80"}', "not valid UTF-8 at byte 7"),  # an encoded surrogate
        (b'{"a": ', "not valid JSON: Expecting value: line 1 column 7 (char 6)"),
        (b'{"a": 1} {"b": 2}', "not valid JSON: Extra data"),
    ],
)
def test_hostile_json_is_not_json_and_says_why(body: bytes, problem: str) -> None:
    """Each arrives as body None with a `problem` naming what was wrong (describe() quotes it), so a
    success rule's mapping fails that entity definitively; nothing raises (RecursionError exited 70)."""
    value, said = reader.parse_json(body, "application/json")
    assert value is None
    assert said.startswith(problem), said


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b"[" * 128 + b"]" * 128, eval("[" * 127 + "[]" + "]" * 127)),  # at the limit
        (b'{"a": "\\ud83d\\ude00"}', {"a": "\U0001f600"}),  # a surrogate *pair* is fine
        (b'\xef\xbb\xbf{"a": 1}', {"a": 1}),  # UTF-8 BOM
        ('{"a": "\u00e9"}'.encode("utf-16"), {"a": "\u00e9"}),  # UTF-16 with BOM (RFC 8259 detection)
        ('{"a": 1}'.encode("utf-32-le"), {"a": 1}),
        (b'{"a": 1, "a": 2}', {"a": 2}),  # duplicate keys: the last wins, as in jsonb
        (b'"' + b"x" * 1_000_000 + b'"', "x" * 1_000_000),  # a bare huge string
        (b"[" + b"1," * 100_000 + b"1]", [1] * 100_001),  # wide is fine
        (b"1e308", 1e308),
        (b"9" * 4300, int("9" * 4300)),
    ],
)
def test_legitimate_json_edge_cases_parse(body: bytes, value: object) -> None:
    assert reader.parse_json(body) == (value, "")


def test_html_is_not_json_without_a_problem() -> None:
    """A page that never claimed to be JSON is just not JSON: describe() quotes it without a parse error."""
    assert reader.parse_json(b"<html>oops</html>", "text/html") == (None, "")


def test_json_at_the_depth_limit_survives_everything_downstream(db: Database) -> None:
    """A body nested MAX_DEPTH deep is accepted, so everything that recurses over it later must cope, even
    from a call stack 300 frames deep: JMESPath (to_json, ==, sort), json.dumps, psycopg's Jsonb, and
    PostgreSQL's jsonb input and output."""
    text = '{"a":' * (reader.MAX_DEPTH - 1) + "[1]" + "}" * (reader.MAX_DEPTH - 1)
    value, problem = reader.parse_json(text.encode())
    assert problem == ""
    db.run("create table deep (doc jsonb)")

    def downstream(frames: int) -> None:
        if frames:
            return downstream(frames - 1)
        context = {"body": value, "other": value}
        assert Expression.compile("to_json(body)").search(context) == text.replace(" ", "")
        assert Expression.compile("body == other").search(context) is True
        assert json.loads(json.dumps(value)) == value
        with db.conn.transaction():
            db.conn.execute("insert into deep values (%s)", (Jsonb(value),))
        assert db.scalar("select doc from deep") == value

    downstream(300)


# --- fuzzing: no bytes make the decoder or the parser raise anything but their own error ---------------
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)


def _mangle(data: bytes, cuts: list[int], noise: bytes) -> bytes:
    """`data` with bytes dropped or replaced at `cuts`: truncations, flipped bits, garbage."""
    out = bytearray(data)
    for cut in cuts:
        if out:
            out[cut % len(out)] ^= noise[0] if noise else 0xFF
    return bytes(out[: len(out) - (len(noise) % 7)]) + noise


@settings(max_examples=500, deadline=None)
@given(
    value=_JSONISH,
    coding=st.sampled_from(["gzip", "deflate", "gzip, gzip", "identity", "x-gzip, deflate", "br", ""]),
    cuts=st.lists(st.integers(0, 10_000), max_size=3),
    noise=st.binary(max_size=8),
    chunk=st.integers(1, 64),
)
def test_no_body_makes_decoding_or_parsing_raise(
    value: object, coding: str, cuts: list[int], noise: bytes, chunk: int
) -> None:
    """Valid JSON, encoded, then mangled and fed in arbitrary chunks: the decoder raises only _BadBody,
    parse_json never raises, and an untouched body round-trips."""
    data = json.dumps(value).encode()
    for layer in [c.strip() for c in coding.split(",") if c.strip() not in ("", "identity", "br")]:
        data = gzip.compress(data) if layer in ("gzip", "x-gzip") else zlib.compress(data)
    for raw in (data, _mangle(data, cuts, noise)):
        decoded = bytearray()
        try:
            decoder = reader._Decoder(coding, limit=1_000_000)
            for offset in range(0, len(raw), chunk):
                for piece in decoder.feed(raw[offset : offset + chunk]):
                    decoded += piece
            decoder.finish()
        except reader._BadBody:
            assert coding == "br" or raw is not data
            continue
        parsed, problem = reader.parse_json(bytes(decoded))
        assert isinstance(problem, str)
        if raw is data and coding != "br":
            assert (parsed, problem) == (value, "")


@settings(max_examples=500, deadline=None)
@given(
    raw=st.binary(max_size=300) | st.text(alphabet='[]{}",:0123456789.eE+-\\u tnrfalsN', max_size=300).map(str.encode)
)
def test_parse_json_never_raises(raw: bytes) -> None:
    value, problem = reader.parse_json(raw)
    assert value is None or problem == ""


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ("[]", 1),
        ("{}", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('[[], [[{}]], "[[[[[["]', 4),
        ("[" * 300 + "]" * 300, 300),
    ],
)
def test_nesting_is_measured_on_the_decoded_value(text: str, depth: int) -> None:
    """Brackets inside strings do not count; empty containers do."""
    assert _depth(json.loads(text)) == depth


# --- gzip members (review11 F4) -----------------------------------------------------------------------------
def _decode(coding: str, raw: bytes, chunk: int, limit: int = 20_000_000) -> bytes:
    decoder, decoded = reader._Decoder(coding, limit=limit), bytearray()
    for offset in range(0, len(raw), chunk):
        for piece in decoder.feed(raw[offset : offset + chunk]):
            decoded += piece
    decoder.finish()
    return bytes(decoded)


def test_many_empty_gzip_members_are_refused_after_little_work() -> None:
    """9.9 MB of empty gzip members (495,000 of them) in one chunk cost ~7.5 s of CPU, quadratic in the
    chunk (each member's end copied the rest of it): now the body is refused at MAX_MEMBERS, in a few ms
    (the bound below is ~100x the time measured on a loaded 2-CPU machine)."""
    body = gzip.compress(b"", 9) * 495_000
    started = time.process_time()
    with pytest.raises(reader._BadBody, match="more than 1,000 gzip members"):
        _decode("gzip", body, len(body))
    assert time.process_time() - started < 1.0


@pytest.mark.parametrize("chunk", [7, 4096, 10_000_000])
def test_gzip_members_up_to_the_bound_decode_whole_and_in_order(chunk: int) -> None:
    parts = [json.dumps({"n": n}).encode() for n in range(reader.MAX_MEMBERS)]
    body = b"".join(gzip.compress(part) for part in parts)
    assert _decode("gzip", body, chunk) == b"".join(parts)


def test_a_large_chunk_of_one_member_decodes_in_slices() -> None:
    """A 1 MB compressed chunk (incompressible data) goes to zlib in _STEP slices, with the same result."""
    data = random.Random(7).randbytes(1_000_000) + b"\0" * 3_000_000
    assert _decode("gzip", gzip.compress(data), 10_000_000) == data
    assert _decode("deflate", zlib.compress(data), 10_000_000) == data
