"""backoff: transiently failed runs are counted per entity and back off from the K-th; the cut-off.

Real runs through the CLI against a loopback API and PostgreSQL (tests/test_engine.py's harness).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner import cli
from tests.apiserver import ApiServer, Reply
from tests.pg import Database
from tests.test_engine import app, env, run, seed, write_source

__all__ = ["env"]  # the fixture, re-used


def one_attempt(tmp_path: Path, extra: str = "") -> Path:
    """The engine tests' source with one attempt per request (a 503 fails at once), no fail_ratio (a
    rerun may ask only the failing entity) and `extra` YAML."""
    source = write_source(tmp_path)
    source.write_text(source.read_text().replace("attempts: 4", "attempts: 1") + "fail_ratio: 1\n" + extra)
    return source


def state(db: Database, key: str) -> tuple[int, int, float | None]:
    """(consecutive_errors, transient_runs, seconds until next_attempt_at) of entity `key`."""
    row = db.rows(
        "select consecutive_errors, transient_runs, extract(epoch from next_attempt_at - now())::float8"
        " from syncrun_state where source = 'alpha' and entity_key = %s",
        (key,),
    )[0]
    return int(row[0]), int(row[1]), None if row[2] is None else round(float(row[2]) / 60)


def test_transient_failures_count_runs_and_back_off_from_the_third(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entity answering 503 on every run: each run adds one transiently failed run; the 3rd backs it
    off 15 min (the default ladder), so the 4th run does not ask; `status` counts it as failing
    transiently; a success clears everything, the seed's columns included."""
    source = one_attempt(tmp_path)
    seed(env, source, appids=range(1, 6))
    env.run("alter table sync_status add column consecutive_errors int default 0")
    for appid in range(1, 5):
        api.route(f"/apps/{appid}", app(appid))
    api.route("/apps/5", Reply(503))
    for expected in ((0, 1, None), (0, 2, None), (0, 3, 15)):
        assert run(str(source)) == 0
        assert state(env, "5") == expected
    asked = len(api.requests)
    assert run(str(source)) == 0
    assert len(api.requests) == asked  # backing off: not selected
    (counter, message) = env.rows("select consecutive_errors, last_error_message from sync_status where appid = 5")[0]
    assert (counter, "HTTP 503" in message) == (3, True)  # the seed's counter counts every failed sync
    capsys.readouterr()
    assert cli.main(["status", str(source), "--json"]) == 0
    (shown,) = json.loads(capsys.readouterr().out)["sources"]
    assert (shown["failing"], shown["failing_transiently"], shown["backoff"]) == (0, 1, 1)
    ((top, count),) = [(e["message"], e["count"]) for e in shown["top_errors"]]
    assert ("HTTP 503" in top, count) == (True, 1)
    assert shown["held_back"] is None
    assert cli.main(["status", str(source)]) == 0
    assert "   failing 0   failing transiently 1\n" in capsys.readouterr().out

    api.route("/apps/5", app(5))
    assert run(str(source), "--ids", "5") == 0
    assert state(env, "5") == (0, 0, None)
    assert env.rows(
        "select consecutive_errors, last_error_source, last_error_message, last_error_at from sync_status"
        " where appid = 5"
    ) == [(0, None, None, None)]


