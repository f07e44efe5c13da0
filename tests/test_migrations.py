"""migrations: versioned files, idempotent upgrades of seed-shaped schemas, check, --sql."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner import cli, jobs, migrations, writer
from runner.errors import SchemaMismatch
from runner.results import EntityResult
from runner.spec import Field, FunctionArg, Outcome, QualifiedName, SelectionType
from tests.pg import Database, expr, make_source, with_status, write
from tests.test_engine import write_source

DATA = Path(__file__).parent / "data" / "migrations"
APPS = write("apps", ["appid"], ["appid", "name"])


def _mismatch(db: Database, *sources: object) -> str:
    with pytest.raises(SchemaMismatch) as caught:
        migrations.check(db.conn, list(sources))  # type: ignore[arg-type]
    return str(caught.value)


def test_check_on_an_empty_database_names_everything_and_the_command(db: Database) -> None:
    """An empty schema: every syncrun table is named, with the migrate command for the source."""
    source = make_source()
    assert _mismatch(db, source).splitlines() == [
        "syncrun_migrations is missing: run `syncrun migrate sources/example.yaml`",
        "syncrun_state is missing: run `syncrun migrate sources/example.yaml`",
        "syncrun_cursors is missing: run `syncrun migrate sources/example.yaml`",
        "syncrun_validators is missing: run `syncrun migrate sources/example.yaml`",
        "syncrun_watermarks is missing: run `syncrun migrate sources/example.yaml`",
        "syncrun_listings is missing: run `syncrun migrate sources/example.yaml`",
        "sync_jobs is missing: run `syncrun migrate sources/example.yaml`",
        "sync_status is missing: run `syncrun migrate sources/example.yaml`",
    ]


def test_migrate_creates_everything_and_is_idempotent(db: Database) -> None:
    """The first migrate applies every versioned file, a second one applies nothing and check passes."""
    source = make_source()
    assert migrations.migrate(db.conn, [source]) == [
        "0001_base",
        "0002_rate_limits",
        "0003_rate_limit_restamp",
        "0004_deletes",
        "0005_conditional_validators",
        "0006_watermarks",
        "0007_transient_runs",
        "0008_validator_fingerprint",
        "0009_listing_leases",
        "0010_refused",
        "0011_rate_limit_unordered",
    ]
    assert migrations.migrate(db.conn, [source]) == []
    assert db.rows("select version, name from syncrun_migrations order by version") == [
        (1, "0001_base"),
        (2, "0002_rate_limits"),
        (3, "0003_rate_limit_restamp"),
        (4, "0004_deletes"),
        (5, "0005_conditional_validators"),
        (6, "0006_watermarks"),
        (7, "0007_transient_runs"),
        (8, "0008_validator_fingerprint"),
        (9, "0009_listing_leases"),
        (10, "0010_refused"),
        (11, "0011_rate_limit_unordered"),
    ]
    catalog = migrations.check(db.conn, [source])
    assert catalog[QualifiedName(None, "sync_status")]["last_example_sync"] == "timestamp with time zone"


def test_a_new_source_needs_its_status_column(db: Database) -> None:
    """A source added after the migration is reported by its column and its own file."""
    db.migrate(make_source())
    assert _mismatch(db, make_source("other")) == (
        "sync_status.last_other_sync is missing: run `syncrun migrate sources/other.yaml`"
    )
    db.migrate(make_source("other"))
    migrations.check(db.conn, [make_source("other")])


def test_check_names_unknown_target_columns_and_missing_tables(db: Database) -> None:
    """Mapped columns are checked against the catalog; target tables are the user's to create."""
    source = make_source(
        writes=(write("apps", ["appid"], ["appid", "nme"]), write("app_tags", ["appid", "tag"], ["appid", "tag"]))
    )
    db.migrate(source)
    db.run("create table apps (appid int primary key, name text)")
    assert _mismatch(db, source).splitlines() == [
        "apps.nme: no such column (sources/example.yaml writes[0])",
        "app_tags is missing: syncrun does not create target tables (sources/example.yaml writes[1])",
    ]


