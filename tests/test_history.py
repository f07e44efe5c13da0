"""history: which entities failed on their previous attempt (the breaker does not count them)."""

from __future__ import annotations

from runner import history
from tests.pg import Database


def test_failed_before_reads_every_kind_of_failure(db: Database) -> None:
    db.migrate()
    db.run(
        "insert into syncrun_state (source, entity_key, last_error, last_error_at, last_success_at,"
        " consecutive_errors, transient_runs, refused) values"
        " ('s', '1', 'x', now(), now() - interval '1 hour', 0, 0, false),"  # error after the last success
        " ('s', '2', 'x', now() - interval '1 hour', now(), 0, 0, false),"  # succeeded since
        " ('s', '3', null, null, now(), 1, 0, false),"  # a definitive count
        " ('s', '4', null, null, now(), 0, 2, false),"  # transiently failed runs
        " ('s', '5', 'x', null, null, 0, 0, true),"  # refused
        " ('s', '6', 'x', now(), null, 0, 0, false),"  # never succeeded, failed
        " ('t', '7', 'x', now(), null, 0, 0, false)"  # another source
    )
    assert history.failed_before(db.conn, "s", [1, 2, 3, 4, 5, 6, 7, 8]) == {"1", "3", "4", "5", "6"}
    assert history.failed_before(db.conn, "s", []) == set()
