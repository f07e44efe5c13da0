"""Keeping secrets out of every output: logs, errors, job rows, dry-run output, cassettes, summaries.

A `Redactor` knows the secret values of a run (every `${secret.*}`, the DATABASE_URL and Redis
passwords, and whatever `add` is given later, e.g. a token obtained at run time) and replaces with
`***`:

- every occurrence of a secret in any form an output may carry it in: raw; percent-encoded (with
  `+` or `%20` for spaces, `/` kept or not, upper- or lower-case hex, as httpx writes it into a
  URL); JSON-escaped (with and without `\\u` for non-ASCII); Python `repr`/`ascii` escaped (either
  quote style, and as bytes); YAML double- and single-quoted; HTML-escaped; a Markdown table cell;
- every occurrence of any FRAGMENT-character piece of any of those forms, overlaps merged. That is
  what masks a secret that was cut (an 80-byte excerpt ending inside a token), split at a newline or
  re-escaped by code that formats before it redacts: at most FRAGMENT - 1 characters of a secret can
  survive at the edge of a cut made before redaction, never a longer piece;
- the start of a secret (any form, MIN_SECRET_LENGTH to FRAGMENT - 1 characters) right before a cut
  mark (CUT_MARKS: `…` or `...`), so an excerpt that was cut inside a secret *and says so* keeps at
  most its first two characters (fewer would mask every word ending in a secret's first letter);
- the secret, or any FRAGMENT-character piece of it, as a *decoded view* of the text reads it: every
  escape read as the character it stands for (JSON `\\uXXXX` in either case and `\\/ \\" \\\\`,
  `\\xNN` as a repr shows it, HTML numeric and named entities, `%XX` in either case, UTF-8 byte runs as
  one character; NULs, raw or escaped, dropped: a UTF-16 body read as Latin-1), up to ROUNDS times
  over for escapes of escapes, the original span of each match masked. That is what masks an echo
  that escapes each character its own way (PHP's `\\/`, .NET's `\\u002F`, `&#x2f;`), which no list of
  forms can enumerate. Not covered: a UTF-16 body read as Latin-1 turns a character beyond Latin-1
  into two unrelated ones (ž is `~\\x01`), which no view reassembles; such a character breaks the
  secret into pieces that are masked where they are FRAGMENT long.

Minimum lengths: fragments need a secret of at least FRAGMENT characters; shorter ones
(MIN_SECRET_LENGTH to FRAGMENT - 1) are masked whole only, since their pieces would be noise (masking
every "ab" would shred every message), and one- or two-character values are not masked at all.
Values added with `fragments=False` (a whole DSN, whose pieces are host names and "postgres") are
masked whole only too. The price of masking pieces: a secret containing a common 8-character word
("postgres") masks that word wherever it appears.

Code that cuts, escapes or reprs external text must redact first (`excerpt` does both in order); the
fragment masking is the net under that rule, not a licence to skip it.

Run-time values (`add(..., run_time=True)`: OAuth2 tokens, which replace each other all run long)
are masked while recent: the newest RECENT always, older ones until RETAIN seconds after they were
replaced, MAX_RECENT at most. Every output is redacted as it is made, so a token is retired long after
the last text that could hold it; and the pattern, rebuilt at each renewal, stays bounded: adding the
40th 1 KB token took 1.9 s when every token ever seen stayed in it, ~0.3 s with the bound, and the
240th (an 8-hour run with 120-second tokens) costs the same (busy 2-core machine).

Cost: one regular expression over a trie of all pieces, so redacting is linear in the text; a text
without `\\`, `&`, `%` or NUL has no decoded view (one character-class scan). Measured (`python -m
tests.test_redaction`, busy 2-core machine): a 40-character token and a DSN password cost 13 µs per
300-character log line and 48 ms per 1 MB body; with an escape every ~10 characters (JSON-ish), 45 µs
and 155 ms. Ten hostile 48-character secrets: 60 µs and 200 ms; escaped, 185 µs and 540 ms.
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from html.entities import html5
from operator import itemgetter
from typing import Any
from urllib.parse import quote, quote_plus

import yaml

MASK = "***"
MIN_SECRET_LENGTH = 3  # masking 1–2 character "secrets" would shred every message
FRAGMENT = 8  # no piece of a secret this long (in any form) reaches an output
RECENT = 4  # run-time values (tokens) always masked: the one in use and those just before it
RETAIN = 300.0  # seconds an older run-time value stays masked after the next one replaced it...
MAX_RECENT = 8  # ...but at most this many run-time values are masked (see Redactor.add)
CUT_MARKS = re.compile(r"…|\.\.\.")  # how syncrun's excerpts say they were cut

# What a URL may keep unencoded (reserved and unreserved characters): httpx leaves these alone when a
# secret is written into a path or query as-is, and encodes the rest (space, quotes, `\`, non-ASCII).
_URL_KEPT = "!#$%&'()*+,/:;=?@[]~"


def forms(secret: str) -> set[str]:
    """`secret` as every output may write it (see the module docstring); the raw value included."""
    found = {secret, html.escape(secret), secret.replace("'", "''"), _markdown_cell(secret)}
    for safe in ("", "/", _URL_KEPT):
        found |= _hex_cases(quote(secret, safe=safe))
        found |= _hex_cases(quote_plus(secret, safe=safe))
    found |= {json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    for text in (repr(secret + "'\""), ascii(secret + "'\"")):  # forces '…' quoting, with \' inside
        body = text[1:-3]
        found |= {body, body.replace("\\'", "'")}  # `"…"` quoting (a secret with ' and no ") leaves ' bare
    found.add(repr(secret.encode())[2:-1])
    for unicode in (True, False):
        dumped = yaml.safe_dump(secret, default_style='"', width=2**31 - 1, allow_unicode=unicode)
        found.add(dumped.strip().removeprefix('"').removesuffix('"'))
    return {form for form in found if form}


def _hex_cases(encoded: str) -> set[str]:
    return {encoded, re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), encoded)}


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


class Redactor:
    """Masks the secrets it was given (and those `add`ed later) in any text: `redact(text)`."""

    def __init__(
        self,
        secrets: Iterable[str | None] = (),
        *,
        whole: Iterable[str | None] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._pieces: set[str] = set()  # configured secrets' pieces (every form), kept for the whole run
        self._heads: set[str] = set()  # the first characters of every form, for a secret cut at a mark
        self._raw: set[str] = set()  # the secrets' own pieces, searched in a text's decoded views
        # Run-time values (`add(..., run_time=True)`), newest last: value -> (pieces, heads, raw, added at).
        self._recent: dict[str, tuple[set[str], set[str], set[str], float]] = {}
        self._masked_heads: frozenset[str] = frozenset()  # _heads and the recent values' heads, as used
        self._pattern: re.Pattern[str] | None = None
        self._raw_pattern: re.Pattern[str] | None = None
        self._listeners: list[Callable[[list[str]], None]] = []
        self.clock = clock
        self.add(*secrets)
        self.add(*whole, fragments=False)

    def add(self, *secrets: str | None, fragments: bool = True, run_time: bool = False) -> None:
        """Mask these values too, in every output from now on (a token fetched mid-run, say).

        `run_time`: a value obtained while the run goes (an access token), one of a series that replace
        each other. Only the newest RECENT of them, and older ones for RETAIN seconds after they were
        replaced (MAX_RECENT in all), stay in the pattern: rebuilding it for every token ever seen made
        each renewal slower than the last (2 s for the 40th 1 KB token, blocking the event loop). A
        retired token was replaced long before: no request carries it any more, and what its answers
        said was redacted when it was handled (rows, errors, cassettes and logs are redacted as they
        are made, never later)."""
        if run_time and len(secrets) > 1:  # each one retires on its own
            for secret in secrets:
                self.add(secret, fragments=fragments, run_time=True)
            return
        pieces: set[str] = set()
        heads: set[str] = set()
        raw: set[str] = set()
        for secret in secrets:
            if not secret or len(secret) < MIN_SECRET_LENGTH:
                continue
            cut = fragments and len(secret) >= FRAGMENT
            for form in forms(secret):
                pieces |= _grams(form) if cut else {form}
                if fragments:
                    heads |= {form[:k] for k in range(MIN_SECRET_LENGTH, min(FRAGMENT, len(form)))}
            # The secret as a decoded view reads it: raw, and its own decodings (a secret holding `%41`
            # or `&amp;` reads differently once its neighbours were escaped and the view decodes both).
            for reading in views(secret):
                if len(reading) >= MIN_SECRET_LENGTH:
                    raw |= _grams(reading) if cut else {reading}
        added = [secret for secret in secrets if secret and len(secret) >= MIN_SECRET_LENGTH]
        if not added:
            return
        with self._lock:
            if run_time:
                now = self.clock()
                for secret in added:
                    self._recent.pop(secret, None)  # answered again: the newest once more
                    self._recent[secret] = (pieces, heads, raw, now)
                self._retire(now)
            elif pieces <= self._pieces and heads <= self._heads and raw <= self._raw:
                return
            else:
                self._pieces = self._pieces | pieces
                self._heads = self._heads | heads
                self._raw = self._raw | raw
            # New objects, swapped in whole: a thread redacting meanwhile sees the old ones or the new.
            recent = list(self._recent.values())
            every = self._pieces.union(*(r[0] for r in recent))
            self._masked_heads = frozenset(self._heads.union(*(r[1] for r in recent)))
            readings = self._raw.union(*(r[2] for r in recent))
            self._pattern = re.compile(_trie_regex(every)) if every else None
            self._raw_pattern = re.compile(_trie_regex(readings, loose=True)) if readings else None
            listeners = list(self._listeners)
        for listener in listeners:
            listener(added)

    def _retire(self, now: float) -> None:
        """Drop the oldest run-time values beyond the newest RECENT: each once it was replaced more
        than RETAIN seconds ago (by the next one), or at once beyond MAX_RECENT."""
        while len(self._recent) > RECENT:
            values = list(self._recent.values())
            replaced = values[1][3]  # when the value after the oldest arrived
            if len(values) <= MAX_RECENT and now - replaced < RETAIN:
                return
            del self._recent[next(iter(self._recent))]

    def listen(self, announce: Callable[[list[str]], None]) -> None:
        """Call `announce` with each new value `add`ed from now on, before `add` returns (so before
        anything can print it): GitHub Actions is told to mask a token obtained at run time."""
        with self._lock:
            self._listeners.append(announce)

    def __call__(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        spans = [*self._matches(pattern, text), *self._cut_heads(text)]
        raw_pattern = self._raw_pattern
        if raw_pattern is not None and _ESCAPISH.search(text):
            spans += self._decoded_matches(raw_pattern, text)
        spans.sort()
        if not spans:
            return text
        out: list[str] = []
        last = 0
        for start, end in spans:
            if start > last or not out:  # a new masked stretch; overlapping or touching ones merge
                out += [text[last:start], MASK]
            last = max(last, end)
        out.append(text[last:])
        return "".join(out)

    @staticmethod
    def _matches(pattern: re.Pattern[str], text: str) -> Iterator[tuple[int, int]]:
        # A consuming search (not a lookahead per character) lets sre skip ahead on the first-character
        # set; restarting one past each match start finds the overlapping fragments (merged by the caller).
        position = 0
        while (match := pattern.search(text, position)) is not None:
            yield match.span()
            position = match.start() + 1

    def _decoded_matches(self, pattern: re.Pattern[str], text: str) -> Iterator[tuple[int, int]]:
        # The secret in a decoded view (escapes read as the characters they stand for), masked in the
        # original: whatever mix of escapes an echo chose, per character, reads as the secret there.
        chain: list[_View] = []
        for view in _decodings(text):
            chain.append(view)
            for start, end in [*self._matches(pattern, view.text), *self._cut_heads(view.text)]:
                for link in reversed(chain):
                    start, end = link.span(start, end)
                yield start, end

    def _cut_heads(self, text: str) -> Iterator[tuple[int, int]]:
        heads = self._masked_heads
        if not heads:
            return
        for mark in CUT_MARKS.finditer(text):
            end = mark.start()
            for length in range(min(FRAGMENT - 1, end), MIN_SECRET_LENGTH - 1, -1):
                if text[end - length : end] in heads:
                    yield end - length, end
                    break

    def excerpt(self, text: str, limit: int) -> str:
        """At most `limit` characters of `text`, redacted before it is cut (`…` marks a cut)."""
        clean = self(text)
        return clean if len(clean) <= limit else clean[: max(0, limit - 1)] + "…"

    def value(self, value: Any) -> Any:
        """`value` (JSON-like: dicts, lists, strings, scalars) with every string in it redacted, keys
        included, so it can be dumped or repr'd afterwards without any escaping hiding a secret."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, tuple):  # a plain tuple back (a named tuple cannot be rebuilt from one iterable)
            return tuple(self.value(v) for v in value)
        return value


