"""picks: the sql / function selections paged by after_key (or called once), their rows made into
entities (one per key; a key twice with different columns fails naming it)."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from runner import cli, picks, selection
from runner.errors import SelectionError
from runner.partitions import partition_of
from runner.spec import FunctionArg, QualifiedName, SelectionType
from tests.apiserver import ApiServer, Reply
from tests.pg import Database, make_source
from tests.test_selection import _flat, _select, seeded


@pytest.fixture
def status(db: Database) -> Database:
    """sync_status with entities in every due-ness situation (tests/test_selection.py)."""
    return seeded(db)


def _function_source(*args: tuple[str, FunctionArg]) -> Any:
    return make_source(
        selection=SelectionType.FUNCTION, function=QualifiedName(None, "pick"), args=args, columns=(("score", "int"),)
    )


def test_function_with_after_key_is_paged(status: Database) -> None:
    """A function taking after_key is called page by page with the last key seen."""
    status.run(
        "create function pick(p_source text, p_limit int, p_after int) returns table (appid int, score int, extra text)"
        " language sql as $$ select appid, priority_score, 'x' from sync_status"
        " where appid > coalesce(p_after, 0) order by appid limit p_limit $$"
    )
    source = _function_source(
        ("p_source", FunctionArg(parameter="source")),
        ("p_limit", FunctionArg(parameter="limit")),
        ("p_after", FunctionArg(parameter="after_key")),
    )
    pages = list(selection.chunks(status.conn, source, limit=5, holder="a", lease_seconds=60, chunk_size=3))
    assert pages[0] == [{"appid": 10, "score": 1}, {"appid": 20, "score": 9}, {"appid": 30, "score": 5}]
    assert [[row["appid"] for row in page] for page in pages] == [[10, 20, 30], [40, 50]]
    # a second holder: a's claims, 90 (backing off) and 100 (skipped) are dropped, paging goes on
    assert _select(status, source, holder="b", chunk_size=3) == [[60], [70, 80]]


def test_function_without_after_key_is_called_once(status: Database) -> None:
    """get_apps_for_sync(p_source, p_limit) is called once with the limit; backing-off rows are dropped after."""
    source = make_source(
        selection=SelectionType.FUNCTION,
        function=QualifiedName(None, "get_apps_for_sync"),
        args=(("p_source", FunctionArg(value="example")), ("p_limit", FunctionArg(parameter="limit"))),
    )
    status.migrate(source)  # migrate creates get_apps_for_sync for a source that selects with it
    # the function returns 90, 100, 60, 40; 90 and 100 are backing off, so the first chunk is empty
    assert _select(status, source, limit=4, chunk_size=2) == [[60, 40]]


def test_sql_selection_pages_with_after_key(status: Database) -> None:
    """User SQL gets %(limit)s and %(after_key)s (null first) and is paged by the key."""
    query = (
        "select appid from sync_status where appid > coalesce(%(after_key)s::int, 0)"
        " and priority_score < 9 order by appid limit %(limit)s"
    )
    source = make_source(selection=SelectionType.SQL, sql=query)
    assert _select(status, source, chunk_size=3) == [[10, 30, 40], [60, 70, 80]]


def test_sql_selection_that_ignores_after_key_fails_instead_of_looping(status: Database) -> None:
    """A query that returns the same page again cannot page on: the selection fails naming the source
    and the setting (review revI F1: ending it silently reported the entities not reached as a
    completed run), and never loops."""
    source = make_source(
        selection=SelectionType.SQL, sql="select appid from sync_status order by appid limit %(limit)s"
    )
    pages = selection.chunks(status.conn, source, limit=100, holder="a", lease_seconds=60, chunk_size=3, claim=False)
    assert [row["appid"] for row in next(pages)] == [10, 20, 30]
    with pytest.raises(SelectionError) as raised:
        next(pages)
    assert str(raised.value) == (
        "example: entities.sql returned a page ending at appid 30 again (after_key 30): it cannot page on,"
        " so the run stops rather than skip the rest; start after after_key, ordered by appid (entities.key)"
    )


def test_null_keys_ordered_first_do_not_end_the_selection(status: Database, caplog: pytest.LogCaptureFixture) -> None:
    """review revI F1: a `desc` query puts NULL keys first; a page made only of them ended the
    selection (0 run, completed). The page is asked again, wider, past them: every entity runs, and
    the warning counts each NULL row once."""
    status.run(
        "create table catalog (appid int); insert into catalog select appid from sync_status;"
        " insert into catalog select null from generate_series(1, 8)"
    )
    query = (
        "select appid from catalog where %(after_key)s::int is null or appid < %(after_key)s::int"
        " order by appid desc limit %(limit)s"
    )
    source = make_source(selection=SelectionType.SQL, sql=query)
    assert _flat(_select(status, source, chunk_size=3, claim=False)) == list(range(100, 9, -10))
    warned = [r.getMessage() for r in caplog.records if "NULL" in r.getMessage()]
    assert warned == [
        "example: entities.sql returned 8 rows with a NULL appid: not run (a NULL key names no entity);"
        " leave them out of the selection (where appid is not null)"
    ]


def test_a_selection_of_null_keys_only_fails_instead_of_ending(status: Database) -> None:
    """NULL keys without end (after_key cannot move past them): the selection fails naming them,
    after widening the page to picks.NULL_PAST rows at most (bounded memory, no loop)."""
    query = "select null::int as appid from generate_series(1, %(limit)s) where %(after_key)s::int is null"
    source = make_source(selection=SelectionType.SQL, sql=query)
    with pytest.raises(SelectionError) as raised:
        _select(status, source, chunk_size=3, claim=False)
    assert re.fullmatch(
        r"example: entities.sql returned \d+ rows with a NULL appid and no appid after them \(after_key None\):"
        r" after_key cannot move past them, .*leave them out of the selection \(where appid is not null\)",
        str(raised.value),
    )
    assert picks.NULL_PAST <= int(str(raised.value).split()[3]) < 2 * picks.NULL_PAST + 3


def test_a_page_of_keys_already_seen_does_not_end_the_selection(status: Database) -> None:
    """review revI F2: ordered by its text, ' 1'..' 4' come before '01'..'04' (the same int keys):
    that page of keys already seen ended the selection and 5, 6, 7 never ran. after_key moves by the
    key as the query returned it ('04'), so paging goes on."""
    status.run(
        "create table codes (code text primary key);"
        " insert into codes values (' 1'), (' 2'), (' 3'), (' 4'), ('01'), ('02'), ('03'), ('04'), ('5'), ('6'), ('7')"
    )
    query = (
        "select code as appid from codes where code > coalesce(%(after_key)s::text, '') order by code limit %(limit)s"
    )
    source = make_source(selection=SelectionType.SQL, sql=query)
    assert _select(status, source, chunk_size=4, claim=False) == [[1, 2, 3, 4], [5, 6, 7]]
    assert _flat(_select(status, source, chunk_size=3)) == [1, 2, 3, 4, 5, 6, 7]  # a page cut mid-way: none lost


# A query over a union or a join can return a key twice (revD F3: the claim then failed the run with
# PostgreSQL's "ON CONFLICT DO UPDATE command cannot affect row a second time").
TWICE = (
    "select appid, score from (select appid, priority_score as score from sync_status"
    " union all select appid, {other} from sync_status) s"
    " where appid > coalesce(%(after_key)s::int, 0) order by appid, score limit %(limit)s"
)


def test_a_key_the_sql_selection_returns_twice_is_one_entity(status: Database) -> None:
    """Every key twice, the same columns both times: one entity per key, claimed and run once, pages
    going on by the key (a page of 4 rows holds 2 entities; the last pages ask for what is left)."""
    source = make_source(
        selection=SelectionType.SQL, sql=TWICE.format(other="priority_score"), columns=(("score", "int"),)
    )
    pages = _select(status, source, chunk_size=4, limit=6)
    assert pages == [[10, 20], [30, 40], [50], [60]]
    assert status.scalar("select count(*) from syncrun_state where claimed_by = 'a'") == 6
    shards = [_flat(_select(status, source, partition=(i, 3), claim=False)) for i in range(3)]
    assert sorted(k for shard in shards for k in shard) == list(range(10, 101, 10))  # each once, in one shard
    assert all(partition_of(k, 3) == i for i, shard in enumerate(shards) for k in shard)


def test_a_key_the_function_selection_returns_twice_is_one_entity(status: Database) -> None:
    """A function called once (no after_key) that repeats a key: that entity once, in its first place."""
    status.run(
        "create function pick(p_limit int) returns table (appid int, score int) language sql as"
        " $$ select * from (values (40, 1), (60, 2), (40, 1), (10, 3)) v $$"
    )
    source = _function_source(("p_limit", FunctionArg(parameter="limit")))
    assert _select(status, source) == [[40, 60, 10]]


def test_a_key_returned_twice_with_different_columns_fails_naming_it(status: Database) -> None:
    """Twice with different columns is two different requests for one entity (its claim, stamp and
    state are per key): the selection fails, naming the setting, the key and the column, and claims
    nothing of that page."""
    source = make_source(selection=SelectionType.SQL, sql=TWICE.format(other="-1"), columns=(("score", "int"),))
    with pytest.raises(SelectionError) as raised:
        _select(status, source, chunk_size=4)
    assert str(raised.value) == (
        "example: entities.sql returned appid 10 twice, with score -1 and 1:"
        " an entity is selected once per key, so return one row per appid"
    )
    assert status.scalar("select count(*) from syncrun_state where claimed_by is not null") == 0


def test_a_key_returned_twice_with_a_nan_column_is_one_entity(status: Database) -> None:
    """NaN is never == NaN in Python: the same row twice with a NaN column was reported as 'x nan and
    nan' and failed the run (review revF F5). It is the same row: one entity."""
    query = (
        "select appid, 'NaN'::float8 as x from sync_status where appid in (10, 20)"
        " and appid > coalesce(%(after_key)s::int, 0) union all select 10, 'NaN'::float8 order by 1 limit %(limit)s"
    )
    source = make_source(selection=SelectionType.SQL, sql=query, columns=(("x", "float"),))
    assert _select(status, source, chunk_size=4, claim=False) == [[10, 20]]


