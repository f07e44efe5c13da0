"""End-to-end runs through the CLI entry point: real HTTP on loopback, real PostgreSQL."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runner import breaker, cli, fetch, writer
from runner.engine import pipeline, writes
from runner.engine.report import Trace
from runner.results import EntityResult
from runner.spec import Outcome
from tests.apiserver import ApiServer, Recorded, Reply
from tests.pg import Database

TABLES = """
create table apps (appid int primary key, name text, price_cents int, review_count int, updated_at timestamptz);
"""

SOURCE = """\
name: {name}
entities:
  type: default
  columns: {{appid: int}}
  limit: 100
request:
  url: "${{env.API_URL}}/{path}/{{appid}}"
  headers:
    Authorization: "Bearer ${{secret.API_TOKEN:-tok-default}}"
  timeout: 2s
rate_limit: {{requests: 200, per: 1s, burst: 20, bucket: {bucket}}}
retry: {{attempts: 4, initial: 10ms, max_delay: 50ms, max_wait: 5s}}
concurrency: 4
write_batch: 10
records: body
writes:
  - table: apps
    key: [appid]
    columns:
      appid: entity.appid
      {columns}
"""


def write_source(
    tmp: Path, name: str = "alpha", *, path: str = "apps", bucket: str | None = None, columns: str = ""
) -> Path:
    columns = columns or "name: record.name\n      price_cents: record.price"
    (tmp / "syncrun.yaml").write_text(
        "status: {table: sync_status, key: appid}\nentities: {key: appid, key_type: int}\n"
    )
    file = tmp / f"{name}.yaml"
    file.write_text(SOURCE.format(name=name, path=path, bucket=bucket or name, columns=columns))
    return file


def app(appid: int, **fields: Any) -> Reply:
    return Reply(200, json={"name": f"App {appid}", "price": appid * 10, **fields})


def seed(db: Database, *sources: Path, appids: range | list[int] = range(1, 6)) -> None:
    code = cli.main(["migrate", *map(str, sources)])
    assert code == 0
    db.run(TABLES)
    db.run("insert into sync_status (appid) select unnest(%s::int[])" % ("'{" + ",".join(map(str, appids)) + "}'"))


@pytest.fixture
def env(db: Database, api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("API_URL", api.url)
    monkeypatch.setenv("API_TOKEN", "s3cr3t-token-value")
    return db


def run(*args: str) -> int:
    return cli.main(["run", *args])


def test_full_run_writes_rows_status_state_and_job(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A run writes rows, stamps status, records state, completes its job; counters match the DB and the server."""
    source = write_source(tmp_path)
    seed(env, source)
    for appid in range(1, 6):
        api.route(f"/apps/{appid}", app(appid))
    assert run(str(source)) == 0
    assert env.rows("select appid, name, price_cents from apps order by appid") == [
        (i, f"App {i}", i * 10) for i in range(1, 6)
    ]
    stamped = env.scalar("select count(*) from sync_status where last_alpha_sync is not null")
    job = env.rows(
        "select status, items_processed, items_succeeded, items_failed, items_skipped, requests_made, batch_size"
        " from sync_jobs where job_type = 'alpha'"
    )
    assert job == [("completed", 5, 5, 0, 0, 5, 100)]
    assert stamped == 5 == len(api.requests)
    assert env.scalar("select count(*) from syncrun_state where source = 'alpha' and last_success_at is not null") == 5
    assert all(r.headers["authorization"] == "Bearer s3cr3t-token-value" for r in api.requests)


