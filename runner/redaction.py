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

Base64: a configured secret's standard and URL-safe encodings (of its UTF-8), padded or not, and
the characters that carry only its bits when it starts 0, 1 or 2 bytes into a longer encoded value
(`encodings`), are masked as the secret is (every form, every piece if its pieces are; those shorter
than FRAGMENT characters not at all: a 3-5 character secret's encoding would match base64 noise).
Their pieces go into a runner/fragments.py set of their own, searched in the text (not its decoded
views: their forms hold the escapes a view would read): in the pattern, base64's 64 first characters
made every text cost 2-3×. Not run-time tokens': their encodings' pieces would triple the memory of an
8-hour run's 240 tokens (46 → ~210 MB, `python -m bench.redaction_growth`), and nothing encodes one.

A mask never cuts an escape in two, nor eats a JSON document's own quote (runner/masks.py), so a
redacted JSON body is still JSON and a URL still percent-encoded (a cassette replays).

A long text is searched a window at a time (`__call__`), so what a search builds (decoded views,
their escape maps, every match's span) is bounded by the window, not the text: memory is ~2× the
text (its output), where a 7.8 MB body echoing a secret densely peaked at 1.2 GB searched whole.
Long runs of what a decoded view drops (NULs, `\\u0000`, `%00`) are shortened first (runner/gaps.py),
so a secret they keep apart is found by a window as by a search of the whole text.

Code that cuts, escapes or reprs external text must redact first (`excerpt` does both in order); the
fragment masking is the net under that rule, not a licence to skip it.

Run-time values (`add(..., run_time=True)`: OAuth2 tokens, which replace each other all run long)
stay masked for the whole run, every one of them: an output made late can carry an early token (a
next-page link echoing `access_token=`, the answer to a request sent before several renewals). Their
pieces (of every form, and as a decoded view reads them) go into runner/fragments.py's set instead of
the pattern, so a renewal costs what its own token's pieces cost, not a rebuild of everything seen:
`python -m bench.redaction_growth` (240 1 KB tokens, busy 2-core machine): adding the 240th takes
3 ms (1.9 s for the 40th when each renewal rebuilt a pattern of all; 170 ms when that pattern held
only the newest 8), a 300-character line costs 42 µs as with one token (118 µs with the newest 8 in
the pattern), a 1 MB JSON-ish body 134 ms (242 ms), and the 240 tokens' pieces take ~46 MB. A
run-time value shorter than FRAGMENT joins the configured secrets (masked whole).

Cost: one regular expression over a trie of all pieces, so redacting is linear in the text; a text
without `\\`, `&`, `%` or NUL has no decoded view (one character-class scan); a text of one window
with nothing in it builds nothing (checks in C: ~2.5 µs a short string, 2.4-3.5 µs before windows,
review revN F3). Measured 2026-12-05 (`python -m tests.test_redaction`, a 2-core machine other jobs
shared, so ranges): a 40-character token and a DSN password cost 26-52 µs per 300-character log
line and 150-180 ms per 1 MB body; with an escape every ~10 characters (JSON-ish), 86-102 µs and
340-400 ms. Ten hostile 48-character secrets: ~100 µs and ~400 ms; escaped, ~285 µs and ~1.0 s.
A 4.4 MB JSON array of 100,000 small records, no secret in it: 0.31-0.49 s (0.17-0.29 s before
windows and base64 encodings; the encodings' probes, looked up in C, cost ~20 ms per MB of it).
"""

from __future__ import annotations

import re
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import Any

from runner.escapes import ESCAPISH, View, decodings, views
from runner.forms import _html_escaped as _html_escaped
from runner.forms import encodings as encodings
from runner.forms import forms as forms
from runner.fragments import FRAGMENT, PROBE, STRIDE, Fragments
from runner.gaps import Gaps
from runner.masks import MASK as MASK
from runner.masks import REACH, gather, masked, runs, unsplit_all
from runner.tries import trie_regex

MIN_SECRET_LENGTH = 3  # masking 1–2 character "secrets" would shred every message
# FRAGMENT (runner/fragments.py): no piece of a secret this long (in any form) reaches an output
CUT_MARKS = re.compile(r"…|\.\.\.")  # how syncrun's excerpts say they were cut
_CHUNK = 1 << 15  # a longer text is searched a window of this many characters at a time (`__call__`)
_MARGIN = 2048  # characters each side of a window, at least: longer than any match's original span
_STRETCH = 64  # ... and this many times the longest piece: an escape of an escape of each character


class Redactor:
    """Masks the secrets it was given (and those `add`ed later) in any text: `redact(text)`."""

    def __init__(self, secrets: Iterable[str | None] = (), *, whole: Iterable[str | None] = ()) -> None:
        self._lock = threading.Lock()
        self._pieces: set[str] = set()  # configured secrets' pieces (every form), kept for the whole run
        self._heads: set[str] = set()  # the first characters of every form, for a secret cut at a mark
        self._raw: set[str] = set()  # the secrets' own pieces, searched in a text's decoded views
        self._tokens = Fragments()  # run-time values' pieces (every form and reading), for the whole run
        self._encoded = Fragments()  # the pieces of configured secrets' base64 encodings (every form)
        self._encoded_probes: frozenset[str] = frozenset()  # their probes (`_probed`: checked before the scan)
        self._masked_heads: frozenset[str] = frozenset()  # _heads, as used
        self._longest = FRAGMENT  # the longest piece: how far a window's margin must reach
        self._pattern: re.Pattern[str] | None = None
        self._raw_pattern: re.Pattern[str] | None = None
        self._listeners: list[Callable[[list[str]], None]] = []
        self.add(*secrets)
        self.add(*whole, fragments=False)

    def add(self, *secrets: str | None, fragments: bool = True, run_time: bool = False) -> None:
        """Mask these values too, in every output from now on (a token fetched mid-run, say).

        `run_time`: a value obtained while the run goes (an access token), one of a series that replace
        each other. Its pieces join runner/fragments.py's set rather than the pattern, which is not
        rebuilt: each renewal costs what its own token costs (a rebuilt pattern of every token ever
        seen took 2 s for the 40th 1 KB token, blocking the event loop). A short one (under FRAGMENT
        characters) is masked whole, as a configured secret."""
        added = [secret for secret in secrets if secret and len(secret) >= MIN_SECRET_LENGTH]
        if not added:
            return
        if run_time and fragments:
            long = [secret for secret in added if len(secret) >= FRAGMENT]
            if long:
                self._add_run_time(long)
            added = [secret for secret in added if len(secret) < FRAGMENT]
            if not added:
                return
        pieces: set[str] = set()
        heads: set[str] = set()
        raw: set[str] = set()
        encoded: set[str] = set()  # the pieces of the base64 encodings of those cut into pieces
        for secret in added:
            cut = fragments and len(secret) >= FRAGMENT
            # Each base64 encoding masked as the secret is (every form, as a view reads it; its pieces
            # if the secret's are): an API may echo one. Their pieces join runner/fragments.py's set:
            # in the pattern, their first characters (all of base64's 64) made every text cost 2-3×.
            for value in (secret, *encodings(secret)):
                if cut and value != secret:  # searched in the text only: the forms views would read
                    encoded.update(*map(_grams, forms(value) | {value.replace("/", "\\/")}))
                    continue
                for form in forms(value):
                    pieces |= _grams(form) if cut else {form}
                    if fragments:
                        heads |= _heads(form)
                # The secret as a decoded view reads it: raw, and its own decodings (a secret holding
                # `%41` or `&amp;` reads differently once its neighbours were escaped and the view
                # decodes both).
                for reading in views(value):
                    if len(reading) >= MIN_SECRET_LENGTH:
                        raw |= _grams(reading) if cut else {reading}
        with self._lock:
            self._encoded.add(encoded)
            self._encoded_probes = self._encoded_probes | _probes(encoded)
            if pieces <= self._pieces and heads <= self._heads and raw <= self._raw:
                return
            # New objects, swapped in whole: a thread redacting meanwhile sees the old ones or the new.
            self._pieces = self._pieces | pieces
            self._heads = self._heads | heads
            self._raw = self._raw | raw
            self._masked_heads = frozenset(self._heads)
            self._longest = max([self._longest, *map(len, pieces | raw)])  # a list: never max(int) alone
            self._pattern = re.compile(trie_regex(self._pieces)) if self._pieces else None
            self._raw_pattern = re.compile(trie_regex(self._raw, loose=True)) if self._raw else None
            listeners = list(self._listeners)
        for listener in listeners:
            listener(added)

    def _add_run_time(self, secrets: list[str]) -> None:
        pieces: set[str] = set()
        heads: set[str] = set()
        for secret in secrets:  # not their base64 encodings: see the module docstring
            pieces |= _every_piece(secret)
            heads |= {head for form in forms(secret) for head in _heads(form)}
        with self._lock:
            self._tokens.add(pieces, heads)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(secrets)

    def listen(self, announce: Callable[[list[str]], None]) -> None:
        """Call `announce` with each new value `add`ed from now on, before `add` returns (so before
        anything can print it): GitHub Actions is told to mask a token obtained at run time."""
        with self._lock:
            self._listeners.append(announce)

    @property
    def idle(self) -> bool:
        """Nothing to mask yet (no secret configured or added): every call returns its input as it is.
        Checked again at each use, since `add` may arm it mid-run."""
        return self._pattern is None and not self._tokens

    def __call__(self, text: str) -> str:
        pattern, tokens = self._pattern, self._tokens
        if (pattern is None and not tokens) or not text:
            return text
        if len(text) <= _CHUNK:  # one window: searched whole, at the old per-call cost (a mapped row's strings)
            return self._short(pattern, tokens, text)
        # A long text is searched a window at a time (CHUNK characters and a margin each side, longer
        # than any match), each match kept by the window its start falls in: a window's decoded views,
        # escape maps and matches are made and dropped in turn, so memory stays a small multiple of
        # the text (all at once, a 7.8 MB body echoing a secret 20,000 times peaked at 1.2 GB). Long runs
        # of what a decoded view drops (NULs, `\\u0000`) are shortened first (runner/gaps.py): a secret
        # cut by them reads whole in a view, so no window may find it farther apart than the margin.
        margin = max(_MARGIN, _STRETCH * self._longest + REACH)
        squeezed = Gaps(text)
        searched = squeezed.text
        stretches = array("q")
        for low in range(0, len(searched), _CHUNK):
            high = min(low + _CHUNK, len(searched))
            offset = max(0, low - margin)
            whole = offset == 0 and high + margin >= len(searched)
            window = searched if whole else searched[offset : high + margin]
            spans: list[tuple[int, int]] = []
            for found in self._spans(pattern, tokens, window):
                kept = ((start + offset, end + offset) for start, end in found if low <= start + offset < high)
                spans += runs(squeezed.origins(kept))
            gather(stretches, sorted(spans))
        del searched, squeezed
        return self._laid(text, stretches)

    def _short(self, pattern: re.Pattern[str] | None, tokens: Fragments, text: str) -> str:
        """A text of one window: nothing built unless something may be found (most strings hold
        nothing: a check each, in C where it can be)."""
        escaped = ESCAPISH.search(text) is not None
        found: list[tuple[int, int]] = []
        if pattern is not None and pattern.search(text) is not None:
            found += self._matches(pattern, text)
        if tokens:
            found += tokens.spans(text)
        if self._encoded_probes and _probed(text, self._encoded_probes):
            found += self._encoded.spans(text)
        if "…" in text or "..." in text:
            found += self._cut_heads(text)
        if escaped and (self._raw_pattern is not None or tokens):
            for spans in self._decoded_matches(self._raw_pattern, text):
                found += spans
        if not found:
            return text
        stretches = array("q")
        gather(stretches, sorted(found))
        return self._laid(text, stretches)

    @staticmethod
    def _laid(text: str, stretches: array[int]) -> str:
        if stretches and ESCAPISH.search(text):  # each kept from cutting an escape in two
            stretches = unsplit_all(text, stretches)
        return masked(text, stretches)

    def _spans(
        self, pattern: re.Pattern[str] | None, tokens: Fragments, text: str
    ) -> Iterator[Iterable[tuple[int, int]]]:
        """Where `text` holds something to mask: runs of spans, each in order of their start."""
        yield self._matches(pattern, text)
        yield tokens.spans(text)
        if self._encoded_probes and _probed(text, self._encoded_probes):
            yield self._encoded.spans(text)
        yield self._cut_heads(text)
        raw_pattern = self._raw_pattern
        if (raw_pattern is not None or tokens) and ESCAPISH.search(text):
            yield from self._decoded_matches(raw_pattern, text)

    @staticmethod
    def _matches(pattern: re.Pattern[str] | None, text: str) -> Iterator[tuple[int, int]]:
        if pattern is None:
            return
        # A consuming search (not a lookahead per character) lets sre skip ahead on the first-character
        # set; restarting one past each match start finds the overlapping fragments (merged by the caller).
        position = 0
        while (match := pattern.search(text, position)) is not None:
            yield match.span()
            position = match.start() + 1

    def _decoded_matches(self, pattern: re.Pattern[str] | None, text: str) -> Iterator[Iterator[tuple[int, int]]]:
        # The secret in a decoded view (escapes read as the characters they stand for), masked in the
        # original: whatever mix of escapes an echo chose, per character, reads as the secret there.
        chain: list[View] = []
        for view in decodings(text):
            chain.append(view)
            for found in (self._matches(pattern, view.text), self._tokens.spans(view.text), self._cut_heads(view.text)):
                yield _origins(found, list(chain))

    def _cut_heads(self, text: str) -> Iterator[tuple[int, int]]:
        heads, more = self._masked_heads, self._tokens.heads
        if not heads and not more:
            return
        for mark in CUT_MARKS.finditer(text):
            end = mark.start()
            for length in range(min(FRAGMENT - 1, end), MIN_SECRET_LENGTH - 1, -1):
                if text[end - length : end] in heads or text[end - length : end] in more:
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


def _probes(pieces: Iterable[str]) -> set[str]:
    """What runner/fragments.py looks up first for each piece: its PROBE-character starts at STRIDE steps."""
    return {piece[i : i + PROBE] for piece in pieces if len(piece) == FRAGMENT for i in range(STRIDE)}


def _probed(text: str, probes: frozenset[str]) -> bool:
    """Whether runner/fragments.py's scan of `text` may find a piece whose probes these are: the same
    PROBE-character slices at STRIDE steps, taken and looked up in C (the scan's Python loop cost a
    mapped row's strings ~1.5 µs each, and a body ~100 ms per MB). One getter per length (a power
    of two once 2 longer ones are made: its slices past the text are shorter than a probe)."""
    if len(text) < FRAGMENT:
        return False
    if len(text) > _PROBED_LONGEST:
        return True
    size = len(text)
    made = _PROBE_SLICES if size <= _PROBED_SHORT else _WINDOW_SLICES
    if made is _WINDOW_SLICES and size not in made and len(made) >= 2:
        size = 1 << (size - 1).bit_length()  # a window's length is the same all text long: kept exactly
    getter = made.get(size)
    if getter is None:  # an empty slice too, so one probe comes as a tuple of one, not the string itself
        slices = [slice(at, at + PROBE) for at in range(0, size - PROBE + 1, STRIDE)]
        getter = made[size] = itemgetter(*slices, slice(0, 0))
    return not probes.isdisjoint(getter(text))


_PROBED_SHORT = 256  # one getter per length up to this (~256 of them, 70 KB at most) ...
_PROBED_LONGEST = 1 << 16  # ... then 2 exact and 8 powers of two: ~4 MB at most (a window's: ~0.6 MB)
_PROBE_SLICES: dict[int, itemgetter[Any]] = {}
_WINDOW_SLICES: dict[int, itemgetter[Any]] = {}  # longer: at most 2 + 8


def _origins(spans: Iterable[tuple[int, int]], chain: list[View]) -> Iterator[tuple[int, int]]:
    """Spans of the last view of `chain` as the spans of the original text they came from (in order:
    each view's map keeps it)."""
    for start, end in spans:
        for link in reversed(chain):
            start, end = link.span(start, end)
        yield start, end


def _every_piece(secret: str) -> set[str]:
    """The FRAGMENT-character pieces of every form of `secret` and of every decoded view's reading."""
    pieces = {piece for form in forms(secret) for piece in _grams(form)}
    return pieces.union(*(_grams(reading) for reading in views(secret)))


def _heads(form: str) -> set[str]:
    return {form[:k] for k in range(MIN_SECRET_LENGTH, min(FRAGMENT, len(form)))}


def _grams(form: str) -> set[str]:
    if len(form) <= FRAGMENT:
        return {form}
    return {form[i : i + FRAGMENT] for i in range(len(form) - FRAGMENT + 1)}
