"""The fault matrix of issue #6 (bench/faults.py), asserted: every fault leaves nothing missing,
duplicated, wrong or stuck, sends nothing over the rate limit, penalises no entity for the API's
failure, and its job counters agree with the database. `python -m bench.faults` prints the same rows.

Needs initdb/pg_ctl (a private cluster: faults 10 restarts it) and pgbouncer (fault 15): missing
binaries skip these tests locally and fail them under CI=true.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import faultlib, faults
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


def test_matrix_table_lists_every_column() -> None:
    """The printed matrix has every column of the issue, and a failing row explains itself."""
    row = faults.Result("x", "example", missing=1, problems=["job running"])
    table = faults.format_table([row])
    for column in ("proc", "ok", "fail", "skip", "missing", "dup", "wrong", "stuck", "over"):
        assert column in table.splitlines()[0]
    assert "x: job running" in table
    assert not row.clean
