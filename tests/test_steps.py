"""steps: before/after SQL with named parameters, `when: complete`, one transaction each, failures."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from runner import steps
from runner.errors import RunFailed
from runner.spec import Step, StepWhen
from tests.pg import Database

STARTED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
PARAMS = {"job_id": 7, "started_at": STARTED, "source": "steamspy"}


@pytest.fixture
def log(db: Database) -> Database:
    db.run("create table step_log (n int, job_id int, started_at timestamptz, source text)")
    return db


def test_complete_steps_run_only_when_the_run_was_complete(log: Database) -> None:
    """`always` steps run every time; `complete` ones only when complete=True."""
    plan = [
        Step(sql="insert into step_log (n) values (1)"),
        Step(sql="insert into step_log (n) values (2)", when=StepWhen.COMPLETE),
    ]
    steps.run(log.conn, plan, phase="after", complete=False, params=PARAMS)
    assert log.rows("select n from step_log order by n") == [(1,)]
    steps.run(log.conn, plan, phase="after", complete=True, params=PARAMS)
    assert log.rows("select n from step_log order by n") == [(1,), (1,), (2,)]


def test_parameters_are_bound_and_unused_ones_ignored(log: Database) -> None:
    """%(job_id)s, %(started_at)s and %(source)s are bound; %% is a literal %; several statements work."""
    plan = [
        Step(
            sql="insert into step_log values (1, %(job_id)s, %(started_at)s, %(source)s);"
            " update step_log set source = source || ' 100%%' where source like 'steam%%'"
        ),
        Step(sql="insert into step_log (n, source) values (2, '50%%')"),
    ]
    steps.run(log.conn, plan, phase="before", complete=False, params=PARAMS)
    assert log.rows("select * from step_log order by n") == [
        (1, 7, STARTED, "steamspy 100%"),
        (2, None, None, "50%"),
    ]


def test_a_failing_step_names_phase_index_and_message(log: Database) -> None:
    """RunFailed says which step failed and PostgreSQL's first line; earlier steps stay committed."""
    plan = [
        Step(sql="insert into step_log (n) values (1)"),
        Step(sql="insert into step_log (n) values (2); select * from no_such_table"),
        Step(sql="insert into step_log (n) values (3)"),
    ]
    with pytest.raises(RunFailed) as caught:
        steps.run(log.conn, plan, phase="after", complete=True, params=PARAMS)
    assert str(caught.value) == 'after[1]: relation "no_such_table" does not exist'
    assert log.rows("select n from step_log") == [(1,)]  # step 1 rolled back whole, step 2 never ran
