"""selection: due-ness order, keyset chunks, claims taken as chunks are selected, ids, function/sql
selection, partitioned selections."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from runner import claims, cli, selection
from runner.errors import SelectionError
from runner.partitions import partition_of
from runner.spec import QualifiedName, SelectionType
from tests.apiserver import ApiServer, Reply
from tests.pg import Database, make_source

SOURCE = make_source(columns=(("priority_score", "int"),))


@pytest.fixture
def status(db: Database) -> Database:
    return seeded(db)


def seeded(db: Database) -> Database:
    """sync_status with entities in every due-ness situation (see the comments); tests/test_picks.py too."""
    db.migrate(SOURCE)
    db.run(
        "insert into sync_status (appid, priority_score, is_syncable, sync_interval_hours, last_example_sync) values"
        " (10, 1, true, 24, now() - interval '30 hours'),"  # stale, low priority
        " (20, 9, true, 24, now() - interval '2 hours'),"  # fresh: not due
        " (30, 5, true, 1, now() - interval '2 hours'),"  # fresh by default, but its interval is 1 h
        " (40, 0, true, 24, null),"  # never synced
        " (50, 99, false, 24, null),"  # not syncable
        " (60, 7, true, 24, null),"  # never synced, higher priority
        " (70, 1, true, 24, now() - interval '40 hours'),"  # stale, same priority as 10 but older
        " (80, 3, true, null, now() - interval '25 hours'),"  # no interval: refresh_interval (24 h)
        " (90, 8, true, 24, null),"  # never synced but backing off
        " (100, 8, true, 24, null)"  # never synced but skipped until tomorrow
    )
    db.run(
        "insert into syncrun_state (source, entity_key, next_attempt_at, skip_until) values"
        " ('example', '90', now() + interval '1 hour', null), ('example', '100', null, now() + interval '1 day'),"
        " ('other', '10', now() + interval '1 hour', now() + interval '1 day')"  # another source's state
    )
    return db


def _select(db: Database, source: Any = SOURCE, holder: str = "a", **kwargs: Any) -> list[list[Any]]:
    kwargs.setdefault("limit", 100)
    pages = selection.chunks(db.conn, source, holder=holder, lease_seconds=60, **kwargs)
    return [[row[source.entities.key] for row in page] for page in pages]


def _flat(pages: list[list[Any]]) -> list[Any]:
    return [key for page in pages for key in page]


def test_default_order_never_synced_then_priority_then_oldest(status: Database) -> None:
    """Never synced first, then priority desc, oldest stamp, key; not-due entities are left out."""
    assert _flat(_select(status)) == [60, 40, 30, 80, 70, 10]


def test_default_rows_carry_the_declared_columns(status: Database) -> None:
    """Each entity dict has exactly the declared entity columns."""
    pages = list(selection.chunks(status.conn, SOURCE, limit=2, holder="a", lease_seconds=60))
    assert pages == [[{"appid": 60, "priority_score": 7}, {"appid": 40, "priority_score": 0}]]


def test_keyset_chunks_page_through_in_order(status: Database) -> None:
    """Small chunks give the same order as one big one, without duplicates, and stop at the limit."""
    assert _select(status, chunk_size=2) == [[60, 40], [30, 80], [70, 10]]
    assert _select(status, chunk_size=4, limit=5) == [[60, 40, 30, 80], [70]]


def test_refresh_interval_applies_without_an_interval_column(status: Database) -> None:
    """With interval_column unset, refresh_interval decides for every entity."""
    source = make_source(interval_column=None, refresh_interval=3600.0)
    assert _flat(_select(status, source)) == [60, 40, 20, 30, 80, 70, 10]


def test_claims_keep_concurrent_runners_apart(status: Database) -> None:
    """A live claim by another holder hides an entity; the holder itself may select it again."""
    assert _flat(_select(status, holder="a", limit=2)) == [60, 40]
    assert _flat(_select(status, holder="b")) == [30, 80, 70, 10]
    assert _flat(_select(status, holder="a", limit=3)) == [60, 40]
    assert status.rows(
        "select claimed_by, count(*) from syncrun_state where claimed_by is not null group by 1 order by 1"
    ) == [
        ("a", 2),
        ("b", 4),
    ]


def test_expired_claims_can_be_taken_over(status: Database) -> None:
    """Once a claim's lease expires, another holder gets the entity."""
    _select(status, holder="a", limit=2)
    status.run("update syncrun_state set claim_expires_at = now() - interval '1 second' where entity_key = '60'")
    assert _flat(_select(status, holder="b", limit=1)) == [60]


