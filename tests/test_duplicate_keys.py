"""Duplicate keys end to end (revD F3), through the CLI with real HTTP on loopback and real PostgreSQL:
a selection that returns an entity's key twice, and entities whose mapped rows share a target row
in one batch. Neither may crash the batch or the run with PostgreSQL's "ON CONFLICT DO UPDATE
command cannot affect row a second time"."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import cli
from tests.apiserver import ApiServer, Reply
from tests.pg import Database

SOURCE = """\
name: dupes
entities:
  type: sql
  columns: {{appid: int, region: text}}
  sql: >-
    select appid, region from ({query}) q
    where appid > coalesce(%(after_key)s::int, 0) order by appid limit %(limit)s
  limit: 100
request:
  url: "${{env.API_URL}}/apps/{{appid}}"
  timeout: 2s
rate_limit: {{requests: 500, per: 1s, burst: 50, bucket: dupes}}
retry: {{attempts: 2, initial: 10ms, max_delay: 50ms, max_wait: 2s}}
concurrency: 4
write_batch: 10
records: body.items
writes:
  - table: catalog
    key: [item]
    columns:
      item: record.item
      seen_by: entity.appid
      price: record.price
"""

TABLES = "create table catalog (item int primary key, seen_by int, price int check (price >= 0));"
BOTH = "select appid, 'eu' as region from sync_status union all select appid, 'eu' from sync_status"


@pytest.fixture
def env(db: Database, api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("API_URL", api.url)
    return db


def setup(db: Database, tmp: Path, query: str, appids: list[int]) -> Path:
    (tmp / "syncrun.yaml").write_text(
        "status: {table: sync_status, key: appid}\nentities: {key: appid, key_type: int}\n"
    )
    source = tmp / "dupes.yaml"
    source.write_text(SOURCE.format(query=query))
    assert cli.main(["migrate", str(source)]) == 0
    db.run(TABLES)
    db.run("insert into sync_status (appid) select unnest(%s::int[])" % ("'{" + ",".join(map(str, appids)) + "}'"))
    return source


def items(*pairs: tuple[int, int]) -> Reply:
    return Reply(200, json={"items": [{"item": item, "price": price} for item, price in pairs]})


def test_a_key_selected_twice_is_fetched_and_written_once(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """The sql selection returns every key twice (a union): each entity is fetched once, succeeds once,
    and is stamped; the job counts 3 entities."""
    source = setup(env, tmp_path, BOTH, [1, 2, 3])
    for appid in (1, 2, 3):
        api.route(f"/apps/{appid}", items((appid, appid)))
    assert cli.main(["run", str(source)]) == 0
    assert sorted(r.path for r in api.requests) == ["/apps/1", "/apps/2", "/apps/3"]
    assert env.rows("select item, seen_by from catalog order by item") == [(1, 1), (2, 2), (3, 3)]
    assert env.rows("select status, items_processed, items_succeeded from sync_jobs") == [("completed", 3, 3)]
    assert env.scalar("select count(*) from sync_status where last_dupes_sync is not null") == 3


def test_a_key_selected_twice_with_different_columns_fails_the_run_naming_it(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Twice with different columns: the run fails at its selection, saying which key and column,
    before any request of that chunk; nothing is left claimed. Exit 1: a SelectionError met mid-run
    fails the run like any database failure (runner/errors.py); only the start-up check, which
    cannot see the query's rows, exits 2."""
    query = "select appid, 'eu' as region from sync_status union all select appid, 'us' from sync_status"
    source = setup(env, tmp_path, query, [1, 2])
    assert cli.main(["run", str(source)]) == 1
    said = "dupes: entities.sql returned appid 1 twice, with region 'eu' and 'us'"
    assert said in capsys.readouterr().err
    [(status, error)] = env.rows("select status, error_message from sync_jobs")
    assert status == "failed"
    assert said in error
    assert api.requests == []
    assert env.scalar("select count(*) from syncrun_state where claimed_by is not null") == 0


@pytest.mark.parametrize(
    "shared",
    [
        pytest.param(range(5, 6), id="unnest"),  # a few rows: one insert ... select from arrays
        pytest.param(range(100, 250), id="copy"),  # over COPY_FROM rows: COPY + insert ... select
    ],
)
def test_entities_whose_rows_share_a_target_row_in_one_batch(
    env: Database, api: ApiServer, tmp_path: Path, shared: range
) -> None:
    """Two entities answer with the same items (an API returning one record for two entities): one
    batch holds both entities' rows for those keys. The batch writes (one row per key, the later
    entity's in the batch winning, as row by row), and both entities succeed."""
    source = setup(env, tmp_path, "select appid, 'eu' as region from sync_status", [1, 2])
    for appid in (1, 2):
        api.route(f"/apps/{appid}", items(*((item, appid) for item in shared)))
    assert cli.main(["run", str(source)]) == 0
    assert env.rows("select status, items_succeeded, items_failed from sync_jobs") == [("completed", 2, 0)]
    rows = env.rows("select item, seen_by, price from catalog order by item")
    assert [row[0] for row in rows] == list(shared)
    assert len({(seen, price) for _, seen, price in rows}) == 1  # every row from the same entity
    assert rows[0][1] == rows[0][2] in (1, 2)


def test_shared_rows_in_a_batch_replayed_entity_by_entity(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A third entity's data error (a check constraint) makes the writer replay the batch one entity
    per savepoint: the two entities sharing item 5 both succeed there too, the bad one alone fails."""
    source = setup(env, tmp_path, "select appid, 'eu' as region from sync_status", [1, 2, 3])
    api.route("/apps/1", items((5, 1), (6, 1)))
    api.route("/apps/2", items((5, 2)))
    api.route("/apps/3", items((7, -3)))
    assert cli.main(["run", str(source)]) == 0
    assert env.rows("select status, items_succeeded, items_failed from sync_jobs") == [("completed", 2, 1)]
    assert env.rows("select item from catalog order by item") == [(5,), (6,)]
    assert "catalog_price_check" in env.scalar("select last_error from syncrun_state where entity_key = '3'")
