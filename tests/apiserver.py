"""A real HTTP/1.1 server on loopback for tests (keep-alive, threaded), scriptable per path.

Loaded through `pytest_plugins` in tests/conftest.py; the `api` fixture starts one per test.

    def test_retries(api: ApiServer) -> None:
        api.route("/apps/1", Reply(503), Reply(503), Reply(200, json={"ok": True}))
        ...  # request f"{api.url}/apps/1" with any client
        assert [r.path for r in api.requests] == ["/apps/1"] * 3
        assert worst_window(api.arrivals(), per=1.0) <= 10

A route plays its replies in order and then repeats the last one; unknown paths answer 404. A
reply can also be a function of the recorded request (`Reply` | `Callable[[Recorded], Reply]`).
Every request is recorded (arrival = `time.monotonic()` right after its request line was read).
Stopping the server wakes hung and dripping handlers and shuts every open connection down.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Reply:
    """What the server answers. `json` wins over `body`; `size` streams that many bytes lazily
    (with Content-Length unless `chunked`; `chunked` alone sends `body` chunked, without a length);
    `drip` sends the body one byte per `drip` seconds, forever;
    `hang` never answers; `reset` closes the connection with a TCP RST before answering; `raw` is written
    to the socket verbatim (status line, headers and body: lies about lengths, broken chunking), then
    the connection is closed. `repeated` headers are sent after `headers`, each as its own line
    (several `Link` headers, say)."""

    status: int = 200
    json: Any = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    repeated: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    size: int | None = None
    chunked: bool = False
    drip: float | None = None
    hang: bool = False
    reset: bool = False
    raw: bytes | None = None


@dataclass(frozen=True)
class Recorded:
    at: float  # time.monotonic() when the request line had arrived
    method: str
    target: str  # raw request target, e.g. "/apps/1?cc=us"
    path: str  # percent-decoding NOT applied: what the client put on the wire
    query: dict[str, str]  # decoded; the last value wins
    headers: dict[str, str]  # lower-case names
    body: bytes = b""  # the request body (a token request's form)


Script = Reply | Callable[[Recorded], Reply]


def worst_window(times: Sequence[float], per: float) -> int:
    """The largest number of `times` inside any half-open window [t, t + per)."""
    ordered, start, worst = sorted(times), 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - per:
            start += 1
        worst = max(worst, end - start + 1)
    return worst


class ApiServer:
    """Start with `ApiServer().start()` (or the `api` fixture); `url` is e.g. http://127.0.0.1:41234."""

    def __init__(self) -> None:
        self._routes: dict[str, list[Script]] = {}
        self._log: list[Recorded] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self.stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.api = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def route(self, path: str, *replies: Script) -> None:
        """Answer `path` (exact, no query) with `replies` in order, then keep repeating the last."""
        with self._lock:
            self._routes[path] = list(replies) or [Reply()]

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._log)

    def arrivals(self, path: str | None = None) -> list[float]:
        return [r.at for r in self.requests if path is None or r.path == path]

    def start(self) -> ApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:  # wake handlers blocked reading an idle keep-alive socket
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        self._thread.join(timeout=2)

    # --- used by the handler threads ---
    def _record(self, recorded: Recorded) -> Reply:
        with self._lock:
            self._log.append(recorded)
            script = self._routes.get(recorded.path)
            if script is None:
                return Reply(404, json={"error": f"no route for {recorded.path}"})
            step = script.pop(0) if len(script) > 1 else script[0]
        return step(recorded) if callable(step) else step

    def _track(self, connection: socket.socket, *, open_: bool) -> None:
        with self._lock:
            (self._connections.add if open_ else self._connections.discard)(connection)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: ApiServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients abandoning a body (the cap, the timeout) are expected here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 10  # an idle keep-alive connection is dropped after this

    def setup(self) -> None:
        super().setup()
        self.server.api._track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.api._track(self.connection, open_=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def parse_request(self) -> bool:
        self._arrived = time.monotonic()
        return super().parse_request()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        recorded = Recorded(
            at=self._arrived,
            method=self.command,
            target=self.path,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        reply = self.server.api._record(recorded)
        self._answer(reply)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    def _answer(self, reply: Reply) -> None:
        stopping = self.server.api.stopping
        if reply.delay and stopping.wait(reply.delay):
            return
        if reply.hang:
            stopping.wait()
            self.close_connection = True
            return
        if reply.reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if reply.raw is not None:
            self.wfile.write(reply.raw)
            self.wfile.flush()
            self.close_connection = True
            return
        body = json.dumps(reply.json).encode() if reply.json is not None else reply.body
        headers = {"Content-Type": "application/json" if reply.json is not None else "text/plain"}
        headers |= reply.headers
        self.send_response(reply.status)
        for name, value in [*headers.items(), *reply.repeated]:
            self.send_header(name, value)
        if reply.drip is not None or reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif reply.size is not None:
            self.send_header("Content-Length", str(reply.size))
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if reply.drip is not None:
            self._drip(reply.drip)
        elif reply.size is not None:
            self._stream(reply.size, chunked=reply.chunked)
        elif reply.chunked and self.command != "HEAD":  # `body` without a Content-Length
            for offset in range(0, len(body), _CHUNK):
                piece = body[offset : offset + _CHUNK]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif self.command != "HEAD":
            self.wfile.write(body)

    def _drip(self, interval: float) -> None:
        while not self.server.api.stopping.is_set():
            self.wfile.write(b"1\r\n \r\n")
            self.wfile.flush()
            self.server.api.stopping.wait(interval)
        self.close_connection = True

    def _stream(self, size: int, *, chunked: bool) -> None:
        block = b"x" * _CHUNK
        for offset in range(0, size, _CHUNK):
            if self.server.api.stopping.is_set():
                self.close_connection = True
                return
            piece = block[: min(_CHUNK, size - offset)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


class FakeClock:
    """A clock and an async sleep for the limiter/send seams: sleeping advances time instantly and is logged.

    clock = FakeClock(); Limiter(rate, clock=clock, sleep=clock.sleep); send(..., sleep=clock.sleep)
    """

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class SkippingClock(FakeClock):
    """Real time plus every sleep skipped (and `now` moved by hand), for limiters that talk to a real
    server's clock (PostgreSQL, Redis): our clock keeps pace with the server's between sleeps. A clock
    that stood still while a busy server took real milliseconds per statement would look to the
    limiter like the server's clock running fast (a clock step, which it guards against)."""

    def __init__(self) -> None:
        self._skipped = 0.0
        super().__init__()

    @property  # type: ignore[override]
    def now(self) -> float:
        return time.monotonic() + self._skipped

    @now.setter
    def now(self, value: float) -> None:
        self._skipped = value - time.monotonic()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)


def _served() -> Iterator[ApiServer]:
    server = ApiServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api() -> Iterator[ApiServer]:
    """A started loopback ApiServer, stopped after the test."""
    yield from _served()


@pytest.fixture
def other() -> Iterator[ApiServer]:
    """A second loopback server: another origin (another port), recording what it receives."""
    yield from _served()
