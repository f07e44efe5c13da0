"""Benchmark of `shared: redis` (RedisLimiter; numbers in docs/rate-limits.md). Not a test.

    SYNCRUN_REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python -m tests.bench_redis_limit

Like tests/bench_shared_limit.py, at loopback and +10 ms each way (its asyncio TCP proxy):

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
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from runner import spec
from runner.ratelimit import REDIS_PREFIX, RedisLimiter, redis_url_from_env
from tests.apiserver import worst_window
from tests.bench_shared_limit import DelayProxy

ROOT = Path(__file__).resolve().parent.parent


async def child(url: str, bucket: str, requests: int, per: float, tasks: int, start: float, stop: float) -> None:
    rate = spec.RateLimit(requests=requests, per=per, bucket=bucket, shared=spec.LimitScope.REDIS)
    limiter = RedisLimiter(rate, url)
    await limiter.acquire()  # connect and warm up before the start line
    await asyncio.sleep(max(0.0, start - time.time()))
    granted: list[float] = []

    async def task() -> None:
        while time.time() < stop:
            await limiter.acquire()
            granted.append(time.time())

    await asyncio.gather(*(task() for _ in range(tasks)))
    await limiter.aclose()
    print(json.dumps(granted))


def run(url: str, processes: int, requests: int, per: float, seconds: float) -> list[list[float]]:
    start = time.time() + 2.5
    bucket = "bench-" + uuid.uuid4().hex[:8]
    args = [url, bucket, requests, per, 8, start, start + seconds]
    command = [sys.executable, "-m", "tests.bench_redis_limit", "child", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)
    ]
    try:
        return [json.loads(child.communicate(timeout=120)[0]) for child in children]
    finally:
        import redis

        client = redis.Redis.from_url(url)
        client.delete(REDIS_PREFIX + bucket, REDIS_PREFIX + bucket + ":state")
        client.close()


def main() -> None:
    url = redis_url_from_env(os.environ)
    parts = urlsplit(url)
    proxy = DelayProxy(parts.hostname or "127.0.0.1", parts.port or 6379, 0.010)
    auth = parts.netloc.rpartition("@")[0]
    remote = urlunsplit(parts._replace(netloc=f"{auth}@" * bool(auth) + f"127.0.0.1:{proxy.port}"))
    for latency, target in (("loopback", url), ("+10 ms each way", remote)):
        for processes in (1, 3):
            grants = run(target, processes, 5000, 1.0, 3.0)
            total = sum(len(g) for g in grants)
            print(f"{latency:16} cost  {processes} proc: {total / 3.0:7.1f} acquires/s", flush=True)
        grants = run(target, 3, 10, 0.5, 4.0)
        every = sorted(t for g in grants for t in g)
        rate = (len(every) - 1) / (every[-1] - every[0])
        print(
            f"{latency:16} 10/0.5s 3 proc: worst window {worst_window(every, 0.5)},"
            f" {rate:5.2f}/s of 20/s, shares {[len(g) for g in grants]}",
            flush=True,
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        u, b, r, p, n, s0, s1 = sys.argv[2:9]
        asyncio.run(child(u, b, int(r), float(p), int(n), float(s0), float(s1)))
    else:
        main()
