"""Plumbing for the fault matrix (bench/faults.py) and the security tests: a private PostgreSQL
cluster, pgbouncer in front of it, the fault source, subprocess runs and the data checks.

- `Cluster`: initdb into a temporary directory, `pg_ctl start` on a free port with its own socket
  directory (run as the `postgres` OS user when we are root), host connections with a password
  (scram-sha-256) for the role `syncrun`, so DATABASE_URL carries a real secret. `restart()` is the
  PostgreSQL-restarted-mid-run fault. `close()` stops it and removes the directory.
- `Bouncer`: pgbouncer, pool_mode=transaction, a pool of 2 server connections, in front of a cluster.
- `Workload`: a database cloned from a template (N entities seeded), the fault source YAML, and the
  reference data (`expected`) a clean run produces; `check()` compares what is in the database.
- `StampedServer`: tests/apiserver.py's server with each request's arrival taken from the kernel's
  receive timestamp (when the client wrote it), for the matrix's rate-limit check.

Missing binaries raise `Missing`; tests turn that into a failure under CI=true and a skip otherwise.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.apiserver import ApiServer, _Handler

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def _pg_bin() -> Path:
    """Where initdb and pg_ctl are: $SYNCRUN_PG_BIN, else the newest of Debian's installed versions."""
    if configured := os.environ.get("SYNCRUN_PG_BIN"):
        return Path(configured)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
ROLE = "syncrun"
PASSWORD = "pw-Zq7!x:y@/k%3F"  # URL-hostile on purpose: it must be percent-encoded in DATABASE_URL
TOKEN = "tok-9f3b2c71e8a4d6"  # the API secret (${secret.API_TOKEN})


class Missing(RuntimeError):
    """A server binary (initdb, pg_ctl, pgbouncer) is not installed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user() -> list[str]:
    """Prefix for server binaries: PostgreSQL and pgbouncer refuse to run as root."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _binary(name: str, directory: Path | None = None) -> str:
    path = str(directory / name) if directory else shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        raise Missing(f"{name} not found ({path or 'not on PATH'})")
    return path


