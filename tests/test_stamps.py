"""stamps: an entity's status row is updated when it has one and created when it has none; failures
say "status stamp" and where."""

from __future__ import annotations

from typing import Any

import pytest

from runner import migrations, writer
from runner.errors import DatabaseError
from runner.results import EntityResult
from runner.spec import Field, Outcome
from tests.pg import Database, expr, make_source, with_status, write

APPS = write("apps", ["appid"], ["appid", "name"])
SOURCE = with_status(make_source(writes=(APPS,), priority_column=None, syncable_column=None, interval_column=None))


@pytest.fixture
def stations(db: Database) -> Database:
    """The issue's status table: a NOT NULL column the stamp cannot fill, a generated column, and a
    generated updated_at (which the stamp must not touch)."""
    db.migrate(SOURCE)
    db.run(
        "create table apps (appid int primary key, name text);"
        " alter table sync_status add column name text not null default 'x';"
        " alter table sync_status alter column name drop default;"
        " alter table sync_status add column token text generated always as (upper(name)) stored;"
        " alter table sync_status add column updated_at timestamptz generated always as (null) stored;"
        " insert into sync_status (appid, name) values (10, 'ten'), (20, 'twenty')"
    )
    return db


def ok(key: int, outcome: Outcome = Outcome.SUCCESS, **kw: Any) -> EntityResult:
    rows = {0: [{"appid": key, "name": f"app {key}"}]} if outcome is Outcome.SUCCESS else {}
    return EntityResult(key=key, entity={"appid": key}, outcome=outcome, rows=rows, error_source="example", **kw)


def run(db: Database, results: list[EntityResult], source: Any = SOURCE) -> list[EntityResult]:
    catalog = migrations.check(db.conn, [source])
    return writer.write(db.conn, source, results, catalog=catalog, job_id=None)


def test_entities_with_a_status_row_are_updated_whatever_the_table_holds(stations: Database) -> None:
    """A plain update: the NOT NULL column and the generated ones are left alone (an upsert failed here,
    PostgreSQL checking the insert's NOT NULL before it looks for the conflict)."""
    assert run(stations, [ok(10), ok(20)]) == []
    assert stations.rows("select appid, token, last_example_sync is not null from sync_status order by 1") == [
        (10, "TEN", True),
        (20, "TWENTY", True),
    ]


def test_an_entity_without_a_row_it_cannot_create_fails_naming_the_status_stamp(stations: Database) -> None:
    """Creating the missing row fails on the NOT NULL column: that entity fails (its rows are not
    written), the message says status stamp, table and column; the others commit."""
    failed = run(stations, [ok(10), ok(30)])
    assert [(f.key, f.error) for f in failed] == [
        (
            30,
            "status stamp, creating the status row the entity lacks (sync_status.last_example_sync):"
            ' sync_status: null value in column "name" of relation "sync_status" violates not-null constraint',
        )
    ]
    assert stations.rows("select appid from apps") == [(10,)]
    assert stations.scalar("select count(*) from sync_status where last_example_sync is not null") == 1


def test_a_missing_row_is_created(db: Database) -> None:
    """An sql/function selection may pick an entity a listing found, with no status row: it gets one,
    with the `status.set` columns, so it looks synced; existing rows keep their other columns."""
    source = with_status(SOURCE, set=(Field("accessible", expr("`true`")),))
    db.migrate(source)
    db.run(
        "create table apps (appid int primary key, name text);"
        " alter table sync_status add column accessible boolean, add column note text;"
        " insert into sync_status (appid, note) values (10, 'kept')"
    )
    results = [ok(key, status_values={"accessible": True}) for key in (10, 30, 40)]
    assert run(db, results, source) == []
    assert db.rows("select appid, accessible, note, last_example_sync is not null from sync_status order by 1") == [
        (10, True, "kept", True),
        (30, True, None, True),
        (40, True, None, True),
    ]


