"""Where the next page is, style by style (runner.pagestyles): each reads one reply and says where
to go, whether the API said there is more, and what should have led there. The listing around them
(loops, origins, caps, partial listings) is tested in test_pagination*.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from runner import spec
from runner.client import Reply
from runner.errors import PaginationError
from runner.expressions import Expression
from runner.pagestyles import STYLES, At, Step, context, empty

URL = httpx.URL("https://api.example.com/items")


def reply(body: Any, headers: dict[str, str] | None = None, raw: bytes = b"{}") -> Reply:
    return Reply(
        status=200,
        headers=headers or {},
        body=body,
        raw=raw,
        url=str(URL),
        elapsed=0.0,
        content_type="application/json",
    )


def step(pagination: spec.Pagination, body: Any, position: str | int | None = None, items: int = 0, **kw: Any) -> Step:
    return STYLES[pagination.type](pagination, reply(body, **kw), At(position, items, URL))


def test_every_paging_type_has_a_style() -> None:
    assert set(STYLES) == set(spec.PaginationType) - {spec.PaginationType.NONE}


def test_cursor_reads_the_cursor_and_has_more() -> None:
    cursor = spec.Pagination(
        type=spec.PaginationType.CURSOR,
        param="after",
        cursor=Expression.compile("body.next"),
        has_more=Expression.compile("body.more"),
    )
    assert step(cursor, {"next": "abc", "more": True}) == Step(
        "abc", "cursor (body.next)", True, "has_more (body.more) is true"
    )
    assert step(cursor, {"next": "abc", "more": "false"}).next is None  # the API's "no" ends it, cursor or not
    assert step(cursor, {"next": 12}).next == "12"
    with pytest.raises(PaginationError, match="not a string or a number"):
        step(cursor, {"next": {"id": 1}})
    with pytest.raises(PaginationError, match="expected true or false"):
        step(cursor, {"next": "abc", "more": "maybe"})


def test_page_and_offset_count_to_the_declared_totals() -> None:
    page = spec.Pagination(
        type=spec.PaginationType.PAGE, param="page", start=1, total_pages=Expression.compile("body.pages")
    )
    assert step(page, {"pages": 3}, position=2, items=5).next == 3
    assert step(page, {"pages": 3}, position=3, items=5) == Step(None, "total_pages (body.pages)", False)
    with pytest.raises(PaginationError, match="gave nothing"):
        step(page, {}, position=1, items=5)
    offset = spec.Pagination(type=spec.PaginationType.OFFSET, param="offset", page_size=10)
    assert step(offset, {}, position=20, items=10).next == 30
    assert step(offset, {}, position=20, items=4).next is None  # a short page is the last


def test_link_header_next_and_last() -> None:
    link = spec.Pagination(type=spec.PaginationType.LINK)
    assert step(link, {}, headers={"link": '<https://api.example.com/items?page=2>; rel="next"'}).next == (
        "https://api.example.com/items?page=2"
    )
    cut = step(link, {}, headers={"link": '<https://api.example.com/items?page=9>; rel="last"'})
    assert (cut.next, cut.more) == (None, True)  # a last page that is not this one: the listing was cut
    assert step(link, {}, headers={"link": '<https://api.example.com/items?page=1>; rel="first"'}).more is False


def test_context_and_empty() -> None:
    assert context(reply({"a": 1}, {"x-n": "1"})) == {"status": 200, "headers": {"x-n": "1"}, "body": {"a": 1}}
    assert empty(reply([]))
    assert empty(reply(None, raw=b"  "))
    assert not empty(reply({"data": []}))
