"""A test API serving one catalogue (and per-ticket comment lists) paged the ways well-known public
APIs page them, on a real loopback `ApiServer`:

    route                 style                                                     like
    /link                 Link header: one header, quoted rel, absolute URLs, last   GitHub
    /link-split           Link headers one per line, unquoted rel, relative URLs,    GitLab / RFC 8288
                          rel="next last" on the second-to-last page
    /link-broken          page 2 has no rel="next" although rel="last" is page 3    (a broken API)
    /next-absolute        body.links.next, absolute                                  JSON:API
    /next-relative        body.next_page, a path relative to the request             Laravel-ish
    /cursor-body          body.response_metadata.next_cursor, "" at the end         Slack
    /cursor-header        X-Next-Page-Token response header, absent at the end      help-desk APIs
    /stripe               has_more + starting_after=<last id>                        Stripe
    /offset-total         ?offset&limit, {"total": n, "results": [...]}              many REST APIs
    /offset               ?offset&limit, a bare list                                 many REST APIs
    /pages-total          ?page&per_page, {"meta": {"total_pages": n}, "items": []}  many REST APIs
    /pages                ?page&per_page, a bare list, [] past the end               SteamSpy-ish
    /tickets              the tickets, two a page, Link header (a list feeding a detail source)
    /tickets/{id}/comments  X-Next-Page-Token, `COMMENTS[id]` comments per ticket    Zendesk-ish

Every route pages ITEMS (ids 1..23) ten at a time unless the request asks for another size.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

from tests.apiserver import ApiServer, Recorded, Reply

ITEMS = [{"id": i, "name": f"item {i}"} for i in range(1, 24)]
COMMENTS = {1: 3, 2: 25, 3: 10, 4: 0}  # ticket -> number of comments
SIZE = 10


def _size(request: Recorded, name: str) -> int:
    return int(request.query.get(name, SIZE))


def token(offset: int) -> str:
    """An opaque token, as APIs hand out (base64 of a little JSON)."""
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode()


def _offset(token: str | None) -> int:
    return 0 if token is None else int(json.loads(base64.urlsafe_b64decode(token))["o"])


def install(api: ApiServer) -> None:
    routes: dict[str, Callable[[Recorded], Reply]] = {
        "/link": lambda r: link_page(api, r),
        "/link-split": _link_split,
        "/link-broken": lambda r: link_page(api, r, broken=True),
        "/next-absolute": lambda r: _next(api, r, absolute=True),
        "/next-relative": lambda r: _next(api, r, absolute=False),
        "/cursor-body": _cursor_body,
        "/cursor-header": _cursor_header,
        "/stripe": _stripe,
        "/offset-total": lambda r: _offset_page(r, total=True),
        "/offset": lambda r: _offset_page(r, total=False),
        "/pages-total": lambda r: _numbered(r, total=True),
        "/pages": lambda r: _numbered(r, total=False),
    }
    for path, handler in routes.items():
        api.route(path, handler)
    api.route("/tickets", _tickets)
    for ticket in COMMENTS:
        api.route(f"/tickets/{ticket}/comments", comments_page)


def _page_of(request: Recorded, page: int, size: int) -> list[dict[str, object]]:
    return ITEMS[(page - 1) * size : page * size]


def _last_page(size: int, count: int = len(ITEMS)) -> int:
    return max(1, -(-count // size))


def link_page(api: ApiServer, request: Recorded, *, broken: bool = False) -> Reply:
    page, size = int(request.query.get("page", 1)), _size(request, "per_page")
    last = _last_page(size)
    url = f"{api.url}{request.path}?per_page={size}&page="
    links = [f'<{url}1>; rel="first"']
    if page < last and not (broken and page == 2):
        links.append(f'<{url}{page + 1}>; rel="next"')
    if page < last:
        links.append(f'<{url}{last}>; rel="last"')
    if page > 1:
        links.append(f'<{url}{page - 1}>; rel="prev"')
    return Reply(200, json=_page_of(request, page, size), headers={"Link": ", ".join(links)})


def _link_split(request: Recorded) -> Reply:
    page, size = int(request.query.get("page", 1)), _size(request, "per_page")
    last = _last_page(size)
    repeated = [("Link", f'</link-split?page=1&per_page={size}>; rel=first; title="page, one"')]
    if page == last - 1:  # the next page is also the last: one link, two relations
        repeated.append(("Link", f'<link-split?page={last}&per_page={size}>; rel="next last"'))
    elif page < last:
        repeated.append(("Link", f"<?page={page + 1}&per_page={size}>;rel=next"))
    return Reply(200, json={"data": _page_of(request, page, size)}, repeated=tuple(repeated))


def _next(api: ApiServer, request: Recorded, *, absolute: bool) -> Reply:
    page, size = int(request.query.get("page", 1)), _size(request, "size")
    following = None
    if page < _last_page(size):
        following = f"{request.path}?page={page + 1}&size={size}"  # root-relative unless absolute
        following = api.url + following if absolute else following
    if absolute:
        return Reply(200, json={"data": _page_of(request, page, size), "links": {"next": following}})
    return Reply(200, json={"data": _page_of(request, page, size), "next_page": following})


def _cursor_body(request: Recorded) -> Reply:
    offset, size = _offset(request.query.get("cursor")), _size(request, "limit")
    more = offset + size < len(ITEMS)
    metadata = {"next_cursor": token(offset + size) if more else ""}
    return Reply(200, json={"ok": True, "members": ITEMS[offset : offset + size], "response_metadata": metadata})


def _cursor_header(request: Recorded) -> Reply:
    offset, size = _offset(request.query.get("page_token")), _size(request, "page_size")
    headers = {"X-Next-Page-Token": token(offset + size)} if offset + size < len(ITEMS) else {}
    return Reply(200, json={"results": ITEMS[offset : offset + size]}, headers=headers)


def _stripe(request: Recorded) -> Reply:
    size = _size(request, "limit")
    after = request.query.get("starting_after")
    start = 0 if after is None else next(i + 1 for i, item in enumerate(ITEMS) if str(item["id"]) == after)
    data = ITEMS[start : start + size]
    return Reply(200, json={"object": "list", "data": data, "has_more": start + size < len(ITEMS)})


def _offset_page(request: Recorded, *, total: bool) -> Reply:
    offset, limit = int(request.query.get("offset", 0)), _size(request, "limit")
    results = ITEMS[offset : offset + limit]
    return Reply(200, json={"total": len(ITEMS), "results": results} if total else results)


def _numbered(request: Recorded, *, total: bool) -> Reply:
    page, size = int(request.query.get("page", 1)), _size(request, "per_page")
    items = _page_of(request, page, size)
    if total:
        return Reply(200, json={"meta": {"total_pages": _last_page(size), "page": page}, "items": items})
    return Reply(200, json=items)


def _tickets(request: Recorded) -> Reply:
    page, tickets = int(request.query.get("page", 1)), sorted(COMMENTS)
    headers = {"Link": f'</tickets?page={page + 1}>; rel="next"'} if page * 2 < len(tickets) else {}
    return Reply(200, json={"tickets": [{"id": t} for t in tickets[(page - 1) * 2 : page * 2]]}, headers=headers)


def comments_page(request: Recorded) -> Reply:
    ticket = int(request.path.split("/")[2])
    comments = [{"id": ticket * 1000 + i, "body": f"comment {i}"} for i in range(1, COMMENTS[ticket] + 1)]
    offset, size = _offset(request.query.get("page_token")), _size(request, "per_page")
    following = offset + size < len(comments)
    headers = {"X-Next-Page-Token": token(offset + size)} if following else {}
    return Reply(200, json={"comments": comments[offset : offset + size]}, headers=headers)
