"""JSON text into a value, strictly: what Python's json lets through and something downstream (JMESPath,
json.dumps, psycopg, jsonb) would choke on is refused. msgspec decodes first (twice the stdlib's speed);
Python's json, with hooks, is the reference and the only source of refusals and their messages."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

from runner.expressions import JSON

MAX_DEPTH = 128  # JSON nesting accepted: far below Python's recursion limit and PostgreSQL's jsonb's
_SURROGATE_ESCAPE, _SURROGATE_ESCAPE_BYTES = re.compile(r"\\u[dD][89a-fA-F]"), re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def parse_json(raw: bytes, content_type: str = "application/json") -> tuple[JSON, str]:
    """(the body as JSON, "") or (None, why not). Strict where Python's json is lenient: no NaN or
    Infinity, no number beyond a double (1e999), no lone surrogate, at most MAX_DEPTH levels; invalid
    bytes in the charset (UTF-8/16/32, detected as RFC 8259 says) are refused, not replaced. Duplicate
    keys: the last wins, as in PostgreSQL's jsonb. A syntax error is only a `problem` for a JSON media
    type: an HTML page is simply not JSON."""
    if not raw.strip():
        return None, ""
    # json.detect_encoding's answer for a body opening an object or array with a non-NUL byte after it
    # (no BOM, not UTF-16/32), without its call and its four prefix checks: UTF-8, msgspec's input
    opening = raw[0]
    if (opening == 0x7B or opening == 0x5B) and raw[1:2] != b"\0":
        fast = _fast(raw)
        return (fast[0], "") if fast is not None else _stdlib(raw, "utf-8", content_type)
    return _stdlib(raw, json.detect_encoding(raw), content_type)


def _stdlib(raw: bytes, encoding: str, content_type: str) -> tuple[JSON, str]:
    """`parse_json` by Python's json: the reference, and every refusal's message."""
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        return None, f"not valid {encoding.removesuffix('-sig').upper()} at byte {exc.start:,}: {exc.reason}"
    try:
        value = _loads(text)
    except RecursionError:
        return None, f"JSON nested deeper than {MAX_DEPTH} levels"
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc}" if "json" in content_type else ""
    except ValueError as exc:  # from the hooks, or int(): more than sys.get_int_max_str_digits() digits
        text_error = str(exc)
        if "integer string conversion" in text_error:
            text_error = "a number has more digits than Python converts (4,300)"
        return None, f"unusable JSON: {text_error}"
    # Nesting cannot pass the number of opening brackets (counted at C speed; most bodies stop here).
    depth = _depth(value) if text.count("[") + text.count("{") > MAX_DEPTH else 0
    if depth > MAX_DEPTH:
        return None, f"JSON nested {depth:,} levels deep, more than {MAX_DEPTH}"
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        return None, "unusable JSON: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text"
    return value, ""


def _fast(raw: bytes) -> tuple[JSON] | None:
    """(`parse_json`'s value,) by msgspec (twice the stdlib's speed with hooks: a fifth of a bulk page's
    event-loop time), or None for the stdlib path to judge (its messages are the only ones). msgspec refuses
    all that refuses (NaN, Infinity, 1e999, 4,301 digits, lone surrogates, control characters) and gives the
    same values (tests/test_jsontext.py compares them); UTF-8, nesting, surrogates are checked as there."""
    global _MSGSPEC
    if _MSGSPEC is None:  # imported at the first body, not at start-up (~4 ms)
        import msgspec.json

        # msgspec < 0.19 read some 20-digit integers past 2**64 as a wrong int64 (review revN F1): one
        # installed despite pyproject's >=0.19 leaves every body to the stdlib path (`_MSGSPEC` refuses)
        fit = tuple(map(int, re.findall(r"\d+", msgspec.__version__)[:2])) >= (0, 19)
        _MSGSPEC = msgspec.json.Decoder().decode if fit else _refuse
    if not raw.isascii():  # invalid UTF-8 is refused exactly as bytes.decode refuses it
        try:
            raw.decode()
        except UnicodeDecodeError:
            return None
    try:
        value = _MSGSPEC(raw)
    except Exception:  # msgspec's DecodeError and ValidationError, RecursionError: the stdlib path says why
        return None
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        return None
    if _SURROGATE_ESCAPE_BYTES.search(raw) and _has_lone_surrogate(value):
        return None
    return (value,)


_MSGSPEC: Callable[[bytes], JSON] | None = None


def _refuse(raw: bytes) -> JSON:
    raise ValueError("no fast decoder")


def _loads(text: str) -> JSON:
    """`json.loads(text, parse_constant=_constant, parse_float=_float)` with the decoder made once:
    json.loads builds a new decoder and scanner on every call with hooks (~5 us of a 17 us parse)."""
    if text.startswith("\ufeff"):  # as json.loads refuses it
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _DECODER.decode(text)


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise ValueError(f"the number {literal[:40]} is out of range for a double")
    return number


def _depth(value: JSON) -> int:
    """The deepest nesting of arrays and objects in a decoded JSON value, level by level (no
    recursion): the containers of each level are gathered from the one above. ~0.3 ms for a
    1,000-record page, where a regex pass over the text (strings removed, brackets counted) cost
    1.2 ms, twice the decoding itself."""
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        depth += 1
        below: list[JSON] = []
        append = below.append
        for item in level:
            for child in item.values() if type(item) is dict else item:
                kind = type(child)  # json.loads and msgspec make exactly these types: no isinstance needed
                if kind is dict or kind is list:
                    append(child)
        level = below
    return depth


def _has_lone_surrogate(value: JSON) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_float)