def test_a_column_the_stamp_may_not_write_fails_the_run_naming_it(db: Database) -> None:
    """Not a data error (no entity's fault): a DatabaseError naming the status stamp, table and column."""
    source = with_status(SOURCE, set=(Field("token", expr("'x'")),))
    db.migrate(source)
    db.run(
        "create table apps (appid int primary key, name text);"
        " alter table sync_status add column token text generated always as ('t') stored;"
        " insert into sync_status (appid) values (10)"
    )
    catalog = migrations.check(db.conn, [SOURCE])  # checked without the `set`: only the write can find it
    with pytest.raises(DatabaseError) as error:
        writer.write(db.conn, source, [ok(10, status_values={"token": "x"})], catalog=catalog)
    assert str(error.value) == (
        'status stamp (sync_status.last_example_sync) failed on sync_status: column "token" can only be updated'
        " to DEFAULT"
    )


# --- the seed's error columns (issue #13) ------------------------------------------------------------
@pytest.fixture
def seeded(db: Database) -> Database:
    """A seed-shaped status table with errors already recorded: a counter with a default, one without."""
    db.migrate(SOURCE)
    db.run(
        "create table apps (appid int primary key, name text);"
        " alter table sync_status add column consecutive_errors int default 0;"
        " insert into sync_status (appid, consecutive_errors, last_error_source, last_error_message, last_error_at)"
        " values (10, 2, 'other', 'old', now() - interval '1 day'), (20, 2, 'example', 'old', now()),"
        " (30, null, null, null, null), (40, 0, 'example', 'old', now())"
    )
    return db


SEED_COLUMNS = "select appid, consecutive_errors, last_error_source, last_error_message, last_error_at is not null"


def test_a_success_clears_the_error_columns_and_a_failure_counts(seeded: Database) -> None:
    """Like the seed's workers: a success (the stamp, in the same statement) sets consecutive_errors 0
    and clears last_error_*, whichever source wrote them; a failure adds one (a NULL counter counts
    from 0) and records itself; a skip that does not stamp leaves them as they are. In one
    batch or one entity at a time."""
    failure = {"outcome": Outcome.ERROR, "error": "HTTP 503", "definitive": False}
    for bulk in (True, False):
        seeded.run(
            "update sync_status set consecutive_errors = case appid when 30 then null else 2 end,"
            " last_error_source = 'other', last_error_message = 'old', last_error_at = now()"
            " where appid <> 30"
        )
        results = [ok(10), ok(20, **failure), ok(30, **failure), ok(40, Outcome.SKIP)]
        if bulk:
            assert run(seeded, results) == []
        else:
            for result in results:
                assert run(seeded, [result]) == []
        assert seeded.rows(SEED_COLUMNS + " from sync_status order by 1") == [
            (10, 0, None, None, False),
            (20, 3, "example", "HTTP 503", True),
            (30, 1, "example", "HTTP 503", True),
            (40, 2, "other", "old", True),
        ]
        seeded.run("update sync_status set consecutive_errors = null where appid = 30")


def test_error_columns_false_leaves_the_seed_columns_alone(seeded: Database) -> None:
    """`status.error_columns: false`: neither recorded nor cleared, the counter untouched."""
    source = with_status(SOURCE, error_columns=False)
    failure = {"outcome": Outcome.ERROR, "error": "HTTP 503"}
    assert run(seeded, [ok(10), ok(20, **failure)], source) == []
    assert seeded.rows(SEED_COLUMNS + " from sync_status where appid in (10, 20) order by 1") == [
        (10, 2, "other", "old", True),
        (20, 2, "example", "old", True),
    ]


def test_a_set_column_of_the_same_name_wins_over_the_clear(seeded: Database) -> None:
    """A source that sets consecutive_errors itself (status.set) gets its value, not the reset."""
    source = with_status(SOURCE, set=(Field("consecutive_errors", expr("`7`")),))
    assert run(seeded, [ok(10, status_values={"consecutive_errors": 7})], source) == []
    assert seeded.rows(SEED_COLUMNS + " from sync_status where appid = 10") == [(10, 7, None, None, False)]
