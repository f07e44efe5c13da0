"""One HTTP/1.1 exchange on aiohttp's connection pool, below its ClientSession: the connector and its
connections' protocol (`Handler`), the request (`Request`, built once per attempt with syncrun's fixed
options), written and its answer's head read (`exchange`). runner/aiotransport.py puts httpx's API on top.

Why not `ClientSession._request`: for the options syncrun sends every request with, most of its work per
request is checks and copies that come out the same each time (a timeout handle, the cookie jar's filter,
the merged headers, the proxy and auth look-ups, the request's two dozen options each applied); it was
the largest share of the loop's time per entity at 0 ms (docs/benchmarks.md, session 6, pass a). What it
did that syncrun depends on is done here for those options:

- the URL as given (yarl, encoded: never decoded or resolved here), its fragment dropped, credentials in it
  as aiohttp sends them (Basic; not with an Authorization header too); only http(s);
- the headers exactly as given (Host among them), none added (aiohttp's automatic ones all skipped), a
  body's Content-Length; no cookies, no proxy, no redirects, no decompression (`auto_decompress` off);
- never sent again on a kept-alive connection the server had closed (`ClientSession`'s silent retry
  spent no rate-limit budget): there is no retry here at all;
- the connection closed, never pooled, when anything fails between taking it and the answer's head,
  a cancellation included (as `_connect_and_send_request` does); connect timeouts and OS errors raised
  as aiohttp's own exceptions.

Relies on aiohttp internals (pinned >=3.14,<4): the attributes ClientRequest's constructor sets (set
here by `Request.__init__`), `ClientRequest.send`, `ClientResponse.start`, the connector's `connect`
and `_factory`, ResponseHandler's `set_response_params`, `feed_data`, `data_received`.
tests/test_aiowire.py compares the bytes on the wire and the request's attributes with aiohttp's own
ClientSession's, and fails when one of these changes.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiohttp
import yarl
from aiohttp import hdrs
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientResponse
from aiohttp.helpers import EMPTY_BODY_METHODS, TimerNoop, strip_auth_from_url
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy, istr

# Bounds on a response's head: 64 KiB per line (a Link header with a long next-page URL must reach
# runner/pagination.py, which names the problem; aiohttp's default is 8,190), 128 fields (aiohttp's
# default), and MAX_HEAD bytes of head per request (interim 1xx heads included): counted as bytes arrive
# while the head is incomplete, and once parsed as its lines' lengths, so a head over MAX_HEAD is refused
# however the reads split it (to within its terminators' few hundred bytes): the first two alone let
# 128 fields of 64 KiB through, ~12.5 MB per answer in flight (1.1 GB at concurrency 64; review11 O4).
# A response over them is a protocol error: retried, then the entity's transient failure.
HEADER_LIMIT = 64 * 1024
MAX_HEADERS = 128
MAX_HEAD = 256 * 1024
READ_BUFSIZE = 2**16  # ClientSession's default
# The request goes out with exactly the headers given: aiohttp would add its own Accept, Accept-Encoding
# and User-Agent when they lack them, and Content-Type: application/octet-stream to a POST given none
# (an API may answer 415; review11 O1).
AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_SKIP = CIMultiDictProxy(CIMultiDict((name, None) for name in sorted(istr(name) for name in AUTO_HEADERS)))
_NO_TIMER = TimerNoop()  # the attempt's total deadline is runner/client.py's; aiohttp's `total` is off
Trace = Callable[[str, dict[str, Any]], Awaitable[None]]  # httpx's `trace` extension


class Request(aiohttp.ClientRequest):
    """aiohttp's request for syncrun's options, announcing its send to `trace` (httpcore's event names).

    The constructor sets what ClientRequest's own sets for the options ClientSession passed it (no
    params, cookies, proxy, compression, chunking or expect-100 of its own; every automatic header
    skipped), without applying each of them (~10 us); a body is taken as ClientRequest takes it."""

    _trace: Trace | None = None

    def __init__(
        self,
        method: str,
        url: yarl.URL,
        headers: CIMultiDictProxy[str] | CIMultiDict[str],
        data: bytes | None,
        *,
        loop: asyncio.AbstractEventLoop,
        ssl: Any,
        server_hostname: str | None,
        trace: Trace | None,
    ) -> None:
        self._session = None  # type: ignore[assignment]  # only its charset resolver is read: never used
        self.original_url = url
        self.url = url.with_fragment(None) if url.raw_fragment else url
        self.method = method.upper()
        self.chunked = None
        self.compress = False if data else None
        self.loop = loop
        self.length = None
        self.response_class = ClientResponse
        self._timer = _NO_TIMER
        self._ssl = ssl
        self.server_hostname = server_hostname
        if loop.get_debug():
            self._source_traceback = traceback.extract_stack()
        self.version = HttpVersion11
        self.headers = CIMultiDict(headers)
        self._skip_auto_headers = cast("CIMultiDict[None]", _SKIP)  # read-only: only looked up
        self.proxy = self.proxy_auth = self.proxy_headers = None
        self._body = None
        if data is not None or method not in self.GET_METHODS:
            self.update_body_from_data(data)
            self.update_transfer_encoding()
        self.update_expect_continue()
        self._traces = []
        self._trace = trace

    async def send(self, conn: aiohttp.connector.Connection) -> ClientResponse:
        """`send_request_headers.started` is awaited right before the head is serialised and written
        (nothing awaits between them for a request without a body); a connection this request opened
        is announced first (`connect_tcp.started`, `start_tls.started` for https): the rate limiter
        (runner/ratelimit/transport.py) stamps its grant there."""
        protocol = conn.protocol
        opened = False
        if isinstance(protocol, Handler) and not protocol.carried:  # our connector makes only these
            protocol.carried = opened = True
        trace = self._trace
        if trace is not None:
            if opened:
                await trace("connection.connect_tcp.started", {})
                if self.url.scheme == "https":  # the server takes part in the handshake
                    await trace("connection.start_tls.started", {})
            await trace("http11.send_request_headers.started", {})
        return await super().send(conn)


def request(
    method: str,
    url: yarl.URL,
    headers: CIMultiDictProxy[str],
    data: bytes | None,
    *,
    ssl: Any,
    server_hostname: str | None = None,
    trace: Trace | None = None,
) -> Request:
    """The request `ClientSession._request` made for these options: credentials in the URL become Basic
    auth (ValueError beside an Authorization header, as there), a URL without a host or not http(s) is
    aiohttp's error. `headers`: Host first (as aiohttp's own request puts it), no automatic header."""
    if url.scheme not in _SCHEMES:
        raise aiohttp.NonHttpUrlClientError(url)
    if url.raw_user is not None or url.raw_password is not None:
        url, auth = strip_auth_from_url(url)
        if auth is not None:
            if hdrs.AUTHORIZATION in headers:
                raise ValueError("Cannot combine AUTHORIZATION header with credentials encoded in URL")
            headers = CIMultiDictProxy(CIMultiDict([*headers.items(), (hdrs.AUTHORIZATION, auth.encode())]))
    if not url.raw_host:
        raise aiohttp.InvalidUrlClientError(url)
    loop = asyncio.get_running_loop()
    return Request(method, url, headers, data, loop=loop, ssl=ssl, server_hostname=server_hostname, trace=trace)


_SCHEMES = frozenset({"http", "https"})


async def exchange(connector: Connector, request: Request, timeout: aiohttp.ClientTimeout) -> ClientResponse:
    """A connection from the pool (or a new one within its limit), the request written, the answer's head
    read: ClientSession's `_connect_and_send_request` for syncrun's options. Whatever fails after the
    connection was taken (a cancellation too) closes it; its exceptions are aiohttp's."""
    try:
        try:
            conn = await connector.connect(request, [], timeout)
        except TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {request.url}") from exc
        protocol = conn.protocol
        assert protocol is not None
        protocol.set_response_params(
            timer=_NO_TIMER,
            skip_payload=request.method in EMPTY_BODY_METHODS,
            read_until_eof=True,
            auto_decompress=False,
            read_timeout=timeout.sock_read,
            read_bufsize=READ_BUFSIZE,
            timeout_ceil_threshold=connector._timeout_ceil_threshold,
            max_line_size=HEADER_LIMIT,
            max_field_size=HEADER_LIMIT,
            max_headers=MAX_HEADERS,
        )
        try:
            response = await request.send(conn)
            try:
                await response.start(conn)
            except BaseException:
                response.close()
                raise
        except BaseException:
            conn.close()
            raise
    except aiohttp.ClientError:
        raise
    except OSError as exc:  # as ClientSession: an OS error (not a timeout) is aiohttp's ClientOSError
        if exc.errno is None and isinstance(exc, TimeoutError):
            raise
        raise aiohttp.ClientOSError(*exc.args) from exc
    finally:
        if request._body is not None:
            await request._body.close()
    return response


# --- a pooled connection that hears anything while idle is closed, never reused --------------------------
class Handler(ResponseHandler):
    """aiohttp's protocol for one connection, closing it when bytes arrive after its answer was complete
    and before the next request began. aiohttp parsed and buffered them, and the next request on the
    connection took them as its answer: every later entity got its predecessor's (review11 F9; a 408
    an idle connection hears, a response written twice). httpcore refused a connection readable while
    idle; this closes it as soon as the bytes come, so the connector finds it closed and opens another.

    It also counts the bytes of a head still incomplete, against MAX_HEAD (see there).

    tests/test_client.py::test_bytes_an_idle_connection_hears_never_answer_a_request and
    ::test_a_head_over_the_total_bound_is_a_transient_protocol_error fail if this stops working."""

    carried = False  # a request was sent on this connection (`Request.send`: else it opened it)
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


class Connector(aiohttp.TCPConnector):
    """aiohttp's TCP pool, its connections speaking `Handler`."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        factory = functools.partial(Handler, loop=self._loop)
        self._factory = cast("functools.partial[ResponseHandler]", factory)  # aiohttp's protocol factory