def test_dry_runs_claim_nothing(status: Database) -> None:
    """claim=False selects the same entities and leaves syncrun_state untouched."""
    assert _flat(_select(status, claim=False)) == [60, 40, 30, 80, 70, 10]
    assert status.scalar("select count(*) from syncrun_state where claimed_by is not null") == 0


def test_concurrent_runners_never_share_an_entity(db: Database) -> None:
    """Four threads claiming from 400 due entities at once end with disjoint sets covering them all."""
    db.migrate(SOURCE)
    db.run("insert into sync_status (appid) select g * 10 from generate_series(1, 400) g")
    results: dict[str, list[Any]] = {}

    def runner(holder: str) -> None:
        with db.connect() as conn:
            pages = selection.chunks(conn, SOURCE, limit=400, holder=holder, lease_seconds=60, chunk_size=25)
            results[holder] = [row["appid"] for page in pages for row in page]

    threads = [threading.Thread(target=runner, args=(f"r{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [key for keys in results.values() for key in keys]
    assert len(claimed) == len(set(claimed)) == 400


def test_ids_select_exactly_those_entities(status: Database) -> None:
    """--ids ignores due-ness and backoff and keeps the order given; an id with no status row has no
    columns to run with: the others run, then the selection fails naming it (the command line refuses
    it before the run: tests/test_ids.py; a row gone since then must not end `completed`)."""
    pages = selection.chunks(status.conn, SOURCE, limit=10, holder="a", lease_seconds=60, ids=["20", 90, "12345"])
    assert next(pages) == [{"appid": 20, "priority_score": 9}, {"appid": 90, "priority_score": 8}]
    with pytest.raises(SelectionError, match=r"^--ids 12345: sync_status had a row for them when the run started"):
        next(pages)


def test_ids_run_whole_past_the_limit(status: Database) -> None:
    """review revJ F2: 150 ids with `limit` 100 selected the first 100 and the run reported completed;
    a limit caps a selection, never a list of ids (the command line refuses `--limit` with `--ids`)."""
    source = make_source(selection=SelectionType.SQL, sql="select 1")  # key-only: any id runs
    chunks = selection.chunks(
        status.conn, source, limit=100, holder="a", lease_seconds=60, ids=range(1, 151), chunk_size=40
    )
    pages = list(chunks)
    assert [len(page) for page in pages] == [40, 40, 40, 30]
    assert _flat([[row["appid"] for row in page] for page in pages]) == list(range(1, 151))


def test_no_priority_column_orders_by_stamp_then_key(status: Database) -> None:
    """`priority_column: null` is allowed: never synced first, then the oldest stamp, then the key
    (the constant put in its place was once a bare `0`, read by ORDER BY as a column position)."""
    source = make_source(priority_column=None)
    selection.check(status.conn, source)
    assert _flat(_select(status, source)) == [40, 60, 70, 10, 80, 30]
    assert _select(status, source, chunk_size=2) == [[40, 60], [70, 10], [80, 30]]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"priority_column": "name"},
            "example: selecting entities with the default selection over sync_status (entities: priority_column:"
            " name, interval_column: sync_interval_hours, syncable_column: is_syncable) failed: ",
        ),
        (
            {"selection": SelectionType.SQL, "sql": "select appid from nowhere where appid > %(after_key)s"},
            'example: selecting entities with entities.sql failed: relation "nowhere" does not exist',
        ),
        (
            {"selection": SelectionType.FUNCTION, "function": QualifiedName(None, "no_such_fn")},
            "example: selecting entities with entities.function (no_such_fn) failed: function no_such_fn() does not"
            " exist",
        ),
    ],
)
def test_a_broken_selection_names_its_setting(status: Database, changes: dict[str, Any], message: str) -> None:
    """A selection the database refuses is a SelectionError (exit 2) naming the setting, never raw SQL
    text; the run-start check finds it without claiming anything."""
    status.run("alter table sync_status add column name text")
    source = make_source(**changes)
    with pytest.raises(SelectionError) as error:
        selection.check(status.conn, source)
    assert str(error.value).startswith(message)
    assert error.value.exit_code == 2
    with pytest.raises(SelectionError):
        _select(status, source)
    assert status.scalar("select count(*) from syncrun_state where claimed_by is not null") == 0


def test_ids_respect_other_holders_claims(status: Database) -> None:
    """An entity claimed by another live runner is not handed out again through --ids."""
    _select(status, holder="b", limit=1)
    busy: list[claims.Held] = []
    assert _flat(_select(status, holder="a", ids=[60, 40], busy=busy)) == [40]
    assert [(held.key, held.holder) for held in busy] == [(60, "b")]  # named, so the run can say so


