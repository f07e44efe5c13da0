"""targets (through writer.write): replace_by, lookups, function writers, merges, append-only inserts."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest

from runner import mapping, migrations, statements, targets, writeplan, writer
from runner.errors import SchemaMismatch
from runner.results import EntityResult
from runner.spec import Field, Lookup, Merge, Outcome, QualifiedName, Source, Write, WriteMode
from tests.pg import Database, expr, fault, make_source

Rows = dict[int, list[dict[str, Any]]]


def target(table: str, key: list[str], columns: dict[str, str], **kwargs: Any) -> Write:
    """A write mapping `column: expression` (replace_by needs real `entity.*` mappings)."""
    fields = tuple(Field(c, expr(e)) for c, e in columns.items())
    return Write(table=QualifiedName(None, table), key=tuple(key), columns=fields, **kwargs)


DLC = target(
    "app_dlc",
    ["parent_appid", "dlc_appid"],
    {"parent_appid": "entity.appid", "dlc_appid": "item", "source": "'storefront'"},
    rows=expr("record.dlc"),
    replace_by=("parent_appid", "source"),
)
DEVELOPERS = target(
    "developers",
    ["normalized_name"],
    {"name": "trim(item)", "normalized_name": "lower(trim(item))"},
    rows=expr("record.developers"),
)
APP_DEVELOPERS = target(
    "app_developers",
    ["appid", "developer_id"],
    {"appid": "entity.appid"},
    rows=expr("record.developers"),
    replace_by=("appid",),
    lookups=(
        Lookup(
            column="developer_id",
            table=QualifiedName(None, "developers"),
            key="normalized_name",
            returning="id",
            value=expr("lower(trim(item))"),
        ),
    ),
)
SOURCE = make_source(writes=(DLC, DEVELOPERS, APP_DEVELOPERS))


@pytest.fixture
def tables(db: Database) -> Database:
    db.migrate(SOURCE)
    db.run(
        "create table app_dlc (parent_appid int, dlc_appid int, source text not null,"
        " primary key (parent_appid, dlc_appid));"
        "create table developers (id int generated always as identity primary key, name text not null,"
        " normalized_name text not null unique);"
        "create table app_developers (appid int, developer_id int not null references developers,"
        " primary key (appid, developer_id))"
    )
    return db


def result(key: int, rows: Rows, outcome: Outcome = Outcome.SUCCESS) -> EntityResult:
    return EntityResult(key=key, entity={"appid": key}, outcome=outcome, rows=rows, error_source="example")


def mapped(key: int, record: dict[str, Any], source: Source = SOURCE) -> EntityResult:
    """The entity's rows as the mapping layer makes them from `record`."""
    base = {"entity": {"appid": key}, "body": record, "response": {}, "run": {}}
    return result(key, mapping.rows(source, base))


def run(db: Database, results: list[EntityResult], source: Source = SOURCE) -> list[EntityResult]:
    catalog = migrations.check(db.conn, [source])
    return writer.write(db.conn, source, results, catalog=catalog)


def dlc(db: Database) -> list[tuple[Any, ...]]:
    return db.rows("select parent_appid, dlc_appid, source from app_dlc order by 1, 2")


# --- replace_by ---------------------------------------------------------------------------------------
def test_replace_removes_stale_links_and_keeps_other_entities_links(tables: Database) -> None:
    """An entity's links are replaced by its fresh ones; other entities' and other sources' rows stay."""
    tables.run(
        "insert into app_dlc values (10, 1, 'storefront'), (10, 2, 'storefront'), (10, 3, 'pics'),"
        " (20, 5, 'storefront')"
    )
    assert run(tables, [mapped(10, {"dlc": [2, 4]})]) == []
    assert dlc(tables) == [(10, 2, "storefront"), (10, 3, "pics"), (10, 4, "storefront"), (20, 5, "storefront")]


def test_an_empty_list_clears_the_entitys_links(tables: Database) -> None:
    """An entity whose list came back empty (or missing) still deletes its stale links."""
    tables.run("insert into app_dlc values (10, 1, 'storefront'), (20, 5, 'storefront')")
    assert run(tables, [mapped(10, {"dlc": []}), mapped(20, {})]) == []
    assert dlc(tables) == []


