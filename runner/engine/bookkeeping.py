"""A run's bookkeeping in the database: the heartbeat (job counters, claims, a listing's lease),
`before`/`after` steps, the run's conclusion (breaker message, fail_ratio) and the final job row."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

import psycopg

from runner import backoff, claims, database, jobs, listings, spec, steps
from runner.engine.report import FAIL_RATIO, busy
from runner.engine.state import Run
from runner.errors import DatabaseError

log = logging.getLogger("syncrun")


async def heartbeat(state: Run, job_link: database.Link | None) -> None:
    if job_link is None or state.report.job_id is None:
        return
    while True:
        await asyncio.sleep(state.options.heartbeat_every)
        counters = replace(state.report.counters, requests=state.limiter.requests)
        try:
            await asyncio.to_thread(job_link.call, jobs.heartbeat, state.report.job_id, counters)
            # Claims live as long as their runner does: renewed with the heartbeat, expire after a crash.
            await asyncio.to_thread(
                job_link.call, claims.renew, state.source, state.options.holder, state.options.lease
            )
            if state.lease is not None and not await asyncio.to_thread(job_link.call, state.lease.renew):
                state.halt("failed", listings.LOST.format(source=state.source.name, seconds=state.lease.seconds))
        except (DatabaseError, psycopg.Error) as error:
            log.warning("%s: heartbeat failed (%s); retrying at the next beat", state.source.name, error)


async def run_steps(state: Run, conn: database.Link, steps_: tuple[spec.Step, ...], phase: str) -> None:
    if not steps_:
        return
    complete = state.complete and state.report.status == "completed"
    # A list source's listing may span runs: its steps get the time the listing started (its first
    # run), so `delete … where seen_at < %(started_at)s` spares what the earlier runs of it wrote.
    listing = state.source.entities.type is spec.SelectionType.LIST
    started = state.listing_started if listing and state.listing_started is not None else state.now
    params = {"job_id": state.report.job_id, "started_at": started, "source": state.source.name}
    await asyncio.to_thread(conn.call, steps.run, steps_, phase=phase, complete=complete, params=params)


def conclude(state: Run) -> None:
    report, source = state.report, state.source
    report.elapsed = time.monotonic() - state.started
    report.counters = replace(report.counters, requests=state.limiter.requests)
    c = report.counters
    # "stopped" only if it stopped something: entities left unprocessed, or a selection not yet exhausted
    stopped = bool(state.unprocessed or state.inflight) or not state.exhausted
    if (state.breaker.late or not stopped) and (message := state.breaker.message(stopped=stopped)):
        log.error("%s: %s", source.name, message)
        report.error = state.settings.redact(message)
    if state.busy:
        # `--ids` names exactly what to run: a subset is no `completed` run (docs/cli.md, exit 1)
        message = busy(state.busy)
        log.warning("%s: %s", source.name, message)
        report.metadata["busy_ids"] = len(state.busy)
        state.complete = False
        if report.status == "completed":
            report.status, report.error = "failed", message
    if report.status == "completed" and c.processed and c.failed / c.processed > source.fail_ratio:
        report.status = "failed"
        what = "records" if source.entities.type is spec.SelectionType.LIST else "entities"
        report.error = FAIL_RATIO.format(failed=c.failed, processed=c.processed, what=what, ratio=source.fail_ratio)


def close(state: Run, job_link: database.Link | None) -> None:
    """Always finalise: a job row never stays `running` after its run is over (reconnecting if the
    database restarted under the run), and claims this run will not use are released."""
    report = state.report
    # Every way out counts the requests made: only a run that concluded set them, and one that failed
    # (a limiter's store gone, a bug) or was cut by a signal left the job row saying 0.
    report.counters = replace(report.counters, requests=state.limiter.requests)
    if job_link is None:
        return
    try:
        # a breaker run too: entities failing on every run must back off, or they stop every run (runner/breaker.py)
        if state.transients.keys:
            job_link.call(backoff.record, state.source, state.transients.keys)
    except (DatabaseError, psycopg.Error) as error:
        log.warning("%s: could not count transient failures (%s)", state.source.name, error)
    try:
        # Every claim still held, not just the keys known to be unfinished: entities queued for the
        # fetchers when the grace period cut them were in neither list (an `--ids` run SIGTERM'd with
        # requests hanging left 192 claims for the whole lease). A write releases its own claims.
        job_link.call(claims.release_held, state.source, state.options.holder)
    except (DatabaseError, psycopg.Error) as error:
        log.warning("%s: could not release claims (%s); they expire with their lease", state.source.name, error)
    if report.job_id is not None:
        job_link.call(
            jobs.finish, report.job_id, report.status, report.counters, report.error, metadata=report.metadata or None
        )