def test_partitions_split_the_default_selection(status: Database) -> None:
    """The shards of one selection are disjoint and together give all due entities."""
    shards = [_flat(_select(status, partition=(i, 3), claim=False)) for i in range(3)]
    assert sorted(k for shard in shards for k in shard) == [10, 30, 40, 60, 70, 80]
    assert all(partition_of(k, 3) == i for i, shard in enumerate(shards) for k in shard)


def test_ids_for_function_sources_are_key_only(status: Database) -> None:
    """With --ids a function/sql source gets {key: id} dicts, the key cast to its type."""
    source = make_source(selection=SelectionType.SQL, sql="select 1")
    pages = list(selection.chunks(status.conn, source, limit=5, holder="a", lease_seconds=60, ids=["7", "8"]))
    assert pages == [[{"appid": 7}, {"appid": 8}]]


def test_runners_claiming_in_small_chunks_share_the_due_set(db: Database) -> None:
    """Two runners of one source, each asking for all 100 due entities but claiming 10 at a time (a
    callable chunk size, as runner/claimsize.py gives), alternate: each gets half, none twice."""
    db.migrate(SOURCE)
    db.run("insert into sync_status (appid) select g from generate_series(1, 100) g")
    asked: list[str] = []
    with db.connect() as other:
        runners = {
            holder: selection.chunks(
                conn,
                SOURCE,
                limit=100,
                holder=holder,
                lease_seconds=60,
                chunk_size=lambda h=holder: asked.append(h) or 10,
            )
            for holder, conn in (("a", db.conn), ("b", other))
        }
        taken: dict[str, list[Any]] = {"a": [], "b": []}
        while runners:
            for holder in list(runners):
                page = next(runners[holder], None)
                if page is None:
                    del runners[holder]
                else:
                    taken[holder] += [row["appid"] for row in page]
    assert sorted(taken["a"] + taken["b"]) == list(range(1, 101))
    assert (len(taken["a"]), len(taken["b"])) == (50, 50)
    assert asked[:2] == ["a", "b"]


@pytest.mark.parametrize(
    "failure",
    [
        "consecutive_errors = 1, next_attempt_at = now() - interval '1 minute'",  # definitive, wait over
        "transient_runs = 1",  # failed transiently
        "refused = true",  # refused with 401/403: recorded, never counted
    ],
)
def test_entities_whose_last_attempt_failed_keep_their_place_in_the_order(status: Database, failure: str) -> None:
    """review13c R1: 60 and 40 (never synced, first in the order) failed on their last attempt; they
    stay first (a failure does not demote an entity: a once-failed top entity would wait behind every
    healthy one for good). The breaker, not the order, keeps such a block from stopping every run
    (runner/history.py)."""
    status.run(
        "insert into syncrun_state (source, entity_key, last_error, last_error_at) values"
        " ('example', '60', 'x', now() - interval '2 hours'), ('example', '40', 'x', now() - interval '2 hours')"
    )
    status.run(f"update syncrun_state set {failure} where source = 'example' and entity_key in ('60', '40')")
    assert _flat(_select(status, claim=False)) == [60, 40, 30, 80, 70, 10]
    assert _select(status, chunk_size=2, holder="b") == [[60, 40], [30, 80], [70, 10]]


def test_an_entity_failing_during_the_run_is_not_selected_again_by_the_next_chunk(status: Database) -> None:
    """An entity that fails between two chunks (written, its claim released) is behind the keyset
    cursor and is not met again in the same run."""
    pages = selection.chunks(status.conn, SOURCE, limit=100, holder="a", lease_seconds=60, chunk_size=2)
    first = next(pages)
    assert [row["appid"] for row in first] == [60, 40]
    status.run(
        "update syncrun_state set last_error = 'HTTP 503', last_error_at = now() + interval '1 second',"
        " claimed_by = null, claim_expires_at = null where source = 'example' and entity_key in ('60', '40')"
    )
    assert [[row["appid"] for row in page] for page in pages] == [[30, 80], [70, 10]]


