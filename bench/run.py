"""`python -m bench [--quick]`: syncrun against hand-written baselines, printed as one table.

Scenarios (issues #4, #11): 1 the throughput matrix (concurrency 16 / 64 x latency 0 / 50 ms x 2,000 /
10,000 entities) against an aiohttp and a sharded-httpx baseline, plus concurrency 64 / 16 and
start-up; 3 rate-limited; 4 runners of one source (1, 2, 4) sharing the due set, and 4 runners
sharing one limit (`shared: database`); 5 bulk pages vs raw COPY + upsert; 6 peak RSS.
Each run gets a fresh scratch schema (dropped afterwards) and the API server is reset before it.
"""

from __future__ import annotations

import argparse
import json
import math
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
    matrix: tuple[int, ...]
    limited: int
    shared: int
    runners: int
    pages: int
    rss: tuple[int, int]


FULL = Sizes(matrix=(2000, 10000), limited=500, shared=600, runners=8000, pages=50, rss=(1000, 100000))
QUICK = Sizes(matrix=(1000,), limited=100, shared=200, runners=1200, pages=10, rss=(500, 5000))
CONCURRENCIES = (16, 64)
LATENCIES = (0, 50)
CONCURRENCY = 16  # scenarios 3-6
LIMIT, LIMIT_LATENCY_MS, BURST = 50, 200, 5  # scenarios 3 and 4s: 50 requests per 1 s window
RUNNERS, RUNNERS_LATENCY_MS = (1, 2, 4), 50
STARTUP_SLACK = 0.1  # s: syncrun's start-up may exceed the aiohttp baseline's by this much
# A 0 ms cell is a 0.3-3 s job whose rate moved by 2x between runs of unchanged code on this shared
# 2-core machine (docs/benchmarks.md, session 7): it runs as this many syncrun/aiohttp pairs, one after
# the other, and the row is the pair with the median ratio. 50 ms cells are long and steady: one pair.
PAIRS_AT_0MS = 3


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
        self.server = Server()
        self.work = Workdir()
        self.rows: list[Row] = []
        self.jobs: list[dict[str, object]] = []
        self.written = self.shared_grants = 0
        self.rates: dict[tuple[int, int, int], float] = {}  # (latency, concurrency, n) -> syncrun entities/s
        self.startup: dict[str, float] = {}

    def close(self) -> None:
        self.server.close()
        self.work.close()

    # --- helpers --------------------------------------------------------------------------------------
    def run_syncrun(
        self, name: str, source_text: str, entities: int, limit: int, latency_ms: int, *, processes: int = 1
    ) -> tuple[list[Proc], dict[str, object] | None]:
        """Scratch schema + source + migrate + `syncrun run` (x processes, concurrently). Returns the
        finished processes and the newest job row; `self.jobs` holds every job row (newest first),
        `self.written` the rows in the bench tables, `self.shared_grants` the grants `shared: database`
        handed out through syncrun_rate_limits, `self.first_arrival` the first request's delay after
        the (first) process was spawned."""
        source = self.work.source(source_text)
        with scratch(self.dsn, name, entities) as dsn:
            api = self.server.url(latency_ms)
            migrate = harness.syncrun(["migrate", str(source)], dsn=dsn, api=api, cwd=self.work.path).wait()
            if migrate.returncode != 0:
                raise Failure(f"syncrun migrate exited {migrate.returncode}: {migrate.tail()}")
            self.server.reset()
            args = ["run", str(source), "--limit", str(limit), "--progress-every", "1000000"]
            started = [harness.syncrun(args, dsn=dsn, api=api, cwd=self.work.path) for _ in range(processes)]
            procs = [s.wait() for s in started]
            self.first_arrival = self.arrival_after(started[0].spawned)
            self.jobs = harness.job_rows(dsn)
            job = self.jobs[0] if self.jobs else None
            self.written = harness.query(
                dsn, "select (select count(*) from bench_apps) + (select count(*) from bench_items)"
            )[0][0]
            self.shared_grants = harness.shared_grants(dsn)
        return procs, job

    def arrival_after(self, spawned: float) -> float:
        arrivals, _ = self.server.stats()
        return min(arrivals) - spawned if arrivals else math.nan

    def run_baseline(self, name: str, n: int, latency_ms: int, concurrency: int, client: str) -> tuple[float, float]:
        """(seconds the baseline itself measured, process start -> first request)."""
        with scratch(self.dsn, name, n) as dsn:
            self.server.reset()
            started = harness.baseline(n, concurrency, client, dsn=dsn, api=self.server.url(latency_ms))
            proc = started.wait()
            written = harness.query(dsn, "select count(*) from bench_apps")[0][0]
        if proc.returncode != 0 or written != n:
            raise Failure(f"baseline ({client}) exited {proc.returncode}, wrote {written}/{n}: {proc.tail()}")
        return float(json.loads(proc.stdout.strip().splitlines()[-1])["elapsed"]), self.arrival_after(started.spawned)

    def check_syncrun(self, procs: list[Proc], job: dict[str, object] | None, expect: int) -> None:
        for proc in procs:
            if proc.returncode != 0:
                raise Failure(f"syncrun exited {proc.returncode}: {proc.tail()}")
        if job is None or job["status"] != "completed":
            raise Failure(f"syncrun job row: {job}")
        if self.written != expect:
            raise Failure(f"syncrun wrote {self.written} rows, expected {expect}")

    # --- scenarios ------------------------------------------------------------------------------------
    def matrix_cell(self, n: int, latency_ms: int, concurrency: int) -> None:
        """syncrun vs both baselines on the same job at equal concurrency; rates exclude start-up
        (syncrun: its job row's duration; the baselines: the time they measure themselves)."""
        target = 0.8 if latency_ms == 0 else 0.9
        label = f"1. {n:,} entities, {latency_ms} ms, concurrency {concurrency}"
        text = harness.apps_source(concurrency=concurrency)
        pairs = []
        for _ in range(PAIRS_AT_0MS if latency_ms == 0 else 1):
            procs, job = self.run_syncrun(f"s1_{latency_ms}_{concurrency}", text, n, n, latency_ms)
            self.check_syncrun(procs, job, n)
            assert job is not None
            first = self.first_arrival
            aio_s, aio_first = self.run_baseline(
                f"a1_{latency_ms}_{concurrency}", n, latency_ms, concurrency, "aiohttp"
            )
            ours = n / float(job["duration"])  # type: ignore[arg-type]
            pairs.append((ours * aio_s / n, ours, n / aio_s, job, first, aio_first))
        pairs.sort(key=lambda pair: pair[0])
        ratio, ours, aio, job, first, aio_first = pairs[len(pairs) // 2]
        hx_s, _ = self.run_baseline(f"h1_{latency_ms}_{concurrency}", n, latency_ms, concurrency, "httpx")
        hx = n / hx_s
        self.rates[(latency_ms, concurrency, n)] = ours
        if not self.startup:
            self.startup = {"syncrun": first, "aiohttp": aio_first}
        spread = f"; pairs {', '.join(f'{pair[0]:.2f}' for pair in pairs)}" if len(pairs) > 1 else ""
        self.add(
            label,
            f"{ours:,.0f}/s (job {float(job['duration']):.1f} s)",  # type: ignore[arg-type]
            f"aiohttp {aio:,.0f}/s; httpx×{-(-concurrency // 8)} {hx:,.0f}/s",
            f"{ratio:.2f}× aiohttp ({ours / hx:.2f}× httpx{spread})",
            f"≥ {target:.1f}× aiohttp",
            ratio >= target,
            {"syncrun": ours, "aiohttp": aio, "httpx": hx, "ratio": ratio, "pairs": [p[0] for p in pairs], "job": job},
        )

    def scaling(self) -> None:
        """Throughput never falls when concurrency rises (5 % allowed for noise)."""
        for latency_ms in LATENCIES:
            for n in self.sizes.matrix:
                low, high = self.rates.get((latency_ms, 16, n)), self.rates.get((latency_ms, 64, n))
                if low is None or high is None:
                    continue
                ratio = high / low
                self.add(
                    f"1. concurrency 64 vs 16, {n:,} entities, {latency_ms} ms",
                    f"{high:,.0f}/s at 64",
                    f"{low:,.0f}/s at 16",
                    f"{ratio:.2f}×",
                    "≥ 0.95× (never falls)",
                    ratio >= 0.95,
                    {"ratio": ratio},
                )

    def started(self) -> None:
        """Process start -> first request at the server, syncrun vs the aiohttp baseline (first matrix cell)."""
        if not self.startup:
            return
        ours, theirs = self.startup["syncrun"], self.startup["aiohttp"]
        self.add(
            "1. start-up: process start → first request",
            f"{ours:.2f} s",
            f"{theirs:.2f} s (aiohttp baseline)",
            f"+{ours - theirs:.2f} s",
            f"≤ +{STARTUP_SLACK:.1f} s",
            ours - theirs <= STARTUP_SLACK,
            dict(self.startup),
        )

    def limited(self, burst: int) -> None:
        n = self.sizes.limited
        label = f"3. rate limit {LIMIT}/s (burst {burst}), {LIMIT_LATENCY_MS} ms latency, {n} entities"
        text = harness.apps_source(concurrency=CONCURRENCY, requests=LIMIT, burst=burst)
        procs, job = self.run_syncrun(f"s3_{burst}", text, n, n, LIMIT_LATENCY_MS)
        self.check_syncrun(procs, job, n)
        self.limit_row(label, burst)

    def runners(self) -> None:
        """1, 2 and 4 runners of one source (no --partition, each `--limit N`) share the due set."""
        n = self.sizes.runners
        rates: dict[int, float] = {}
        text = harness.apps_source(concurrency=CONCURRENCY)
        for count in RUNNERS:
            procs, _ = self.run_syncrun(f"s4_{count}", text, n, n, RUNNERS_LATENCY_MS, processes=count)
            self.check_runners(procs, count, n)
            rates[count] = n / (max(float(j["t1"]) for j in self.jobs) - min(float(j["t0"]) for j in self.jobs))  # type: ignore[arg-type]
            _, keys = self.server.stats()
            twice = harness.fetched_twice(keys)
            shares = sorted((int(j["processed"]) for j in self.jobs), reverse=True)  # type: ignore[call-overload]
            fair = max(abs(share - n / count) for share in shares) / (n / count)
            ratio = rates[count] / rates[1]
            target = 3.5 if count == 4 else 0.9 * count
            ok = ratio >= target and fair <= 0.10 and twice == 0
            self.add(
                f"4. {count} runner{'s' if count > 1 else ''} of one source, {RUNNERS_LATENCY_MS} ms, {n:,} entities",
                f"{rates[count]:,.0f}/s; per runner {'/'.join(map(str, shares))}",
                f"1 runner {rates[1]:,.0f}/s",
                f"{ratio:.2f}×; shares ±{100 * fair:.0f}%; fetched twice: {twice}",
                f"≥ {target:.1f}×, ±10%, 0 twice",
                ok if count > 1 else (twice == 0),
                {"rate": rates[count], "ratio": ratio, "shares": shares, "twice": twice},
            )

    def check_runners(self, procs: list[Proc], count: int, n: int) -> None:
        for proc in procs:
            if proc.returncode != 0:
                raise Failure(f"syncrun exited {proc.returncode}: {proc.tail()}")
        if self.written != n:
            raise Failure(f"{count} runners wrote {self.written} rows, expected {n}")
        if len(self.jobs) != count or any(j["status"] != "completed" for j in self.jobs):
            raise Failure(f"{count} runners' job rows: {self.jobs}")

    def shared(self, latency_ms: int) -> None:
        """4 runners sharing one limit through `syncrun_rate_limits`: at the runners' 50 ms (issue #11's
        condition) and at scenario 3's 200 ms, where each first request's held-open grant costs more."""
        n, count = self.sizes.shared, RUNNERS[-1]
        label = f"4. {count} runners, shared: database, {LIMIT}/s, {latency_ms} ms, {n} entities"
        text = harness.apps_source(concurrency=CONCURRENCY, requests=LIMIT, burst=BURST, shared="database")
        procs, _ = self.run_syncrun(f"s4s_{latency_ms}", text, n, n, latency_ms, processes=count)
        self.check_runners(procs, count, n)
        if self.shared_grants == 0:  # the runners limited themselves in-process: the bucket was not shared
            raise Failure("no grant went through syncrun_rate_limits: shared: database was not used")
        shares = sorted((int(j["processed"]) for j in self.jobs), reverse=True)  # type: ignore[call-overload]
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
        self.server.prepare_bulk(pages)  # the fake API's JSON work is not the client's (bench/server.py)
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
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every scenario")
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL") or harness.DEFAULT_DSN)
    parser.add_argument("--only", help="comma-separated scenarios to run, e.g. 1,4 (default: all of 1 3 4 5 6)")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    args = parser.parse_args(argv)
    only = {s.strip().upper() for s in args.only.split(",")} if args.only else None
    bench = Bench(args)
    sizes = bench.sizes
    plan: list[tuple[str, str, Callable[[], None]]] = []
    for latency_ms in LATENCIES:
        for concurrency in CONCURRENCIES:
            for n in sizes.matrix:
                name = f"1. {n:,} entities, {latency_ms} ms, concurrency {concurrency}"
                plan.append(("1", name, lambda n=n, ms=latency_ms, c=concurrency: bench.matrix_cell(n, ms, c)))
    plan += [
        ("1", "1. concurrency 64 vs 16", bench.scaling),
        ("1", "1. start-up", bench.started),
        ("3", "3. rate-limited, burst 5", lambda: bench.limited(BURST)),
        ("3", "3. rate-limited, burst 1", lambda: bench.limited(1)),
        ("4", "4. runners of one source", bench.runners),
        ("4", f"4. shared limit, {RUNNERS_LATENCY_MS} ms", lambda: bench.shared(RUNNERS_LATENCY_MS)),
        ("4", f"4. shared limit, {LIMIT_LATENCY_MS} ms", lambda: bench.shared(LIMIT_LATENCY_MS)),
        ("5", "5. bulk", bench.bulk),
        ("6", "6. peak RSS", bench.rss),
    ]
    started = time.perf_counter()
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
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
    after = Path("/proc/loadavg").read_text().split()[:3] if load else []
    print(table(bench.rows))
    print(f"\n{machine()}; load average before {' '.join(load)}, after {' '.join(after)}; total {total:.0f} s")
    print(f"command: python -m bench {' '.join(argv or sys.argv[1:])}".rstrip())
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in bench.rows], indent=2, default=str))
    return 1 if any(r.met == "error" for r in bench.rows) else 0