def _private_dir(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    return root


# --- PostgreSQL ------------------------------------------------------------------------------------------
class Cluster:
    AUTH = ("--auth-local=trust", "--auth-host=scram-sha-256")  # the socket is ours; TCP needs the password

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _binary("initdb", PG_BIN), _binary("pg_ctl", PG_BIN)
        self.root = _private_dir("syncrun-faults-pg-")
        self.data, self.sockets = self.root / "data", self.root / "sock"
        self.port = free_port()
        try:
            self._server(["mkdir", "-p", str(self.sockets)])
            self._server([self.initdb, "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--no-sync", *self.AUTH])
            self.start()
            with self.admin() as conn:
                conn.execute(
                    sql.SQL("create role {} login createdb password {}").format(
                        sql.Identifier(ROLE), sql.Literal(PASSWORD)
                    )
                )
        except BaseException:
            self.close()
            raise

    def _server(self, argv: list[str], timeout: float = 60) -> None:
        result = subprocess.run([*_as_server_user(), *argv], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr or result.stdout}")

    def _ctl(self, *args: str) -> None:
        # fsync=off only risks data when the *OS* crashes, which never happens here; a crash of the
        # server process (restart -m immediate, fault 10) keeps everything written to the OS. But
        # synchronous_commit must stay on: with it off, a commit returns before its WAL is written,
        # and an immediate stop loses transactions syncrun was told had committed.
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c full_page_writes=off -c max_connections=100"
        )
        self._server([self.pg_ctl, "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", *args])

    def start(self) -> None:
        self._ctl("start")

    def restart(self, mode: str = "immediate") -> None:
        """Every connection dies; the server comes back on the same port (immediate: like a crash)."""
        self._ctl("restart", "-m", mode)

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._ctl("stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """A superuser connection over the private socket (trust), autocommit."""
        return psycopg.connect(host=str(self.sockets), port=self.port, user="postgres", dbname=dbname, autocommit=True)

    def dsn(self, dbname: str, *, port: int | None = None) -> str:
        """The runner's DATABASE_URL: TCP, role `syncrun` with its password (percent-encoded)."""
        from urllib.parse import quote

        return f"postgresql://{ROLE}:{quote(PASSWORD, safe='')}@127.0.0.1:{port or self.port}/{dbname}"

    def create_database(self, name: str, template: str | None = None) -> str:
        with self.admin() as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
            conn.execute(
                sql.SQL("create database {} owner {} template {}").format(
                    sql.Identifier(name), sql.Identifier(ROLE), sql.Identifier(template or "template1")
                )
            )
        return self.dsn(name)


class Bouncer:
    """pgbouncer in transaction mode in front of `cluster`, with its own password file."""

    def __init__(self, cluster: Cluster) -> None:
        binary = _binary("pgbouncer")
        self.root = _private_dir("syncrun-faults-pgb-")
        self.port = free_port()
        (self.root / "userlist.txt").write_text(f'"{ROLE}" "{PASSWORD}"\n')
        (self.root / "pgbouncer.ini").write_text(
            f"[databases]\n* = host=127.0.0.1 port={cluster.port}\n\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = scram-sha-256\nauth_file = {self.root / 'userlist.txt'}\n"
            "pool_mode = transaction\ndefault_pool_size = 2\nmax_client_conn = 200\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.root / 'pgbouncer.log'}\npidfile = {self.root / 'pgbouncer.pid'}\n"
        )
        for file in self.root.iterdir():
            if os.geteuid() == 0:
                shutil.chown(file, "postgres", "postgres")
            file.chmod(0o600)
        self.proc = subprocess.Popen(
            [*_as_server_user(), binary, str(self.root / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.root / "pgbouncer.log").read_text() if (self.root / "pgbouncer.log").exists() else ""
                self.close()
                raise RuntimeError(f"pgbouncer did not start: {log[-2000:]}")
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # runuser forwards it; pgbouncer exits at once
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)


# --- the fault source ------------------------------------------------------------------------------------
SOURCE = """\
name: faults
entities:
  type: default
  columns: {{appid: int}}
  limit: 1000
request:
  url: "${{env.API_URL}}/apps/{{appid}}"
  headers:
    Authorization: "Bearer ${{secret.API_TOKEN}}"
  timeout: {timeout}
  max_body: 64KB
rate_limit: {{requests: {rate}, per: 1s, burst: 5, bucket: faults}}
retry: {{attempts: {attempts}, initial: 20ms, max_delay: 100ms, max_wait: 3s}}
concurrency: {concurrency}
write_batch: {write_batch}
fail_ratio: 1
records: body
writes:
  - table: apps
    key: [appid]
    columns:
      appid: entity.appid
      name: record.name
      price_cents: record.price
  - table: app_tags
    key: [appid, tag]
    rows: record.tags
    replace_by: [appid]
    columns:
      appid: entity.appid
      tag: item
  - table: snapshots                  # append only, keyed by the run's date: fixed before any retry
    key: [appid, taken_on]
    mode: insert
    columns:
      appid: entity.appid
      taken_on: run.today
      price: record.price
"""

TABLES = """
create table apps (appid int primary key, name text, price_cents int);
create table app_tags (appid int not null, tag text not null, primary key (appid, tag));
create table snapshots (appid int not null, taken_on date not null, price int, primary key (appid, taken_on));
"""

RATE = 30  # requests per second of the fault source


def payload(appid: int) -> dict[str, Any]:
    """What the healthy API says about an entity (tags vary in number, so replace_by matters)."""
    return {"name": f"App {appid}", "price": appid * 10, "tags": [f"t{appid}-{i}" for i in range(appid % 3 + 1)]}


Data = dict[str, set[tuple[Any, ...]]]


def rows_for(appid: int, body: dict[str, Any]) -> Data:
    """The rows a clean run writes for one entity that answered `body` (checked against a real clean
    run by `Workload.reference_check`)."""
    return {
        "apps": {(appid, body.get("name"), body.get("price"))},
        "app_tags": {(appid, tag) for tag in body.get("tags") or []},
        "snapshots": {(appid, body.get("price"))},
    }


# rows of each table, timestamps (taken_on: the run's date) left out
QUERIES = {
    "apps": "select appid, name, price_cents from apps",
    "app_tags": "select appid, tag from app_tags",
    "snapshots": "select appid, price from snapshots",
}


@dataclass
class Run:
    """One finished (or killed) runner process."""

    code: int
    stdout: str
    stderr: str
    elapsed: float
    first: int  # index of its first request in the server log
    last: int  # one past its last


@dataclass
class Workload:
    cluster: Cluster
    name: str
    tmp: Path
    entities: int = 24
    timeout: str = "1s"
    attempts: int = 4
    concurrency: int = 4
    write_batch: int = 5
    rate: int = RATE
    dsn: str = ""
    source: Path = field(default_factory=Path)

    def __post_init__(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        (self.tmp / "syncrun.yaml").write_text(
            "status: {table: sync_status, key: appid}\nentities: {key: appid, key_type: int}\n"
        )
        self.source = self.tmp / "faults.yaml"
        self.source.write_text(
            SOURCE.format(
                timeout=self.timeout,
                attempts=self.attempts,
                concurrency=self.concurrency,
                write_batch=self.write_batch,
                rate=self.rate,
            )
        )
        self.dsn = self.cluster.create_database(self.name)
        self.cli(["migrate", str(self.source)], api_url="http://127.0.0.1:9").check("migrate")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(TABLES)  # type: ignore[arg-type]
            conn.execute("insert into sync_status (appid) select generate_series(1, %s)", (self.entities,))

    @property
    def keys(self) -> list[int]:
        return list(range(1, self.entities + 1))

    def env(self, api_url: str, dsn: str | None = None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CI", "GITHUB_ACTIONS")}
        return {
            **base,
            "DATABASE_URL": dsn or self.dsn,
            "API_URL": api_url,
            "API_TOKEN": TOKEN,
            "NO_COLOR": "1",
            "PYTHONFAULTHANDLER": "1",
        }

    def start(self, args: Sequence[str], api_url: str, dsn: str | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [PYTHON, "-m", "runner", *args],
            cwd=REPO,
            env=self.env(api_url, dsn),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def cli(self, args: Sequence[str], api_url: str, dsn: str | None = None, timeout: float = 120) -> Completed:
        started = time.monotonic()
        proc = self.start(args, api_url, dsn)
        out, err = proc.communicate(timeout=timeout)
        return Completed(proc.returncode, out, err, time.monotonic() - started)

    def run_args(self, *extra: str) -> list[str]:
        return ["run", str(self.source), "--lease", "3", "--heartbeat", "0.3", "--stale-after", "1", *extra]

    # --- what is in the database -----------------------------------------------------------------------
    def query(self, text: str, params: Any = None, dsn: str | None = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn or self.dsn, autocommit=True) as conn:
            return conn.execute(text, params).fetchall()  # type: ignore[arg-type]

    def data(self) -> dict[str, list[tuple[Any, ...]]]:
        return {table: self.query(q) for table, q in QUERIES.items()}

    def jobs(self) -> list[tuple[Any, ...]]:
        return self.query(
            "select id::text, status, items_processed, items_succeeded, items_failed, items_skipped,"
            " error_message from sync_jobs order by started_at, id"
        )

    def stamped(self) -> set[int]:
        return {r[0] for r in self.query("select appid from sync_status where last_faults_sync is not null")}

    def errored(self) -> set[int]:
        return {int(r[0]) for r in self.query("select entity_key from syncrun_state where last_error is not null")}

    def penalised(self) -> set[int]:
        return {int(r[0]) for r in self.query("select entity_key from syncrun_state where next_attempt_at is not null")}

    def stuck(self) -> int:
        """Jobs left `running` plus claims still held (every runner has exited when this is asked)."""
        running = self.query("select count(*) from sync_jobs where status = 'running'")[0][0]
        claims = self.query("select count(*) from syncrun_state where claimed_by is not null")[0][0]
        return int(running) + int(claims)


@dataclass
class Completed:
    code: int
    stdout: str
    stderr: str
    elapsed: float
    peak_rss: int = 0  # the process's own peak resident memory in bytes (VmHWM), 0 when unknown
    hung: bool = False  # still running at the timeout: sent SIGABRT (PYTHONFAULTHANDLER dumps its threads)

    def check(self, what: str) -> Completed:
        if self.code != 0:
            raise RuntimeError(f"{what} exited {self.code}: {self.stderr[-3000:]}")
        return self


def reap(proc: subprocess.Popen[str], timeout: float, started: float) -> Completed:
    """`proc.communicate()`, also measuring the child's own peak RSS: VmHWM of /proc/PID/status, sampled
    every 10 ms until it exits (a high-water mark, so only growth in its last 10 ms can be missed).
    Not rusage: Linux carries the parent's high-water mark into a child across fork/vfork and exec, so
    wait4's ru_maxrss of a runner started from a big test process reports the test process's size.
    A child still running after `timeout` gets SIGABRT (PYTHONFAULTHANDLER dumps its threads)."""
    output: dict[str, str] = {}

    def drain(name: str, stream: Any) -> None:
        output[name] = stream.read()
        stream.close()

    readers = [threading.Thread(target=drain, args=(n, s)) for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for reader in readers:
        reader.start()
    deadline, hung, peak = time.monotonic() + timeout, False, 0
    while proc.poll() is None:
        peak = max(peak, _high_water(proc.pid))
        if not hung and time.monotonic() > deadline:
            hung = True
            proc.send_signal(signal.SIGABRT)
        time.sleep(0.01)
    for reader in readers:
        reader.join()
    code = proc.returncode
    return Completed(code, output.get("out", ""), output.get("err", ""), time.monotonic() - started, peak, hung)


def _high_water(pid: int) -> int:
    """Peak resident bytes of a live process (0 once it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    return 0


@dataclass
class Verdict:
    """Data checks: rows an entity should have and lacks, extra copies, rows that differ, half-written."""

    missing: int = 0
    duplicated: int = 0
    wrong: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, other: Verdict) -> None:
        self.missing += other.missing
        self.duplicated += other.duplicated
        self.wrong += other.wrong
        self.notes += other.notes


def compare(actual: dict[str, list[tuple[Any, ...]]], expected: dict[int, dict[str, Any] | None]) -> Verdict:
    """`expected`: entity -> the body its rows must come from, or None (it must have no rows at all).

    missing: expected rows absent; duplicated: a row present more than once (timestamps ignored);
    wrong: rows that no expected entity explains (a value differs, a stale tag, a half-written entity).
    """
    verdict = Verdict()
    want: Data = {table: set() for table in QUERIES}
    for appid, body in expected.items():
        if body is not None:
            for table, rows in rows_for(appid, body).items():
                want[table] |= rows
    for table, rows in actual.items():
        present = set(rows)
        verdict.duplicated += len(rows) - len(present)
        missing, extra = want[table] - present, present - want[table]
        verdict.missing += len(missing)
        verdict.wrong += len(extra)
        if missing:
            verdict.notes.append(f"{table} missing {sorted(missing)[:3]}")
        if extra:
            verdict.notes.append(f"{table} unexpected {sorted(extra)[:3]}")
    return verdict


def wait_for(condition: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def cluster_or_missing() -> Iterator[Cluster]:
    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.close()


# --- when the client sent: the kernel's receive timestamps ------------------------------------------------
# SO_TIMESTAMPNS (Linux, asm-generic/socket.h; Python has no name for it): every recvmsg carries the
# kernel's timestamp of the data it returns, a struct timespec of CLOCK_REALTIME. On loopback the kernel
# takes it inside the client's send (netif_rx, with net.core.netdev_tstamp_prequeue at its default 1),
# so it says when the client wrote the request, whatever this server's threads did afterwards.
SO_TIMESTAMPNS = 35


def realtime_offset() -> tuple[float, float]:
    """CLOCK_REALTIME minus CLOCK_MONOTONIC, and how far off that can be: half the tightest of a few
    adjacent readings (a preemption between two readings would widen one). Both clocks are slewed
    alike; only a step of the wall clock would move the offset, and nothing steps it in a test."""
    spans = []
    for _ in range(20):
        before, real, after = time.monotonic(), time.time(), time.monotonic()
        spans.append((after - before, real - (before + after) / 2))
    span, offset = min(spans)
    return offset, span / 2 + 1e-6  # time.time() itself is read to the microsecond here


class _StampedSocket(io.RawIOBase):
    """The handler's socket as a raw stream that keeps the kernel timestamp of its last read (monotonic
    seconds), or None when the kernel gave none."""

    def __init__(self, sock: socket.socket, offset: float) -> None:
        super().__init__()
        self._sock, self._offset = sock, offset
        self.stamp: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.stamp = None
        size, ancillary, _, _ = self._sock.recvmsg_into([buffer], socket.CMSG_SPACE(16))
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                seconds, nanoseconds = struct.unpack("qq", data[:16])
                self.stamp = seconds + nanoseconds / 1e9 - self._offset
        return size


class _StampedHandler(_Handler):
    server: Any

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain reader: its reference to the socket would keep the descriptor open
        self.rfile = io.BufferedReader(_StampedSocket(self.connection, self.server.api.offset))

    def parse_request(self) -> bool:
        stamp = self.rfile.raw.stamp  # type: ignore[attr-defined]  # of the read that brought the request line
        parsed = super().parse_request()  # sets `_arrived`: when this thread had read the line
        self.server.api.stamped(self, stamp)
        return parsed


class StampedServer(ApiServer):
    """tests/apiserver.py's server, each request's `at` taken from the kernel's receive timestamp: when
    the client wrote it (loopback), not when one of this server's threads got round to reading it. A
    thread that reads late (a busy machine, this process's GIL) bunches the arrivals it reads: the
    fault matrix counted windows over the rate limit that the client never sent.

    `lags`: how much later than the kernel's stamp a thread read each request; `unstamped`: requests
    the kernel gave no timestamp for (their `at` is the thread's reading); `uncertainty`: how far a
    stamp, converted to time.monotonic(), can be off."""

    def __init__(self) -> None:
        super().__init__()
        self.offset, self.uncertainty = realtime_offset()
        self.lags: list[float] = []
        self.unstamped = 0
        self._httpd.socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # accepted sockets inherit it
        self._httpd.RequestHandlerClass = _StampedHandler

    def stamped(self, handler: Any, stamp: float | None) -> None:
        if stamp is None:
            self.unstamped += 1
            return
        self.lags.append(handler._arrived - stamp)
        handler._arrived = stamp
