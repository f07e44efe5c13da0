"""ids: --ids cast to the key type, their entity columns from the source's own selection, or refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import cli, ids
from runner.errors import SelectionError, UsageError
from runner.spec import FunctionArg, QualifiedName, SelectionType
from tests.apiserver import ApiServer, Reply
from tests.pg import Database, make_source

SINCE_SQL = (
    "select s.appid, s.since from seen s where s.appid > coalesce(%(after_key)s, 0) and s.active"
    " order by s.appid limit %(limit)s"
)


@pytest.fixture
def seen(db: Database) -> Database:
    db.run(
        "create table seen (appid int primary key, since text, active boolean);"
        " insert into seen values (1, '2024-01-01', true), (2, '2024-02-02', true), (3, '2024-03-03', false)"
    )
    return db


def test_sql_selection_supplies_every_column_for_the_ids(seen: Database) -> None:
    """The source's own query, restricted to the ids, in the order given: `since` is there."""
    source = make_source(selection=SelectionType.SQL, sql=SINCE_SQL, columns=(("since", "text"),))
    assert ids.rows(seen.conn, source, [2, 1]) == [
        {"appid": 2, "since": "2024-02-02"},
        {"appid": 1, "since": "2024-01-01"},
    ]


def test_ids_the_query_leaves_out_are_refused_by_name(seen: Database) -> None:
    """An id the query's own filters exclude (inactive, unknown) has no columns: refused, never nulls."""
    source = make_source(selection=SelectionType.SQL, sql=SINCE_SQL, columns=(("since", "text"),))
    assert ids.rows(seen.conn, source, [1, 3, 9]) == [{"appid": 1, "since": "2024-01-01"}]
    with pytest.raises(UsageError) as error:
        ids.missing(seen.conn, source, ["1", "3", "9"])
    assert str(error.value) == (
        "--ids 3,9: entities.sql does not return them (its own filters, due-ness included, apply to --ids"
        " too), so their entity columns (since) are unknown; example cannot run them — name ids its"
        " selection returns"
    )


def test_ids_not_due_by_the_querys_own_filter_are_refused(seen: Database) -> None:
    """docs/cli.md: with an sql selection, `--ids` runs the query restricted to the ids; a due-ness
    filter in it still holds an entity back (the docs once said "due or not")."""
    seen.run("alter table seen add column synced_at timestamptz; update seen set synced_at = now() where appid = 2")
    due = SINCE_SQL.replace("and s.active", "and (s.synced_at is null or s.synced_at < now() - interval '1 day')")
    source = make_source(selection=SelectionType.SQL, sql=due, columns=(("since", "text"),))
    assert ids.rows(seen.conn, source, [1, 2]) == [{"appid": 1, "since": "2024-01-01"}]
    with pytest.raises(UsageError, match=r"^--ids 2: entities.sql does not return them \(its own filters, due-ness"):
        ids.missing(seen.conn, source, ["1", "2"])


def test_function_selection_supplies_its_columns(seen: Database) -> None:
    """A function selection is called whole and restricted to the ids, like a query."""
    seen.run(
        "create function picks(p_limit int) returns table (appid int, since text)"
        " language sql as $$ select appid, since from seen order by appid limit p_limit $$"
    )
    source = make_source(
        selection=SelectionType.FUNCTION,
        function=QualifiedName(None, "picks"),
        args=(("p_limit", FunctionArg(parameter="limit")),),
        columns=(("since", "text"),),
    )
    assert ids.rows(seen.conn, source, [3]) == [{"appid": 3, "since": "2024-03-03"}]


def test_default_selection_needs_a_status_row_for_extra_columns(db: Database) -> None:
    """Default selection: columns from the status row; an id with no row is refused, not filled with null."""
    source = make_source(columns=(("cc", "text"),))
    db.migrate(source)
    db.run("alter table sync_status add column cc text; insert into sync_status (appid, cc) values (1, 'us')")
    assert ids.rows(db.conn, source, [1, 2]) == [{"appid": 1, "cc": "us"}]
    with pytest.raises(UsageError, match=r"^--ids 2: sync_status has no row for them, so their entity columns \(cc\)"):
        ids.missing(db.conn, source, [1, 2])


def test_key_only_sources_take_any_id(db: Database) -> None:
    """A source needing only the key runs any id, with no row anywhere."""
    source = make_source(selection=SelectionType.SQL, sql="select 1")
    assert ids.rows(db.conn, source, [7]) == [{"appid": 7}]
    ids.missing(db.conn, source, ["7"])


