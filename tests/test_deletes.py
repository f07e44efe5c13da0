"""deletes: `outcome: delete` (an API's 410 Gone) removes exactly the entity's rows, keeps `on_delete: keep`
tables, records it in syncrun_state, the status row and the job's items_deleted, in the entity's
transaction; a dry run only says what would go. Real HTTP on loopback, real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import cli, config, deletes
from runner.errors import ConfigError
from tests.apiserver import ApiServer, Reply
from tests.pg import Database
from tests.test_engine import env

__all__ = ["env"]

SOURCE = """\
name: stations
entities:
  columns: {id: int}
request:
  url: "${env.API_URL}/stations/{id}"
rate_limit: {requests: 200, per: 1s}
retry: {attempts: 2, initial: 10ms, max_delay: 50ms}
write_batch: 10
outcomes:
  - name: gone
    when: "status == `410`"
    outcome: delete
    set: {retired: true}
writes:
  - table: stations
    key: [id]
    columns: {id: entity.id, name: body.name}
  - table: station_sensors
    key: [station_id, sensor]
    rows: body.sensors
    replace_by: [station_id]
    columns: {station_id: entity.id, sensor: item}
  - table: station_daily
    key: [station_id, day]
    on_delete: keep
    columns: {station_id: entity.id, day: run.today, readings: body.readings}
"""

TABLES = """
alter table station_status add column retired boolean not null default false;
create table stations (id int primary key, name text);
create table station_sensors (station_id int references stations (id), sensor text, primary key (station_id, sensor));
create table station_daily (station_id int, day date, readings int, primary key (station_id, day));
insert into station_status (id) values (1), (2), (3), (4);
insert into stations values (1, 'old 1'), (2, 'old 2'), (3, 'old 3'), (4, 'old 4'), (5, 'not selected');
insert into station_sensors select id, s from stations, unnest(array['a', 'b']) s;
insert into station_daily select id, date '2024-01-01', id * 100 from stations;
"""


def source_file(tmp: Path, text: str = SOURCE) -> Path:
    (tmp / "syncrun.yaml").write_text("status: {table: station_status, key: id}\nentities: {key: id, key_type: int}\n")
    file = tmp / "stations.yaml"
    file.write_text(text)
    return file


def seeded(db: Database, tmp: Path, api: ApiServer, gone: tuple[int, ...] = (2, 4)) -> Path:
    file = source_file(tmp)
    assert cli.main(["migrate", str(file)]) == 0
    db.run(TABLES)
    for station in range(1, 5):
        reply = Reply(410) if station in gone else Reply(200, json={"name": f"new {station}", "sensors": ["c"]})
        api.route(f"/stations/{station}", reply)
    return file


def test_gone_entities_lose_exactly_their_rows(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2 and 4 answer 410: their stations and sensors rows go, their daily history stays (on_delete:
    keep); 1 and 3 are synced; 5 (not selected) is untouched. State, status and job record it."""
    file = seeded(env, tmp_path, api)
    assert cli.main(["run", str(file)]) == 0
    assert env.rows("select id, name from stations order by id") == [(1, "new 1"), (3, "new 3"), (5, "not selected")]
    assert env.rows("select station_id, sensor from station_sensors order by 1, 2") == [
        (1, "c"),
        (3, "c"),
        (5, "a"),
        (5, "b"),
    ]
    assert env.rows("select station_id from station_daily where day = '2024-01-01' order by 1") == [
        (1,),
        (2,),
        (3,),
        (4,),
        (5,),
    ]
    assert env.rows(
        "select entity_key, deleted_at is not null, consecutive_errors, last_success_at is not null, claimed_by"
        " from syncrun_state where source = 'stations' order by 1"
    ) == [
        ("1", False, 0, True, None),
        ("2", True, 0, False, None),
        ("3", False, 0, True, None),
        ("4", True, 0, False, None),
    ]
    # no success stamp for a gone entity; the rule's `set` updates its status row
    assert env.rows("select id, retired, last_stations_sync is not null from station_status order by id") == [
        (1, False, True),
        (2, True, False),
        (3, False, True),
        (4, True, False),
    ]
    assert env.rows(
        "select status, items_processed, items_succeeded, items_failed, items_skipped, items_deleted"
        " from sync_jobs where job_type = 'stations'"
    ) == [("completed", 4, 2, 0, 0, 2)]
    assert cli.main(["status", str(file)]) == 0
    assert "   gone 2\n" in capsys.readouterr().out


