"""writer: upserts of mapped columns only, merges, status stamps, per-source state, bad values, replay."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from runner import migrations, targets, writeplan, writer
from runner.engine import writes
from runner.errors import DatabaseError
from runner.results import EntityResult
from runner.spec import Merge, Outcome, WriteMode
from tests.pg import Database, fault, make_source, with_status, write

APPS = write("apps", ["appid"], ["appid", "name", "price_cents"])
TAGS = write("app_tags", ["appid", "tag"], ["appid", "tag"])
METRICS = write(
    "daily_metrics",
    ["appid", "day"],
    ["appid", "day", "peak", "note"],
    merge=(("peak", Merge.GREATEST), ("note", Merge.KEEP_EXISTING_IF_NULL)),
)
SOURCE = make_source(writes=(APPS, TAGS, METRICS))


@pytest.fixture
def tables(db: Database) -> Database:
    db.migrate(SOURCE)
    db.run(
        "create table apps (appid int primary key, name text, price_cents int check (price_cents >= 0),"
        " owner text, updated_at timestamptz);"
        "create table app_tags (appid int references apps, tag text, primary key (appid, tag));"
        "create table daily_metrics (appid int, day date, peak int, note text, primary key (appid, day))"
    )
    return db


def ok(
    key: int, *rows: tuple[int, list[dict[str, Any]]], outcome: Outcome = Outcome.SUCCESS, **kw: Any
) -> EntityResult:
    return EntityResult(key=key, entity={"appid": key}, outcome=outcome, rows=dict(rows), error_source="example", **kw)


def app(key: int, name: str = "x", price: Any = 100) -> tuple[int, list[dict[str, Any]]]:
    return (0, [{"appid": key, "name": name, "price_cents": price}])


def run(db: Database, results: list[EntityResult], source: Any = SOURCE) -> list[EntityResult]:
    catalog = migrations.check(db.conn, [source])
    return writer.write(db.conn, source, results, catalog=catalog, job_id=None)


def test_upsert_sets_only_mapped_columns(tables: Database) -> None:
    """Columns the source does not map survive; updated_at is touched where the table has it."""
    tables.run("insert into apps values (10, 'old', 5, 'someone else', null)")
    assert run(tables, [ok(10, app(10, "new", 7)), ok(20, app(20))]) == []
    assert tables.rows("select appid, name, price_cents, owner, updated_at is not null from apps order by 1") == [
        (10, "new", 7, "someone else", True),
        (20, "x", 100, None, True),
    ]


def test_rows_are_deduplicated_last_wins(tables: Database) -> None:
    """Two rows with one key in a batch do not fail the statement; the last one is written."""
    assert run(tables, [ok(10, app(10, "first")), ok(10, app(10, "second"))]) == []
    assert tables.rows("select name from apps") == [("second",)]


def test_merge_rules(tables: Database) -> None:
    """greatest never lowers a value; keep_existing_if_null keeps the old value over a null."""
    tables.run("insert into daily_metrics values (10, '2025-01-01', 500, 'kept')")
    rows = [{"appid": 10, "day": "2025-01-01", "peak": 300, "note": None}]
    assert run(tables, [ok(10, (2, rows))]) == []
    assert tables.rows("select peak, note from daily_metrics") == [(500, "kept")]
    rows = [{"appid": 10, "day": "2025-01-01", "peak": 900, "note": "new"}]
    run(tables, [ok(10, (2, rows))])
    assert tables.rows("select peak, note from daily_metrics") == [(900, "new")]


def test_insert_mode_keeps_existing_rows(tables: Database) -> None:
    """mode=insert appends: a row with an existing key is left as it was."""
    source = make_source(writes=(write("apps", ["appid"], ["appid", "name"], mode=WriteMode.INSERT),))
    tables.run("insert into apps (appid, name) values (10, 'old')")
    assert (
        run(tables, [ok(10, (0, [{"appid": 10, "name": "new"}])), ok(20, (0, [{"appid": 20, "name": "b"}]))], source)
        == []
    )
    assert tables.rows("select appid, name from apps order by 1") == [(10, "old"), (20, "b")]


def test_success_stamps_and_upserts_the_status_row(tables: Database) -> None:
    """Success stamps last_<source>_sync, creating the status row when the entity has none."""
    tables.run("insert into sync_status (appid, priority_score) values (10, 40)")
    run(tables, [ok(10, app(10)), ok(20, app(20))])
    assert tables.rows("select appid, priority_score, last_example_sync is not null from sync_status order by 1") == [
        (10, 40, True),
        (20, 0, True),
    ]


def test_skip_stamps_only_when_asked(tables: Database) -> None:
    """A skip stamps with stamp=True and not otherwise; both reset the error state."""
    run(tables, [ok(10, outcome=Outcome.SKIP, stamp=True), ok(20, outcome=Outcome.SKIP)])
    assert tables.rows("select appid from sync_status where last_example_sync is not null") == [(10,)]
    assert tables.rows(
        "select entity_key, consecutive_errors, last_success_at is not null from syncrun_state order by 1"
    ) == [
        ("10", 0, True),
        ("20", 0, True),
    ]


def _state(db: Database, key: str = "10") -> tuple[Any, ...]:
    return db.rows(
        "select consecutive_errors, last_error,"
        " round(extract(epoch from next_attempt_at - now()) / 60), round(extract(epoch from skip_until - now()) / 3600)"
        " from syncrun_state where entity_key = %s",
        (key,),
    )[0]


def test_definitive_errors_back_off_exponentially(tables: Database) -> None:
    """Each definitive error doubles the wait from 15 minutes, capped at 24 hours; success resets it."""
    fail = ok(10, outcome=Outcome.ERROR, error="HTTP 403")
    waits = []
    for _ in range(9):
        run(tables, [fail])
        waits.append(_state(tables)[2])
    assert waits == [15, 30, 60, 120, 240, 480, 960, 1440, 1440]
    assert _state(tables)[:2] == (9, "HTTP 403")
    run(tables, [ok(10, app(10))])
    assert _state(tables) == (0, "HTTP 403", None, None)


def test_transient_errors_do_not_advance_backoff(tables: Database) -> None:
    """A transient failure records its message but neither counts nor backs off."""
    run(tables, [ok(10, outcome=Outcome.ERROR, error="HTTP 403")])
    run(tables, [ok(10, outcome=Outcome.ERROR, error="timeout", definitive=False)])
    assert _state(tables) == (1, "timeout", 15, None)


def test_skip_until_sets_the_skip(tables: Database) -> None:
    """skip_until leaves the entity alone for the given seconds."""
    run(tables, [ok(10, outcome=Outcome.SKIP_UNTIL, skip_until=3 * 3600.0)])
    assert _state(tables) == (0, None, None, 3)


def test_errors_fill_the_seed_error_columns(tables: Database) -> None:
    """Errors write last_error_source/message/at on the status table (dashboards)."""
    tables.run("insert into sync_status (appid) values (10)")
    run(tables, [ok(10, outcome=Outcome.ERROR, error="API error: gone")])
    assert tables.rows("select last_error_source, last_error_message, last_error_at is not null from sync_status") == [
        ("example", "API error: gone", True)
    ]
    no_columns = with_status(SOURCE, error_columns=False)
    run(tables, [ok(10, outcome=Outcome.ERROR, error="other")], no_columns)
    assert tables.scalar("select last_error_message from sync_status") == "API error: gone"


def test_claims_are_released(tables: Database) -> None:
    """Every processed entity's claim is cleared."""
    tables.run(
        "insert into syncrun_state (source, entity_key, claimed_by, claim_expires_at) values"
        " ('example', '10', 'me', now() + interval '1 hour'), ('example', '20', 'me', now() + interval '1 hour')"
    )
    run(tables, [ok(10, app(10)), ok(20, outcome=Outcome.ERROR, error="x")])
    assert tables.rows("select claimed_by, claim_expires_at from syncrun_state") == [(None, None), (None, None)]


