"""The status stamp: `<status.column> = now()` (and the `status.set` columns) on each stamped entity's
status row, and the seed's `last_error_*` columns of failed ones; inside the writer's transaction, so
an entity's rows and its stamp commit together.

The seed's error columns behave as the seed's workers do (unless `status.error_columns: false`): a
failure sets `last_error_source/message/at` and adds one to `consecutive_errors` (when the status
table has that column; every failure, transient ones included: the seed counted each failed sync);
the stamp itself clears them and sets `consecutive_errors = 0`, in the same statement. They are for
dashboards: backoff and the cut-off read syncrun_state (runner.backoff).

An entity that has a status row gets an `update` (only the stamp's columns are touched, so a status
table with NOT NULL columns, generated columns or triggers of its own is fine). An entity that has none
gets one created (`insert … on conflict (key) do update`): an `sql` or `function` selection may pick
entities a listing discovered, which have no status row yet, and without one they would never look
synced. The split matters because PostgreSQL checks an insert's NOT NULL constraints before it looks
for a conflict: an upsert of every stamp fails on such a table even for rows that exist.

A failure names the status stamp, the table and column: a data error (a NOT NULL column the stamp
cannot fill when it creates a row) fails that entity (the writer replays the batch); anything else
(a column the stamp may not write) fails the run, as a DatabaseError.

Statements per batch: one select of the keys that have rows, then one update and (when some have
none) one insert per set of `status.set` columns, from arrays; one update of the error columns.
A deleted entity (`outcome: delete`) is not stamped: its rule's `set` columns, if any, update the
row it has (one update per set of columns), and no row is created for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from runner import statements
from runner.database import identifier
from runner.errors import DatabaseError
from runner.migrations import ERROR_COLUMNS, Catalog
from runner.spec import Outcome, Status
from runner.statements import MAX_MESSAGE
from runner.values import coerce

if TYPE_CHECKING:
    from runner.results import EntityResult

Params = list[tuple[Any, ...]]
COUNTER = "consecutive_errors"  # the seed's failure counter, maintained when the status table has it


class StampPlan:
    """The status stamp compiled once per run (runner.writeplan): the status table's column types, what
    a stamp touches and clears, and the select of the keys that have rows. The statements for each set
    of `status.set` columns (and array types) are built on first use and kept."""

    def __init__(self, status: Status, catalog: Catalog, source: str) -> None:
        self.status, self.source = status, source
        self.columns = catalog.get(status.table, {})
        self.touch = "updated_at" in self.columns
        self.clear = _cleared(status, self.columns)
        self.count = COUNTER in self.columns
        key_type = self.columns.get(status.key)
        array = sql.SQL("%s") if key_type is None else sql.SQL("%s::") + sql.SQL(key_type + "[]")
        self.having = sql.SQL("select {0} from {1} where {0} = any({2})").format(
            sql.Identifier(status.key), identifier(status.table), array
        )
        self._built: dict[tuple[Any, ...], sql.Composed] = {}

    def statement(self, build: Callable[..., sql.Composed], *args: Any, **kwargs: Any) -> sql.Composed:
        """`build(status, touch, *args, **kwargs)`, built once per run for each set of arguments."""
        key = (build, args, tuple(kwargs.items()))
        found = self._built.get(key)
        if found is None:
            found = self._built[key] = build(self.status, self.touch, *args, **kwargs)
        return found


def write(cursor: psycopg.Cursor[Any], plan: StampPlan | None, batch: list[EntityResult]) -> None:
    """The stamps of the batch's stamped entities, then the error columns of its failed ones."""
    if plan is None:
        return
    status, columns, clear = plan.status, plan.columns, plan.clear
    stamped = {r.key: r for r in batch if r.stamped}  # last wins, like target rows
    groups: dict[tuple[str, ...], Params] = {}
    if stamped and not any(result.status_values for result in stamped.values()):  # usually: the stamp alone
        groups[()] = [(key,) for key in sorted(stamped, key=str)]
    else:
        for key in sorted(stamped, key=str):
            extra = stamped[key].status_values
            groups.setdefault(tuple(extra), []).append((key, *(coerce(columns.get(c), v) for c, v in extra.items())))
    having = _having_rows(cursor, plan, list(stamped)) if stamped else set()
    for names, params in groups.items():
        old, new = [p for p in params if p[0] in having], [p for p in params if p[0] not in having]
        with _named(status, "status stamp"):
            one = plan.statement(update_sql, names, clear=clear)
            _run(cursor, plan, names, old, one, update_many_sql, clear=clear)
        with _named(status, "status stamp, creating the status row the entity lacks"):
            one = plan.statement(stamp_sql, names, clear=clear)
            _run(cursor, plan, names, new, one, stamp_many_sql, clear=clear)
    # outcome delete: no stamp (nothing was synced), only the rule's `set` columns, and only on a row
    # that exists: a gone entity must not get a status row created for it (nor one a delete just removed)
    gone = {r.key: r for r in batch if r.outcome is Outcome.DELETE and r.status_values}
    marks: dict[tuple[str, ...], Params] = {}
    for key in sorted(gone, key=str):
        extra = gone[key].status_values
        marks.setdefault(tuple(extra), []).append((key, *(coerce(columns.get(c), v) for c, v in extra.items())))
    for names, params in marks.items():
        with _named(status, "status columns of a deleted entity", names):
            one = plan.statement(update_sql, names, stamp=False)
            _run(cursor, plan, names, params, one, update_many_sql, stamp=False)
    if status.error_columns:
        errors = {r.key: r for r in batch if r.outcome is Outcome.ERROR}  # last wins, as row by row did
        params = [
            (errors[key].error_source or plan.source, (errors[key].error or "")[:MAX_MESSAGE], key)
            for key in sorted(errors, key=str)
        ]
        # typed by the catalog: last_error_source may be an enum (Supabase's sync_source), not text
        casts = statements.array_casts(columns, ("last_error_source", "last_error_message", status.key), params)
        with _named(status, "status error columns (last_error_*)"):
            if casts is None:
                statements.run(cursor, str(status.table), plan.statement(error_sql, plan.count), params)
            elif params:
                statement = plan.statement(error_many_sql, casts, plan.count)
                statements.run(cursor, str(status.table), statement, [statements.arrays(params)])


