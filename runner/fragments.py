"""The pieces of many secrets, found in a text at a cost that does not grow with their number.

A run renews its OAuth2 token all run long (240 tokens in 8 hours of 120-second tokens), and any of
them can come back in a later output: a next-page link that echoes `access_token=` of the request
that started the listing, an answer to a request sent before several renewals. So every token of the
run stays masked until the run ends. Runner/redaction.py's regular expression over a trie of all
pieces would have to be rebuilt at each renewal (adding the 40th 1 KB token took 1.9 s), so run-time
tokens live here instead: their FRAGMENT-character pieces in a set, added to in place.

Finding them is a scan of the text's windows, O(len(text)) set lookups whatever the number of
tokens, made cheaper by a probe: any FRAGMENT-character window contains a PROBE-character piece that
starts at a multiple of STRIDE (PROBE + STRIDE - 1 = FRAGMENT), so only those are looked up, and the
windows around a probe that is a token's piece are checked in full. A 300-character line costs ~75
lookups, a 1 MB body ~250 000.
"""

from __future__ import annotations

from collections.abc import Iterable

FRAGMENT = 8  # runner.redaction.FRAGMENT (imported from here there)
STRIDE = 4
PROBE = FRAGMENT - STRIDE + 1  # every FRAGMENT-character window holds one PROBE piece at a STRIDE multiple


class Fragments:
    """The FRAGMENT-character pieces of the secrets added, and their first characters (`heads`, for
    a secret cut right before a cut mark). Added to in place: a lookup in another thread sees a set
    before or after an `add` (each set operation is atomic in CPython)."""

    def __init__(self) -> None:
        self._pieces: set[str] = set()
        self._probes: set[str] = set()
        self.heads: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self._pieces)

    def __len__(self) -> int:
        """How many pieces are held (tests: the structures grow with what is added, nothing else)."""
        return len(self._pieces) + len(self._probes) + len(self.heads)

    def add(self, pieces: Iterable[str], heads: Iterable[str] = ()) -> None:
        """Mask these pieces (each exactly FRAGMENT characters) and these heads from now on."""
        fresh = [piece for piece in pieces if len(piece) == FRAGMENT and piece not in self._pieces]
        self._probes.update(piece[i : i + PROBE] for piece in fresh for i in range(STRIDE))
        self._pieces.update(fresh)  # after the probes: a scan that finds a piece finds its probe too
        self.heads.update(heads)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where a piece occurs in `text`: (start, end) spans, overlapping ones included."""
        probes, pieces = self._probes, self._pieces
        if not pieces or len(text) < FRAGMENT:
            return []
        hits = [at for at in range(0, len(text) - PROBE + 1, STRIDE) if text[at : at + PROBE] in probes]
        found: list[tuple[int, int]] = []
        last = len(text) - FRAGMENT
        checked = -1  # windows up to here were looked up already (the probes of neighbours share some)
        for at in hits:
            for start in range(max(at - STRIDE + 1, checked + 1, 0), min(at, last) + 1):
                if text[start : start + FRAGMENT] in pieces:
                    found.append((start, start + FRAGMENT))
            checked = min(at, last)
        return found