def test_a_key_returned_twice_with_a_nan_inside_a_json_column_is_one_entity(status: Database) -> None:
    """The same for a NaN inside a list (review revG F4: two lists holding NaN compared unequal)."""
    query = (
        "select appid, array['NaN'::float8] as x from sync_status where appid in (10, 20)"
        " and appid > coalesce(%(after_key)s::int, 0) union all select 10, array['NaN'::float8]"
        " order by 1 limit %(limit)s"
    )
    source = make_source(selection=SelectionType.SQL, sql=query, columns=(("x", "json"),))
    assert _select(status, source, chunk_size=4, claim=False) == [[10, 20]]


# --- keys as entities.key_type, NULL keys: end to end (CLI, loopback API, PostgreSQL) ----------------------
KEYED = """\
name: keyed
entities:
  type: sql
  columns: {{appid: {kind}}}
  sql: >-
    select appid from ({rows}) v(appid) where %(after_key)s::text is null limit %(limit)s
  limit: 100
request:
  url: "${{env.API_URL}}/apps/{{appid}}"
  timeout: 2s
rate_limit: {{requests: 500, per: 1s, burst: 50, bucket: keyed}}
retry: {{attempts: 2, initial: 10ms, max_delay: 50ms, max_wait: 2s}}
writes:
  - table: seen
    key: [appid]
    columns:
      appid: entity.appid
"""


