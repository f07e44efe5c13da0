"""The hand-written httpx baseline: the same job as syncrun's bench source, written directly and well.

    DATABASE_URL=... BENCH_API_URL=http://127.0.0.1:PORT/l0 \
        python -m bench.baseline --limit 2000 --concurrency 16

Selects due entities from sync_status (never synced first), opens one sync_jobs row, fetches
`/apps/{appid}` with `concurrency` workers spread over ceil(concurrency / 8) httpx.AsyncClients of 8
connections each (one httpx pool above ~32 connections collapses: its bookkeeping grows with the
square of the pool), maps each body to a row in Python, and writes a transaction per `--batch`
entities (executemany upsert of the rows + one UPDATE stamping sync_status), overlapped with the
fetching on an async psycopg connection; finally completes the job row with its counters.
The stronger aiohttp baseline is bench/aiohttp_baseline.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import httpx
import psycopg

from bench.job import SELECT, SOURCE, STAMP, UPSERT, map_row

__all__ = ["SELECT", "SOURCE", "STAMP", "UPSERT", "map_row", "run"]

_DONE = None


SHARD = 8  # connections per httpx client


def clients(concurrency: int) -> list[httpx.AsyncClient]:
    """ceil(concurrency / SHARD) clients whose pools together hold `concurrency` connections."""
    count = -(-concurrency // SHARD)
    sizes = [concurrency // count + (1 if i < concurrency % count else 0) for i in range(count)]
    return [
        httpx.AsyncClient(limits=httpx.Limits(max_connections=n, max_keepalive_connections=n), timeout=10.0)
        for n in sizes
    ]


async def run(dsn: str, url: str, limit: int, concurrency: int, batch: int) -> dict[str, int]:
    counts = {"processed": 0, "succeeded": 0, "failed": 0, "skipped": 0}
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        keys = [row[0] for row in await (await conn.execute(SELECT, (limit,))).fetchall()]
        cursor = await conn.execute(
            "insert into sync_jobs (job_type, batch_size, heartbeat_at) values (%s, %s, now()) returning id",
            (SOURCE, limit),
        )
        job_id = (await cursor.fetchone())[0]
        todo = iter(keys)  # shared by the workers: each takes the next key
        done: asyncio.Queue[tuple[int, tuple | None, bool] | None] = asyncio.Queue(maxsize=batch * 2)

        async def fetcher(http: httpx.AsyncClient) -> None:
            for appid in todo:
                try:
                    response = await http.get(f"{url}/apps/{appid}")
                    ok = response.status_code == 200
                    row = map_row(appid, json.loads(response.content)) if ok else None
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    ok, row = False, None
                await done.put((appid, row, ok))

        async def writer() -> None:
            pending: list[tuple[int, tuple | None, bool]] = []
            finished = False
            while not finished:
                item = await done.get()
                finished = item is _DONE
                if item is not _DONE:
                    pending.append(item)
                if pending and (finished or len(pending) >= batch):
                    await flush(pending)
                    pending = []

        async def flush(pending: list[tuple[int, tuple | None, bool]]) -> None:
            rows = [row for _, row, ok in pending if ok and row is not None]
            stamped = [appid for appid, _, ok in pending if ok]
            async with conn.transaction(), conn.cursor() as cur:
                if rows:
                    await cur.executemany(UPSERT, rows)
                await cur.execute(STAMP, (stamped,))
            counts["processed"] += len(pending)
            counts["succeeded"] += len(rows)
            counts["skipped"] += len(stamped) - len(rows)
            counts["failed"] += len(pending) - len(stamped)

        pools = clients(concurrency)
        try:
            write_task = asyncio.create_task(writer())
            await asyncio.gather(*(fetcher(pools[i % len(pools)]) for i in range(concurrency)))
            await done.put(_DONE)
            await write_task
        finally:
            for pool in pools:
                await pool.aclose()
        await conn.execute(
            """update sync_jobs set status = 'completed', completed_at = now(), heartbeat_at = now(),
                      items_processed = %s, items_succeeded = %s, items_failed = %s, items_skipped = %s,
                      requests_made = %s
                where id = %s""",
            (counts["processed"], counts["succeeded"], counts["failed"], counts["skipped"], len(keys), job_id),
        )
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description="hand-written baseline for the syncrun benchmark")
    parser.add_argument("--limit", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=500, help="entities per write transaction")
    args = parser.parse_args()
    dsn = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    started = time.perf_counter()
    counts = asyncio.run(run(dsn, os.environ["BENCH_API_URL"], args.limit, args.concurrency, args.batch))
    elapsed = time.perf_counter() - started
    print(json.dumps({**counts, "elapsed": round(elapsed, 3)}))
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