def test_the_ladder_and_k_are_per_source(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """backoff: {initial: 10m, factor: 3, cap: 1h, transient_runs: 1}: the first transiently failed run
    backs off 10 min already; a definitive failure climbs 10, 30, 60 (the cap), 60 minutes."""
    source = one_attempt(tmp_path, "backoff: {initial: 10m, factor: 3, cap: 1h, transient_runs: 1}\n")
    seed(env, source, appids=[1, 2, 3])
    api.route("/apps/1", app(1))
    api.route("/apps/2", Reply(503))
    api.route("/apps/3", Reply(400))
    assert run(str(source)) == 0
    assert state(env, "2") == (0, 1, 10)
    assert state(env, "3") == (1, 0, 10)
    for expected in (30, 60, 60):
        assert run(str(source), "--ids", "3") == 0
        assert state(env, "3")[2] == expected


def test_transient_runs_zero_never_backs_off(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """transient_runs: 0 keeps the old behaviour: counted (status shows it), never backed off."""
    source = one_attempt(tmp_path, "backoff: {transient_runs: 0}\n")
    seed(env, source, appids=[1, 2])
    api.route("/apps/1", app(1))
    api.route("/apps/2", Reply(503))
    for runs in (1, 2, 3, 4):
        assert run(str(source)) == 0
        assert state(env, "2") == (0, runs, None)


def test_refused_credentials_are_not_the_entitys_transient_failures(
    env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """A 401 is recorded (and the seed's columns say so) but counts no transiently failed run."""
    source = one_attempt(tmp_path)
    seed(env, source, appids=[1, 2, 3])
    api.route("/apps/1", app(1))
    api.route("/apps/2", Reply(401))
    api.route("/apps/3", app(3))
    assert run(str(source)) == 0
    assert state(env, "2") == (0, 0, None)
    assert "HTTP 401" in env.scalar("select last_error_message from sync_status where appid = 2")


def test_entities_failing_at_the_front_are_tried_once_and_the_run_goes_on(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """review13 F1, review13b N2, review13c R1: 25 entities answering 503 every time, first in the
    selection order (higher priority). Run 1 has no history: it tries 20 of them and trips the breaker.
    From then on their last attempt failed, so the breaker does not count them: run 2 tries each of
    them once (in the usual order, first), 21..25 (never tried: 5 in a row, no trip), and fetches the
    5 healthy entities behind them. `status` shows them failing transiently."""
    source = one_attempt(tmp_path)
    source.write_text(source.read_text().replace("concurrency: 4", "concurrency: 1"))
    seed(env, source, appids=range(1, 31))
    env.run("update sync_status set priority_score = 100 where appid <= 25")
    for appid in range(1, 26):
        api.route(f"/apps/{appid}", Reply(503))
    for appid in range(26, 31):
        api.route(f"/apps/{appid}", app(appid))
    healthy = [f"/apps/{appid}" for appid in range(26, 31)]
    assert run(str(source)) == 1
    message = env.scalar("select error_message from sync_jobs order by started_at desc limit 1")
    assert message.startswith("circuit breaker: stopped after 20 consecutive entities failed")
    assert "each counts one transiently failed run and backs off only from its 3rd such run in a row" in message
    assert not any(r.path in healthy for r in api.requests)
    asked = len(api.requests)
    run(str(source))
    assert [r.path for r in api.requests[asked:]] == [f"/apps/{a}" for a in range(1, 31)]
    assert env.scalar("select error_message from sync_jobs order by started_at desc limit 1") is None
    assert env.scalar("select count(*) from sync_status where last_alpha_sync is not null") == 5
    assert {state(env, str(appid))[1] for appid in range(1, 21)} == {2}
    capsys.readouterr()
    assert cli.main(["status", str(source), "--json"]) == 0
    (shown,) = json.loads(capsys.readouterr().out)["sources"]
    assert shown["failing_transiently"] == 25


@pytest.mark.parametrize("kind", ["transient", "definitive", "refused"])
def test_the_first_run_reaches_healthy_entities_behind_a_block_that_failed_last_time(
    env: Database, api: ApiServer, tmp_path: Path, kind: str
) -> None:
    """review13b N2, N4 at the source's real schedule: 25 entities first in the order failed on their
    last attempt (2 h ago) and are due again (their wait is over). The next run tries each of them once
    without tripping the breaker (they are known-bad: not counted) and reaches the healthy entities
    behind them, whatever the kind of failure."""
    source = one_attempt(tmp_path)
    source.write_text(source.read_text().replace("concurrency: 4", "concurrency: 1"))
    seed(env, source, appids=range(1, 31))
    env.run("update sync_status set priority_score = 100 where appid <= 25")
    counts = {"transient": "0, 1, false", "definitive": "1, 0, false", "refused": "0, 0, true"}[kind]
    env.run(
        "insert into syncrun_state (source, entity_key, consecutive_errors, transient_runs, refused, last_error,"
        f" last_error_at) select 'alpha', a::text, {counts}, 'HTTP 503', now() - interval '2 hours'"
        " from generate_series(1, 25) a"
    )
    reply = Reply(403) if kind == "refused" else Reply(503)
    for appid in range(1, 26):
        api.route(f"/apps/{appid}", reply)
    for appid in range(26, 31):
        api.route(f"/apps/{appid}", app(appid))
    run(str(source))
    assert [r.path for r in api.requests] == [f"/apps/{a}" for a in range(1, 31)]
    assert env.scalar("select error_message from sync_jobs") is None  # no trip
    assert env.scalar("select count(*) from sync_status where last_alpha_sync is not null") == 5


def test_a_top_entity_that_failed_once_is_retried_first(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """review13c R1: the top-priority entity hits one 503 in a run that takes 5 of 30 due entities.
    The next run (the due set still larger than a run takes) asks for it first again."""
    source = one_attempt(tmp_path)
    source.write_text(
        source.read_text().replace("concurrency: 4", "concurrency: 1").replace("  limit: 100\n", "  limit: 5\n")
    )
    seed(env, source, appids=range(1, 31))
    env.run("update sync_status set priority_score = 100 where appid = 1")
    api.route("/apps/1", Reply(503))
    for appid in range(2, 31):
        api.route(f"/apps/{appid}", app(appid))
    run(str(source))
    assert [r.path for r in api.requests] == [f"/apps/{a}" for a in range(1, 6)]
    api.route("/apps/1", app(1))
    assert run(str(source)) == 0
    assert [r.path for r in api.requests[5:]] == [f"/apps/{a}" for a in (1, 6, 7, 8, 9)]
    assert state(env, "1") == (0, 0, None)


def test_an_outage_still_trips_on_previously_healthy_entities(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A known-bad block at the front neither hides nor delays an outage: 5 entities that failed last
    time, then 25 synced fine until now, all answering 503: the 5 are not counted, and the breaker
    trips on the 20th previously-healthy one (25 requests)."""
    source = one_attempt(tmp_path)
    source.write_text(source.read_text().replace("concurrency: 4", "concurrency: 1"))
    seed(env, source, appids=range(1, 31))
    env.run("update sync_status set priority_score = 100 where appid <= 5")
    env.run(
        "insert into syncrun_state (source, entity_key, consecutive_errors, transient_runs, last_error,"
        " last_error_at, last_success_at) select 'alpha', a::text, 0, case when a <= 5 then 1 else 0 end,"
        " case when a <= 5 then 'HTTP 503' end, case when a <= 5 then now() - interval '2 hours' end,"
        " now() - interval '3 hours' from generate_series(1, 30) a"
    )
    for appid in range(1, 31):
        api.route(f"/apps/{appid}", Reply(503))
    assert run(str(source)) == 1
    message = env.scalar("select error_message from sync_jobs")
    assert message.startswith("circuit breaker: stopped after 20 consecutive entities failed")
    assert [r.path for r in api.requests] == [f"/apps/{a}" for a in range(1, 26)]


def test_a_due_set_of_only_failing_entities_backs_off(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """review13 F1, the steady state: the due set is 20 entities failing every time. Run 1 has no
    history and ends on the breaker ("nothing was left to stop"); from run 2 they are known-bad, so the
    breaker does not count them and the run completes (fail_ratio: 1 here). Every run counts one
    transiently failed run for each; they back off from the 3rd run, and the 4th run asks nothing."""
    source = one_attempt(tmp_path)
    source.write_text(source.read_text().replace("concurrency: 4", "concurrency: 1"))
    seed(env, source, appids=range(1, 21))
    for appid in range(1, 21):
        api.route(f"/apps/{appid}", Reply(503))
    for runs in (1, 2, 3):
        assert run(str(source)) == (1 if runs == 1 else 0)
        message = env.scalar("select error_message from sync_jobs order by started_at desc limit 1")
        if runs == 1:
            assert message.startswith("circuit breaker: the run ended on 20 consecutive entities failed")
        else:
            assert message is None
        assert {state(env, str(appid))[1:] for appid in range(1, 21)} == {(runs, 15 if runs == 3 else None)}
    asked = len(api.requests)
    assert run(str(source)) == 0
    assert len(api.requests) == asked


def test_the_cut_off_holds_back_entities_with_too_many_failed_runs(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """entities.max_consecutive_errors: 2 — definitive errors in a row since the last success (transiently
    failed runs do not count: review13b N1); at 2 the entity is not selected (backoff aside), `status`
    says how many are held back, and `--ids` still runs it."""
    source = one_attempt(tmp_path)
    source.write_text(source.read_text().replace("  limit: 100\n", "  limit: 100\n  max_consecutive_errors: 2\n"))
    seed(env, source, appids=[1, 2, 3, 4])
    env.run(
        "insert into syncrun_state (source, entity_key, consecutive_errors, transient_runs, last_error) values"
        " ('alpha', '1', 2, 0, 'x'), ('alpha', '2', 1, 5, 'x'), ('alpha', '3', 1, 0, 'x')"
    )
    for appid in range(1, 5):
        api.route(f"/apps/{appid}", app(appid))
    assert run(str(source)) == 0
    assert sorted(r.path for r in api.requests) == ["/apps/2", "/apps/3", "/apps/4"]
    capsys.readouterr()
    assert cli.main(["status", str(source), "--json"]) == 0
    (shown,) = json.loads(capsys.readouterr().out)["sources"]
    assert (shown["held_back"], shown["due"]) == (1, 0)
    assert cli.main(["status", str(source)]) == 0
    assert "   held back 1" in capsys.readouterr().out
    assert run(str(source), "--ids", "1") == 0
    assert state(env, "1") == (0, 0, None)


def test_an_outage_as_long_as_the_cut_off_holds_no_entity_back(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """review13b N1: with max_consecutive_errors: 3, an API-wide outage lasting 3 runs counts a
    transiently failed run (up to 3) for the entities each run tried; they back off on the ladder, but
    the cut-off reads definitive errors only, so once the API is back (and their wait is over) every
    entity is selected and synced again."""
    source = one_attempt(tmp_path)
    source.write_text(
        source.read_text()
        .replace("concurrency: 4", "concurrency: 1")
        .replace("  limit: 100\n", "  limit: 100\n  max_consecutive_errors: 3\n")
    )
    seed(env, source, appids=range(1, 26))
    for appid in range(1, 26):
        api.route(f"/apps/{appid}", Reply(503))
    assert run(str(source)) == 1  # the breaker: the API looks down
    for _ in range(2):  # 1..20 are known-bad now (not counted): the 5 others do not trip it
        run(str(source))
    assert env.scalar("select max(transient_runs) from syncrun_state where source = 'alpha'") == 3
    env.run("update syncrun_state set next_attempt_at = null where source = 'alpha'")  # their wait is over
    for appid in range(1, 26):
        api.route(f"/apps/{appid}", app(appid))
    assert run(str(source)) == 0
    assert env.scalar("select count(*) from sync_status where last_alpha_sync is not null") == 25
