"""How outputs may write a secret, for runner/redaction.py to mask each way: `forms` (escaped for
URLs, JSON, repr, YAML, HTML, Markdown) and `encodings` (base64, alone or inside a longer value)."""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote, quote_plus

import yaml

from runner.fragments import FRAGMENT

# What a URL may keep unencoded (reserved and unreserved characters): httpx leaves these alone when a
# secret is written into a path or query as-is, and encodes the rest (space, quotes, `\`, non-ASCII).
_URL_KEPT = "!#$%&'()*+,/:;=?@[]~"


def _html_escaped(text: str) -> str:
    """`html.escape(text)`, written out: importing `html` builds its 2,231-entity table for `unescape`,
    ~7M instructions of every start that only this line would use."""
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"), ("'", "&#x27;")):
        text = text.replace(char, entity)
    return text


def forms(secret: str) -> set[str]:
    """`secret` as every output may write it (see the module docstring); the raw value included."""
    found = {secret, _html_escaped(secret), secret.replace("'", "''"), _markdown_cell(secret)}
    for safe in ("", "/", _URL_KEPT):
        found |= _hex_cases(quote(secret, safe=safe))
        found |= _hex_cases(quote_plus(secret, safe=safe))
    found |= {json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    for text in (repr(secret + "'\""), ascii(secret + "'\"")):  # forces '…' quoting, with \' inside
        body = text[1:-4]  # without the quote, the added `\'"` and the closing quote
        found |= {body, body.replace("\\'", "'")}  # `"…"` quoting (a secret with ' and no ") leaves ' bare
    found.add(repr(secret.encode())[2:-1])
    for unicode in (True, False):
        dumped = yaml.safe_dump(secret, default_style='"', width=2**31 - 1, allow_unicode=unicode)
        found.add(dumped.strip().removeprefix('"').removesuffix('"'))
    return {form for form in found if form}


def encodings(secret: str) -> set[str]:
    """`secret` (as UTF-8) base64-encoded, standard and URL-safe: alone (with and without padding), and
    as it reads inside a longer encoded value where it starts 0, 1 or 2 bytes into a 3-byte group (the
    characters that carry no bits of its neighbours). Those shorter than FRAGMENT are left out: they
    would match any base64 text too often."""
    data = secret.encode()
    found: set[str] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        alone = encode(data).decode()
        found |= {alone, alone.rstrip("=")}
        for shift, head in ((0, 0), (1, 2), (2, 3)):  # characters holding a bit of the bytes before
            encoded = encode(bytes(shift) + data).decode().rstrip("=")
            tail = 1 if (shift + len(data)) % 3 else 0  # the last one holds bits of the bytes after
            found.add(encoded[head : len(encoded) - tail])
    return {form for form in found if len(form) >= FRAGMENT}


def _hex_cases(encoded: str) -> set[str]:
    return {encoded, re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), encoded)}


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
