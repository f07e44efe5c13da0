"""jobs: the sync_jobs row lifecycle (start, heartbeat, finish, reap, recent)."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner import breaker, engine, jobs, migrations, spec, targets, writer
from runner.results import EntityResult
from runner.spec import Outcome, WriteMode
from tests.pg import Database, make_source, write


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


def test_beat_within_commits_with_the_callers_transaction_or_is_undone_alone(migrated: Database) -> None:
    """beat_within updates the counters inside the caller's transaction (they commit with it, or not
    at all); refused (a trigger), its update alone is undone, the error raised, and the caller's other
    changes still commit. A job id is bound on this side, quoted: no statement of its own."""
    job = jobs.start(migrated.conn, "example")
    conn = migrated.conn

    def failing_batch() -> None:
        with conn.transaction():
            jobs.beat_within(conn, job, jobs.Counters(processed=4))
            raise RuntimeError("the batch failed")

    with pytest.raises(RuntimeError):
        failing_batch()
    assert migrated.rows("select items_processed from sync_jobs") == [(0,)]
    with conn.transaction():
        jobs.beat_within(conn, job, jobs.Counters(processed=5, requests=6))
    assert migrated.rows("select items_processed, requests_made from sync_jobs") == [(5, 6)]
    migrated.run(
        "create function refuse() returns trigger language plpgsql as $$ begin raise exception 'no counting'; end $$;"
        " create trigger refuse before update on sync_jobs for each row execute function refuse();"
        " create table kept (x int)"
    )
    with conn.transaction():
        conn.execute("insert into kept values (1)")
        with pytest.raises(psycopg.errors.RaiseException, match="no counting"):
            jobs.beat_within(conn, job, jobs.Counters(processed=9))
        conn.execute("insert into kept values (2)")
    assert migrated.rows("select x from kept order by x") == [(1,), (2,)]
    assert migrated.rows("select items_processed from sync_jobs") == [(5,)]
    with conn.transaction(), pytest.raises(psycopg.errors.InvalidTextRepresentation):  # a value, not SQL
        jobs.beat_within(conn, "x'); drop table kept; --", jobs.Counters())
    assert migrated.scalar("select count(*) from kept") == 2


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


# --- items_created / items_updated: the primary write's inserted and updated rows -------------------------
def counted(db: Database, source: Any, results: list[Any]) -> tuple[tuple[int, int], list[Any]]:
    tally = writer.Tally()
    failed = writer.write(db.conn, source, results, catalog=migrations.check(db.conn, [source]), tally=tally)
    return (tally.created, tally.updated), [f.key for f in failed]


@pytest.fixture
def apps(db: Database) -> Database:
    db.migrate(COUNTED)
    db.run(
        "create table apps (appid int primary key, name text, price_cents int check (price_cents >= 0));"
        "create table app_tags (appid int, tag text, primary key (appid, tag))"
    )
    return db


APPS = write("apps", ["appid"], ["appid", "name", "price_cents"])
TAGS = write("app_tags", ["appid", "tag"], ["appid", "tag"])
COUNTED = make_source(writes=(TAGS, replace(APPS, primary=True)))


def entity(appid: int, price: int = 1, tags: int = 2) -> EntityResult:
    rows = {
        0: [{"appid": appid, "tag": f"t{i}"} for i in range(tags)],
        1: [{"appid": appid, "name": "x", "price_cents": price}],
    }
    return EntityResult(key=appid, entity={"appid": appid}, outcome=Outcome.SUCCESS, rows=rows)


@pytest.mark.parametrize("size", [1, 3, targets.COPY_FROM + 2])  # executemany, unnest, COPY
def test_created_and_updated_count_the_primary_writes_rows(apps: Database, size: int) -> None:
    """The write marked primary is counted (not the first write, whose tags would count twice per app):
    new rows are created, rows the upsert rewrote are updated, whichever way the rows travelled."""
    assert counted(apps, COUNTED, [entity(i) for i in range(1, size + 1)]) == ((size, 0), [])
    again = [entity(i, price=2) for i in range(1, size + 2)]  # every earlier app again, and one new
    assert counted(apps, COUNTED, again) == ((1, size), [])


def test_a_rolled_back_entity_counts_nothing(apps: Database) -> None:
    """A batch replayed entity by entity (one bad price): only the rows that committed are counted."""
    assert counted(apps, COUNTED, [entity(1), entity(2, price=-1), entity(3)]) == ((2, 0), [2])


def test_mode_insert_counts_only_inserted_rows(apps: Database) -> None:
    source = make_source(writes=(TAGS, replace(APPS, mode=WriteMode.INSERT, primary=True)))
    assert counted(apps, source, [entity(1), entity(2)]) == ((2, 0), [])
    assert counted(apps, source, [entity(1), entity(3)]) == ((1, 0), [])  # the existing row was left alone


def test_the_primary_write_defaults_to_the_first_table_write() -> None:
    function = replace(APPS, function=spec.QualifiedName(None, "f"))
    assert writer.primary(make_source(writes=(TAGS, APPS))) == 0
    assert writer.primary(make_source(writes=(function, APPS))) == 1
    assert writer.primary(make_source(writes=(TAGS, replace(APPS, primary=True)))) == 1
    assert writer.primary(make_source(writes=(function,))) is None


def test_a_row_inserted_earlier_in_the_same_batch_counts_as_updated(apps: Database) -> None:
    """steamspy's shape: an insert-only write, then an upsert of the same rows in one transaction. The
    primary upsert finds rows the batch itself created: they count as updated (they existed when it ran)."""
    first = replace(APPS, mode=WriteMode.INSERT, columns=APPS.columns[:2])
    source = make_source(writes=(first, replace(APPS, primary=True)))
    results = [
        EntityResult(
            key=i,
            entity={"appid": i},
            outcome=Outcome.SUCCESS,
            rows={0: [{"appid": i, "name": "x"}], 1: [{"appid": i, "name": "y", "price_cents": 1}]},
        )
        for i in (1, 2)
    ]
    assert counted(apps, source, results) == ((0, 2), [])


# --- stable error_message texts (docs/cli.md lists them) ---------------------------------------------------
STABLE = {
    jobs.ABANDONED.format(seconds=300): "abandoned: no heartbeat for 300s",
    engine.FAIL_RATIO.format(failed=3, processed=10, what="entities", ratio=0.1): (
        "3 of 10 entities failed, above fail_ratio 0.1"
    ),
    engine.CANCELLED.format(signal="SIGTERM"): "cancelled by SIGTERM",
    engine.LISTING_PAGE_FAILED.format(page=2, error="HTTP 503"): "page 2 of the listing failed: HTTP 503",
    engine.BUSY_IDS.format(count=2, ids="7, 9", holder="held by vm:12:ab until 04:43:11 UTC"): (
        "2 of the --ids were not run: another runner holds them (7, 9; held by vm:12:ab until 04:43:11 UTC);"
        " run them again when it has finished (a claim lapses --lease seconds after its runner's last heartbeat)"
    ),
}


def test_error_messages_are_stable_and_documented() -> None:
    """Dashboards match on these: each text is pinned here and listed in docs/cli.md."""
    for made, expected in STABLE.items():
        assert made == expected
    documented = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    for template in (jobs.ABANDONED, engine.FAIL_RATIO, engine.CANCELLED, engine.LISTING_PAGE_FAILED, engine.BUSY_IDS):
        shown = template.replace("{", "<").replace("}", ">")
        assert f"`{shown}`" in documented, shown
    assert "`circuit breaker: stopped after" in documented
    for made in breaker_texts():
        assert made.startswith("circuit breaker: ")
        assert any(re.fullmatch(form, made) for form in documented_breaker_forms(documented)), made
    breaker_ = breaker.Breaker()
    trip = None
    for _ in range(breaker.AUTH_TRIP):
        trip = breaker_.observe(failed=True, auth=True, transient=False)
    assert trip is not None
    assert trip.startswith("circuit breaker: stopped after 5 consecutive authentication failures")


def breaker_texts() -> list[str]:
    """Every form a breaker's error_message takes (review13 F4): both trips, stopped or ended, with or
    without entities finishing after the trip, for K = 3, 1 and 0."""
    out = []
    for auth, trip in ((True, breaker.AUTH_TRIP), (False, breaker.OUTAGE_TRIP)):
        for k in (3, 1, 0):
            for late in (0, 1, 2):
                b = breaker.Breaker(transient_runs=k)
                for _ in range(trip + late):
                    b.observe(failed=True, auth=auth, transient=not auth)
                out += [str(b.message()), str(b.message(stopped=False))]
    return out


def documented_breaker_forms(documented: str) -> list[str]:
    """docs/cli.md's breaker rows, every combination, as regular expressions (`<…>` matches anything)."""
    auth, outage, ended, late = re.findall(r"^\| `(circuit breaker: [^`]*)`", documented, re.MULTILINE)
    assert ended == "circuit breaker: the run ended on <what> (nothing was left to stop) — <tail>"
    pairs = [row.removeprefix("circuit breaker: stopped after ").split(" — ") for row in (auth, outage)]
    what, tail = pairs[1]
    pairs.append([what, tail.split(" and backs off")[0] + " and never backs off for it (backoff.transient_runs: 0)"])
    in_flight = late.split("<either form>")[1].split(" — ")[0]
    forms = []
    for what, tail in pairs:
        for head in (f"stopped after {what}", f"the run ended on {what} (nothing was left to stop)"):
            for middle in ("", in_flight):
                form = f"circuit breaker: {head}{middle} — {tail}"
                forms.append(".+?".join(re.escape(part) for part in re.split(r"<[^>]*>", form)))
    return forms
