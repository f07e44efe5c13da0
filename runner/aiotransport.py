"""AiohttpTransport: httpx's API (requests, responses, exceptions) over an aiohttp connection pool.

Why: httpcore's pool collapses above ~32 connections (docs/benchmarks.md); aiohttp's connector stays
linear. Above the transport all stays httpx: requests, auth, the limiter's transport, body bounds.

What this transport guarantees, and how:

- The URL goes over exactly as httpx built it: yarl is handed it encoded (`_url`), so it neither decodes
  `%2E%2E` nor resolves dot segments (tests/test_fetch.py::test_entity_values_cannot_change_url_structure).
  (httpx itself resolves literal `..` segments when it parses a URL, such as an API's next-page link:
  `/c/../d` is sent as `/d`, as a browser would; entity values are encoded before that and cannot.)
- The body arrives as the server sent it: `auto_decompress=False`, so runner/client.py's bounded
  decoder (gzip/deflate in steps, `max_body` on the wire and decoded) is the only one.
- No cookie jar, no redirects, no proxy from the environment; TLS verified with httpx's SSL context.
- The rate limiter's send-time stamping works as with httpcore: the request's httpx `trace` extension
  hears httpcore's event names, `send_request_headers.started` right before the head is written
  (runner/aiowire.py's `Request.send`). Not aiohttp's TraceConfig: ~40 us per request (fourth pass).
- An answer is the answer to its own request: a pooled connection that hears anything after its
  answer was complete and before the next request began is closed, never reused (aiowire's `Handler`).
- Every attempt goes through the rate limiter: nothing is sent again below it (ClientSession's silent
  resend on a kept-alive connection the server had closed is not used: aiowire sends each request once).
- aiohttp's exceptions become httpx's: connection trouble is an `httpx.TransportError` (retryable),
  aiohttp's own timeouts an `httpx.TimeoutException`, a request head aiohttp refuses to write (a
  ValueError) an `httpx.LocalProtocolError`. Nothing else is caught: a cancellation (the attempt's
  total deadline) passes through untouched.
- aiohttp's per-read and connect timeouts are set unless the request's whole exchange is bounded
  (`BOUNDED`, set by runner/client.py at the grant): they could only fire after that deadline.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from runner.aiowire import Connector, Request, exchange
from runner.aiowire import request as request_

_PREPARED_MAX = 256  # header sets kept in aiohttp's form (a source's requests carry a few; per-entity values more)
_PREPARED_BYTES = 8192  # and only small ones: a set with an entity's long value is made per request (≤ ~6 MB kept)
# Extension set (runner/client.py, at the grant) when the attempt's total deadline bounds its whole exchange
BOUNDED = "syncrun.bounded"
_SCHEMES = ("http", "https")
_TLS_SHUTDOWN = 0.25  # seconds the loop is given to finish closing TLS connections (once, at the end)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """aiohttp's connection pool (made on first use, inside the running loop) of `limits.max_connections`;
    each request sent by runner/aiowire.py, not through a ClientSession."""

    emits_trace = True  # runner/ratelimit/transport.py: stamps grants at send_request_headers.started

    def __init__(self, *, verify: bool = True, limits: httpx.Limits) -> None:
        # Built on the first https request: loading the CA bundle costs ~20 ms a plain-http run need not pay
        self._verify = verify
        self._context: ssl.SSLContext | None = None
        self._limits = limits
        self._connector: Connector | None = None
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}
        self._tls = False  # a TLS connection was used: its shutdown handshake needs the loop a little longer
        self._prepared: dict[object, CIMultiDictProxy[str]] = {}
        self._origins: dict[str, tuple[yarl.URL, bool | None]] = {}

    def _open(self) -> Connector:
        keepalive = self._limits.keepalive_expiry
        return Connector(
            limit=self._limits.max_connections or 0,
            limit_per_host=0,
            ssl=self._verify,  # https requests bring their own context (_tls_context); False: no checks
            keepalive_timeout=keepalive if keepalive is not None else 5.0,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        connector = self._connector
        if connector is None:
            connector = self._connector = self._open()
        extensions = request.extensions
        # an attempt bounded as a whole needs no per-read timers (two handles, rescheduled per read)
        timeouts = {} if extensions.get(BOUNDED) else extensions.get("timeout", {})
        body = request.content if hasattr(request, "_content") else await request.aread()  # read: no await
        url, plain = self._url(request.url)
        https = url.scheme == "https" if plain is None else plain
        self._tls = self._tls or https
        trace = extensions.get("trace")
        ssl = self._tls_context() if https and self._verify else self._verify
        try:
            if plain is None:  # the URL and its origin checked as ClientSession checked them
                sent = request_(
                    request.method,
                    url,
                    self._headers(request.headers),
                    body or None,
                    ssl=ssl,
                    server_hostname=extensions.get("sni_hostname"),
                    trace=trace,
                )
            else:  # an origin checked once
                sent = Request(
                    request.method,
                    url,
                    self._headers(request.headers),
                    body or None,
                    loop=connector._loop,
                    ssl=ssl,
                    server_hostname=extensions.get("sni_hostname"),
                    trace=trace,
                )
            response = await exchange(connector, sent, self._timeout(timeouts.get("connect"), timeouts.get("read")))
        except aiohttp.ClientError as exc:
            raise _wire(exc) from exc
        except ValueError as exc:
            raise _unsendable(exc) from exc
        if trace is not None:
            await trace("http11.receive_response_headers.complete", {})
        return _response(response, request)

    def _url(self, url: httpx.URL) -> tuple[yarl.URL, bool | None]:
        """`yarl.URL(str(url), encoded=True)`: for a URL without query or fragment, its origin's yarl URL
        (made once) with the path as httpx holds it, encoded; neither parses the text again (~3 us).
        Second: for such a URL whose origin aiowire.request would let through as it is (http or https, a
        host, no credentials), whether it is https; else None (the URL is checked per request)."""
        ref = url._uri_reference
        if ref.query is not None or ref.fragment is not None or not _URL_PARTS:
            return yarl.URL(str(url), encoded=True), None
        known = self._origins.get(key := f"{ref.scheme}://{ref.authority}")
        if known is None:
            self._origins = {} if len(self._origins) >= _PREPARED_MAX else self._origins
            origin = yarl.URL(key, encoded=True)
            plain = (
                origin.scheme in _SCHEMES and bool(origin.raw_host) and origin.raw_user is origin.raw_password is None
            )
            known = self._origins[key] = (origin, origin.scheme == "https" if plain else None)
        return known[0].with_path(ref.path, encoded=True), known[1]

    def _headers(self, headers: httpx.Headers) -> CIMultiDictProxy[str]:
        """`_headers(headers)` as aiohttp's read-only multidict, once per distinct set (aiohttp copies it)."""
        key = tuple(headers._list) if _HEADERS_AS_LIST else tuple(headers.raw)
        prepared = self._prepared.get(key)
        if prepared is None:
            pairs = _headers(headers)  # Host first, once, with its last value: as aiohttp's own puts it
            pairs = [*[p for p in pairs if p[0] == "host"][-1:], *(p for p in pairs if p[0] != "host")]
            prepared = CIMultiDictProxy(CIMultiDict(pairs))
            if sum(len(name) + len(value) for name, value in pairs) <= _PREPARED_BYTES:  # review revC F1
                self._prepared = {} if len(self._prepared) >= _PREPARED_MAX else self._prepared
                self._prepared[key] = prepared
        return prepared

    def _timeout(self, connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
        """aiohttp's per-read timeouts (the attempt's total is client.send's), one object per pair."""
        timeout = self._timeouts.get((connect, read))
        if timeout is None:
            timeout = self._timeouts[connect, read] = aiohttp.ClientTimeout(
                total=None, sock_connect=connect, sock_read=read
            )
        return timeout

    def _tls_context(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = httpx.create_ssl_context(verify=True)
        return self._context

    async def aclose(self) -> None:
        if self._connector is not None:
            await self._connector.close()
            self._connector = None
            if self._tls:  # aiohttp's advice: TLS connections closed by the server (Connection: close)
                await asyncio.sleep(_TLS_SHUTDOWN)  # finish their shutdown after the session is gone


def _headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    """`headers.multi_items()` (names lower-case), the encoding looked up once (httpx's: per access)."""
    encoding = headers.encoding
    return [(name.lower().decode(encoding), value.decode(encoding)) for name, value in headers.raw]


def _response_headers(raw: tuple[tuple[bytes, bytes], ...]) -> httpx.Headers:
    """httpx's Headers of aiohttp's raw pairs as httpx makes them, without normalising them again
    (~10 us per response) when this httpx keeps its headers as checked at import."""
    if not _HEADERS_AS_LIST:
        return httpx.Headers(raw)
    headers = httpx.Headers()
    headers._list = [(name, name.lower(), value) for name, value in raw]
    return headers


class _Response(httpx.Response):
    """httpx's Response for one of aiohttp's, its `headers` made from the raw pairs when first read: the
    attempt reads the raw pairs (runner/body.py `head`), so most responses never need httpx's form."""

    _headers: httpx.Headers | None
    _raw: tuple[tuple[bytes, bytes], ...]

    @property
    def headers(self) -> httpx.Headers:
        if self._headers is None:
            self._headers = _response_headers(self._raw)
        return self._headers

    @headers.setter
    def headers(self, value: httpx.Headers) -> None:
        self._headers = value


def _response(response: aiohttp.ClientResponse, request: httpx.Request) -> httpx.Response:
    """`httpx.Response(status_code=…, stream=_Body(response), request=…, extensions=…)` with the
    attributes its constructor sets for those, set directly (~3 us); tests/test_aiotransport.py compares
    them with the constructor's, and fails when an httpx upgrade sets others."""
    made = _Response.__new__(_Response)
    made.status_code = response.status
    made._headers, made._raw = None, response.raw_headers
    made._request = request
    made.next_request = None
    extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
    if response.reason:
        extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
    made.extensions = extensions
    made.history = []
    made.is_closed = made.is_stream_consumed = False
    made.default_encoding = "utf-8"
    made.stream = _Body(response)
    made._num_bytes_downloaded = 0
    return made


_SAMPLE = ((b"Content-Type", b"application/json"), (b"X-A", b"caf\xc3\xa9 "), (b"x-a", b""))
_HEADERS_AS_LIST = getattr(httpx.Headers(_SAMPLE), "_list", None) == [(n, n.lower(), v) for n, v in _SAMPLE]
_REF = httpx.URL("https://u:p@h.test:8443/a/%2E%2E/b")._uri_reference  # `_url`'s parts of an httpx URL
_URL_PARTS = f"{_REF.scheme}://{_REF.authority}{_REF.path}" == "https://u:p@h.test:8443/a/%2E%2E/b"


class _Body(httpx.AsyncByteStream):
    """The response body as it arrives; closed before its end, its connection is closed (not pooled)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.raw_headers = response.raw_headers  # the head as it arrived (runner/body.py `head`)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except aiohttp.ClientError as exc:
            raise _wire(exc) from exc

    async def read_declared(self, size: int) -> bytes:
        """The whole body at once, when its Content-Length declared `size` bytes (runner/body.py checks
        that against max_body first): aiohttp's parser ends the body there (a body cut short is a
        protocol error, as when iterating; a 304's or a HEAD's declared length is no body at all)."""
        content = self._response.content
        try:  # a body the parser has ended is all buffered: taken without read()'s coroutine and loop
            data = content.read_nowait() if content.is_eof() else await content.read()
        except aiohttp.ClientError as exc:
            raise _wire(exc) from exc
        if len(data) > size:  # not framed by the declared length after all: never more than declared
            raise httpx.RemoteProtocolError(f"the body ran past its declared {size:,} bytes")
        return data

    async def aclose(self) -> None:
        self._response.release()


def released(response: httpx.Response) -> bool:
    """Close a response this transport made, as `await response.aclose()` would (its body's connection
    goes back to the pool, or is closed with unread bytes), without httpx's request context manager
    and coroutine per response; False for any other response (the caller closes it the usual way)."""
    stream = response.stream
    if type(stream) is not _Body:
        return False
    if not response.is_closed:
        response.is_closed = True
        stream._response.release()
    return True


def _wire(exc: aiohttp.ClientError) -> httpx.TransportError:
    """httpx's error for aiohttp's (raised `from` it by the caller)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(exc))
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(str(exc))
    if isinstance(exc, (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError)):
        return httpx.ProxyError(str(exc))
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(exc))
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return httpx.UnsupportedProtocol(str(exc))
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError, aiohttp.ClientPayloadError)):
        return httpx.RemoteProtocolError(str(exc) or type(exc).__name__)
    return httpx.ReadError(str(exc) or type(exc).__name__)  # ClientOSError (reset mid-response) and the rest


def _unsendable(exc: ValueError) -> httpx.LocalProtocolError:
    """aiohttp refusing to write a request's head (a control character in a header value, a character
    the head's encoding lacks: ValueErrors) becomes httpx's LocalProtocolError, as h11 raised it: that
    request's failure (runner/client.py makes it definitive), never an exception callers do not expect."""
    return httpx.LocalProtocolError(f"the request cannot be sent: {exc}")
