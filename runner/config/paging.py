"""`pagination:`: where the next page is, and what a paged request may not also do."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

from runner import spec, templating
from runner.config.builder import Builder
from runner.expressions import JSON
from runner.redaction import Redactor
from runner.sourcefile import show

# request.query names that set a page size: with pagination, they belong in page_size/size_param.
PAGE_SIZE_PARAMS = frozenset(
    {"page_size", "pagesize", "per_page", "perpage", "limit", "page[size]", "page[limit]", "max_results", "maxresults"}
)


class PaginationSection(Builder):
    """`pagination:`, and the request settings that cannot go with it."""

    def pagination(self) -> spec.Pagination | None:
        raw = self.section("pagination", {})
        if raw is None:
            return None
        keys = ("param", "start", "max_pages", "max_items", "page_size", "size_param")
        extra: dict[str, Any] = {k: raw[k] for k in keys if k in raw}
        for key in ("cursor", "next", "has_more", "total", "total_pages"):
            if key in raw and self.usable(("pagination", key)):
                extra[key] = self.reply_expression(("pagination", key), raw[key])
        origins = list(enumerate(raw.get("allow_origins", ())))
        for i, origin in origins:
            if self.usable(("pagination", "allow_origins", i)) and (reason := _origin_problem(origin)):
                self.add(("pagination", "allow_origins", i), f"{show(origin)} is not a usable origin: {reason}")
        extra["allow_origins"] = tuple(o.rstrip("/").lower() for _, o in origins)
        kind = spec.PaginationType(raw.get("type", "none"))
        if "size_param" in raw and "page_size" not in raw:
            self.add(("pagination", "size_param"), "sends page_size, which is not set: add page_size")
        if "size_param" in raw and raw["size_param"] == raw.get("param"):
            self.add(
                ("pagination", "size_param"),
                f"{show(raw['size_param'])} is also pagination.param: the page size and the position need"
                " two parameters",
            )
        self.check_query_page_size(raw, kind)
        request = self.raw.get("request")
        if (
            isinstance(request, dict)
            and request.get("conditional") is True
            and (kind, "batch" in request)
            != (
                spec.PaginationType.NONE,
                False,
            )
        ):
            self.add(
                ("request", "conditional"),
                "conditional requests need one request per entity: a paged or batched reply's validator"
                " does not cover the entity's whole data; remove `conditional: true`",
            )
        if kind is not spec.PaginationType.NONE and isinstance(request, dict) and "batch" in request:
            self.add(
                ("request", "batch"),
                f"cannot be combined with pagination (type: {kind.value}): a batched request lists"
                " several entities in one reply, a paged one follows one listing; remove one of them",
            )
        pagination = spec.Pagination(type=kind, missing_next=spec.MissingNext(raw.get("missing_next", "fail")), **extra)
        self.check_query_names(pagination)
        return pagination

    def check_query_names(self, pagination: spec.Pagination) -> None:
        """A parameter the pagination sets, also written in the URL's own query or in request.query: the
        written value is replaced on every page (review revJ F7: `?page=1` with `param: page` sent
        page=0, then page=1), while the docs say a URL's query is kept as written. A query that comes
        from a setting is checked at run start (runner/preflight.py)."""
        request = self.raw.get("request")
        if not isinstance(request, dict):
            return
        paged = pagination.query_names()
        url = request.get("url")
        own_query, written = _own_query(url) if isinstance(url, str) else ("", "")
        own = templating.query_names(own_query)
        for name, setting in paged.items():
            if name in own:
                self.add(("request", "url"), written + templating.paged_problem(name, setting))
        cursor = pagination.param if pagination.type is spec.PaginationType.CURSOR else None
        if reason := templating.repeated_cursor(own_query, cursor):
            self.add(("request", "url"), written + reason)
        query = request.get("query")
        for name in query if isinstance(query, dict) else ():
            if paged.get(name) == "pagination.param":  # size_param: check_query_page_size says it
                first = (
                    "" if pagination.type is spec.PaginationType.CURSOR else " (pagination.start sets the first one)"
                )
                self.add(
                    ("request", "query", name),
                    f"is pagination.param, which the pagination sets on the listing's requests, replacing this"
                    f" value: remove it here{first}",
                )

    def check_query_page_size(self, raw: dict[str, JSON], kind: spec.PaginationType) -> None:
        """A page size written in request.query instead of pagination.page_size: the request sends it,
        but pagination cannot tell a full page from the last one (the guard against a silently cut
        listing is off), or size_param would send page_size over it. Only refused when nothing else
        (has_more, total, total_pages) says where the listing ends."""
        query = self.raw.get("request", {}).get("query") if isinstance(self.raw.get("request"), dict) else None
        if kind is spec.PaginationType.NONE or not isinstance(query, dict):
            return
        size_param = raw.get("size_param")
        # Nothing else says where the listing ends (has_more, total, total_pages): page_size is the guard.
        unguarded = not {"page_size", "has_more", "total", "total_pages"} & raw.keys()
        for name, value in query.items():
            path = ("request", "query", name)
            if name == size_param:
                self.add(
                    path,
                    f"is pagination.size_param, which sends pagination.page_size: remove it here"
                    f" (and set page_size: {value})"
                    if "page_size" not in raw
                    else "is pagination.size_param, which sends pagination.page_size: remove it here",
                )
            elif unguarded and size_param is None and name.lower() in PAGE_SIZE_PARAMS:
                self.add(
                    path,
                    f"looks like a page size: write it as pagination.page_size: {value} and size_param: {name},"
                    " so a full page with no next page is caught instead of ending the listing",
                )


def _own_query(url: str) -> tuple[str, str]:
    """The URL's own query as its requests send it, and how a problem with it starts. A URL whose
    settings all have defaults written in the file is read with them (review revK F4: `?${env.QN:-page}=1`
    with `param: page` passed validate and was refused only at run start); one reading a setting
    without a default is checked at run start (runner/preflight.py)."""
    as_written = url.partition("#")[0].partition("?")[2], ""
    try:
        template = templating.parse(url)
    except ValueError:  # the request section reports it
        return as_written
    if not template.settings or not all(s.default for s in template.settings):
        return as_written
    placeholders = dict.fromkeys(template.columns, "0")
    rendered = templating.render(template, placeholders, templating.Settings({}, Redactor()), url=True)
    try:
        query = urlsplit(rendered.partition("#")[0]).query
    except ValueError:  # an unusable URL: the request section says why
        return as_written
    return query, f"is not a usable URL{templating.with_defaults(template)}: "


def _origin_problem(origin: str) -> str | None:
    """What makes an allow_origins entry something a next URL could never match, in words."""
    if "*" in origin:  # before the URL check, which would only say the host is not a valid name
        return "wildcards (*) are not supported: list each origin, as https://cdn.example.com"
    if reason := templating.url_problem(origin):
        return reason
    url = httpx.URL(origin)
    if url.userinfo:
        return "it has a user name or password (user@host): an origin is scheme://host[:port]"
    if url.raw_path not in (b"", b"/") or url.query or url.fragment:
        return "it has a path, query or fragment: an origin is scheme://host[:port]"
    return None
