"""Versioned DDL (`runner/sql/*.sql`), `migrate`, `check` and the `--sql` text.

Two kinds of SQL file:
- `NNNN_name.sql`: syncrun's own tables, applied once each, in order, and recorded in
  `syncrun_migrations(version, name, applied_at)`;
- `jobs_table.sql` / `status_table.sql`: the seed-shaped tables, whose names come from the sources.
  They are idempotent and re-applied on every migrate, so a new source pointing at a new status
  table, or an old seed-shaped table, is brought up to date by the same command.
Then each source gets the status-table columns its settings use, and nothing else: its
`last_<source>_sync` stamp; with the default selection its priority/syncable/interval columns (those
not set to null); the `last_error_*` columns unless `error_columns: false`; and, for a source
selecting with `function: get_apps_for_sync`, that function (when the schema has none) and the
columns it reads.

`migrate` runs everything in one transaction under an advisory lock, so two migrates never race.
`check` never changes anything: it names every missing table/column and the command that fixes it,
and returns the column types of every table a source writes or looks up in, and the argument types
of every function writer (the writer checks values against them).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql

from runner.database import identifier, regclass_text
from runner.errors import SchemaMismatch
from runner.spec import QualifiedName, SelectionType, Source, Write

JOBS_TABLE = QualifiedName(None, "sync_jobs")
SEED_FUNCTION = "get_apps_for_sync"
SQL_DIR = Path(__file__).parent / "sql"
KEY_TYPES = {"int": "integer", "bigint": "bigint", "text": "text"}
_VERSIONED = re.compile(r"^(\d{4})_(\w+)\.sql$")
_LOCK_KEY = 7_305_215_001  # pg_advisory_xact_lock key for `migrate`; any constant unique to syncrun

# name -> column types, e.g. {QualifiedName(None, "apps"): {"appid": "integer", "name": "text"}}
Catalog = dict[QualifiedName, dict[str, str]]

JOB_COLUMNS = (
    "heartbeat_at",
    "requests_made",
    "metadata",
    "items_created",
    "items_updated",
    "items_skipped",
    "items_deleted",
    "items_unchanged",
)
ERROR_COLUMNS = ("last_error_source", "last_error_message", "last_error_at")
OWN_TABLES = (
    "syncrun_migrations",
    "syncrun_state",
    "syncrun_cursors",
    "syncrun_validators",
    "syncrun_watermarks",
    "syncrun_listings",
)


def versioned_files() -> list[tuple[int, str, Path]]:
    """(version, name, path) of every `NNNN_name.sql`, in version order."""
    found = [(m, p) for p in SQL_DIR.iterdir() if (m := _VERSIONED.match(p.name))]
    return sorted((int(m.group(1)), f"{m.group(1)}_{m.group(2)}", p) for m, p in found)


def _template(name: str, **params: sql.Composable) -> sql.Composed:
    return sql.SQL((SQL_DIR / name).read_text()).format(**params)


def _jobs_sql(jobs: QualifiedName) -> sql.Composed:
    return _template(
        "jobs_table.sql",
        jobs_table=identifier(jobs),
        jobs_literal=sql.Literal(regclass_text(jobs)),
        jobs_index_type=sql.Identifier(f"{jobs.name}_job_type_started_idx"),
        jobs_index_running=sql.Identifier(f"{jobs.name}_running_heartbeat_idx"),
    )


def _status_sql(source: Source) -> sql.Composed:
    assert source.status is not None
    table = source.status.table
    return _template(
        "status_table.sql",
        status_table=identifier(table),
        key=sql.Identifier(source.status.key),
        key_type=sql.SQL(KEY_TYPES[source.entities.key_type]),
    )


def _seed_function(source: Source) -> bool:
    """Whether the source selects with the seed's get_apps_for_sync in its status table's schema."""
    function, status = source.entities.function, source.status
    return (
        source.entities.type is SelectionType.FUNCTION
        and function is not None
        and status is not None
        and function.name == SEED_FUNCTION
        and function.schema in (None, status.table.schema)
    )


def _function_sql(source: Source) -> sql.Composed:
    assert source.status is not None
    table = source.status.table
    schema = sql.Literal(table.schema) if table.schema else sql.SQL("current_schema()")
    return _template(
        "status_function.sql",
        status_literal=sql.Literal(regclass_text(table)),
        key=sql.Identifier(source.status.key),
        key_literal=sql.Literal(source.status.key),
        key_type=sql.SQL(KEY_TYPES[source.entities.key_type]),
        function=identifier(QualifiedName(table.schema, SEED_FUNCTION)),
        function_schema=schema,
    )


def _source_columns(source: Source) -> list[tuple[str, str]]:
    """(column, DDL type) this source's settings use on its status table; migrate adds nothing else."""
    assert source.status is not None
    needed = [(source.status.column, "timestamptz")]
    entities = source.entities
    if entities.type is SelectionType.DEFAULT:
        for column, ddl in (
            (entities.priority_column, "int default 0"),
            (entities.syncable_column, "boolean default true"),
            (entities.interval_column, "int"),
        ):
            if column:
                needed.append((column, ddl))
    elif _seed_function(source):  # the columns get_apps_for_sync reads
        needed += [("priority_score", "int default 0"), ("is_syncable", "boolean default true")]
        needed += [("sync_interval_hours", "int default 24")]
    if source.status.error_columns:
        needed += list(zip(ERROR_COLUMNS, ("text", "text", "timestamptz"), strict=True))
    return needed


