"""One reader per listing: a run of a list source holds a session-level PostgreSQL advisory lock,
keyed by the source's name, for as long as it reads (on a connection of its own, closed at the
end: a crashed runner's lock goes with its connection). A second run of the same source started
meanwhile (cron plus a manual run, two schedulers) does not resume the live run's checkpoint and
read the same pages again: it ends at once as `busy` (exit 75, EX_TEMPFAIL: try again later),
before any job row or request, naming the job that holds the listing.

A checkpoint belongs to the listing it was made for: it records the listing's URL (`address`: the
request URL with its env/secret settings filled in, redacted, the watermark left as `${…}`), and a
run whose URL differs (`--set request.url=…`, another `${env.API_URL}`) does not resume it: it says
so in the log and starts over. A checkpoint written before syncrun recorded the URL resumes as before.

Per-entity sources need none of this: their entities are claimed one by one (runner/selection.py).
A dry run reads no checkpoint and writes nothing, so it takes no lock. If the database connection
holding the lock is lost mid-run, so is the lock; the run's later checkpoint writes then fail with
the database anyway.
"""

from __future__ import annotations

from typing import Any

import psycopg

from runner import jobs, spec
from runner.spec import Source
from runner.templating import Settings

__all__ = ["BUSY", "KEY", "address", "holder", "resumable", "take"]

BUSY = "another run of {source} is reading its listing{job}; this run read nothing (exit 75: try again later)"


# The key: the source's name within the current schema (two projects sharing one database in
# different schemas, as the tests do, never block each other), hashed by PostgreSQL to 64 bits.
KEY = "hashtextextended('syncrun listing ' || current_schema() || ' ' || %s, 0)"


def take(conn: psycopg.Connection[Any], source: Source) -> bool:
    """Try to take the source's listing lock on `conn` (held until `conn` closes); False: it is held."""
    with conn.transaction():  # the lock is the session's: it outlives this transaction
        row = conn.execute(f"select pg_try_advisory_lock({KEY})", (source.name,)).fetchone()
    return bool(row and row[0])


def holder(conn: psycopg.Connection[Any], source: Source) -> str | None:
    """The id of the running job of the source (the likely holder), for the message."""
    with conn.transaction():
        running = [job for job in jobs.recent(conn, source.job_type, 5) if job.status == "running"]
    return running[0].id if running else None


def address(source: Source, settings: Settings) -> str:
    """The listing's URL as its checkpoint records it: settings filled in (so another `${env.API_URL}`
    is another listing), redacted, and whatever changes from run to run (the watermark) left as written."""
    parts: list[str] = []
    for segment in source.request.url.segments:
        if isinstance(segment, spec.Literal):
            parts.append(segment.text)
        elif isinstance(segment, spec.Setting) and (segment.kind, segment.name) in settings.values:
            parts.append(settings.values[(segment.kind, segment.name)])
        else:
            parts.append(f"${{{getattr(segment, 'kind', 'entity')}.{segment.name}}}")
    return settings.redact("".join(parts))


def resumable(checkpoint: jobs.Checkpoint, url: str) -> bool:
    """The checkpoint was made for this URL (or before checkpoints recorded one)."""
    return checkpoint.url is None or checkpoint.url == url