def test_check_requires_a_unique_index_on_the_write_key(db: Database) -> None:
    """`on conflict (key)` needs a primary key or unique index on exactly the key columns."""
    source = make_source(writes=(write("app_tags", ["appid", "tag"], ["appid", "tag"]),))
    db.migrate(source)
    db.run("create table app_tags (appid int, tag text)")
    assert (
        _mismatch(db, source)
        == "app_tags: no primary key or unique index on (appid, tag) (sources/example.yaml writes[0])"
    )
    db.run("create unique index on app_tags (tag, appid)")
    assert migrations.check(db.conn, [source])[QualifiedName(None, "app_tags")] == {"appid": "integer", "tag": "text"}


def test_check_returns_column_types_of_targets(db: Database) -> None:
    """The catalog maps every written table to its columns' format_type text."""
    source = make_source(writes=(write("apps", ["appid"], ["appid", "price"]),))
    db.migrate(source)
    db.run("create table apps (appid bigint primary key, price numeric(10,2), tags text[], raw jsonb)")
    assert migrations.check(db.conn, [source])[QualifiedName(None, "apps")] == {
        "appid": "bigint",
        "price": "numeric(10,2)",
        "tags": "text[]",
        "raw": "jsonb",
    }


def test_migration_sql_is_a_runnable_idempotent_script(db: Database) -> None:
    """`syncrun migrate --sql` output runs twice and leaves a schema that passes check."""
    source = make_source()
    script = migrations.migration_sql([source])
    with db.connect() as conn:
        conn.autocommit = True
        conn.execute(script)  # type: ignore[call-overload]
        conn.execute(script)  # type: ignore[call-overload]
    migrations.check(db.conn, [source])
    assert migrations.migrate(db.conn, [source]) == []


def test_schema_qualified_status_table(db: Database) -> None:
    """A status table like ops.sync_status is created in its schema, with its own function."""
    ops = db.new_schema("ops")
    source = make_source(status_table=f"{ops}.sync_status", **SEED_FUNCTION)
    db.migrate(source)
    migrations.check(db.conn, [source])
    assert db.scalar("select to_regprocedure(%s) is not null", (f"{ops}.get_apps_for_sync(text,integer)",))


SEED_FUNCTION: dict[str, Any] = {
    "selection": SelectionType.FUNCTION,
    "function": QualifiedName(None, "get_apps_for_sync"),
    "args": (("p_source", FunctionArg(parameter="source")), ("p_limit", FunctionArg(parameter="limit"))),
}


def test_migrate_adds_only_what_the_settings_use(db: Database) -> None:
    """`error_columns: false` and null selection columns: the status table gets the key and the stamp,
    nothing else (it once got priority_score, is_syncable, last_error_* ... whatever the settings)."""
    bare = with_status(
        make_source(priority_column=None, syncable_column=None, interval_column=None), error_columns=False
    )
    db.migrate(bare)
    migrations.check(db.conn, [bare])
    assert db.rows(
        "select attname::text from pg_attribute where attrelid = 'sync_status'::regclass and attnum > 0"
    ) == [
        ("appid",),
        ("last_example_sync",),
    ]
    assert db.scalar("select to_regproc('get_apps_for_sync')") is None  # no source selects with it
    db.migrate(make_source("other"))  # the defaults: the default selection's columns and the error columns
    assert db.rows(
        "select attname::text from pg_attribute where attrelid = 'sync_status'::regclass and attnum > 0 order by attnum"
    ) == [
        (c,)
        for c in (
            "appid",
            "last_example_sync",
            "last_other_sync",
            "priority_score",
            "is_syncable",
            "sync_interval_hours",
            "last_error_source",
            "last_error_message",
            "last_error_at",
        )
    ]


def test_generated_status_columns_the_stamp_would_write_are_named(db: Database) -> None:
    """A generated column the stamp would write is a schema problem naming the status stamp (exit 2)."""
    source = with_status(make_source(), error_columns=False)
    db.migrate(source)
    db.run(
        "alter table sync_status drop column last_example_sync;"
        " alter table sync_status add column last_example_sync timestamptz generated always as (null) stored"
    )
    with pytest.raises(SchemaMismatch) as error:
        migrations.check(db.conn, [source])
    assert str(error.value) == (
        "sync_status.last_example_sync is a generated column: the status stamp cannot write it"
        " (sources/example.yaml status)"
    )