def test_a_gone_entity_is_not_selected_again_until_ids_finds_it_back(
    env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """deleted_at keeps the selection away (even with the stamp null and the interval due); `--ids`
    still fetches it, and a success clears deleted_at."""
    file = seeded(env, tmp_path, api)
    assert cli.main(["run", str(file)]) == 0
    env.run("update station_status set last_stations_sync = null")  # everything is due again
    asked = len(api.requests)
    assert cli.main(["run", str(file)]) == 0
    assert sorted(r.path for r in api.requests[asked:]) == ["/stations/1", "/stations/3"]
    api.route("/stations/2", Reply(200, json={"name": "back", "sensors": []}))
    assert cli.main(["run", str(file), "--ids", "2"]) == 0
    assert env.scalar("select deleted_at from syncrun_state where source = 'stations' and entity_key = '2'") is None
    assert env.rows("select name from stations where id = 2") == [("back",)]


def test_a_failing_delete_rolls_the_entity_back(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """Station 2's row is referenced by a table the source does not write: deleting it fails after its
    sensors were deleted. The entity fails, its sensors come back (one transaction), its state is not
    marked deleted; station 4 in the same batch is deleted all the same."""
    file = seeded(env, tmp_path, api)
    env.run(
        "create table station_notes (station_id int references stations (id)); insert into station_notes values (2)"
    )
    assert cli.main(["run", str(file)]) == 0
    assert env.rows("select id from stations where id in (2, 4)") == [(2,)]
    assert env.rows("select sensor from station_sensors where station_id = 2 order by 1") == [("a",), ("b",)]
    assert env.rows("select station_id from station_sensors where station_id = 4") == []
    state = env.rows(
        "select entity_key, deleted_at is not null, consecutive_errors, last_error from syncrun_state"
        " where source = 'stations' and entity_key in ('2', '4') order by 1"
    )
    assert state[1] == ("4", True, 0, None)
    assert state[0][:3] == ("2", False, 1)
    assert state[0][3].startswith('stations: update or delete on table "stations" violates foreign key constraint')
    assert env.rows("select id, retired from station_status where id in (2, 4) order by 1") == [(2, False), (4, True)]
    assert env.rows("select items_failed, items_deleted from sync_jobs") == [(1, 1)]


def test_a_failing_status_update_after_the_deletes_rolls_them_back(
    env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """The rule's `set` puts a null into a NOT NULL status column: it fails after both entities' rows
    were deleted, so neither entity's delete commits; the successes do."""
    file = seeded(env, tmp_path, api)
    file.write_text(SOURCE.replace("set: {retired: true}", "set: {retired: body.nope}"))
    assert cli.main(["run", str(file)]) == 0
    assert env.rows("select id from stations order by id") == [(1,), (2,), (3,), (4,), (5,)]
    assert env.rows("select station_id, count(*) from station_sensors group by 1 order by 1") == [
        (1, 1),
        (2, 2),
        (3, 1),
        (4, 2),
        (5, 2),
    ]
    errors = env.rows(
        "select entity_key, deleted_at is null, last_error from syncrun_state where consecutive_errors = 1 order by 1"
    )
    assert [row[:2] for row in errors] == [("2", True), ("4", True)]
    assert errors[0][2] == (
        "status columns of a deleted entity (station_status.retired): station_status: null value in column"
        ' "retired" of relation "station_status" violates not-null constraint'
    )
    assert env.rows("select items_succeeded, items_failed, items_deleted from sync_jobs") == [(2, 2, 0)]


def test_test_read_shows_what_would_go_and_deletes_nothing(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Children before parents, the kept table named; not a row, state or job written."""
    file = seeded(env, tmp_path, api)
    assert cli.main(["test-read", str(file), "--ids", "2"]) == 0
    out = capsys.readouterr().out
    assert "  outcome   delete (decided by: gone)\n" in out
    assert (
        "  keep      station_daily (on_delete: keep)\n"
        "  delete    station_sensors where station_id = 2\n"
        "  delete    stations where id = 2\n"
    ) in out
    assert "0 error, 1 delete;" in out
    assert cli.main(["run", str(file), "--dry-run", "--ids", "4"]) == 0
    out = capsys.readouterr().out
    assert "   outcome  delete (rule: gone)\n   keep      station_daily" in out
    assert "   delete    stations where id = 4\n" in out
    assert env.scalar("select count(*) from stations") == 5
    assert env.scalar("select count(*) from syncrun_state") == 0
    assert env.scalar("select count(*) from sync_jobs") == 0


# --- which rows are the entity's ---------------------------------------------------------------------------
def load(tmp: Path, text: str) -> list[str]:
    try:
        config.load(source_file(tmp, text))
    except ConfigError as error:
        return [f"{p.line}: {p.path}: {p.message}" for p in error.problems]
    return []


def test_delete_by_comes_from_key_and_replace_by_columns_mapped_to_the_entity_key(tmp_path: Path) -> None:
    source = config.load(source_file(tmp_path))
    assert [(w.on_delete.value, w.delete_by) for w in source.writes] == [
        ("delete", ("id",)),
        ("delete", ("station_id",)),
        ("keep", ()),
    ]
    # kept anyway: its day (run.today) says nothing about whose row it is
    assert deletes.columns(source.writes[2], "id")[0] == ()


def test_rows_that_cannot_be_told_are_refused_not_guessed(tmp_path: Path) -> None:
    """A key from the record, or any key column (here run.today) that is neither entity.<key> nor a
    constant: validate says so."""
    text = SOURCE.replace("    on_delete: keep\n", "").replace(
        "columns: {id: entity.id, name: body.name}", "columns: {id: body.id, name: body.name}"
    )
    assert load(tmp_path, text) == [
        "15: writes[0]: outcome delete (outcomes[0]) cannot tell which rows of stations are the entity's: key"
        " id (mapped to body.id) is neither entity.id nor a constant, so it says nothing about whose row it"
        " is; or write on_delete: keep (history, or a table shared by entities)",
        "23: writes[2]: outcome delete (outcomes[0]) cannot tell which rows of station_daily are the entity's:"
        " key day (mapped to run.today) is neither entity.id nor a constant, so it says nothing about whose"
        " row it is; or write on_delete: keep (history, or a table shared by entities)",
    ]
    constants = SOURCE.replace("columns: {id: entity.id, name: body.name}", 'columns: {id: "`7`", name: body.name}')
    assert load(tmp_path, constants)[0].endswith(
        "no key column (id) is mapped to exactly entity.id; map one from entity.id, or write on_delete: keep"
        " (history, or a table shared by entities)"
    )
    without_rule = text.replace("outcome: delete\n    set: {retired: true}", "outcome: skip")
    assert load(tmp_path, without_rule) == []  # nothing to delete: nothing to tell


SHARED = (
    SOURCE
    + """\
  - table: station_feeds
    key: [provider, station_id, kind]
    columns: {provider: "'acme'", station_id: entity.id, kind: "`1`", seen: body.name}
"""
)


def test_a_key_mapped_to_a_constant_restricts_the_delete(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A table shared by providers: the source writes ('acme', station, 1) rows only, so a gone station
    loses those and not ('other', station, 1) nor ('acme', station, 2), which another source writes."""
    file = seeded(env, tmp_path, api)
    file.write_text(SHARED)
    env.run(
        "create table station_feeds (provider text, station_id int, kind int, seen text,"
        " primary key (provider, station_id, kind));"
        " insert into station_feeds select p, s, k, 'old' from unnest(array['acme', 'other']) p,"
        " generate_series(1, 4) s, generate_series(1, 2) k"
    )
    source = config.load(file)
    assert source.writes[3].delete_by == ("provider", "station_id", "kind")
    assert cli.main(["test-read", str(file), "--ids", "2"]) == 0
    assert (
        "  delete    station_feeds where provider = 'acme' and station_id = 2 and kind = 1\n" in capsys.readouterr().out
    )
    assert cli.main(["run", str(file)]) == 0
    assert env.rows(
        "select provider, station_id, kind, seen from station_feeds where station_id in (2, 4) order by 1, 2, 3"
    ) == [
        ("acme", 2, 2, "old"),
        ("acme", 4, 2, "old"),
        ("other", 2, 1, "old"),
        ("other", 2, 2, "old"),
        ("other", 4, 1, "old"),
        ("other", 4, 2, "old"),
    ]
    assert env.rows("select seen from station_feeds where provider = 'acme' and station_id = 1 and kind = 1") == [
        ("new 1",)
    ]
