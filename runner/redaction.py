"""Keeping secrets out of every output: logs, errors, job rows, dry-run output, replays.

A `Redactor` knows the secret values of a run (every `${secret.*}` and the DATABASE_URL password)
and replaces each occurrence, raw or percent-encoded, with `***`. Anything syncrun prints or stores
that can carry API or request data goes through `redact` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"
_MIN_SECRET_LENGTH = 3  # masking 1–2 character "secrets" would shred every message


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) >= _MIN_SECRET_LENGTH:
                forms.update({secret, quote(secret, safe=""), quote_plus(secret)})
        # Longest first, so a secret containing another is masked whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern else text
