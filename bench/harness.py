"""Plumbing for the benchmark: the API server process, scratch schemas, bench sources, subprocesses."""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PYTHON = sys.executable


# --- the API server ------------------------------------------------------------------------------------
class Server:
    """`python -m bench.server` in its own process; `url(latency_ms)` is the BENCH_API_URL for a scenario."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.server"], cwd=REPO, stdout=subprocess.PIPE, text=True, env=_pythonpath()
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"bench server did not start (said {line!r})")
        self.base = f"http://127.0.0.1:{int(line.split()[1])}"

    def url(self, latency_ms: int) -> str:
        return f"{self.base}/l{latency_ms}"

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.base}/_reset", method="POST"), timeout=30).read()

    def prepare_bulk(self, pages: int) -> None:
        """Render bulk pages 1..pages in the server now (bench/server.py: serving them then costs no JSON work)."""
        urllib.request.urlopen(
            urllib.request.Request(f"{self.base}/_prepare/bulk/{pages}", method="POST"), timeout=60
        ).read()

    def stats(self) -> tuple[list[float], list[int]]:
        data = json.loads(urllib.request.urlopen(f"{self.base}/_stats", timeout=60).read())
        return data["arrivals"], data["keys"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _pythonpath(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


# --- arrival statistics ------------------------------------------------------------------------------
def worst_window(arrivals: Sequence[float], per: float) -> int:
    """The most arrivals in any half-open window [t, t + per)."""
    times = sorted(arrivals)
    worst, start = 0, 0
    for end, now in enumerate(times):
        while now - times[start] >= per:
            start += 1
        worst = max(worst, end - start + 1)
    return worst


def achieved_rate(arrivals: Sequence[float], burst: int, limit: float) -> float:
    """Requests per second, crediting the last burst with the time the limit gives it.

    n / (last - first + burst / limit): exactly `limit` for an ideal limiter of any burst size,
    where the plain (n - 1) / (last - first) would overstate a bursty one by ~burst / n.
    """
    if not arrivals:
        return 0.0
    return len(arrivals) / (max(arrivals) - min(arrivals) + burst / limit)


def fetched_twice(keys: Sequence[int]) -> int:
    seen: dict[int, int] = {}
    for key in keys:
        seen[key] = seen.get(key, 0) + 1
    return sum(1 for count in seen.values() if count > 1)


# --- scratch schemas -----------------------------------------------------------------------------------
STATUS_DDL = """
create table sync_status (
    appid int primary key, priority_score int default 0, is_syncable boolean default true,
    sync_interval_hours int default 24, consecutive_errors int default 0, last_error_source text,
    last_error_message text, last_error_at timestamptz, last_bench_sync timestamptz);
create table sync_jobs (
    id uuid primary key default gen_random_uuid(), job_type text not null, started_at timestamptz default now(),
    completed_at timestamptz, status text default 'running', items_processed int default 0,
    items_succeeded int default 0, items_failed int default 0, batch_size int, error_message text,
    github_run_id text, created_at timestamptz default now(), items_created int default 0,
    items_updated int default 0, items_skipped int default 0, heartbeat_at timestamptz,
    requests_made int default 0, metadata jsonb);
create table bench_apps (
    appid int primary key, name text, type text, is_free boolean, price_cents int, release_date_raw text);
create table bench_items (id bigint primary key, page int, name text, price_cents int, score int);
"""


def with_search_path(dsn: str, schema: str) -> str:
    options = quote(f"-c search_path={schema}", safe="")
    return f"{dsn}{'&' if '?' in dsn else '?'}options={options}"


@contextlib.contextmanager
def scratch(admin_dsn: str, name: str, entities: int) -> Iterator[str]:
    """A fresh schema with the status, jobs and bench tables and `entities` due entities; its DSN."""
    schema = f"bench_{name}_{os.getpid()}"
    dsn = with_search_path(admin_dsn, schema)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"drop schema if exists {schema} cascade")
        conn.execute(f"create schema {schema}")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(STATUS_DDL)
            conn.execute("insert into sync_status (appid) select g from generate_series(1, %s) g", (entities,))
            conn.execute("analyze sync_status")
        yield dsn
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f"drop schema if exists {schema} cascade")


def query(dsn: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


# --- sources -------------------------------------------------------------------------------------------
PROJECT = "status: {table: sync_status, key: appid}\nentities: {key: appid, key_type: int}\n"

APPS_SOURCE = """\
name: bench
description: syncrun benchmark source (one GET per app)
entities:
  type: default
  columns: {{appid: int}}
  limit: 100
request:
  url: "${{env.BENCH_API_URL}}/apps/{{appid}}"
  timeout: 10s
rate_limit:
  requests: {requests}
  per: 1s
  burst: {burst}
  bucket: bench-api
  shared: {shared}
retry:
  attempts: 2
  initial: 200ms
concurrency: {concurrency}
write_batch: {write_batch}
outcomes:
  - name: delisted
    when: "body.success == `false`"
    outcome: skip
    stamp: true
records: body.data
writes:
  - table: bench_apps
    key: [appid]
    columns:
      appid: entity.appid
      name: trim(record.name)
      type: enum_or(lower(record.type), ['game', 'dlc', 'demo', 'music'], 'game')
      is_free: record.is_free
      price_cents: as_int(record.price.cents)
      release_date_raw: record.release_date
"""

BULK_SOURCE = """\
name: bench
description: syncrun benchmark source (1,000 records per response)
entities:
  type: default
  columns: {{appid: int}}