def _cleared(status: Status, columns: dict[str, str]) -> tuple[str, ...]:
    """The seed's error columns a stamp resets (last_error_* to null, consecutive_errors to 0)."""
    if not status.error_columns:
        return ()
    return tuple(c for c in (*ERROR_COLUMNS, COUNTER) if c in columns)


def _having_rows(cursor: psycopg.Cursor[Any], plan: StampPlan, keys: list[Any]) -> set[Any]:
    """The keys that have a status row (the array typed like the key column, so its index is used)."""
    with _named(plan.status, "status stamp"):
        return {row[0] for row in cursor.execute(plan.having, (keys,))}


def _run(
    cursor: psycopg.Cursor[Any],
    plan: StampPlan,
    names: tuple[str, ...],
    params: Params,
    one: sql.Composed,
    many: Callable[..., sql.Composed],
    **options: Any,
) -> None:
    """From arrays when every column can go as one, else a row at a time (an array or unknown type,
    mixed values); a row is (key, *extra)."""
    if not params:
        return
    table = str(plan.status.table)
    casts = statements.array_casts(plan.columns, (plan.status.key, *names), params)
    if casts is None:
        statements.run(cursor, table, one, params)
    else:
        statements.run(cursor, table, plan.statement(many, names, casts, **options), [statements.arrays(params)])


@contextmanager
def _named(status: Status, what: str, columns: tuple[str, ...] = ()) -> Iterator[None]:
    """Say that it was the status stamp (or which `columns`), and where, whatever PostgreSQL said."""
    where = f"{what} ({', '.join(f'{status.table}.{c}' for c in columns or (status.column,))})"
    try:
        yield
    except statements.Failed as failure:
        raise statements.Failed(f"{where}: {failure}") from failure
    except (psycopg.errors.ProgrammingError, psycopg.errors.NotSupportedError) as error:
        reason = error.diag.message_primary or str(error).strip()
        raise DatabaseError(f"{where} failed on {status.table}: {reason}") from error


# --- statements (built once per run and set of columns: StampPlan.statement) --------------------------------------
def update_sql(
    status: Status,
    touch_updated_at: bool,
    extra: tuple[str, ...] = (),
    *,
    stamp: bool = True,
    clear: tuple[str, ...] = (),
) -> sql.Composed:
    """The stamp of one entity that has a status row; bound as (key, *extra), like the insert.
    `stamp=False`: the `extra` columns only (a deleted entity). `clear`: error columns it resets."""
    sets = _stamp_sets(status, touch_updated_at, extra, "%s", stamp=stamp, clear=clear)
    return sql.SQL("with v as (select %s as k) update {} as s set {} from v where s.{} = v.k").format(
        identifier(status.table), sets, sql.Identifier(status.key)
    )


