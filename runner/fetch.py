"""Fetching one entity: render its request (percent-encoded, structure-checked), follow pagination,
return one `Reply` per page. Sending, retries and the rate limit are client.send's job.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import httpx

from runner import client as http
from runner import mapping, plans, spec, templating
from runner.errors import EntityError, FetchError, PaginationError
from runner.expressions import JSON
from runner.ratelimit import Limiter
from runner.reply import Reply, describe

__all__ = ["Page", "Reply", "build_request", "describe", "entity", "next_page", "pages"]

_PLACEHOLDER = plans.PLACEHOLDER  # stands in for every entity value when checking the URL's structure


def build_request(
    client: httpx.AsyncClient, source: spec.Source, entity: Mapping[str, JSON], settings: templating.Settings
) -> httpx.Request:
    """The request for one entity: URL, query and headers rendered from the source's templates.

    Entity values are percent-encoded into the URL and, as defence in depth, the rendered URL must
    have the same scheme, host, port, number of path segments and query names as the template
    rendered with a harmless placeholder; so no value can point the request somewhere else.
    """
    request = source.request
    plan = _plan(client, request, settings)
    if plan is not None and (built := plan.build(entity, client)) is not None:
        return built
    url = templating.render(request.url, entity, settings, url=True)
    _check_structure(url, request.url, settings)
    params = httpx.QueryParams([(name, templating.render(t, entity, settings, url=False)) for name, t in request.query])
    headers = [(name, templating.render(t, entity, settings, url=False)) for name, t in request.headers]
    for name, value in headers:
        if (problem := plans.header_problem(name, value)) is not None:
            raise problem
    return client.build_request(request.method, plans.with_query(url, params), headers=headers)


def _plan(client: httpx.AsyncClient, request: spec.Request, settings: templating.Settings) -> plans.RequestPlan | None:
    """The source's compiled request, made once per (request, settings) on clients from
    `client.build` (their `plans`); None for any other client (tests' own), which renders per entity."""
    if not isinstance(client, http.Client):
        return None
    compiled = client.plans
    key = (id(request), id(settings))
    plan = compiled.get(key)
    if plan is None or plan.request is not request or plan.settings is not settings:
        plan = compiled[key] = plans.RequestPlan(client, request, settings)
    return plan


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
    """One reply of a paginated fetch, and where the page after it is: a cursor, page number, offset
    or URL (None on the last page). List-shaped sources checkpoint `resume` after committing the page."""

    reply: Reply
    resume: str | int | None
    capped: str = ""  # why a cap (max_pages, max_items, the default page cap) stopped a listing that had more
    # max_items fell inside this page: only its first `keep` records count, and `resume` is this
    # page's own position (it is read again, from its start, when a list source resumes)
    keep: int | None = None
    items: int = 0  # the page's records (within `keep`), as the mappings will see them


async def entity(
    client: httpx.AsyncClient,
    source: spec.Source,
    entity: Mapping[str, JSON],
    settings: templating.Settings,
    *,
    limiter: Limiter,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> list[Page]:
    """Every page for one entity, in order (see `pages`). A later page that is not 2xx fails the
    entity: the outcome rules judge the first reply, and the rows of a partial listing must not go in.
    `headers` go on the first request only (conditional requests: runner.conditional)."""
    if _single(source.pagination):  # one request, one page: what `pages` does for it, without the walk
        reply = await _send(
            client, source, _first(client, source, entity, settings, params, headers), settings, limiter, sleep
        )
        records = _records(source, entity, reply)
        return [Page(reply, None, "", None, len(records) if records is not None else 0)]
    walk = pages(client, source, entity, settings, limiter=limiter, sleep=sleep, params=params, headers=headers)
    listing = [page async for page in walk]
    for number, page in enumerate(listing[1:], start=2):
        if page.reply.status // 100 != 2:
            raise PaginationError(f"page {number} of the listing answered {describe(page.reply)} ({page.reply.url})")
    return listing


async def _send(
    client: httpx.AsyncClient,
    source: spec.Source,
    request: httpx.Request,
    settings: templating.Settings,
    limiter: Limiter,
    sleep: Callable[[float], Awaitable[None]],
) -> Reply:
    """One page's request through the limiter, the retries and the body bounds."""
    return await http.send(
        client,
        request,
        source.retry,
        max_body=source.request.max_body,
        timeout=source.request.timeout,
        limiter=limiter,
        redact=settings.redact,
        sleep=sleep,
    )


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
    headers: Mapping[str, str] | None = None,
) -> AsyncGenerator[Page, None]:
    """Pages in order, one request each, every one through the limiter and the retries. Paging stops
    at a non-2xx reply (it is the last one yielded, for the outcome rules), at a cap (`max_pages`,
    `max_items`: the last page is marked `capped`), or where the style says the listing ends
    (runner/pagination.py). A `page` listing's empty page after the first is not yielded.

    Raises PaginationError when going on or stopping would lose items: the API said there is more
    but gave no next page, a loop, a next URL to another origin. `start` resumes at a checkpointed
    cursor, page, offset or URL; `params` adds query parameters (batched ids).
    """
    # imported at the first listing walked: a run of unpaginated sources never needs it (~3 ms a start)
    from runner import pagination as pagination_

    pagination = source.pagination
    first = _first(client, source, entity, settings, params, headers)
    walk = pagination_.Walk(
        pagination,
        first,
        secret_headers=frozenset(name.lower() for name in _secret_names(source.request.headers)),
        secret_params=_secret_names(source.request.query) | _auth_param(source),
        redact=settings.redact,
        # a cursor's first value in request.query goes out as written in the URL would (review revL F3)
        first_cursor_in_query=pagination.type is spec.PaginationType.CURSOR
        and any(name == pagination.param for name, _ in source.request.query),
    )
    position = walk.start(start)
    while True:
        request = walk.request(position)
        reply = await _send(client, source, request, settings, limiter, sleep)
        records = _records(source, entity, reply)
        if walk.ended(reply, None if records is None else len(records)):
            return
        follow = walk.follow(reply, position, records, request)
        capped = walk.capped(follow)
        count = len(records) if records is not None else 0
        keep = walk.keep(count)
        if keep is not None:
            yield Page(reply, position, capped, keep, keep)
            return
        yield Page(reply, follow, capped, None, count)
        if follow is None or capped:
            return
        position = follow


def _single(pagination: spec.Pagination) -> bool:
    """Whether a listing is one page whatever the reply says: no pagination, so no next page, no page
    size parameter, and no max_items to cut the page (`Walk` would find exactly that, per entity)."""
    return (
        pagination.type is spec.PaginationType.NONE
        and pagination.max_items is None
        and (pagination.size_param is None or pagination.page_size is None)
    )


def _first(
    client: httpx.AsyncClient,
    source: spec.Source,
    entity: Mapping[str, JSON],
    settings: templating.Settings,
    params: Mapping[str, str] | None,
    headers: Mapping[str, str] | None,
) -> httpx.Request:
    """The listing's first request: the entity's, with the batch's `params` and conditional `headers`."""
    first = build_request(client, source, entity, settings)
    for name, value in (params or {}).items():
        first = _with_query(first, name, value)
    for name, value in (headers or {}).items():
        first.headers[name] = value
    return first


async def next_page(pages: AsyncGenerator[Page, None], stop: asyncio.Event, grace: float) -> Page | None:
    """The next page; None when the pages ran out, or when a stop came while waiting for one (a grant
    of a 1-per-minute limit, a slow answer) and the page did not arrive within `grace` seconds."""
    step = asyncio.ensure_future(anext(pages, None))
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({step, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not step.done():
            await asyncio.wait({step}, timeout=grace)
        if not step.done():
            step.cancel()
            await asyncio.gather(step, return_exceptions=True)
            return None
        return step.result()
    finally:
        stopped.cancel()


def _records(source: spec.Source, entity: Mapping[str, JSON], reply: Reply) -> list[JSON] | None:
    """The page's records, as the mappings will see them (for page_size, the caps, an empty page and
    the loop guard); None when there are none to count: no JSON, or no records where the source
    expects them (the mapping reports it for the page)."""
    if reply.body is None:
        return None
    records = source.records
    if records is None or (records.path is not None and records.path[0] == "body"):
        # `body.data` (or no `records:`) reads nothing else of the context: the rest of it (the entity's
        # values made plain, a copy of the headers) cost a page about what the count itself does
        base: dict[str, JSON] = {"body": reply.body}
    else:
        base = mapping.context(reply.body, reply.status, reply.headers, entity, {})
    try:
        return mapping.records(source, base)
    except EntityError:
        return None


def _secret_names(templates: tuple[tuple[str, spec.Template], ...]) -> frozenset[str]:
    return frozenset(name for name, template in templates if any(s.secret for s in template.settings))


def _auth_param(source: spec.Source) -> frozenset[str]:
    """An `api_key` with `in: query`: its parameter, echoed by an API into its next links, is dropped
    from them (they are checkpointed and shown); runner/auth.py puts it on every request it sends."""
    auth = source.auth
    if auth is None or auth.type is not spec.AuthType.API_KEY or auth.in_ is not spec.KeyIn.QUERY or not auth.name:
        return frozenset()
    return frozenset({auth.name})


def _with_query(request: httpx.Request, name: str, value: str) -> httpx.Request:
    url = templating.with_param(request.url, name, value)  # the rest of the query as written
    return httpx.Request(request.method, url, headers=request.headers, extensions=dict(request.extensions))