def test_a_value_that_does_not_fit_fails_only_its_entity(tables: Database) -> None:
    """'abc' for an int column makes that entity an error naming table, column and value."""
    failed = run(tables, [ok(10, app(10)), ok(20, app(20, price="abc")), ok(30, app(30, price="42"))])
    assert [(f.key, f.outcome, f.error) for f in failed] == [
        (20, Outcome.ERROR, "apps.price_cents: 'abc' is not an integer")
    ]
    assert tables.rows("select appid, price_cents from apps order by 1") == [(10, 100), (30, 42)]
    assert _state(tables, "20")[:2] == (1, "apps.price_cents: 'abc' is not an integer")


def test_a_constraint_violation_is_replayed_per_entity(tables: Database) -> None:
    """A check or FK failure sinks only the entity that caused it; the others are written."""
    results = [
        ok(10, app(10), (1, [{"appid": 10, "tag": "rpg"}])),
        ok(20, app(20, price=-5)),
        ok(30, (1, [{"appid": 999, "tag": "orphan"}])),
        ok(40, app(40)),
    ]
    failed = run(tables, results)
    assert [(f.key, f.error) for f in failed] == [
        (20, 'apps: new row for relation "apps" violates check constraint "apps_price_cents_check"'),
        (
            30,
            'app_tags: insert or update on table "app_tags" violates foreign key constraint "app_tags_appid_fkey"'
            ' (Key (appid)=(999) is not present in table "apps".)',
        ),
    ]
    assert failed[0].entity is results[1].entity  # the engine matches failures by their entity
    assert tables.rows("select appid from apps order by 1") == [(10,), (40,)]
    assert tables.rows("select appid from sync_status where last_example_sync is not null order by 1") == [(10,), (40,)]
    assert tables.rows("select entity_key, consecutive_errors from syncrun_state order by 1") == [
        ("10", 0),
        ("20", 1),
        ("30", 1),
        ("40", 0),
    ]


