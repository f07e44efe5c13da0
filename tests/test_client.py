"""client.send: retries with backoff, Retry-After for the whole bucket, total timeout, body cap."""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator

import httpx
import pytest

from runner import client, spec
from runner.aiotransport import _headers
from runner.aiowire import MAX_HEAD, MAX_HEADERS
from runner.errors import FetchError, RunFailed, Transient
from runner.ratelimit import Limiter
from tests.apiserver import ApiServer, FakeClock, Reply

POLICY = spec.Retry(attempts=4, initial=1.0, factor=2.0, jitter=0.0)


def _limiter(clock: FakeClock | None = None, requests: int = 1000) -> Limiter:
    rate = spec.RateLimit(requests=requests, per=1.0, bucket="t")
    return Limiter(rate, clock=clock, sleep=clock.sleep) if clock else Limiter(rate)


def _request_spec(url: str = "http://api.test/", timeout: float = 5.0) -> spec.Request:
    return spec.Request(url=spec.Template(url, (spec.Literal(url),)), timeout=timeout)


def send(
    url: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    policy: spec.Retry = POLICY,
    clock: FakeClock | None = None,
    limiter: Limiter | None = None,
    timeout: float = 5.0,
    max_body: int = 1_000_000,
    redact: Callable[[str], str] = str,
) -> client.Reply:
    """One client.send through client.build, with the fake clock's sleep (no real waiting)."""
    clock = clock or FakeClock()
    limiter = limiter or _limiter()

    async def main() -> client.Reply:
        async with client.build(_request_spec(url, timeout), limiter, transport=transport, max_connections=4) as http:
            request = http.build_request("GET", url)
            return await client.send(
                http,
                request,
                policy,
                max_body=max_body,
                timeout=timeout,
                limiter=limiter,
                redact=redact,
                sleep=clock.sleep,
            )

    return asyncio.run(main())


