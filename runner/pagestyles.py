"""Where the next page is: one function per `pagination.type` reads a reply and says where to go
next (`Step`), whether the API said there is more, and what should have led there. They only read:
what one listing keeps across pages (counts, loops, origins, caps) is runner.pagination's `Walk`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from jmespath.exceptions import JMESPathError

from runner import links, spec
from runner.errors import PaginationError
from runner.expressions import EVALUATION_FAULTS, JSON, Expression
from runner.reply import Reply

__all__ = ["BY_URL", "MAX_CURSOR", "NUMBERED", "STYLES", "At", "Step", "context", "empty", "shown"]

Position = str | int  # a cursor, a page number, an offset, or a next URL
MAX_CURSOR = 4_096  # a longer cursor would make every following request URL enormous
_TRUE, _FALSE = frozenset({"true", "1"}), frozenset({"false", "0", ""})


@dataclass(frozen=True, slots=True)
class Step:
    """One style's reading of a reply. `next` None: no next page. `more`: True when the API itself
    said there is more (has_more, total, total_pages, a rel="last" elsewhere), with `why` saying so in
    words; False when it said this is the end; None when it said neither (then a full page means
    more). `via`: what should give the next page (an expression, the Link header), for messages."""

    next: Position | None
    via: str
    more: bool | None = None
    why: str = ""


@dataclass(frozen=True, slots=True)
class At:
    """Where a reply came from: the position asked for, the items it holds, the URL sent."""

    position: Position | None
    items: int
    url: httpx.URL


def context(reply: Reply) -> dict[str, JSON]:
    """What every pagination expression sees: the reply's status, headers (lower-case names), body."""
    return {"status": reply.status, "headers": dict(reply.headers), "body": reply.body}


def empty(reply: Reply) -> bool:
    return reply.body in ({}, []) or (reply.body is None and not reply.raw.strip())


def shown(expression: Expression, key: str) -> str:
    return f"{key} ({expression.text})"


def _search(expression: Expression, reply: Reply, key: str) -> JSON:
    try:
        return expression.search(context(reply))
    except (JMESPathError, *EVALUATION_FAULTS) as error:  # a function met a value it cannot take: the API's data
        raise PaginationError(f"pagination.{key} ({expression.text}) failed on {reply.url}: {error}") from None


def _has_more(pagination: spec.Pagination, reply: Reply) -> bool | None:
    """True/false as the API said; None when it said nothing (not declared, or missing on this page,
    as Steam's last page): then the cursor or URL alone decides. APIs that send flags as text or
    numbers are read as they mean them: "true"/"1"/1 are true, "false"/"0"/""/0 false (any case).
    Any other value is an error naming it: a guess either way could end or loop a listing."""
    if pagination.has_more is None:
        return None
    found = _search(pagination.has_more, reply, "has_more")
    if found is None or isinstance(found, bool):
        return found
    if isinstance(found, str) and found.strip().lower() in _TRUE | _FALSE:
        return found.strip().lower() in _TRUE
    if isinstance(found, int | float) and found in (0, 1):
        return found == 1
    raise PaginationError(
        f"pagination.has_more ({pagination.has_more.text}) gave {_excerpt(found)} on {reply.url}:"
        ' expected true or false (or "true"/"false", 1/0)'
    )


def _value(found: JSON, what: str, reply: Reply) -> str | None:
    """A cursor or URL as text: a string or a number; null or "" is none. Anything else is an error:
    `{"id": 1}` sent as a parameter would be a request the API never meant."""
    if found is None or found == "":
        return None
    if isinstance(found, bool) or not isinstance(found, str | int | float):
        kind = "true/false" if isinstance(found, bool) else type(found).__name__.replace("dict", "object")
        raise PaginationError(f"{what} gave {kind} {_excerpt(found)}, not a string or a number, on {reply.url}")
    return found if isinstance(found, str) else json.dumps(found)


def _excerpt(value: JSON) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:60] + "…"


def _number(expression: Expression, reply: Reply, key: str) -> int:
    """A declared total must be there: a typo would otherwise end the listing early, unnoticed."""
    found = _search(expression, reply, key)
    if found is None:
        raise PaginationError(f"pagination.{key} ({expression.text}) gave nothing on {reply.url}: expected a count")
    if isinstance(found, float) and found.is_integer():  # 23.0: JSON has one number type
        found = int(found)
    if (
        isinstance(found, bool)
        or not isinstance(found, int | str)
        or not str(found).isascii()
        or not str(found).isdigit()
    ):
        raise PaginationError(f"pagination.{key} ({expression.text}) gave {_excerpt(found)}, not a count")
    return int(found)