def _source_sql(source: Source) -> Iterator[sql.Composed]:
    assert source.status is not None
    table = identifier(source.status.table)
    for column, ddl in _source_columns(source):
        yield sql.SQL("alter table {} add column if not exists {} {};\n").format(
            table,
            sql.Identifier(column),
            sql.SQL(ddl),
        )
    if source.status.error_columns:
        yield _enum_value_sql(source)


def _enum_value_sql(source: Source) -> sql.Composed:
    """Let the seed's `last_error_source sync_source` enum (Supabase) accept this source's name.

    Adding a value is additive: no table rewrite, no lock on a large table, and the user's functions
    taking `p_source sync_source` keep working (converting the column to text would break views and
    comparisons that depend on the enum). A text column (Tiger, ours) is left alone.
    """
    assert source.status is not None
    return sql.SQL(
        "do $do$\ndeclare\n    t regtype;\nbegin\n"
        "    select a.atttypid::regtype into t from pg_attribute a join pg_type y on y.oid = a.atttypid\n"
        "    where a.attrelid = {}::regclass and a.attname = 'last_error_source'\n"
        "      and not a.attisdropped and y.typtype = 'e';\n"
        "    if t is not null then\n"
        "        execute format('alter type %s add value if not exists %L', t, {});\n"
        "    end if;\nend\n$do$;\n"
    ).format(sql.Literal(regclass_text(source.status.table)), sql.Literal(source.name))


def _status_sources(sources: Iterable[Source]) -> list[Source]:
    """One source per distinct status table (the table's shape comes from the first)."""
    seen: dict[QualifiedName, Source] = {}
    for source in sources:
        if source.status is not None:
            seen.setdefault(source.status.table, source)
    return list(seen.values())


_LEDGER = sql.SQL(
    "create table if not exists syncrun_migrations (\n"
    "    version int primary key,\n    name text not null,\n"
    "    applied_at timestamptz not null default now()\n);\n"
)
_RECORD = "insert into syncrun_migrations (version, name) values ({}, {}) on conflict do nothing;\n"


def _ensure_sql(sources: Sequence[Source], jobs: QualifiedName) -> list[sql.Composed]:
    statements = [_jobs_sql(jobs)]
    statements += [_status_sql(source) for source in _status_sources(sources)]
    for source in sources:
        if source.status is not None:
            statements += list(_source_sql(source))
    statements += [_function_sql(source) for source in _status_sources(filter(_seed_function, sources))]
    return statements


def migration_sql(sources: Sequence[Source], *, jobs_table: QualifiedName = JOBS_TABLE) -> str:
    """Everything `migrate` would run, as one script for the user's own migrations folder."""
    parts = ["-- generated by `syncrun migrate --sql`; idempotent\nbegin;\n\n", _LEDGER.as_string(), "\n"]
    for version, name, path in versioned_files():
        parts += [f"-- {name}\n", path.read_text(), "\n"]
        parts.append(sql.SQL(_RECORD).format(version, name).as_string() + "\n")
    parts += [statement.as_string() + "\n" for statement in _ensure_sql(sources, jobs_table)]
    parts.append("commit;\n")
    return "".join(parts)


def applied_versions(conn: psycopg.Connection) -> set[int]:
    if conn.execute("select to_regclass('syncrun_migrations')").fetchone() == (None,):
        return set()
    return {row[0] for row in conn.execute("select version from syncrun_migrations")}


def migrate(
    conn: psycopg.Connection,
    sources: Sequence[Source],
    *,
    jobs_table: QualifiedName = JOBS_TABLE,
    changed: list[str] | None = None,
) -> list[str]:
    """Apply pending versioned files, then (re)apply the table DDL for `sources`. Returns the versioned
    files that ran; `changed` (if given) gets what the table DDL did: `created table sync_status`,
    `added column sync_status.last_x_sync`, `created function get_apps_for_sync` (nothing when the
    tables were already as the sources need them)."""
    ran: list[str] = []
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(_LEDGER)
        done = applied_versions(conn)
        for version, name, path in versioned_files():
            if version not in done:
                conn.execute(path.read_text())
                conn.execute(sql.SQL(_RECORD).format(version, name))
                ran.append(name)
        before = _shape(conn, sources, jobs_table)
        for statement in _ensure_sql(sources, jobs_table):
            conn.execute(statement)
        if changed is not None:
            changed += _changes(before, _shape(conn, sources, jobs_table))
    return ran


