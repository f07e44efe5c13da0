"""Explicit entities (`--ids`): each id cast to the key's type, and its entity columns found where the
source's own selection finds them.

- a key-only source (`entities.columns` is just the key): `{key: id}`, whether or not any table
  has the entity (test-read of a brand-new id needs no row anywhere).
- default selection: the declared columns from the status table's row.
- sql / function selection: the source's own query (or function) run whole, restricted to these
  ids, so every column it returns is there exactly as a normal run would see it. It is run with
  `limit` = the largest int and `after_key` = null: its own filters (due-ness, a join) still apply,
  so an entity the query holds back as not due yet is refused. Deliberately not bypassed: the query
  is the user's, and its due-ness cannot be told from its other filters (or from where its columns
  come from); the default selection's due-ness and backoff, syncrun's own, are bypassed, and a key-only
  source runs no query at all.

Ids are keys of the key's type (`cast_key`, read as runner/picks.py reads a selection's keys:
`--ids 5,05` is one entity), each once. The rows found become entities as a selection's do
(picks.entities): the key as its type, the same row twice one entity, two different rows for one
id refused (SelectionError) rather than one of them winning.

An id whose row is missing (no status row; left out by the query's own filters) cannot be run: its
other columns are unknown, and guessing null would fetch the wrong URL or write wrong rows.
`missing` names those ids so the command line refuses them (exit 2) before any job row or request;
`rows` leaves them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from runner import picks
from runner.database import identifier
from runner.errors import UsageError
from runner.migrations import KEY_TYPES
from runner.spec import SelectionType, Source
from runner.values import show

Entity = dict[str, Any]
_WHOLE = 2**31 - 1  # `limit` for a selection run whole (its limit parameter is an int)


def cast_key(source: Source, value: Any) -> Any:
    """An `--ids` value as the key type (int for int/bigint keys); UsageError when it is not one of
    them (`1e3`, `٣`, past the column's range), so the command line can refuse it before any job row."""
    kind = source.entities.key_type
    try:
        return picks.typed(kind, str(value))
    except ValueError:
        raise UsageError(
            f"--ids: {show(str(value))} is not a whole number of the key's type ({source.name}'s key"
            f" {source.entities.key} is {kind})"
        ) from None


def keys_of(source: Source, ids: Sequence[Any]) -> list[Any]:
    """The ids as keys of the key's type, each once, in the order given (`5,05,5` is one entity);
    UsageError for none (`--ids ,` ran nothing and reported it completed)."""
    if not ids:
        raise UsageError(f"--ids names no id: give {source.name}'s keys, comma-separated (--ids 730,570)")
    return list(dict.fromkeys(cast_key(source, value) for value in ids))


def run_size(sources: Sequence[Source], ids: Sequence[Any], limit: str | None) -> int:
    """A run's size with `--ids`: every id named, each source's keys cast (a UsageError before any job
    row; `--ids ,` names none). Review revJ F2: `entities.limit` (100) cut 150 ids to 100 and the run
    reported `completed`. A limit caps a selection, not a list written out: `limit`, the option given
    with them (`--limit`), is refused (which ids would it mean?), and BATCH_SIZE, the environment's
    usual run size, does not apply to them.

    A list source (`entities.type: list`) has no entities to name: its unit is the listing's page.
    Review revK F7: `--ids 1,2` on one was ignored and the whole listing read; it is refused (exit 2),
    also when only some sources of the run are list sources (`--ids` applies to every source of a run),
    naming them, so the user runs them in a command of their own."""
    listed = [source.name for source in sources if source.entities.type is SelectionType.LIST]
    if listed:
        raise UsageError(
            f"--ids: {', '.join(listed)} {'is a list source' if len(listed) == 1 else 'are list sources'}"
            " (entities.type: list): a listing is read page by page and has no entities to name; run"
            f" {'it' if len(listed) == 1 else 'them'} without --ids (--dry-run reads it writing nothing),"
            " and give --ids to the per-entity sources in a command of their own"
        )
    if limit is not None:
        raise UsageError(
            f"{limit} and --ids exclude each other: --ids runs every id it names (a limit caps the selection);"
            " name only the ids to run"
        )
    return max(len(keys_of(source, ids)) for source in sources)


def key_only(source: Source) -> bool:
    """Whether the source needs nothing but the key: then any id can run, with no database row."""
    return source.entities.column_names <= {source.entities.key}


def rows(conn: psycopg.Connection, source: Source, keys: Sequence[Any]) -> list[Entity]:
    """The entities of these (typed) keys, in the order given; keys without a row are left out."""
    key = source.entities.key
    if key_only(source) or source.entities.type is SelectionType.LIST:
        return [{key: value} for value in keys]
    if source.entities.type is SelectionType.DEFAULT and source.status is not None:
        found = picks.entities(source, _status_rows(conn, source, keys), str(source.status.table), remedy="keep")
    else:
        found = picks.entities(source, _selected_rows(conn, source, keys))
    by_key = {row[key]: row for row in found}
    return [by_key[value] for value in keys if value in by_key]


def missing(conn: psycopg.Connection, source: Source, ids: Sequence[Any]) -> None:
    """UsageError naming the ids whose entity columns the source's selection cannot supply."""
    wanted = keys_of(source, ids)
    present = {row[source.entities.key] for row in rows(conn, source, wanted)}
    absent = [value for value in wanted if value not in present]
    if not absent:
        return
    others = ", ".join(c.name for c in source.entities.columns[1:])
    where = (
        f"{source.status.table} has no row for them"
        if source.entities.type is SelectionType.DEFAULT and source.status is not None
        else f"entities.{source.entities.type.value} does not return them (its own filters, due-ness included,"
        " apply to --ids too)"
    )
    raise UsageError(
        f"--ids {_listed(absent)}: {where}, so their entity columns ({others}) are unknown;"
        f" {source.name} cannot run them — name ids its selection returns"
    )


def gone(source: Source, keys: Sequence[Any]) -> str:
    """Why the run failed: these ids were there when it started (missing), not when they were run."""
    if source.entities.type is SelectionType.DEFAULT and source.status is not None:
        there = f"{source.status.table} had a row for them when the run started but not when they were run"
    else:
        there = (
            f"entities.{source.entities.type.value} returned them when the run started but not when they"
            " were run (its own filters, due-ness included, apply to --ids)"
        )
    return f"--ids {_listed(keys)}: {there}, so {source.name} did not run them; run them again if still wanted"


def _listed(keys: Sequence[Any]) -> str:
    """Ids for a message: each cut to 60 characters, the first 20 of them (keys can be long texts)."""
    shown = [text if len(text := str(key)) <= 60 else text[:57] + "..." for key in keys[:20]]
    return ",".join(shown) + (f" (and {len(keys) - 20} more)" if len(keys) > 20 else "")


def _fetch(conn: psycopg.Connection, query: sql.Composed, params: dict[str, Any], setting: str) -> list[Entity]:
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
            return cursor.execute(query, params).fetchall()
    except (psycopg.errors.ProgrammingError, psycopg.errors.DataError) as error:
        # The user's query or column settings, not a bug: say which setting, like the selection does.
        raise UsageError(f"--ids: {setting} failed: {error.diag.message_primary or error}") from None
    except (ValueError, RecursionError) as error:  # a value psycopg cannot load (json past 4300 digits)
        raise UsageError(f"--ids: {setting} failed: a value it returned cannot be read ({show(str(error))})") from None


def _status_rows(conn: psycopg.Connection, source: Source, keys: Sequence[Any]) -> list[Entity]:
    """The declared columns of these entities from their status rows (entities with none are left out)."""
    assert source.status is not None
    key = sql.Identifier(source.entities.key)
    others = [sql.SQL(", s.{0} as {0}").format(sql.Identifier(c.name)) for c in source.entities.columns[1:]]
    query = sql.SQL(
        "select s.{key} as {key}{others} from unnest(%(keys)s::{type}[]) with ordinality u(k, n)"
        " join {status} s on s.{key} = u.k order by u.n"
    ).format(
        key=key,
        others=sql.SQL("").join(others),
        type=sql.SQL(KEY_TYPES[source.entities.key_type]),
        status=identifier(source.status.table),
    )
    return _fetch(conn, query, {"keys": list(keys)}, f"reading entities.columns from {source.status.table}")


def _selected_rows(conn: psycopg.Connection, source: Source, keys: Sequence[Any]) -> list[Entity]:
    """The source's sql / function selection run whole, keeping these keys, with its declared columns."""
    entities = source.entities
    params: dict[str, Any] = {"keys": list(keys)}
    if entities.type is SelectionType.SQL:
        assert entities.sql is not None
        inner: sql.SQL | sql.Composed = sql.SQL(entities.sql)
        params |= {"limit": _WHOLE, "after_key": None, "source": source.name}
        setting = "entities.sql"
    else:
        inner = picks.function_sql(source, _WHOLE, None)
        setting = f"entities.function {entities.function}"
    columns = sql.SQL(", ").join(sql.SQL("q.{0}").format(sql.Identifier(c.name)) for c in entities.columns)
    key = sql.SQL("q.{}::text").format(sql.Identifier(entities.key))
    if entities.key_type == "text":
        params["texts"] = [str(k) for k in params.pop("keys")]
        matches = sql.SQL("{} = any(%(texts)s::text[])").format(key)
    else:  # the query's key as picks.typed reads it ('01', ' 2 '), so --ids find what a run selects
        # Only a key that can be one of the ids is cast: its digits without sign, leading zeros and
        # `.000` are at most 20 (a bigint's 19). Review revI F8: every row was cast, and one key past
        # numeric's range (140,000 digits) failed `--ids` for all the others.
        params["numbers"] = params.pop("keys")
        matches = sql.SQL(
            "case when {0} ~ {1} and length(ltrim(regexp_replace(btrim({0}, {2}), {3}, '', 'g'), '0')) <= 20"
            " then {0}::numeric end = any(%(numbers)s::numeric[])"
        ).format(
            key,
            sql.Literal(r"^[ \t\n\r\v\f]*[+-]?[0-9]+(\.0*)?[ \t\n\r\v\f]*$"),
            sql.Literal(" \t\n\r\v\f"),
            sql.Literal(r"^[+-]|\.0*$"),
        )
    query = sql.SQL("select {} from ({}) q where {}").format(columns, inner, matches)
    return _fetch(conn, query, params, setting)