def update_many_sql(
    status: Status,
    touch_updated_at: bool,
    extra: tuple[str, ...],
    casts: tuple[str, ...],
    *,
    stamp: bool = True,
    clear: tuple[str, ...] = (),
) -> sql.Composed:
    """The stamps of a whole batch of entities that have status rows: one array per column."""
    names = (status.key, *extra)
    sets = _stamp_sets(status, touch_updated_at, extra, "v.{}", stamp=stamp, clear=clear)
    return sql.SQL("update {} as s set {} from {} where s.{} = v.{}").format(
        identifier(status.table), sets, statements.unnest_sql(names, casts), *[sql.Identifier(status.key)] * 2
    )


def stamp_sql(
    status: Status, touch_updated_at: bool, extra: tuple[str, ...] = (), *, clear: tuple[str, ...] = ()
) -> sql.Composed:
    """Creates the row of an entity that has none; `on conflict … do update` for one another runner
    created meanwhile. `extra` are `status.set` columns (e.g. storefront_accessible), bound after the key."""
    columns = [sql.Identifier(status.key), sql.Identifier(status.column), *map(sql.Identifier, extra)]
    values = [sql.Placeholder(), sql.SQL("now()"), *(sql.Placeholder() for _ in extra)]
    return sql.SQL("insert into {} as s ({}) values ({}) on conflict ({}) do update set {}").format(
        identifier(status.table),
        sql.SQL(", ").join(columns),
        sql.SQL(", ").join(values),
        sql.Identifier(status.key),
        _stamp_sets(status, touch_updated_at, extra, clear=clear),
    )


def stamp_many_sql(
    status: Status,
    touch_updated_at: bool,
    extra: tuple[str, ...],
    casts: tuple[str, ...],
    *,
    clear: tuple[str, ...] = (),
) -> sql.Composed:
    """The same upsert for a whole batch: one array per column (key, then `extra`), `casts` their types."""
    names = (status.key, *extra)
    columns = [sql.Identifier(status.key), sql.Identifier(status.column), *map(sql.Identifier, extra)]
    values = [sql.SQL("v.{}").format(sql.Identifier(status.key)), sql.SQL("now()")]
    values += [sql.SQL("v.{}").format(sql.Identifier(c)) for c in extra]
    return sql.SQL("insert into {} as s ({}) select {} from {} on conflict ({}) do update set {}").format(
        identifier(status.table),
        sql.SQL(", ").join(columns),
        sql.SQL(", ").join(values),
        statements.unnest_sql(names, casts),
        sql.Identifier(status.key),
        _stamp_sets(status, touch_updated_at, extra, clear=clear),
    )


def _stamp_sets(
    status: Status,
    touch_updated_at: bool,
    extra: tuple[str, ...],
    value: str = "excluded.{}",
    *,
    stamp: bool = True,
    clear: tuple[str, ...] = (),
) -> sql.Composed:
    sets: list[sql.Composable] = [sql.SQL("{} = now()").format(sql.Identifier(status.column))] if stamp else []
    sets += [sql.SQL("{} = ").format(sql.Identifier(c)) + sql.SQL(value).format(sql.Identifier(c)) for c in extra]
    # a `set` column of the same name wins (the user asked for it); the counter goes to 0, the rest to null
    sets += [
        sql.SQL("{} = {}").format(sql.Identifier(c), sql.SQL("0" if c == COUNTER else "null"))
        for c in clear
        if c not in extra
    ]
    if touch_updated_at:
        sets.append(sql.SQL("updated_at = now()"))
    return sql.SQL(", ").join(sets)


def error_sql(status: Status, touch_updated_at: bool, count: bool = False) -> sql.Composed:
    """The seed's last_error_* columns (and `consecutive_errors + 1` when `count`), for dashboards only
    (selection reads syncrun_state)."""
    touch = sql.SQL(", updated_at = now()" if touch_updated_at else "") + _counted(count)
    return sql.SQL(
        "update {} set last_error_source = %s, last_error_message = %s, last_error_at = now(){} where {} = %s"
    ).format(identifier(status.table), touch, sql.Identifier(status.key))


def error_many_sql(status: Status, touch_updated_at: bool, casts: tuple[str, ...], count: bool = False) -> sql.Composed:
    """The same update for a whole batch: arrays of sources, messages and keys, of types `casts`."""
    touch = sql.SQL(", updated_at = now()" if touch_updated_at else "") + _counted(count)
    return sql.SQL(
        "update {} as s set last_error_source = v.source, last_error_message = v.message, last_error_at = now(){}"
        " from unnest(%b::{}, %b::{}, %b::{}) as v(source, message, key) where s.{} = v.key"
    ).format(identifier(status.table), touch, *map(sql.SQL, casts), sql.Identifier(status.key))


def _counted(count: bool) -> sql.Composable:
    """The failure counter: a NULL one (no default on the user's table) counts from 0."""
    return sql.SQL(f", {COUNTER} = coalesce({COUNTER}, 0) + 1" if count else "")
