"""One reader per listing: a run of a list source holds a *lease* on the source's listing, a row of
`syncrun_listings` (source -> holder, job id, expires_at), for as long as it reads. A second run
started meanwhile (cron plus a manual run, two schedulers) does not resume the live run's checkpoint
and read the same pages again: it ends at once as `busy` (exit 75, EX_TEMPFAIL: try again later),
before any job row or request, naming the job that holds the listing and when its lease lapses.

Why a row and not an advisory lock: a session-level lock belongs to a server connection, and behind
a transaction-mode pooler (pgbouncer, Supabase's :6543, which docs/troubleshooting.md recommends)
the lock stays on whichever pooled connection took it after the run ends, blocking every later run
until the pooler drops that connection (review16b N3). A lease is taken, renewed and released by
single statements, each its own transaction, so it works on any connection the pooler hands out.

The lease lasts LEASE_BEATS heartbeat intervals (30 s with the default `--heartbeat 5`) and is
renewed with the job's heartbeat. It can be taken over when it has lapsed (a SIGKILLed or frozen
holder: no heartbeat, review16b N4) or when its job row is no longer `running` (reaped by
`--stale-after`, or finished without releasing it). A holder that finds its lease taken over stops
reading (the run fails), so two readers never checkpoint the same listing. Times are the database's
`now()`, so runners' clocks need not agree.

A checkpoint belongs to the listing it was made for: it records the listing's URL (`address`: the
request URL and `request.query` with their env/secret settings filled in, redacted, the watermark left
as `${…}`), and a run whose URL or query differs (`--set request.url=…`, `--set request.query.type=…`,
another `${env.API_URL}`) does not resume it: it says
so in the log and starts over. A checkpoint written before syncrun recorded the URL resumes as before.

Per-entity sources need none of this: their entities are claimed one by one (runner/selection.py).
A dry run reads no checkpoint and writes nothing, so it takes no lease.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from runner import jobs, spec
from runner.database import identifier
from runner.migrations import JOBS_TABLE
from runner.spec import Source
from runner.templating import Settings

__all__ = ["BUSY", "LEASE_BEATS", "LOST", "Lease", "address", "resumable"]

BUSY = "another run of {source} is reading its listing{job}; this run read nothing (exit 75: try again later)"
LOST = (
    "the listing lease of {source} lapsed (no heartbeat renewed it within {seconds:g} s) and another run"
    " took it over: this run stopped reading"
)
LEASE_BEATS = 6  # heartbeat intervals a lease outlives its last renewal

# Taken in one statement: a new row, or a lapsed lease, or one whose job is no longer running (a job
# id is bound only once the job row exists: a lease without one can only lapse). Two runs racing
# here serialise on the row: the second sees the first's fresh lease and updates nothing.
_TAKE = """insert into syncrun_listings as l (source, holder, job_id, taken_at, expires_at)
values (%(source)s, %(holder)s, null, now(), now() + %(seconds)s * interval '1 second')
on conflict (source) do update set holder = excluded.holder, job_id = null, taken_at = now(),
    expires_at = excluded.expires_at
where l.expires_at < now()
    or (l.job_id is not null and not exists (select 1 from {jobs} j where j.id = l.job_id and j.status = 'running'))
returning l.holder"""
_HELD = """select l.job_id::text, l.expires_at, greatest(0, extract(epoch from l.expires_at - now()))::float8
from syncrun_listings l where l.source = %(source)s"""
_BIND = "update syncrun_listings set job_id = %(job)s where source = %(source)s and holder = %(holder)s"
_RENEW = """update syncrun_listings set expires_at = now() + %(seconds)s * interval '1 second'
where source = %(source)s and holder = %(holder)s"""
_RELEASE = "delete from syncrun_listings where source = %(source)s and holder = %(holder)s"


@dataclass(slots=True)
class Lease:
    """This run's claim on a source's listing. Each method is one short transaction on the
    connection it is given (a `database.Link`'s), so a pooler may hand out any server connection."""

    source: str
    heartbeat: float  # seconds between renewals; the lease lasts LEASE_BEATS of them
    holder: str = field(default_factory=lambda: uuid.uuid4().hex)
    busy: str = ""  # why `take` failed: the BUSY message

    @property
    def seconds(self) -> float:
        return LEASE_BEATS * self.heartbeat

    def _params(self, **more: Any) -> dict[str, Any]:
        return {"source": self.source, "holder": self.holder, "seconds": self.seconds, **more}

    def take(self, conn: psycopg.Connection[Any]) -> bool:
        """Take the lease; False (with `busy` set) when a live run holds it."""
        with conn.transaction():
            taken = conn.execute(sql.SQL(_TAKE).format(jobs=identifier(JOBS_TABLE)), self._params()).fetchone()
            held = None if taken else conn.execute(_HELD, self._params()).fetchone()
        if taken:
            return True
        self.busy = BUSY.format(source=self.source, job=_holder(held))
        return False

    def bind(self, conn: psycopg.Connection[Any], job_id: str) -> None:
        """Name the job holding the lease (for the busy message, and so a reaped job frees it)."""
        with conn.transaction():
            conn.execute(_BIND, self._params(job=job_id))

    def renew(self, conn: psycopg.Connection[Any]) -> bool:
        """Extend the lease (with the heartbeat); False: it lapsed and another run holds it now."""
        with conn.transaction():
            return conn.execute(_RENEW, self._params()).rowcount == 1

    def release(self, conn: psycopg.Connection[Any]) -> None:
        """Give the listing up at the end of the run, whatever the end (a lost one is not touched)."""
        with conn.transaction():
            conn.execute(_RELEASE, self._params())


def _holder(held: tuple[Any, ...] | None) -> str:
    if held is None:  # released between the two statements: the next run will get it
        return ""
    job, expires, left = held
    lapse = f"its lease lapses at {_utc(expires)} (in {left:.0f} s) unless renewed"
    return f" (job {job}; {lapse})" if job else f" ({lapse})"


def _utc(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def address(source: Source, settings: Settings) -> str:
    """The listing's URL and query as its checkpoint records them: settings filled in (so another
    `${env.API_URL}` or `${env.REGION}` is another listing), redacted, and whatever changes from run to
    run (the watermark) left as written. `request.query` is part of it (review13b N6): a filter
    parameter changed by `--set request.query.type=dlc` is another listing, not a place to resume;
    the pagination parameters are not in request.query, so they never are."""
    url = _rendered(source.request.url, settings)
    query = "&".join(f"{name}={_rendered(value, settings)}" for name, value in source.request.query)
    if query:
        url = f"{url}{'&' if '?' in url else '?'}{query}"
    return settings.redact(url)


def _rendered(template: spec.Template, settings: Settings) -> str:
    parts: list[str] = []
    for segment in template.segments:
        if isinstance(segment, spec.Literal):
            parts.append(segment.text)
        elif isinstance(segment, spec.Setting) and (value := settings.get(segment)) is not None:
            parts.append(value)
        else:
            parts.append(f"${{{getattr(segment, 'kind', 'entity')}.{segment.name}}}")
    return "".join(parts)


def resumable(checkpoint: jobs.Checkpoint, url: str) -> bool:
    """The checkpoint was made for this URL (or before checkpoints recorded one)."""
    return checkpoint.url is None or checkpoint.url == url
