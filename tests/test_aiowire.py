"""runner/aiowire.py's request path on aiohttp's connector, checked against aiohttp's own ClientSession:
the bytes on the wire, the request object its constructor makes, the connection given back or closed
on every path. These fail when an aiohttp upgrade changes an internal the path relies on."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from runner import aiowire
from runner.aiotransport import AiohttpTransport, _headers
from runner.aiowire import AUTO_HEADERS
from tests.netproxy import certificate

LIMITS = httpx.Limits(max_connections=2, max_keepalive_connections=2)
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
PATH = "/a/%2E%2E/b%3Fc?q=1&r=%23"

Exchange = Callable[[str], Awaitable[None]]


async def _head(reader: asyncio.StreamReader) -> bytes | None:
    """The next request head a raw server reads; None once the client has gone."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def _heads(answer: bytes, *exchanges: Exchange, tls: ssl.SSLContext | None = None) -> list[list[bytes]]:
    """The request heads (and bodies) one raw server received while each `exchange(origin)` ran."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (head := await _head(reader)) is not None:
            lines = [line.split(b":", 1) for line in head.split(b"\r\n")]
            length = next((int(line[1]) for line in lines if line[0].lower() == b"content-length"), 0)
            if b"100-continue" in head.lower():  # the body comes after the interim answer
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            seen.append(head + (await reader.readexactly(length) if length else b""))
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    heads: list[list[bytes]] = []
    try:
        for exchange in exchanges:
            await exchange(f"{'https' if tls else 'http'}://127.0.0.1:{port}")
            heads.append(seen[:])
            seen.clear()
    finally:
        server.close()
    return heads


def _ours(method: str, target: str, options: dict[str, Any]) -> Exchange:
    async def exchange(origin: str) -> None:
        transport = AiohttpTransport(limits=LIMITS, verify=False)
        try:
            for _ in range(2):  # the second on the pooled connection, from the prepared header set
                request = httpx.Request(method, origin.replace("//", f"//{target}", 1) + PATH, **options)
                response = await transport.handle_async_request(request)
                await response.aread()
        finally:
            await transport.aclose()

    return exchange


def _aiohttps(method: str, target: str, options: dict[str, Any]) -> Exchange:
    """What runner/aiotransport.py passed to ClientSession._request before aiowire (session 6)."""

    async def exchange(origin: str) -> None:
        session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, skip_auto_headers=AUTO_HEADERS
        )
        try:
            for _ in range(2):
                request = httpx.Request(method, origin.replace("//", f"//{target}", 1) + PATH, **options)
                content = request.read()
                async with session.request(
                    method,
                    yarl.URL(str(request.url), encoded=True),
                    headers=_headers(request.headers),
                    data=content or None,
                    allow_redirects=False,
                    compress=False,
                    ssl=False,
                ) as response:
                    await response.read()
        finally:
            await session.close()

    return exchange


REQUESTS = [
    ("GET", "", {}),
    ("GET", "", {"headers": [("X-Two", "1"), ("x-two", "2"), ("Authorization", "Bearer t")]}),
    ("GET", "", {"headers": {"Host": "other.test:8080", "User-Agent": "syncrun-test", "Accept": "text/csv"}}),
    ("GET", "", {"headers": [("X-A", "1"), ("Host", "other.test")]}),
    ("GET", "", {"headers": [("HOST", "one.test"), ("X-A", "1"), ("host", "two.test")]}),
    ("GET", "", {"headers": {"Connection": "close", "Content-Encoding": "gzip"}}),
    ("GET", "u:p%40ss@", {}),  # credentials in the URL: Basic auth, as aiohttp sends them
    ("GET", "", {"content": b"odd but allowed"}),
    ("HEAD", "", {}),
    ("OPTIONS", "", {}),
    ("POST", "", {}),
    ("POST", "", {"content": b'{"a": 1}', "headers": {"Content-Type": "application/json"}}),
    ("POST", "", {"content": b"x" * 70_000}),  # more than one write
    ("POST", "", {"content": b"", "headers": {"Content-Length": "0"}}),
    ("PUT", "", {"content": b"raw"}),
    ("PATCH", "", {"content": b"raw", "headers": {"Transfer-Encoding": "identity"}}),
    ("DELETE", "", {}),
    ("POST", "", {"content": b"raw", "headers": {"Expect": "100-continue"}}),
]


@pytest.mark.parametrize(("method", "target", "options"), REQUESTS)
@pytest.mark.parametrize("https", [False, True])
def test_the_wire_is_aiohttps(method: str, target: str, options: dict[str, Any], https: bool, tmp_path: Path) -> None:
    """The request aiowire builds and writes puts on the wire the bytes aiohttp's own ClientSession put
    there for the options the transport passed it, over plain HTTP and TLS alike."""
    tls = None
    if https:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(*certificate(tmp_path))
    answer = ANSWER[:-2] if method == "HEAD" else ANSWER  # a HEAD's answer is its head alone
    fast, stock = asyncio.run(
        _heads(answer, _ours(method, target, options), _aiohttps(method, target, options), tls=tls)
    )
    assert len(fast) == 2
    assert fast == stock
    assert fast[0].split(b" ")[1] == PATH.encode()  # the path as encoded, never resolved


def _capture(method: str, url: str, headers: list[tuple[str, str]], data: bytes | None) -> tuple[dict[str, Any], ...]:
    """`vars()` of the request aiowire makes and of the one ClientSession makes for the same options."""
    made: list[dict[str, Any]] = []

    class Captured(aiohttp.ClientRequest):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(dict(vars(self)))
            raise _Stop

    async def main() -> dict[str, Any]:
        session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=AUTO_HEADERS,
            request_class=Captured,
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None),  # as the transport's session had it
        )
        target = yarl.URL(url, encoded=True)
        try:
            with pytest.raises(_Stop):
                await session._request(
                    method, target, headers=headers, data=data, allow_redirects=False, compress=False, ssl=False
                )
        finally:
            await session.close()
        prepared = CIMultiDictProxy(CIMultiDict(headers))  # Host first, as the transport prepares them
        return dict(vars(aiowire.request(method, target, prepared, data, ssl=False)))

    ours = asyncio.run(main())
    return ours, made[0]


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    ("method", "url", "data"),
    [
        ("GET", "http://api.test/a/%2E%2E?q=1", None),
        ("GET", "http://api.test/a#frag", None),
        ("GET", "http://u:p@api.test/a", None),
        ("POST", "https://api.test:8443/a", None),
        ("POST", "https://api.test:8443/a", b'{"a": 1}'),
        ("DELETE", "http://api.test/a", b""),
    ],
)
def test_the_request_object_is_aiohttps(method: str, url: str, data: bytes | None) -> None:
    """`Request.__init__` sets every attribute ClientRequest's own constructor sets when ClientSession
    makes it for the same options, to the same values: an aiohttp that sets another, or sets one
    otherwise, fails here (then `Request.__init__` needs its change)."""
    headers = [("host", "api.test"), ("x-a", "1")]
    ours, stock = _capture(method, url, headers, data)
    # not the same by design: no session (only its charset resolver was read), our trace, a shared timer
    for name in ("_session", "_trace"):
        ours.pop(name, None)
        stock.pop(name, None)
    assert set(ours) == set(stock)
    assert type(ours.pop("_timer")) is type(stock.pop("_timer"))
    for name in ("headers", "_skip_auto_headers"):
        assert list(ours.pop(name).items()) == list(stock.pop(name).items()), name
    body, stock_body = ours.pop("_body"), stock.pop("_body")
    assert type(body) is type(stock_body)
    assert getattr(body, "_value", None) == getattr(stock_body, "_value", None)
    assert ours == stock


def test_request_refuses_what_aiohttp_refused() -> None:
    async def main() -> None:
        headers = CIMultiDictProxy(CIMultiDict([("host", "api.test"), ("authorization", "Bearer t")]))
        with pytest.raises(aiohttp.NonHttpUrlClientError):
            aiowire.request("GET", yarl.URL("ftp://api.test/a"), headers, None, ssl=False)
        with pytest.raises(ValueError, match="AUTHORIZATION"):
            aiowire.request("GET", yarl.URL("http://u:p@api.test/a"), headers, None, ssl=False)

    asyncio.run(main())


# --- the connection on every path: given back after an answer, closed after anything else ---------------
async def _server() -> tuple[asyncio.Server, int]:
    """Answers each request, except one whose target has /silent (never answered) or /partial (a body
    never finished: its connection stays in use)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (head := await _head(reader)) is not None:
            line = head.split(b"\r\n")[0]
            if b"/partial" in line:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}")
            elif b"/silent" not in line:
                writer.write(ANSWER)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