def test_a_broken_query_names_the_setting(seen: Database) -> None:
    """The user's SQL failing is a usage error naming entities.sql, not a raw database error."""
    source = make_source(
        selection=SelectionType.SQL,
        sql="select appid, nope from seen where appid > %(after_key)s limit %(limit)s",
        columns=(("nope", "text"),),
    )
    with pytest.raises(UsageError, match=r'^--ids: entities.sql failed: column "nope" does not exist'):
        ids.missing(seen.conn, source, [1])


@pytest.mark.parametrize(
    ("kind", "value", "cast"), [("int", "42", 42), ("bigint", "-9", -9), ("text", "stn_1", "stn_1")]
)
def test_cast_key(kind: str, value: str, cast: object) -> None:
    """Ids become the key's type."""
    assert ids.cast_key(make_source(key_type=kind), value) == cast


def test_ids_find_keys_the_query_returns_as_text(seen: Database) -> None:
    """A query returning its int keys as text ('01', ' 2'): --ids 1,2 are those entities (read as the
    key type, as a normal run reads them: runner/picks.py), not refused as missing."""
    query = "select appid, since from (select lpad(appid::text, 2, '0') as appid, since from seen) s"
    source = make_source(selection=SelectionType.SQL, sql=query, columns=(("since", "text"),))
    assert ids.rows(seen.conn, source, [2, 1]) == [
        {"appid": 2, "since": "2024-02-02"},
        {"appid": 1, "since": "2024-01-01"},
    ]
    ids.missing(seen.conn, source, ["1", "2"])


def test_an_id_the_query_returns_twice_is_one_entity_or_refused(seen: Database) -> None:
    """review F6b: the last of two rows for an id won silently. The same row twice is one entity;
    two different rows are two requests for one entity, refused as an sql selection refuses them."""
    same = "select appid, since from seen union all select appid, since from seen"
    source = make_source(selection=SelectionType.SQL, sql=same, columns=(("since", "text"),))
    assert ids.rows(seen.conn, source, [1]) == [{"appid": 1, "since": "2024-01-01"}]
    other = "select appid, since from seen union all select appid, 'x' from seen"
    source = make_source(selection=SelectionType.SQL, sql=other, columns=(("since", "text"),))
    with pytest.raises(SelectionError) as error:
        ids.missing(seen.conn, source, ["1", "01"])
    assert str(error.value) == (
        "example: entities.sql returned appid 1 twice, with since '2024-01-01' and 'x': an entity is"
        " selected once per key, so return one row per appid"
    )
    assert error.value.exit_code == 2


def test_a_status_table_with_an_id_twice_is_refused(db: Database) -> None:
    """A status table without a unique key can hold an entity twice: with different columns the id
    is refused naming them (the last row won silently)."""
    source = make_source(columns=(("cc", "text"),))
    db.run("create table sync_status (appid int, cc text); insert into sync_status values (1, 'us'), (1, 'de')")
    with pytest.raises(
        SelectionError, match=r"^example: sync_status returned appid 1 twice, with cc 'us' and 'de'"
    ) as raised:
        ids.rows(db.conn, source, [1])
    assert str(raised.value).endswith("so keep one row per appid")  # a table, not a query (review revI F10)


