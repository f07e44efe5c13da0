"""AiohttpTransport: httpx's API (requests, responses, exceptions) over an aiohttp connection pool.

Why: httpcore's pool collapses above ~32 connections (docs/benchmarks.md); aiohttp's connector stays
linear. Above the transport all stays httpx: requests, auth, the limiter's transport, body bounds.

What this transport guarantees, and how:

- The URL goes over exactly as httpx built it: yarl is handed it encoded (`_url`), so it neither decodes
  `%2E%2E` nor resolves dot segments (tests/test_fetch.py::test_entity_values_cannot_change_url_structure).
- The body arrives as the server sent it: `auto_decompress=False`, so runner/client.py's bounded
  decoder (gzip/deflate in steps, `max_body` on the wire and decoded) is the only one.
- No cookie jar, no redirects, no proxy from the environment; TLS verified with httpx's SSL context.
- The rate limiter's send-time stamping works as with httpcore: the request's httpx `trace` extension
  hears httpcore's event names. `send_request_headers.started` is awaited at the top of
  `ClientRequest.send`, right before the head is serialised and written (nothing awaits between them
  for a request without a body); a connection this request opened is announced first (`connect_tcp.
  started`, `start_tls.started` for https). Not aiohttp's TraceConfig: ~40 us per request (fourth pass).
- An answer is the answer to its own request: a pooled connection that hears anything after its
  answer was complete and before the next request began is closed, never reused (`_Handler`).
- Every attempt goes through the rate limiter: aiohttp's own silent resend of an idempotent request
  on a kept-alive connection the server had closed is switched off.
- aiohttp's exceptions become httpx's: connection trouble is an `httpx.TransportError` (retryable),
  aiohttp's own timeouts an `httpx.TimeoutException`, a request head aiohttp refuses to write (a
  ValueError) an `httpx.LocalProtocolError`. Nothing else is caught: a cancellation (the attempt's
  total deadline) passes through untouched.
- aiohttp's per-read and connect timeouts are set unless the request's whole exchange is bounded
  (`BOUNDED`, set by runner/client.py at the grant): they could only fire after that deadline.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import ssl
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import httpx
import yarl
from aiohttp import hdrs
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy, istr

# Bounds on a response's head: 64 KiB per line (a Link header with a long next-page URL must reach
# runner/pagination.py, which names the problem; aiohttp's default is 8,190), 128 fields (aiohttp's
# default), and MAX_HEAD bytes of head per request (interim 1xx heads included): counted as bytes arrive
# while the head is incomplete, and once parsed as its lines' lengths, so a head over MAX_HEAD is refused
# however the reads split it (to within its terminators' few hundred bytes): the first two alone let
# 128 fields of 64 KiB through, ~12.5 MB per answer in flight (1.1 GB at concurrency 64; review11 O4).
# A response over them is a protocol error: retried, then the entity's transient failure.
_HEADER_LIMIT = 64 * 1024
MAX_HEADERS = 128
MAX_HEAD = 256 * 1024
_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_SKIPPED = frozenset(istr(name) for name in _AUTO_HEADERS)  # as the session keeps them
_SKIP = CIMultiDictProxy(CIMultiDict((name, None) for name in sorted(_SKIPPED)))  # aiohttp's per-request form
_PREPARED_MAX = 256  # header sets kept in aiohttp's form (a source's requests carry a few; per-entity values more)
_PREPARED_BYTES = 8192  # and only small ones: a set with an entity's long value is made per request (≤ ~6 MB kept)
# Extension set (runner/client.py, at the grant) when the attempt's total deadline bounds its whole exchange
BOUNDED = "syncrun.bounded"
_TLS_SHUTDOWN = 0.25  # seconds the loop is given to finish closing TLS connections (once, at the end)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (created on first use, inside the running loop) holding `limits.max_connections`."""

    emits_trace = True  # runner/ratelimit/transport.py: stamps grants at send_request_headers.started

    def __init__(self, *, verify: bool = True, limits: httpx.Limits) -> None:
        # Built on the first https request: loading the CA bundle costs ~20 ms a plain-http run need not pay
        self._verify = verify
        self._context: ssl.SSLContext | None = None
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}
        self._tls = False  # a TLS connection was used: its shutdown handshake needs the loop a little longer
        self._prepared: dict[object, CIMultiDictProxy[str]] = {}
        self._origins: dict[str, yarl.URL] = {}

    def _open(self) -> aiohttp.ClientSession:
        limit = self._limits.max_connections or 0
        connector = _Connector(
            limit=limit,
            limit_per_host=0,
            ssl=self._verify,  # https requests bring their own context (_tls_context); False: no checks
            keepalive_timeout=self._limits.keepalive_expiry if self._limits.keepalive_expiry is not None else 5.0,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
            request_class=_Request,
            # The request goes out with exactly the headers httpx built: aiohttp would add its own
            # Accept, Accept-Encoding and User-Agent when httpx's lack them, and Content-Type:
            # application/octet-stream to a POST httpx gave none (an API may answer 415; review11 O1).
            skip_auto_headers=_AUTO_HEADERS,
            max_line_size=_HEADER_LIMIT,
            max_field_size=_HEADER_LIMIT,
            max_headers=MAX_HEADERS,
        )
        # aiohttp silently sends an idempotent request again when a kept-alive connection turns out
        # closed: an attempt that spent no rate-limit budget (bench/faults.py fault 3 saw the windows
        # overrun). No public switch; tests/test_faults.py fault 3 fails if this stops working.
        session._retry_connection = False
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = self._open()
        # an attempt bounded as a whole needs no per-read timers (two handles, rescheduled per read)
        timeouts = {} if request.extensions.get(BOUNDED) else request.extensions.get("timeout", {})
        body = request.content if hasattr(request, "_content") else await request.aread()  # read: no await
        url = self._url(request.url)
        https = url.scheme == "https"
        self._tls = self._tls or https
        trace = request.extensions.get("trace")
        token = _TRACE.set(trace)
        try:  # not two generator context managers (~3 us per request)
            response = await self._session._request(  # request()'s context manager: not needed
                request.method,
                url,
                headers=self._headers(request.headers),
                data=body or None,
                allow_redirects=False,
                compress=False,
                timeout=self._timeout(timeouts.get("connect"), timeouts.get("read")),
                server_hostname=request.extensions.get("sni_hostname"),
                ssl=self._tls_context() if https and self._verify else self._verify,
            )
        except aiohttp.ClientError as exc:
            raise _wire(exc) from exc
        except ValueError as exc:
            raise _unsendable(exc) from exc
        finally:
            _TRACE.reset(token)
        if trace is not None:
            await trace("http11.receive_response_headers.complete", {})
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        return httpx.Response(
            status_code=response.status,
            headers=_response_headers(response.raw_headers),
            stream=_Body(response),
            request=request,
            extensions=extensions,
        )

    def _url(self, url: httpx.URL) -> yarl.URL:
        """`yarl.URL(str(url), encoded=True)`: for a URL without query or fragment, its origin's yarl URL
        (made once) with the path as httpx holds it, encoded; neither parses the text again (~3 us)."""
        ref = url._uri_reference
        if ref.query is not None or ref.fragment is not None or not _URL_PARTS:
            return yarl.URL(str(url), encoded=True)
        origin = self._origins.get(key := f"{ref.scheme}://{ref.authority}")
        if origin is None:
            self._origins = {} if len(self._origins) >= _PREPARED_MAX else self._origins
            origin = self._origins[key] = yarl.URL(key, encoded=True)
        return origin.with_path(ref.path, encoded=True)

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
        if self._session is not None:
            await self._session.close()
            self._session = None
            if self._tls:  # aiohttp's advice: TLS connections closed by the server (Connection: close)
                await asyncio.sleep(_TLS_SHUTDOWN)  # finish their shutdown after the session is gone


