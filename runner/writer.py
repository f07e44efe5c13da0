"""`write(conn, source, results)`: rows + status stamp + per-source state, one transaction per batch.

For each write target one `insert ... on conflict (key) do update` sets only the mapped columns, so
other sources' columns on the same row survive; rows are deduplicated on the key within a batch
(last wins) because one statement cannot update a row twice. Small row sets go out with a pipelined
`executemany`; from `COPY_FROM` rows per table, COPY into a temp table + one `insert ... select`.

A value that does not fit its column (by the catalog types `migrations.check` returned) turns its
entity into an error result before anything is sent. If the batch still fails on a data error
(FK, check, not-null), it is replayed one entity per savepoint so one bad entity cannot sink the
others. Deadlocks and serialization failures retry the whole batch; a lost connection is the
caller's (DatabaseError).

Per-source state (syncrun_state), per entity: success/skip reset the error count and backoff;
a definitive error backs off `BACKOFF_BASE * 2^(n-1)` capped at `BACKOFF_CAP` (15 min, 30 min, 1 h,
... 24 h); a transient error (retries exhausted) records the error without advancing the backoff.
Every processed entity's claim is released.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.types.json import Json, Jsonb

from runner.database import identifier
from runner.errors import DatabaseError
from runner.migrations import Catalog
from runner.spec import Merge, Outcome, Source, Status, Write, WriteMode

BACKOFF_BASE = 15 * 60.0  # seconds: the first retry of a definitively failing entity
BACKOFF_CAP = 24 * 3600.0  # seconds: a broken entity is still retried daily
ATTEMPTS = 3  # whole-batch attempts on deadlock / serialization failure
MAX_MESSAGE = 1000  # characters of an error message stored in the database
# From this many rows for one table in a batch, COPY into a temp table + one insert ... select beats
# a pipelined executemany (measured, local PG 15, 10 columns: even at 100 rows COPY ~20k rows/s vs
# ~10k; at 1,000 rows ~75k vs ~10k; at 20 rows they tie). Below it, executemany skips the temp
# table's catalog churn; the one-entity replay always uses executemany.
COPY_FROM = 50
_TEMP = sql.Identifier("_syncrun_rows")

_DATA_ERRORS = (pg_errors.DataError, pg_errors.IntegrityError)
# 40P01 / 40001 (and the rest of class 40): the whole batch can simply run again
_RETRYABLE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure, pg_errors.TransactionRollback)


@dataclass(frozen=True, slots=True, kw_only=True)
class EntityResult:
    """What happened to one entity: its rows (write index -> rows) or its error."""

    key: Any
    entity: dict[str, Any]
    outcome: Outcome
    rows: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    error: str | None = None
    definitive: bool = True  # False: a transient failure; recorded, but no backoff
    stamp: bool = False  # skip outcomes: stamp the success column anyway (success always stamps)
    skip_until: float | None = None  # seconds from now
    error_source: str = ""  # the source name, for the seed's last_error_source
    status_values: dict[str, Any] = field(default_factory=dict)  # `status.set` columns, written with the stamp

    @property
    def stamped(self) -> bool:
        return self.outcome is Outcome.SUCCESS or (self.outcome is not Outcome.ERROR and self.stamp)

    def failed(self, message: str) -> EntityResult:
        """This entity as a definitive error (its rows are not written); the entity dict is kept."""
        return replace(
            self, outcome=Outcome.ERROR, rows={}, status_values={}, error=message, definitive=True, stamp=False
        )


class _StatementFailed(Exception):
    """A data error while writing `table`: the message names the table and the constraint."""

    def __init__(self, table: str, error: psycopg.Error) -> None:
        self.table, self.error = table, error
        super().__init__(describe(table, error))


def describe(table: str, error: psycopg.Error) -> str:
    """`apps: new row for relation "apps" violates check constraint "apps_price_check"` (+ FK detail)."""
    message = f"{table}: {error.diag.message_primary or str(error).strip()}"
    detail = error.diag.message_detail
    if detail and detail.startswith("Key ("):  # FK / unique: says which key; "Failing row" would echo data
        message += f" ({detail})"
    return message[:MAX_MESSAGE]


def write(
    conn: psycopg.Connection,
    source: Source,
    results: Sequence[EntityResult],
    *,
    catalog: Catalog,
    job_id: str | None = None,
    holder: str | None = None,
) -> list[EntityResult]:
    """Write a batch in one transaction; return the results that failed here, as error results.

    `holder`: release only this holder's claims (None releases any). `job_id` is not stored today.
    """
    checked = [_checked(source, result, catalog) for result in results]
    batch = [result if message is None else result.failed(message) for result, message in checked]
    unfit = [result for result, (_, message) in zip(batch, checked, strict=True) if message is not None]
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return unfit + _attempt(conn, source, batch, catalog, holder)
        except _RETRYABLE as error:
            if attempt == ATTEMPTS:
                raise DatabaseError(f"writing {source.name}: gave up after {ATTEMPTS} attempts: {error}") from error
            time.sleep(0.1 * attempt)
        except psycopg.Error as error:  # connection lost, or a schema changed under us: the caller's
            raise DatabaseError(f"writing {source.name}: {error}") from error
    raise AssertionError("unreachable")  # pragma: no cover


def _attempt(
    conn: psycopg.Connection, source: Source, batch: list[EntityResult], catalog: Catalog, holder: str | None
) -> list[EntityResult]:
    try:
        with conn.transaction():
            _write_all(conn, source, batch, catalog, holder)
        return []
    except _StatementFailed:
        pass  # rolled back: find the culprits one entity at a time
    return _replay(conn, source, batch, catalog, holder)


def _replay(
    conn: psycopg.Connection, source: Source, batch: list[EntityResult], catalog: Catalog, holder: str | None
) -> list[EntityResult]:
    failures: list[EntityResult] = []
    with conn.transaction():
        for result in batch:
            try:
                with conn.transaction():  # a savepoint
                    _write_all(conn, source, [result], catalog, holder, bulk=False)
            except _StatementFailed as failure:
                bad = result.failed(str(failure))
                with conn.transaction():
                    _write_all(conn, source, [bad], catalog, holder, bulk=False)
                failures.append(bad)
    return failures


def _write_all(
    conn: psycopg.Connection,
    source: Source,
    batch: list[EntityResult],
    catalog: Catalog,
    holder: str | None,
    bulk: bool = True,
) -> None:
    """Targets in declaration order, then status, then state: the same lock order in every runner."""
    with conn.cursor() as cursor:
        for index, target in enumerate(source.writes):
            rows = _dedup(
                target, [row for r in batch if r.outcome is not Outcome.ERROR for row in r.rows.get(index, [])]
            )
            params = [tuple(row.get(c) for c in target.column_names) for row in rows]
            touch = "updated_at" in catalog.get(target.table, {})
            if bulk and len(params) >= COPY_FROM:
                _copy(cursor, target, touch, params)
            else:
                _run(cursor, str(target.table), upsert_sql(target, touch), params)
        _write_status(cursor, source, batch, catalog)
        _run(cursor, "syncrun_state", _STATE, [_state_params(source, result, holder) for result in batch])


def _write_status(cursor: psycopg.Cursor[Any], source: Source, batch: list[EntityResult], catalog: Catalog) -> None:
    status = source.status
    if status is None:
        return
    columns = catalog.get(status.table, {})
    touch = "updated_at" in columns
    stamped = {r.key: r for r in batch if r.stamped}  # last wins, like target rows
    groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for key in sorted(stamped, key=str):
        extra = stamped[key].status_values
        groups.setdefault(tuple(extra), []).append((key, *(coerce(columns.get(c), v) for c, v in extra.items())))
    for names, params in groups.items():
        _run(cursor, str(status.table), stamp_sql(status, touch, names), params)
    if status.error_columns:
        errors = [r for r in batch if r.outcome is Outcome.ERROR]
        params = [(r.error_source or source.name, (r.error or "")[:MAX_MESSAGE], r.key) for r in errors]
        _run(cursor, str(status.table), error_sql(status, touch), params)


def _run(cursor: psycopg.Cursor[Any], table: str, statement: sql.SQL | sql.Composed, params: list[Any]) -> None:
    if not params:
        return
    try:
        cursor.executemany(statement, params)
    except _DATA_ERRORS as error:
        raise _StatementFailed(table, error) from error


def _dedup(target: Write, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per conflict key, the last one winning, in key order (the same lock order everywhere)."""
    unique = {tuple(row.get(k) for k in target.key): row for row in rows}
    return [unique[k] for k in sorted(unique, key=str)]