def test_generic_get_apps_for_sync(db: Database) -> None:
    """Due = syncable and never synced or older than sync_interval_hours; never-synced first, priority desc."""
    db.migrate(make_source(**SEED_FUNCTION))
    db.run(
        "insert into sync_status (appid, priority_score, is_syncable, sync_interval_hours, last_example_sync) values"
        " (10, 1, true, 24, now() - interval '25 hours'), (20, 9, true, 24, now() - interval '2 hours'),"
        " (30, 5, true, 1, now() - interval '2 hours'), (40, 0, true, 24, null), (50, 99, false, 24, null),"
        " (60, 7, true, 24, null)"
    )
    rows = db.rows("select * from get_apps_for_sync('example', 10)")
    assert rows == [(60, 7), (40, 0), (30, 5), (10, 1)]
    assert db.rows("select * from get_apps_for_sync('example', 1)") == [(60, 7)]


# --- seed-shaped databases ----------------------------------------------------------------------------
def test_upgrading_a_supabase_shaped_database_keeps_data_and_functions(db: Database) -> None:
    """Supabase: jobs gain heartbeat/requests/metadata, the enum accepts our source, rows and function survive."""
    db.run((DATA / "supabase.sql").read_text())
    source = make_source("storefront_v2", writes=(APPS,))
    assert migrations.migrate(db.conn, [source]) == [
        "0001_base",
        "0002_rate_limits",
        "0003_rate_limit_restamp",
        "0004_deletes",
        "0005_conditional_validators",
        "0006_watermarks",
        "0007_transient_runs",
        "0008_validator_fingerprint",
        "0009_listing_leases",
        "0010_refused",
        "0011_rate_limit_unordered",
    ]
    migrations.check(db.conn, [source])
    assert db.rows("select appid, priority_score, last_error_source::text from sync_status order by appid") == [
        (10, 50, "storefront"),
        (20, 5, None),
        (30, 0, None),
    ]
    assert db.rows("select job_type, status, heartbeat_at from sync_jobs order by job_type") == [
        ("reviews", "running", None),
        ("storefront", "completed", None),
    ]
    # the user's function is untouched and not overloaded (PostgREST would find the call ambiguous)
    assert db.rows(
        "select oid::regprocedure::text from pg_proc"
        " where proname = 'get_apps_for_sync' and pronamespace = current_schema()::regnamespace"
    ) == [("get_apps_for_sync(sync_source,integer)",)]
    assert db.rows("select appid from get_apps_for_sync('storefront', 10)") == [(10,), (20,), (30,)]
    assert migrations.migrate(db.conn, [source]) == []


def test_supabase_enum_error_source_accepts_our_source_name(db: Database) -> None:
    """Writing an error for a new source into sync_status.last_error_source (enum sync_source) works."""
    db.run((DATA / "supabase.sql").read_text())
    source = make_source("storefront_v2", writes=(APPS,))
    db.migrate(source)
    catalog = migrations.check(db.conn, [source])
    failed = EntityResult(
        key=20, entity={"appid": 20}, outcome=Outcome.ERROR, error="HTTP 403", error_source="storefront_v2"
    )
    assert writer.write(db.conn, source, [failed], catalog=catalog) == []
    assert db.rows("select last_error_source::text, last_error_message from sync_status where appid = 20") == [
        ("storefront_v2", "HTTP 403")
    ]


def test_check_reports_an_enum_without_our_source(db: Database) -> None:
    """Before migrate, a sync_source enum lacking the source name is reported with the command."""
    db.run((DATA / "supabase.sql").read_text())
    source = make_source("storefront")  # 'storefront' is already an enum value
    other = make_source("steamstore")
    db.migrate(source)
    assert _mismatch(db, other).splitlines() == [
        "sync_status.last_steamstore_sync is missing: run `syncrun migrate sources/steamstore.yaml`",
        "sync_status.last_error_source does not accept 'steamstore': run `syncrun migrate sources/steamstore.yaml`",
    ]


