"""A source's request, compiled once per run: what `fetch.build_request` did per entity, prepared.

Rendering a request used to cost ~100 µs of event-loop time per entity (a third of syncrun's own
work at 0 ms latency): the URL template rendered and parsed by httpx twice (once for the structure
check, once by `client.build_request`), the client's default headers merged again, the timeout
converted again. A `RequestPlan` does the constant part at run start and per entity only puts the
entity's encoded values into their places.

Why the fast path builds the same request as the general one, byte for byte (tests/test_plans.py
compares them over hostile values):

- Every entity value goes into the URL through `templating.encode` (unreserved characters and `%XX`
  only; `.` and `..` encoded), and only after the authority: the first value must follow
  `scheme://host[:port]/`. So no value can change scheme, host, port, the number of path segments
  or the query names: the structure check is true by construction and is not repeated per entity.
- The constant pieces are checked once: httpx must read the placeholder URL's path and query exactly
  as written (no re-encoding, no dot segments removed). httpx's percent-encoding keeps `%XX` and
  unreserved characters as they are, so its parse of an entity's URL would only repeat ours; the URL
  is assembled from the parsed placeholder with the entity's path and query put in. A path in which a
  value next to a literal forms a `.` or `..` segment takes the general path (httpx would drop it).
- Query parameters (`request.query`) and header values are rendered and encoded by httpx's own
  QueryParams and Headers, as before; header values are checked for line breaks per entity.

- A URL with a query of its own (`url: http://h/a?fixed=1`) keeps it, and `request.query`'s parameters
  follow it (`?fixed=1&id=7`) on both paths (`with_query`): httpx's `params=` would replace the URL's
  query instead, and the request went out as `?id=7`. A name in both is refused at load and at run
  start (templating.query_problem): it would be sent twice.

Anything the fast path does not cover takes the general path, `fetch.build_request`'s old code:
a value in the host, a fragment (refused at load and at run start since review13c R4), header
names repeated in another case, a client holding cookies (httpx adds them per request), or an
httpx whose URL internals differ from those this was written against (checked at compile time).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from runner import spec, templating
from runner.errors import FetchError
from runner.expressions import JSON

HEADER_TEXT = re.compile(r"[\t\x20-\x7e]*")  # what a header value may carry (RFC 9110 field-vchar, SP, HTAB)
PLACEHOLDER = "0"  # stands in for every entity value when checking the URL's structure
_HEAD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*/")  # scheme://authority/ : the values come after it


def header_problem(name: str, value: str) -> FetchError | None:
    """The error for a header value an entity value would break (settings were checked at run start)."""
    if HEADER_TEXT.fullmatch(value):
        return None
    what = "a line break" if "\r" in value or "\n" in value else "a non-ASCII or control character"
    return FetchError(f"header {name} would contain {what} (from an entity value); not sent")


@dataclass(frozen=True, slots=True)
class _Piece:
    """Part of the URL: constant text, or the encoded value of an entity column."""

    text: str
    column: str | None = None


class RequestPlan:
    """One source's request for a run's settings and client. `build(entity)` -> httpx.Request, or
    None when this source's request needs the general path (the caller then renders it as before)."""

    def __init__(self, client: httpx.AsyncClient, request: spec.Request, settings: templating.Settings) -> None:
        self.request, self.settings = request, settings
        self._ready = False
        try:
            self._compile(client)
        except (httpx.InvalidURL, ValueError, KeyError, AttributeError, TypeError):
            self._ready = False  # the general path raises the real error, per entity, as it always did

    def _compile(self, client: httpx.AsyncClient) -> None:
        request, settings = self.request, self.settings
        pieces = _pieces(request.url, settings)
        columns = request.url.columns.union(*(t.columns for _, t in (*request.query, *request.headers)))
        placeholder = dict.fromkeys(columns, PLACEHOLDER)
        rendered = "".join(PLACEHOLDER if p.column else p.text for p in pieces)
        first = next((i for i, p in enumerate(pieces) if p.column), None)
        head = "".join(p.text for p in pieces[:first]) if first is not None else rendered
        if not _HEAD.match(head) or "#" in rendered:
            return  # a value in the scheme or the authority; no path; a fragment
        authority = _HEAD.match(rendered)
        if authority is None:
            return
        path_part, _, query_part = rendered[authority.end() - 1 :].partition("?")
        names = [name.lower() for name, _ in request.headers]
        if len(set(names)) != len(names):
            return
        params = httpx.QueryParams(
            [(name, templating.render(t, placeholder, settings, url=False)) for name, t in request.query]
        )
        headers = [(name, templating.render(t, placeholder, settings, url=False)) for name, t in request.headers]
        proto = client.build_request(request.method, with_query(rendered, params), headers=headers)
        reference = httpx.URL(rendered)._uri_reference
        if reference.path != path_part or (reference.query or "") != query_part or reference.fragment is not None:
            return  # httpx would re-encode or normalise a constant piece: not ours to predict
        self._reference = reference
        self._pieces = _split(pieces)
        self._constant_url = proto.url if first is None and not request.query else None
        self._headers = proto.headers
        self._dynamic_headers = [(name, t) for name, t in request.headers if t.columns]
        self._extensions = proto.extensions
        self._method = proto.method
        self._encoding = proto.headers.encoding
        built = self._request(proto.url, proto.headers)
        if (  # the httpx this was written against: the same attributes, the same values
            vars(built).keys() != vars(proto).keys()
            or built.headers.raw != proto.headers.raw
            or not isinstance(proto.stream, httpx.ByteStream)
            or proto.content != b""
        ):
            return
        # The URL internals this relies on, checked: the placeholder's URL assembled the fast way must
        # be the one httpx built the general way.
        if str(self._url(placeholder, params if request.query else None)) != str(proto.url):
            return
        self._ready = True

    def build(self, entity: Mapping[str, JSON], client: httpx.AsyncClient) -> httpx.Request | None:
        if not self._ready or client.cookies:
            return None
        settings = self.settings
        params = (
            httpx.QueryParams(
                [(name, templating.render(t, entity, settings, url=False)) for name, t in self.request.query]
            )
            if self.request.query
            else None
        )
        url = self._constant_url or self._url(entity, params)
        if url is None:
            return None
        headers = self._headers
        if self._dynamic_headers:
            headers = httpx.Headers(headers)
            for name, template in self._dynamic_headers:
                value = templating.render(template, entity, settings, url=False)
                if (problem := header_problem(name, value)) is not None:
                    raise problem
                headers[name] = value
        return self._request(url, headers)

    def _request(self, url: httpx.URL, headers: httpx.Headers) -> httpx.Request:
        """`httpx.Request(method, url, headers=headers, extensions=...)` without its per-call work
        (~20 us: the headers normalised again, the empty body encoded, Host looked for): the
        prototype's headers already hold what that adds (Host; Content-Length for a POST), and its
        empty body is the same for every request. The result's attributes are checked against
        httpx's own at compile time (`_compile`)."""
        request = httpx.Request.__new__(httpx.Request)
        request.method = self._method
        request.url = url
        request.headers = copied = httpx.Headers(headers)  # a copy: auth and conditional requests add to it
        copied.encoding = self._encoding
        request.extensions = {"timeout": self._extensions["timeout"]}
        request.stream = httpx.ByteStream(b"")
        request._content = b""
        return request

    def _url(self, entity: Mapping[str, JSON], params: httpx.QueryParams | None) -> httpx.URL | None:
        path_pieces, query_pieces = self._pieces
        encode = templating.encode
        path = "".join([p.text if p.column is None else encode(entity[p.column]) for p in path_pieces])
        if "/." in path and any(segment in (".", "..") for segment in path.split("/")):
            return None  # httpx would drop the segment: leave it to httpx
        query: str | None = self._reference.query
        if query_pieces:
            query = "".join([p.text if p.column is None else encode(entity[p.column]) for p in query_pieces])
        if params:
            query = f"{query}&{params}" if query else str(params)
        url = httpx.URL.__new__(httpx.URL)
        url._uri_reference = self._reference._replace(path=path, query=query or None)
        return url