# --- statements (built once per write target) -----------------------------------------------------------
_MERGES = {
    Merge.REPLACE: "excluded.{0}",
    Merge.GREATEST: "greatest(t.{0}, excluded.{0})",
    Merge.KEEP_EXISTING_IF_NULL: "coalesce(excluded.{0}, t.{0})",
}


def _copy(cursor: psycopg.Cursor[Any], target: Write, touch: bool, params: list[tuple[Any, ...]]) -> None:
    """COPY into a temp table shaped like the mapped columns, then one insert ... select ... on conflict."""
    columns = sql.SQL(", ").join(map(sql.Identifier, target.column_names))
    try:
        cursor.execute(
            sql.SQL("create temp table {} on commit drop as select {} from {} with no data").format(
                _TEMP, columns, identifier(target.table)
            )
        )
        with cursor.copy(sql.SQL("copy {} ({}) from stdin").format(_TEMP, columns)) as copy:
            for row in params:
                copy.write_row(row)
        cursor.execute(copy_upsert_sql(target, touch))
        cursor.execute(sql.SQL("drop table {}").format(_TEMP))  # the next target reuses the name
    except _DATA_ERRORS as error:
        raise _StatementFailed(str(target.table), error) from error


@lru_cache(maxsize=256)
def upsert_sql(target: Write, touch_updated_at: bool) -> sql.Composed:
    """insert ... values (...) on conflict (key) do update set <mapped columns only> (or do nothing)."""
    columns, values, action = _upsert_parts(target, touch_updated_at)
    return sql.SQL("insert into {} as t ({}) values ({}) on conflict ({}) {}").format(
        identifier(target.table), columns, values, sql.SQL(", ").join(map(sql.Identifier, target.key)), action
    )


