"""Progress: the live bar on a terminal, nothing extra off one, and the error tally for summaries."""

from __future__ import annotations

import io
import logging

import pytest

from runner import jobs, logs, progress
from runner.redaction import Redactor


@pytest.fixture(autouse=True)
def _stopped() -> object:
    yield None
    progress.stop()


def test_off_a_terminal_no_bar_and_log_lines_untouched(capsys: pytest.CaptureFixture[str]) -> None:
    """Off a terminal start() shows nothing and the periodic `progress` log lines still print."""
    logs.configure("text", Redactor())
    progress.start(["alpha"], 10, stream=io.StringIO())
    progress.tick("alpha", jobs.Counters(processed=1, succeeded=1))
    logging.getLogger("syncrun").info("progress", extra={"processed": 1})
    assert "progress processed=1" in capsys.readouterr().err


def test_live_bar_shows_done_total_and_failures_and_drops_progress_lines() -> None:
    """A live bar writes done/total and the failure count; `progress` log lines are dropped, others kept."""
    stream = io.StringIO()
    logs.configure("text", Redactor())
    progress.start(["alpha"], 4, stream=stream, live=True)
    progress.tick("alpha", jobs.Counters(processed=2, succeeded=1, failed=1), "HTTP 500")
    log = logging.getLogger("syncrun")
    log.info("progress", extra={"processed": 2})
    log.warning("alpha 7 failed: HTTP 500")
    progress.stop()
    text = stream.getvalue()
    assert "2/4" in text
    assert "failed=1" in text
    assert "alpha 7 failed" in text
    assert "progress processed" not in text
    handler = log.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    assert not isinstance(handler.stream, io.StringIO)  # the handler got its own stream back


def test_top_errors_counts_messages_per_source() -> None:
    """tick() tallies error messages per source, most frequent first."""
    progress.start(["alpha", "beta"], None, live=False)
    for message in ["HTTP 500", "HTTP 500", "timeout"]:
        progress.tick("alpha", jobs.Counters(), message)
    progress.tick("beta", jobs.Counters(), None)
    assert progress.top_errors() == {"alpha": [("HTTP 500", 2), ("timeout", 1)]}
    progress.start(["alpha"], None, live=False)
    assert progress.top_errors() == {}