def _grams(form: str) -> set[str]:
    if len(form) <= FRAGMENT:
        return {form}
    return {form[i : i + FRAGMENT] for i in range(len(form) - FRAGMENT + 1)}


_TRIE_DEPTH = 64  # longer pieces (a whole DSN) are plain alternatives: the trie is built recursively


def _trie_regex(pieces: Iterable[str], *, loose: bool = False) -> str:
    """One regex matching any of `pieces`, longest first at each position: a trie of alternations for
    the many short ones (sre then tries one branch per character), longest-first literals for the rest.
    `loose`: a space matches `+` too (a form-encoded space, which a decoded view cannot decode: `+` is
    also itself)."""
    escape = _loose_escape if loose else re.escape
    short = [piece for piece in pieces if len(piece) <= _TRIE_DEPTH]
    long = sorted((piece for piece in pieces if len(piece) > _TRIE_DEPTH), key=len, reverse=True)
    alternatives = [escape(piece) for piece in long]
    return "|".join([*alternatives, _trie(short, escape)] if short else alternatives)


def _loose_escape(text: str) -> str:
    return "".join("[ +]" if char == " " else re.escape(char) for char in text)


def _trie(pieces: Iterable[str], escape: Callable[[str], str]) -> str:
    trie: dict[str, Any] = {}
    for piece in pieces:
        node = trie
        for char in piece:
            node = node.setdefault(char, {})
        node[""] = {}
    return _node_regex(trie, escape)