def test_before_commit_runs_last_inside_the_batch_transaction(tables: Database) -> None:
    """`before_commit` gets the attempt's failed results (an unfit value, a replayed constraint
    violation) and the primary write's counts inside the batch's transaction: what it writes commits
    with the rows (the engine puts the job row's counters there), and when it fails nothing commits."""
    catalog = migrations.check(tables.conn, [SOURCE])
    seen: list[tuple[list[Any], int, int, Any]] = []

    def before(conn: psycopg.Connection, failed: list[EntityResult], counts: writer.Tally) -> None:
        written = conn.execute("select array_agg(appid order by appid) from apps").fetchone()
        seen.append(([f.key for f in failed], counts.created, counts.updated, written and written[0]))

    results = [ok(10, app(10)), ok(20, app(20, price="abc")), ok(30, app(30, price=-5)), ok(40, app(40))]
    failed = writer.write(tables.conn, SOURCE, results, catalog=catalog, before_commit=before)
    assert [f.key for f in failed] == [20, 30]
    # the first attempt rolled back at the check violation, before before_commit; the replay calls it
    assert seen == [([20, 30], 2, 0, [10, 40])]

    def refuse(conn: psycopg.Connection, failed: list[EntityResult], counts: writer.Tally) -> None:
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        writer.write(tables.conn, SOURCE, [ok(50, app(50))], catalog=catalog, before_commit=refuse)
    assert tables.rows("select appid from apps order by 1") == [(10,), (40,)]
    assert tables.scalar("select count(*) from syncrun_state where entity_key = '50'") == 0


def test_deadlocks_retry_the_batch(tables: Database) -> None:
    """A deadlock retries the whole batch."""
    fault(tables, "apps", "40P01", "deadlock detected", times=1)
    assert run(tables, [ok(10, app(10))]) == []
    assert tables.rows("select appid from apps") == [(10,)]
    assert tables.rows("select last_value from fault_calls") == [(2,)]  # refused once, then written