request:
  url: "${{env.BENCH_API_URL}}/bulk/{{appid}}"
  timeout: 30s
  max_body: 10MB
rate_limit:
  requests: 100000
  per: 1s
  burst: 100000
concurrency: {concurrency}
write_batch: {write_batch}
records: body.data
writes:
  - table: bench_items
    key: [id]
    columns:
      id: record.id
      page: entity.appid
      name: record.name
      price_cents: record.price.cents
      score: record.score
"""

UNLIMITED = {"requests": 100000, "burst": 100000}


@dataclass
class Workdir:
    """A temp dir holding syncrun.yaml and one source file."""

    path: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="syncrun-bench-")))

    def source(self, text: str) -> Path:
        (self.path / "syncrun.yaml").write_text(PROJECT)
        source = self.path / "bench.yaml"
        source.write_text(text)
        return source

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def apps_source(*, concurrency: int, write_batch: int = 500, shared: str = "process", **limit: int) -> str:
    rate = {**UNLIMITED, **limit}
    return APPS_SOURCE.format(concurrency=concurrency, write_batch=write_batch, shared=shared, **rate)


# --- subprocesses --------------------------------------------------------------------------------------
@dataclass
class Proc:
    cmd: list[str]
    returncode: int
    elapsed: float
    maxrss_kb: int
    stdout: str
    stderr: str
    cpu_s: float = 0.0  # the child's own CPU time, user + system (os.wait4)

    def tail(self, lines: int = 6) -> str:
        return "\n".join((self.stderr or self.stdout).strip().splitlines()[-lines:])


class Started:
    """A child with its output in temp files; `wait()` reaps it with os.wait4 for its own peak RSS."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path) -> None:
        self.cmd = cmd
        self.out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in wait()
        self.err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.started = time.perf_counter()
        self.spawned = time.monotonic()  # the server stamps arrivals with the same (system-wide) clock
        self.proc = subprocess.Popen(cmd, env=_pythonpath(env), cwd=cwd, stdout=self.out, stderr=self.err)

    def wait(self, timeout: float = 900.0) -> Proc:
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                pid, status, usage = os.wait4(self.proc.pid, 0)
                break
            time.sleep(0.005)
        elapsed = time.perf_counter() - self.started
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        texts = []
        for handle in (self.out, self.err):
            handle.seek(0)
            texts.append(handle.read())
            handle.close()
        cpu = usage.ru_utime + usage.ru_stime
        return Proc(self.cmd, self.proc.returncode, elapsed, usage.ru_maxrss, texts[0], texts[1], cpu)


def bytecode() -> None:
    """Compile `runner/` and `bench/` to `__pycache__` once, as installing a package does.

    Where PYTHONDONTWRITEBYTECODE is set (this machine's environment), no run ever leaves bytecode
    behind, so every child recompiled ~60 modules of syncrun's source: ~0.1-0.2 s of start-up that an
    installed syncrun (pip compiles on install) or a second run in CI never pays, while the baselines'
    libraries come compiled from site-packages. py_compile writes whatever that variable says; a stale
    file is never used (its recorded source mtime and size no longer match)."""
    global _compiled
    if not _compiled:
        for package in ("runner", "bench"):
            compileall.compile_dir(REPO / package, quiet=1)
        _compiled = True


_compiled = False


def syncrun(args: Sequence[str], *, dsn: str, api: str, cwd: Path) -> Started:
    """`syncrun ARGS` as a child process (its modules compiled first: `bytecode`)."""
    bytecode()
    env = {"DATABASE_URL": dsn, "BENCH_API_URL": api}
    return Started([PYTHON, "-m", "runner", *args], env, cwd)


BASELINES = {"aiohttp": "bench.aiohttp_baseline", "httpx": "bench.baseline"}


def baseline(limit: int, concurrency: int, client: str, *, dsn: str, api: str) -> Started:
    """A hand-written baseline: "aiohttp" (bench/aiohttp_baseline.py) or "httpx" (bench/baseline.py)."""
    bytecode()
    env = {"DATABASE_URL": dsn, "BENCH_API_URL": api}
    cmd = [PYTHON, "-m", BASELINES[client], "--limit", str(limit), "--concurrency", str(concurrency)]
    return Started(cmd, env, REPO)


def job_rows(dsn: str) -> list[dict[str, Any]]:
    """Every sync_jobs row of the scratch schema, newest first."""
    rows = query(
        dsn,
        "select status, items_processed, items_succeeded, items_failed, items_skipped, requests_made,"
        " extract(epoch from completed_at - started_at), error_message,"
        " extract(epoch from started_at), extract(epoch from completed_at)"
        " from sync_jobs order by started_at desc",
    )
    names = ("status", "processed", "succeeded", "failed", "skipped", "requests", "duration", "error", "t0", "t1")
    jobs = [dict(zip(names, row, strict=True)) for row in rows]
    for job in jobs:
        for name in ("duration", "t0", "t1"):
            job[name] = float(job[name]) if job[name] is not None else None
    return jobs


def shared_grants(dsn: str) -> int:
    """Grants handed out through `rate_limit.shared: database` (migration 0002's syncrun_rate_limits)."""
    sql = "select coalesce(sum(seq), 0) from syncrun_rate_limits"
    if query(dsn, "select to_regclass('syncrun_rate_limits')")[0][0] is None:
        return 0
    return int(query(dsn, sql)[0][0])
