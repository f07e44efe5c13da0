"""runner/aiotransport.py's shortcuts between httpx's objects and aiohttp's, checked against the libraries
themselves: a response's head reads as httpx reads it, URLs go over as httpx holds them, prepared header
sets stay bounded (the bytes on the wire: tests/test_aiowire.py). These fail when an aiohttp (or httpx) upgrade changes
what the shortcuts stand in for."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest
import yarl

from runner import body
from runner.aiotransport import _PREPARED_BYTES, _PREPARED_MAX, AiohttpTransport, _response

LIMITS = httpx.Limits(max_connections=2, max_keepalive_connections=2)
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


async def _heads(answer: bytes, *exchanges: Callable[[str], Awaitable[None]]) -> list[list[bytes]]:
    """The request heads (and bodies) one raw server received while each `exchange(url)` ran, as bytes."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            lines = [line.split(b":", 1) for line in head.split(b"\r\n")]
            length = next((int(line[1]) for line in lines if line[0].lower() == b"content-length"), 0)
            seen.append(head + (await reader.readexactly(length) if length else b""))
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    heads: list[list[bytes]] = []
    try:
        for exchange in exchanges:
            await exchange(f"http://127.0.0.1:{port}/a/%2E%2E/b%3Fc?q=1&r=%23")
            heads.append(seen[:])
            seen.clear()
    finally:
        server.close()
    return heads


def test_a_response_head_reads_as_httpx_reads_it() -> None:
    """`body.head` joins aiohttp's raw pairs itself; the names, values and their encoding are httpx's."""
    heads = [
        b"X-Rep: 1\r\nx-rep: 2\r\nX-REP: 3\r\nLink: <a>\r\nX-Empty: \r\n",
        "X-Text: caf\u00e9 \u2603\r\nx-TEXT: ok\r\n".encode(),
        "X-Latin: caf\u00e9\r\nx-latin: na\u00efve\r\n".encode("latin-1"),
    ]

    async def main(extra: bytes) -> tuple[dict[str, str], dict[str, str]]:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + extra + b"\r\n{}"
        got: list[tuple[dict[str, str], dict[str, str]]] = []

        async def exchange(url: str) -> None:
            transport = AiohttpTransport(limits=LIMITS)
            try:
                response = await transport.handle_async_request(httpx.Request("GET", url))
                got.append((body.head(response), body.joined(response.headers)))
                await response.aread()
            finally:
                await transport.aclose()

        await _heads(answer, exchange)
        return got[0]

    for extra in heads:
        fast, httpxs = asyncio.run(main(extra))
        assert fast == httpxs
        assert list(fast) == list(httpxs)
    assert asyncio.run(main(heads[0]))[0]["x-rep"] == "1, 2, 3"


def test_prepared_header_sets_are_bounded() -> None:
    """Header values that change per entity (a templated header) never grow the prepared sets past
    _PREPARED_MAX; a set prepared is aiohttp's read-only view of httpx's list."""
    transport = AiohttpTransport(limits=LIMITS)
    for n in range(_PREPARED_MAX * 2 + 3):
        headers = httpx.Headers({"X-Entity": str(n), "Accept": "*/*"})
        prepared = transport._headers(headers)
        assert list(prepared.items()) == headers.multi_items()
        assert len(transport._prepared) <= _PREPARED_MAX
    with pytest.raises(TypeError):
        prepared["x-entity"] = "changed"  # type: ignore[index]


def test_a_large_header_set_is_prepared_but_not_kept() -> None:
    """Review revC F1: an entity's long value in a templated header (1 MB each) was kept in up to 256
    prepared sets (+490 MB peak at 300 entities); a set over _PREPARED_BYTES is made per request."""
    transport = AiohttpTransport(limits=LIMITS)
    for n in range(5):
        headers = httpx.Headers({"X-Blob": str(n) * (_PREPARED_BYTES + 1), "Accept": "*/*"})
        assert list(transport._headers(headers).items()) == headers.multi_items()
    assert transport._prepared == {}
    small = httpx.Headers({"X-Id": "1"})
    assert transport._headers(small) is transport._headers(small)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/apps/%2E%2E/details",
        "http://api.test/a/../b/./c",  # httpx resolves these; what it holds goes over
        "https://u:p%40ss@api.test:8443/a%2Fb/%3F%23/caf%C3%A9",
        "http://[::1]:9000/x",
        "http://b\u00fccher.example/p",
        "http://api.test",
        "http://api.test/a?q=1&r=%23",
        "http://api.test/a?",
        "http://api.test/a#frag",
    ],
)
def test_urls_go_to_aiohttp_as_httpx_holds_them(url: str) -> None:
    """`_url` (an origin's yarl URL, made once, with the path put in) is yarl's parse of httpx's text."""
    transport = AiohttpTransport(limits=LIMITS)
    parsed = httpx.URL(url)
    for _ in range(2):
        (fast, _), slow = transport._url(parsed), yarl.URL(str(parsed), encoded=True)
        assert fast == slow
        assert (str(fast), fast.raw_path_qs, fast.raw_host, fast.port) == (
            str(slow),
            slow.raw_path_qs,
            slow.raw_host,
            slow.port,
        )


def test_a_response_is_httpxs() -> None:
    """`_response` sets the attributes httpx.Response's constructor sets for a streamed response, to the
    same values, and its headers (made when first read) are the ones httpx makes of the raw pairs."""
    raw = ((b"Content-Type", b"application/json"), (b"X-Rep", b"1"), (b"x-rep", "caf\u00e9".encode()))

    class Answer:  # what _response reads of aiohttp's ClientResponse
        status, reason, raw_headers = 203, "Fine", raw

    request = httpx.Request("GET", "http://api.test/a")
    ours = _response(Answer(), request)  # type: ignore[arg-type]
    stock = httpx.Response(
        203,
        headers=raw,
        stream=ours.stream,
        request=request,
        extensions={"http_version": b"HTTP/1.1", "reason_phrase": b"Fine"},
    )
    mine, theirs = dict(vars(ours)), dict(vars(stock))
    assert mine.pop("_raw") == raw
    assert mine.pop("_headers") is None  # not made until read
    headers = theirs.pop("headers")
    assert mine == theirs
    assert ours.headers.raw == headers.raw
    assert ours.headers.multi_items() == headers.multi_items()
    assert ours.headers.encoding == headers.encoding
    assert (ours.reason_phrase, ours.http_version, ours.request) == (stock.reason_phrase, stock.http_version, request)


@pytest.mark.parametrize(
    ("url", "plain"),
    [
        ("http://api.test/a", False),
        ("https://api.test:8443/a", True),
        ("https://u:p@api.test/a", None),  # Basic auth from the URL: aiowire.request's path
        ("http://:p@api.test/a", None),
        ("ftp://api.test/a", None),  # refused there
        ("http://api.test/a?q=1", None),  # parsed per request
    ],
)
def test_only_a_plain_origin_skips_the_request_checks(url: str, plain: bool | None) -> None:
    """`_url` says https or not only for an origin aiowire.request would pass as it is."""
    transport = AiohttpTransport(limits=LIMITS)
    for _ in range(2):
        assert transport._url(httpx.URL(url))[1] is plain