def scripted(*responses: httpx.Response) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A MockTransport answering `responses` in order, and the list of requests it saw."""
    seen: list[httpx.Request] = []
    replies: Iterator[httpx.Response] = iter(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(replies)

    return httpx.MockTransport(handler), seen


# --- retry logic (MockTransport) ---------------------------------------------------------------------
def test_transient_statuses_retry_with_backoff_then_succeed() -> None:
    """503, 503, 503, 200: success after backing off 1, 2 and 4 s."""
    transport, seen = scripted(*(httpx.Response(503) for _ in range(3)), httpx.Response(200, json={"ok": 1}))
    clock = FakeClock()
    reply = send("http://api.test/x", transport=transport, clock=clock)
    assert (reply.status, reply.body, len(seen)) == (200, {"ok": 1}, 4)
    assert clock.sleeps == [1.0, 2.0, 4.0]


def test_backoff_is_capped_and_jittered() -> None:
    """Backoff grows by `factor`, stays within +/- jitter, and never exceeds max_delay (+ jitter)."""
    transport, _ = scripted(*(httpx.Response(500) for _ in range(5)), httpx.Response(200))
    clock = FakeClock()
    policy = spec.Retry(attempts=6, initial=1.0, factor=3.0, max_delay=5.0, jitter=0.1)
    send("http://api.test/x", transport=transport, clock=clock, policy=policy)
    for slept, nominal in zip(clock.sleeps, [1.0, 3.0, 5.0, 5.0, 5.0], strict=True):
        assert nominal * 0.9 <= slept <= nominal * 1.1


def test_non_transient_status_is_returned_after_one_request() -> None:
    """A 404 is an answer, not a failure: returned as is, no retry."""
    transport, seen = scripted(httpx.Response(404, json={"error": "gone"}))
    reply = send("http://api.test/x", transport=transport)
    assert (reply.status, reply.body, len(seen)) == (404, {"error": "gone"}, 1)


def test_exhausted_attempts_raise_transient_with_a_redacted_url() -> None:
    """Four 503s: Transient naming the attempts, the last status and the URL with the secret masked."""
    transport, seen = scripted(*(httpx.Response(503, text="down") for _ in range(4)))
    with pytest.raises(Transient) as caught:
        send("http://api.test/x?key=hunter22", transport=transport, redact=lambda s: s.replace("hunter22", "***"))
    assert str(caught.value) == "gave up after 4 attempts: HTTP 503 'down' (GET http://api.test/x?key=***)"
    assert caught.value.definitive is False
    assert len(seen) == 4


def test_connection_errors_are_transient() -> None:
    """A transport error is retried and, when it persists, reported with its type."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(Transient, match=r"gave up after 2 attempts: connection failed \(ConnectError: connection"):
        send("http://api.test/x", transport=httpx.MockTransport(refuse), policy=spec.Retry(attempts=2, jitter=0))


def test_reply_fields() -> None:
    """Reply: lower-case headers, media type without parameters, decoded JSON, raw excerpt, elapsed."""
    transport, _ = scripted(httpx.Response(200, headers={"X-Thing": "1"}, json={"a": [1, 2]}))
    reply = send("http://api.test/x", transport=transport)
    assert reply.headers["x-thing"] == "1"
    assert reply.content_type == "application/json"
    assert reply.raw == b'{"a":[1,2]}'
    assert reply.url == "http://api.test/x"
    assert reply.elapsed >= 0


# --- Retry-After, timeouts, body cap (a real server) ---------------------------------------------------
def test_retry_after_pauses_the_whole_bucket(api: ApiServer) -> None:
    """`Retry-After: 1` on one request makes it wait 1 s, and another request on the same limiter waits too."""
    api.route("/a", Reply(429, headers={"Retry-After": "1"}), Reply(200, json={"a": 1}))
    api.route("/b", Reply(200, json={"b": 1}))
    limiter = _limiter()
    sleeps: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(seconds)

    async def main() -> list[client.Reply]:
        async with client.build(_request_spec(), limiter, max_connections=4) as http:

            async def get(path: str) -> client.Reply:
                request = http.build_request("GET", api.url + path)
                return await client.send(
                    http, request, POLICY, max_body=1000, timeout=5, limiter=limiter, redact=str, sleep=recording_sleep
                )

            first = asyncio.create_task(get("/a"))
            while not api.requests:  # /b starts once the 429 has been answered
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            return [await first, await get("/b")]

    replies = asyncio.run(main())
    assert [r.body for r in replies] == [{"a": 1}, {"b": 1}]
    assert sleeps == [1.0]
    a, b = api.arrivals("/a"), api.arrivals("/b")
    assert b[0] - a[0] >= 0.95  # /b did not go out while the bucket was paused


def test_retry_after_http_date(api: ApiServer) -> None:
    """An HTTP-date Retry-After is waited out as seconds from now."""
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    api.route("/x", Reply(503, headers={"Retry-After": when}), Reply(200, json={}))
    clock = FakeClock()
    send(api.url + "/x", clock=clock, limiter=_limiter(clock))
    assert len(clock.sleeps) == 1
    assert 1.5 < clock.sleeps[0] <= 3.0


def test_retry_after_beyond_max_wait_fails_the_run(api: ApiServer) -> None:
    """Retry-After longer than retry.max_wait stops the run at once instead of sleeping for hours."""
    api.route("/x", Reply(429, headers={"Retry-After": "7200"}))
    clock = FakeClock()
    with pytest.raises(RunFailed) as caught:
        send(api.url + "/x", clock=clock, limiter=_limiter(clock))
    assert str(caught.value) == (
        f"{api.url}/x answered HTTP 429 with Retry-After: 7200 (7200 s), longer than retry.max_wait (300 s);"
        " stopping the run instead of waiting"
    )
    assert clock.sleeps == []
    assert len(api.requests) == 1


def test_hung_server_hits_the_total_timeout(api: ApiServer) -> None:
    """A server that never answers is cut at request.timeout per attempt, then Transient."""
    api.route("/x", Reply(hang=True))
    started = time.monotonic()
    with pytest.raises(Transient) as caught:
        send(api.url + "/x", timeout=0.3, policy=spec.Retry(attempts=2, jitter=0))
    assert str(caught.value) == (
        f"gave up after 2 attempts: no complete answer within 0.3 s (request.timeout) (GET {api.url}/x)"
    )
    assert 0.6 <= time.monotonic() - started < 2.0
    assert len(api.requests) == 2


def test_a_cancelled_attempt_is_cancelled_and_a_timed_out_one_leaves_no_cancellation(api: ApiServer) -> None:
    """The attempt's deadline cancels its task and takes that back as a retryable timeout; a cancellation
    from outside (the run's stop) passes as a cancellation, never as a timeout to retry; and a task
    whose attempts timed out has no cancellation left pending (`cancelling()` is 0)."""
    api.route("/x", Reply(hang=True))

    async def attempt(timeout: float, attempts: int) -> client.Reply:
        limiter = _limiter()
        async with client.build(_request_spec(api.url + "/x", timeout), limiter, max_connections=2) as http:
            request = http.build_request("GET", api.url + "/x")
            policy = spec.Retry(attempts=attempts, initial=0.01, jitter=0)
            return await client.send(http, request, policy, max_body=100, timeout=timeout, limiter=limiter, redact=str)

    async def timed_out() -> int:
        with pytest.raises(Transient, match=r"no complete answer within 0\.2 s"):
            await attempt(0.2, 2)
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0)  # a cancellation left pending would land here
        return task.cancelling()

    async def cancelled() -> None:
        task = asyncio.ensure_future(attempt(5.0, 3))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert asyncio.run(timed_out()) == 0
    requests = len(api.requests)
    asyncio.run(cancelled())
    assert len(api.requests) == requests + 1  # no retry after a cancellation