def test_skipped_and_failed_entities_keep_their_links(tables: Database) -> None:
    """Only successful entities that produced the write replace: skips, errors and rows-less results don't."""
    tables.run("insert into app_dlc values (10, 1, 'storefront'), (20, 2, 'storefront'), (30, 3, 'storefront')")
    results = [
        result(10, {0: []}, Outcome.SKIP),
        result(20, {}, Outcome.ERROR),
        result(30, {}),  # the mapping never evaluated this write
    ]
    assert run(tables, results) == []
    assert dlc(tables) == [(10, 1, "storefront"), (20, 2, "storefront"), (30, 3, "storefront")]


def test_replace_by_must_come_from_the_entity(tables: Database) -> None:
    """A replace_by column mapped from the record fails the entity: an empty list could not clear links."""
    bad = target(
        "app_dlc",
        ["parent_appid", "dlc_appid"],
        {"parent_appid": "record.parent", "dlc_appid": "item", "source": "'storefront'"},
        rows=expr("record.dlc"),
        replace_by=("parent_appid", "source"),
    )
    source = make_source(writes=(bad,))
    failed = run(tables, [result(10, {0: [{"parent_appid": 10, "dlc_appid": 1, "source": "storefront"}]})], source)
    assert [f.error for f in failed] == [
        "app_dlc.parent_appid: replace_by needs a value from the entity alone"
        " (map it from entity.* or a literal, not 'record.parent')"
    ]
    assert dlc(tables) == []


def test_a_failing_entity_in_a_replaced_batch_keeps_its_links(tables: Database) -> None:
    """When one entity's rows break a constraint, the replay keeps its old links and replaces the others'."""
    tables.run("insert into app_dlc values (10, 1, 'storefront'), (20, 2, 'storefront')")
    broken = result(20, {0: [{"parent_appid": 20, "dlc_appid": 9, "source": None}]})
    failed = run(tables, [mapped(10, {"dlc": [4]}), broken])
    assert [f.key for f in failed] == [20]
    assert dlc(tables) == [(10, 4, "storefront"), (20, 2, "storefront")]


# --- lookups ------------------------------------------------------------------------------------------
def developer_links(db: Database) -> list[tuple[Any, ...]]:
    return db.rows(
        "select l.appid, d.name, d.normalized_name from app_developers l join developers d on d.id = l.developer_id"
        " order by 1, 2"
    )


def test_lookup_creates_dimension_rows_once_and_links_them(tables: Database) -> None:
    """Case and whitespace variants make one dimension row (last name wins), linked from every app."""
    results = [
        mapped(10, {"developers": ["Larian Studios", " larian studios "]}),
        mapped(20, {"developers": ["LARIAN STUDIOS", "Owlcat"]}),
    ]
    assert run(tables, results) == []
    assert tables.rows("select name, normalized_name from developers order by 2") == [
        ("LARIAN STUDIOS", "larian studios"),
        ("Owlcat", "owlcat"),
    ]
    assert developer_links(tables) == [
        (10, "LARIAN STUDIOS", "larian studios"),
        (20, "LARIAN STUDIOS", "larian studios"),
        (20, "Owlcat", "owlcat"),
    ]
    ids = tables.rows("select id from developers order by id")
    assert run(tables, [mapped(20, {"developers": ["owlcat"]})]) == []  # same ids, stale link gone
    assert tables.rows("select id from developers order by id") == ids
    assert developer_links(tables)[1:] == [(20, "owlcat", "owlcat")]


def test_a_lookup_miss_fails_only_its_entity(tables: Database) -> None:
    """A natural key with no dimension row fails that entity, naming table, key and value."""
    source = make_source(writes=(APP_DEVELOPERS,))
    tables.run("insert into developers (name, normalized_name) values ('Valve', 'valve')")
    failed = run(
        tables, [mapped(10, {"developers": ["Valve"]}, source), mapped(20, {"developers": ["Nobody"]}, source)], source
    )
    assert [(f.key, f.error) for f in failed] == [
        (20, "app_developers.developer_id: no developers row with normalized_name = 'nobody'")
    ]
    assert developer_links(tables) == [(10, "Valve", "valve")]
    assert tables.rows("select entity_key, consecutive_errors from syncrun_state order by 1") == [("10", 0), ("20", 1)]