def test_the_collector_is_as_it_was_after_a_run(
    env: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run freezes start-up's objects and collects young ones less often (runner/engine/pipeline.py
    `_collector`); afterwards the process has its thresholds back and nothing left frozen. A process
    that froze objects itself (runner/cli.py does, at import) gets nothing more frozen: each run would
    otherwise keep its start-up's objects for good (the count may fall: frozen objects can be freed).
    runner/cli.py says so (`start_up_frozen`): the run then never counts them (a walk over ~90,000
    objects, 2-20 ms of every start)."""
    source = write_source(tmp_path)
    seed(env, source, appids=[1, 2])
    for appid in (1, 2):
        api.route(f"/apps/{appid}", app(appid))
    gc.freeze()  # as runner/cli.py leaves a process
    count = gc.get_freeze_count
    threshold, frozen = gc.get_threshold(), count()
    assert pipeline._frozen_at_start  # importing runner.cli said so

    def counted() -> int:
        raise AssertionError("the run counted the frozen objects")

    with monkeypatch.context() as patched:
        patched.setattr(gc, "get_freeze_count", counted)
        assert run(str(source)) == 0
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() <= frozen
    gc.unfreeze()
    monkeypatch.setattr(pipeline, "_frozen_at_start", False)  # a process that never froze anything
    assert run(str(source), "--ids", "1,2") == 0
    assert (gc.get_threshold(), gc.get_freeze_count()) == (threshold, 0)
    assert env.scalar("select count(*) from apps") == 2
    gc.freeze()  # the process as it was


def test_a_run_with_no_work_completes_with_zeros(env: Database, tmp_path: Path) -> None:
    """No due entities: the job is still written, `completed`, all counters zero."""
    source = write_source(tmp_path)
    seed(env, source, appids=[])
    assert run(str(source)) == 0
    assert env.rows("select status, items_processed from sync_jobs") == [("completed", 0)]


def test_a_job_row_that_cannot_be_inserted_leaves_no_claim_and_sends_nothing(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first chunk is claimed while the job row is inserted (runner/engine/pipeline.py
    `_claims_early`). When the insert fails, the run fails before any request, and the claim, which
    ran beside it, is released with the rest once it is over: nothing is left claimed."""
    source = write_source(tmp_path)
    seed(env, source)
    for appid in range(1, 6):
        api.route(f"/apps/{appid}", app(appid))
    env.run(
        "create function refuse() returns trigger language plpgsql as $$ begin raise exception 'no jobs today'; end $$;"
        " create trigger refuse before insert on sync_jobs for each row execute function refuse();"
    )
    assert run(str(source)) == 1  # the run's failure, with the server's message: not a traceback (70)
    assert "no jobs today" in capsys.readouterr().err
    assert not api.requests
    assert env.scalar("select count(*) from sync_jobs") == 0
    assert env.scalar("select count(*) from syncrun_state where claimed_by is not null") == 0


