"""A list endpoint's pagination, guessed from its sample reply (a Link header, a next URL or cursor
in the body or a header, has_more + ids, a page count or a total), or a comment that it reads one page.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit, urlunsplit

from runner.fieldguess import field, scalar

_LINK_NEXT = re.compile(r"""<[^>]*>\s*;[^,]*?\brel\s*=\s*"?[^",;]*\bnext\b""", re.IGNORECASE)
_NEXT_URL_KEYS = ("next_url", "next_page_url", "nextPageUrl", "next_link", "nextLink", "next_page", "next")
_CURSOR_KEYS = ("next_cursor", "nextCursor", "next_page_token", "nextPageToken", "next_token", "nextToken", "cursor")
_NESTS = ("links", "paging", "meta", "pagination", "response_metadata", "page_info", "pageInfo", "metadata")
_TOTAL_PAGES = ("total_pages", "totalPages", "page_count", "pageCount", "last_page", "lastPage", "pages")
_TOTALS = ("total", "total_count", "totalCount", "total_results", "totalResults", "count")
_SIZES = ("limit", "per_page", "perPage", "page_size", "pageSize", "size")
_HEADER_CURSOR = re.compile(r"^x-next-[a-z-]*(token|cursor)$|^x-(page-)?cursor$")  # not x-token: auth


def _url_like(value: Any) -> bool:
    return isinstance(value, str) and (value.startswith(("http://", "https://", "/", "?")) or "?" in value)


def _find(body: Any, keys: tuple[str, ...]) -> tuple[str, Any] | None:
    """The first of `keys` in the body or one level down in a pagination-ish object: (JMESPath, value)."""
    if not isinstance(body, dict):
        return None
    for key in keys:
        if key in body and not isinstance(body[key], dict | list):
            return f"body.{field(key)}", body[key]
    for nest in _NESTS:
        inner = body.get(nest)
        if isinstance(inner, dict):
            for key in keys:
                if key in inner and not isinstance(inner[key], dict | list):
                    return f"body.{field(nest)}.{field(key)}", inner[key]
    return None


def _cursor_param(key: str) -> str:
    """The query parameter a cursor is likely sent back in: `next_page_token` -> `page_token`."""
    name = key.rsplit(".", 1)[-1].strip('"').lower().replace("-", "_")
    for prefix in ("x_", "next_", "next"):
        name = name.removeprefix(prefix)
    camel = key.rsplit(".", 1)[-1].strip('"')
    if camel.startswith("next") and camel[4:5].isupper():  # nextPageToken -> pageToken
        return camel[4].lower() + camel[5:]
    return name or "cursor"


def _page_size(url: str, body: Any) -> tuple[int, str | None, str] | None:
    """(page_size, size_param, where it was seen) when a page size is evident in the URL's query or the body."""
    query = parse_qs(urlsplit(url).query)
    for name in _SIZES:
        values = query.get(name)
        if values and values[0].isdigit() and int(values[0]) > 0:
            return int(values[0]), name, f"{name}={values[0]} in the URL"
    found = _find(body, _SIZES)
    if found and isinstance(found[1], int) and not isinstance(found[1], bool) and found[1] > 0:
        name = found[0].rsplit(".", 1)[-1].strip('"')
        return found[1], name, f"{found[0]} = {found[1]} in the sample"
    return None