# --- function writers ---------------------------------------------------------------------------------
PRICES = Write(
    table=QualifiedName(None, "batch_update_prices"),
    function=QualifiedName(None, "batch_update_prices"),
    key=(),
    columns=(Field("p_price_cents", expr("record.price")), Field("p_appid", expr("entity.appid"))),
)


def test_a_function_writer_is_called_per_row_with_named_arguments(tables: Database) -> None:
    """Each row is one fn(column => value, ...) call; a `raise exception` fails only its entity."""
    tables.run(
        "create table price_log (appid int, price_cents int);"
        "create function batch_update_prices(p_appid int, p_price_cents int) returns void language plpgsql as $$"
        " begin if p_price_cents < 0 then raise exception 'negative price for %', p_appid; end if;"
        " insert into price_log values (p_appid, p_price_cents); end $$"
    )
    source = make_source(writes=(PRICES,))
    results = [
        result(10, {0: [{"p_price_cents": "999", "p_appid": 10}]}),
        result(20, {0: [{"p_price_cents": -1, "p_appid": 20}]}),
        result(30, {0: [{"p_price_cents": 0, "p_appid": 30}, {"p_price_cents": 5, "p_appid": 30}]}),
    ]
    failed = run(tables, results, source)
    assert [(f.key, f.error) for f in failed] == [(20, "batch_update_prices: negative price for 20")]
    assert tables.rows("select * from price_log order by 1, 2") == [(10, 999), (30, 0), (30, 5)]


def test_check_catalogs_functions_and_lookup_tables(tables: Database) -> None:
    """migrations.check names a missing function, unknown arguments and missing lookup columns."""
    tables.run("create function batch_update_prices(p_appid int) returns void language sql as 'select 1'")
    tables.run("alter table developers rename column normalized_name to norm")
    with pytest.raises(SchemaMismatch) as caught:
        migrations.check(tables.conn, [make_source(writes=(PRICES, APP_DEVELOPERS))])
    assert str(caught.value).splitlines() == [
        "batch_update_prices: no argument named p_price_cents (sources/example.yaml writes[0])",
        "developers.normalized_name: no such column (lookup developer_id) (sources/example.yaml writes[1])",
    ]
    tables.run("drop function batch_update_prices")
    with pytest.raises(SchemaMismatch, match=r"^batch_update_prices: no such function, or more than one"):
        migrations.check(tables.conn, [make_source(writes=(PRICES,))])


# --- merges and append-only inserts ---------------------------------------------------------------------
CCU = target(
    "daily_metrics",
    ["appid", "metric_date"],
    {"appid": "entity.appid", "metric_date": "run.today", "ccu_peak": "record.ccu", "note": "record.note"},
    merge=(("ccu_peak", Merge.GREATEST), ("note", Merge.KEEP_EXISTING_IF_NULL)),
)


@pytest.fixture
def metrics(db: Database) -> Database:
    db.migrate(make_source(writes=(CCU,)))
    db.run(
        "create table daily_metrics (appid int, metric_date date, ccu_peak int, note text,"
        " primary key (appid, metric_date))"
    )
    return db


def ccu(key: int, peak: int | None, note: str | None = None) -> EntityResult:
    return result(key, {0: [{"appid": key, "metric_date": "2025-01-01", "ccu_peak": peak, "note": note}]})


def test_a_second_same_day_run_never_lowers_ccu_peak(metrics: Database) -> None:
    """greatest keeps the day's peak; keep_existing_if_null keeps a value over a null."""
    source = make_source(writes=(CCU,))
    assert run(metrics, [ccu(10, 900, "first")], source) == []
    assert run(metrics, [ccu(10, 300, None)], source) == []
    assert metrics.rows("select ccu_peak, note from daily_metrics") == [(900, "first")]
    assert run(metrics, [ccu(10, 1200, "later")], source) == []
    assert metrics.rows("select ccu_peak, note from daily_metrics") == [(1200, "later")]


