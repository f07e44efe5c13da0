"""jobs: the sync_jobs row lifecycle (start, heartbeat, finish, reap, recent)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from runner import jobs
from tests.pg import Database, make_source


@pytest.fixture
def migrated(db: Database) -> Database:
    db.migrate(make_source())
    return db


def test_start_inserts_a_running_row_with_a_heartbeat(migrated: Database) -> None:
    """start commits a running row at once, with batch size, run id, metadata and heartbeat."""
    job = jobs.start(migrated.conn, "example", batch_size=50, github_run_id="123", metadata={"partition": "0/2"})
    with migrated.connect() as other:  # visible to another connection: committed
        row = other.execute(
            "select job_type, status, batch_size, github_run_id, metadata, heartbeat_at is not null"
            " from sync_jobs where id = %s",
            (job,),
        ).fetchone()
    assert row == ("example", "running", 50, "123", {"partition": "0/2"}, True)


def test_heartbeat_and_finish_write_counters(migrated: Database) -> None:
    """heartbeat updates the counters; finish sets status, completed_at, counters and the message."""
    job = jobs.start(migrated.conn, "example")
    jobs.heartbeat(migrated.conn, job, jobs.Counters(processed=3, succeeded=2, failed=1, requests=7))
    assert migrated.rows("select items_processed, items_failed, requests_made from sync_jobs") == [(3, 1, 7)]
    final = jobs.Counters(processed=5, succeeded=3, failed=1, skipped=1, created=2, updated=1, requests=9)
    jobs.finish(migrated.conn, job, "failed", final, "RunFailed: boom")
    assert migrated.rows(
        "select status, completed_at is not null, items_processed, items_succeeded, items_failed, items_skipped,"
        " items_created, items_updated, requests_made, error_message from sync_jobs"
    ) == [("failed", True, 5, 3, 1, 1, 2, 1, 9, "RunFailed: boom")]


def test_finish_rejects_unknown_statuses(migrated: Database) -> None:
    """Only completed, failed and cancelled end a job."""
    job = jobs.start(migrated.conn, "example")
    with pytest.raises(
        ValueError, match="job status must be one of \\['cancelled', 'completed', 'failed'\\], not 'done'"
    ):
        jobs.finish(migrated.conn, job, "done", jobs.Counters())


def test_reap_fails_silent_running_jobs_of_any_type(migrated: Database) -> None:
    """Running jobs silent past the timeout (heartbeat, else started_at) fail; others are left alone."""
    migrated.run(
        "insert into sync_jobs (job_type, status, started_at, heartbeat_at) values"
        " ('storefront', 'running', now() - interval '2 hours', now() - interval '20 minutes'),"
        " ('reviews', 'running', now() - interval '3 hours', null),"
        " ('example', 'running', now() - interval '2 hours', now() - interval '1 minute'),"
        " ('histogram', 'running', now() - interval '1 minute', null),"
        " ('applist', 'completed', now() - interval '5 hours', null)"
    )
    assert jobs.reap(migrated.conn, 600) == 2
    assert migrated.rows(
        "select job_type, status, error_message, completed_at is not null from sync_jobs order by job_type"
    ) == [
        ("applist", "completed", None, False),
        ("example", "running", None, False),
        ("histogram", "running", None, False),
        ("reviews", "failed", "abandoned: no heartbeat for 600s", True),
        ("storefront", "failed", "abandoned: no heartbeat for 600s", True),
    ]


def test_recent_lists_newest_first(migrated: Database) -> None:
    """recent returns the last n jobs of one type with their counters."""
    first = jobs.start(migrated.conn, "example")
    jobs.finish(migrated.conn, first, "completed", jobs.Counters(processed=2, succeeded=2))
    migrated.run("update sync_jobs set started_at = now() - interval '1 hour'")
    second = jobs.start(migrated.conn, "example")
    jobs.start(migrated.conn, "other")
    listed = jobs.recent(migrated.conn, "example", 5)
    assert [(j.id, j.status) for j in listed] == [(second, "running"), (first, "completed")]
    assert listed[1].counters == jobs.Counters(processed=2, succeeded=2)


def test_finish_merges_metadata_into_the_row(migrated: Database) -> None:
    """A list source's listing state joins the metadata the job started with; none leaves it alone."""
    job = jobs.start(migrated.conn, "example", metadata={"partition": "0/2"})
    jobs.finish(migrated.conn, job, "completed", jobs.Counters(), metadata={"listing": "capped"})
    other = jobs.start(migrated.conn, "example")
    jobs.finish(migrated.conn, other, "completed", jobs.Counters())
    assert migrated.rows("select metadata from sync_jobs order by started_at, id") in (
        [({"partition": "0/2", "listing": "capped"},), (None,)],
        [(None,), ({"partition": "0/2", "listing": "capped"},)],
    )


def test_a_checkpoint_keeps_the_listings_start_and_pages(migrated: Database) -> None:
    """The listing's start and its pages so far travel with the position; a bare position (written
    before they were kept) reads back with neither."""
    started = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    jobs.save_cursor(migrated.conn, "list", "abc", None, listing_started_at=started, pages=2)
    assert jobs.load_cursor(migrated.conn, "list") == jobs.Checkpoint("abc", started, 2)
    migrated.run("""update syncrun_cursors set cursor = '"abc"'""")
    assert jobs.load_cursor(migrated.conn, "list") == jobs.Checkpoint("abc", None, 0)
    jobs.clear_cursor(migrated.conn, "list")
    assert jobs.load_cursor(migrated.conn, "list") is None
