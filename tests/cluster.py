"""A private PostgreSQL cluster (bench/faultlib.py) for tests that restart, proxy or password-protect
their database: never the machine's shared server. Loaded through tests/conftest.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bench import faultlib


def unavailable(reason: str) -> None:
    """Skip locally; under CI=true a missing tool fails the run (it must be installed, see .ci/run)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: install it, see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster() -> Iterator[faultlib.Cluster]:
    """A private cluster of its own (initdb + pg_ctl on a free port), removed afterwards."""
    try:
        private = faultlib.Cluster()
    except faultlib.Missing as missing:
        unavailable(f"no private PostgreSQL cluster: {missing}")
    try:
        yield private
    finally:
        private.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault matrix of the rows this session ran, as `python -m bench.faults` prints it."""
    from bench import faults
    from tests import test_faults

    if test_faults.MATRIX:
        terminalreporter.section("fault matrix")
        terminalreporter.write_line(faults.format_table(sorted(test_faults.MATRIX, key=_order)))


def _order(result: object) -> tuple[int, str]:
    number = "".join(c for c in str(getattr(result, "id", "")) if c.isdigit())
    return int(number or 0), str(getattr(result, "id", ""))