def test_greatest_is_atomic_in_sql(metrics: Database) -> None:
    """The merge is one upsert evaluated against the locked row: a concurrent higher peak is never lost."""
    statement = statements.upsert_sql(CCU, False).as_string()
    assert 'on conflict ("appid", "metric_date") do update set' in statement
    assert '"ccu_peak" = greatest(t."ccu_peak", excluded."ccu_peak")' in statement
    source = make_source(writes=(CCU,))
    catalog = migrations.check(metrics.conn, [source])
    with metrics.connect() as other:
        other.execute(  # an uncommitted 900 holds the row; our 300 must wait for it, then keep it
            "insert into daily_metrics values (10, '2025-01-01', 900, null)"
        )
        writing = threading.Thread(
            target=writer.write, args=(metrics.conn, source, [ccu(10, 300)]), kwargs={"catalog": catalog}
        )
        writing.start()
        writing.join(0.3)
        assert writing.is_alive()  # blocked on the row lock, not working from a stale read
        other.commit()
        writing.join(10)
    assert metrics.rows("select ccu_peak from daily_metrics") == [(900,)]


def test_insert_mode_appends_once_across_a_retried_batch(metrics: Database) -> None:
    """mode=insert with a key fixed before any retry (run.started_at): a retried batch adds no duplicates."""
    metrics.run(
        "create table ccu_samples (appid int, fetched_at timestamptz, players int, primary key (appid, fetched_at))"
    )
    samples = target(
        "ccu_samples",
        ["appid", "fetched_at"],
        {"appid": "entity.appid", "fetched_at": "run.started_at", "players": "record.players"},
        mode=WriteMode.INSERT,
    )
    source = make_source(writes=(samples,))
    row = {"appid": 10, "fetched_at": "2025-01-01T10:00:00+00:00", "players": 5}
    # after the rows went in (an AFTER trigger): the rollback must undo them, the retry redo them
    fault(metrics, "ccu_samples", "40P01", "deadlock detected", times=1)
    assert run(metrics, [result(10, {0: [row]})], source) == []
    assert run(metrics, [result(10, {0: [{**row, "players": 99}]})], source) == []  # a re-sent row is ignored
    assert metrics.rows("select last_value from fault_calls") == [(3,)]  # refused, retried, the second run
    assert metrics.rows("select appid, players from ccu_samples") == [(10, 5)]


# --- merges that follow another column or prefer a spelling (issue #13) ---------------------------------
SOURCED = target(
    "daily_metrics",
    ["appid", "metric_date"],
    {"appid": "entity.appid", "metric_date": "run.today", "ccu_peak": "record.ccu", "note": "record.note"},
    merge=(("ccu_peak", Merge.GREATEST), ("note", Merge.WITH_GREATEST)),
)


def test_with_greatest_keeps_the_old_value_when_greatest_keeps_the_old_peak(metrics: Database) -> None:
    """ccu_source follows ccu_peak: a lower sample keeps the stored source; an equal or higher one takes over."""
    source = make_source(writes=(SOURCED,))
    statement = statements.upsert_sql(SOURCED, False).as_string()
    assert 'case when t."ccu_peak" is null or excluded."ccu_peak" >= t."ccu_peak"' in statement
    assert run(metrics, [ccu(10, 900, "steamspy")], source) == []
    assert run(metrics, [ccu(10, 300, "steam_api")], source) == []
    assert metrics.rows("select ccu_peak, note from daily_metrics") == [(900, "steamspy")]
    assert run(metrics, [ccu(10, None, "nothing")], source) == []  # greatest ignores a null: so does the source
    assert metrics.rows("select ccu_peak, note from daily_metrics") == [(900, "steamspy")]
    assert run(metrics, [ccu(10, 900, "steam_api")], source) == []  # >=, as the worker
    assert metrics.rows("select ccu_peak, note from daily_metrics") == [(900, "steam_api")]


SPELLED = target(
    "developers",
    ["normalized_name"],
    {"name": "trim(item)", "normalized_name": "lower(trim(item))"},
    rows=expr("record.developers"),
    merge=(("name", Merge.PREFERRED_SPELLING),),
)
SPELLINGS = ("sable works ", "SABLE WORKS", "Sable Works", "Sable works")


@pytest.mark.parametrize("order", [*itertools.permutations(SPELLINGS[:3]), SPELLINGS[::-1]])
def test_preferred_spelling_does_not_depend_on_the_arrival_order(tables: Database, order: tuple[str, ...]) -> None:
    """One batch or one run per spelling, in any order: the initcap form is kept ("Sable Works")."""
    source = make_source(writes=(SPELLED,))
    assert run(tables, [mapped(i, {"developers": [name]}, source) for i, name in enumerate(order)], source) == []
    assert tables.rows("select name, normalized_name from developers") == [("Sable Works", "sable works")]
    tables.run("delete from developers")
    for i, name in enumerate(order):
        assert run(tables, [mapped(i, {"developers": [name]}, source)], source) == []
    assert tables.rows("select name from developers") == [("Sable Works",)]


