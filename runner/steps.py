"""`before` / `after` steps: the source's own SQL, run around the entities (e.g. mark apps SteamSpy
never listed), each in its own transaction.

A step may use the named parameters %(job_id)s, %(started_at)s and %(source)s (runner/config/ rejects
others). The engine provides them: `started_at` is the run's start, except for a list source, where
it is when its listing started (the first run of a listing resumed from checkpoints; runner/jobs.py
keeps it with the checkpoint) and writes a literal % as %% whether or not it uses any. Parameters are bound client side
(psycopg's ClientCursor quotes them), so one step may hold several statements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from runner.errors import DatabaseError, RunFailed
from runner.spec import Step, StepWhen


def run(
    conn: psycopg.Connection[Any],
    steps: Sequence[Step],
    *,
    phase: str,
    complete: bool,
    params: Mapping[str, Any],
) -> None:
    """Run `steps` in order, each committed on its own; `when: complete` ones only when `complete`.

    `phase` ("before" / "after") names the failing step: `after[1]: relation "x" does not exist`
    (RunFailed). `params` are the values of the named parameters; those a step does not use are
    ignored. Example::

        run(conn, source.after, phase="after", complete=True,
            params={"job_id": 7, "started_at": started, "source": source.name})
    """
    for index, step in enumerate(steps):
        if step.when is StepWhen.COMPLETE and not complete:
            continue
        try:
            _execute(conn, step.sql, dict(params))
        except psycopg.OperationalError as error:  # the connection, not the step: the caller's
            raise DatabaseError(f"{phase}[{index}]: {_first_line(error)}") from error
        except psycopg.Error as error:
            raise RunFailed(f"{phase}[{index}]: {_first_line(error)}") from error


def _execute(conn: psycopg.Connection[Any], text: str, params: dict[str, Any]) -> None:
    # Always with params, so %% means % in every step (as runner/config/ requires); client-side binding,
    # because server-side binding allows one statement per call.
    with conn.transaction(), psycopg.ClientCursor(conn) as cursor:
        cursor.execute(text, params)


def _first_line(error: psycopg.Error) -> str:
    text = error.diag.message_primary or str(error).strip() or type(error).__name__
    return text.splitlines()[0]
