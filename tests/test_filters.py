"""filters (and filtersql): entities.join/where/order read from YAML, checked against the catalog,
compiled into the default selection (runner.selection), values bound as parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runner import config, filtersql, selection, spec
from runner.errors import ConfigError, SelectionError
from tests.pg import Database

HEAD = """
name: example
entities:
  columns: {appid: int}
  syncable_column: null
  interval_column: null
  priority_column: priority_score
"""
TAIL = """
request: {url: "https://api.example/apps/{appid}"}
rate_limit: {requests: 1, per: 1s}
writes: [{table: apps, key: [appid], columns: {appid: entity.appid}}]
"""


def load(tmp_path: Path, entities: str) -> spec.Source:
    """A source whose entities block is HEAD plus `entities` (indented YAML lines)."""
    text = HEAD + "\n".join("  " + line for line in entities.strip("\n").splitlines()) + "\n" + TAIL
    return config.loads(text, tmp_path / "example.yaml")


@pytest.fixture
def apps(db: Database, tmp_path: Path) -> Database:
    """sync_status (every app due: never synced) joined to apps by appid.

    appid  prio  release_date   type   total
    10     50    today - 1y     game   0
    20     40    today + 30d    game   0       future, no reviews
    30     30    today + 30d    game   12      future, has reviews
    40     20    null           game   0       released, no date
    50     10    today - 2d     dlc    null
    60     5     (no apps row)         3
    """
    db.migrate(load(tmp_path, ""))
    db.run("alter table sync_status add column if not exists total int")
    db.run("alter table sync_status add column if not exists promoted_until timestamptz")
    db.run("create table apps (appid int primary key, release_date date, type text, is_released boolean)")
    db.run(
        "insert into sync_status (appid, priority_score, total) values"
        " (10, 50, 0), (20, 40, 0), (30, 30, 12), (40, 20, 0), (50, 10, null), (60, 5, 3)"
    )
    db.run(
        "insert into apps values"
        " (10, current_date - 365, 'game', true), (20, current_date + 30, 'game', false),"
        " (30, current_date + 30, 'game', false), (40, null, 'game', true), (50, current_date - 2, 'dlc', true)"
    )
    return db


def keys(db: Database, source: spec.Source, **kwargs: Any) -> list[int]:
    selection.check(db.conn, source)
    kwargs.setdefault("limit", 100)
    pages = selection.chunks(db.conn, source, holder="a", lease_seconds=60, claim=False, **kwargs)
    return [row["appid"] for page in pages for row in page]


# --- where ------------------------------------------------------------------------------------------
def test_without_filters_the_order_is_the_built_in_one(apps: Database, tmp_path: Path) -> None:
    assert keys(apps, load(tmp_path, "")) == [10, 20, 30, 40, 50, 60]


def test_where_compares_a_joined_column_with_today(apps: Database, tmp_path: Path) -> None:
    """A left join: 60 has no apps row, so its release_date is null and `<=` does not hold."""
    source = load(
        tmp_path, "join: [{table: apps}]\nwhere: [{column: apps.release_date, op: '<=', value: {today: true}}]"
    )
    assert keys(apps, source) == [10, 50]


def test_any_keeps_nulls_and_promotions_the_reviews_rule(apps: Database, tmp_path: Path) -> None:
    """Never a future release (beyond today + 7 days) with 0 reviews, unless promoted."""
    apps.run("update sync_status set promoted_until = now() + interval '1 hour' where appid = 20")
    rule = """
join: [{table: apps}]
where:
  - any:
      - {column: apps.release_date, op: is_null}
      - {column: apps.release_date, op: "<=", value: {today: "+7d"}}
      - {column: total, op: ">", value: 0}
      - {column: promoted_until, op: ">", value: {now: true}}