WHERE = ["waiting for a pooled connection", "in the TLS handshake", "in the trace before the head", "awaiting the head"]


@pytest.mark.parametrize("where", WHERE)
def test_a_cancelled_request_gives_its_connection_back(where: str) -> None:
    """Cancelled while it waits for the pool (its one connection in use), while its new connection's TLS
    handshake is unanswered, in the send (a trace awaiting), or while the answer's head is awaited: no
    connection stays taken, and the next request gets one within the pool's limit of one."""

    async def main() -> None:
        server, port = await _server()
        transport = AiohttpTransport(limits=httpx.Limits(max_connections=1), verify=False)
        origin = f"http://127.0.0.1:{port}"
        reached = asyncio.Event()
        extensions: dict[str, Any] = {}

        async def trace(event: str, info: dict[str, Any]) -> None:
            if event.endswith("send_request_headers.started"):
                reached.set()
                if where == "in the trace before the head":
                    await asyncio.Event().wait()

        extensions["trace"] = trace
        try:
            first = None
            if where == "waiting for a pooled connection":  # the only connection holds an unread answer
                first = await transport.handle_async_request(httpx.Request("GET", origin + "/partial"))
            url = {
                "in the TLS handshake": f"https://127.0.0.1:{port}/a",  # a plain server: no ServerHello ever
                "awaiting the head": origin + "/silent",
            }.get(where, origin + "/a")
            task = asyncio.ensure_future(
                transport.handle_async_request(httpx.Request("GET", url, extensions=extensions))
            )
            if where in ("in the trace before the head", "awaiting the head"):
                await reached.wait()
            for _ in range(20):  # the other two have no event to wait for: some loop steps to get there
                await asyncio.sleep(0)
            assert not task.done()
            assert _taken(transport) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            if first is not None:
                assert _taken(transport) == 1  # the first's, until it is closed
                await first.aclose()
            assert _taken(transport) == 0
            response = await asyncio.wait_for(transport.handle_async_request(httpx.Request("GET", origin + "/b")), 10)
            assert response.status_code == 200
            await response.aclose()
            assert _taken(transport) == 0
        finally:
            await transport.aclose()
            server.close()

    asyncio.run(main())


def _taken(transport: AiohttpTransport) -> int:
    """Connections the pool counts as in use (a connection being opened included)."""
    connector = transport._connector
    return 0 if connector is None else len(connector._acquired)


def test_a_request_the_server_dropped_is_not_sent_again() -> None:
    """ClientSession sent an idempotent request again, on a new connection, when a kept-alive one was
    closed under it: an attempt that spent no rate-limit budget (bench/faults.py fault 3). Here the
    server reads the second request and closes the connection: that attempt fails, nothing is resent."""
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            if len(heads) > 1:
                break  # read, never answered: the connection closes under the request
            writer.write(ANSWER)
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        origin = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        transport = AiohttpTransport(limits=httpx.Limits(max_connections=1))
        try:
            response = await transport.handle_async_request(httpx.Request("GET", origin + "/a"))
            await response.aread()
            with pytest.raises(httpx.RemoteProtocolError):
                await transport.handle_async_request(httpx.Request("GET", origin + "/b"))
        finally:
            await transport.aclose()
            server.close()

    asyncio.run(main())
    # a resend is read before the attempt fails: the server closes its connection only after reading it
    assert [head.split(b" ")[1] for head in heads] == [b"/a", b"/b"]
