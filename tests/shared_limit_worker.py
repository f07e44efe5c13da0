"""One OS process sharing a `shared: database` or `shared: redis` rate-limit bucket (run by
tests/test_ratelimit_shared.py and tests/test_ratelimit_redis.py).

    python -m tests.shared_limit_worker DSN URL BUCKET REQUESTS PER BURST CONCURRENCY START_AT STOP_AT

From wall-clock START_AT until STOP_AT, CONCURRENCY tasks send GET URL?w=PID through `client.send`
(so a 429 with Retry-After pauses the bucket, as in a real run) under a `DatabaseLimiter`, or a
`RedisLimiter` when DSN is a redis:// URL. Prints the number of grants, of grants left unused and of
grants re-stamped, then on a second line, as JSON, when each request's attempts were written
(request number `n` -> monotonic times). One warm-up request to
URL's sibling /warm-up precedes the start. Wall-clock times let processes started at different moments begin together.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from runner import client, spec
from runner.ratelimit import DatabaseLimiter, RedisLimiter


async def main(argv: list[str]) -> int:
    dsn, url, bucket = argv[:3]
    requests, per, burst, concurrency = int(argv[3]), float(argv[4]), int(argv[5]), int(argv[6])
    start_at, stop_at = float(argv[7]), float(argv[8])
    worker_id = str(os.getpid())
    redis = dsn.startswith("redis://")
    scope = spec.LimitScope.REDIS if redis else spec.LimitScope.DATABASE
    rate = spec.RateLimit(requests=requests, per=per, burst=burst, bucket=bucket, shared=scope)
    limiter = RedisLimiter(rate, dsn) if redis else DatabaseLimiter(rate, dsn)
    request_spec = spec.Request(url=spec.Template(url, (spec.Literal(url),)), timeout=5.0)
    policy = spec.Retry(attempts=3, initial=0.01, jitter=0.0)
    written: dict[str, list[float]] = {}  # request number -> when each attempt's bytes left (monotonic)
    numbers = itertools.count()
    await limiter.connect()  # before the start line: connecting takes a few ms
    try:
        # built before the start line too: building a client takes ~0.3 s (TLS context), and a request
        # sent that late after its grant would bunch with the next ones (as it would in-process)
        async with client.build(request_spec, limiter, max_connections=concurrency) as http:
            # and warmed up: the first request through a new process pays lazy imports and set-up
            warm = http.build_request("GET", url.rsplit("/", 1)[0] + "/warm-up")
            await client.send(http, warm, policy, max_body=10_000, timeout=5.0, limiter=limiter, redact=str)
            await asyncio.sleep(max(0.0, start_at - time.time()))

            async def worker() -> None:
                while time.time() < stop_at:
                    number = f"{worker_id}-{next(numbers)}"
                    trace = {"trace": tracer(written.setdefault(number, []))}
                    request = http.build_request("GET", url, params={"w": worker_id, "n": number}, extensions=trace)
                    await client.send(http, request, policy, max_body=10_000, timeout=5.0, limiter=limiter, redact=str)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        if isinstance(limiter, RedisLimiter):
            await limiter.aclose()
        else:
            limiter.close()
    print(limiter.requests, limiter.discarded, limiter.restamped)
    print(json.dumps(written))
    return 0


def tracer(writes: list[float]) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
    """httpcore's trace: the moment each attempt's bytes leave (after the limiter stamped its grant)."""

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event.endswith("send_request_headers.started"):
            writes.append(time.monotonic())

    return trace


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