@pytest.fixture
def env(db: Database, api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("API_URL", api.url)
    return db


def keyed(db: Database, tmp: Path, rows: str, kind: str = "int") -> Path:
    """A source whose sql selection returns `rows` (a `values` list) once, whatever after_key is."""
    (tmp / "syncrun.yaml").write_text(
        f"status: {{table: sync_status, key: appid}}\nentities: {{key: appid, key_type: {kind}}}\n"
    )
    source = tmp / "keyed.yaml"
    source.write_text(KEYED.format(kind=kind, rows=rows))
    assert cli.main(["migrate", str(source)]) == 0
    db.run(f"create table seen (appid {kind} primary key)")
    return source


def test_a_null_key_is_not_fetched_and_is_named(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """review F4: a NULL key was fetched as `/apps/` (the entity 'None') and counted. A NULL key names
    no entity: it is left out with a warning naming the source and the setting; the others run and
    the run completes."""
    source = keyed(env, tmp_path, "values (1), (null), (2), (null)")
    api.route("/apps/1", Reply(200, json={}))
    api.route("/apps/2", Reply(200, json={}))
    assert cli.main(["run", str(source)]) == 0
    assert sorted(r.path for r in api.requests) == ["/apps/1", "/apps/2"]
    assert env.rows("select status, items_processed from sync_jobs") == [("completed", 2)]
    assert env.rows("select appid from seen order by 1") == [(1,), (2,)]
    assert (
        "keyed: entities.sql returned 2 rows with a NULL appid: not run (a NULL key names no entity);"
        " leave them out of the selection (where appid is not null)"
    ) in capsys.readouterr().err
    assert env.scalar("select count(*) from syncrun_state where entity_key not in ('1', '2')") == 0


def test_keys_are_read_as_the_key_type(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """review F7: '01', '1', ' 2 ' and 2 from a text query for an int key were four entities, and the
    batch then failed (one status row twice). Read as PostgreSQL's int cast reads them, they are
    entities 1 and 2, fetched, written and stamped once each."""
    source = keyed(env, tmp_path, "values ('01'), ('1'), (' 2 '), ('2')")
    api.route("/apps/1", Reply(200, json={}))
    api.route("/apps/2", Reply(200, json={}))
    assert cli.main(["run", str(source)]) == 0
    assert sorted(r.path for r in api.requests) == ["/apps/1", "/apps/2"]
    assert env.rows("select status, items_processed, items_succeeded from sync_jobs") == [("completed", 2, 2)]
    assert env.rows("select appid from sync_status where last_keyed_sync is not null order by 1") == [(1,), (2,)]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("'abc'", "'abc' is not a whole number"),
        ("'01.5'", "'01.5' is not a whole number"),
        ("'1e3'", "'1e3' is not a whole number"),
        ("'2147483648'", "'2147483648' is out of int's range"),
    ],
)
def test_a_key_that_is_not_of_the_key_type_fails_the_selection_naming_it(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, reason: str
) -> None:
    """A key that cannot be an int is a query of the wrong type, not an entity's outcome: the
    selection fails naming the source, the setting and the key, before any request of that page
    or claim (it failed at write time, exit 1 with nothing stamped and a database error)."""
    source = keyed(env, tmp_path, f"values ('1'), ({value})")
    assert cli.main(["run", str(source)]) == 1
    said = f"keyed: entities.sql returned appid {reason}; the key is int (entities.key_type)"
    assert said in capsys.readouterr().err
    [(status, error)] = env.rows("select status, error_message from sync_jobs")
    assert (status, said in error) == ("failed", True)
    assert api.requests == []
    assert env.scalar("select count(*) from syncrun_state") == 0


def test_an_integer_key_of_a_text_key_type_is_its_text(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A query returning integers for a text key: each key is its text, stamped on its status row
    (the integer was compared with the text column and the batch failed)."""
    source = keyed(env, tmp_path, "values (1), (7)", kind="text")
    for path in ("/apps/1", "/apps/7"):
        api.route(path, Reply(200, json={}))
    assert cli.main(["run", str(source)]) == 0
    assert sorted(r.path for r in api.requests) == ["/apps/1", "/apps/7"]
    assert env.rows("select appid from sync_status where last_keyed_sync is not null order by 1") == [("1",), ("7",)]


@pytest.mark.parametrize(
    ("kind", "value", "typed"),
    [
        ("int", "01", 1),
        ("int", " +7\t", 7),
        ("int", "-2147483648", -(2**31)),
        ("int", 5, 5),
        ("int", Decimal("5"), 5),
        ("int", 5.0, 5),
        ("bigint", "9223372036854775807", 2**63 - 1),
        ("bigint", "0000000000000000000000001", 1),
        ("int", " -" + "0" * 5000 + "7 ", -7),  # review revI F7: int() refuses 4300+ digits; PostgreSQL reads it
        ("text", "01", "01"),
        ("text", " a ", " a "),
        ("text", 12, "12"),
    ],
)
def test_typed(kind: str, value: Any, typed: Any) -> None:
    """Keys as key_type: what PostgreSQL's own cast reads as that number (whitespace, sign, leading zeros)."""
    assert picks.typed(kind, value) == typed
    assert type(picks.typed(kind, value)) is type(typed)


@pytest.mark.parametrize(
    ("kind", "value", "reason"),
    [
        ("int", "", "'' is not a whole number"),
        ("int", "1_000", "'1_000' is not a whole number"),
        ("int", "0x10", "'0x10' is not a whole number"),
        ("int", "\u0663", "'\u0663' is not a whole number"),
        ("int", "\u00a01", "'\\xa01' is not a whole number"),
        ("int", True, "True is not a whole number"),
        ("int", 1.5, "1.5 is not a whole number"),
        ("int", Decimal("NaN"), "Decimal('NaN') is not a whole number"),
        ("int", -(2**31) - 1, "-2147483649 is out of int's range"),
        ("bigint", "9" * 5000, "'" + "9" * 56 + "... is out of bigint's range"),
        ("bigint", Decimal("1E+999999999"), "Decimal('1E+999999999') is out of bigint's range"),
        ("text", 1.5, "1.5 is a float, not text"),
        ("text", True, "True is a bool, not text"),
    ],
)
def test_not_typed(kind: str, value: Any, reason: str) -> None:
    """Anything else is refused with the reason (bounded: a huge number is never built)."""
    with pytest.raises(ValueError, match=re.escape(reason)):
        picks.typed(kind, value)


def test_a_selection_without_a_declared_column_fails_naming_it(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """review revI F3: a declared column the query does not return was a KeyError building the URL
    (exit 70): the selection fails naming the column, exit 1, before any request."""
    source = keyed(env, tmp_path, "values (1)")
    source.write_text(source.read_text().replace("columns: {appid: int}", "columns: {appid: int, cc: text}"))
    assert cli.main(["run", str(source)]) == 1
    said = "keyed: entities.sql returned no cc column: return every entities.columns column (appid, cc)"
    assert said in capsys.readouterr().err
    assert env.rows("select status from sync_jobs") == [("failed",)]
    assert api.requests == []


def test_a_selection_without_the_key_column_fails_naming_it(status: Database) -> None:
    """A query that returns no key column was a KeyError (exit 70): a SelectionError naming it."""
    query = "select appid as id from sync_status where %(after_key)s::int is null limit %(limit)s"
    source = make_source(selection=SelectionType.SQL, sql=query)
    with pytest.raises(SelectionError, match=r"^example: entities.sql returned no appid column: return the key"):
        _select(status, source, claim=False)