def test_repeated_serialization_failures_become_a_database_error(tables: Database) -> None:
    fault(tables, "apps", "40001", "could not serialize access", times=None)
    with pytest.raises(DatabaseError, match="writing example: gave up after 3 attempts: could not serialize access"):
        run(tables, [ok(10, app(10))])
    assert tables.rows("select appid from apps") == []


def test_large_batches_go_through_copy_with_the_same_semantics(tables: Database) -> None:
    """From COPY_FROM rows on, COPY + insert…select keeps merges, dedup, updated_at and unmapped columns."""
    tables.run("insert into apps (appid, name, owner) values (1, 'old', 'someone else')")
    tables.run("insert into daily_metrics values (1, '2025-01-01', 500, 'kept')")
    count = targets.COPY_FROM + 10
    metrics = [{"appid": i, "day": "2025-01-01", "peak": 100, "note": None} for i in range(1, count + 1)]
    results = [ok(i, app(i, f"app {i}", i)) for i in range(1, count + 1)] + [
        ok(1, app(1, "last wins", 1), (2, metrics))
    ]
    assert run(tables, results) == []
    assert tables.rows("select name, owner, updated_at is not null from apps where appid = 1") == [
        ("last wins", "someone else", True)
    ]
    assert tables.scalar("select count(*) from apps") == count
    assert tables.rows("select peak, note from daily_metrics where appid = 1") == [(500, "kept")]
    assert tables.scalar("select count(*) from daily_metrics") == count


def test_a_bad_row_in_a_copied_batch_is_replayed_per_entity(tables: Database) -> None:
    """A check violation inside the COPY path still sinks only its entity."""
    count = targets.COPY_FROM + 5
    results = [ok(i, app(i, price=-1 if i == 7 else i)) for i in range(1, count + 1)]
    failed = run(tables, results)
    assert [(f.key, f.error) for f in failed] == [
        (7, 'apps: new row for relation "apps" violates check constraint "apps_price_cents_check"')
    ]
    assert tables.scalar("select count(*) from apps") == count - 1


def test_status_set_columns_are_written_with_the_stamp(tables: Database) -> None:
    """status_values (the source's status.set) land on the status row with the stamp; others are kept."""
    tables.run("alter table sync_status add column storefront_accessible boolean")
    tables.run("insert into sync_status (appid, storefront_accessible, priority_score) values (10, false, 7)")
    run(tables, [ok(10, app(10), status_values={"storefront_accessible": True}), ok(20, app(20))])
    assert tables.rows(
        "select appid, storefront_accessible, priority_score, last_example_sync is not null from sync_status order by 1"
    ) == [(10, True, 7, True), (20, None, 0, True)]
    failed = run(tables, [ok(30, app(30), status_values={"storefront_accessible": "maybe"})])
    assert [f.error for f in failed] == ["sync_status.storefront_accessible: 'maybe' is not a boolean"]


def test_an_entity_twice_in_a_batch_applies_its_outcomes_in_order(tables: Database) -> None:
    """One statement cannot update a row twice: a repeated entity's state goes in a second round, so
    two errors count twice (as row by row), and the last error is the one on the status row."""
    tables.run("insert into sync_status (appid) values (10)")
    fail = [ok(10, outcome=Outcome.ERROR, error=f"HTTP 50{i}") for i in range(2)]
    assert run(tables, [*fail, ok(20, app(20))]) == []
    assert _state(tables)[:3] == (2, "HTTP 501", 30)
    assert tables.scalar("select last_error_message from sync_status where appid = 10") == "HTTP 501"
    run(tables, [ok(10, outcome=Outcome.ERROR, error="again"), ok(10, app(10))])
    assert _state(tables) == (0, "again", None, None)
    assert tables.rows("select entity_key, consecutive_errors from syncrun_state order by 1") == [("10", 0), ("20", 0)]


