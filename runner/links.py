"""The HTTP `Link` header (RFC 8288): `<url>; rel="next"; title="…", <url>; rel=last`, read strictly.

Only the structure is parsed here; what a link means (the next page) is pagination's business.
A header that does not follow the grammar is a ValueError saying where, never a guess: a guessed
"no next link" would end a listing early without anyone noticing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Link", "parse", "target"]

_URI = re.compile(r"<([^<>]*)>")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# An alternation whose branches start with different characters: linear, even on an unclosed quote.
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class Link:
    target: str  # the URI reference between < and >, unresolved
    params: dict[str, str]  # lower-case names; the first occurrence of a name counts (RFC 8288 §3.3)

    @property
    def rels(self) -> frozenset[str]:
        """`rel="next last"` is two relations; relation names compare case-insensitively."""
        return frozenset(self.params.get("rel", "").lower().split())


def parse(header: str) -> list[Link]:
    """Every link in a header value (repeated headers arrive joined with ", ", which is the same list)."""
    links: list[Link] = []
    i = 0
    while True:
        i = _skip_separators(header, i)
        if i >= len(header):
            return links
        uri = _URI.match(header, i)
        if uri is None:
            raise ValueError(f"expected <URI> at character {i + 1}, found {_near(header, i)}")
        i, params = _params(header, uri.end())
        i = _space(header, i)
        if i < len(header) and header[i] != ",":
            raise ValueError(f"unexpected {_near(header, i)} at character {i + 1}")
        links.append(Link(uri[1].strip(), params))


def target(header: str, rel: str) -> str | None:
    """The target of the first link with relation `rel`, or None when there is none."""
    return next((link.target for link in parse(header) if rel in link.rels), None)


def _params(header: str, i: int) -> tuple[int, dict[str, str]]:
    params: dict[str, str] = {}
    while True:
        i = _space(header, i)
        if i >= len(header) or header[i] != ";":
            return i, params
        i = _space(header, i + 1)
        name = _TOKEN.match(header, i)
        if name is None:
            if i >= len(header) or header[i] == ",":  # a trailing `;` before the next link: tolerated
                return i, params
            raise ValueError(f"expected a parameter name at character {i + 1}, found {_near(header, i)}")
        i = _space(header, name.end())
        value = ""
        if i < len(header) and header[i] == "=":
            i = _space(header, i + 1)
            if quoted := _QUOTED.match(header, i):
                value, i = _ESCAPE.sub(r"\1", quoted[1]), quoted.end()
            elif token := _TOKEN.match(header, i):
                value, i = token[0], token.end()
            else:
                raise ValueError(f"expected a value for {name[0]} at character {i + 1}, found {_near(header, i)}")
        params.setdefault(name[0].lower(), value)


def _space(header: str, i: int) -> int:
    while i < len(header) and header[i] in " \t":
        i += 1
    return i


def _skip_separators(header: str, i: int) -> int:
    """Empty list elements (`, ,`) are allowed by the list syntax (RFC 9110 §5.6.1)."""
    while i < len(header) and header[i] in " \t,":
        i += 1
    return i


def _near(header: str, i: int) -> str:
    if i >= len(header):
        return "the end"
    piece = header[i : i + 20]
    return repr(piece + "…" if len(header) > i + 20 else piece)
