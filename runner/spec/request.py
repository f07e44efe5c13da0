"""`request:` and `pagination:`: what is sent for an entity, and where the next page is."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from runner.expressions import Expression
from runner.spec.templates import Template


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """Several entities per request (Steam price: 30 appids joined by commas), one outcome per
    *requested* entity: `record` picks each entity's part of the body, and that part is what the
    outcome rules and mappings see as `body` (the whole body stays at `response.body`)."""

    size: int
    param: str  # the query parameter carrying the joined keys
    separator: str = ","
    record: Expression  # e.g. get(body, to_string(entity.appid)); null -> no data for that entity


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    method: str = "GET"
    url: Template
    query: tuple[tuple[str, Template], ...] = ()
    headers: tuple[tuple[str, Template], ...] = ()
    timeout: float = 30.0  # per attempt: connect + send + the whole body
    max_body: int = 10_000_000
    verify_tls: bool = True
    batch: Batch | None = None
    conditional: bool | None = None  # ETag/Last-Modified validators; None: on where usable (runner.conditional)


class PaginationType(StrEnum):
    NONE = "none"  # one request
    CURSOR = "cursor"  # a token from the body or a header, sent in `param` (also Stripe's has_more + last id)
    PAGE = "page"  # page numbers from `start`
    OFFSET = "offset"  # item offsets from `start`, stepping by the items received
    LINK = "link"  # the RFC 8288 `Link` header's rel="next" URL (GitHub, GitLab)
    NEXT_URL = "next_url"  # a next-page URL picked from the reply (absolute or relative)


class MissingNext(StrEnum):
    FAIL = "fail"  # the API said there is more but gave no way there: the listing is partial, fail
    END = "end"  # this API ends its listings that way: take it as the end


@dataclass(frozen=True, slots=True, kw_only=True)
class Pagination:
    """How a reply leads to the next request. `none` for one request per entity. Every expression
    is evaluated over {status, headers, body} of one reply (header names lower-case)."""

    type: PaginationType = PaginationType.NONE
    param: str | None = None  # query parameter carrying the cursor / page number / offset
    cursor: Expression | None = None  # cursor: the next cursor
    next: Expression | None = None  # next_url: the next page's URL
    has_more: Expression | None = None  # cursor/next_url: the API says there are more pages
    total: Expression | None = None  # offset: how many items the listing has
    total_pages: Expression | None = None  # page: how many pages the listing has
    start: int = 0  # page: first page number; offset: first offset
    page_size: int | None = None  # items in a full page; fewer: the last page
    size_param: str | None = None  # query parameter sent with page_size (limit, per_page)
    max_pages: int | None = None  # a cap; reaching it makes the listing "not complete"
    max_items: int | None = None  # a cap on items, checked after each page; reaching it: "not complete"
    missing_next: MissingNext = MissingNext.FAIL
    allow_origins: tuple[str, ...] = ()  # next URLs may lead to these origins too (without secret headers)

    def query_names(self) -> dict[str, str]:
        """The query parameters this pagination sets on its requests (replacing any value of that name
        the request already has), each with the setting that names it, for messages. Not a cursor
        pagination's `param`: the first request is sent as written, so a value there is the first
        cursor (`?cursor=*`, as Crossref and Solr start; review revK F1)."""
        names = {}
        if self.type in (PaginationType.PAGE, PaginationType.OFFSET) and self.param:
            names[self.param] = "pagination.param"
        if self.size_param is not None and self.page_size is not None:
            names[self.size_param] = "pagination.size_param"
        return names
