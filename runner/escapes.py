"""Decoded views of a text, for runner/redaction.py to find a secret whatever escapes an echo chose.

An echo may escape each character of a secret its own way (PHP's `\\/`, .NET's `\\u002F`, HTML's
`&#x2f;`, `%2F`, a UTF-16 body read as Latin-1 with a NUL after each character, a repr's `\\x00`),
mixed at will, so no list of forms covers it. A decoded view reads every escape as the character it
stands for and remembers which original span each character came from: the secret is searched there
and its original spans masked. Escapes of escapes (a JSON string escaped again, percent-encoded JSON)
take another round, up to ROUNDS.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterator
from operator import itemgetter

ROUNDS = 3
ESCAPISH = re.compile(r"[\\&%\x00]")  # text without any of these has no decoded view (and costs nothing)
# Each alternative starts with a literal character, so sre skips to the next `\`, `%`, `&` or NUL.
_ESCAPE = re.compile(
    r"\\(?:u(?P<high>[dD][89abAB][0-9a-fA-F]{2})\\u(?P<low>[dD][c-fC-F][0-9a-fA-F]{2})"  # a surrogate pair
    r"|u(?P<u>[0-9a-fA-F]{4})|U(?P<U>[0-9a-fA-F]{8})"
    r"|(?P<x>x[0-9a-fA-F]{2}(?:\\x[0-9a-fA-F]{2})*)"  # runs of bytes: UTF-8 sequences make one character
    # JSON's letters, YAML's \0 and the punctuation escaped by JSON, PHP, YAML, repr and Markdown; not
    # `\` before any character: `\&#65;` is a bare `\` then an HTML escape, not an escaped `&`.
    r"|(?P<char>[bfnrt]|0(?![0-7])|[\\/\"'| ]))"
    r"|%(?P<percent>[0-9a-fA-F]{2}(?:%[0-9a-fA-F]{2})*)"
    r"|&(?:#(?:[xX](?P<hex>[0-9a-fA-F]{1,8})|(?P<decimal>[0-9]{1,8}));?|(?P<entity>[A-Za-z][A-Za-z0-9]{1,31};))"
    r"|\x00\x00*"
)
_LETTERS = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "0": ""}


class View:
    """A decoding of a text: `text`, and for each of its characters the span of the text it came from.

    Only escapes are recorded, as (where its characters start in `text`, how many there are, start and
    end of the escape in the text decoded); characters between escapes were copied, so their origin
    follows from the escape before them. Text with few escapes costs little."""

    __slots__ = ("_escapes", "text")

    def __init__(self, text: str, escapes: list[tuple[int, int, int, int]]) -> None:
        self.text, self._escapes = text, escapes

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The span of the decoded text that view characters start:end (end > start) came from."""
        return self._source(start)[0], self._source(end - 1)[1]

    def _source(self, index: int) -> tuple[int, int]:
        k = bisect_right(self._escapes, index, key=itemgetter(0)) - 1
        if k < 0:
            return index, index + 1
        at, size, start, stop = self._escapes[k]
        past = index - at - size  # how far past escape k (negative: inside it)
        return (start, stop) if past < 0 else (stop + past, stop + past + 1)


def views(text: str) -> list[str]:
    """`text` and each of its decodings (what a reader of any escape style sees): tests check these."""
    return [text, *(view.text for view in decodings(text))]


def decodings(text: str) -> Iterator[View]:
    for _ in range(ROUNDS):
        if not ESCAPISH.search(text) or (view := _decode(text)) is None:
            return
        yield view
        text = view.text


def _decode(text: str) -> View | None:
    escapes: list[tuple[int, int, int, int]] = []
    shift = 0  # decoded length minus original length so far

    def decoded(match: re.Match[str]) -> str:
        nonlocal shift
        token = match[0]
        chars = _SIMPLE.get(token)
        if chars is None:
            return _decoded_slowly(match)
        start = match.start()
        escapes.append((start + shift, len(chars), start, start + len(token)))
        shift += len(chars) - len(token)
        return chars

    def _decoded_slowly(match: re.Match[str]) -> str:
        nonlocal shift
        here = match.start() + shift
        pieces = _escaped(match)
        for chars, start, stop in pieces:
            escapes.append((here, len(chars), start, stop))
            here += len(chars)
        joined = "".join(chars for chars, _, _ in pieces)
        if len(pieces) == 1 and len(match[0]) <= 16 and len(_SIMPLE) < _SIMPLE_MAX:  # `\/`, `&amp;` recur
            _SIMPLE[match[0]] = joined
        shift += len(joined) - len(match[0])
        return joined

    result = _ESCAPE.sub(decoded, text)
    return View(result, escapes) if escapes else None


# What escapes already seen stand for (one escape each: a byte run of one character is one too), so
# the next one costs a dict lookup. Bounded; a plain dict is safe to share between threads here.
_SIMPLE: dict[str, str] = {}
_SIMPLE_MAX = 4096


def _escaped(match: re.Match[str]) -> list[tuple[str, int, int]]:
    """What one escape (or run of byte escapes) stands for: (characters, start, end) pieces; NULs dropped
    (a UTF-16 body read as Latin-1 has one between every two characters)."""
    start, stop = match.span()
    group = match.lastgroup
    if group == "char":
        char = match["char"]
        return [(_LETTERS.get(char, char), start, stop)]
    if group in ("x", "percent"):
        return _utf8(match[0], start, 4 if group == "x" else 3)
    if group == "high":
        pair = (int(match["high"], 16) - 0xD800) * 0x400 + int(match["low"], 16) - 0xDC00 + 0x10000
        return [(chr(pair), start, stop)]
    if group == "entity":
        # imported here: its 2,231 names cost every start ~1.5 ms (7M instructions), and few texts have one
        from html.entities import html5

        return [(html5.get(match["entity"], match[0]), start, stop)]
    if group is None:  # NULs
        return [("", start, stop)]
    number = int(match[group], 10 if group == "decimal" else 16)
    return [(chr(number).replace("\x00", "") if number <= 0x10FFFF else match[0], start, stop)]


def _utf8(run: str, start: int, width: int) -> list[tuple[str, int, int]]:
    """A run of byte escapes (`%C3%A9`, `\\xc3\\xa9`): a valid UTF-8 sequence is one character, any
    other byte the Latin-1 character of its value (a str repr's `\\xe9` is é)."""
    values = [int(run[i + width - 2 : i + width], 16) for i in range(0, len(run), width)]
    out: list[tuple[str, int, int]] = []
    i = 0
    while i < len(values):
        lead = values[i]
        length = 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else 4 if 0xF0 <= lead <= 0xF4 else 1
        char = chr(lead)
        if length > 1:
            try:
                char = bytes(values[i : i + length]).decode()
            except UnicodeDecodeError:
                length = 1
        out.append((char.replace("\x00", ""), start + i * width, start + (i + length) * width))
        i += length
    return out
