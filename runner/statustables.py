"""The tables and function whose names come from the sources: the jobs table, each status table (with
the columns its source's settings use), the seed's `get_apps_for_sync`.

Their DDL (`runner/sql/jobs_table.sql`, `status_table.sql`, `status_function.sql`) is idempotent and
re-applied by every migrate (runner/migrations.py), so a new source pointing at a new status table, or
an old seed-shaped table, is brought up to date by the same command. Each source gets the status-table
columns its settings use, and nothing else: its `last_<source>_sync` stamp; with the default selection
its priority/syncable/interval columns (those not set to null); the `last_error_*` columns unless
`error_columns: false`; and, for a source selecting with `function: get_apps_for_sync`, that function
(when the schema has none) and the columns it reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from psycopg import sql

from runner.database import identifier, regclass_text
from runner.spec import QualifiedName, SelectionType, Source

SEED_FUNCTION = "get_apps_for_sync"
SQL_DIR = Path(__file__).parent / "sql"
KEY_TYPES = {"int": "integer", "bigint": "bigint", "text": "text"}
ERROR_COLUMNS = ("last_error_source", "last_error_message", "last_error_at")


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


def seed_function(source: Source) -> bool:
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


def source_columns(source: Source) -> list[tuple[str, str]]:
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
    elif seed_function(source):  # the columns get_apps_for_sync reads
        needed += [("priority_score", "int default 0"), ("is_syncable", "boolean default true")]
        needed += [("sync_interval_hours", "int default 24")]
    if source.status.error_columns:
        needed += list(zip(ERROR_COLUMNS, ("text", "text", "timestamptz"), strict=True))
    return needed


def _source_sql(source: Source) -> Iterator[sql.Composed]:
    assert source.status is not None
    table = identifier(source.status.table)
    for column, ddl in source_columns(source):
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


def status_sources(sources: Iterable[Source]) -> list[Source]:
    """One source per distinct status table (the table's shape comes from the first)."""
    seen: dict[QualifiedName, Source] = {}
    for source in sources:
        if source.status is not None:
            seen.setdefault(source.status.table, source)
    return list(seen.values())


def ensure_sql(sources: Sequence[Source], jobs: QualifiedName) -> list[sql.Composed]:
    """Every statement that brings the jobs table, the status tables and the seed function up to date."""
    statements = [_jobs_sql(jobs)]
    statements += [_status_sql(source) for source in status_sources(sources)]
    for source in sources:
        if source.status is not None:
            statements += list(_source_sql(source))
    statements += [_function_sql(source) for source in status_sources(filter(seed_function, sources))]
    return statements