def pagination_text(url: str, body: Any, headers: dict[str, str] | None, records: str | None) -> str:
    """The `pagination:` block for what the sample reply shows (a Link header, a next URL or cursor
    in the body or a header, Stripe's has_more, page or offset counters), with a comment saying what
    was detected; without any, a comment saying the source reads one page and how to page it."""
    heads = {k.lower(): v for k, v in (headers or {}).items()}
    items = body if isinstance(body, list) else None
    if records and records.startswith("body.") and isinstance(body, dict):
        node: Any = body
        for part in records.removeprefix("body.").split("."):
            node = node.get(part.strip('"')) if isinstance(node, dict) else None
        items = node if isinstance(node, list) else None
    size = _page_size(url, body)
    query = parse_qs(urlsplit(url).query)
    has_more = _find(body, ("has_more", "hasMore", "has_next", "hasNext", "more"))
    # a JSON boolean, or the text "true"/"false" some APIs send (the runtime reads both)
    has_more = has_more if has_more and (isinstance(has_more[1], bool) or has_more[1] in ("true", "false")) else None
    lines: list[str] = []
    detected = ""
    if _LINK_NEXT.search(heads.get("link", "")):
        detected = 'a Link header with rel="next"'
        lines = ["type: link"]
    elif (found := _find(body, _NEXT_URL_KEYS)) and (found[1] is None or _url_like(found[1])):
        seen = "null on this page" if found[1] is None else "a URL"
        detected = f"a next-page URL in the body ({found[0]}, {seen})"
        lines = ["type: next_url", f"next: {scalar(found[0])}"]
    elif header := next((h for h in heads if _HEADER_CURSOR.match(h)), None):
        expression = f'headers."{header}"'
        param = _cursor_param(header)
        detected = f"a next-page token in the {header} response header"
        lines = [
            "type: cursor",
            f"param: {param}  # a guess from the header's name: check the API's docs",
            f"cursor: {scalar(expression)}",
        ]
    elif (found := _find(body, _CURSOR_KEYS)) or (
        (found := _find(body, ("next",))) and isinstance(found[1], str | int)
    ):
        param = _cursor_param(found[0])
        detected = f"a next-page cursor in the body ({found[0]})"
        lines = [
            "type: cursor",
            f"param: {param}  # a guess from the key's name: check the API's docs",
            f"cursor: {scalar(found[0])}",
        ]
    elif has_more and records and items and isinstance(items[0], dict) and "id" in items[0]:
        detected = f"{has_more[0]} and record ids (Stripe-style: starting_after the last record's id)"
        lines = [
            "type: cursor",
            "param: starting_after  # check the API's docs",
            f"cursor: {scalar(records + '[-1].id')}",
        ]
    elif (found := _find(body, _TOTAL_PAGES)) and isinstance(found[1], int) and not isinstance(found[1], bool):
        current = _find(body, ("page", "current_page", "currentPage", "page_number"))
        start = 0 if current and current[1] == 0 else 1
        detected = f"a page count in the body ({found[0]})"
        lines = [
            "type: page",
            "param: page  # check the API's docs",
            f"start: {start}",
            f"total_pages: {scalar(found[0])}",
        ]
    elif (
        (total := _find(body, _TOTALS))
        and isinstance(total[1], int)
        and not isinstance(total[1], bool)
        and (_find(body, ("offset", "skip", "start")) or "offset" in query or size or (items and len(items) < total[1]))
    ):
        detected = f"a total in the body ({total[0]})"
        if size is None and items:  # the API's own page size, seen as the sample's page
            size = len(items), None, f"the sample's {len(items)} records (the API's default page size?)"
        lines = ["type: offset", "param: offset  # check the API's docs", f"total: {scalar(total[0])}"]
    elif "page" in query or "offset" in query or (size and size[1] in query and items and len(items) == size[0]):
        # page= / offset= in the URL, or a size there (per_page=7, limit=7) the sample filled exactly:
        # a full page, so more may follow. page_size makes the first short (or empty) page the last.
        style = (
            "page" if "page" in query else "offset" if "offset" in query or (size and size[1] == "limit") else "page"
        )
        given = [f"{name}={query[name][0]}" for name in (style, size[1] if size else None) if name and name in query]
        detected = f"{' and '.join(given)} in the URL"
        if size and size[1] in query and items and len(items) == size[0]:
            detected += f", and the sample's {len(items)} records fill that page"
        first = query.get("page", ["1"])[0]
        lines = [f"type: {style}", f"param: {style}"]
        if style == "page":
            lines.append(f"start: {int(first) if first.isdigit() and int(first) < 2 else 1}")
        if size is None and items:
            size = len(items), None, f"the sample's {len(items)} records (the API's default page size?)"
    if not lines or (lines[0] == "type: offset" and size is None):
        return _PAGINATION_HINT
    if has_more and lines[0] in ("type: cursor", "type: next_url"):
        lines.append(f"has_more: {scalar(has_more[0])}")
    if size:
        lines.append(f"page_size: {size[0]}  # from {size[2]}: a shorter page is the last")
        if size[1]:
            lines.append(f"size_param: {size[1]}")
    text = f"# pagination: detected {detected}; see docs/reference.md#pagination\n"
    return text + "pagination:\n" + "".join(f"  {line}\n" for line in lines) + "\n"


def paged_url(url: str, block: str) -> str:
    """The URL as the source file writes it: without the query parameters its pagination `block` sets
    (`param`, `size_param`), which the pagination sends on the listing's requests and validate
    refuses in the URL too (review revJ F7). `?page=1&per_page=7` became `start: 1`, `page_size: 7`."""
    # A cursor's `param` stays: the first request is sent as written, its value the first cursor
    setting = "size_param" if re.search(r"^  type: cursor\b", block, re.MULTILINE) else "param|size_param"
    names = set(re.findall(rf"^  (?:{setting}): ([^\s#]+)", block, re.MULTILINE))
    parts = urlsplit(url)
    kept = [pair for pair in parts.query.split("&") if pair and unquote_plus(pair.partition("=")[0]) not in names]
    return url if not names else urlunsplit(parts._replace(query="&".join(kept)))


_PAGINATION_HINT = (
    "# pagination: none detected in the sample, so this source reads ONE page (the first) only.\n"
    "# If the API pages its list, add a block; see docs/reference.md#pagination, e.g.\n"
    "# pagination:\n"
    "#   type: cursor                    # or link, next_url, page, offset\n"
    "#   param: cursor\n"
    '#   cursor: "body.meta.next_cursor"\n\n'
)
