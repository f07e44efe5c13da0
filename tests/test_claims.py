"""claims: one holder wins each entity until it releases the claim or the lease runs out; renew and
release touch only the holder's own claims; backing-off entities are claimed only when asked."""

from __future__ import annotations

import pytest

from runner import claims
from tests.pg import Database, make_source

SOURCE = make_source()


@pytest.fixture
def state(db: Database) -> Database:
    db.migrate(SOURCE)
    return db


def _claim(db: Database, holder: str, keys: list[int], *, backoff: bool = True, enabled: bool = True) -> list[int]:
    claim = claims.Claim(SOURCE.name, holder, 60.0, enabled)
    rows = [{"appid": key} for key in keys]
    return [row["appid"] for row in claims.claimed(db.conn, claim, rows, "appid", backoff)]


def test_each_entity_is_won_once_until_released(state: Database) -> None:
    assert _claim(state, "a", [1, 2, 3]) == [1, 2, 3]
    assert _claim(state, "b", [2, 3, 4]) == [4]
    assert _claim(state, "a", [1, 2]) == [1, 2]  # a holder's own claims are free to it
    assert claims.release(state.conn, SOURCE, "a", [2]) == 1
    assert _claim(state, "b", [2, 3]) == [2]


def test_an_expired_claim_can_be_taken_over(state: Database) -> None:
    _claim(state, "a", [1, 2])
    state.run("update syncrun_state set claim_expires_at = now() - interval '1 second' where entity_key = '1'")
    assert _claim(state, "b", [1, 2]) == [1]


def test_renew_extends_only_the_holders_claims(state: Database) -> None:
    _claim(state, "a", [1, 2])
    _claim(state, "b", [3])
    state.run("update syncrun_state set claim_expires_at = now() + interval '1 second'")
    assert claims.renew(state.conn, SOURCE.name, "a", 600) == 2
    assert state.rows(
        "select entity_key, claim_expires_at > now() + interval '500 seconds' from syncrun_state order by entity_key"
    ) == [("1", True), ("2", True), ("3", False)]


def test_backing_off_entities_are_claimed_only_when_backoff_is_ignored(state: Database) -> None:
    """`--ids` ignores backoff (backoff=False); every other selection respects it."""
    state.run(
        "insert into syncrun_state (source, entity_key, next_attempt_at)"
        " values ('example', '5', now() + interval '1 hour')"
    )
    assert _claim(state, "a", [5, 6]) == [6]
    assert _claim(state, "a", [5, 6], backoff=False) == [5, 6]


def test_a_dry_run_claims_nothing(state: Database) -> None:
    assert _claim(state, "a", [1, 2], enabled=False) == [1, 2]
    assert state.scalar("select count(*) from syncrun_state") == 0


def test_release_held_drops_every_claim_of_the_holder_on_the_source_only(state: Database) -> None:
    _claim(state, "a", [1, 2])
    _claim(state, "b", [3])
    state.run(
        "insert into syncrun_state (source, entity_key, claimed_by, claim_expires_at)"
        " values ('other', '1', 'a', now() + interval '1 hour')"
    )
    assert claims.release_held(state.conn, SOURCE, "a") == 2
    assert state.rows(
        "select source, entity_key, claimed_by from syncrun_state where claimed_by is not null order by 1, 2"
    ) == [
        ("example", "3", "b"),
        ("other", "1", "a"),
    ]


def test_held_names_the_holder_of_each_key_a_claim_did_not_win(state: Database) -> None:
    _claim(state, "b", [2, 3])
    state.run("update syncrun_state set claim_expires_at = now() - interval '1 second' where entity_key = '3'")
    held = claims.held(state.conn, SOURCE, [2, 3, 4])
    assert [(h.key, h.holder) for h in held] == [(2, "b"), (3, None), (4, None)]  # 3's claim lapsed: nobody's
    assert held[0].until is not None
    assert held[1].until is None
