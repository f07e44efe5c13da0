"""`python -m bench [--quick]`: syncrun against a hand-written baseline, printed as one table.

Scenarios (issue #4): 1 unthrottled, 2 50 ms latency, 3 rate-limited, 4 three runners sharing one
limit, 5 bulk pages vs raw COPY + upsert, 6 peak RSS at few vs many entities, T the HTTP transports.
Each run gets a fresh scratch schema (dropped afterwards) and the API server is reset before it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg

from bench import harness
from bench.harness import Proc, Server, Workdir, scratch


@dataclass
class Sizes:
    unthrottled: tuple[int, ...]
    latency: int
    limited: int
    shared: int
    pages: int
    rss: tuple[int, int]


FULL = Sizes(unthrottled=(2000, 10000), latency=2000, limited=500, shared=600, pages=50, rss=(1000, 100000))
QUICK = Sizes(unthrottled=(1000,), latency=300, limited=100, shared=150, pages=10, rss=(500, 5000))
CONCURRENCY = 16  # the bench source's concurrency, and the baseline's: httpx's pool degrades from 32 up
LIMIT, LIMIT_LATENCY_MS, BURST = 50, 200, 5  # scenarios 3 and 4: 50 requests per 1 s window


@dataclass
class Row:
    scenario: str
    syncrun: str
    reference: str
    result: str
    target: str
    met: str  # "yes" | "NO" | "n/a" | "error"
    detail: dict[str, object]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.dsn = args.dsn
        self.sizes = QUICK if args.quick else FULL
        self.transport = args.baseline_transport
        self.server = Server()
        self.work = Workdir()
        self.rows: list[Row] = []
        self.jobs: list[dict[str, object]] = []
        self.written = self.shared_grants = 0

    def close(self) -> None:
        self.server.close()
        self.work.close()

    # --- helpers --------------------------------------------------------------------------------------
    def run_syncrun(
        self,
        name: str,
        source_text: str,
        entities: int,
        limit: int,
        latency_ms: int,
        *,
        processes: int = 1,
        transport: str = "httpx",
    ) -> tuple[list[Proc], dict[str, object] | None]:
        """Scratch schema + source + migrate + `syncrun run` (× processes, concurrently). Returns the
        finished processes and the newest job row; `self.jobs` holds every job row (newest first),
        `self.written` the rows in the bench tables, `self.shared_grants` the grants `shared: database`
        handed out through syncrun_rate_limits."""
        source = self.work.source(source_text)
        with scratch(self.dsn, name, entities) as dsn:
            api = self.server.url(latency_ms)
            migrate = harness.syncrun(["migrate", str(source)], dsn=dsn, api=api, cwd=self.work.path).wait()
            if migrate.returncode != 0:
                raise Failure(f"syncrun migrate exited {migrate.returncode}: {migrate.tail()}")
            self.server.reset()
            args = ["run", str(source), "--limit", str(limit), "--progress-every", "1000000"]
            started = [
                harness.syncrun(args, dsn=dsn, api=api, cwd=self.work.path, transport=transport)
                for _ in range(processes)
            ]
            procs = [s.wait() for s in started]
            self.jobs = harness.job_rows(dsn)
            job = self.jobs[0] if self.jobs else None
            self.written = harness.query(
                dsn, "select (select count(*) from bench_apps) + (select count(*) from bench_items)"
            )[0][0]
            self.shared_grants = harness.shared_grants(dsn)
        return procs, job

    def run_baseline(self, name: str, n: int, latency_ms: int, concurrency: int, transport: str) -> Proc:
        with scratch(self.dsn, name, n) as dsn:
            proc = harness.baseline(n, concurrency, transport, dsn=dsn, api=self.server.url(latency_ms)).wait()
            written = harness.query(dsn, "select count(*) from bench_apps")[0][0]
        if proc.returncode != 0 or written != n:
            raise Failure(f"baseline ({transport}) exited {proc.returncode}, wrote {written}/{n}: {proc.tail()}")
        return proc

    def check_syncrun(self, procs: list[Proc], job: dict[str, object] | None, expect: int) -> None:
        for proc in procs:
            if proc.returncode != 0:
                raise Failure(f"syncrun exited {proc.returncode}: {proc.tail()}")
        if job is None or job["status"] != "completed":
            raise Failure(f"syncrun job row: {job}")
        if self.written != expect:
            raise Failure(f"syncrun wrote {self.written} rows, expected {expect}")

    # --- scenarios ------------------------------------------------------------------------------------
    def compare(self, number: str, n: int, latency_ms: int, target: float) -> None:
        """syncrun vs the baseline on the same job at equal concurrency."""
        label = f"{number}. {n:,} entities, {latency_ms} ms latency, concurrency {CONCURRENCY}"
        procs, job = self.run_syncrun(f"s{number}", harness.apps_source(concurrency=CONCURRENCY), n, n, latency_ms)
        self.check_syncrun(procs, job, n)
        base = self.run_baseline(f"b{number}", n, latency_ms, CONCURRENCY, self.transport)
        ours, theirs = n / procs[0].elapsed, n / base.elapsed
        ratio = ours / theirs
        self.add(
            label,
            f"{ours:,.0f} entities/s ({procs[0].elapsed:.1f} s)",
            f"{theirs:,.0f} entities/s ({base.elapsed:.1f} s, {self.transport})",
            f"{ratio:.2f}×",
            f"≥ {target:.1f}×",
            ratio >= target,
            {"syncrun_s": procs[0].elapsed, "baseline_s": base.elapsed, "job": job, "ratio": ratio},
        )

    def limited(self, burst: int) -> None:
        n = self.sizes.limited
        label = f"3. rate limit {LIMIT}/s (burst {burst}), {LIMIT_LATENCY_MS} ms latency, {n} entities"
        text = harness.apps_source(concurrency=CONCURRENCY, requests=LIMIT, burst=burst)
        procs, job = self.run_syncrun(f"s3_{burst}", text, n, n, LIMIT_LATENCY_MS)
        self.check_syncrun(procs, job, n)
        self.limit_row(label, burst)

    def shared(self) -> None:
        n = self.sizes.shared
        label = f"4. 3 runners, shared: database, {LIMIT}/s, {LIMIT_LATENCY_MS} ms, {n} entities"
        text = harness.apps_source(concurrency=CONCURRENCY, requests=LIMIT, burst=BURST, shared="database")
        procs, _ = self.run_syncrun("s4", text, n, n // 3, LIMIT_LATENCY_MS, processes=3)
        for proc in procs:
            if proc.returncode != 0:
                raise Failure(f"syncrun exited {proc.returncode}: {proc.tail()}")
        if self.written != n:
            raise Failure(f"3 runners wrote {self.written} rows, expected {n}")
        if len(self.jobs) != 3 or any(j["status"] != "completed" for j in self.jobs):
            raise Failure(f"3 runners' job rows: {self.jobs}")
        if self.shared_grants == 0:  # the runners limited themselves in-process: the bucket was not shared
            raise Failure("no grant went through syncrun_rate_limits: shared: database was not used")
        shares = sorted(int(j["processed"]) for j in self.jobs)
        self.limit_row(label, BURST, shares)

    def limit_row(self, label: str, burst: int, shares: list[int] | None = None) -> None:
        arrivals, keys = self.server.stats()
        rate = harness.achieved_rate(arrivals, burst, LIMIT)
        worst = harness.worst_window(arrivals, 1.0)
        twice = harness.fetched_twice(keys)
        percent = 100 * rate / LIMIT
        ok = percent >= 97 and worst <= LIMIT and twice == 0
        per_runner = f"; entities per runner {'/'.join(map(str, shares))}" if shares else ""
        self.add(
            label,
            f"{rate:.1f}/s = {percent:.1f}% of limit{per_runner}",
            f"worst 1 s window {worst} (limit {LIMIT}); {len(arrivals)} requests",
            f"fetched twice: {twice}",
            "≥ 97%, window ≤ limit, 0 twice",
            ok,
            {
                "rate": rate,
                "percent": percent,
                "worst": worst,
                "twice": twice,
                "requests": len(arrivals),
                "shares": shares,
            },
        )

    def bulk(self) -> None:
        pages = self.sizes.pages
        rows = pages * 1000
        label = f"5. bulk: {pages} responses × 1,000 records = {rows:,} rows"
        text = harness.BULK_SOURCE.format(concurrency=4, write_batch=5)
        procs, job = self.run_syncrun("s5", text, pages, pages, 0)
        self.check_syncrun(procs, job, rows)
        assert job is not None
        duration = float(job["duration"] or procs[0].elapsed)  # type: ignore[arg-type]
        ours, wall = rows / duration, rows / procs[0].elapsed
        raw_seconds = raw_copy_upsert(self.dsn, pages)
        raw = rows / raw_seconds
        ratio = ours / raw
        self.add(
            label,
            f"{ours:,.0f} rows/s (job {duration:.1f} s; wall {wall:,.0f}/s)",
            f"{raw:,.0f} rows/s raw COPY + upsert ({raw_seconds:.2f} s)",
            f"{ratio:.2f}×",
            "≥ 0.5×",
            ratio >= 0.5,
            {"job_s": duration, "wall_s": procs[0].elapsed, "raw_s": raw_seconds, "ratio": ratio},
        )

    def rss(self) -> None:
        small, large = self.sizes.rss
        peaks = {}
        for n in (small, large):
            text = harness.apps_source(concurrency=CONCURRENCY)
            procs, job = self.run_syncrun(f"s6_{n}", text, n, n, 0)
            self.check_syncrun(procs, job, n)
            peaks[n] = (procs[0].maxrss_kb / 1024, procs[0].elapsed)
        ratio = peaks[large][0] / peaks[small][0]
        self.add(
            f"6. peak RSS of `syncrun run`, {small:,} vs {large:,} entities",
            f"{peaks[large][0]:.0f} MiB at {large:,} ({large / peaks[large][1]:,.0f} entities/s)",
            f"{peaks[small][0]:.0f} MiB at {small:,}",
            f"{ratio:.2f}×",
            "≤ 1.2×",
            ratio <= 1.2,
            {
                "peaks_mib": {str(k): v[0] for k, v in peaks.items()},
                "seconds": {str(k): v[1] for k, v in peaks.items()},
            },
        )

    def transports(self) -> None:
        """httpx's own transport vs httpx-aiohttp's, for syncrun (via bench/aiohttp_shim.py) and the baseline.

        Information only: syncrun keeps httpx (aiohttp/yarl resolves encoded dot segments in entity values)."""
        n = self.sizes.latency
        for latency_ms, concurrency in ((0, CONCURRENCY), (50, CONCURRENCY), (50, 64)):
            ours, theirs = {}, {}
            text = harness.apps_source(concurrency=concurrency)
            for transport in ("httpx", "aiohttp"):
                name = f"t{latency_ms}_{concurrency}_{transport}"
                procs, job = self.run_syncrun(name, text, n, n, latency_ms, transport=transport)
                self.check_syncrun(procs, job, n)
                ours[transport] = n / procs[0].elapsed
                proc = self.run_baseline(name, n, latency_ms, concurrency, transport)
                theirs[transport] = n / proc.elapsed
            self.add(
                f"T. transports, {n:,} entities, {latency_ms} ms, concurrency {concurrency}",
                f"httpx {ours['httpx']:,.0f}/s, aiohttp {ours['aiohttp']:,.0f}/s",
                f"baseline: httpx {theirs['httpx']:,.0f}/s, aiohttp {theirs['aiohttp']:,.0f}/s",
                f"aiohttp/httpx: syncrun {ours['aiohttp'] / ours['httpx']:.2f}×,"
                f" baseline {theirs['aiohttp'] / theirs['httpx']:.2f}×",
                "(information: httpx stays the default, URL safety)",
                None,
                {"syncrun": ours, "baseline": theirs},
            )

    # --- output ---------------------------------------------------------------------------------------
    def add(self, scenario: str, ours: str, ref: str, result: str, target: str, ok: bool | None, detail: dict) -> None:
        met = "n/a" if ok is None else ("yes" if ok else "NO")
        self.rows.append(Row(scenario, ours, ref, result, target, met, detail))
        print(f"  {scenario}: {ours} | {ref} | {result} | {met}", file=sys.stderr, flush=True)

    def error(self, scenario: str, error: BaseException) -> None:
        text = str(error) if isinstance(error, Failure) else traceback.format_exc(limit=3)
        self.rows.append(Row(scenario, "error", "-", "-", "-", "error", {"error": text}))
        print(f"  {scenario}: ERROR {text}", file=sys.stderr, flush=True)


class Failure(Exception):
    """A scenario could not be measured (a process failed or wrote the wrong number of rows)."""


def raw_copy_upsert(admin_dsn: str, pages: int) -> float:
    """Seconds to COPY the bulk scenario's rows (mapped in advance) into a stage table and upsert them."""
    rows = [
        (i, page, f"item {i}", i % 10000, i % 97)
        for page in range(1, pages + 1)
        for i in range(page * 1000, page * 1000 + 1000)
    ]
    with scratch(admin_dsn, "raw", 0) as dsn, psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        with conn.transaction():
            conn.execute("create temp table stage (like bench_items) on commit drop")
            with conn.cursor().copy("copy stage (id, page, name, price_cents, score) from stdin") as copy:
                for row in rows:
                    copy.write_row(row)
            conn.execute(
                "insert into bench_items select * from stage on conflict (id) do update set page = excluded.page,"
                " name = excluded.name, price_cents = excluded.price_cents, score = excluded.score"
            )
        return time.perf_counter() - started