def test_upgrading_a_tiger_shaped_database_widens_the_status_check(db: Database) -> None:
    """Tiger: ops.sync_jobs's CHECK gains 'cancelled'; rows, metadata and ops.get_apps_for_sync survive."""
    ops = db.new_schema("ops")
    db.run((DATA / "tiger.sql").read_text().replace("ops.", f"{ops}."))
    jobs_table = QualifiedName(ops, "sync_jobs")
    source = with_status(make_source("storefront", status_table=f"{ops}.sync_status"))
    with pytest.raises(SchemaMismatch) as caught:
        migrations.check(db.conn, [source], jobs_table=jobs_table)
    assert f"{ops}.sync_jobs.status: its check constraint does not allow 'cancelled'" in str(caught.value)
    db.migrate(source, jobs_table=jobs_table)
    migrations.check(db.conn, [source], jobs_table=jobs_table)
    job = jobs.start(db.conn, "storefront", table=jobs_table)
    jobs.finish(db.conn, job, "cancelled", jobs.Counters(), table=jobs_table)
    with pytest.raises(psycopg.errors.CheckViolation):
        db.run(f"insert into {ops}.sync_jobs (job_type, status) values ('x', 'bogus')")
    assert db.rows(f"select job_type, status, metadata from {ops}.sync_jobs order by job_type, status") == [
        ("histogram", "failed", None),
        ("storefront", "cancelled", None),
        ("storefront", "completed", {"partition": 0}),
    ]
    assert db.rows(f"select appid, priority_score from {ops}.sync_status order by appid") == [(10, 50), (20, 5)]
    assert db.rows(f"select * from {ops}.get_apps_for_sync('storefront', 5)") == [(10, 50), (20, 5)]


def test_check_names_missing_status_set_columns(db: Database) -> None:
    """status.set columns are the user's: a missing one is named with its source, not migrated."""
    source = with_status(make_source(), set=(Field("storefront_accessible", expr("`true`")),))
    db.migrate(source)
    assert (
        _mismatch(db, source) == "sync_status.storefront_accessible: no such column (sources/example.yaml status.set)"
    )


def test_migrate_tables_creates_a_bundled_family(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """`syncrun migrate --tables steam` creates the Steam target tables, idempotently; --sql prints them."""
    from runner import cli

    monkeypatch.setenv("DATABASE_URL", db.dsn)
    steam = [str(p) for p in sorted(Path("sources").glob("steam*.yaml"))]
    assert cli.main(["migrate", *steam, "--tables", "steam"]) == 0
    assert cli.main(["migrate", *steam, "--tables", "steam"]) == 0
    assert db.scalar("select count(*) from review_histogram") == 0
    assert db.scalar("select to_regclass('app_developers') is not null") is True
    assert migrations.bundled_tables() == ["example", "steam"]
    assert "create table if not exists review_histogram" in migrations.tables_sql("steam").lower()


def test_migrate_says_what_it_created_and_added(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`syncrun migrate` names the tables and columns it created; "up to date" only when it did nothing
    (it once said "up to date" after creating a status table and its columns)."""
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    source = write_source(tmp_path)
    assert cli.main(["migrate", str(source)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("migrated: ['0001_base'")
    assert out[1:] == ["created table sync_jobs", "created table sync_status"]
    assert cli.main(["migrate", str(source)]) == 0
    assert capsys.readouterr().out == "up to date: nothing to create or add\n"
    db.run("drop table sync_status")
    source.write_text(source.read_text().replace("  limit: 100\n", "  limit: 100\n  priority_column: rank\n"))
    assert cli.main(["migrate", str(source)]) == 0
    assert capsys.readouterr().out == "created table sync_status\n"
    source.write_text(source.read_text().replace("priority_column: rank", "priority_column: weight"))
    assert cli.main(["migrate", str(source)]) == 0
    assert capsys.readouterr().out == "added column sync_status.weight\n"
