"""Utilisation and the worst window through tests/netproxy.py's delaying TLS proxy, per limiter kind:
3 per 1.5 s, burst 3, 3 tasks, 24 requests, every one on a new connection (the network tests' shape,
longer). Needs DATABASE_URL; the redis kind needs a Redis at 127.0.0.1:6379.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python -m tests.bench_network_limit
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from statistics import mean

import psycopg

from runner import migrations
from runner.ratelimit import DatabaseLimiter, Limiter, RedisLimiter
from tests import test_ratelimit_network as net
from tests.apiserver import ApiServer, Reply, worst_window
from tests.netproxy import DelayProxy, certificate


def main() -> None:
    cert = certificate(Path(tempfile.mkdtemp(prefix="syncrun-tls-")))
    os.environ["SSL_CERT_FILE"] = str(cert[0])
    admin = os.environ["DATABASE_URL"]
    dsn = admin + ("&" if "?" in admin else "?") + "options=-c%20search_path%3Dbench_network_limit"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("drop schema if exists bench_network_limit cascade; create schema bench_network_limit")
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrations.migrate(conn, [])
    try:
        for kind in ("process", "database", "redis"):
            for one_way in (0.02, 0.1):
                measure(kind, one_way, cert, dsn)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("drop schema bench_network_limit cascade")


def measure(kind: str, one_way: float, cert: tuple[Path, Path], dsn: str) -> None:
    api = ApiServer().start()
    api.route("/x", Reply(200, json={}, headers={"Connection": "close"}))
    rate = net.shaped(kind, f"bench-{time.time_ns()}", requests=3, per=1.5, burst=3)
    limiter = {"process": Limiter, "database": lambda r: DatabaseLimiter(r, dsn), "redis": RedisLimiter}[kind](rate)
    try:
        with DelayProxy(api.url, one_way=one_way, tls=cert) as proxy:
            writes: list[float] = []
            started = net.run(proxy, limiter, count=24, concurrency=3, writes=writes)
        arrivals = sorted(api.arrivals("/x"))
    finally:
        api.stop()
    print(
        f"{kind:8} {one_way * 1000:3.0f} ms each way: worst window {worst_window(arrivals, 1.5)}/3"
        f" (writes {worst_window(writes, 1.5)}/3),"
        f" first 3 by {arrivals[2] - started:.2f} s, utilisation {1.5 / mean(net.cycles(arrivals, 3)) * 100:.1f} %,"
        f" discarded {getattr(limiter, 'discarded', 0)}, re-stamped {getattr(limiter, 'restamped', 0)}",
        flush=True,
    )


if __name__ == "__main__":
    main()
