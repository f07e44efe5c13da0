"""One paged listing (`Walk`): counts its pages and items, builds each page's request from the first
one, and turns what would lose items into an error naming the cause: "the API says there is more but
gives no way there" (never a silent partial listing), a loop, a foreign origin; and says when a cap
(max_pages, max_items, the default page cap) stopped it. Where the next page is, style by style, is
runner.pagestyles' (its names are re-exported here).

Sending, retries and the rate limit stay in client.send; fetch.pages owns the loop.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable

import httpx

from runner import spec, templating
from runner.errors import PaginationError
from runner.expressions import JSON
from runner.pagestyles import BY_URL, NUMBERED, STYLES, At, Position, Step, context, empty, shown
from runner.reply import Reply

__all__ = ["STYLES", "Step", "Walk", "context", "empty"]

MAX_URL = 16_384  # a longer "next URL" is garbage, not a page
DEFAULT_MAX_PAGES = 10_000  # the page cap of a listing without max_pages: reaching it = not complete
_FOREIGN_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
# Headers that belong to one host or one hop: never copied to a request for another origin. Host in
# particular names the first request's host; httpx sets the right one from the URL.
_HOP_HEADERS = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "origin",
        "referer",
    }
)


# --- one listing ----------------------------------------------------------------------------------
class Walk:
    """One paged listing: counts pages and items, guards against loops and foreign origins, and
    builds each page's request from the first one.

    `secret_headers` / `secret_params`: the source's headers and query parameters holding a
    ${secret.*}. Next URLs are kept without those parameters (they are checkpointed and shown), and
    the parameters are added back only for the source's own origin."""

    def __init__(
        self,
        pagination: spec.Pagination,
        first: httpx.Request,
        *,
        secret_headers: frozenset[str],
        secret_params: frozenset[str],
        redact: Callable[[str], str],
        first_cursor_in_query: bool = False,
    ) -> None:
        self.pagination, self.first, self.redact = pagination, first, redact
        if first_cursor_in_query and pagination.param is not None:
            self.first = _as_written(first, pagination.param)
        self.secret_headers, self.secret_params = secret_headers | _FOREIGN_HEADERS, secret_params
        self.origins = {_origin(first.url), *(_origin(httpx.URL(o)) for o in pagination.allow_origins)}
        self.pages = self.items = 0
        self.seen: set[bytes] = set()  # digests of the positions so far: 16 bytes a page
        self.read: dict[bytes, int] = {}  # digest of each page's records (order-insensitive) -> its page number
        self.said_more: Step | None = None  # the last reply said there is more (has_more, total...)

    @property
    def by_url(self) -> bool:
        return self.pagination.type in BY_URL

    def start(self, resume: Position | None) -> Position | None:
        """Where the first request goes: a checkpoint, else the first page number or offset."""
        numbered = self.pagination.type in NUMBERED
        if resume is None:
            return self.pagination.start if numbered else None
        # A checkpoint written under another pagination type (the source was edited) is not a place
        # to resume: say so, rather than send it as a page number or a URL.
        fits = (
            isinstance(resume, int) if numbered else not self.by_url or str(resume).startswith(("http://", "https://"))
        )
        if not fits or isinstance(resume, bool):
            raise PaginationError(
                f"the checkpoint {self.redact(str(resume))[:80]!r} is not a {self.pagination.type} position"
                " (was the pagination changed?); run with --restart to start over"
            )
        return resume

    def request(self, position: Position | None) -> httpx.Request:
        first = self.first
        if position is None:
            return _sized(first, self.pagination)
        if not self.by_url:
            assert self.pagination.param is not None  # the schema requires it for these styles
            return _sized(_with_query(first, self.pagination.param, str(position)), self.pagination)
        try:
            url = self._checked(first.url.join(str(position)), str(position))
        except (httpx.InvalidURL, UnicodeError) as error:  # UnicodeError: idna refusing an `xn--` host
            raise PaginationError(f"next-page URL {self.redact(str(position))!r} is not a URL: {error}") from None
        own = _origin(url) == _origin(first.url)
        if own:  # the source's own credentials go back in; the API's link never carries them
            secrets = tuple((k, v) for k, v in first.url.params.multi_items() if k in self.secret_params)
            if secrets:  # appended to the link's query text, which is left as the API wrote it
                query = b"&".join([*templating.query_pairs(url.query), str(httpx.QueryParams(secrets)).encode("ascii")])
                url = url.copy_with(query=query)
        dropped = _HOP_HEADERS if own else _HOP_HEADERS | self.secret_headers
        headers = [(k, v) for k, v in first.headers.multi_items() if k.lower() not in dropped]
        request = httpx.Request(first.method, url, headers=headers, extensions=dict(first.extensions))
        return _sized(request, self.pagination)

    def ended(self, reply: Reply, items: int | None) -> bool:
        """Whether `reply` is the empty page that ends a `page` listing after its first page (it is
        not yielded). Empty is judged on the page's records (`items`: None when the source's
        `records` found nothing there or the body is not JSON; then the page goes on to the mappings,
        which report it): `{"data": [], "meta": {}}` is empty, as are a blank body, `{}` and `[]`.
        An error if the page before said there was more (total_pages not reached), unless
        missing_next: end."""
        if self.pagination.type is not spec.PaginationType.PAGE or not self.pages or reply.status // 100 != 2:
            return False
        if not (items == 0 and reply.body is not None) and not empty(reply):
            return False
        if self.said_more is not None:
            self._cut(reply, self.said_more.why, f"page {self.pages + 1} is empty")
        return True

    def follow(
        self, reply: Reply, position: Position | None, records: list[JSON] | None, sent: httpx.Request
    ) -> Position | None:
        """Where the page after `reply` is (None: `reply` is the last page). Raises PaginationError
        when going on or stopping would lose items: a loop, a foreign origin, a missing next page.
        `records`: the page's records as the mappings see them (None: none to count)."""
        items = len(records) if records is not None else 0
        self.pages, self.items = self.pages + 1, self.items + items
        if self.pagination.type is spec.PaginationType.NONE or reply.status // 100 != 2:
            return None
        step = STYLES[self.pagination.type](self.pagination, reply, At(position, items, sent.url))
        self.said_more = step if step.more else None
        full = self.pagination.page_size is not None and items >= self.pagination.page_size
        numbered = self.pagination.type in NUMBERED
        if step.next is None:
            if step.more:
                self._cut(reply, step.why, "the page is empty" if numbered else f"{step.via} gave nothing")
            elif step.more is None and full and reply.body is not None and not numbered:
                why = f"the page is full ({items} items, page_size {self.pagination.page_size})"
                self._cut(reply, why, f"{step.via} gave nothing")
            return None
        following = self._keyed(sent, step.next) if self.by_url else step.next
        self._guard(reply, following, position, records)
        return following

    def capped(self, following: Position | None) -> str:
        """Why a cap stopped a listing that had more ("max_pages 2 reached"), "" when none did. A
        listing without max_pages stops at DEFAULT_MAX_PAGES: not complete, never an endless walk.
        A page that goes past max_items is cut (`keep`), and capped even if it was the last one."""
        pages, items = self.pagination.max_pages, self.pagination.max_items
        if items is not None and self.items > items:
            return f"max_items {items} reached"
        if following is None:
            return ""
        if pages is not None and self.pages >= pages:
            return f"max_pages {pages} reached"
        if items is not None and self.items >= items:
            return f"max_items {items} reached"
        if pages is None and self.pages >= DEFAULT_MAX_PAGES:
            return f"the default page cap ({DEFAULT_MAX_PAGES} pages, set pagination.max_pages to change it) reached"
        return ""

    def keep(self, items: int) -> int | None:
        """How many of the last page's `items` records are within max_items; None: all of them."""
        cap = self.pagination.max_items
        if cap is None or self.items <= cap:
            return None
        return max(0, items - (self.items - cap))

    def _cut(self, reply: Reply, why: str, missing: str) -> None:
        if self.pagination.missing_next is spec.MissingNext.END:
            return
        raise PaginationError(
            f"listing cut short after {_count(self.pages, 'page')} ({_count(self.items, 'item')}): {why} but"
            f" {missing} ({reply.url});"
            " if this API ends its listings that way, set pagination.missing_next: end"
        )

    def _keyed(self, sent: httpx.Request, target: Position) -> str:
        """A next URL resolved against the request that answered, without the source's secret
        parameters (added back by `request`): what is checkpointed, compared and shown."""
        text = str(target)
        if len(text) > MAX_URL:
            raise PaginationError(f"a next-page URL of {len(text)} characters (at most {MAX_URL}); not followed")
        try:
            url = self._checked(sent.url.join(text), text)
        except (httpx.InvalidURL, UnicodeError) as error:  # UnicodeError: idna refusing an `xn--` host (revK F3)
            raise PaginationError(f"next-page URL {self.redact(text)!r} is not a URL: {error}") from None
        # The query goes on as the API wrote it (as httpx parsed the link: only what cannot appear in a
        # URL is percent-encoded), less the secret parameters: re-encoding it (`ids=a,b` -> `a%2Cb`,
        # `&x` -> `x=`) breaks APIs that sign their next links over the query text (review revM M2).
        pairs = templating.query_pairs(url.query)
        kept = [pair for pair in pairs if templating.pair_name(pair) not in self.secret_params]
        if len(kept) < len(pairs):
            url = url.copy_with(query=b"&".join(kept) or None)
        return str(url)

    def _checked(self, url: httpx.URL, text: str) -> httpx.URL:
        if url.scheme not in ("http", "https") or not url.host:
            raise PaginationError(f"next-page URL {self.redact(text)!r} is not an http(s) URL; not followed")
        if url.userinfo and (url.userinfo != self.first.url.userinfo or _origin(url) != _origin(self.first.url)):
            # httpx would send it as Authorization: Basic, to whatever host the API names
            shown = self.redact(str(url.copy_with(userinfo=b"")))
            raise PaginationError(f"next-page URL {shown} carries a user name or password (user@host); not followed")
        if _origin(url) not in self.origins:
            raise PaginationError(
                f"next-page URL {self.redact(str(url))} leads to another origin than {_origin_text(self.first.url)};"
                " refused: the request's credentials would go there (list it in pagination.allow_origins"
                " to follow it without them)"
            )
        return url

    def _guard(self, reply: Reply, following: Position, position: Position | None, records: list[JSON] | None) -> None:
        """Stops a listing going round: a cursor or next URL seen before, or a page whose records
        (in any order) are those of an earlier page of this listing, whatever nonce the API put in
        its next URL, cursor or body. Only 16-byte digests are kept, one per page."""
        if self.by_url or self.pagination.type not in NUMBERED:
            digest = _digest(str(following).encode("utf-8", "surrogatepass"))
            if digest in self.seen:
                text = self.redact(str(following))
                shown = text if len(text) <= 80 else text[:80] + "…"
                via = f", from {_shown_via(self.pagination)}"
                what, via = ("next-page URL", "") if self.by_url else ("cursor", via)
                raise PaginationError(
                    f"pagination loop: {self.redact(str(reply.url))} returned {what} {shown!r} a second time"
                    f" (after {self.pages} pages{via}); stopped{'' if self.by_url else self._hint()}"
                )
            self.seen.add(digest)
        if records is None:  # no records to compare (no JSON, or none where the source expects them)
            return
        canonical = sorted(json.dumps(record, sort_keys=True, separators=(",", ":")) for record in records)
        digest = _digest("\n".join(canonical).encode("utf-8", "surrogatepass") + b"\x00" + str(len(records)).encode())
        earlier = self.read.get(digest)
        if earlier is None:
            self.read[digest] = self.pages
            return
        what = "no records, like" if not records else "the same records as"
        before = "the previous page" if earlier == self.pages - 1 else f"page {earlier}"
        if self.pagination.type in NUMBERED:
            raise PaginationError(
                f"pagination loop: {self.pagination.param} {position} from {self.redact(str(reply.url))} (page"
                f" {self.pages}) has {what} {before}, yet the listing goes on (does the API read the"
                f" '{self.pagination.param}' parameter?); stopped"
            )
        raise PaginationError(
            f"pagination loop: page {self.pages} ({self.redact(str(reply.url))}) has {what} {before}, with a new"
            f" next page from {_shown_via(self.pagination)}; stopped{self._hint()}"
        )

    def _hint(self) -> str:
        if self.pagination.type is spec.PaginationType.CURSOR:
            return f"; if the API ignored the cursor, check pagination.param ({self.pagination.param})"
        return ""


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _shown_via(pagination: spec.Pagination) -> str:
    if pagination.type is spec.PaginationType.CURSOR and pagination.cursor is not None:
        return "pagination." + shown(pagination.cursor, "cursor")
    if pagination.type is spec.PaginationType.NEXT_URL and pagination.next is not None:
        return "pagination." + shown(pagination.next, "next")
    if pagination.type is spec.PaginationType.LINK:
        return 'the Link header (rel="next")'
    return f"pagination.type {pagination.type}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


