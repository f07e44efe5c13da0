"""Benchmark of the two `shared: database` designs (numbers in docs/rate-limits.md). Not a test.

    DSN=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python -m tests.bench_shared_limit

For each backend -- `ours` (runner.ratelimit.DatabaseLimiter, migration 0002) and `pyrate`
(pyrate-limiter 4.x `PostgresBucket` on its own 2-connection pool, `buffer_ms=10`) -- and each
database latency -- loopback, and +10 ms each way through a small asyncio TCP proxy started here:

- cost: 1 and 3 OS processes x 8 tasks acquire as fast as a non-binding limit (5000 per s) lets them
  for 3 s: acquires per second, all processes together;
- correctness and fairness: 3 processes x 8 tasks on 10 per 0.5 s for 4 s: the worst 0.5 s window of
  grant times (wall clock, one machine), the achieved rate and each process's share.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runner import migrations, spec
from runner.ratelimit import DatabaseLimiter
from tests.apiserver import worst_window

ROOT = Path(__file__).resolve().parent.parent


# --- one process --------------------------------------------------------------------------------------
def _ours(dsn: str, requests: int, per: float) -> tuple[Callable[[], Any], Callable[[], None]]:
    rate = spec.RateLimit(requests=requests, per=per, bucket="bench", shared=spec.LimitScope.DATABASE)
    limiter = DatabaseLimiter(rate, dsn)
    return limiter.acquire, limiter.close


def _pyrate(dsn: str, requests: int, per: float) -> tuple[Callable[[], Any], Callable[[], None]]:
    from psycopg_pool import ConnectionPool
    from pyrate_limiter import Limiter, PostgresBucket, Rate

    pool = ConnectionPool(dsn, min_size=2, max_size=2, open=True)
    limiter = Limiter(PostgresBucket(pool, "bench", [Rate(requests, int(per * 1000))]), buffer_ms=10)

    async def acquire() -> None:
        assert await limiter.try_acquire_async("bench")

    return acquire, limiter.close


async def child(backend: str, dsn: str, requests: int, per: float, tasks: int, start: float, stop: float) -> None:
    acquire, close = (_ours if backend == "ours" else _pyrate)(dsn, requests, per)
    await acquire()  # connect and warm up before the start line
    await asyncio.sleep(max(0.0, start - time.time()))
    granted: list[float] = []

    async def task() -> None:
        while time.time() < stop:
            await acquire()
            granted.append(time.time())

    await asyncio.gather(*(task() for _ in range(tasks)))
    close()
    print(json.dumps(granted))


# --- the latency proxy ----------------------------------------------------------------------------------
class DelayProxy:
    """127.0.0.1:<port> -> `target`, every chunk delivered `delay` seconds late, in order, each way."""

    def __init__(self, host: str, port: int, delay: float) -> None:
        self.target, self.delay, self.port = (host, port), delay, 0
        self._ready = threading.Event()
        threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True).start()
        self._ready.wait()

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await server.serve_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        delivery = asyncio.create_task(deliver())
        while True:
            data = await reader.read(65536)
            queue.put_nowait((time.monotonic() + self.delay, data))
            if not data:
                break
        await delivery


# --- the driver ------------------------------------------------------------------------------------------
def run(backend: str, dsn: str, processes: int, requests: int, per: float, seconds: float) -> list[list[float]]:
    start = time.time() + 2.5
    args = [backend, dsn, requests, per, 8, start, start + seconds]
    command = [sys.executable, "-m", "tests.bench_shared_limit", "child", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)
    ]
    return [json.loads(child.communicate(timeout=120)[0]) for child in children]


def main() -> None:
    base = os.environ.get("DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    schema = "bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
    loopback = make_conninfo(base, options=f"-c search_path={schema}")
    with psycopg.connect(loopback) as conn:
        migrations.migrate(conn, [])
    params = conninfo_to_dict(base)
    proxy = DelayProxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432)), 0.010)
    remote = make_conninfo(loopback, host="127.0.0.1", port=proxy.port)
    try:
        for latency, dsn in (("loopback", loopback), ("+10 ms each way", remote)):
            for backend in ("ours", "pyrate"):
                for processes in (1, 3):
                    grants = run(backend, dsn, processes, 5000, 1.0, 3.0)
                    total = sum(len(g) for g in grants)
                    print(f"{latency:16} {backend:6} cost  {processes} proc: {total / 3.0:7.1f} acquires/s", flush=True)
                grants = run(backend, dsn, 3, 10, 0.5, 4.0)
                every = sorted(t for g in grants for t in g)
                rate = (len(every) - 1) / (every[-1] - every[0])
                shares = [len(g) for g in grants]
                print(
                    f"{latency:16} {backend:6} 10/0.5s 3 proc: worst window {worst_window(every, 0.5)},"
                    f" {rate:5.2f}/s of 20/s, shares {shares}",
                    flush=True,
                )
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(schema)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        b, d, r, p, n, s0, s1 = sys.argv[2:9]
        asyncio.run(child(b, d, int(r), float(p), int(n), float(s0), float(s1)))
    else:
        main()