def test_a_job_row_whose_final_update_is_refused_fails_the_run_without_a_traceback(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The job row's final update refused by the database (a trigger): exit 1 with the server's
    message, the claims released all the same (review revG F3: a traceback, exit 70)."""
    source = write_source(tmp_path)
    seed(env, source)
    for appid in range(1, 6):
        api.route(f"/apps/{appid}", app(appid))
    env.run(
        "create function refuse() returns trigger language plpgsql as $$ begin"
        " if new.status <> 'running' then raise exception 'no finishing today'; end if; return new; end $$;"
        " create trigger refuse before update on sync_jobs for each row execute function refuse();"
    )
    assert run(str(source)) == 1
    err = capsys.readouterr().err
    assert "no finishing today" in err
    assert "Traceback" not in err
    assert env.scalar("select count(*) from syncrun_state where claimed_by is not null") == 0


def test_the_job_counters_commit_in_each_batch_transaction(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """The job row's counters are updated inside each batch's own transaction (one commit, one WAL
    flush per batch, not two): every update of the running job row shares a transaction with rows."""
    source = write_source(tmp_path)
    seed(env, source, appids=range(1, 26))
    for appid in range(1, 26):
        api.route(f"/apps/{appid}", app(appid))
    env.run(
        "create table txids (what text, txid bigint);"
        "create function note_txid() returns trigger language plpgsql as $$ begin"
        " insert into txids values (tg_table_name, txid_current()); return new; end $$;"
        " create trigger note after insert on apps for each row execute function note_txid();"
        " create trigger note after update on sync_jobs for each row when (new.status = 'running')"
        " execute function note_txid();"
    )
    assert run(str(source), "--heartbeat", "3600", "--lease", "7200") == 0
    batches = {txid for (txid,) in env.rows("select txid from txids where what = 'apps'")}
    beats = {txid for (txid,) in env.rows("select txid from txids where what = 'sync_jobs'")}
    assert len(batches) >= 3  # write_batch 10, 25 entities
    assert beats == batches
    assert env.rows("select status, items_succeeded from sync_jobs") == [("completed", 25)]


def test_a_refused_counters_update_leaves_the_batch_committed(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The counters' update is a savepoint in the batch's transaction: refused (a trigger), it is
    logged and the batch's rows and stamps commit all the same."""
    source = write_source(tmp_path)
    seed(env, source)
    for appid in range(1, 6):
        api.route(f"/apps/{appid}", app(appid))
    env.run(
        "create function refuse() returns trigger language plpgsql as $$ begin"
        " if new.status = 'running' then raise exception 'no counting today'; end if; return new; end $$;"
        " create trigger refuse before update on sync_jobs for each row execute function refuse();"
    )
    assert run(str(source), "--heartbeat", "3600", "--lease", "7200") == 0
    assert "could not update the job's counters (no counting today" in capsys.readouterr().err
    assert env.scalar("select count(*) from apps") == 5
    assert env.scalar("select count(*) from sync_status where last_alpha_sync is not null") == 5
    assert env.rows("select status, items_succeeded from sync_jobs") == [("completed", 5)]


def test_bulk_pages_are_checked_as_they_are_handed_over(
    env: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of many records has its rows' column checks made as the fetcher hands it over
    (writer.fitted), off the write path; a NUL in one page's text still ends as that entity's error,
    and the other page is written."""
    source = write_source(tmp_path, columns="name: record.name\n      price_cents: record.price")
    source.write_text(source.read_text().replace("records: body", "records: body.data"))
    seed(env, source, appids=[1, 2])
    many = writer.FITTED_FROM + 20
    api.route("/apps/1", Reply(200, json={"data": [{"name": f"n{i}", "price": i} for i in range(many)]}))
    api.route(
        "/apps/2", Reply(200, json={"data": [{"name": "a\u0000b" if i == 7 else "b", "price": i} for i in range(many)]})
    )
    fits = []
    real = writer.fitted

    def spy(*args: Any) -> EntityResult:
        found = real(*args)
        fits.append((found.key, found.fits))
        return found

    monkeypatch.setattr(writer, "fitted", spy)
    assert run(str(source)) == 0
    assert sorted(fits) == [(1, frozenset({0})), (2, frozenset())]
    assert env.rows("select appid, name, price_cents from apps") == [(1, f"n{many - 1}", many - 1)]
    assert env.scalar("select last_error from syncrun_state where entity_key = '2'") == (
        "apps.name: 'a\\x00b' contains a NUL character, which PostgreSQL text cannot store"
    )


def test_transient_failures_then_success(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """503, 503, 503, 200 succeeds after backoff; a 404 is a skip after one request."""
    source = write_source(tmp_path)
    seed(env, source, appids=[1, 2])
    api.route("/apps/1", Reply(503), Reply(503), Reply(503), app(1))
    api.route("/apps/2", Reply(404))
    assert run(str(source)) == 0
    assert [r.path for r in api.requests].count("/apps/1") == 4
    assert [r.path for r in api.requests].count("/apps/2") == 1
    assert env.rows("select items_succeeded, items_skipped, items_failed, requests_made from sync_jobs") == [
        (1, 1, 0, 5)
    ]


def test_bad_body_fails_only_that_entity(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A non-JSON body is an error for that entity, saying what arrived; the others succeed."""
    source = write_source(tmp_path)
    seed(env, source, appids=[1, 2, 3])
    api.route("/apps/1", app(1))
    api.route(
        "/apps/2", Reply(200, body=b"<html><body>maintenance</body></html>", headers={"Content-Type": "text/html"})
    )
    api.route("/apps/3", app(3))
    assert run(str(source)) == 0
    assert env.rows("select appid from apps order by appid") == [(1,), (3,)]
    error = env.scalar("select last_error from syncrun_state where source = 'alpha' and entity_key = '2'")
    assert "HTTP 200 text/html" in error
    assert "<html><body>maintenance" in error
    assert env.rows("select items_succeeded, items_failed from sync_jobs") == [(2, 1)]


def test_value_that_does_not_fit_a_column_is_an_entity_error(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A mapped value that doesn't fit its column fails that entity, naming table, column and value."""
    source = write_source(tmp_path)
    seed(env, source, appids=[1, 2])
    api.route("/apps/1", app(1, price="lots"))
    api.route("/apps/2", app(2))
    assert run(str(source)) == 0
    error = env.scalar("select last_error from syncrun_state where entity_key = '1'")
    assert "apps.price_cents" in error
    assert "lots" in error
    assert env.rows("select appid from apps") == [(2,)]


def test_other_sources_columns_survive(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """An upsert sets only its mapped columns: another source's column on the same row survives."""
    source = write_source(tmp_path)
    seed(env, source, appids=[1])
    env.run("insert into apps (appid, name, review_count) values (1, 'old', 77)")
    api.route("/apps/1", app(1))
    assert run(str(source)) == 0
    assert env.rows("select name, price_cents, review_count from apps") == [("App 1", 10, 77)]


def test_errors_of_one_source_do_not_delay_another(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A's definitive failure backs the entity off for A only (B still selects it), and A's next run skips it."""
    a = write_source(tmp_path, "alpha", path="a")
    b = write_source(tmp_path, "beta", path="b", columns="review_count: record.reviews")
    seed(env, a, b, appids=[1])
    api.route("/a/1", Reply(400, json={"error": "bad"}))
    api.route("/b/1", Reply(200, json={"reviews": 5}))
    assert run(str(a)) == 1  # 1 of 1 failed: above the default fail_ratio 0.5
    assert env.scalar("select next_attempt_at > now() from syncrun_state where source = 'alpha'") is True
    assert run(str(b)) == 0
    assert env.rows("select review_count from apps") == [(5,)]
    requests_before = len(api.requests)
    assert run(str(a)) == 0
    assert len(api.requests) == requests_before  # still backing off: not selected


def test_skip_until_excludes_the_entity(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A skip_until outcome keeps the entity out of later selections until it expires."""
    source = write_source(tmp_path)
    text = source.read_text() + (
        "outcomes:\n  - {name: invalid app, when: 'body.result == `42`', outcome: skip_until, duration: 30d}\n"
    )
    source.write_text(text)
    seed(env, source, appids=[1])
    api.route("/apps/1", Reply(200, json={"result": 42}))
    assert run(str(source)) == 0
    assert run(str(source)) == 0
    assert len(api.requests) == 1
    assert env.scalar("select skip_until > now() + interval '29 days' from syncrun_state") is True


def test_two_sources_one_bucket_share_the_limiter(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """Two sources naming one bucket, run in one process, stay under the bucket's limit together."""
    a = write_source(tmp_path, "alpha", path="a", bucket="shared")
    b = write_source(tmp_path, "beta", path="b", bucket="shared", columns="review_count: record.reviews")
    for file in (a, b):
        file.write_text(
            file.read_text().replace("requests: 200, per: 1s, burst: 20", "requests: 10, per: 500ms, burst: 2")
        )
    seed(env, a, b, appids=range(1, 21))
    for appid in range(1, 21):
        api.route(f"/a/{appid}", app(appid))
        api.route(f"/b/{appid}", Reply(200, json={"reviews": appid}))
    assert cli.main(["run", str(a), str(b)]) == 0
    assert len(api.requests) == 40
    # One bucket: any 10 grants in a row span >= 0.5 s, so 40 take >= 1.5 s; two limiters would take
    # ~0.75 s. Spans, not the worst window: a busy machine bunches arrivals at the in-process server by
    # tens of ms (11 in 0.5 s seen at load 6), which the limiter's own timing tests measure and allow for.
    arrivals = sorted(api.arrivals())
    assert arrivals[-1] - arrivals[0] >= 1.3


def test_each_source_of_a_run_takes_its_own_entities_limit(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """`syncrun run a.yaml b.yaml` with no --limit: each source runs up to its own `entities.limit`
    (the first source's limit was applied to every source)."""
    a = write_source(tmp_path, "alpha", path="a")
    b = write_source(tmp_path, "beta", path="b", columns="review_count: record.reviews")
    a.write_text(a.read_text().replace("limit: 100", "limit: 3"))
    b.write_text(b.read_text().replace("limit: 100", "limit: 7"))
    seed(env, a, b, appids=range(1, 11))
    for appid in range(1, 11):
        api.route(f"/a/{appid}", app(appid))
        api.route(f"/b/{appid}", Reply(200, json={"reviews": appid}))
    assert cli.main(["run", str(a), str(b)]) == 0
    jobs = env.rows("select job_type, items_processed, batch_size from sync_jobs order by job_type")
    assert jobs == [("alpha", 3, 3), ("beta", 7, 7)]
    assert cli.main(["run", str(a), str(b), "--limit", "2"]) == 0  # a limit given applies to each
    assert env.scalar("select count(*) from sync_jobs where items_processed = 2 and batch_size = 2") == 2


def test_stale_running_job_of_another_type_is_reaped(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A `running` job of any type without a recent heartbeat is marked failed by the next invocation."""
    source = write_source(tmp_path)
    seed(env, source, appids=[])
    env.run(
        "insert into sync_jobs (job_type, status, started_at, heartbeat_at)"
        " values ('storefront', 'running', now() - interval '2 hours', now() - interval '2 hours')"
    )
    assert run(str(source)) == 0
    status, message = env.rows("select status, error_message from sync_jobs where job_type = 'storefront'")[0]
    assert status == "failed"
    assert "abandoned" in message


def test_dry_run_writes_nothing(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run fetches and maps, prints rows with secrets masked, and writes no row, status or job."""
    source = write_source(tmp_path)
    seed(env, source, appids=[1, 2])
    api.route("/apps/1", app(1))
    api.route("/apps/2", Reply(404))
    assert run(str(source), "--dry-run") == 0
    out = capsys.readouterr()
    assert "App 1" in out.out
    assert "skip" in out.out
    assert "s3cr3t-token-value" not in out.out + out.err
    assert env.scalar("select count(*) from apps") == 0
    assert env.scalar("select count(*) from sync_jobs") == 0
    assert env.scalar("select count(*) from syncrun_state") == 0
    assert env.scalar("select count(*) from sync_status where last_alpha_sync is not null") == 0


def test_missing_secret_stops_before_any_request_or_job(
    env: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unset ${secret.X} without default is exit 2 naming the variable, before any request or job row."""
    source = write_source(tmp_path)
    source.write_text(source.read_text().replace("${secret.API_TOKEN:-tok-default}", "${secret.API_TOKEN}"))
    seed(env, source, appids=[1])
    monkeypatch.delenv("API_TOKEN")
    assert run(str(source)) == 2
    assert "API_TOKEN" in capsys.readouterr().err
    assert api.requests == []
    assert env.scalar("select count(*) from sync_jobs") == 0


def test_missing_column_exits_2_naming_it_and_the_migrate_command(
    env: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` against a database lacking the status column exits 2 and names the migrate command."""
    source = write_source(tmp_path)
    seed(env, source, appids=[1])
    env.run("alter table sync_status drop column last_alpha_sync")
    assert run(str(source)) == 2
    err = capsys.readouterr().err
    assert "last_alpha_sync" in err
    assert "syncrun migrate" in err


def test_non_integer_batch_size_is_a_usage_error(
    env: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BATCH_SIZE=abc exits 2; an empty BATCH_SIZE means the default."""
    source = write_source(tmp_path)
    seed(env, source, appids=[])
    monkeypatch.setenv("BATCH_SIZE", "abc")
    assert run(str(source)) == 2
    monkeypatch.setenv("BATCH_SIZE", "")
    assert run(str(source)) == 0


@pytest.mark.parametrize("concurrency", [1, 8])
def test_breaker_stops_on_refused_credentials_without_penalty(
    env: Database, api: ApiServer, tmp_path: Path, concurrency: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """401 on every request trips the breaker: the run fails early with one clear error; no entity backs
    off. It counts outcomes as they come, not write batches: with a batch of 100 (all 40 entities) it
    once let all 40 requests out; now at most AUTH_TRIP, plus the requests already in flight. The log
    and the summary agree: the trip count is AUTH_TRIP, the in-flight rest is said apart (the log once
    counted up to "12 entities in a row" while the summary said 5)."""
    source = write_source(tmp_path)
    text = source.read_text().replace("concurrency: 4", f"concurrency: {concurrency}")
    source.write_text(text.replace("write_batch: 10", "write_batch: 100"))
    seed(env, source, appids=range(1, 41))
    for appid in range(1, 41):
        api.route(f"/apps/{appid}", Reply(401, json={"error": "bad key"}, delay=0.05))
    assert run(str(source)) == 1
    status, message, processed = env.rows("select status, error_message, items_processed from sync_jobs")[0]
    assert status == "failed"
    late = processed - breaker.AUTH_TRIP
    expected = f"circuit breaker: stopped after {breaker.AUTH_TRIP} consecutive authentication failures (HTTP 401/403)"
    if late:
        expected += (
            f"; {late} more {'entity was' if late == 1 else 'entities were'} already in flight ({late} failed too)"
        )
    assert message == f"{expected} — {breaker.AUTH_TAIL}"
    assert breaker.AUTH_TRIP <= len(api.requests) <= breaker.AUTH_TRIP + concurrency - 1
    if concurrency > 1:
        assert late > 0  # 8 requests were out before the first 401 came back
    assert processed == len(api.requests)  # every request that went out is accounted for
    logged = [line.split(" error   ", 1)[1] for line in capsys.readouterr().err.splitlines() if " error   " in line]
    assert logged[0] == "alpha: " + expected.split(";")[0] + f" — {breaker.AUTH_TAIL}"
    assert logged[-1] == f"alpha: {message}"
    assert len(logged) == (2 if late else 1)
    assert (
        env.scalar("select count(*) from syncrun_state where consecutive_errors > 0 or next_attempt_at is not null")
        == 0
    )


def test_breaker_stops_an_api_wide_outage_without_penalty(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """When entity after entity fails transiently after its retries, the breaker stops the run; no backoff
    (one transiently failed run each: backoff only from the 3rd in a row, tests/test_backoff.py)."""
    source = write_source(tmp_path)
    text = source.read_text().replace("concurrency: 4", "concurrency: 1").replace("attempts: 4", "attempts: 1")
    source.write_text(text)
    seed(env, source, appids=range(1, 61))
    for appid in range(1, 61):
        api.route(f"/apps/{appid}", Reply(503))
    assert run(str(source)) == 1
    message = env.scalar("select error_message from sync_jobs")
    assert "API looks down" in message
    assert len(api.requests) < 60
    assert env.scalar("select count(*) from syncrun_state where next_attempt_at is not null") == 0
    assert env.scalar("select count(*) from syncrun_state where last_error is not null") >= 20


RACE_RUNS = int(os.environ.get("SYNCRUN_RACE_RUNS", "20"))  # 200 to reproduce the count


@pytest.mark.slow
def test_job_rows_end_even_when_a_heartbeat_is_in_flight(
    env: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Short runs at the shortest heartbeat: the final update never races a heartbeat on the job's
    connection (it did: OutOfOrderTransactionNesting, exit 70, job left `running`), and a heartbeat that
    lands after the finish never rolls the counters back."""
    source = write_source(tmp_path)
    seed(env, source, appids=[1, 2])
    # every update of a job row takes 20 ms, so a heartbeat is nearly always in flight when the run ends
    env.run(
        "create function slow_update() returns trigger language plpgsql as"
        " $$ begin perform pg_sleep(0.02); return new; end $$;"
        " create trigger slow before update on sync_jobs for each row execute function slow_update()"
    )
    for appid in (1, 2):
        api.route(f"/apps/{appid}", Reply(200, json={"name": "x", "price": 1}, delay=0.002))
    # a run that leaked its job transaction would block the next run's reap forever: fail instead
    dsn = conninfo_to_dict(env.dsn)
    monkeypatch.setenv("DATABASE_URL", make_conninfo(**{**dsn, "options": f"{dsn['options']} -c lock_timeout=5s"}))
    codes = [run(str(source), "--ids", "1,2", "--heartbeat", "0.0005") for _ in range(RACE_RUNS)]
    assert codes == [0] * RACE_RUNS
    assert env.rows("select status, items_succeeded, count(*) from sync_jobs group by 1, 2") == [
        ("completed", 2, RACE_RUNS)
    ]


def test_a_bug_while_fetching_ends_the_run_with_exact_counters(
    env: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unexpected exception in one fetcher (a bug) used to leave the producer waiting forever: the
    process never exited and the job said 0/0/0/0. Now the run stops, writes what it fetched, ends
    `failed` with the counters the database shows, and exits 70."""
    source = write_source(tmp_path)
    seed(env, source, appids=range(1, 41))
    for appid in range(1, 41):
        api.route(f"/apps/{appid}", app(appid))
    real = fetch.entity

    async def buggy(*args: Any, **kwargs: Any) -> Any:  # every fetcher meets it: the producer is left alone
        if args[2]["appid"] > 4:
            raise RuntimeError("a bug near s3cr3t-token-value")
        return await real(*args, **kwargs)

    monkeypatch.setattr(fetch, "entity", buggy)
    assert run(str(source), "--grace", "2") == 70
    ((status, succeeded, message),) = env.rows("select status, items_succeeded, error_message from sync_jobs")
    assert status == "failed"
    assert "a bug" in message
    assert succeeded == env.scalar("select count(*) from sync_status where last_alpha_sync is not null")
    assert succeeded == env.scalar("select count(*) from apps")
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "a bug near ***" in err
    assert "s3cr3t-t" not in err


@pytest.mark.parametrize(
    ("how", "args"),
    [
        ("file", ()),  # a literal URL: refused at load
        ("set", ("--set",)),  # by --set, on the file's own host and port: at load too
        ("env", ()),  # built from a setting: refused at run start
    ],
)
def test_a_url_with_userinfo_is_refused_before_anything_is_sent(
    env: Database,
    api: ApiServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    how: str,
    args: tuple[str, ...],
) -> None:
    """review13b N3: `http://user@host/…` with an Authorization header crashed the run (exit 70).
    Refused with exit 2 whether the file, --set or an environment value puts it there; nothing is sent."""
    source = write_source(tmp_path)
    seed(env, source, appids=[1])
    api.route("/apps/1", app(1))
    host = api.url.removeprefix("http://")
    if how == "file":
        source.write_text(source.read_text().replace("${env.API_URL}", f"http://u@{host}"))
    elif how == "set":
        source.write_text(source.read_text().replace("${env.API_URL}", api.url))
        args = (*args, f"request.url=http://evil@{host}/apps/{{appid}}")
    else:
        monkeypatch.setenv("API_URL", f"http://u:pw-secret@{host}")
    capsys.readouterr()
    assert run(str(source), *args) == 2
    err = capsys.readouterr().err
    assert "it has a user name or password (user@host): credentials go in auth:" in err
    assert "Traceback" not in err
    assert "pw-secret" not in err
    assert api.requests == []


def test_ids_another_live_runner_holds_are_named_and_the_run_is_not_completed(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """review11 F3: `--ids` names exactly what to run; ids another live runner holds used to be skipped
    silently (`completed`, exit 0, a subset). They are named and the run fails (exit 1); the others run.
    A claim that has lapsed (its runner is gone) is no reason: that id runs."""
    source = write_source(tmp_path)
    seed(env, source, appids=range(1, 9))
    for appid in range(1, 9):
        api.route(f"/apps/{appid}", app(appid))
    env.run(
        "insert into syncrun_state (source, entity_key, claimed_by, claim_expires_at) select 'alpha', k::text,"
        " 'elsewhere:7:cafe', now() + interval '10 minutes' from unnest('{2,3,4,5,6,7}'::int[]) k"
    )
    env.run("update syncrun_state set claim_expires_at = now() - interval '1 second' where entity_key = '7'")
    assert run(str(source), "--ids", "1,2,3,4,5,6,7,8") == 1
    ((status, processed, error, busy),) = env.rows(
        "select status, items_processed, error_message, metadata->>'busy_ids' from sync_jobs"
    )
    assert (status, processed, busy) == ("failed", 3, "5")
    assert error.startswith(
        "5 of the --ids were not run: another runner holds them (2, 3, 4, 5, 6; held by elsewhere:7:cafe until "
    )
    assert sorted(r.path for r in api.requests) == ["/apps/1", "/apps/7", "/apps/8"]
    assert f"warning alpha: {error}" in capsys.readouterr().err
    # the other runner's claims are untouched; once they are free, the same command completes
    assert (
        env.scalar(
            "select count(*) from syncrun_state where claimed_by = 'elsewhere:7:cafe' and claim_expires_at > now()"
        )
        == 5
    )
    env.run("update syncrun_state set claimed_by = null, claim_expires_at = null")
    assert run(str(source), "--ids", "1,2,3,4,5,6,7,8") == 0


TEXT_KEYS = """\
name: slugs
entities:
  type: default
  columns: {{slug: text}}
request:
  url: "${{env.API_URL}}/{path}"
  timeout: 2s
{request}rate_limit: {{requests: 200, per: 1s, burst: 20, bucket: slugs}}
retry: {{attempts: 1}}
fail_ratio: 1
writes:
  - table: slugs
    key: [slug]
    columns: {{slug: entity.slug, name: body.name}}
"""


def text_keyed(db: Database, tmp: Path, slugs: list[str], *, path: str, request: str = "") -> Path:
    """A source over text keys (`slug`), seeded with these entities; `request`: more of its request block."""
    (tmp / "syncrun.yaml").write_text(
        "status: {table: sync_status, key: slug}\nentities: {key: slug, key_type: text}\n"
    )
    file = tmp / "slugs.yaml"
    file.write_text(TEXT_KEYS.format(path=path, request=request))
    assert cli.main(["migrate", str(file)]) == 0
    db.run("create table slugs (slug text primary key, name text)")
    db.rows("insert into sync_status (slug) select unnest(%s::text[]) returning slug", (slugs,))
    return file


def test_a_batched_key_holding_the_separator_fails_alone_unsent(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """review11 F5: `b1,b2` joined into `ids=b1,b2,b3` was three ids to the API for two entities. The
    entity whose key contains `batch.separator` fails alone, definitively, and is not sent; the rest of
    its batch goes out as one request."""
    batch = '  batch: {size: 10, param: ids, record: "get(body, entity.slug)"}\n'
    source = text_keyed(env, tmp_path, ["b1,b2", "b3", "b4", "x;y"], path="batch", request=batch)
    api.route(
        "/batch",
        lambda r: Reply(200, json={i: {"name": f"N {i}"} for i in r.query["ids"].split(",")}),
    )
    assert run(str(source)) == 0
    assert [r.query["ids"] for r in api.requests] == ["b3,b4,x;y"]
    assert env.rows("select slug, name from slugs order by slug") == [("b3", "N b3"), ("b4", "N b4"), ("x;y", "N x;y")]
    assert env.rows("select entity_key, last_error from syncrun_state where last_error is not null") == [
        ("b1,b2", "key contains the batch separator ','; not sent")
    ]
    assert env.rows("select items_processed, items_succeeded, items_failed from sync_jobs") == [(4, 3, 1)]


def test_an_entity_key_with_a_line_break_cannot_forge_log_lines(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """review11 F8: a key holding CR/LF printed its own line in the text log (here a fake summary
    line). Control characters in text log lines and in the summary line are escaped."""
    forged = "z\r\n04:00:00 info    slugs: completed — processed 999"
    source = text_keyed(env, tmp_path, [forged, "\x1b[31mred"], path="s", request='  headers: {X-Id: "{slug}"}\n')
    api.route("/s", Reply(200, json={"name": "n"}))
    assert run(str(source), "--ids", f"{forged},\x1b[31mred") == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "\x1b" not in err
    assert "slugs z\\r\\n04:00:00 info    slugs: completed — processed 999 failed: header X-Id" in err
    assert [line.split(" ", 2)[1] for line in err.splitlines() if not line.startswith("slugs:")] == ["warning"] * 2


@pytest.mark.parametrize(("bound", "most"), [(500_000, 2), (50_000, 1)])
def test_heavy_rows_are_committed_before_write_batch_fills_entity_by_entity(
    env: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: int, most: int
) -> None:
    """review11 F7: a 10 MB body decodes into ~270 MB of Python objects, and `write_batch` (100) of
    them waited for one commit (4.4 GB for 16). The writer commits once the rows waiting pass
    writes.HOLD_BYTES (here lowered): ~210 KB of rows each, so at most 2 entities per transaction under
    500 KB, and each alone under 50 KB (heavier than the bound: written alone, no hang). An entity's
    rows and its stamp still commit in one transaction (the same xmin)."""
    monkeypatch.setattr(writes, "HOLD_BYTES", bound)
    source = write_source(tmp_path, columns="name: record.name\n      payload: record.payload")
    seed(env, source, appids=range(1, 13))
    env.run("alter table apps add column payload jsonb")
    for appid in range(1, 13):
        api.route(f"/apps/{appid}", app(appid, payload=[f"{appid:040d}"] * 2000))
    assert run(str(source), "--set", "write_batch=100") == 0
    per_transaction = env.rows("select count(*) from apps group by xmin::text")
    assert max(n for (n,) in per_transaction) <= most
    assert sum(n for (n,) in per_transaction) == 12
    assert (
        env.scalar(
            "select count(*) from apps a join sync_status s using (appid)"
            " where a.xmin::text = s.xmin::text and s.last_alpha_sync is not null"
        )
        == 12
    )


def test_a_partial_batch_is_committed_once_no_result_came_for_a_while(
    env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """The writer commits what it has when no result came for writes._FLUSH_EVERY, not only when
    write_batch fills or the fetchers are done: entity 5's reply is held back until the rows of 1-4
    are committed (it fails if they never are), so the run completes only if they were committed
    while 5 was still in flight; 5 then goes in a transaction of its own."""
    source = write_source(tmp_path)
    seed(env, source)
    for appid in range(1, 5):
        api.route(f"/apps/{appid}", app(appid))

    def after_the_others(_: Recorded) -> Reply:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if env.scalar("select count(*) from apps") == 4:
                return app(5)
            time.sleep(0.05)
        return Reply(400)  # definitive: entity 5 fails, and the run with it

    api.route("/apps/5", after_the_others)
    assert run(str(source), "--set", "request.timeout=30s") == 0
    assert env.rows("select appid from apps order by appid") == [(i,) for i in range(1, 6)]
    xmins = env.rows("select appid, xmin::text from apps order by appid")
    assert len({xmin for _, xmin in xmins[:4]} & {xmins[4][1]}) == 0
    job = env.rows("select status, items_processed, items_succeeded from sync_jobs where job_type = 'alpha'")
    assert job == [("completed", 5, 5)]


def _weight_one_by_one(rows: dict[int, list[dict[str, Any]]]) -> int:
    """writes.weight as it was: every value walked on its own (the reference for the column-wise one)."""
    total, pending = writes._VALUE, list[Any]()
    for each in rows.values():
        total += writes._VALUE * len(each)
        for row in each:
            pending.extend(row.values())
    while pending:
        value = pending.pop()
        total += writes._VALUE
        if type(value) is str:
            total += len(value)
        elif type(value) is list:
            pending.extend(value)
        elif type(value) is dict:
            pending.extend(value.values())
    return total


def test_rows_weigh_the_same_column_by_column_as_value_by_value() -> None:
    """Rows of one shape are weighed a column at a time; odd shapes (a missing or extra column,
    nested values, mixed types in a column) fall back to the walk: the number is the same."""
    shapes: list[dict[int, list[dict[str, Any]]]] = [
        {0: [{"id": i, "name": f"item {i}", "price": i * 1.5, "free": i % 2 == 0, "none": None} for i in range(50)]},
        {0: [{"a": 1, "b": "x"}, {"a": 2}], 1: [{"a": 1}, {"b": 2}]},
        {0: [{"a": [1, "two", {"three": "3"}], "b": {"c": ["d"]}}, {"a": "s", "b": None}]},
        {0: [{"a": 1, "b": "é"}, {"a": "mixed", "b": 2.5}], 1: []},
        {0: [], 1: [{}, {}]},
    ]
    for rows in shapes:
        trace = Trace({"id": 1})
        trace.result = EntityResult(key=1, entity={"id": 1}, outcome=Outcome.SUCCESS, rows=rows, error_source="t")
        assert writes.weight(trace) == _weight_one_by_one(rows), rows
        assert writes.weight(trace, writes.columns(rows)) == _weight_one_by_one(rows), rows  # hand_over's way


def test_a_source_that_cannot_connect_leaves_no_job_row_running(
    env: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review revA F1: two sources through a role allowed 4 connections (a run opens 6): one source's
    connect fails the run (exit 1), and every job row any source had inserted is finished, not left
    `running` (the other source's task was cancelled while its thread inserted the row, whose id was
    then lost). Repeated: which connections fail depends on the order they are opened in."""
    first, second = write_source(tmp_path, "alpha"), write_source(tmp_path, "beta")
    seed(env, first, second)
    for appid in range(1, 6):
        api.route(f"/apps/{appid}", app(appid))
    role = f"limited_{os.getpid()}"
    owner = conninfo_to_dict(env.dsn).get("user", "postgres")
    env.run(f"drop role if exists {role}; create role {role} login connection limit 4 in role {owner}")
    try:
        monkeypatch.setenv("DATABASE_URL", make_conninfo(env.dsn, user=role))
        started = 0
        for _ in range(5):
            assert run(str(first), str(second)) == 1
            assert env.rows("select job_type from sync_jobs where status = 'running'") == []
            for (error,) in env.rows("select error_message from sync_jobs"):
                assert "too many connections" in error or error.startswith("stopped before it finished")
            started += env.scalar("select count(*) from sync_jobs")
            env.run("delete from sync_jobs")
        assert started > 0  # some runs got as far as a job row
    finally:
        env.run(f"select pg_terminate_backend(pid) from pg_stat_activity where usename = '{role}'; drop role {role}")
