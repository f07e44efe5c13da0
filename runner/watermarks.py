"""Incremental syncs of list sources: the watermark, read by requests as `${incremental.since}`.

A source with `incremental:` asks its API only for what changed since the watermark: `start` until
a listing completes; then the largest `cursor` value among that listing's records (or, with
`from: listing_start`, when that listing started). `${incremental.since}` is the watermark minus
`lookback`. Values are timezone-aware timestamps (ISO 8601 text) or integers; the type of `start`
decides which, and a record's value of another type fails the run (naming it) rather than being
guessed at.

The watermark advances only when a run reads the listing to its natural end, as the checkpoint is
cleared (runner/engine/catalogue.py `read`): a failed, capped or interrupted run keeps the old one. The
largest value seen so far is kept with it (`pending`) after each committed page, so a listing
resumed from its checkpoint by a later run advances, at its completion, past what the earlier runs
of it read. A new listing (no checkpoint) starts with no pending value; `--restart` forgets both.

Stored in syncrun_watermarks (migration 0005), one row per source, as JSON that keeps the type:
{"type": "timestamp", "value": "2026-01-02T03:04:05+02:00"} or {"type": "integer", "value": 17}.

At-least-once: the API is asked for records at or after `since`, so records at the watermark (and
within the lookback) come again on the next run; the writes are upserts, so they are rewritten,
never doubled.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from jmespath.exceptions import JMESPathError
from psycopg.types.json import Jsonb

from runner import database, mapping, spec, templating
from runner.errors import EntityError, RunFailed
from runner.expressions import EVALUATION_FAULTS, JSON
from runner.reply import Reply

Value = datetime | int
log = logging.getLogger("syncrun")

__all__ = ["MAX_INTEGER", "Tracker", "Value", "decode", "encode", "parse", "since", "text"]


MAX_INTEGER = 2**63 - 1  # an integer watermark is a bigint: a version or sequence number, not 10**35
_DIGITS = re.compile(r"-?[0-9]+")  # a cursor sent as text: ASCII digits, an optional minus, nothing else
_EXACT_FLOAT = 2**53  # a JSON number beyond this is no longer exact as a float: it is refused


def parse(found: JSON, kind: Value) -> Value:
    """A cursor (or `start`) value as the type of `kind`; ValueError says why it is not one. An
    integer cursor takes whole numbers and strings of ASCII digits with an optional leading minus and
    no spaces (APIs send 64-bit numbers as text), within a signed 64-bit integer, its largest value
    (a sentinel more likely than a version) refused; a timestamp one takes ISO 8601 text with a zone, within the years
    1 to 9999 in UTC too."""
    if isinstance(kind, int):
        if isinstance(found, float) and found.is_integer() and abs(found) < _EXACT_FLOAT:
            found = int(found)
        if isinstance(found, str) and len(found) <= 40 and _DIGITS.fullmatch(found):
            found = int(found)
        if isinstance(found, bool) or not isinstance(found, int):
            raise ValueError(f"{_show(found)} is not an integer")
        if abs(found) > MAX_INTEGER:
            raise ValueError(f"{_show(found)} is out of range (an integer watermark is at most {MAX_INTEGER - 1})")
        if found == MAX_INTEGER:  # a watermark there could never advance again: every run asks for it
            raise ValueError(f"{found} is the largest 64-bit integer (a sentinel?): the watermark could not advance")
        return found
    if not isinstance(found, str):
        raise ValueError(f"{_show(found)} is not an ISO 8601 timestamp")
    try:
        value = datetime.fromisoformat(found.strip())
    except ValueError:
        raise ValueError(f"{_show(found)} is not an ISO 8601 timestamp") from None
    if value.tzinfo is None:
        raise ValueError(f"{_show(found)} has no time zone (write e.g. 2020-01-01T00:00:00Z)")
    try:
        value.astimezone(UTC)  # comparisons go through UTC: 0001-01-01T00:00:00+05:00 is before year 1
    except OverflowError:
        raise ValueError(f"{_show(found)} is out of range (years 1 to 9999 in UTC)") from None
    return value


def _later(a: Value, b: Value) -> bool:
    """a > b for two values of one type (parse makes them so)."""
    if isinstance(a, datetime) and isinstance(b, datetime):
        return a > b
    if isinstance(a, int) and isinstance(b, int):
        return a > b
    raise RunFailed("a timestamp and an integer cannot be compared: run with --restart")


def _article(kind: object) -> str:
    return f"an {kind}" if str(kind)[:1] in "aeiou" else f"a {kind}"


def _show(value: JSON) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def text(value: Value) -> str:
    """How a watermark is written into a request: ISO 8601 (Z for UTC) or the integer."""
    if isinstance(value, datetime):
        written = value.isoformat()
        return written[:-6] + "Z" if written.endswith("+00:00") else written
    return str(value)


def since(incremental: spec.Incremental, value: Value) -> str:
    """`${incremental.since}`: the watermark minus the lookback, never before the earliest value
    (`start: 0001-01-01T00:00:00Z` with a lookback asks from that start)."""
    if isinstance(value, datetime):
        try:
            return text(value - timedelta(seconds=incremental.lookback))
        except OverflowError:
            return text(datetime.min.replace(tzinfo=UTC))
    return text(max(value - int(incremental.lookback), -MAX_INTEGER - 1))


def encode(value: Value) -> dict[str, JSON]:
    if isinstance(value, datetime):
        return {"type": "timestamp", "value": value.isoformat()}
    return {"type": "integer", "value": value}


def decode(stored: Any, kind: Value) -> Value | None:
    """A stored value, or None when there is none. Raises RunFailed when it is not of the type of
    `start` (the source file changed the cursor's type): `--restart` starts over from `start`."""
    if not isinstance(stored, dict) or stored.get("value") is None:
        return None
    wanted = "timestamp" if isinstance(kind, datetime) else "integer"
    if stored.get("type") != wanted:
        raise RunFailed(
            f"the stored watermark is {_article(stored.get('type'))}, but incremental.start is {_article(wanted)}:"
            " run with --restart to start over from incremental.start"
        )
    return parse(stored["value"], kind)


# --- the table ----------------------------------------------------------------------------------------
def load(conn: psycopg.Connection[Any], source: str) -> tuple[Any, Any]:
    """(value, pending) as stored, (None, None) when the source has none."""
    with conn.transaction():
        row = conn.execute("select value, pending from syncrun_watermarks where source = %s", (source,)).fetchone()
    return (None, None) if row is None else (row[0], row[1])


def save(conn: psycopg.Connection[Any], source: str, *, pending: Value | None, job_id: str | None) -> None:
    """Keep the largest value the unfinished listing has seen (None: a new listing has seen none)."""
    with conn.transaction():
        conn.execute(
            "insert into syncrun_watermarks (source, pending, job_id) values (%s, %s, %s)"
            " on conflict (source) do update set pending = excluded.pending, job_id = excluded.job_id,"
            " updated_at = now()",
            (source, None if pending is None else Jsonb(encode(pending)), job_id),
        )


def advance(conn: psycopg.Connection[Any], source: str, value: Value, job_id: str | None) -> None:
    """The listing completed: `value` is the watermark; nothing is pending."""
    with conn.transaction():
        conn.execute(
            "insert into syncrun_watermarks (source, value, pending, job_id, advanced_at)"
            " values (%s, %s, null, %s, now())"
            " on conflict (source) do update set value = excluded.value, pending = null, job_id = excluded.job_id,"
            " advanced_at = now(), updated_at = now()",
            (source, Jsonb(encode(value)), job_id),
        )


def reset(conn: psycopg.Connection[Any], source: str) -> None:
    """Forget the watermark (`--restart`): the next listing asks from `start`."""
    with conn.transaction():
        conn.execute("delete from syncrun_watermarks where source = %s", (source,))


# --- one listing ----------------------------------------------------------------------------------------
@dataclass(slots=True)
class Tracker:
    """The watermark of one run of a list source; inert for a source without `incremental:` or
    without a database (a dry run asks from `start` and keeps nothing)."""

    source: spec.Source
    conn: database.Link | None
    # A timestamp watermark never passes when the listing started: a record dated later (2099, a
    # placeholder, a skewed or hostile API) would otherwise make every later run ask for nothing.
    # Such records count the value as the listing's start, so the next run asks for them again.
    ceiling: datetime | None = None
    value: Value | None = None
    pending: Value | None = None
    beyond: int = 0  # records of this run whose cursor was later than `ceiling`
    latest: Value | None = None  # the latest of those, for the warning
    healed: bool = False  # the stored watermark was later than `ceiling`: a completed listing stores `value`

    async def begin(
        self, settings: templating.Settings, *, restart: bool, resumed: bool, override: bool = False
    ) -> templating.Settings:
        """Load (or, with `restart`, forget) the watermark; the run's settings with `${incremental.since}`.
        A listing that is not `resumed` from a checkpoint forgets what an abandoned one had seen.
        `override` (`--set incremental.start=…`): this run asks from `start`, leaving the stored
        watermark in place; only if its listing completes does the watermark become what it saw
        (which may be earlier: that is what a reset is for)."""
        incremental = self.source.incremental
        if incremental is None:
            return settings
        if self.conn is not None and not override:
            if restart:
                await asyncio.to_thread(self.conn.call, reset, self.source.name)
            stored, pending = await asyncio.to_thread(self.conn.call, load, self.source.name)
            self.value = decode(stored, incremental.start)
            self.pending = decode(pending, incremental.start) if resumed else None
            if isinstance(self.value, datetime) and self.ceiling is not None and self.value > self.ceiling:
                # kept before watermarks were capped (or the clock went back): no later than now
                log.warning(
                    "%s: the stored watermark %s is later than this listing's start: asking from %s",
                    self.source.name,
                    text(self.value),
                    text(self.ceiling),
                )
                self.value, self.healed = self.ceiling, True
        value = incremental.start if self.value is None else self.value
        values = {**settings.values, templating.WATERMARK: since(incremental, value)}
        return templating.Settings(values, settings.redact, settings.secrets)

    async def page(self, reply: Reply, outcome: spec.Outcome, job_id: str | None) -> None:
        """A page's rows committed: keep the largest cursor value of its records (a declared end of
        the listing, a skip, holds none)."""
        incremental = self.source.incremental
        if (
            incremental is None
            or incremental.cursor is None
            or reply.body is None
            or outcome is not spec.Outcome.SUCCESS
        ):
            return
        base = mapping.context(reply.body, reply.status, reply.headers, {}, {})
        try:
            records = mapping.records(self.source, base)
        except EntityError:
            return  # no records where the source expects them: the page's own checks said so
        for record in records:
            try:
                found = incremental.cursor.search({**base, "record": record})
                value = parse(found, incremental.start)
            except (JMESPathError, ValueError, *EVALUATION_FAULTS) as error:
                raise RunFailed(
                    f"incremental.cursor ({incremental.cursor.text}) on a record of {reply.url}: {error};"
                    " the watermark is not advanced"
                ) from None
            if isinstance(value, datetime) and self.ceiling is not None and value > self.ceiling:
                self.beyond += 1
                if self.latest is None or _later(value, self.latest):
                    self.latest = value
                value = self.ceiling
            if self.pending is None or _later(value, self.pending):
                self.pending = value
        if self.conn is not None:
            await asyncio.to_thread(self.conn.call, save, self.source.name, pending=self.pending, job_id=job_id)

    async def complete(self, listing_started: datetime | None, job_id: str | None) -> None:
        """The listing was read to its end: the watermark advances (never backwards)."""
        incremental = self.source.incremental
        if incremental is None or self.conn is None:
            return
        if incremental.from_ is spec.IncrementalFrom.LISTING_START:
            new: Value | None = listing_started
        else:
            new = self.pending
        if isinstance(new, datetime) and self.ceiling is not None and new > self.ceiling:
            new = self.ceiling
        if new is None and self.healed:
            new = self.value
        if new is None:
            return  # nothing seen (or an old checkpoint without the listing's start): keep it
        if self.value is not None and not _later(new, self.value):
            new = self.value
        await asyncio.to_thread(self.conn.call, advance, self.source.name, new, job_id)