@lru_cache(maxsize=256)
def copy_upsert_sql(target: Write, touch_updated_at: bool) -> sql.Composed:
    """The same upsert, reading the rows COPY put into the temp table."""
    columns, _, action = _upsert_parts(target, touch_updated_at)
    values = sql.SQL(", ").join(
        [*map(sql.Identifier, target.column_names), *([sql.SQL("now()")] if _touches(target, touch_updated_at) else [])]
    )
    return sql.SQL("insert into {} as t ({}) select {} from {} on conflict ({}) {}").format(
        identifier(target.table), columns, values, _TEMP, sql.SQL(", ").join(map(sql.Identifier, target.key)), action
    )


def _touches(target: Write, touch_updated_at: bool) -> bool:
    return touch_updated_at and "updated_at" not in target.column_names


def _upsert_parts(target: Write, touch_updated_at: bool) -> tuple[sql.Composed, sql.Composed, sql.Composable]:
    """(column list, values list, conflict action) shared by both upsert forms."""
    merges = dict(target.merge)
    sets: list[sql.Composable] = [
        sql.SQL("{} = ").format(sql.Identifier(c))
        + sql.SQL(_MERGES[merges.get(c, Merge.REPLACE)]).format(sql.Identifier(c))
        for c in target.column_names
        if c not in target.key
    ]
    touch = _touches(target, touch_updated_at)
    if touch:
        sets.append(sql.SQL("updated_at = now()"))
    action: sql.Composable = sql.SQL("do update set {}").format(sql.SQL(", ").join(sets))
    if target.mode is WriteMode.INSERT or not sets:
        action = sql.SQL("do nothing")
    columns: list[sql.Composable] = [sql.Identifier(c) for c in target.column_names]
    values: list[sql.Composable] = [sql.Placeholder()] * len(columns)
    if touch:
        columns.append(sql.Identifier("updated_at"))
        values.append(sql.SQL("now()"))
    return sql.SQL(", ").join(columns), sql.SQL(", ").join(values), action


