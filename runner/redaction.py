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
  most its first two characters (fewer would mask every word ending in a secret's first letter).

Minimum lengths: fragments need a secret of at least FRAGMENT characters; shorter ones
(MIN_SECRET_LENGTH to FRAGMENT - 1) are masked whole only, since their pieces would be noise (masking
every "ab" would shred every message), and one- or two-character values are not masked at all.
Values added with `fragments=False` (a whole DSN, whose pieces are host names and "postgres") are
masked whole only too. The price of masking pieces: a secret containing a common 8-character word
("postgres") masks that word wherever it appears.

Code that cuts, escapes or reprs external text must redact first (`excerpt` does both in order); the
fragment masking is the net under that rule, not a licence to skip it.

Cost: one regular expression over a trie of all pieces, so redacting is linear in the text. Measured
(`python -m tests.test_redaction`, idle machine): a 40-character token and a DSN password cost 11 µs
per 300-character log line and 42 ms per 1 MB body; ten hostile 48-character secrets 55 µs and 183 ms.
"""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import yaml

MASK = "***"
MIN_SECRET_LENGTH = 3  # masking 1–2 character "secrets" would shred every message
FRAGMENT = 8  # no piece of a secret this long (in any form) reaches an output
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

    def __init__(self, secrets: Iterable[str | None] = (), *, whole: Iterable[str | None] = ()) -> None:
        self._lock = threading.Lock()
        self._pieces: set[str] = set()
        self._heads: set[str] = set()  # the first characters of every form, for a secret cut at a mark
        self._pattern: re.Pattern[str] | None = None
        self.add(*secrets)
        self.add(*whole, fragments=False)

    def add(self, *secrets: str | None, fragments: bool = True) -> None:
        """Mask these values too, in every output from now on (a token fetched mid-run, say)."""
        pieces: set[str] = set()
        heads: set[str] = set()
        for secret in secrets:
            if not secret or len(secret) < MIN_SECRET_LENGTH:
                continue
            for form in forms(secret):
                pieces |= _grams(form) if fragments and len(secret) >= FRAGMENT else {form}
                if fragments:
                    heads |= {form[:k] for k in range(MIN_SECRET_LENGTH, min(FRAGMENT, len(form)))}
        with self._lock:
            if pieces <= self._pieces and heads <= self._heads:
                return
            # New objects, swapped in whole: a thread redacting meanwhile sees the old ones or the new.
            self._pieces = self._pieces | pieces
            self._heads = self._heads | heads
            self._pattern = re.compile(_trie_regex(self._pieces))

    def __call__(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        spans = sorted([*self._matches(pattern, text), *self._cut_heads(text)])
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

    def _cut_heads(self, text: str) -> Iterator[tuple[int, int]]:
        heads = self._heads
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


def _trie_regex(pieces: Iterable[str]) -> str:
    """One regex matching any of `pieces`, longest first at each position: a trie of alternations for
    the many short ones (sre then tries one branch per character), longest-first literals for the rest."""
    short = [piece for piece in pieces if len(piece) <= _TRIE_DEPTH]
    long = sorted((piece for piece in pieces if len(piece) > _TRIE_DEPTH), key=len, reverse=True)
    alternatives = [*map(re.escape, long), _trie(short)] if short else list(map(re.escape, long))
    return "|".join(alternatives)


def _trie(pieces: Iterable[str]) -> str:
    trie: dict[str, Any] = {}
    for piece in pieces:
        node = trie
        for char in piece:
            node = node.setdefault(char, {})
        node[""] = {}
    return _node_regex(trie)


def _node_regex(node: dict[str, Any]) -> str:
    branches = [re.escape(char) + _node_regex(child) for char, child in sorted(node.items()) if char]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if "" in node:  # a piece ends here: take the longer one when it matches (greedy), else stop here
        return f"(?:{body})?" if len(branches) == 1 else body + "?"
    return body