"""
    assert keys(apps, load(tmp_path, rule)) == [10, 20, 30, 40, 50, 60]
    apps.run("update sync_status set promoted_until = now() - interval '1 minute' where appid = 20")
    assert keys(apps, load(tmp_path, rule)) == [10, 30, 40, 50, 60]  # the promotion ran out


def test_in_not_in_and_not(apps: Database, tmp_path: Path) -> None:
    joined = "join: [{table: apps}]\n"
    assert keys(apps, load(tmp_path, joined + "where: [{column: apps.type, op: in, value: [dlc, demo]}]")) == [50]
    assert keys(apps, load(tmp_path, joined + "where: [{column: priority_score, op: not_in, value: [50, 5]}]")) == [
        20,
        30,
        40,
        50,
    ]
    negated = joined + "where: [{not: {column: apps.type, op: '=', value: game}}]"
    assert keys(apps, load(tmp_path, negated)) == [50, 60]  # null type (no row): the comparison does not hold


def test_now_offsets_in_seconds(apps: Database, tmp_path: Path) -> None:
    apps.run("update sync_status set promoted_until = now() + interval '2 hours' where appid in (10, 20)")
    apps.run("update sync_status set promoted_until = now() + interval '30 minutes' where appid = 30")
    source = load(tmp_path, "where: [{column: promoted_until, op: '>', value: {now: '+1h'}}]")
    assert keys(apps, source) == [10, 20]


def test_values_are_bound_never_spliced(apps: Database, tmp_path: Path) -> None:
    """The text of a value never appears in the statement: it travels as a parameter."""
    source = load(
        tmp_path, "join: [{table: apps}]\nwhere: [{column: apps.type, op: '=', value: \"x'; drop table apps; --\"}]"
    )
    query, params = selection.due_sql(apps.conn, source)
    assert "drop table" not in query.as_string(apps.conn)
    assert params == {"f0": "x'; drop table apps; --"}
    assert keys(apps, source) == []
    assert apps.scalar("select count(*) from apps") == 5


# --- order ------------------------------------------------------------------------------------------
def test_first_puts_released_games_without_a_date_first(apps: Database, tmp_path: Path) -> None:
    """Storefront's "inconsistent release state first"; the built-in order follows."""
    source = load(
        tmp_path,
        """
join: [{table: apps}]
order:
  - first:
      all:
        - {column: apps.is_released, op: "=", value: true}
        - {column: apps.release_date, op: is_null}
        - {column: apps.type, op: "=", value: game}
""",
    )
    assert keys(apps, source) == [40, 10, 20, 30, 50, 60]


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("{column: total, direction: desc, nulls: last}", [30, 60, 10, 20, 40, 50]),
        ("{column: total, direction: desc, nulls: first}", [50, 30, 60, 10, 20, 40]),
        ("{column: total}", [10, 20, 40, 60, 30, 50]),
        ("{column: apps.release_date, direction: desc}", [20, 30, 50, 10, 40, 60]),
        ("{column: apps.release_date, nulls: first}", [40, 60, 10, 50, 20, 30]),
        ("{column: apps.type}", [50, 10, 20, 30, 40, 60]),
        ("{column: apps.is_released, direction: desc}", [10, 40, 50, 20, 30, 60]),
    ],
)
def test_order_terms(apps: Database, tmp_path: Path, term: str, expected: list[int]) -> None:
    """Ties fall back to the built-in order (priority desc here)."""
    source = load(tmp_path, f"join: [{{table: apps}}]\norder: [{term}]")
    assert keys(apps, source) == expected


def test_keyset_chunks_follow_the_extra_order(apps: Database, tmp_path: Path) -> None:
    """Chunks of 2 page through in exactly the one-statement order: each term is a keyset column."""
    apps.run("update sync_status set promoted_until = now() - interval '1 day' * appid")
    source = load(
        tmp_path,
        """
join: [{table: apps}]
order:
  - first: {column: apps.type, op: "=", value: dlc}
  - {column: promoted_until, direction: desc}
  - {column: apps.release_date, nulls: first}
""",
    )
    whole = keys(apps, source)
    assert whole == [50, 10, 20, 30, 40, 60]
    pages = selection.chunks(apps.conn, source, holder="a", lease_seconds=60, limit=100, chunk_size=2)
    assert [[row["appid"] for row in page] for page in pages] == [[50, 10], [20, 30], [40, 60]]


def test_where_and_order_values_together(apps: Database, tmp_path: Path) -> None:
    """Placeholders are numbered across where and order alike: each value lands where it belongs."""
    source = load(
        tmp_path,
        """
join: [{table: apps}]
where: [{column: apps.type, op: "=", value: game}, {column: priority_score, op: ">", value: 10}]
order: [{first: {column: apps.is_released, op: "=", value: false}}, {first: {column: total, op: "=", value: 0}}]
""",
    )
    assert keys(apps, source) == [20, 30, 10, 40]