def _origin_text(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


def _sized(request: httpx.Request, pagination: spec.Pagination) -> httpx.Request:
    if pagination.size_param is None or pagination.page_size is None:
        return request
    return _with_query(request, pagination.size_param, str(pagination.page_size))


def _with_query(request: httpx.Request, name: str, value: str) -> httpx.Request:
    url = templating.with_param(request.url, name, value)
    return httpx.Request(request.method, url, headers=request.headers, extensions=dict(request.extensions))


# What httpx percent-encodes in a query parameter's value but leaves as it is in a URL's query text.
_KEPT_IN_URL = {f"%{ord(c):02X}": c for c in "!$'()*,;:@/?"}
_ESCAPED = re.compile("|".join(map(re.escape, _KEPT_IN_URL)))


def _as_written(request: httpx.Request, name: str) -> httpx.Request:
    """The first request with a cursor pagination's `param`, given in request.query, sent as if written
    in the URL (review revL F3: `query: {cursor: "*"}` went out as `cursor=%2A`, `?cursor=*` in the
    URL as `cursor=*`; APIs starting a listing at `*` need not decode it)."""
    pairs = []
    for raw in templating.query_pairs(request.url.query):
        if templating.pair_name(raw) == name:
            key, equals, value = raw.decode("ascii").partition("=")
            raw = (key + equals + _ESCAPED.sub(lambda m: _KEPT_IN_URL[m[0]], value)).encode("ascii")
        pairs.append(raw)
    url = request.url.copy_with(query=b"&".join(pairs))
    return httpx.Request(request.method, url, headers=request.headers, extensions=dict(request.extensions))
