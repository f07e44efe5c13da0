"""`syncrun demo`, the README's first command: every Steam source replayed into the embedded database."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from runner import demo

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_replays_every_steam_source_offline_into_the_embedded_database() -> None:
    """Exit 0; every job completed; rows in every Steam table; DATABASE_URL is never used."""
    data = Path(tempfile.mkdtemp(prefix="syncrun-demo-"))  # under /tmp: pgserver opens its parents as root
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {"SYNCRUN_DATA_DIR": str(data / "pgdata"), "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/never"}
    result = subprocess.run(
        [sys.executable, "-m", "runner", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = [line for line in result.stdout.splitlines() if line.startswith("  ") and "processed" in line]
    assert len(jobs) == len(demo.STEAM_ORDER)
    assert all(" completed " in line for line in jobs), jobs
    counts = dict(
        line.split()[:2] for line in result.stdout.split("rows per table:")[1].split("\n\n")[0].strip().splitlines()
    )
    assert set(counts) == set(demo.STEAM_TABLES)
    assert all(int(n) > 0 for n in counts.values()), counts