def test_without_an_initcap_form_the_first_in_code_points_wins(tables: Database) -> None:
    """Same key, same length (trimmed, lower-cased equal): code-point order decides, in any order."""
    source = make_source(writes=(SPELLED,))
    for batch in (["acme", "aCmE", "ACME"], ["ACME", "aCmE", "acme"]):
        tables.run("delete from developers")
        assert run(tables, [mapped(i, {"developers": [n]}, source) for i, n in enumerate(batch)], source) == []
        assert tables.rows("select name from developers") == [("ACME",)]
    assert targets.spelling_rank("Acme") < targets.spelling_rank("ACME") < targets.spelling_rank(None)


@pytest.mark.parametrize("text", ["sable works", "o'neil 2nd", "ÉDITIONS du lac", "x-ray_team", "3d realms", ""])
def test_initcap_is_postgresqls(tables: Database, text: str) -> None:
    """The batch's de-duplication ranks spellings as the upsert does."""
    assert targets.initcap(text) == tables.scalar("select initcap(%s)", (text,))


# --- how the rows travel ----------------------------------------------------------------------------
KINDS_COLUMNS = {c: f"record.{c}" for c in ("id", "small", "n", "t", "v", "b", "d")}
KINDS = target("kinds", ["id"], KINDS_COLUMNS)


def test_binary_copy_lands_what_text_copy_lands(db: Database) -> None:
    """A batch whose columns are all integers, text, booleans or doubles goes by binary COPY; what it
    stores is exactly what the text COPY stores (compared as PostgreSQL prints the rows)."""
    source = make_source(writes=(KINDS,))
    db.migrate(source)
    for table, more in (("kinds", ""), ("kinds_text", ", x numeric")):
        db.run(
            f"create table {table} (id bigint primary key, small smallint, n int, t text, v varchar(12), b boolean,"
            f" d double precision{more}, updated_at timestamptz)"
        )
    texts = ["a\\b\tc\nd\re", "", "é😀 \u2028", "\\N", "NULL", None, ' "q" ']
    doubles = [-0.0, 0.1, 1e308, 5e-324, None, 2.5, -1.0]
    rows = [
        {
            "id": i * 2**40,
            "small": [-32768, 32767, None, 0][i % 4],
            "n": [-(2**31), 2**31 - 1, None, i][i % 4],
            "t": texts[i % len(texts)],
            "v": (texts[i % len(texts)] or "")[:12] if i % 5 else None,
            "b": [True, False, None][i % 3],
            "d": doubles[i % len(doubles)],
        }
        for i in range(1, targets.COPY_FROM + 20)
    ]
    # each COPY format has its temp table (statements.temp_sql), kept by the session: which ones exist
    # say which way the batches went (not a patched WritePlan.binary: writeplan may be compiled)
    temps = "select count(*) from pg_class where relnamespace = pg_my_temp_schema() and relkind = 'r'"
    assert run(db, [result(1, {0: rows})], source) == []
    assert db.rows(temps) == [(1,)]  # the binary one
    # the same rows into a table that also has a numeric column (mapped, null): no binary form, so text
    as_text = make_source(writes=(target("kinds_text", ["id"], {**KINDS_COLUMNS, "x": "record.x"}),))
    assert run(db, [result(1, {0: rows})], as_text) == []
    assert db.rows(temps) == [(2,)]  # and now the text one
    columns = "(id, small, n, t, v, b, d)::text"
    assert db.rows(f"select {columns} from kinds_text order by id") == db.rows(
        f"select {columns} from kinds order by id"
    )
    for table in ("kinds", "kinds_text"):
        assert db.rows(f"select count(*), count(updated_at) from {table}") == [(len(rows), len(rows))]