def test_slow_drip_body_hits_the_total_timeout(api: ApiServer) -> None:
    """A body trickling in a byte every 0.1 s beats every per-read timeout but not the total one."""
    api.route("/x", Reply(drip=0.1))
    started = time.monotonic()
    with pytest.raises(Transient, match=r"no complete answer within 0\.5 s"):
        send(api.url + "/x", timeout=0.5, policy=spec.Retry(attempts=2, jitter=0))
    assert 1.0 <= time.monotonic() - started < 2.5


def test_waiting_for_the_rate_limit_does_not_count_as_timeout(api: ApiServer) -> None:
    """The timeout clock starts at the grant: queueing 0.6 s for budget with a 0.3 s timeout is fine."""
    api.route("/x", Reply(200, json={}))
    limiter = Limiter(spec.RateLimit(requests=1, per=0.6, bucket="t"))

    async def main() -> list[int]:
        async with client.build(_request_spec(timeout=0.3), limiter, max_connections=2) as http:

            async def get() -> int:
                request = http.build_request("GET", api.url + "/x")
                reply = await client.send(
                    http,
                    request,
                    POLICY,
                    max_body=100,
                    timeout=0.3,
                    limiter=limiter,
                    redact=str,
                    sleep=FakeClock().sleep,
                )
                return reply.status

            return list(await asyncio.gather(get(), get()))

    assert asyncio.run(main()) == [200, 200]


def test_connection_reset_is_retried(api: ApiServer) -> None:
    """A reset connection is a transient failure: the next attempt succeeds."""
    api.route("/x", Reply(reset=True), Reply(200, json={"ok": True}))
    reply = send(api.url + "/x", policy=spec.Retry(attempts=2, jitter=0))
    assert reply.body == {"ok": True}
    assert len(api.requests) == 2


def test_oversized_streamed_body_is_abandoned_at_the_cap(api: ApiServer) -> None:
    """A 50 MB chunked body is cut at a 100 KB cap without buffering it (peak memory stays small)."""
    api.route("/x", Reply(200, size=50_000_000, chunked=True))
    tracemalloc.start()
    try:
        with pytest.raises(FetchError) as caught:
            send(api.url + "/x", max_body=100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value) == (
        f"response body from {api.url}/x exceeded request.max_body (100,000 bytes); stopped reading"
    )
    assert caught.value.definitive is True
    assert peak < 5_000_000, f"peak {peak:,} bytes"


def test_declared_oversized_body_is_refused_up_front(api: ApiServer) -> None:
    """A Content-Length above the cap fails before reading the body."""
    api.route("/x", Reply(200, size=50_000_000))
    with pytest.raises(FetchError, match=r"declares 50,000,000 bytes \(Content-Length\), more than request\.max_body"):
        send(api.url + "/x", max_body=100_000)
    assert len(api.requests) == 1


