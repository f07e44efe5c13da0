"""The strongest hand-written client this machine allows: one aiohttp session, COPY-batched writes.

    DATABASE_URL=... BENCH_API_URL=http://127.0.0.1:PORT/l0 \
        python -m bench.aiohttp_baseline --limit 2000 --concurrency 16

The same job as syncrun's bench source and bench/baseline.py: select the due entities, open one
sync_jobs row, fetch `/apps/{appid}` with `concurrency` workers over one aiohttp session whose
connector holds exactly `concurrency` connections (kept alive), map each body in plain Python, and
write a transaction per `--batch` entities: COPY the rows into a temp table, one
`INSERT ... SELECT ... ON CONFLICT DO UPDATE`, one `UPDATE ... WHERE appid = ANY(...)` status stamp.
The writer runs on its own async connection while the workers keep fetching; finally the job row is
completed with its counters. Prints the counters and the elapsed time as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import aiohttp
import psycopg

from bench.job import SELECT, SOURCE, STAMP, map_row

STAGE = (
    "create temp table if not exists stage (appid int, name text, type text, is_free boolean,"
    " price_cents int, release_date_raw text)"
)
COPY = "copy stage (appid, name, type, is_free, price_cents, release_date_raw) from stdin"
UPSERT = """
insert into bench_apps (appid, name, type, is_free, price_cents, release_date_raw)
select appid, name, type, is_free, price_cents, release_date_raw from stage
on conflict (appid) do update set name = excluded.name, type = excluded.type, is_free = excluded.is_free,
    price_cents = excluded.price_cents, release_date_raw = excluded.release_date_raw"""
FINISH = """
update sync_jobs set status = 'completed', completed_at = now(), heartbeat_at = now(),
       items_processed = %s, items_succeeded = %s, items_failed = %s, items_skipped = %s, requests_made = %s
 where id = %s"""
Result = tuple[int, tuple | None, bool]  # appid, its row (None: nothing to write), answered ok


async def run(dsn: str, url: str, limit: int, concurrency: int, batch: int) -> dict[str, int]:
    counts = {"processed": 0, "succeeded": 0, "failed": 0, "skipped": 0}
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        await psycopg.AsyncConnection.connect(dsn) as wconn,
    ):
        keys = [row[0] for row in await (await conn.execute(SELECT, (limit,))).fetchall()]
        cursor = await conn.execute(
            "insert into sync_jobs (job_type, batch_size, heartbeat_at) values (%s, %s, now()) returning id",
            (SOURCE, limit),
        )
        job_id = (await cursor.fetchone())[0]
        await wconn.execute(STAGE)
        todo = iter(keys)  # shared by the workers: each takes the next key
        done: asyncio.Queue[Result | None] = asyncio.Queue(maxsize=batch * 2)

        async def fetcher(http: aiohttp.ClientSession) -> None:
            for appid in todo:
                try:
                    async with http.get(f"{url}/apps/{appid}") as response:
                        body = await response.read()
                        ok = response.status == 200
                    row = map_row(appid, json.loads(body)) if ok else None
                except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError):
                    ok, row = False, None
                await done.put((appid, row, ok))

        async def writer() -> None:
            pending: list[Result] = []
            while (item := await done.get()) is not None or pending:
                if item is not None:
                    pending.append(item)
                if pending and (item is None or len(pending) >= batch):
                    await flush(pending)
                    pending = []
                if item is None:
                    break

        async def flush(pending: list[Result]) -> None:
            rows = {row[0]: row for _, row, ok in pending if ok and row is not None}  # one row per key
            stamped = [appid for appid, _, ok in pending if ok]
            async with wconn.transaction(), wconn.cursor() as cur:
                if rows:
                    await cur.execute("truncate stage")
                    async with cur.copy(COPY) as copy:
                        for row in rows.values():
                            await copy.write_row(row)
                    await cur.execute(UPSERT)
                await cur.execute(STAMP, (stamped,))
            counts["processed"] += len(pending)
            counts["succeeded"] += len(rows)
            counts["skipped"] += len(stamped) - len(rows)
            counts["failed"] += len(pending) - len(stamped)

        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, keepalive_timeout=30)
        timeout = aiohttp.ClientTimeout(total=10.0)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            write_task = asyncio.create_task(writer())
            await asyncio.gather(*(fetcher(http) for _ in range(concurrency)))
            await done.put(None)
            await write_task
        values = (counts["processed"], counts["succeeded"], counts["failed"], counts["skipped"], len(keys), job_id)
        await conn.execute(FINISH, values)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description="hand-written aiohttp baseline for the syncrun benchmark")
    parser.add_argument("--limit", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=500, help="entities per write transaction")
    args = parser.parse_args()
    dsn = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    started = time.perf_counter()
    counts = asyncio.run(run(dsn, os.environ["BENCH_API_URL"], args.limit, args.concurrency, args.batch))
    print(json.dumps({**counts, "elapsed": round(time.perf_counter() - started, 3)}))
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
