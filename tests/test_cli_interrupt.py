"""Ctrl-C during a run's start-up (review revA F5): a real SIGINT to a real `python -m runner run`
while its main thread waits (on the first connect to a silent server, on a check's query behind a
lock) ends it at once with exit 130 and no job row. asyncio.run's own handler only cancelled the
main task, which a call blocking the event loop never saw: the connect held Ctrl-C for its whole
10 s timeout and then exited 1; the check waited for the lock for good."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner import database
from tests.apiserver import ApiServer
from tests.pg import Database
from tests.test_cli import start
from tests.test_engine import seed, write_source


def waiting_on_a_lock(pid: int) -> bool:
    """The process's main thread is in an untimed futex wait: a `threading` lock acquired without a
    timeout (Future.result, say), not the GIL (a wait with a timeout) and not the event loop (epoll)."""
    try:
        fields = Path(f"/proc/{pid}/task/{pid}/syscall").read_text().split()
    except OSError:  # gone
        return False
    return len(fields) > 4 and fields[0] == "202" and fields[4] == "0x0"  # futex (x86-64), no timeout


def settled(check: object, process: subprocess.Popen[str], timeout: float = 20.0) -> None:
    """Until `check()` holds on three looks in a row, 50 ms apart (a thread starting is waited for in the
    same way, briefly); fails if the process ends first."""
    deadline, seen = time.monotonic() + timeout, 0
    while seen < 3:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out waiting"
        seen = seen + 1 if check() else 0  # type: ignore[operator]
        time.sleep(0.05)


def interrupted(process: subprocess.Popen[str]) -> tuple[int, float, str]:
    """SIGINT now: the exit code, how long it took, stderr."""
    signalled = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=database.CONNECT_TIMEOUT * 2)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"SIGINT did not end the run: {err}")
    return process.returncode, time.monotonic() - signalled, err


@pytest.mark.skipif(not Path("/proc/self/syscall").exists(), reason="needs /proc/PID/syscall (Linux)")
@contextlib.contextmanager
def reaped(process: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """The child, killed and reaped if a check failed before it ended."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_ctrl_c_while_the_first_connect_waits_on_a_silent_server_exits_130_at_once(tmp_path: Path) -> None:
    source = write_source(tmp_path)
    with socket.socket() as silent:  # listens, never accepts: a connect waits for its whole timeout
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        dsn = f"postgresql://app:s3cret@127.0.0.1:{silent.getsockname()[1]}/app"
        with reaped(start(["run", str(source)], {"DATABASE_URL": dsn, "API_URL": "http://127.0.0.1:9"})) as process:
            settled(lambda: waiting_on_a_lock(process.pid), process)  # the run waits for its first connection
            assert select.select([silent], [], [], 0)[0], "no connect reached the server"
            code, took, err = interrupted(process)
    assert code == 130, err
    assert took < database.CONNECT_TIMEOUT / 2, took  # not the connect's timeout (10 s); ~0.02 s here
    assert "Traceback" not in err
    assert "s3cret" not in err


def test_ctrl_c_while_a_check_waits_on_a_lock_exits_130_without_a_job_row(
    db: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks before any job row (the selection planned on its status table) wait behind a lock
    another session holds: Ctrl-C ends the run at once (its query cancelled), no job row written."""
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    source = write_source(tmp_path)
    seed(db, source)
    with db.connect() as holder:
        holder.execute("lock table sync_status in access exclusive mode")
        with reaped(start(["run", str(source)], {"DATABASE_URL": db.dsn, "API_URL": api.url})) as process:
            waiting = "select count(*) from pg_locks where relation = 'sync_status'::regclass and not granted"
            settled(lambda: db.scalar(waiting) > 0, process)
            code, took, err = interrupted(process)
    assert code == 130, err
    assert took < database.CONNECT_TIMEOUT / 2, took
    assert "Traceback" not in err
    assert db.scalar("select count(*) from sync_jobs") == 0
    assert not api.requests


SLOW_IMPORT = """\
import os, sys, time

class _Slow:  # holds the import of one module: Ctrl-C then lands while syncrun's modules load
    def find_spec(self, name, path=None, target=None):
        if name == os.environ.get("SYNCRUN_TEST_SLOW_IMPORT"):
            sys.stderr.write("importing\\n")
            sys.stderr.flush()
            time.sleep(60)
        return None

sys.meta_path.insert(0, _Slow())
"""


@pytest.mark.parametrize("module", ["runner.cli", "runner.errors"])
@pytest.mark.parametrize("script", [False, True], ids=["python -m runner", "syncrun"])
def test_ctrl_c_while_the_modules_load_exits_130_without_a_traceback(tmp_path: Path, module: str, script: bool) -> None:
    """Review revF F8: SIGINT while Python still imports syncrun (held at `module` by a sitecustomize
    on PYTHONPATH), for `python -m runner` and the installed `syncrun` script: exit 130, no traceback."""
    (tmp_path / "sitecustomize.py").write_text(SLOW_IMPORT)
    command = [str(Path(sys.executable).with_name("syncrun"))] if script else [sys.executable, "-m", "runner"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "SYNCRUN_TEST_SLOW_IMPORT": module}
    with reaped(subprocess.Popen([*command, "--version"], env=env, stderr=subprocess.PIPE, text=True)) as process:
        assert process.stderr is not None
        assert process.stderr.readline() == "importing\n", process.communicate()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    assert process.returncode == 130, err
    assert "Traceback" not in err, err
    assert "KeyboardInterrupt" not in err, err