# --- hostile bodies: content codings (a real server) ---------------------------------------------------
PAYLOAD = {"name": "App", "tags": ["a", "b"], "n": 1}
TEXT = json.dumps(PAYLOAD).encode()


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip", gzip.compress(TEXT)),
        ("x-gzip", gzip.compress(TEXT)),
        ("GZip", gzip.compress(TEXT)),
        ("deflate", zlib.compress(TEXT)),  # RFC 9110: zlib-wrapped
        ("deflate", _raw_deflate(TEXT)),  # what some servers send instead
        ("gzip, gzip", gzip.compress(gzip.compress(TEXT))),
        ("deflate, gzip", gzip.compress(zlib.compress(TEXT))),
        ("identity", TEXT),
        ("gzip", gzip.compress(TEXT[:10]) + gzip.compress(TEXT[10:])),  # two gzip members
        ("gzip", gzip.compress(TEXT) + b"\0" * 16),  # NUL padding after the data
    ],
)
def test_content_codings_are_decoded(api: ApiServer, coding: str, body: bytes) -> None:
    """gzip (also x-gzip, any case), deflate zlib-wrapped or raw, two stacked layers, identity."""
    api.route("/x", Reply(200, body=body, headers={"Content-Type": "application/json", "Content-Encoding": coding}))
    assert send(api.url + "/x").body == PAYLOAD
    assert api.requests[0].headers["accept-encoding"] == "gzip, deflate"  # nothing we cannot bound


@pytest.mark.parametrize(
    ("coding", "body", "message"),
    [
        ("gzip", TEXT, "is not valid gzip data (Content-Encoding: gzip): Error -3 while decompressing data"),
        ("deflate", b"\x78\x9c" + TEXT, "is not valid deflate data (Content-Encoding: deflate)"),
        ("gzip", gzip.compress(TEXT)[:-9], "ends inside its gzip data (truncated; Content-Encoding: gzip)"),
        ("gzip", b"\x1f", "ends inside its gzip data (truncated"),
        ("gzip", gzip.compress(TEXT) + b"<html>", "is not valid gzip data"),
        ("deflate", zlib.compress(TEXT) + b"junk", "has 4 bytes after the end of its deflate data"),
        ("br", TEXT, "uses Content-Encoding br, which syncrun does not decode (it asks for gzip, deflate)"),
        ("zstd, gzip", TEXT, "uses Content-Encoding zstd, which syncrun does not decode"),
        (
            "gzip, gzip, gzip",
            TEXT,
            "is encoded 3 times (Content-Encoding: gzip, gzip, gzip); syncrun decodes at most 2",
        ),
    ],
)
def test_a_body_its_encoding_does_not_describe_is_a_definitive_error(
    api: ApiServer, coding: str, body: bytes, message: str
) -> None:
    """A coding that lies, is truncated, unknown or stacked too deep: FetchError naming it, one request
    (the same bytes would come back), never httpx.DecodingError (it escaped the run and hung it)."""
    api.route("/x", Reply(200, body=body, headers={"Content-Type": "application/json", "Content-Encoding": coding}))
    with pytest.raises(FetchError) as caught:
        send(api.url + "/x")
    assert f"response body from {api.url}/x {message}" in str(caught.value)
    assert caught.value.definitive is True
    assert len(api.requests) == 1


@pytest.mark.parametrize("status", [200, 204])
def test_an_empty_body_that_names_a_coding_is_empty(api: ApiServer, status: int) -> None:
    """Servers send `Content-Encoding: gzip` on empty answers (204s, empty 200s): nothing to decode."""
    api.route("/x", Reply(status, headers={"Content-Encoding": "gzip"}))
    reply = send(api.url + "/x")
    assert (reply.status, reply.body, reply.raw, reply.problem) == (status, None, b"", "")


def test_a_bad_encoding_on_a_transient_status_is_still_retried(api: ApiServer) -> None:
    """The excerpt of a 503 is best effort: a lying Content-Encoding cannot turn a retry into a crash."""
    headers = {"Content-Encoding": "gzip"}
    api.route("/x", Reply(503, body=b"not gzip", headers=headers), Reply(200, json=PAYLOAD))
    assert send(api.url + "/x", policy=spec.Retry(attempts=2, jitter=0)).body == PAYLOAD