def test_values_that_cannot_go_as_arrays_are_written_row_by_row(tables: Database) -> None:
    """An array column, or a numeric column holding ints and floats, falls back from unnest to
    executemany (and a status.set column likewise); COPY takes either."""
    tables.run("create table scores (appid int primary key, tags int[], score numeric)")
    tables.run("alter table sync_status add column rating numeric")
    source = make_source(writes=(write("scores", ["appid"], ["appid", "tags", "score"]),))
    rows = [(0, [{"appid": i, "tags": [i, i + 1], "score": 1.5 if i % 2 else i}]) for i in range(1, 4)]
    values = [{"rating": 2.5}, {"rating": 3}, {"rating": "4"}]
    results = [ok(i, row, status_values=extra) for (i, row), extra in zip(enumerate(rows, 1), values, strict=True)]
    assert run(tables, results, source) == []
    assert tables.rows("select appid, tags, score from scores order by 1") == [
        (1, [1, 2], 1.5),
        (2, [2, 3], 2),
        (3, [3, 4], 1.5),
    ]
    assert tables.rows("select appid, rating from sync_status order by 1") == [(1, 2.5), (2, 3), (3, 4)]
    count = targets.COPY_FROM + 1
    many = [ok(i, (0, [{"appid": i, "tags": [i], "score": 0.5 if i % 2 else i}])) for i in range(1, count + 1)]
    assert run(tables, many, source) == []
    assert tables.scalar("select sum(score) from scores") == sum(0.5 if i % 2 else i for i in range(1, count + 1))


def test_the_copy_temp_table_is_kept_empty_across_batches(tables: Database) -> None:
    """The per-target temp table survives commits (created if missing in every transaction), empty;
    a rolled-back batch (replayed) does not break the next one."""
    count = targets.COPY_FROM + 5
    for price in (1, -1, 2):  # -1: a check violation, the batch is replayed entity by entity
        results = [ok(i, app(i, price=price if i == 3 else i)) for i in range(1, count + 1)]
        failed = run(tables, results)
        assert [f.key for f in failed] == ([3] if price < 0 else [])
        temp = tables.conn.execute(
            # this session's temp schema only: other sessions on a shared database have their own
            "select relname from pg_class where relnamespace = pg_my_temp_schema()"
            " and relname like '\\_syncrun\\_rows\\_%'"
        ).fetchall()
        assert len(temp) == 1
        assert tables.conn.execute(f'select count(*) from pg_temp."{temp[0][0]}"').fetchone() == (0,)
        tables.conn.commit()
    assert tables.rows("select price_cents from apps where appid = 3") == [(2,)]
    assert tables.scalar("select count(*) from apps") == count
    with tables.conn.transaction():  # a caller's transaction around two batches: no commit between them
        for name in ("first", "second"):
            assert run(tables, [ok(i, app(i, name)) for i in range(1, count + 1)]) == []
    assert tables.rows("select distinct name from apps") == [("second",)]


def test_writes_are_fenced_to_the_claim_holder(tables: Database) -> None:
    """A runner whose claim expired and went to another runner writes nothing for that entity (rows,
    status, state); the entities it still holds are written."""
    tables.run(
        "insert into syncrun_state (source, entity_key, claimed_by, claim_expires_at) values"
        " ('example', '10', 'runner-a', now() + interval '1 minute'),"
        " ('example', '20', 'runner-b', now() + interval '1 minute')"
    )
    catalog = migrations.check(tables.conn, [SOURCE])
    failed = writer.write(tables.conn, SOURCE, [ok(10, app(10)), ok(20, app(20))], catalog=catalog, holder="runner-a")
    assert [(r.key, r.definitive) for r in failed] == [(20, False)]
    assert "claim lost" in (failed[0].error or "")
    assert tables.rows("select appid from apps") == [(10,)]
    assert tables.rows("select entity_key, claimed_by from syncrun_state order by 1") == [
        ("10", None),
        ("20", "runner-b"),
    ]


def _page(key: int, first: int, count: int, **values: Any) -> EntityResult:
    """A bulk entity: `count` app rows from appid `first`, with `values` replacing name / price_cents."""
    rows = [{"appid": i, "name": f"app {i}", "price_cents": i, **values} for i in range(first, first + count)]
    return ok(key, (0, rows))


