"""incremental: a list source's watermark (runner/watermarks.py), through `syncrun run` into a real
PostgreSQL, against a real loopback API that filters by `since` and counts what it returns."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from runner import cli, watermarks
from tests.apiserver import ApiServer, Recorded, Reply
from tests.pg import Database

SOURCE = """\
name: {name}
entities: {{type: list}}
request:
  url: "${{env.API_URL}}/changes"
  query: {{since: "${{incremental.since}}"}}
pagination: {{type: offset, param: offset, page_size: 2, size_param: limit{cap}}}
rate_limit: {{requests: 1000, per: 1s, burst: 50}}
retry: {{attempts: 2, initial: 10ms, max_delay: 20ms}}
records: body
incremental: {incremental}
writes:
  - table: things
    key: [id]
    columns: {{id: record.id, name: record.name}}
status: false
concurrency: 1
write_batch: 1
"""
TIMESTAMPS = '{cursor: record.updated_at, start: "2020-01-01T00:00:00Z", lookback: 10m}'
INTEGERS = "{cursor: record.version, start: 0, lookback: 1}"


class ChangesApi:
    """`GET /changes?since=…&offset=…&limit=…`: the records whose cursor is at or after `since`, in
    cursor order. `served` counts the records each run's requests returned; `fail_offset` answers 500."""

    def __init__(self, api: ApiServer, field: str) -> None:
        self.field = field
        self.fail_offset: int | None = None
        self.sinces: list[str] = []
        self.records: dict[int, dict[str, Any]] = {}
        self.served: list[int] = []
        api.route("/changes", self.reply)

    def put(self, id_: int, value: Any) -> None:
        self.records[id_] = {"id": id_, "name": f"thing {id_}-{value}", self.field: value}

    def _key(self, value: Any) -> Any:
        if self.field != "updated_at":
            return int(value)
        at = datetime.fromisoformat(value)
        return at if at.tzinfo else at.replace(tzinfo=UTC)  # the API's reading of a value without a zone

    def reply(self, request: Recorded) -> Reply:
        offset, limit = int(request.query.get("offset", "0")), int(request.query["limit"])
        if offset == self.fail_offset:
            return Reply(500, json={"error": "boom"})
        since = self._key(request.query["since"])
        if offset == 0:
            self.sinces.append(request.query["since"])
        matching = sorted(
            (r for r in self.records.values() if self._key(r[self.field]) >= since),
            key=lambda r: (self._key(r[self.field]), r["id"]),
        )
        page = matching[offset : offset + limit]
        self.served += [r["id"] for r in page]
        return Reply(200, json=page)

    def take(self) -> list[int]:
        served, self.served = sorted(self.served), []
        return served


