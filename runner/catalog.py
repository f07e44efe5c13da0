"""What the database has: a table's columns and unique keys, a function's arguments (PostgreSQL's catalog).

runner.migrations checks the sources against these at run start and hands the writer a `Catalog`;
runner.filters checks the selection's joins and columns with them.
"""

from __future__ import annotations

import psycopg

from runner.database import regclass_text
from runner.spec import QualifiedName

# name -> column types, e.g. {QualifiedName(None, "apps"): {"appid": "integer", "name": "text"}}
Catalog = dict[QualifiedName, dict[str, str]]


def table_columns(conn: psycopg.Connection, table: QualifiedName, *, generated: bool = True) -> dict[str, str] | None:
    """Column name -> `format_type` text ("integer", "numeric(10,2)", "jsonb"), or None if no table.
    `generated=False` leaves generated columns out: nothing may write them (nor touch updated_at)."""
    row = conn.execute("select to_regclass(%s)::oid", (regclass_text(table),)).fetchone()
    if row is None or row[0] is None:
        return None
    rows = conn.execute(
        "select attname, format_type(atttypid, atttypmod) from pg_attribute"
        " where attrelid = %s and attnum > 0 and not attisdropped and (%s or attgenerated = '') order by attnum",
        (row[0], generated),
    ).fetchall()
    return {name: type_ for name, type_ in rows}


def unique_keys(conn: psycopg.Connection, table: QualifiedName) -> list[frozenset[str]]:
    """Column sets of the table's plain unique indexes (what `on conflict (cols)` can infer)."""
    rows = conn.execute(
        "select array(select attname from pg_attribute a where a.attrelid = i.indrelid"
        "             and a.attnum = any(i.indkey)) from pg_index i"
        " where i.indrelid = to_regclass(%s) and i.indisunique and i.indpred is null"
        " and i.indexprs is null",
        (regclass_text(table),),
    ).fetchall()
    return [frozenset(row[0]) for row in rows]


def function_arguments(conn: psycopg.Connection, name: QualifiedName) -> dict[str, str] | None:
    """Input argument name -> `format_type` text of a function, or None if no (single) such function."""
    if conn.execute("select to_regproc(%s)", (regclass_text(name),)).fetchone() == (None,):
        return None  # to_regproc is null for an unknown name and for an overloaded one alike
    rows = conn.execute(
        "select a.name, format_type(a.type, null) from pg_proc p,"
        " unnest(p.proargnames, coalesce(p.proallargtypes, p.proargtypes::oid[]), p.proargmodes)"
        " as a(name, type, mode)"
        " where p.oid = to_regproc(%s) and coalesce(a.mode, 'i') in ('i', 'b', 'v') and a.name <> ''",
        (regclass_text(name),),
    ).fetchall()
    return {name: type_ for name, type_ in rows}