def test_a_column_of_another_type_goes_by_text_copy(db: Database) -> None:
    """numeric, timestamps, json, arrays, enums...: their binary forms are not made from what the
    values hold; the whole batch goes as text."""
    plan = writeplan.WritePlan(KINDS, {QualifiedName(None, "kinds"): {"id": "bigint", "d": "numeric"}})
    assert plan.binary_types is None
    assert not plan.binary([(1, None, None, None, None, None, 1.5)])
    plan = writeplan.WritePlan(KINDS, {QualifiedName(None, "kinds"): dict.fromkeys(KINDS.column_names, "bigint")})
    assert plan.binary([(1, 2, 3, 4, 5, 6, None)])
    assert not plan.binary([(1, 2, 3, 4, 5, True, None)])  # a bool is no int here


TP = target("tp", ["id"], {"id": "record.id", "x": "record.x"})


def test_a_column_altered_between_runs_on_one_connection_gets_its_values(db: Database) -> None:
    """Behind a pooler in transaction mode the temp table outlives the run that made it: a later run
    after `alter table ... type` must not COPY (binary) into the old shape, where bigint bytes read as
    a double came out 0 (review15 F2)."""
    source = make_source(writes=(TP,))
    db.migrate(source)
    db.run("create table tp (id bigint primary key, x double precision)")
    many = targets.COPY_FROM + 1
    assert run(db, [result(1, {0: [{"id": i, "x": 0.5} for i in range(many)]})], source) == []
    db.run("alter table tp alter column x type bigint")
    assert run(db, [result(1, {0: [{"id": i, "x": 2**31 - 1 + i} for i in range(many)]})], source) == []
    assert db.rows("select min(x - id), max(x - id) from tp") == [(2**31 - 1, 2**31 - 1)]


def test_a_column_altered_during_a_run_gets_its_values(db: Database) -> None:
    """The rows were fitted (and a binary COPY encoded) for the types the run read at its start; a
    column altered since is converted on the way in, as PostgreSQL converts any assignment."""
    source = make_source(writes=(TP,))
    db.migrate(source)
    db.run("create table tp (id bigint primary key, x integer)")
    catalog = migrations.check(db.conn, [source])
    db.run("alter table tp alter column x type real")
    rows = [{"id": i, "x": 150} for i in range(targets.COPY_FROM + 1)]
    assert writer.write(db.conn, source, [result(1, {0: rows})], catalog=catalog) == []
    assert db.rows("select distinct x from tp") == [(150.0,)]


TM = target("tm", ["id"], {"id": "record.id", "n": "record.n", "e": "record.e"})


def test_a_text_column_altered_to_a_stricter_type_during_a_run_takes_its_values(db: Database) -> None:
    """text -> integer and text -> an enum have no assignment cast from a text column: the batch goes
    by text COPY into the table's shape as it is now (review2 N1: the run failed, nothing written)."""
    source = make_source(writes=(TM,))
    db.migrate(source)
    db.run("create type mood as enum ('ok', 'sad'); create table tm (id bigint primary key, n text, e text)")
    catalog = migrations.check(db.conn, [source])
    db.run("alter table tm alter n type integer using n::integer, alter e type mood using e::mood")
    rows = [{"id": i, "n": str(i), "e": "ok"} for i in range(targets.COPY_FROM + 1)]
    assert writer.write(db.conn, source, [result(1, {0: rows})], catalog=catalog) == []
    assert db.rows("select count(*), sum(n), min(e::text) from tm") == [(len(rows), sum(range(len(rows))), "ok")]


def test_a_one_column_key_dedups_as_the_tuples_of_a_wider_key_do() -> None:
    """One row per key, the last winning, in the keys' order: by the values themselves for a one-column
    key, as by their 1-tuples (also when mixed types leave only the text order); a missing key is null."""
    target = Write(table=QualifiedName(None, "t"), key=("id",), columns=(Field("id", expr("record.id")),))
    plan = writeplan.WritePlan(target, {QualifiedName(None, "t"): {"id": "bigint"}})
    for keys in ([3, 1, 2, 1, 3], [5, "a", 5, "b", 2], [2.5, 1, True, 2.5], [None, 1]):
        rows: list[dict[str, Any]] = [{"id": key, "n": n} for n, key in enumerate(keys)]
        rows.append({"n": "no id"})
        unique = {(row.get("id"),): row for row in rows}
        try:
            ordered = sorted(unique)
        except TypeError:
            ordered = sorted(unique, key=str)
        assert targets._dedup(plan, rows) == [unique[key] for key in ordered], keys
