"""The fault matrix of issues #6 and #10 (bench/faults.py), asserted: every fault leaves nothing missing,
duplicated, wrong or stuck, sends nothing over the rate limit, penalises no entity for the API's
failure, its job counters agree with the database, and the fault run stays within its row's wall-time
and peak-RSS bounds. `python -m bench.faults` prints the same rows.

Needs initdb/pg_ctl (a private cluster: faults 10 restarts it) and pgbouncer (fault 15): missing
binaries skip these tests locally and fail them under CI=true.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from bench import faultlib, faults
from tests.apiserver import Reply
from tests.cluster import unavailable

BUGS: dict[str, str] = {}  # fault id -> engine bug (a strict xfail); empty: every fault is handled


def _param(fault: faults.Fault) -> object:
    marks = [pytest.mark.slow] if fault.slow else []
    if fault.id in BUGS:
        marks.append(pytest.mark.xfail(reason=BUGS[fault.id], strict=True))
    return pytest.param(fault, id=f"{fault.id}-{fault.title}", marks=marks)


MATRIX: list[faults.Result] = []  # printed at the end of the session (tests/cluster.py)


@pytest.mark.parametrize("fault", [_param(f) for f in faults.FAULTS])
def test_fault_leaves_all_zeros(fault: faults.Fault, cluster: faultlib.Cluster, tmp_path: Path) -> None:
    """One row of the matrix: the fault run, the checks right after it, a clean rerun, the final data."""
    if fault.bouncer and shutil.which("pgbouncer") is None:
        unavailable("pgbouncer is not installed")
    result = faults.run_fault(fault, cluster, tmp_path)
    MATRIX.append(result)
    assert result.clean, faults.format_table([result])
    assert result.processed > 0


@pytest.mark.slow
def test_sigkill_at_random_points_recovers(cluster: faultlib.Cluster, tmp_path: Path) -> None:
    """20 runners killed with SIGKILL after a random number of requests; each time the next run reaps
    the job, re-claims the unfinished entities once the lease runs out, and the data equals a clean run's."""
    result = faults.run_kills(cluster, tmp_path, trials=faults.KILL_TRIALS)
    MATRIX.append(result)
    assert result.clean, faults.format_table([result])
    assert result.succeeded > 0


def test_a_runner_over_the_apis_limit_fails_its_row(cluster: faultlib.Cluster, tmp_path: Path) -> None:
    """The `over` check catches a client that really sends too much: the runner keeps its source's
    30/s, the API allows 10/s. 40 entities, one request each, take about 1.3 s at 30/s: a second
    of them holds about 30 requests, far over 10."""
    fault = faults.Fault("x", "30/s against an API allowing 10/s", lambda k, p: [faults.ok(k)], entities=40, limit=10)
    result = faults.run_fault(fault, cluster, tmp_path)
    assert result.over > 0, faults.format_table([result])
    assert not result.clean
    assert (result.problems, result.missing, result.wrong, result.stuck) == ([], 0, 0, 0)


def test_over_counts_the_requests_a_client_sent_beyond_the_limit() -> None:
    """31 requests written back to back on 31 connections: one over a limit of 30 in a second; any
    30 of them: none over."""
    api = faultlib.StampedServer().start()
    api.route("/x", Reply(200, json={}))
    host, port = api.url.removeprefix("http://").split(":")
    sockets = [socket.create_connection((host, int(port))) for _ in range(31)]
    try:
        started = time.monotonic()
        for sock in sockets:
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        written = time.monotonic() - started
        for sock in sockets:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for sock in sockets:
            sock.close()
        api.stop()
    assert written < 1.0  # what the counts below rely on: all 31 were written within a second
    assert faults.over(api, 0, 31, faults.Pauses(), limit=30, in_flight=0) == 1
    assert faults.over(api, 0, 30, faults.Pauses(), limit=30, in_flight=0) == 0
    assert api.unstamped == 0


class _LateReader(faultlib._StampedHandler):
    """Reads its request only once the test says so: a server thread running late."""

    go: threading.Event

    def setup(self) -> None:
        self.go.wait(10)
        super().setup()


def test_an_arrival_is_when_the_client_wrote_it_not_when_the_server_read_it() -> None:
    """The server's thread reads the request 0.3 s after the client wrote it (a busy machine, an accept
    queue): `at` is still the write, within the clock conversion's measured uncertainty, and the
    thread's lateness is in `lags`."""
    _LateReader.go = threading.Event()
    api = faultlib.StampedServer()
    api._httpd.RequestHandlerClass = _LateReader
    api.start()
    api.route("/x", Reply(200, json={}))
    host, port = api.url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port))) as sock:
            before = time.monotonic()
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            after = time.monotonic()
            time.sleep(0.3)
            _LateReader.go.set()
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        api.stop()
    [request] = api.requests
    assert before - api.uncertainty <= request.at <= after + api.uncertainty
    assert api.lags[0] >= 0.3 - api.uncertainty


def test_matrix_table_lists_every_column() -> None:
    """The printed matrix has every column of the issue, and a failing row explains itself."""
    row = faults.Result("x", "example", missing=1, problems=["job running"])
    table = faults.format_table([row])
    for column in ("proc", "ok", "fail", "skip", "missing", "dup", "wrong", "stuck", "over", "secs", "MB"):
        assert column in table.splitlines()[0]
    assert "x: job running" in table
    assert not row.clean


def test_a_row_over_its_memory_or_time_bound_fails() -> None:
    """The bounds are checks like the others: a run over them marks its row FAILED and says by how much."""
    fault = faults.Fault("x", "example", lambda k, p: [], max_seconds=2, max_rss_mb=100)
    result = faults.Result("x", "example")
    run = faultlib.Completed(0, "", "", elapsed=3.0, peak_rss=300_000_000)
    faults._expect(result, fault, ("id", "completed", 0, 0, 0, 0, None), run)
    assert result.problems == ["took 3.0s, expected under 2s", "peak RSS 300 MB, expected under 100 MB"]


def test_reap_reports_the_childs_own_peak_rss() -> None:
    """The peak is the child's own: a child holding 200 MB reports at least that, and a small child
    started while this process holds 300 MB reports its own small peak (wait4's ru_maxrss would say
    300 MB: Linux carries the parent's high-water mark across vfork and exec)."""
    import subprocess
    import sys
    import time

    def run(code: str) -> faultlib.Completed:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return faultlib.reap(proc, 30, time.monotonic())

    big = run("import time; b = b'x' * 200_000_000; time.sleep(0.2); print('done')")
    ballast = b"x" * 300_000_000
    small = run("import time; time.sleep(0.2); print('small')")
    del ballast
    assert (big.code, big.stdout, small.stdout) == (0, "done\n", "small\n")
    assert big.peak_rss > 200_000_000
    assert 0 < small.peak_rss < 100_000_000