_Shape = dict[str, dict[str, str] | None]


def _shape(conn: psycopg.Connection, sources: Sequence[Source], jobs: QualifiedName) -> _Shape:
    """The tables migrate's DDL touches: name -> columns (None: missing); functions: name -> {} or None."""
    shape: _Shape = {f"table {jobs}": table_columns(conn, jobs)}
    for source in _status_sources(sources):
        assert source.status is not None
        shape[f"table {source.status.table}"] = table_columns(conn, source.status.table)
    for source in _status_sources(filter(_seed_function, sources)):
        assert source.status is not None
        schema = source.status.table.schema
        found = conn.execute(
            "select 1 from pg_proc where proname = %s and pronamespace = coalesce(%s, current_schema())::regnamespace",
            (SEED_FUNCTION, schema),
        ).fetchone()
        shape[f"function {QualifiedName(schema, SEED_FUNCTION)}"] = {} if found else None
    return shape


def _changes(before: _Shape, after: _Shape) -> list[str]:
    done = []
    for name, columns in after.items():
        if columns is None:
            continue
        was = before.get(name)
        if was is None:
            done.append(f"created {name}")
        else:
            table = name.removeprefix("table ")
            done += [f"added column {table}.{column}" for column in columns if column not in was]
    return done


# --- check ---------------------------------------------------------------------------------------------
def _command(sources: Iterable[Source]) -> str:
    return "syncrun migrate " + " ".join(dict.fromkeys(_display(source.path) for source in sources))


def _display(path: Path) -> str:
    if path.is_absolute():
        try:
            return str(path.relative_to(Path(os.getcwd())))
        except ValueError:
            return str(path)
    return str(path)


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


def check(conn: psycopg.Connection, sources: Sequence[Source], *, jobs_table: QualifiedName = JOBS_TABLE) -> Catalog:
    """Raise SchemaMismatch naming every missing table/column; return the written tables' columns."""
    with conn.transaction():
        problems = list(_own_problems(conn, sources))
        problems += _jobs_problems(conn, sources, jobs_table)
        for source in sources:
            problems += _status_problems(conn, source)
        catalog, target_problems = _targets(conn, sources)
    problems = list(dict.fromkeys(problems + target_problems))
    if problems:
        raise SchemaMismatch("\n".join(problems))
    return catalog


def _own_problems(conn: psycopg.Connection, sources: Sequence[Source]) -> Iterator[str]:
    fix = f"run `{_command(sources)}`"
    for table in OWN_TABLES:
        if conn.execute("select to_regclass(%s)", (table,)).fetchone() == (None,):
            yield f"{table} is missing: {fix}"
    done = applied_versions(conn)
    for version, name, _ in versioned_files():
        if done and version not in done:
            yield f"syncrun migration {name} is not applied: {fix}"


def _jobs_problems(conn: psycopg.Connection, sources: Sequence[Source], jobs: QualifiedName) -> list[str]:
    fix = f"run `{_command(sources)}`"
    columns = table_columns(conn, jobs)
    if columns is None:
        return [f"{jobs} is missing: {fix}"]
    problems = [f"{jobs}.{c} is missing: {fix}" for c in JOB_COLUMNS if c not in columns]
    narrow = conn.execute(
        "select 1 from pg_constraint where conrelid = to_regclass(%s) and contype = 'c'"
        " and pg_get_constraintdef(oid) like '%%status%%'"
        " and pg_get_constraintdef(oid) not like '%%cancelled%%'",
        (regclass_text(jobs),),
    ).fetchone()
    if narrow:
        problems.append(f"{jobs}.status: its check constraint does not allow 'cancelled': {fix}")
    return problems


