"""picks: the sql / function selections paged by after_key (or called once), their rows made into
entities (one per key; a key twice with different columns fails naming it)."""

from __future__ import annotations

from typing import Any

import pytest

from runner import selection
from runner.errors import SelectionError
from runner.partitions import partition_of
from runner.spec import FunctionArg, QualifiedName, SelectionType
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


def test_sql_selection_that_ignores_after_key_stops(status: Database) -> None:
    """A query that returns the same rows again ends the selection instead of looping forever."""
    source = make_source(
        selection=SelectionType.SQL, sql="select appid from sync_status order by appid limit %(limit)s"
    )
    assert _select(status, source, chunk_size=3, claim=False) == [[10, 20, 30]]


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