def machine() -> str:
    mem = next(
        (line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), "?"
    )
    return (
        f"{os.cpu_count()} CPUs, {int(mem) // 1024 // 1024} GiB RAM, Python {platform.python_version()},"
        f" {platform.system()} {platform.release()}"
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | syncrun | reference | result | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.scenario} | {r.syncrun} | {r.reference} | {r.result} | {r.target} | {r.met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a ~1 minute smoke run")
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL") or harness.DEFAULT_DSN)
    parser.add_argument("--only", help="comma-separated scenarios to run, e.g. 1,3,T (default: all)")
    parser.add_argument(
        "--baseline-transport",
        choices=("httpx", "aiohttp"),
        default="httpx",
        help="the baseline's transport in scenarios 1 and 2: use the one syncrun uses (default: httpx)",
    )
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    args = parser.parse_args(argv)
    only = {s.strip().upper() for s in args.only.split(",")} if args.only else None
    bench = Bench(args)
    sizes = bench.sizes
    plan: list[tuple[str, str, Callable[[], None]]] = []
    for n in sizes.unthrottled:
        plan.append(("1", f"1. {n:,} entities, 0 ms", lambda n=n: bench.compare("1", n, 0, 1.0)))
    plan += [
        ("2", "2. 50 ms latency", lambda: bench.compare("2", sizes.latency, 50, 0.8)),
        ("3", "3. rate-limited, burst 5", lambda: bench.limited(BURST)),
        ("3", "3. rate-limited, burst 1", lambda: bench.limited(1)),
        ("4", "4. shared limit", bench.shared),
        ("5", "5. bulk", bench.bulk),
        ("6", "6. peak RSS", bench.rss),
        ("T", "T. transports", bench.transports),
    ]
    started = time.perf_counter()
    print(f"syncrun bench ({'quick' if args.quick else 'full'}) on {machine()}", file=sys.stderr, flush=True)
    try:
        for key, name, step in plan:
            if only and key not in only:
                continue
            try:
                step()
            except Exception as error:  # one broken scenario must not hide the others
                bench.error(name, error)
    finally:
        bench.close()
    total = time.perf_counter() - started
    print(table(bench.rows))
    print(f"\n{machine()}; total {total:.0f} s; command: python -m bench {' '.join(argv or sys.argv[1:])}".rstrip())
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in bench.rows], indent=2, default=str))
    return 1 if any(r.met == "error" for r in bench.rows) else 0
