"""A slow network on loopback, for the rate-limit tests: a delaying TCP proxy, optionally terminating TLS
with a throwaway certificate.

    with DelayProxy(api.url, one_way=0.06, tls=True) as proxy:   # https://127.0.0.1:PORT -> api
        ... request proxy.url ...; the ApiServer behind it counts the arrivals

Each accepted connection is held 100-300 ms (seeded) before anything happens on it: the upstream
connect, and with `tls` the server's side of the handshake, so a client sees a slow connection set-up
as over a real network (with plain HTTP the kernel completes the client's connect at once, so the hold
shows as a server that reads late). Then every chunk, both ways, is delivered `one_way` seconds after
it was read, in order: the transit time of a network path (20-100 ms in the tests).

Bounded: each connection buffers at most 256 chunks per direction, and the proxy stops by itself after
`lifetime` seconds. Runs on its own event loop in a child process (its TLS work and copying must not
take the GIL from the client under test, which would look like network jitter); `stop()` (or leaving
the `with`) ends it. `connections` counts the connections accepted so far.

`certificate(dir)` makes a self-signed certificate for 127.0.0.1 with the `openssl` CLI (no test
dependency needed); point httpx at it with SSL_CERT_FILE (the `trust` fixture of the tests does).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import socket
import ssl
import subprocess
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

CONNECT = (0.100, 0.300)  # seconds a new connection is held before it is served


def certificate(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) for CN/SAN 127.0.0.1, valid a day, made by `openssl req`."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    if not cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    return cert, key


class DelayProxy:
    def __init__(
        self,
        upstream: str,
        *,
        one_way: float = 0.05,
        connect: tuple[float, float] = CONNECT,
        tls: tuple[Path, Path] | None = None,
        lifetime: float = 600.0,
        seed: int = 7,
    ) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.one_way, self.connect, self.lifetime = one_way, connect, lifetime
        self._random = random.Random(seed)
        self._context: ssl.SSLContext | None = None  # made in the child
        self._tls = tls
        context = multiprocessing.get_context("spawn")
        self._count = context.Value("i", 0)
        self._port_value = context.Value("i", 0)
        self._ready = context.Event()
        self._process = context.Process(target=_child, args=(self,), daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._port = 0

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.update(_context=None, _process=None, _loop=None, _stopped=None)
        return state

    @property
    def connections(self) -> int:
        return int(self._count.value)

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self._port}"

    def start(self) -> DelayProxy:
        self._process.start()
        if not self._ready.wait(30):
            self._process.kill()
            raise RuntimeError("the delaying proxy did not start")
        self._port = int(self._port_value.value)
        return self

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        if self._tls is not None:
            self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._context.load_cert_chain(*map(str, self._tls))
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        self._port_value.value = listener.getsockname()[1]
        self._ready.set()

        async def accept() -> None:
            while True:
                connection, _ = await loop.sock_accept(listener)
                task = loop.create_task(self._relay(connection))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        accepting = loop.create_task(accept())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), self.lifetime)
        accepting.cancel()
        listener.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(accepting, *tasks, return_exceptions=True)

    async def _relay(self, connection: socket.socket) -> None:
        """Hold the accepted socket untouched (its bytes, a TLS ClientHello too, wait in the kernel), then
        serve it: the TLS handshake if any, the upstream connect, the two delayed directions."""
        with self._count.get_lock():
            self._count.value += 1
        hold = self._random.uniform(*self.connect)
        loop = asyncio.get_running_loop()
        writer: asyncio.StreamWriter | None = None
        upstream: asyncio.StreamWriter | None = None
        try:
            await asyncio.sleep(hold)
            reader = asyncio.StreamReader(limit=1 << 20)
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, connection, ssl=self._context)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            up_reader, upstream = await asyncio.open_connection(*self._upstream)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # a client or server that went away: this connection ends, as on a real network
        finally:
            if writer is None:
                connection.close()
            for end in (writer, upstream):
                if end is not None:
                    end.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Deliver every chunk `one_way` seconds after it was read, in order; EOF closes the other side."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=256)
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    with contextlib.suppress(OSError, NotImplementedError, RuntimeError):  # TLS: no half-close
                        sink.write_eof()
                    return
                sink.write(data)
                await sink.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while data := await source.read(65536):
                await queue.put((loop.time() + self.one_way, data))
            await queue.put((loop.time() + self.one_way, b""))
            await delivering
        finally:
            delivering.cancel()


def _child(proxy: DelayProxy) -> None:
    """The proxy's process: serve until `lifetime` is over or the parent terminates it."""
    proxy._run()