def test_a_null_key_in_the_status_table_is_named_and_the_others_run(
    db: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """review F4: a status table without a primary key can hold a NULL key; claiming it failed the
    whole run (null entity_key in syncrun_state). It names no entity: left out with a warning naming
    the source and the table, the others run and the run completes (every run says so again)."""
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("API_URL", api.url)
    db.run("create table sync_status (appid int); create table seen (appid int primary key)")
    (tmp_path / "syncrun.yaml").write_text("status: {table: sync_status, key: appid}\n")
    source = tmp_path / "plain.yaml"
    source.write_text(
        "name: plain\nentities: {limit: 10}\nrequest: {url: '${env.API_URL}/apps/{appid}'}\n"
        "rate_limit: {requests: 100, per: 1s}\nwrites: [{table: seen, key: [appid], columns: {appid: entity.appid}}]\n"
    )
    assert cli.main(["migrate", str(source)]) == 0
    db.run("insert into sync_status (appid) values (1), (null), (2), (null)")
    api.route("/apps/1", Reply(200, json={}))
    api.route("/apps/2", Reply(200, json={}))
    for run in (1, 2):
        assert cli.main(["run", str(source)] + (["--dry-run"] if run == 2 else [])) == 0
        said = (
            "plain: sync_status returned 2 rows with a NULL appid: not run (a NULL key names no entity);"
            " give them a key or delete them"
        )
        assert said in capsys.readouterr().err
    assert sorted(r.path for r in api.requests) == ["/apps/1", "/apps/2"]  # the second run: only NULLs due
    assert db.rows("select status, items_processed from sync_jobs") == [("completed", 2)]
    assert db.scalar("select count(*) from syncrun_state where entity_key not in ('1', '2')") == 0


def _plain(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: ApiServer, table: str) -> Path:
    """A default-selection source over `table` (created by `table`, a statement), fetching /apps/{appid}."""
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("API_URL", api.url)
    db.run(f"{table}; create table seen (appid int primary key)")
    (tmp_path / "syncrun.yaml").write_text("status: {table: sync_status, key: appid}\n")
    source = tmp_path / "plain.yaml"
    source.write_text(
        "name: plain\nentities: {limit: 100}\nrequest: {url: '${env.API_URL}/apps/{appid}'}\n"
        "rate_limit: {requests: 1000, per: 1s}\nwrites: [{table: seen, key: [appid], columns: {appid: entity.appid}}]\n"
    )
    assert cli.main(["migrate", str(source)]) == 0
    return source


def test_null_keys_are_counted_every_run_and_never_due(
    db: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """review revI F6: NULL keys sort after the others, so a run that stopped before them (its limit)
    never said so, and `status` counted them as due. One count a run: the warning is right every
    run; `status` does not count them as due."""
    source = _plain(db, tmp_path, monkeypatch, api, "create table sync_status (appid int)")
    db.run("insert into sync_status (appid) select g from generate_series(1, 12) g")
    db.run("insert into sync_status (appid) select null from generate_series(1, 6)")
    for appid in range(1, 13):
        api.route(f"/apps/{appid}", Reply(200, json={}))
    assert cli.main(["status", str(source)]) == 0
    assert "due now 12 " in capsys.readouterr().out
    for limit in ("5", "100"):
        assert cli.main(["run", str(source), "--limit", limit]) == 0
        err = capsys.readouterr().err
        assert err.count("with a NULL appid") == 1
        assert "plain: sync_status returned 6 rows with a NULL appid: not run" in err
    assert db.rows("select status, items_processed from sync_jobs order by started_at") == [
        ("completed", 5),
        ("completed", 7),
    ]


def test_a_status_table_holding_a_key_twice_fails_naming_it(
    db: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """review revI F10: a status table without a unique key holding a key twice failed the run with
    PostgreSQL's 'ON CONFLICT DO UPDATE command cannot affect row a second time': the run fails
    (exit 1) naming the key and the table, before any request."""
    source = _plain(db, tmp_path, monkeypatch, api, "create table sync_status (appid int)")
    db.run("insert into sync_status (appid) values (1), (2), (2)")
    assert cli.main(["run", str(source)]) == 1
    said = (
        "plain: sync_status holds appid 2 more than once: an entity is selected once per key, so keep one"
        " row per appid in sync_status (a primary key on appid)"
    )
    assert said in capsys.readouterr().err
    assert api.requests == []


def test_a_value_psycopg_cannot_load_fails_the_selection_naming_it(status: Database) -> None:
    """review revI F4: a jsonb number past 4300 digits raised psycopg's ValueError (exit 70): the
    selection fails naming the source and the setting."""
    query = "select ('1' || repeat('0', 5000))::jsonb as appid where %(after_key)s::text is null limit %(limit)s"
    source = make_source(selection=SelectionType.SQL, sql=query)
    with pytest.raises(SelectionError, match=r"^example: selecting entities with entities.sql failed: a value it"):
        _select(status, source, claim=False)
