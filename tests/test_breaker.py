"""breaker: the trip message says "stopped" only when the trip stopped something."""

from __future__ import annotations

from pathlib import Path

from runner import breaker
from tests.apiserver import ApiServer, Reply
from tests.pg import Database
from tests.test_engine import env, run, seed, write_source

__all__ = ["env"]  # the fixture, re-used

OUTAGE = f"{breaker.OUTAGE_TRIP} consecutive entities failed with transient errors after every retry"
TAIL = (
    " — the API looks down, or these entities fail every time; each counts one transiently failed run and"
    " backs off only from its 3rd such run in a row"
)


def tripped() -> breaker.Breaker:
    b = breaker.Breaker()
    for _ in range(breaker.OUTAGE_TRIP):
        b.observe(failed=True, auth=False, transient=True)
    return b


def test_message_stopped_or_ended() -> None:
    """The same trip, said two ways; the in-flight rest is added to either."""
    b = tripped()
    assert b.message() == f"circuit breaker: stopped after {OUTAGE}{TAIL}"
    assert b.message(stopped=False) == f"circuit breaker: the run ended on {OUTAGE} (nothing was left to stop){TAIL}"
    b.observe(failed=True, auth=False, transient=True)
    assert b.message(stopped=False) == (
        f"circuit breaker: the run ended on {OUTAGE} (nothing was left to stop);"
        f" 1 more entity was already in flight (1 failed too){TAIL}"
    )
    assert breaker.Breaker().message() is None


def outage(env: Database, api: ApiServer, tmp_path: Path, entities: int) -> str:
    source = write_source(tmp_path)
    text = source.read_text().replace("concurrency: 4", "concurrency: 1").replace("attempts: 4", "attempts: 1")
    source.write_text(text)
    seed(env, source, appids=range(1, entities + 1))
    for appid in range(1, entities + 1):
        api.route(f"/apps/{appid}", Reply(503, delay=0.02))  # the selection is long exhausted by the last one
    assert run(str(source)) == 1
    status, message = env.rows("select status, error_message from sync_jobs")[0]
    assert status == "failed"
    return str(message)


def test_a_trip_on_the_last_entities_did_not_stop_the_run(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """Exactly OUTAGE_TRIP entities, all failing: the run was over anyway; the job does not say "stopped"."""
    message = outage(env, api, tmp_path, breaker.OUTAGE_TRIP)
    assert message == f"circuit breaker: the run ended on {OUTAGE} (nothing was left to stop){TAIL}"
    assert len(api.requests) == breaker.OUTAGE_TRIP


def test_a_trip_with_entities_left_stopped_the_run(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """More entities than the trip needs: it stopped early, and says so."""
    message = outage(env, api, tmp_path, breaker.OUTAGE_TRIP + 10)
    assert message == f"circuit breaker: stopped after {OUTAGE}{TAIL}"
    assert len(api.requests) < breaker.OUTAGE_TRIP + 10


def test_known_bad_failures_neither_extend_nor_reset_a_streak() -> None:
    """runner/history.py: a failure of an entity whose previous attempt failed is not counted."""
    b = breaker.Breaker()
    for _ in range(breaker.OUTAGE_TRIP - 1):
        assert b.observe(failed=True, auth=False, transient=True) is None
    for _ in range(100):
        assert b.observe(failed=True, auth=False, transient=True, known_bad=True) is None
        assert b.observe(failed=True, auth=True, transient=False, known_bad=True) is None
    assert (b.outage, b.auth) == (breaker.OUTAGE_TRIP - 1, 0)
    assert b.observe(failed=True, auth=False, transient=True) is not None
    c = breaker.Breaker()
    c.observe(failed=True, auth=False, transient=True)
    c.observe(failed=False, auth=False, transient=False, known_bad=True)  # a success resets, known-bad or not
    assert c.outage == 0
