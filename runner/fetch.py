"""Fetching one entity: render its request (percent-encoded, structure-checked), follow pagination,
return one `Reply` per page. Sending, retries and the rate limit are client.send's job.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import httpx

from runner import client as http
from runner import spec, templating
from runner.client import Reply
from runner.errors import FetchError
from runner.expressions import JSON, truthy
from runner.ratelimit import Limiter

__all__ = ["Page", "Reply", "build_request", "describe", "entity", "pages"]

_HEADER_TEXT = re.compile(r"[\t\x20-\x7e]*")  # what a header value may carry (RFC 9110 field-vchar, SP, HTAB)
_PLACEHOLDER = "0"  # stands in for every entity value when checking the URL's structure


def build_request(
    client: httpx.AsyncClient, source: spec.Source, entity: Mapping[str, JSON], settings: templating.Settings
) -> httpx.Request:
    """The request for one entity: URL, query and headers rendered from the source's templates.

    Entity values are percent-encoded into the URL and, as defence in depth, the rendered URL must
    have the same scheme, host, port, number of path segments and query names as the template
    rendered with a harmless placeholder; so no value can point the request somewhere else.
    """
    request = source.request
    url = templating.render(request.url, entity, settings, url=True)
    _check_structure(url, request.url, settings)
    params = httpx.QueryParams([(name, templating.render(t, entity, settings, url=False)) for name, t in request.query])
    headers = [(name, templating.render(t, entity, settings, url=False)) for name, t in request.headers]
    for name, value in headers:
        if not _HEADER_TEXT.fullmatch(value):  # settings were checked at run start: an entity value did this
            what = "a line break" if "\r" in value or "\n" in value else "a non-ASCII or control character"
            raise FetchError(f"header {name} would contain {what} (from an entity value); not sent")
    return client.build_request(request.method, url, params=params or None, headers=headers)


def _check_structure(url: str, template: spec.Template, settings: templating.Settings) -> None:
    if _shape(url) != _expected_shape(template, settings):
        raise FetchError(
            f"entity values changed the structure of the request URL {settings.redact(url)}"
            f" (expected the shape of {settings.redact(template.text)}); not sent"
        )


Shape = tuple[str, str, int | None, int, tuple[str, ...]]
_expected: dict[tuple[int, int], tuple[spec.Template, templating.Settings, Shape]] = {}


def _expected_shape(template: spec.Template, settings: templating.Settings) -> Shape:
    """The URL shape the template fixes, computed once per (template, settings) of a run: it was a
    second render and parse on every request. Entries keep their objects alive, so an id is never
    reused for a different template while cached."""
    key = (id(template), id(settings))
    entry = _expected.get(key)
    if entry is None or entry[0] is not template or entry[1] is not settings:
        placeholder = dict.fromkeys(template.columns, _PLACEHOLDER)
        entry = (template, settings, _shape(templating.render(template, placeholder, settings, url=True)))
        _expected[key] = entry
    return entry[2]


def _shape(url: str) -> Shape:
    parsed = httpx.URL(url)
    query = tuple(name for name, _ in parsed.params.multi_items())
    return parsed.scheme, parsed.host, parsed.port, parsed.raw_path.split(b"?")[0].count(b"/"), query


@dataclass(frozen=True, slots=True)
class Page:
    """One reply of a paginated fetch, and the `param` value that asks for the page after it
    (None on the last page). List-shaped sources checkpoint `resume` after committing the page."""

    reply: Reply
    resume: str | int | None
    capped: bool = False  # max_pages stopped the paging although the API had more


async def entity(
    client: httpx.AsyncClient,
    source: spec.Source,
    entity: Mapping[str, JSON],
    settings: templating.Settings,
    *,
    limiter: Limiter,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    params: Mapping[str, str] | None = None,
) -> list[Reply]:
    """Every page for one entity, in order (see `pages`)."""
    return [
        page.reply
        async for page in pages(client, source, entity, settings, limiter=limiter, sleep=sleep, params=params)
    ]


async def pages(
    client: httpx.AsyncClient,
    source: spec.Source,
    entity: Mapping[str, JSON],
    settings: templating.Settings,
    *,
    limiter: Limiter,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    start: str | int | None = None,
    params: Mapping[str, str] | None = None,
) -> AsyncGenerator[Page, None]:
    """Pages in order, one request each. Paging stops at a non-2xx reply (it is the last one
    yielded, for the outcome rules), at `max_pages`, or as the pagination type says:

    - `none`: one request.
    - `cursor`: the next cursor is `pagination.cursor` over the body, sent as query `param`; continue
      while `has_more` (if given) is truthy and the cursor is not null/empty. A repeated cursor is a
      FetchError (the API would loop forever).
    - `page`: page numbers from `start` in query `param`; stop at an empty page (no body, `{}`, `[]`;
      not yielded unless it is the first), a short page (`page_size`), or a non-JSON page (yielded,
      so the caller decides: an entity error, or the end of a list-shaped catalogue).

    `start` resumes at a checkpointed cursor or page; `params` adds query parameters (batched ids).
    """
    pagination = source.pagination
    first = build_request(client, source, entity, settings)
    for name, value in (params or {}).items():
        first = _with_query(first, name, value)
    position: str | int | None = pagination.start if pagination.type == "page" else None
    if start is not None:
        position = int(start) if pagination.type == "page" else start
    seen: set[bytes] = set()  # digests of the cursors so far: an endless listing costs 16 bytes a page
    count, previous = 0, None
    while True:
        request = first if position is None else _with_param(first, pagination, position)
        reply = await http.send(
            client,
            request,
            source.retry,
            max_body=source.request.max_body,
            timeout=source.request.timeout,
            limiter=limiter,
            redact=settings.redact,
            sleep=sleep,
        )
        if pagination.type == "page" and count and reply.status // 100 == 2 and _empty(reply):
            return
        count += 1
        follow = _follow(pagination, reply, position, seen, previous, count)
        capped = follow is not None and pagination.max_pages is not None and count >= pagination.max_pages
        yield Page(reply, follow, capped)
        if follow is None or capped:
            return
        position, previous = follow, reply.body


def _follow(
    pagination: spec.Pagination,
    reply: Reply,
    position: str | int | None,
    seen: set[bytes],
    previous: JSON,
    count: int,
) -> str | int | None:
    """The `param` value for the page after `reply`, or None when `reply` is the last page."""
    if pagination.type == "none" or reply.status // 100 != 2:
        return None
    if pagination.type == "cursor":
        cursor = _next_cursor(pagination, reply)
        if cursor is None:
            return None
        digest = hashlib.blake2b(str(cursor).encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in seen:
            shown = str(cursor) if len(str(cursor)) <= 80 else str(cursor)[:80] + "…"
            raise FetchError(
                f"pagination loop: {reply.url} returned cursor {shown!r} a second time (after {count} pages); stopped"
            )
        seen.add(digest)
        return cursor
    if pagination.type == "page":
        if reply.body is None or _empty(reply) or _short(pagination, reply):
            return None
        if count > 1 and reply.body == previous:
            raise FetchError(
                f"pagination loop: page {position} from {reply.url} repeats the previous page"
                f" (does the API read the '{pagination.param}' parameter?); stopped"
            )
        assert isinstance(position, int)
        return position + 1
    raise FetchError(f"unknown pagination type '{pagination.type}'")


def _short(pagination: spec.Pagination, reply: Reply) -> bool:
    body = reply.body
    size = len(body) if isinstance(body, list | dict) else 0
    return pagination.page_size is not None and size < pagination.page_size


def _next_cursor(pagination: spec.Pagination, reply: Reply) -> str | None:
    if reply.body is None or pagination.cursor is None:
        return None
    if pagination.has_more is not None and not truthy(pagination.has_more.search(reply.body)):
        return None
    cursor = pagination.cursor.search(reply.body)
    if not truthy(cursor):
        return None
    return cursor if isinstance(cursor, str) else json.dumps(cursor)


def _with_param(request: httpx.Request, pagination: spec.Pagination, value: str | int) -> httpx.Request:
    if not pagination.param:
        raise FetchError(f"pagination type '{pagination.type}' needs pagination.param")
    return _with_query(request, pagination.param, str(value))


def _with_query(request: httpx.Request, name: str, value: str) -> httpx.Request:
    url = request.url.copy_set_param(name, value)
    return httpx.Request(request.method, url, headers=request.headers, extensions=dict(request.extensions))


def _empty(reply: Reply) -> bool:
    return reply.body in ({}, []) or (reply.body is None and not reply.raw.strip())


def describe(reply: Reply) -> str:
    """What arrived, for messages: `HTTP 200 text/html: '<html><body>oops'`, and why it is not
    usable JSON when the client said (`... ('JSON nested 2,000 levels deep, more than 128')`)."""
    text = reply.raw.decode("utf-8", "replace")
    text = text if len(text) <= 80 else text[:80] + "…"  # the mark lets the redactor mask a secret cut here
    kind = reply.content_type or "(no content type)"
    what = f"HTTP {reply.status} {kind}: {text!r}" if text else f"HTTP {reply.status} {kind}: (empty body)"
    return f"{what} ({reply.problem})" if reply.problem else what