# --- checks at run start ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("entities", "message"),
    [
        ("where: [{column: nope, op: is_null}]", "entities: nope: sync_status has no column nope"),
        (
            "join: [{table: apps}]\nwhere: [{column: apps.nope, op: is_null}]",
            "entities: apps.nope: apps has no column nope",
        ),
        ("join: [{table: games}]", "entities.join[0]: games is missing"),
        ("join: [{table: apps, on: type}]", "entities.join[0]: apps.type is not unique"),
        ("join: [{table: apps, on: nope}]", "entities.join[0]: apps has no column nope (on)"),
        ("where: [{column: total, op: '=', value: '12'}]", "total (integer) = '12': the column holds numbers"),
        # printed as the file wrote it (YAML), not as Python would (review13 F10)
        ("where: [{column: total, op: '=', value: true}]", "total (integer) = true: the column holds numbers"),
        ("where: [{column: total, op: '<', value: {now: true}}]", "now/today compare with a date or timestamp column"),
        (
            "join: [{table: apps}]\nwhere: [{column: apps.release_date, op: '=', value: 'May 1'}]",
            "'May 1' is not an ISO date",
        ),
        (
            "join: [{table: apps}]\nwhere: [{column: apps.is_released, op: '=', value: 1}]",
            "the column holds true/false",
        ),
        ("join: [{table: apps}]\nwhere: [{column: apps.type, op: in, value: [1, 2]}]", "the column holds text"),
        ("join: [{table: apps}]\norder: [{column: apps.type, direction: desc}]", "a text column orders ascending only"),
    ],
)
def test_check_names_what_does_not_fit(apps: Database, tmp_path: Path, entities: str, message: str) -> None:
    with pytest.raises(SelectionError) as caught:
        selection.check(apps.conn, load(tmp_path, entities))
    assert message in str(caught.value)
    assert caught.value.exit_code == 2


def test_a_bad_filter_stops_the_run_with_exit_2(
    apps: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner import cli

    monkeypatch.setenv("DATABASE_URL", apps.dsn)
    path = tmp_path / "bad.yaml"
    text = HEAD + "  where: [{column: nope, op: is_null}]\n" + TAIL
    path.write_text(text)
    assert cli.main(["run", str(path), "--dry-run"]) == 2


# --- reading ----------------------------------------------------------------------------------------
def test_read_builds_the_spec(tmp_path: Path) -> None:
    source = load(
        tmp_path,
        """
join: [{table: legacy.apps, as: a, on: id}]
where:
  - {column: a.release_date, op: "<=", value: {today: "+7d"}}
  - any: [{column: total, op: in, value: [1, 2]}, {not: {column: a.type, op: is_null}}]
order: [{first: {column: total, op: ">", value: 0.5}}, {column: a.release_date, direction: desc}]
""",
    )
    entities = source.entities
    assert entities.join == (spec.Join(table=spec.QualifiedName("legacy", "apps"), as_="a", on="id"),)
    date_ref = spec.ColumnRef("a", "release_date")
    assert entities.where == (
        spec.Condition(date_ref, spec.FilterOp.LE, spec.Clock("today", 7)),
        spec.AnyOf(
            (
                spec.Condition(spec.ColumnRef(None, "total"), spec.FilterOp.IN, (1, 2)),
                spec.NotOf(spec.Condition(spec.ColumnRef("a", "type"), spec.FilterOp.IS_NULL)),
            )
        ),
    )
    assert entities.order == (
        spec.OrderTerm(first=spec.Condition(spec.ColumnRef(None, "total"), spec.FilterOp.GT, 0.5)),
        spec.OrderTerm(column=date_ref, direction=spec.Direction.DESC),
    )
    assert filtersql.params(entities) == {"f0": 7, "f1": 1, "f2": 2, "f3": 0.5}


def test_read_reports_load_time_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            tmp_path,
            """
where:
  - {column: apps.type, op: "="}
  - {column: total, op: in, value: 3}
  - {column: total, op: is_null, value: 3}
  - {column: at, op: "<", value: {today: "+1h"}}
""",
        )
    text = str(caught.value)
    assert "'apps' is not a joined table (joins: none): add join: [{table: apps}]" in text
    assert "op = needs a value" in text
    assert "op in needs a list of values" in text
    assert "op is_null takes no value" in text
    assert "today moves by whole days (+7d), not +1h" in text