@lru_cache(maxsize=64)
def stamp_sql(status: Status, touch_updated_at: bool, extra: tuple[str, ...] = ()) -> sql.Composed:
    """Upsert, not update: list-shaped and function selections may stamp entities with no status row.

    `extra` are `status.set` columns (e.g. storefront_accessible), bound after the key.
    """
    sets: list[sql.Composable] = [sql.SQL("{} = now()").format(sql.Identifier(status.column))]
    sets += [sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in extra]
    if touch_updated_at:
        sets.append(sql.SQL("updated_at = now()"))
    columns = [sql.Identifier(status.key), sql.Identifier(status.column), *map(sql.Identifier, extra)]
    values = [sql.Placeholder(), sql.SQL("now()"), *(sql.Placeholder() for _ in extra)]
    return sql.SQL("insert into {} as s ({}) values ({}) on conflict ({}) do update set {}").format(
        identifier(status.table),
        sql.SQL(", ").join(columns),
        sql.SQL(", ").join(values),
        sql.Identifier(status.key),
        sql.SQL(", ").join(sets),
    )


@lru_cache(maxsize=64)
def error_sql(status: Status, touch_updated_at: bool) -> sql.Composed:
    """The seed's last_error_* columns, for dashboards only (selection reads syncrun_state)."""
    touch = sql.SQL(", updated_at = now()" if touch_updated_at else "")
    return sql.SQL(
        "update {} set last_error_source = %s, last_error_message = %s, last_error_at = now(){} where {} = %s"
    ).format(identifier(status.table), touch, sql.Identifier(status.key))


# kind: ok (success/skip), skip_until, error (definitive: backoff), transient (recorded, no backoff)
_STATE = sql.SQL(
    """insert into syncrun_state as st (source, entity_key, consecutive_errors, last_error, last_error_at,
    next_attempt_at, skip_until, last_success_at, claimed_by, claim_expires_at, updated_at)
values (%(source)s, %(key)s,
    case when %(kind)s::text = 'error' then 1 else 0 end,
    %(error)s::text,
    case when %(error)s::text is not null then now() end,
    case when %(kind)s::text = 'error' then now() + %(base)s::float8 * interval '1 second' end,
    case when %(kind)s::text = 'skip_until' then now() + %(until)s::float8 * interval '1 second' end,
    case when %(kind)s::text in ('ok', 'skip_until') then now() end,
    null, null, now())
on conflict (source, entity_key) do update set
    consecutive_errors = case %(kind)s::text when 'error' then st.consecutive_errors + 1
        when 'transient' then st.consecutive_errors else 0 end,
    last_error = coalesce(%(error)s::text, st.last_error),
    last_error_at = case when %(error)s::text is not null then now() else st.last_error_at end,
    next_attempt_at = case %(kind)s::text
        when 'error' then now() + least(%(base)s::float8 * power(2, least(st.consecutive_errors, 30)),
                                        %(cap)s::float8) * interval '1 second'
        when 'transient' then st.next_attempt_at end,
    skip_until = case when %(kind)s::text = 'skip_until' then now() + %(until)s::float8 * interval '1 second'
        when %(kind)s::text = 'ok' then null else st.skip_until end,
    last_success_at = case when %(kind)s::text in ('ok', 'skip_until') then now() else st.last_success_at end,
    claimed_by = case when %(holder)s::text is null or st.claimed_by = %(holder)s::text then null
        else st.claimed_by end,
    claim_expires_at = case when %(holder)s::text is null or st.claimed_by = %(holder)s::text then null
        else st.claim_expires_at end,
    updated_at = now()"""
)


def _state_params(source: Source, result: EntityResult, holder: str | None) -> dict[str, Any]:
    kind = "ok"
    if result.outcome is Outcome.ERROR:
        kind = "error" if result.definitive else "transient"
    elif result.skip_until is not None:
        kind = "skip_until"
    error = (result.error or "error")[:MAX_MESSAGE] if result.outcome is Outcome.ERROR else None
    return {
        "source": source.name,
        "key": str(result.key),
        "kind": kind,
        "error": error,
        "until": result.skip_until,
        "base": BACKOFF_BASE,
        "cap": BACKOFF_CAP,
        "holder": holder,
    }


# --- value checks against the catalog types -------------------------------------------------------------
class _Unfit(ValueError):
    pass