def _status_problems(conn: psycopg.Connection, source: Source) -> list[str]:
    if source.status is None:
        return []
    table, fix = source.status.table, f"run `{_command([source])}`"
    columns = table_columns(conn, table)
    if columns is None:
        return [f"{table} is missing: {fix}"]
    wanted = [c for c, _ in _source_columns(source)]
    writable = table_columns(conn, table, generated=False) or {}
    stamped = [source.status.column, *(f.column for f in source.status.set)]
    stamped += list(ERROR_COLUMNS) if source.status.error_columns else []
    problems = [f"{table}.{c} is missing: {fix}" for c in wanted if c not in columns]
    problems += [
        f"{table}.{c} is a generated column: the status stamp cannot write it ({_display(source.path)} status)"
        for c in dict.fromkeys(stamped)
        if c in columns and c not in writable
    ]
    if source.status.key not in columns:
        problems.append(f"{table}.{source.status.key} is missing: {table} needs its key column (status.key)")
    if source.entities.type is SelectionType.DEFAULT:
        problems += [
            f"{table}.{c} is missing: the default selection reads entities.columns from {table}"
            f" ({_display(source.path)})"
            for c in sorted(source.entities.column_names - columns.keys())
        ]
    problems += [
        f"{table}.{f.column}: no such column ({_display(source.path)} status.set)"
        for f in source.status.set
        if f.column not in columns
    ]
    if source.status.error_columns and _enum_lacks(conn, table, source.name):
        problems.append(f"{table}.last_error_source does not accept '{source.name}': {fix}")
    return problems


def _enum_lacks(conn: psycopg.Connection, table: QualifiedName, value: str) -> bool:
    """True when last_error_source is an enum (Supabase's sync_source) without `value`."""
    row = conn.execute(
        "select not exists (select from pg_enum e where e.enumtypid = a.atttypid and e.enumlabel = %s)"
        " from pg_attribute a join pg_type t on t.oid = a.atttypid"
        " where a.attrelid = to_regclass(%s) and a.attname = 'last_error_source'"
        " and not a.attisdropped and t.typtype = 'e'",
        (value, regclass_text(table)),
    ).fetchone()
    return bool(row and row[0])


def _targets(conn: psycopg.Connection, sources: Sequence[Source]) -> tuple[Catalog, list[str]]:
    """Column types of every written table (and status table); problems with mapped columns."""
    catalog: Catalog = {}
    problems: list[str] = []
    for source in sources:
        if source.status is not None:  # what the stamp may write: a generated updated_at is left alone
            catalog[source.status.table] = table_columns(conn, source.status.table, generated=False) or {}
        for index, write in enumerate(source.writes):
            where = f"({_display(source.path)} writes[{index}])"
            problems += _lookup_problems(conn, write, catalog, where)
            if write.function is not None:
                problems += _function_problems(conn, write, catalog, where)
                continue
            columns = table_columns(conn, write.table)
            if columns is None:
                problems.append(f"{write.table} is missing: syncrun does not create target tables {where}")
                continue
            catalog[write.table] = columns
            mapped = dict.fromkeys([*write.key, *write.column_names, *(lookup.column for lookup in write.lookups)])
            problems += [f"{write.table}.{c}: no such column {where}" for c in mapped if c not in columns]
            if set(write.key) <= columns.keys() and frozenset(write.key) not in unique_keys(conn, write.table):
                key = ", ".join(write.key)
                problems.append(f"{write.table}: no primary key or unique index on ({key}) {where}")
    return catalog, problems


def _lookup_problems(conn: psycopg.Connection, write: Write, catalog: Catalog, where: str) -> list[str]:
    """Each lookup's dimension table, with its key and returning columns, joins the catalog."""
    problems: list[str] = []
    for lookup in write.lookups:
        columns = table_columns(conn, lookup.table)
        if columns is None:
            problems.append(f"{lookup.table} is missing: lookup {lookup.column} reads it {where}")
            continue
        catalog[lookup.table] = columns
        for column in dict.fromkeys((lookup.key, lookup.returning)):
            if column not in columns:
                problems.append(f"{lookup.table}.{column}: no such column (lookup {lookup.column}) {where}")
    return problems


def _function_problems(conn: psycopg.Connection, write: Write, catalog: Catalog, where: str) -> list[str]:
    """A function writer's catalog entry is its input arguments (name -> type), under its name."""
    assert write.function is not None
    arguments = function_arguments(conn, write.function)
    if arguments is None:
        return [f"{write.function}: no such function, or more than one with that name {where}"]
    catalog[write.function] = arguments
    mapped = [*write.column_names, *(lookup.column for lookup in write.lookups)]
    return [f"{write.function}: no argument named {c} {where}" for c in mapped if c not in arguments]


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


def bundled_tables() -> list[str]:
    """The target-table families shipped with syncrun (runner/sql/tables/*.sql): `steam`, `example`."""
    folder = resources.files("runner").joinpath("sql/tables")
    return sorted(entry.name.removesuffix(".sql") for entry in folder.iterdir() if entry.name.endswith(".sql"))


def tables_sql(name: str) -> str:
    """The idempotent DDL of one bundled family of target tables (`syncrun migrate --tables NAME`)."""
    return resources.files("runner").joinpath(f"sql/tables/{name}.sql").read_text()
