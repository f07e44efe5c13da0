"""Fetching one entity: render its request (percent-encoded, structure-checked), follow pagination,
return one `Reply` per page. Sending, retries and the rate limit are client.send's job.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping

import httpx

from runner import client as http
from runner import spec, templating
from runner.client import Reply
from runner.errors import FetchError
from runner.expressions import JSON
from runner.ratelimit import Limiter

__all__ = ["Reply", "build_request", "describe", "entity"]

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
        if "\r" in value or "\n" in value:
            raise FetchError(f"header {name} would contain a line break (from an entity value); not sent")
    return client.build_request(request.method, url, params=params or None, headers=headers)


def _check_structure(url: str, template: spec.Template, settings: templating.Settings) -> None:
    placeholder = dict.fromkeys(template.columns, _PLACEHOLDER)
    expected = _shape(templating.render(template, placeholder, settings, url=True))
    if _shape(url) != expected:
        raise FetchError(
            f"entity values changed the structure of the request URL {settings.redact(url)}"
            f" (expected the shape of {settings.redact(template.text)}); not sent"
        )


def _shape(url: str) -> tuple[str, str, int | None, int, tuple[str, ...]]:
    parsed = httpx.URL(url)
    query = tuple(name for name, _ in parsed.params.multi_items())
    return parsed.scheme, parsed.host, parsed.port, parsed.raw_path.split(b"?")[0].count(b"/"), query


async def entity(
    client: httpx.AsyncClient,
    source: spec.Source,
    entity: Mapping[str, JSON],
    settings: templating.Settings,
    *,
    limiter: Limiter,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> list[Reply]:
    """Every page for one entity, in order. Paging stops at a non-2xx reply (it is the last one
    returned, for the outcome rules), at `max_pages`, or as the pagination type says:

    - `none`: one request.
    - `cursor`: the next cursor is `pagination.cursor` over the body, sent as query `param`; continue
      while `has_more` (if given) is truthy and the cursor is not null/empty. A repeated cursor is a
      FetchError (the API would loop forever).
    - `page`: page numbers from `start` in query `param`; stop at an empty page (no body, `{}`, `[]`;
      not returned unless it is the first) or a non-JSON page (returned, so the mapping reports it).
    """
    pagination = source.pagination
    first = build_request(client, source, entity, settings)
    request, page, seen = first, pagination.start, set[str]()
    if pagination.type == "page":
        request = _with_param(first, pagination, page)
    replies: list[Reply] = []
    while True:
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
        if pagination.type == "page" and replies and reply.status // 100 == 2 and _empty(reply):
            return replies
        replies.append(reply)
        if pagination.type == "none" or reply.status // 100 != 2:
            return replies
        if pagination.max_pages is not None and len(replies) >= pagination.max_pages:
            return replies
        if pagination.type == "cursor":
            cursor = _next_cursor(pagination, reply)
            if cursor is None:
                return replies
            if cursor in seen:
                raise FetchError(
                    f"pagination loop: {reply.url} returned cursor {cursor!r} a second time"
                    f" (after {len(replies)} pages); stopped"
                )
            seen.add(cursor)
            request = _with_param(first, pagination, cursor)
        elif pagination.type == "page":
            if reply.body is None or _empty(reply):
                return replies
            if len(replies) > 1 and reply.body == replies[-2].body:
                raise FetchError(
                    f"pagination loop: page {page} from {reply.url} repeats the previous page"
                    f" (does the API read the '{pagination.param}' parameter?); stopped"
                )
            page += 1
            request = _with_param(first, pagination, page)
        else:
            raise FetchError(f"unknown pagination type '{pagination.type}'")


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
    url = request.url.copy_set_param(pagination.param, str(value))
    return httpx.Request(request.method, url, headers=request.headers, extensions=dict(request.extensions))


def _empty(reply: Reply) -> bool:
    return reply.body in ({}, []) or (reply.body is None and not reply.raw.strip())


def truthy(value: JSON) -> bool:
    """JMESPath truthiness: false, null, "", [] and {} are false; every number (0 too) is true."""
    return not (value is None or value is False or value in ("", [], {}))


def describe(reply: Reply) -> str:
    """What arrived, for messages: `HTTP 200 text/html: '<html><body>oops'`."""
    text = reply.raw[:80].decode("utf-8", "replace")
    kind = reply.content_type or "(no content type)"
    return f"HTTP {reply.status} {kind}: {text!r}" if text else f"HTTP {reply.status} {kind}: (empty body)"
