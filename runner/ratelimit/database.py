"""`shared: database`: the budget and pause of a bucket in PostgreSQL (migrations 0002 and 0003)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, LiteralString

import psycopg

from runner import spec
from runner.database import CONNECT_TIMEOUT
from runner.errors import DatabaseError, SchemaMismatch, StoreUnreachable
from runner.ratelimit.local import Clock, Sleep
from runner.ratelimit.shared import Reservation, SharedLimiter, refused

DECLARED_OTHERWISE = "SR001"  # syncrun_rate_reserve: the bucket is in use with another limit (migration 0003)


class DatabaseLimiter(SharedLimiter):
    """A `Limiter` whose budget and pause live in PostgreSQL, shared by every process using the bucket.

    Each grant is one statement, `syncrun_rate_reserve(...)` (runner/sql/0003_rate_limit_restamp.sql):
    under the bucket row's lock it reserves the earliest moment the window and burst rules (or the
    token bucket) allow, by the database's clock, and records it in the bucket's log. The caller then
    sleeps until then (less `lead`). A grant used late is moved on the server with
    `syncrun_rate_restamp(...)`, one statement, unless a younger reservation relies on it. One process
    holds at most one reservation being waited for at a time (its waiters queue FIFO behind an asyncio
    lock, as in `Limiter`), so processes take turns.

    `pause()` records the Retry-After locally at once and in the row (`paused_until`) in the
    background; every later reservation by any process starts after it.

    Blocking psycopg calls run in a worker thread (`asyncio.to_thread`): one autocommit connection per
    limiter, opened on the first acquire, closed by `close()`.
    """

    def __init__(
        self,
        rate: spec.RateLimit,
        dsn: str,
        *,
        margin: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__(rate, margin=margin, clock=clock, sleep=sleep, time_scale=time_scale)
        self._dsn = dsn
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._conn_lock = threading.Lock()  # grant and pause threads share the connection

    async def connect(self) -> None:
        """Open the connection now and check the migration is there (else `acquire` does it lazily)."""
        found = await asyncio.to_thread(self._call, "select to_regproc('syncrun_rate_restamp') is not null", ())
        if not found:
            raise self._missing()

    def close(self) -> None:
        super().close()
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def _remote_grant(self, pause: float) -> Reservation:
        return await self._store(lambda: asyncio.to_thread(self._grant, pause), "the reservation")

    async def _remote_restamp(self, seq: int, late: float) -> float | None:
        requests, window, burst, interval = self._restamp_args()
        moved = await self._restamp_once(
            lambda: asyncio.to_thread(
                self._call,
                "select syncrun_rate_restamp(%s, %s, %s, %s, %s, %s, %s)",
                (self.rate.bucket, seq, late, requests, window, burst, interval),
            )
        )
        return None if moved is None else float(moved)

    async def _remote_unreserve(self, seq: int) -> bool:
        query = "select syncrun_rate_unreserve(%s, %s)"
        gone = await self._store(lambda: asyncio.to_thread(self._call, query, (self.rate.bucket, seq)), "the give-back")
        return bool(gone)

    async def _remote_pause(self, seconds: float) -> None:
        await self._store(lambda: asyncio.to_thread(self._write_pause, seconds), "the pause")

    def _pause_outside_loop(self, seconds: float) -> None:
        self._write_pause(seconds)

    # --- blocking, in a worker thread ---
    def _grant(self, pause: float) -> Reservation:
        requests, window, burst, interval = self._args()
        at, now, seq = self._call(
            "select syncrun_rate_reserve(%s, %s, %s, %s, %s, %s)",
            (self.rate.bucket, requests, window, burst, pause if pause > 0 else None, interval),
        )
        return Reservation(float(at), float(now), int(seq))

    def _write_pause(self, seconds: float) -> None:
        self._call("select syncrun_rate_pause(%s, %s)", (self.rate.bucket, seconds))

    def _call(self, query: LiteralString, params: tuple[Any, ...]) -> Any:
        with self._conn_lock:
            self._check_open()
            if self._conn is None or self._conn.closed:
                try:
                    self._conn = psycopg.connect(
                        self._dsn, autocommit=True, prepare_threshold=None, connect_timeout=CONNECT_TIMEOUT
                    )
                except psycopg.OperationalError as exc:  # nothing was sent: always safe to try again
                    raise self._unreachable(exc) from None
            try:
                row = self._conn.execute(query, params).fetchone()
            except psycopg.errors.UndefinedFunction:
                raise self._missing() from None
            except psycopg.Error as exc:
                if exc.sqlstate == DECLARED_OTHERWISE:
                    message = str(exc.diag.message_primary or exc).removeprefix("syncrun: ")
                    raise refused(message, self.reset_sql()) from None
                if self._conn.broken or self._conn.closed:  # a restart, a failover: the caller may retry
                    self._conn = None
                    raise self._unreachable(exc) from None
                raise DatabaseError(f"rate-limit bucket '{self.rate.bucket}': PostgreSQL failed: {exc}") from None
            assert row is not None
            return row[0]

    def reset_sql(self) -> str:
        """The statements that clear this bucket (docs/rate-limits.md, "Changing a bucket's limit")."""
        name = self.rate.bucket.replace("'", "''")
        return (
            f"delete from syncrun_rate_log where bucket = '{name}';"
            f" delete from syncrun_rate_limits where bucket = '{name}';"
        )

    def _unreachable(self, exc: psycopg.Error) -> StoreUnreachable:
        return StoreUnreachable(f"rate-limit bucket '{self.rate.bucket}': PostgreSQL failed: {exc}")

    def _missing(self) -> SchemaMismatch:
        return SchemaMismatch(
            f"rate_limit.shared: database (bucket '{self.rate.bucket}') needs syncrun's syncrun_rate_limits"
            " table (migration 0002) and functions (0003); run `syncrun migrate` against this database"
        )
