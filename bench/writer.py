"""Microbenchmark of the write path alone: `writer.write` against the baseline's hand-written flush.

    python -m bench.writer [--entities 2000] [--batch 500] [--pages 10] [--page-rows 1000] [--repeat 3]

No HTTP, no mapping: the bench source's rows are made up in advance and written in batches of
`--batch` entities, on a fresh scratch schema (as `python -m bench` makes them), first into empty
tables (inserts) and then again over the same keys (updates). The baseline writes the same rows with
its own flush (`executemany` upsert + one `UPDATE ... WHERE appid = ANY(...)` stamp, no per-source
state). `--pages` bulk entities of `--page-rows` rows each are written 5 per batch (the bulk scenario)
against COPY into a temp table + one upsert. Prints microseconds per entity (per row for bulk): wall
time, and the median CPU time of this process (the writer runs in a thread beside the event loop).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import psycopg

from bench import harness
from bench.baseline import STAMP, UPSERT
from bench.harness import Workdir, scratch
from runner import config, migrations, targets, writer
from runner.database import connect
from runner.results import EntityResult
from runner.spec import Outcome, Source


def _source(text: str) -> Source:
    workdir = Workdir()
    try:
        return config.load(workdir.source(text))
    finally:
        workdir.close()


def _apps(n: int) -> list[EntityResult]:
    results = []
    for i in range(1, n + 1):
        row = {
            "appid": i,
            "name": f"app {i}",
            "type": "game",
            "is_free": i % 3 == 0,
            "price_cents": i * 10,
            "release_date_raw": "1 Jan, 2020",
        }
        results.append(
            EntityResult(key=i, entity={"appid": i}, outcome=Outcome.SUCCESS, rows={0: [row]}, error_source="bench")
        )
    return results


def _bulk(pages: int, per_page: int) -> list[EntityResult]:
    results = []
    for page in range(1, pages + 1):
        rows = [
            {"id": page * per_page + j, "page": page, "name": f"item {j}", "price_cents": j, "score": j % 100}
            for j in range(per_page)
        ]
        results.append(
            EntityResult(
                key=page, entity={"appid": page}, outcome=Outcome.SUCCESS, rows={0: rows}, error_source="bench"
            )
        )
    return results


def _timed(batches: list[list[EntityResult]], write: Callable[[list[EntityResult]], None]) -> tuple[float, float]:
    """(wall, CPU) seconds; CPU is this process's, i.e. what holds the GIL away from the event loop."""
    started, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        write(batch)
    return time.perf_counter() - started, time.process_time() - cpu


def _chunks(results: list[EntityResult], size: int) -> list[list[EntityResult]]:
    return [results[i : i + size] for i in range(0, len(results), size)]


def _reset(conn: psycopg.Connection, *tables: str) -> None:
    with conn.transaction():
        conn.execute(f"truncate {', '.join(tables)}")
        conn.execute("update sync_status set last_bench_sync = null")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.writer", description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--pages", type=int, default=10, help="bulk entities (0: skip the bulk part)")
    parser.add_argument("--page-rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--copy-from", type=int, help="override runner.targets.COPY_FROM (rows per COPY)")
    parser.add_argument("--dsn", default=harness.DEFAULT_DSN)
    args = parser.parse_args()
    if args.copy_from is not None:
        targets.COPY_FROM = args.copy_from

    with scratch(args.dsn, "writer", args.entities) as dsn, connect(dsn) as conn:
        apps = _source(harness.apps_source(concurrency=16, write_batch=args.batch))
        bulk = _source(harness.BULK_SOURCE.format(concurrency=4, write_batch=5))
        migrations.migrate(conn, [apps, bulk])
        catalog = migrations.check(conn, [apps, bulk])
        conn.commit()
        batches = _chunks(_apps(args.entities), args.batch)
        holder = None  # no claims were taken here: a holder would fence every entity out as "claim lost"

        def syncrun(source: Source) -> Callable[[list[EntityResult]], None]:
            def run(batch: list[EntityResult]) -> None:
                failed = writer.write(conn, source, batch, catalog=catalog, holder=holder)
                assert not failed, failed[0].error

            return run

        def baseline(batch: list[EntityResult]) -> None:
            rows = [tuple(r.rows[0][0].values()) for r in batch]
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(UPSERT, rows)
                cursor.execute(STAMP, ([r.key for r in batch],))

        def bulk_reference(batch: list[EntityResult]) -> None:
            columns = ("id", "page", "name", "price_cents", "score")
            with conn.transaction(), conn.cursor() as cursor:
                cursor.execute("create temp table _ref (like bench_items) on commit drop")
                with cursor.copy(f"copy _ref ({', '.join(columns)}) from stdin") as copy:
                    for result in batch:
                        for row in result.rows[0]:
                            copy.write_row(tuple(row.values()))
                cursor.execute(
                    "insert into bench_items select * from _ref on conflict (id) do update set page = excluded.page,"
                    " name = excluded.name, price_cents = excluded.price_cents, score = excluded.score"
                )

        measures: dict[str, list[tuple[float, float]]] = {}
        pages = _chunks(_bulk(args.pages, args.page_rows), 5)
        rows = args.pages * args.page_rows
        cases: list[tuple[str, Callable[[list[EntityResult]], None], list[list[EntityResult]], int, str]] = [
            ("syncrun", syncrun(apps), batches, args.entities, "bench_apps"),
            ("baseline", baseline, batches, args.entities, "bench_apps"),
        ]
        if args.pages:
            cases += [
                ("syncrun bulk", syncrun(bulk), pages, rows, "bench_items"),
                ("reference bulk", bulk_reference, pages, rows, "bench_items"),
            ]
        for _ in range(args.repeat):
            for name, write, work, count, table in cases:
                _reset(conn, table, "syncrun_state")
                for phase in ("insert", "update"):
                    wall, cpu = _timed(work, write)
                    measures.setdefault(f"{name} {phase}", []).append((wall / count, cpu / count))

    print(f"{args.entities} entities in batches of {args.batch}; bulk {args.pages} x {args.page_rows} rows, 5 a batch")
    print(f"{'':24} {'best µs':>9} {'median µs':>10} {'CPU µs':>8}  (per entity; bulk: per row)")
    for name, values in measures.items():
        ordered = sorted(values)
        cpu = sorted(c for _, c in values)[len(values) // 2]
        print(f"{name:24} {ordered[0][0] * 1e6:9.1f} {ordered[len(ordered) // 2][0] * 1e6:10.1f} {cpu * 1e6:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
