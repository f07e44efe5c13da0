"""Long runs of what a decoded view drops, shortened before runner/redaction.py searches a long text a
window at a time.

A decoded view (runner/escapes.py) drops NULs, raw or escaped (`\\u0000`, `\\x00`, `%00`, `&#0;`, `\\0`,
and those escaped once more), so a secret whose characters are kept apart by 35,000 of them reads
whole there, and a search of the whole text masks it; but each of its pieces then spans more than a
window and its margin of the raw text, and no window would find it (review revN F2). So each run of
them longer than LONGEST characters is searched as its first and last tokens only (at most KEEP
characters each), and what a search finds there is mapped back to the text: a match that reached
across a shortened run masks all of it. Between two characters a view keeps, at most LONGEST
characters of the searched text remain, which the window's margin covers (redaction's _STRETCH per
character of the longest piece).

Only texts that hold such a run pay: a copy of the text without them (at most its size, dropped once
the search is done) and two integers per run.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator

LONGEST = 32  # a run of dropped tokens longer than this many characters is shortened ...
KEEP = 12  # ... to its first and last tokens, this many characters each at most

# One token a decoded view reads as nothing, in up to runner/escapes.py's ROUNDS rounds: a NUL, its
# escapes (JSON/YAML/repr, percent, HTML numeric), and those escaped once more (JSON's `\\\\u0000`,
# a percent-encoded `%5Cu0000` or `%2500`, an HTML-escaped `&amp;#0;`).
_TOKEN = (
    r"\x00|\\(?:\\|%5[cC])?(?:u0000|U00000000|x00|0(?![0-7]))|%5[cC](?:u0000|x00)|%(?:25){0,2}00"
    r"|&(?:amp;){0,2}#(?:[xX]0{1,8}|0{1,8});?"
)
# One token then more (not `{2,}`: sre skips ahead on the first token's first characters only then, 6×
# faster), at most _PART at a time: sre keeps a mark per repetition (a 7 MB run took 57× its size).
_PART = 256
_RUN = re.compile(rf"(?:{_TOKEN})(?:{_TOKEN}){{1,{_PART}}}")
_ONE = re.compile(_TOKEN)
Span = tuple[int, int]


class Gaps:
    """`text` with its long dropped runs shortened (`text`), and the way back (`origins`)."""

    __slots__ = ("_at", "_removed", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._at = array("q")  # where, in the shortened text, each cut was made ...
        self._removed = array("q")  # ... and how many characters were cut there and before
        if "\x00" not in text and "0" not in text:  # every token holds one: nothing to shorten
            return
        kept: list[str] = []
        last = removed = 0
        for first, final in _runs(text):
            head, tail = _cut(text, first, final)
            if head >= tail:
                continue
            kept.append(text[last:head])
            last = tail
            removed += tail - head
            self._at.append(head - (removed - (tail - head)))
            self._removed.append(removed)
        if kept:
            kept.append(text[last:])
            self.text = "".join(kept)

    def origins(self, spans: Iterable[tuple[int, int]]) -> Iterator[tuple[int, int]]:
        """Spans of the shortened text as spans of the original (one that reaches across a cut covers
        what was cut); in order if they were."""
        if not self._at:
            yield from spans
            return
        for start, end in spans:
            yield self._origin(start), self._origin(end - 1) + 1

    def _origin(self, index: int) -> int:
        k = bisect_right(self._at, index) - 1
        return index if k < 0 else index + self._removed[k]


def _runs(text: str) -> Iterator[tuple[Span, Span]]:
    """The runs of dropped tokens longer than LONGEST characters, each as (its first part, its last):
    the spans of the first and last _PART tokens, which is all `_cut` reads."""
    first: Span | None = None
    final: Span | None = None
    for part in _RUN.finditer(text):
        if final is not None and part.start() == final[1]:  # the run goes on
            final = part.span()
            continue
        if first is not None and final is not None and final[1] - first[0] > LONGEST:
            yield first, final
        first = final = part.span()
    if first is not None and final is not None and final[1] - first[0] > LONGEST:
        yield first, final


def _cut(text: str, first: Span, final: Span) -> Span:
    """Where to cut a run: after its first tokens and before its last, KEEP characters of them at
    most each side (at least one token), on the tokens' own boundaries."""
    start, end = first[0], final[1]
    head = next(_ONE.finditer(text, start, end)).end()
    for token in _ONE.finditer(text, start, first[1]):
        if token.end() - start > KEEP:
            break
        head = token.end()
    starts = [token.start() for token in _ONE.finditer(text, final[0], end)]
    tail = next((at for at in starts if end - at <= KEEP), starts[-1])
    return head, tail