def _headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    """`headers.multi_items()` (names lower-case), the encoding looked up once (httpx's: per access)."""
    encoding = headers.encoding
    return [(name.lower().decode(encoding), value.decode(encoding)) for name, value in headers.raw]


def _response_headers(raw: tuple[tuple[bytes, bytes], ...]) -> httpx.Headers | tuple[tuple[bytes, bytes], ...]:
    """httpx's Headers of aiohttp's raw pairs as httpx makes them, without normalising them again
    (~10 us per response); the raw pairs when this httpx keeps its headers otherwise (checked at import)."""
    if not _HEADERS_AS_LIST:
        return raw
    headers = httpx.Headers()
    headers._list = [(name, name.lower(), value) for name, value in raw]
    return headers


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


# --- a pooled connection that hears anything while idle is closed, never reused --------------------------
class _Handler(ResponseHandler):
    """aiohttp's protocol for one connection, closing it when bytes arrive after its answer was complete
    and before the next request began. aiohttp parsed and buffered them, and the next request on the
    connection took them as its answer: every later entity got its predecessor's (review11 F9; a 408
    an idle connection hears, a response written twice). httpcore refused a connection readable while
    idle; this closes it as soon as the bytes come, so the connector finds it closed and opens another.

    It also counts the bytes of a head still incomplete, against MAX_HEAD (see there).

    Relies on ResponseHandler's `set_response_params` (once per request, before it is sent), `feed_data`
    (each parsed head with its payload), `data_received`, and the connector's `_factory` (aiohttp 3.0+);
    tests/test_client.py::test_bytes_an_idle_connection_hears_never_answer_a_request and
    ::test_a_head_over_the_total_bound_is_a_transient_protocol_error fail if this stops working."""

    carried = False  # a request was sent on this connection (`_Request.send`: else it opened it)
    _answered = False  # the current request's final answer is complete: any byte now is unsolicited
    _head = 0  # bytes received for the current request, while its final answer's head is incomplete
    _parsed = 0  # bytes of the heads parsed for the current request (their lines, terminators included)
    _in_head = False

    def set_response_params(self, *args: Any, **kwargs: Any) -> None:
        self._answered, self._head, self._parsed, self._in_head = False, 0, 0, True
        super().set_response_params(*args, **kwargs)

    def feed_data(self, data: Any, *args: Any) -> None:
        message, payload = data
        # a head that ended inside the read which took the count past MAX_HEAD is measured here, so the
        # bound does not depend on how the kernel split the bytes (a flaky pass between 256 and 512 KiB)
        raw = message.raw_headers
        self._parsed += sum(map(len, itertools.chain.from_iterable(raw))) + 4 * len(raw) + 17
        if self._parsed > MAX_HEAD and not self._answered:
            self._too_big()
            return
        if self._answered:  # another response after the answer, in the same read: aiohttp closes it too
            self.force_close()
        elif not 100 <= message.code < 200 or message.code == 101:  # 1xx is not the answer, 101 is final
            self._in_head = False
            payload.on_eof(self._answer_complete)  # called at once for a payload already complete
        super().feed_data(data, *args)

    def _answer_complete(self) -> None:
        self._answered = True

    def data_received(self, data: bytes) -> None:
        if self._answered and data:
            self.force_close()
            self.close()  # the connector finds it not connected: closed, never handed to a request
            return
        super().data_received(data)
        if self._in_head:  # no final head parsed yet, so every byte so far was head: MAX_HEAD + one read
            self._head += len(data)
            if self._head > MAX_HEAD:
                self._too_big()

    def _too_big(self) -> None:
        self._in_head = False
        if self.transport is not None:
            self.transport.close()  # as aiohttp does on a parse error
        self.set_exception(HttpProcessingError(message=f"the response head is over {MAX_HEAD:,} bytes"))