# --- the styles -----------------------------------------------------------------------------------
def _cursor(pagination: spec.Pagination, reply: Reply, at: At) -> Step:
    assert pagination.cursor is not None
    via = shown(pagination.cursor, "cursor")
    more = _has_more(pagination, reply)
    if more is False:
        return Step(None, via, False)
    found = _value(_search(pagination.cursor, reply, "cursor"), f"pagination.{via}", reply)
    if found is not None and len(found) > MAX_CURSOR:
        raise PaginationError(f"pagination.{via} gave a cursor of {len(found)} characters (at most {MAX_CURSOR})")
    if found is not None and "\x00" in found:  # jsonb refuses \u0000: the checkpoint could not be stored (revM L3)
        raise PaginationError(
            f"pagination.{via} gave a cursor holding a NUL character (\\u0000), {_excerpt(found)}, on {reply.url}:"
            " no checkpoint can hold it; not followed"
        )
    why = f"has_more ({pagination.has_more.text}) is true" if more and pagination.has_more else ""
    return Step(found, via, more, why)


def _next_url(pagination: spec.Pagination, reply: Reply, at: At) -> Step:
    assert pagination.next is not None
    via = shown(pagination.next, "next")
    more = _has_more(pagination, reply)
    if more is False:
        return Step(None, via, False)
    found = _search(pagination.next, reply, "next")
    if found is not None and found != "" and not isinstance(found, str):  # 12345 is no URL, not even a relative one
        kind = "true/false" if isinstance(found, bool) else type(found).__name__.replace("dict", "object")
        raise PaginationError(f"pagination.{via} gave {kind} {_excerpt(found)}, not a URL, on {reply.url}")
    found = _value(found, f"pagination.{via}", reply)
    why = f"has_more ({pagination.has_more.text}) is true" if more and pagination.has_more else ""
    return Step(found, via, more, why)


def _link(pagination: spec.Pagination, reply: Reply, at: At) -> Step:
    """GitHub-style: rel="next" leads on. Without it, a rel="last" that is not this page says the
    listing was cut; other links (first, prev) say this is the last page."""
    via = 'the Link header (rel="next")'
    header = reply.headers.get("link")
    if header is None:
        return Step(None, via)
    try:
        found = links.parse(header)
    except ValueError as error:
        raise PaginationError(f"unreadable Link header from {reply.url}: {error}") from None
    following = next((link.target for link in found if "next" in link.rels), None)
    last = next((link.target for link in found if "last" in link.rels), None)
    if following is not None:
        return Step(following, via)
    if last is None or _same_page(last, at.url):
        return Step(None, via, False if found else None)  # first/prev only: the API says this is the end
    return Step(None, via, True, f'the Link header has rel="last" <{last}>')


def _same_page(target: str, url: httpx.URL) -> bool:
    """Whether a (maybe relative) rel="last" target names the page just read."""
    try:
        return url.join(target) == url
    except httpx.InvalidURL:
        return False


def _page(pagination: spec.Pagination, reply: Reply, at: At) -> Step:
    assert isinstance(at.position, int)
    if pagination.total_pages is None:
        last = reply.body is None or not at.items or _short(pagination, at.items)
        return Step(None if last else at.position + 1, "the page numbers")
    via = shown(pagination.total_pages, "total_pages")
    total = _number(pagination.total_pages, reply, "total_pages")
    if at.position - pagination.start + 1 >= total:
        return Step(None, via, False)
    return Step(at.position + 1, via, True, f"total_pages ({pagination.total_pages.text}) is {total}")


def _offset(pagination: spec.Pagination, reply: Reply, at: At) -> Step:
    assert isinstance(at.position, int)
    reached = at.position + at.items
    if pagination.total is None:
        return Step(None if _short(pagination, at.items) or not at.items else reached, "the offsets")
    via = shown(pagination.total, "total")
    total = _number(pagination.total, reply, "total")
    if reached >= total:
        return Step(None, via, False)
    why = f"total ({pagination.total.text}) is {total}, {reached} read"
    return Step(reached if at.items else None, via, True, why)  # no items: no progress possible


def _short(pagination: spec.Pagination, items: int) -> bool:
    return pagination.page_size is not None and items < pagination.page_size


Style = Callable[[spec.Pagination, Reply, At], Step]
STYLES: dict[spec.PaginationType, Style] = {
    spec.PaginationType.CURSOR: _cursor,
    spec.PaginationType.PAGE: _page,
    spec.PaginationType.OFFSET: _offset,
    spec.PaginationType.LINK: _link,
    spec.PaginationType.NEXT_URL: _next_url,
}
BY_URL = frozenset({spec.PaginationType.LINK, spec.PaginationType.NEXT_URL})
NUMBERED = frozenset({spec.PaginationType.PAGE, spec.PaginationType.OFFSET})