@pytest.fixture
def env(db: Database, api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("API_URL", api.url)
    return db


def source(tmp: Path, db: Database, incremental: str = TIMESTAMPS, cap: str = "") -> Path:
    file = tmp / "changes.yaml"
    file.write_text(SOURCE.format(name="changes", incremental=incremental, cap=cap))
    assert cli.main(["validate", str(file)]) == 0
    assert cli.main(["migrate", str(file)]) == 0
    db.run("create table if not exists things (id int primary key, name text)")
    return file


def stored(db: Database) -> Any:
    return db.scalar("select value from syncrun_watermarks where source = 'changes'")


def timestamps(api: ApiServer) -> ChangesApi:
    changes = ChangesApi(api, "updated_at")
    for id_, at in enumerate(
        ["2021-03-01T10:00:00Z", "2021-03-01T12:00:00+02:00", "2021-03-02T08:00:00-05:00", "2021-03-02T15:05:00+01:00"],
        start=1,
    ):
        changes.put(id_, at)
    changes.put(5, "2021-03-02T15:00:00+01:00")  # 5 minutes before the watermark: inside the lookback
    return changes


def test_run_two_fetches_only_what_changed_since_the_watermark_minus_the_lookback(
    env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """Run 1 asks from `start` minus the lookback and reads everything; the watermark is the largest
    updated_at, kept with its offset. Run 2 asks from watermark - 10m: the two records updated since,
    plus those at the watermark or inside the lookback (at-least-once), nothing else."""
    changes = timestamps(api)
    file = source(tmp_path, env)
    assert cli.main(["run", str(file)]) == 0
    assert changes.sinces == ["2019-12-31T23:50:00Z"]
    assert changes.take() == [1, 2, 3, 4, 5]
    assert stored(env) == {"type": "timestamp", "value": "2021-03-02T15:05:00+01:00"}
    changes.put(2, "2021-03-03T08:00:00Z")
    changes.put(6, "2021-03-03T09:30:00+09:00")
    assert cli.main(["run", str(file)]) == 0
    assert changes.sinces[-1] == "2021-03-02T14:55:00+01:00"
    assert changes.take() == [2, 4, 5, 6]  # 4 is at the watermark, 5 inside the lookback
    assert stored(env) == {"type": "timestamp", "value": "2021-03-03T08:00:00+00:00"}
    assert env.rows("select name from things where id = 2") == [("thing 2-2021-03-03T08:00:00Z",)]
    assert cli.main(["run", str(file)]) == 0  # nothing new: the same records again, the watermark stays
    assert changes.sinces[-1] == "2021-03-03T07:50:00Z"
    assert changes.take() == [2]
    assert stored(env) == {"type": "timestamp", "value": "2021-03-03T08:00:00+00:00"}


def test_a_failed_run_keeps_the_watermark_and_the_resumed_listing_advances_it(
    env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """Page 2 answers 500: the run fails, the watermark stays; the next run resumes at page 2 with
    the same `since` and, completing the listing, advances past what both runs read."""
    changes = timestamps(api)
    file = source(tmp_path, env)
    assert cli.main(["run", str(file)]) == 0
    before = stored(env)
    changes.take()
    changes.put(1, "2021-04-01T00:00:00Z")
    changes.put(3, "2021-04-02T00:00:00Z")
    changes.put(7, "2021-04-03T00:00:00Z")
    changes.fail_offset = 2
    assert cli.main(["run", str(file)]) == 1
    assert stored(env) == before
    changes.fail_offset = None
    assert cli.main(["run", str(file)]) == 0
    assert changes.sinces[-1] == "2021-03-02T14:55:00+01:00"  # the same since: the listing resumed at page 2
    assert stored(env) == {"type": "timestamp", "value": "2021-04-03T00:00:00+00:00"}
    assert env.scalar("select count(*) from syncrun_cursors") == 0


def test_a_capped_run_does_not_advance_it_until_the_listing_completes(
    env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """max_pages 1: each run reads one page of two records. The watermark stays at `start` until
    the third run reads the listing's end; then it is the largest value of all three runs."""
    changes = timestamps(api)
    file = source(tmp_path, env, cap=", max_pages: 1")
    for _ in range(2):
        assert cli.main(["run", str(file)]) == 0
        assert stored(env) is None
    assert cli.main(["run", str(file)]) == 0
    assert {r.query["since"] for r in api.requests} == {"2019-12-31T23:50:00Z"}
    assert [r.query["offset"] for r in api.requests] == ["0", "2", "4"]
    assert changes.take() == [1, 2, 3, 4, 5]
    assert stored(env) == {"type": "timestamp", "value": "2021-03-02T15:05:00+01:00"}


def test_restart_resets_the_watermark(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """`syncrun run --restart` forgets the watermark: the listing asks from `start` again."""
    changes = timestamps(api)
    file = source(tmp_path, env)
    assert cli.main(["run", str(file)]) == 0
    assert cli.main(["run", str(file)]) == 0
    assert changes.sinces[-1] == "2021-03-02T14:55:00+01:00"
    changes.take()
    assert cli.main(["run", str(file), "--restart"]) == 0
    assert changes.sinces[-1] == "2019-12-31T23:50:00Z"
    assert changes.take() == [1, 2, 3, 4, 5]
    assert stored(env) == {"type": "timestamp", "value": "2021-03-02T15:05:00+01:00"}


def test_an_integer_watermark_keeps_its_type(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """An integer cursor (a version, a sequence number beyond 2**53) stays an integer: since = max - 1."""
    changes = ChangesApi(api, "version")
    big = 2**53 + 1
    for id_, version in enumerate([3, big - 5, big, 7], start=1):
        changes.put(id_, version)
    file = source(tmp_path, env, INTEGERS)
    assert cli.main(["run", str(file)]) == 0
    assert changes.sinces == ["-1"]
    assert stored(env) == {"type": "integer", "value": big}
    changes.take()
    changes.put(4, big + 10)
    assert cli.main(["run", str(file)]) == 0
    assert changes.sinces[-1] == str(big - 1)
    assert changes.take() == [3, 4]
    assert stored(env) == {"type": "integer", "value": big + 10}


def test_a_cursor_value_of_the_wrong_type_fails_the_run(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A record whose updated_at has no time zone: the run fails naming the cursor; nothing advances."""
    changes = timestamps(api)
    changes.put(6, "2021-03-05T00:00:00")
    file = source(tmp_path, env)
    assert cli.main(["run", str(file)]) == 1
    assert stored(env) is None
    error = env.scalar("select error_message from sync_jobs")
    assert "incremental.cursor (record.updated_at)" in error
    assert "has no time zone" in error


def test_from_listing_start_keeps_when_the_completed_listing_started(
    env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """from: listing_start: the watermark is when the completed listing started (the job's start)."""
    timestamps(api)
    file = source(tmp_path, env, '{from: listing_start, start: "2020-01-01T00:00:00Z"}')
    assert cli.main(["run", str(file)]) == 0
    started = env.scalar("select started_at from sync_jobs")
    value = stored(env)
    assert value["type"] == "timestamp"
    assert datetime.fromisoformat(value["value"]) == started


def test_an_interrupted_run_keeps_the_watermark(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """--max-runtime stops the run while page 2 is slow: the listing is interrupted, the watermark
    stays at `start`; the next run resumes and, completing the listing, advances it."""
    changes = timestamps(api)
    file = source(tmp_path, env)
    answer = changes.reply
    api.route("/changes", lambda r: replace(answer(r), delay=1.5) if r.query.get("offset") == "2" else answer(r))
    cli.main(["run", str(file), "--max-runtime", "1"])
    assert env.scalar("select metadata->>'listing' from sync_jobs") == "interrupted"
    assert stored(env) is None
    api.route("/changes", answer)
    assert cli.main(["run", str(file)]) == 0
    assert stored(env) == {"type": "timestamp", "value": "2021-03-02T15:05:00+01:00"}


def test_the_watermark_in_the_url_is_percent_encoded(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """In request.url the watermark is encoded like an entity value: `+01:00` arrives as itself, not
    as a space, and the URL keeps its structure."""
    changes = timestamps(api)
    file = source(tmp_path, env)
    file.write_text(
        file.read_text()
        .replace('url: "${env.API_URL}/changes"', 'url: "${env.API_URL}/changes?since=${incremental.since}"')
        .replace('  query: {since: "${incremental.since}"}\n', "")
    )
    assert cli.main(["validate", str(file)]) == 0
    assert cli.main(["run", str(file)]) == 0
    assert cli.main(["run", str(file)]) == 0
    assert changes.sinces[-1] == "2021-03-02T14:55:00+01:00"
    assert "since=2021-03-02T14%3A55%3A00%2B01%3A00&" in api.requests[-1].target


def test_a_dry_run_asks_from_start_and_keeps_nothing(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """--dry-run writes nothing, the watermark included; it asks from `start` minus the lookback."""
    changes = timestamps(api)
    file = source(tmp_path, env)
    assert cli.main(["run", str(file), "--dry-run"]) == 0
    assert changes.sinces == ["2019-12-31T23:50:00Z"]
    assert stored(env) is None


def test_a_stored_watermark_of_another_type_is_refused(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """The source moved from integers to timestamps: the old watermark is refused; --restart helps."""
    changes = timestamps(api)
    file = source(tmp_path, env)
    env.run("""insert into syncrun_watermarks (source, value) values ('changes', '{"type": "integer", "value": 7}')""")
    assert cli.main(["run", str(file)]) == 1
    assert changes.sinces == []
    assert "incremental.start is a timestamp: run with --restart" in env.scalar("select error_message from sync_jobs")
    assert cli.main(["run", str(file), "--restart"]) == 0
    assert stored(env) == {"type": "timestamp", "value": "2021-03-02T15:05:00+01:00"}


# --- review16 F6, F7, F18, F14 ------------------------------------------------------------------------------
def test_a_future_dated_record_cannot_freeze_the_watermark(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One record dated 2099 (a typo, a placeholder): the watermark stops at when the listing started,
    the run counts and names it, `status` shows the watermark, and a record changed after that run
    is fetched by the next one."""
    changes = timestamps(api)
    changes.put(9, "2099-01-01T00:00:00Z")
    file = source(tmp_path, env)
    assert cli.main(["run", str(file)]) == 0
    started = env.scalar("select started_at from sync_jobs")
    value = datetime.fromisoformat(stored(env)["value"])
    assert value == started
    assert env.scalar("select metadata->>'watermark_capped' from sync_jobs") == "1"
    assert (
        "1 record(s) had an incremental.cursor later than when the listing started (latest 2099-01-01T00:00:00Z)"
        in (capsys.readouterr().err)
    )
    changes.take()
    changes.put(10, datetime.now(UTC).isoformat())
    assert cli.main(["run", str(file)]) == 0
    assert 10 in changes.take()
    capsys.readouterr()
    assert cli.main(["status", str(file), "--json"]) == 0
    (state,) = json.loads(capsys.readouterr().out)["sources"]
    mark = state["watermark"]
    assert datetime.fromisoformat(mark["value"]) <= datetime.now(UTC)
    assert mark["pending"] is None
    assert mark["start"] == "2020-01-01T00:00:00Z"
    assert cli.main(["status", str(file)]) == 0
    assert f"  watermark {mark['value']} (advanced " in capsys.readouterr().out


def test_a_poisoned_stored_watermark_is_capped(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A watermark stored in the future before the cap existed: asked from no later than now."""
    changes = timestamps(api)
    file = source(tmp_path, env)
    env.run(
        "insert into syncrun_watermarks (source, value)"
        """ values ('changes', '{"type": "timestamp", "value": "2099-01-01T00:00:00+00:00"}')"""
    )
    assert cli.main(["run", str(file)]) == 0
    assert datetime.fromisoformat(changes.sinces[-1]) < datetime.now(UTC)
    assert datetime.fromisoformat(stored(env)["value"]) <= datetime.now(UTC)


def test_a_start_at_the_earliest_date_with_a_lookback_asks_from_it(
    env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """`start: 0001-01-01T00:00:00Z` with a lookback: `since` is clamped, no overflow (exit 0)."""
    changes = timestamps(api)
    file = source(tmp_path, env, '{cursor: record.updated_at, start: "0001-01-01T00:00:00Z", lookback: 10m}')
    assert cli.main(["run", str(file)]) == 0
    assert changes.sinces == ["0001-01-01T00:00:00Z"]
    assert cli.main(["run", str(file), "--dry-run"]) == 0


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (10**35, "is out of range"),
        (2**63, "is out of range"),
        (2**63 - 1, "is the largest 64-bit integer (a sentinel?): the watermark could not advance"),
        (str(2**63 - 1), "is the largest 64-bit integer"),
        (1e30, "is not an integer"),
        ("7.5", "is not an integer"),
        (" 7", "is not an integer"),
    ],
)
def test_integer_cursors_are_bounded(value: Any, why: str, env: Database, api: ApiServer, tmp_path: Path) -> None:
    """An integer watermark is a 64-bit integer: 10**35 or 1e30 fails the run naming it; nothing advances."""
    changes = ChangesApi(api, "version")
    changes.put(1, 3)
    changes.records[2] = {"id": 2, "name": "x", "version": value}
    changes._key = lambda v: float(v)  # type: ignore[method-assign]  # the API orders them anyhow
    file = source(tmp_path, env, INTEGERS)
    assert cli.main(["run", str(file)]) == 1
    assert stored(env) is None
    assert why in env.scalar("select error_message from sync_jobs")


def test_integer_cursors_as_digit_strings_are_read(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """APIs send 64-bit numbers as text ("9007199254740993"): read exactly, as documented."""
    changes = ChangesApi(api, "version")
    changes.put(1, "9007199254740993")
    changes.put(2, 5)
    changes._key = lambda v: int(v)  # type: ignore[method-assign]
    file = source(tmp_path, env, INTEGERS)
    assert cli.main(["run", str(file)]) == 0
    assert stored(env) == {"type": "integer", "value": 9007199254740993}


def test_parse_bounds() -> None:
    """review16b N10: digits only (ASCII, an optional leading minus, no spaces or signs); the largest
    bigint, which no later value could pass, is refused too."""
    assert watermarks.parse("42", 0) == 42
    assert watermarks.parse("-42", 0) == -42
    assert watermarks.parse("007", 0) == 7
    assert watermarks.parse(-(2**63) + 1, 0) == -(2**63) + 1
    assert watermarks.parse(2**63 - 2, 0) == 2**63 - 2
    for bad in ("٣", "1" * 50, 2**63, True, "0x10", " 7", "7 ", "+7", "7\n", "1_000", "", "-", "- 7"):
        with pytest.raises(ValueError, match=r"not an integer|out of range"):
            watermarks.parse(bad, 0)
    with pytest.raises(ValueError, match="largest 64-bit integer"):
        watermarks.parse(2**63 - 1, 0)
    with pytest.raises(ValueError, match="out of range"):
        watermarks.parse("9999-12-31T23:59:59-14:00", datetime.now(UTC))