def test_fitted_pages_are_checked_off_the_write_path_and_still_converted_or_refused(
    tables: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`writer.fitted` works out a bulk page's writes whose rows need no conversion (the engine calls
    it as it hands a page over); the writer reads that instead of checking the batch's columns again,
    and still converts a page of numbers as text, keeps NULLs, and refuses a NUL in text as that
    entity's outcome. A page under FITTED_FROM rows is left to the batch's own check."""
    catalog = migrations.check(tables.conn, [SOURCE])
    n = writer.FITTED_FROM
    pages = [
        _page(1, 1, n),
        _page(2, n + 1, n, price_cents="42"),
        _page(3, 2 * n + 1, n, name="a\x00b"),
        _page(4, 3 * n + 1, n, name=None, price_cents=None),
    ]
    fitted = [writer.fitted(SOURCE, catalog, page) for page in pages]
    assert [page.fits for page in fitted] == [frozenset({0}), frozenset(), frozenset(), frozenset({0})]
    # the same from the columns the engine made for weighing the page (hand_over)
    assert [writer.fitted(SOURCE, catalog, page, writes.columns(page.rows)).fits for page in pages] == [
        page.fits for page in fitted
    ]
    assert writer.fitted(SOURCE, catalog, _page(5, 4 * n + 1, 1)).fits is None

    checks: list[int] = []
    as_is = writeplan.WritePlan.as_is
    monkeypatch.setattr(writeplan.WritePlan, "as_is", lambda plan, rows: checks.append(len(rows)) or as_is(plan, rows))
    failed = writer.write(tables.conn, SOURCE, fitted, catalog=catalog)
    assert checks == []  # every page's fits known: no column checked again on the write path
    assert [(f.key, f.error) for f in failed] == [
        (3, "apps.name: 'a\\x00b' contains a NUL character, which PostgreSQL text cannot store")
    ]
    assert tables.scalar("select count(*) from apps") == 3 * n
    assert tables.rows(f"select distinct price_cents from apps where appid between {n + 1} and {2 * n}") == [(42,)]
    assert tables.rows(f"select distinct name, price_cents from apps where appid > {3 * n}") == [(None, None)]

    # one page without fits (a few rows): the batch's rows are checked together, as before
    failed = writer.write(tables.conn, SOURCE, [fitted[0], _page(5, 4 * n + 1, 1, price_cents="7")], catalog=catalog)
    assert failed == []
    assert checks == [n + 1]
    assert tables.scalar(f"select price_cents from apps where appid = {4 * n + 1}") == 7


def test_rows_that_need_no_conversion_take_the_binary_copy_without_a_scan(
    tables: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows found to need no conversion hold exactly the Python types the binary COPY is made from, so
    `WritePlan.binary`'s scan of every value is skipped; rows that were converted are still scanned."""
    catalog = migrations.check(tables.conn, [SOURCE])
    n = targets.COPY_FROM
    scans: list[int] = []
    binary = writeplan.WritePlan.binary
    monkeypatch.setattr(
        writeplan.WritePlan, "binary", lambda plan, params: scans.append(len(params)) or binary(plan, params)
    )
    temps: list[bool] = []
    binary_temp = writeplan.WritePlan.binary_temp
    monkeypatch.setattr(
        writeplan.WritePlan, "binary_temp", lambda plan, cursor: temps.append(True) or binary_temp(plan, cursor)
    )
    assert writer.write(tables.conn, SOURCE, [_page(1, 1, n)], catalog=catalog) == []
    assert (scans, temps) == ([], [True])  # binary COPY, no scan
    assert writer.write(tables.conn, SOURCE, [_page(2, n + 1, n, price_cents="5")], catalog=catalog) == []
    assert (scans, temps) == ([n], [True, True])  # converted: scanned, then binary all the same
    assert tables.scalar(f"select count(*) from apps where appid > {n} and price_cents = 5") == n