def _node_regex(node: dict[str, Any], escape: Callable[[str], str]) -> str:
    branches = [escape(char) + _node_regex(child, escape) for char, child in sorted(node.items()) if char]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if "" in node:  # a piece ends here: take the longer one when it matches (greedy), else stop here
        return f"(?:{body})?" if len(branches) == 1 else body + "?"
    return body


# Decoded views. An echo may escape each character of a secret its own way (PHP's `\/`, .NET's `\u002F`,
# HTML's `&#x2f;`, `%2F`, a UTF-16 body read as Latin-1 with a NUL after each character, a repr's
# `\x00`), mixed at will, so no list of forms covers it. A decoded view reads every escape as the
# character it stands for and remembers which original span each character came from: the secret is
# searched there and its original spans masked. Escapes of escapes (a JSON string escaped again,
# percent-encoded JSON) take another round, up to ROUNDS.

ROUNDS = 3
_ESCAPISH = re.compile(r"[\\&%\x00]")  # text without any of these has no decoded view (and costs nothing)
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


class _View:
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
    return [text, *(view.text for view in _decodings(text))]


def _decodings(text: str) -> Iterator[_View]:
    for _ in range(ROUNDS):
        if not _ESCAPISH.search(text) or (view := _decode(text)) is None:
            return
        yield view
        text = view.text


def _decode(text: str) -> _View | None:
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
    return _View(result, escapes) if escapes else None


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
