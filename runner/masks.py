"""Laying masks onto a text for runner/redaction.py: the stretches to mask, merged, each kept from
cutting an escape in two or eating a JSON string's own quote, written as `***`.

A mask never cuts an escape in two (`_unsplit`): a piece that ends or starts inside an escape that is
not the secret's (`abcdefg\\` of a secret's `abcdefg\\"`, before a body's `\\n`) stops short of it, so
a redacted JSON body is still JSON and a URL still percent-encoded (a cassette replays). Nor does it
swallow a bare `"` (one no `\\` escapes) in a text that is a JSON document (it starts with `{` or
`[`, after space or a UTF-8 BOM): there it is a string's own quote, which a secret
can only meet by chance (a secret holding `"` is echoed as `\\"` or `\\u0022`): a secret ending in
`>"` whose start ends a string (`"…e%h\\n>"]`) matches up to and with that quote, and masking it whole
left the string unterminated. The quote stays, each side of it masked (`***"`), so at most the quote
survives of the secret there, never a longer piece; what lies between two such quotes, or between one
and the stretch's end, stays too if it is JSON's own punctuation and space and short enough (`", "`,
`": "`: fewer than FRAGMENT characters with the quotes), so a secret that happens to read as the end
of one string and the start of the next leaves both strings and the document's structure standing.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable

from runner.fragments import FRAGMENT

MASK = "***"

# One escape of any style, as a mask must not cut it: JSON's, repr's and YAML's backslash escapes (as
# runner/escapes.py reads them), a percent-encoded byte, an HTML entity (the longest: `&`, 32 more, `;`).
_UNIT = re.compile(
    r"\\(?:u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|[bfnrtv0\\/\"' |])|%[0-9a-fA-F]{2}"
    r"|&(?:#[xX][0-9a-fA-F]{1,8};?|#[0-9]{1,8};?|[A-Za-z][A-Za-z0-9]{1,31};)",
)
_UNIT_LONGEST = 34
_UNIT_START = re.compile(r"[\\%&]")
_RUN_LONGEST = 256  # backslashes counted back for parity: past that, a wrong guess costs one escape
REACH = _UNIT_LONGEST + _RUN_LONGEST  # how far around a stretch's ends `unsplit` reads the text


def gather(stretches: array[int], spans: Iterable[tuple[int, int]]) -> None:
    """Add `spans` (each starting at or after the one before) to `stretches` (flat: start, end, start,
    …), overlapping and touching ones merged as they come. Flat, since a body echoing a secret 20,000
    times has 20,000 of them: 16 bytes each, not a tuple of two ints (~120)."""
    for start, end in spans:
        if stretches and start <= stretches[-1]:
            stretches[-2] = min(stretches[-2], start)
            stretches[-1] = max(stretches[-1], end)
        else:
            stretches.append(start)
            stretches.append(end)


def runs(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans in order of their start, overlapping and touching ones merged as they come: a secret
    echoed 20,000 times matches as 20,000 stretches, not once per piece (22 each for 29 characters)."""
    out: list[tuple[int, int]] = []
    for start, end in spans:
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def unsplit_all(text: str, stretches: array[int]) -> array[int]:
    """Every stretch made not to cut an escape in two (`unsplit`), merged again where they now touch."""
    out = array("q")
    gather(out, (unsplit(text, stretches[i], stretches[i + 1]) for i in range(0, len(stretches), 2)))
    return out


def masked(text: str, stretches: array[int]) -> str:
    """`text` with these stretches (flat, merged, in order) masked, a bare `"` inside one kept if the
    text is a JSON document (see above). Joined a batch at a time: a piece between masks costs ~50
    bytes more than its characters."""
    if not stretches:
        return text
    document = _DOCUMENT.match(text) is not None
    batches: list[str] = []
    out: list[str] = []
    last = 0
    for i in range(0, len(stretches), 2):
        start, end = stretches[i], stretches[i + 1]
        out.append(text[last:start])
        quote, kept = text.find('"', start, end) if document else -1, False
        while quote != -1:
            if _escapes_nothing(text, quote):  # a bare quote: the document's, kept
                out += [_segment(text, start, quote), '"']
                start, kept = quote + 1, True
            quote = text.find('"', quote + 1, end)
        if end > start:
            out.append(_segment(text, start, end) if kept else MASK)
        last = end
        if len(out) >= _BATCH:
            batches.append("".join(out))
            out.clear()
    out.append(text[last:])
    batches.append("".join(out))
    del out
    return batches[0] if len(batches) == 1 else "".join(batches)


_BATCH = 1024
# A JSON body (a cassette's, a mapped JSON value's), not a log line; a UTF-8 BOM before it too, as
# runner/body.py's parse_json accepts one (review revN F4: a recorded BOM-prefixed body lost a quote).
_DOCUMENT = re.compile(r"\ufeff?\s*[\[{]")
# What may stand between a JSON string's quote and the next one's: kept, short enough that with the
# quotes it is fewer than FRAGMENT characters (a secret holding `", "` keeps no piece of itself).
_BETWEEN = re.compile(rf"[\s,:\[\]{{}}]{{0,{FRAGMENT - 3}}}")


def _segment(text: str, start: int, end: int) -> str:
    """The masked part of a stretch next to a kept quote: the document's own structure if that is all
    it is (`, ` between two strings, the space before a value's quote), else the mask."""
    return text[start:end] if _BETWEEN.fullmatch(text, start, end) else MASK


def unsplit(text: str, start: int, end: int) -> tuple[int, int]:
    """A masked stretch made not to cut an escape in two: a piece of a secret's escaped form ends inside
    an escape that is not the secret's (`abcdefg\\` of `abcdefg\\"` before a `\\n`), and masking half of
    it would leave an orphan (`***n`, a `\\***` that is no JSON). The stretch shrinks to the escapes it
    holds whole, which leaves fewer than FRAGMENT of the secret's characters at each end: where the cut
    escape holds FRAGMENT or more of them (a secret ending in a literal `\\U0001F6` before a body's
    `\\U0001F600`), the stretch grows to the whole escape instead, as does a stretch within one escape."""
    head, tail = _unit_around(text, start), _unit_around(text, end)
    low = start if head is None else head[0] if head[1] - start >= FRAGMENT else head[1]
    high = end if tail is None else tail[1] if end - tail[0] >= FRAGMENT else tail[0]
    if low < high:
        return low, high
    return head[0] if head else start, tail[1] if tail else end


def _unit_around(text: str, at: int) -> tuple[int, int] | None:
    """The escape that position `at` falls strictly inside of, if any."""
    starts = [m.start() for m in _UNIT_START.finditer(text, max(0, at - _UNIT_LONGEST + 1), at)]
    for start in reversed(starts):  # the nearest first (parity skips the second `\` of a `\\`)
        unit = _UNIT.match(text, start)
        if unit is not None and unit.end() > at and _escapes_nothing(text, start):
            return unit.span()
    return None


def _escapes_nothing(text: str, at: int) -> bool:
    """Whether `at` starts an escape rather than being the escaped character (`\\\\` then `n` is two)."""
    before = at
    while before > max(0, at - _RUN_LONGEST) and text[before - 1] == "\\":  # bounded: a hostile run
        before -= 1
    return (at - before) % 2 == 0