def _checked(source: Source, result: EntityResult, catalog: Catalog) -> tuple[EntityResult, str | None]:
    """The result with values converted for their columns, or the first value that does not fit."""
    if result.outcome is Outcome.ERROR:
        return result, None
    if result.status_values and source.status is not None:
        columns = catalog.get(source.status.table, {})
        for column, value in result.status_values.items():
            try:
                coerce(columns.get(column), value)
            except _Unfit as unfit:
                return result, f"{source.status.table}.{column}: {_show(value)} {unfit}"
    if not result.rows:
        return result, None
    converted: dict[int, list[dict[str, Any]]] = {}
    for index, rows in result.rows.items():
        target = source.writes[index]
        columns = catalog.get(target.table, {})
        converted[index] = []
        for row in rows:
            fitted: dict[str, Any] = {}
            for column, value in row.items():
                try:
                    fitted[column] = coerce(columns.get(column), value)
                except _Unfit as unfit:
                    return result, f"{target.table}.{column}: {_show(value)} {unfit}"
            converted[index].append(fitted)
    return replace(result, rows=converted), None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def coerce(type_name: str | None, value: Any) -> Any:
    """`value` ready for a column of `type_name` (format_type text); raises _Unfit with the reason."""
    if value is None or type_name is None:
        return value
    if type_name.endswith("[]"):
        if not isinstance(value, list):
            raise _Unfit("is not a list")
        return value
    base, _, size = type_name.partition("(")
    handler = _HANDLERS.get(base)
    return handler(value, size.rstrip(")")) if handler else value


def _int(bits: int) -> Callable[[Any, str], int]:
    limit = 2 ** (bits - 1)
    name = {16: "smallint", 32: "integer", 64: "bigint"}[bits]

    def convert(value: Any, _: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise _Unfit("is not an integer")
        if isinstance(value, float) and not value.is_integer():
            raise _Unfit("is not an integer")
        if isinstance(value, str) and not re.fullmatch(r"\s*[+-]?\d+\s*", value):
            raise _Unfit("is not an integer")
        number = int(value)
        if not -limit <= number < limit:
            raise _Unfit(f"is out of range for {name}")
        return number

    return convert


def _number(value: Any, _: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Unfit("is not a number")
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            raise _Unfit("is not a number") from None
    return value


_BOOLEAN_TEXT = {"true": True, "false": False, "t": True, "f": False, "yes": True, "no": False}


def _boolean(value: Any, _: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOLEAN_TEXT:
        return _BOOLEAN_TEXT[value.strip().lower()]
    raise _Unfit("is not a boolean")


def _date(value: Any, _: str) -> date:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise _Unfit("is not a date (YYYY-MM-DD)") from None


def _timestamp(value: Any, _: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise _Unfit("is not a timestamp (ISO 8601)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # naive means UTC, never the host's zone


def _naive_timestamp(value: Any, size: str) -> datetime:
    return _timestamp(value, size).astimezone(UTC).replace(tzinfo=None)


def _text(value: Any, size: str) -> str:
    if isinstance(value, dict | list):
        raise _Unfit("is not text (map it with to_json(...) to store JSON as text)")
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if "\x00" in text:
        raise _Unfit("contains a NUL character, which PostgreSQL text cannot store")
    if size.isdigit() and len(text) > int(size):
        raise _Unfit(f"is longer than {size} characters")
    return text


def _jsonb(value: Any, _: str) -> Jsonb:
    if "\\u0000" in json.dumps(value):
        raise _Unfit("contains a NUL character, which jsonb cannot store")
    return Jsonb(value)


def _uuid(value: Any, _: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise _Unfit("is not a UUID") from None


_HANDLERS: dict[str, Callable[[Any, str], Any]] = {
    "smallint": _int(16),
    "integer": _int(32),
    "bigint": _int(64),
    "numeric": _number,
    "real": _number,
    "double precision": _number,
    "boolean": _boolean,
    "date": _date,
    "timestamp with time zone": _timestamp,
    "timestamp without time zone": _naive_timestamp,
    "text": _text,
    "character varying": _text,
    "character": _text,
    "jsonb": _jsonb,
    "json": lambda value, _: Json(value),
    "uuid": _uuid,
}
