"""The hand-written baseline syncrun is measured against: the same job, written directly and well.

    DATABASE_URL=... BENCH_API_URL=http://127.0.0.1:PORT/l0 \
        python -m bench.baseline --limit 2000 --concurrency 16 --transport httpx

Selects due entities from sync_status (never synced first), opens one sync_jobs row, fetches
`/apps/{appid}` with `concurrency` workers over one httpx.AsyncClient (httpx's own transport or
httpx-aiohttp's), maps each body to a row in Python, and writes a transaction per `--batch`
entities (executemany upsert of the rows + one UPDATE stamping sync_status), overlapped with the
fetching on an async psycopg connection; finally completes the job row with its counters.
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

SOURCE = "bench"
SELECT = """
select appid from sync_status
 where coalesce(is_syncable, true)
   and (last_bench_sync is null
        or last_bench_sync < now() - make_interval(hours => coalesce(sync_interval_hours, 24)))
 order by last_bench_sync is not null, coalesce(priority_score, 0) desc, last_bench_sync, appid
 limit %s"""
UPSERT = """
insert into bench_apps (appid, name, type, is_free, price_cents, release_date_raw)
values (%s, %s, %s, %s, %s, %s)
on conflict (appid) do update set name = excluded.name, type = excluded.type, is_free = excluded.is_free,
    price_cents = excluded.price_cents, release_date_raw = excluded.release_date_raw"""
STAMP = "update sync_status set last_bench_sync = now() where appid = any(%s)"
TYPES = {"game", "dlc", "demo", "music"}
_DONE = None


def client(transport: str, concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        inner: httpx.AsyncBaseTransport = AiohttpTransport(limits=limits)
    else:
        inner = httpx.AsyncHTTPTransport(limits=limits)
    return httpx.AsyncClient(transport=inner, timeout=10.0)


def map_row(appid: int, body: dict) -> tuple | None:
    """The same mapping as the bench source's `writes` (None: the API said there is no such app)."""
    if body.get("success") is False:
        return None
    record = body["data"]
    kind = (record.get("type") or "").lower()
    cents = (record.get("price") or {}).get("cents")
    return (
        appid,
        (record.get("name") or "").strip(),
        kind if kind in TYPES else "game",
        record.get("is_free"),
        int(cents) if cents is not None else None,
        record.get("release_date"),
    )


async def run(dsn: str, url: str, limit: int, concurrency: int, transport: str, batch: int) -> dict[str, int]:
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

        async with client(transport, concurrency) as http:
            write_task = asyncio.create_task(writer())
            await asyncio.gather(*(fetcher(http) for _ in range(concurrency)))
            await done.put(_DONE)
            await write_task
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
    parser.add_argument("--transport", choices=("httpx", "aiohttp"), default="httpx")
    parser.add_argument("--batch", type=int, default=500, help="entities per write transaction")
    args = parser.parse_args()
    dsn = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    started = time.perf_counter()
    counts = asyncio.run(
        run(dsn, os.environ["BENCH_API_URL"], args.limit, args.concurrency, args.transport, args.batch)
    )
    elapsed = time.perf_counter() - started
    print(json.dumps({**counts, "elapsed": round(elapsed, 3)}))
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