def _bomb(codings: list[str], size: int) -> bytes:
    """`size` zero bytes under `codings` (in the order applied), never holding the zeros in memory."""
    wbits = 16 + zlib.MAX_WBITS if codings[0] == "gzip" else zlib.MAX_WBITS
    packer, zeros = zlib.compressobj(9, wbits=wbits), b"\0" * 1_000_000
    body = b"".join(packer.compress(zeros) for _ in range(size // len(zeros))) + packer.flush()
    for coding in codings[1:]:
        body = gzip.compress(body, 9) if coding == "gzip" else zlib.compress(body, 9)
    return body


@pytest.mark.parametrize("coding", ["gzip", "gzip, gzip", "deflate, deflate"])
def test_compression_bomb_is_capped_after_decoding_in_bounded_memory(api: ApiServer, coding: str) -> None:
    """1 GB of zeros, compressed once or twice to a few KB: stopped at max_body of *decoded* bytes, with
    peak memory near the cap (the old client inflated a 6.8 KB "gzip, gzip" body to 8.3 GB)."""
    body = _bomb([c.strip() for c in coding.split(",")], 1_000_000_000)
    assert len(body) < 1_100_000  # one layer of gzip is ~1 MB; two are a few KB
    api.route("/x", Reply(200, body=body, headers={"Content-Encoding": coding}))
    tracemalloc.start()
    try:
        with pytest.raises(FetchError) as caught:
            send(api.url + "/x", max_body=2_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "request.max_body (2,000,000 bytes)" in str(caught.value)
    assert caught.value.definitive is True
    assert peak < 12_000_000, f"peak {peak:,} bytes"


def test_inflating_yields_to_the_event_loop(api: ApiServer) -> None:
    """Decoding runs in steps: a ticker task on the same loop keeps running while a 20 MB bomb inflates."""
    api.route("/x", Reply(200, body=_bomb(["gzip"], 20_000_000), headers={"Content-Encoding": "gzip"}))
    ticks: list[float] = []

    async def main() -> None:
        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        limiter = _limiter()
        async with client.build(_request_spec(api.url + "/x"), limiter, max_connections=1) as http:
            request = http.build_request("GET", api.url + "/x")
            reply = await client.send(
                http, request, POLICY, max_body=30_000_000, timeout=5, limiter=limiter, redact=str
            )
        assert reply.raw == b"\0" * client.EXCERPT
        task.cancel()

    asyncio.run(main())
    assert len(ticks) > 20_000_000 // (64 * 1024) // 2  # about one tick per 64 KB decoded


# --- hostile bodies: framing that lies (raw bytes on the socket) ------------------------------------------
def _raw(head: str, body: bytes) -> bytes:
    return head.replace("\n", "\r\n").encode() + b"\r\n" + body


@pytest.mark.parametrize(
    "raw",
    [
        _raw("HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 500\n", TEXT),  # longer than sent
        _raw("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b'5\r\n{"a":\r\n'),  # no last chunk
        _raw("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"zz\r\n{}\r\n0\r\n\r\n"),  # bad chunk size
        _raw("HTTP/1.1 200 OK\n" + "X-Pad: " + "a" * 200_000 + "\n", b""),  # headers over 100 KB
        _raw("HTTP/1.1 200 OK\n" + "".join(f"X-H{i}: v\n" for i in range(20_000)), b""),  # too many
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",  # the connection closes inside the headers
        b"\x00\xff garbage, not HTTP\r\n\r\n",
    ],
)
def test_broken_framing_is_a_transient_failure(api: ApiServer, raw: bytes) -> None:
    """A body cut short, broken chunking, oversized headers, garbage instead of HTTP: the connection
    broke, so the attempt is retried (next: a good answer) rather than blamed on the entity."""
    api.route("/x", Reply(raw=raw), Reply(200, json=PAYLOAD))
    reply = send(api.url + "/x", policy=spec.Retry(attempts=2, jitter=0))
    assert reply.body == PAYLOAD
    assert len(api.requests) == 2


def test_repeated_headers_are_joined(api: ApiServer) -> None:
    """Repeats of one name, up to the transport's bound on header fields, are joined with ", "."""
    repeats = MAX_HEADERS - 2
    head = "HTTP/1.1 200 OK\nContent-Length: 2\n" + "X-A: v\n" * repeats
    api.route("/x", Reply(raw=_raw(head, b"{}")))
    reply = send(api.url + "/x")
    assert reply.headers["x-a"] == ", ".join(["v"] * repeats)
    assert reply.body == {}


def test_thousands_of_headers_are_a_transient_protocol_error(api: ApiServer) -> None:
    """15,000 header fields: refused by the transport's bound (memory stays small), retried, then the
    entity's transient failure, never a crash."""
    head = "HTTP/1.1 200 OK\nContent-Length: 2\n" + "X-A: v\n" * 15_000
    api.route("/x", *[Reply(raw=_raw(head, b"{}"))] * 4)
    with pytest.raises(Transient, match="Too many headers"):
        send(api.url + "/x")


@pytest.mark.parametrize("interim", [0, 4], ids=["one-head", "with-103s"])
def test_a_head_over_the_total_bound_is_a_transient_protocol_error(api: ApiServer, interim: int) -> None:
    """Fields and lines each within their bounds, 100 x 6,000 bytes: over MAX_HEAD and the one read
    past it that may complete a head (interim 103 heads count too), so refused before it is parsed
    into memory (review11 O4); a head of ~120 KB (a long Link header, say) still passes."""
    early = "HTTP/1.1 103 Early Hints\n" + "".join(f"Link: </{i}>\n" for i in range(20)) + "\n"
    fat = early * interim + "HTTP/1.1 200 OK\nContent-Length: 2\n" + f"X-F: {'v' * 6000}\n" * 100
    api.route("/x", *[Reply(raw=_raw(fat, b"{}"))] * 4)
    with pytest.raises(Transient, match=f"over {MAX_HEAD:,} bytes"):
        send(api.url + "/x")
    # between MAX_HEAD and MAX_HEAD + one read: refused whichever read completes it (it passed or not
    # with the kernel's split: a flaky test caught it)
    for size in (MAX_HEAD + 1_000, MAX_HEAD + 100_000, 2 * MAX_HEAD - 1_000):
        fields = size // 6_000 + 1
        over = "HTTP/1.1 200 OK\nContent-Length: 2\n" + f"X-F: {'v' * 6000}\n" * fields
        api.route("/over", *[Reply(raw=_raw(over, b"{}"))] * 4)
        for _ in range(3):
            with pytest.raises(Transient, match=f"over {MAX_HEAD:,} bytes"):
                send(api.url + "/over")
    api.route("/ok", Reply(raw=_raw("HTTP/1.1 200 OK\nContent-Length: 2\n" + f"Link: <{'v' * 60_000}>\n" * 2, b"{}")))
    assert send(api.url + "/ok").body == {}


def test_content_length_shorter_than_the_body_is_never_taken_as_the_next_response(api: ApiServer) -> None:
    """Content-Length: 2 before a longer body: aiohttp's parser refuses the junk after the declared
    body as a protocol error (retried on a fresh connection); the junk never becomes the next answer."""
    api.route("/x", Reply(raw=_raw("HTTP/1.1 200 OK\nContent-Length: 2\n", b'{}{"x": 1}')), Reply(200, json=PAYLOAD))
    assert send(api.url + "/x").body == PAYLOAD
    assert len(api.requests) == 2


@pytest.mark.parametrize(
    ("head", "body", "expected"),
    [
        ("HTTP/1.1 304 Not Modified\nContent-Length: 1234\n", b"", b""),  # a length, but no body follows
        ("HTTP/1.1 200 OK\nContent-Length: 0\n", b"", b""),
        ("HTTP/1.1 200 OK\nContent-Length: 7\n", b'{"a":1}', b'{"a":1}'),
        ("HTTP/1.1 200 OK\nContent-Length: 99\nTransfer-Encoding: chunked\n", b'7\r\n{"a":1}\r\n0\r\n\r\n', None),
    ],
    ids=["304", "empty", "declared", "declared-and-chunked"],
)
def test_a_declared_length_read_in_one_go_is_the_body_the_parser_framed(
    api: ApiServer, head: str, body: bytes, expected: bytes | None
) -> None:
    """An identity body with a Content-Length is read at once (runner/body.py); what arrives is what
    aiohttp's parser framed: a 304's declared length is no body, and a length next to chunked
    framing is either refused or ignored, never read past (None: refused, the retry answers)."""
    api.route("/x", Reply(raw=_raw(head, body)), Reply(200, json=PAYLOAD))
    reply = send(api.url + "/x", policy=spec.Retry(attempts=2, jitter=0, statuses=frozenset()))
    if expected is None:
        assert reply.body == PAYLOAD
    else:
        assert reply.raw == expected
        assert len(api.requests) == 1


@pytest.mark.parametrize(
    "header", ["Mon, 01 Jan 99999999999 00:00:00 GMT", "nan", "inf", "1e999", "-inf", "Mon, 99 Foo 2024 99:99:99 GMT"]
)
def test_an_unreadable_retry_after_is_normal_backoff(api: ApiServer, header: str) -> None:
    """A Retry-After no clock can wait for (a year beyond datetime: OverflowError; NaN; infinity)
    counts as absent: the usual backoff, then the retry succeeds — never a crash, never a stuck run."""
    api.route("/x", Reply(503, headers={"Retry-After": header}), Reply(200, json={"ok": True}))
    clock = FakeClock()
    reply = send(api.url + "/x", clock=clock, limiter=_limiter(clock))
    assert reply.body == {"ok": True}
    assert len(api.requests) == 2
    assert clock.sleeps
    assert all(0 < s <= POLICY.max_delay for s in clock.sleeps)


def test_retry_after_parsing_is_total() -> None:
    """_retry_after reads seconds and HTTP-dates; everything else, however hostile, is None."""
    assert client._retry_after(" 5 ") == 5.0
    assert client._retry_after("-3") == 0.0
    for header in ("Mon, 01 Jan 99999999999 00:00:00 GMT", "nan", "inf", "", "soon", "\x00", "9" * 5000):
        assert client._retry_after(header) is None


@pytest.mark.parametrize(
    "headers",
    [
        [("Host", "api.test"), ("User-Agent", "x"), ("X-Two", "1"), ("x-two", "2")],
        [("X-Latin", "caf\u00e9".encode("latin-1")), ("Accept", "*/*")],
    ],
)
def test_headers_go_to_aiohttp_as_httpx_lists_them(headers: list[tuple[str, str | bytes]]) -> None:
    """The transport's header list is httpx's `multi_items()` (lower-case names, httpx's encoding)."""
    built = httpx.Headers(headers)
    assert _headers(built) == built.multi_items()


# --- cookies: never kept, never sent (review11 F1, F2) ------------------------------------------------------
def test_cookies_an_api_sets_are_never_kept_nor_sent_back(api: ApiServer) -> None:
    """A flood of new cookies on every answer, one with a control character, one with a non-ASCII byte:
    every later request still goes out, with no Cookie header at all, and the client's jar stays
    empty (it grew by ~7 MB per answer and was sent back whole; the odd cookies made every later
    request raise). httpx's own `send` (an OAuth2 token request's path) keeps none either."""
    served = iter(range(1_000_000))

    def flood(_: object) -> Reply:
        n = next(served)
        cookies = tuple(("Set-Cookie", f"c{n}_{i}={'v' * 4000}; Path=/") for i in range(50))  # < MAX_HEAD
        return Reply(200, json=PAYLOAD, repeated=cookies)

    api.route("/flood", flood)
    api.route("/ctl", Reply(200, json=PAYLOAD, headers={"Set-Cookie": "a=x\x01y; Path=/"}))
    api.route("/utf", Reply(200, json=PAYLOAD, headers={"Set-Cookie": "b=\xfc\xfe; Path=/"}))
    paths = ["/flood", "/ctl", "/utf"] * 4

    async def main() -> None:
        limiter = _limiter()
        async with client.build(_request_spec(api.url + "/flood"), limiter, max_connections=2) as http:
            for path in paths:
                request = http.build_request("GET", api.url + path)
                reply = await client.send(
                    http, request, POLICY, max_body=1_000_000, timeout=5, limiter=limiter, redact=str
                )
                assert reply.body == PAYLOAD
            response = await http.send(http.build_request("GET", api.url + "/ctl"))
            assert response.status_code == 200
            assert len(http.cookies.jar) == 0

    asyncio.run(main())
    assert [r.path for r in api.requests] == [*paths, "/ctl"]
    assert all("cookie" not in r.headers for r in api.requests)


@pytest.mark.parametrize("value", ["x\x01y", "x\x7fy", "x\x0by"])
def test_a_head_aiohttp_refuses_to_write_is_the_requests_definitive_failure(api: ApiServer, value: str) -> None:
    """A control character in a header value: aiohttp's ValueError became a traceback (exit 70); now an
    `unusable request` FetchError, not retried (another attempt would fail the same way), and the
    server never hears of it."""
    api.route("/x", Reply(200, json=PAYLOAD))

    async def main() -> None:
        limiter = _limiter()
        async with client.build(_request_spec(api.url + "/x"), limiter, max_connections=2) as http:
            request = http.build_request("GET", api.url + "/x", headers={"X-A": value})
            with pytest.raises(FetchError, match="unusable request") as caught:
                await client.send(http, request, POLICY, max_body=1000, timeout=5, limiter=limiter, redact=str)
            assert not isinstance(caught.value, Transient)
            again = http.build_request("GET", api.url + "/x")
            reply = await client.send(http, again, POLICY, max_body=1000, timeout=5, limiter=limiter, redact=str)
            assert reply.body == PAYLOAD

    asyncio.run(main())
    assert len(api.requests) == 1


# --- bytes on an idle pooled connection (review11 F9) ----------------------------------------------------------
def test_bytes_an_idle_connection_hears_never_answer_a_request() -> None:
    """A server answers each request with its target, and on a connection's first request also writes,
    a little later, a whole extra response onto the then idle keep-alive connection. aiohttp kept the
    connection and the next request took those bytes as its answer, and every later one its
    predecessor's (k2 ← STRAY, k3 ← k2, …). Now such a connection is closed: each gets its own."""

    async def main() -> list[object]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            served = 0
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    target = head.split(b" ", 2)[1].decode()
                    served += 1
                    writer.write(_json_response({"target": target}))
                    await writer.drain()
                    if served == 1:
                        await asyncio.sleep(0.1)
                        writer.write(_json_response({"target": "STRAY"}))
                        await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        limiter = _limiter()
        bodies: list[object] = []
        async with server, client.build(_request_spec(url + "/k1"), limiter, max_connections=1) as http:
            for n in range(1, 6):
                request = http.build_request("GET", f"{url}/k{n}")
                reply = await client.send(http, request, POLICY, max_body=1000, timeout=5, limiter=limiter, redact=str)
                bodies.append(reply.body)
                await asyncio.sleep(0.3)  # the stray answer arrives while the connection is idle in the pool
        return bodies

    assert asyncio.run(main()) == [{"target": f"/k{n}"} for n in range(1, 6)]


def _json_response(value: object) -> bytes:
    body = json.dumps(value).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("POST", {}),
        ("POST", {"content": b"raw"}),
        ("PUT", {"headers": {"Accept": "application/json"}}),
        ("GET", {"headers": {"User-Agent": "syncrun-test"}}),
    ],
    ids=["bodyless-post", "post-bytes", "put", "get"],
)
def test_requests_go_out_with_exactly_the_headers_httpx_built(
    api: ApiServer, method: str, options: dict[str, object]
) -> None:
    """aiohttp added `Content-Type: application/octet-stream` to a POST httpx gave none (review11 O1);
    it adds none of its own headers now, nor drops one of httpx's."""
    api.route("/x", Reply(200, json=PAYLOAD))

    async def main() -> httpx.Request:
        limiter = _limiter()
        async with client.build(_request_spec(api.url + "/x"), limiter, max_connections=1) as http:
            request = http.build_request(method, api.url + "/x", **options)  # type: ignore[arg-type]
            await client.send(http, request, POLICY, max_body=1000, timeout=5, limiter=limiter, redact=str)
            return request

    request = asyncio.run(main())
    (seen,) = api.requests
    assert seen.headers == {name.lower(): value for name, value in request.headers.items()}