def test_duplicate_ids_are_one_entity(api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """review F6b: `test-read --ids 5,05` on a key-only source (no database needed) fetched 5 twice."""
    monkeypatch.setenv("API_URL", api.url)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    source = tmp_path / "one.yaml"
    source.write_text(
        "name: one\nentities: {type: sql, key: appid, key_type: int,"
        ' sql: "select 1 as appid where %(after_key)s::int is null limit %(limit)s"}\n'
        'request: {url: "${env.API_URL}/apps/{appid}"}\nrate_limit: {requests: 10, per: 1s}\nstatus: false\n'
        "writes: [{table: seen, key: [appid], columns: {appid: entity.appid}}]\n"
    )
    api.route("/apps/5", Reply(200, json={}))
    assert cli.main(["test-read", str(source), "--ids", "5,05, 5"]) == 0
    assert [r.path for r in api.requests] == ["/apps/5"]


def test_an_id_in_conflict_stops_the_run_before_any_job_row(
    db: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """review F6b end to end: `run --ids 5,5` on a query returning 5 twice with different columns
    fetched `/apps/5/b` (the last row) and completed; it is refused, exit 2, before any request."""
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("API_URL", api.url)
    source = tmp_path / "two.yaml"
    source.write_text(
        "name: two\nentities: {type: sql, key: appid, key_type: int, columns: {appid: int, cc: text},"
        " sql: \"select * from (values (5, 'a'), (5, 'b')) v(appid, cc)"
        ' where %(after_key)s::int is null limit %(limit)s"}\n'
        'request: {url: "${env.API_URL}/apps/{appid}/{cc}"}\nrate_limit: {requests: 10, per: 1s}\nstatus: false\n'
        "writes: [{table: seen, key: [appid], columns: {appid: entity.appid}}]\n"
    )
    db.run("create table seen (appid int primary key)")
    assert cli.main(["migrate", str(source)]) == 0
    api.route("/apps/5/a", Reply(200, json={}))
    api.route("/apps/5/b", Reply(200, json={}))
    assert cli.main(["run", str(source), "--ids", "5,5"]) == 2
    assert "two: entities.sql returned appid 5 twice, with cc 'a' and 'b'" in capsys.readouterr().err
    assert api.requests == []
    assert db.scalar("select count(*) from sync_jobs") == 0


def _two_columns(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: ApiServer, query: str) -> Path:
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("API_URL", api.url)
    source = tmp_path / "two.yaml"
    source.write_text(
        "name: two\nentities: {type: sql, key: appid, key_type: int, columns: {appid: int, cc: text},"
        f' sql: "{query}"}}\n'
        'request: {url: "${env.API_URL}/apps/{appid}/{cc}"}\nrate_limit: {requests: 10, per: 1s}\nstatus: false\n'
        "writes: [{table: seen, key: [appid], columns: {appid: entity.appid}}]\n"
    )
    db.run("create table seen (appid int primary key)")
    assert cli.main(["migrate", str(source)]) == 0
    return source


def test_an_id_the_query_no_longer_returns_fails_the_run_naming_it(
    db: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """review revI F5: the ids are checked, then the query runs again for them; an id it no longer
    returned was dropped silently and the run `completed`. A subset of the named ids is not a
    completed run: the job fails (exit 1) naming the ids."""
    db.run(
        "create sequence flip; create table things (appid int, cc text); insert into things values (5, 'us'), (6, 'de')"
    )
    query = (  # returns the rows on every other call: the check sees them, the run does not
        "with c as materialized (select nextval('flip') v) select appid, cc from things, c where mod(c.v, 2) = 1"
        " and appid > coalesce(%(after_key)s::int, 0) order by appid limit %(limit)s"
    )
    source = _two_columns(db, tmp_path, monkeypatch, api, query)
    assert cli.main(["run", str(source), "--ids", "5,6"]) == 1
    said = "--ids 5,6: entities.sql returned them when the run started but not when they were run"
    assert said in capsys.readouterr().err
    [(status, error)] = db.rows("select status, error_message from sync_jobs")
    assert (status, said in error) == ("failed", True)
    assert api.requests == []


@pytest.mark.parametrize("given", [",", " , ,", ""])
def test_ids_naming_no_id_are_refused(
    db: Database,
    api: ApiServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    given: str,
) -> None:
    """review revI F10: `--ids ,` ran 0 entities and reported completed (`--ids ''` ran the whole
    selection): refused, exit 2, before any job row."""
    source = _two_columns(
        db, tmp_path, monkeypatch, api, "select 5 as appid, 'us' as cc where %(after_key)s::int is null limit %(limit)s"
    )
    assert cli.main(["run", str(source), "--ids", given]) == 2
    assert "--ids names no id: give two's keys, comma-separated" in capsys.readouterr().err
    assert db.scalar("select count(*) from sync_jobs") == 0
    assert api.requests == []


def test_a_long_id_is_not_echoed_in_full() -> None:
    """review revI F7: a 5000-character id was echoed whole in the refusal."""
    with pytest.raises(UsageError) as raised:
        ids.cast_key(make_source(), "x" * 5000)
    assert str(raised.value).startswith("--ids: '" + "x" * 56 + "... is not a whole number")
    assert len(str(raised.value)) < 200
    assert ids.cast_key(make_source(), "0" * 5000 + "7") == 7  # read as PostgreSQL reads it


def _key_only(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: ApiServer) -> Path:
    """A key-only source (any id runs) whose `entities.limit` is 100."""
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("API_URL", api.url)
    monkeypatch.delenv("BATCH_SIZE", raising=False)
    source = tmp_path / "many.yaml"
    source.write_text(
        "name: many\nentities: {type: sql, key: appid, key_type: int, limit: 100,"
        ' sql: "select 1 as appid where %(after_key)s::int is null limit %(limit)s"}\n'
        'request: {url: "${env.API_URL}/apps/{appid}"}\nrate_limit: {requests: 1000, per: 1s}\nstatus: false\n'
        "writes: [{table: seen, key: [appid], columns: {appid: entity.appid}}]\n"
    )
    db.run("create table seen (appid int primary key)")
    assert cli.main(["migrate", str(source)]) == 0
    return source


def test_every_named_id_runs_past_entities_limit(
    db: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review revJ F2: `run --ids 1001,…,1150` with `entities.limit: 100` ran 100 of the 150 ids and
    reported `completed`, exit 0. Every named id runs (BATCH_SIZE, the usual run size, does not cut
    them either), and the job row's batch size is the number named."""
    source = _key_only(db, tmp_path, monkeypatch, api)
    monkeypatch.setenv("BATCH_SIZE", "20")
    for appid in range(1001, 1151):
        api.route(f"/apps/{appid}", Reply(200, json={}))
    assert cli.main(["run", str(source), "--ids", ",".join(map(str, range(1001, 1151)))]) == 0
    assert sorted(int(r.path.rsplit("/", 1)[1]) for r in api.requests) == list(range(1001, 1151))
    assert db.scalar("select count(*) from seen") == 150
    assert db.rows("select status, items_processed, batch_size from sync_jobs") == [("completed", 150, 150)]


@pytest.mark.parametrize("option", ["--limit", "--batch-size"])
def test_a_limit_with_ids_is_refused(
    db: Database,
    api: ApiServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: str,
) -> None:
    """review revJ F2: which of the ids would `--limit 1 --ids 5,6` mean? Refused, exit 2, before any
    job row or request, rather than a subset run and reported complete."""
    source = _key_only(db, tmp_path, monkeypatch, api)
    assert cli.main(["run", str(source), "--ids", "5,6", option, "1"]) == 2
    assert f"{option} and --ids exclude each other: --ids runs every id it names" in capsys.readouterr().err
    assert db.scalar("select count(*) from sync_jobs") == 0
    assert api.requests == []


def _listing(tmp_path: Path, name: str) -> Path:
    source = tmp_path / f"{name}.yaml"
    source.write_text(
        f"name: {name}\nentities: {{type: list}}\n"
        'request: {url: "${env.API_URL}/list"}\nrate_limit: {requests: 10, per: 1s}\nstatus: false\n'
        "records: body\nwrites: [{table: seen, key: [appid], columns: {appid: record.id}}]\n"
    )
    return source


@pytest.mark.parametrize("command", ["run", "test-read"])
def test_ids_on_a_list_source_are_refused(
    db: Database,
    api: ApiServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    """review revK F7: `run --ids 1,2` on a list source read the whole listing, ignoring the ids.
    A listing has no entities to name: refused, exit 2, naming the source, before any request or
    job row; in a run of several sources too (`--ids` applies to each), naming the list source."""
    entity = _key_only(db, tmp_path, monkeypatch, api)
    listing = _listing(tmp_path, "catalogue")
    api.route("/list", Reply(200, json=[{"id": 1}]))
    api.route("/apps/1", Reply(200, json={}))
    assert cli.main([command, str(listing), "--ids", "1,2"]) == 2
    said = "--ids: catalogue is a list source (entities.type: list): a listing is read page by page"
    assert said in capsys.readouterr().err
    assert cli.main([command, str(entity), str(listing), "--ids", "1"]) == 2
    assert said in capsys.readouterr().err
    assert api.requests == []
    assert db.scalar("select count(*) from sync_jobs") == 0


@pytest.mark.parametrize("other", ["repeat('9', 140000)", "'0.' || repeat('0', 20000) || '1'", "'1e999999'"])
def test_only_the_named_ids_are_read_as_numbers(db: Database, other: str) -> None:
    """review revI F8: `--ids` cast every row the query returned to numeric to compare it with the ids,
    so one key past numeric's range (a 140,000-digit text) failed `--ids 5` for the others. A row
    whose key cannot be one of the named ids is left alone; the named ones are found, in any
    spelling PostgreSQL reads as them."""
    query = (
        f"select * from (values ({other}, 'x'), (' 05 ', 'a'), (' +6', 'b'), ('{'0' * 5000}7', 'c')) v(appid, cc)"
        " where %(after_key)s::text is null limit %(limit)s"
    )
    source = make_source(selection=SelectionType.SQL, sql=query, columns=(("cc", "text"),))
    found = ids.rows(db.conn, source, [5, 6, 7])
    assert found == [{"appid": 5, "cc": "a"}, {"appid": 6, "cc": "b"}, {"appid": 7, "cc": "c"}]
