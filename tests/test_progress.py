"""Progress: the live bar on a terminal, nothing extra off one, and the error tally for summaries."""

from __future__ import annotations

import io
import logging

import pytest

from runner import events, jobs, logs, progress, spec
from runner.events import EntitiesDone
from runner.redaction import Redactor
from runner.results import EntityResult, counted


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


def _result(key: int, outcome: spec.Outcome, error: str | None = None) -> EntityResult:
    return EntityResult(key=key, entity={"id": key}, outcome=outcome, error=error, error_source="alpha")


def test_a_batch_event_says_what_one_event_per_entity_said(caplog: pytest.LogCaptureFixture) -> None:
    """One EntitiesDone per batch: each failure's warning in order, and a `progress` line where the
    count crosses a multiple of `every`, with the counters as they were right after that entity (the
    requests and elapsed time of the batch's counting); the bar's tally of failure messages."""
    progress.start(["alpha"], None, live=False)
    ok, bad = spec.Outcome.SUCCESS, spec.Outcome.ERROR
    results = [_result(1, ok), _result(2, bad, "HTTP 500"), _result(3, ok), _result(4, bad, "timeout"), _result(5, ok)]
    before = jobs.Counters(processed=1, succeeded=1, created=7)
    after = counted(before, results)
    event = EntitiesDone("alpha", results, None, before, after, requests=9, elapsed=2.0)
    assert after == jobs.Counters(processed=6, succeeded=4, failed=2, created=7)
    caplog.set_level(logging.INFO, logger="syncrun")
    progress.Lines(2).notice(event)
    progress.Bar().notice(event)
    lines = [(r.getMessage(), getattr(r, "processed", None), getattr(r, "failed", None)) for r in caplog.records]
    assert lines == [
        ("progress", 2, 0),
        ("alpha 2 failed: HTTP 500", None, None),
        ("progress", 4, 1),
        ("alpha 4 failed: timeout", None, None),
        ("progress", 6, 2),
    ]
    assert {r.getMessage(): getattr(r, "rate", None) for r in caplog.records}["progress"] == 3.0
    assert [event.after(i).processed for i in range(5)] == [2, 3, 4, 5, 6]
    assert progress.top_errors() == {"alpha": [("HTTP 500", 1), ("timeout", 1)]}


def test_a_batch_of_list_pages_counts_their_records() -> None:
    """A list source's pages count as their records (`items`): the lines cross where the records do."""
    results = [_result(0, spec.Outcome.SUCCESS), _result(1, spec.Outcome.SUCCESS)]
    event = EntitiesDone(
        "alpha", results, [250, 30], jobs.Counters(), counted(jobs.Counters(), results, [250, 30]), 2, 1.0
    )
    assert [processed for processed, _ in event.each()] == [250, 280]
    assert event.after(0) == jobs.Counters(processed=250, succeeded=250)
    assert event.counters == jobs.Counters(processed=280, succeeded=280)


def test_a_large_batch_with_a_line_per_entity_is_counted_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review revD F1: each line due was counted from the batch's start, so one batch of 20,000 with
    a line per entity took ~39 s on the event loop. Now the walk counts on from the last line: each
    entity is counted once, and the counters at each line are those counted from the start."""
    progress.start(["alpha"], None, live=False)
    caplog.set_level(logging.INFO, logger="syncrun")
    outcomes = (spec.Outcome.SUCCESS, spec.Outcome.ERROR)
    results = [_result(i, outcomes[i % 2], "HTTP 500" if i % 2 else None) for i in range(20_000)]
    event = EntitiesDone("alpha", results, None, jobs.Counters(), counted(jobs.Counters(), results), 1, 1.0)
    walked = []

    def counting(c: jobs.Counters, done: list[EntityResult], items: None = None) -> jobs.Counters:
        walked.append(len(done))
        return counted(c, done, items)

    monkeypatch.setattr(events, "counted", counting)
    progress.Lines(1).notice(event)
    assert sum(walked) == 20_000
    lines = [r for r in caplog.records if r.getMessage() == "progress"]
    assert len(lines) == 20_000
    for index in (0, 1, 2, 9_999, 19_999):
        expected = counted(jobs.Counters(), results[: index + 1])
        assert (lines[index].processed, lines[index].failed) == (expected.processed, expected.failed)  # type: ignore[attr-defined]