class _Connector(aiohttp.TCPConnector):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        factory = functools.partial(_Handler, loop=self._loop)
        self._factory = cast("functools.partial[ResponseHandler]", factory)  # aiohttp's protocol factory


# --- the request's httpx `trace` extension, heard where httpcore would send its events ----------------
_TRACE: contextvars.ContextVar[Any] = contextvars.ContextVar("syncrun_trace", default=None)


class _Request(aiohttp.ClientRequest):
    """aiohttp's request, announcing its send to the httpx request's `trace` (set in `_TRACE` by
    `handle_async_request`, in the same task). `send` is called with the connection taken from the
    pool (and connected): a connection no request used before is this request's own set-up."""

    async def send(self, conn: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        protocol = conn.protocol
        opened = False
        if isinstance(protocol, _Handler) and not protocol.carried:  # our connector makes only these
            protocol.carried = opened = True
        trace = _TRACE.get()
        if trace is not None:
            if opened:
                await trace("connection.connect_tcp.started", {})
                if self.url.scheme == "https":  # the server takes part in the handshake
                    await trace("connection.start_tls.started", {})
            await trace("http11.send_request_headers.started", {})
        # nothing awaits from here until the request line and headers are written (see the docstring)
        return await super().send(conn)

    # aiohttp's per-request copies (~10 us) for options the same on every request of ours, skipped: its
    # internals; tests/test_aiotransport.py compares the heads with its own ClientRequest's
    def update_headers(self, headers: Any) -> None:
        """Taken as they come: `ClientSession._request`'s own new merged copy, with httpx's Host."""
        if type(headers) is CIMultiDict and hdrs.HOST in headers:
            self.headers = headers
        else:
            super().update_headers(headers)

    def update_auto_headers(self, skip_auto_headers: Any) -> None:
        """Every automatic header skipped: nothing to add, the skipped names already in aiohttp's form."""
        if skip_auto_headers == _SKIPPED:
            self._skip_auto_headers = cast("CIMultiDict[None]", _SKIP)  # read-only: only looked up
        else:
            super().update_auto_headers(skip_auto_headers)