def with_query(url: str, params: httpx.QueryParams) -> httpx.URL:
    """`url` with `request.query`'s parameters after its own query, which is kept as written (httpx's
    `params=` replaces a URL's query: `http://h/a?fixed=1` + id=7 went out as `?id=7`)."""
    parsed = httpx.URL(url)
    if not params:
        return parsed
    own = parsed.query.decode("ascii")
    return parsed.copy_with(query=(f"{own}&{params}" if own else str(params)).encode("ascii"))


def _pieces(template: spec.Template, settings: templating.Settings) -> list[_Piece]:
    """The template's segments with every setting (and the watermark, fixed for these settings)
    resolved; adjacent constant text joined."""
    pieces: list[_Piece] = []
    for segment in template.segments:
        if isinstance(segment, spec.Column):
            pieces.append(_Piece("", segment.name))
            continue
        text = templating.render(spec.Template("", (segment,)), {}, settings, url=True)
        if pieces and pieces[-1].column is None:
            pieces[-1] = _Piece(pieces[-1].text + text)
        else:
            pieces.append(_Piece(text))
    return pieces


def _split(pieces: list[_Piece]) -> tuple[list[_Piece], list[_Piece]]:
    """The pieces before the `?` (the path's, after the authority) and after it (the query's)."""
    path: list[_Piece] = []
    query: list[_Piece] = []
    current = path
    for piece in pieces:
        if current is path and piece.column is None and "?" in piece.text:
            before, _, after = piece.text.partition("?")
            path.append(_Piece(before))
            current = query
            if after:
                query.append(_Piece(after))
            continue
        current.append(piece)
    head = _HEAD.match(path[0].text) if path and path[0].column is None else None
    if head is not None:  # the path starts at the authority's closing slash
        path[0] = _Piece(path[0].text[head.end() - 1 :])
    return path, query
