"""List-shaped sources (a paginated catalogue that feeds the entity table): the page is the unit.
Pages are read in order, each page's rows commit, then its cursor is checkpointed, so an interrupted
or capped listing resumes where it stopped."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from runner import database, fetch, jobs, listings, spec
from runner.engine import classification, writes
from runner.engine.report import LISTING_PAGE_FAILED, Trace
from runner.engine.state import PAGE, Run
from runner.errors import EntityError, PaginationError, RunFailed, Stopped
from runner.expressions import JSON
from runner.watermarks import Tracker
from runner.watermarks import text as watermark_text

log = logging.getLogger("syncrun")


async def read(state: Run, write_conn: database.Link | None, cursor_conn: database.Link | None) -> None:
    """List-shaped sources: the page is the unit. Pages are sequential (each needs the previous
    cursor); each page's rows commit, then its cursor is checkpointed with the listing's start time
    and page count, so an interrupted or capped run resumes where it stopped (`--restart` starts
    over). Reading to the natural end clears the checkpoint.

    A page either succeeds or is the listing's declared end (a skip by an outcome rule of the source's
    own, as SteamSpy's `end of catalogue`); anything else, a default rule's skip of a 404 included,
    fails the run: a listing with a hole in it is never complete."""
    source, options = state.source, state.options
    start, done = None, 0  # done: pages of this listing read by earlier runs
    recut = False  # the checkpoint resumed was left by a record cap cutting its page (position may be None)
    # `--set incremental.start=…` asks from that point for this run: a new listing, whatever was stored
    again = "incremental.start" in options.overridden and source.incremental is not None
    url = listings.address(source, state.settings)  # a checkpoint is resumed only by the same listing
    if cursor_conn is not None and not options.restart and not again:
        checkpoint = await asyncio.to_thread(cursor_conn.call, jobs.load_cursor, source.name)
        if checkpoint is not None and not listings.resumable(checkpoint, url):
            log.warning(
                "%s: the checkpoint was made for another URL (%s, now %s): not resumed, the listing starts over",
                source.name,
                checkpoint.url,
                url,
            )
        elif checkpoint is not None:
            start, done, state.listing_started = checkpoint.position, checkpoint.pages, checkpoint.listing_started_at
            recut = checkpoint.cut
            log.info(
                "%s: resuming at %s (use --restart to start over)",
                source.name,
                _where(state, start, done) if start is not None else "its first page",
            )
    # incremental: ${incremental.since}, advanced at the end, never past when the listing started
    marks = Tracker(source, cursor_conn, ceiling=state.listing_started or state.now)
    state.settings = await marks.begin(
        state.settings, restart=options.restart, resumed=start is not None, override=again
    )
    paged = _record_cap(source, options.max_items)
    pages = fetch.pages(state.http, paged, {}, state.settings, limiter=state.limiter, sleep=state.sleep, start=start)
    number, capped, resume = done, "", start
    try:
        while (page := await fetch.next_page(pages, state.stop, state.options.grace)) is not None:
            if page.keep is not None and number == done and (stalled := _stalled(state, recut, number)):
                state.complete = False
                state.halt("failed", stalled)
                return
            trace = Trace({PAGE: number}, items=page.items)
            try:
                trace.result = classification.classify(state, {PAGE: number}, [page.reply], trace, keep=page.keep)
                if (problem := _not_a_page(trace)) is not None:
                    trace.result = classification.failure(state, {PAGE: number}, problem, definitive=True)
            except EntityError as error:
                trace.result = classification.failure(state, {PAGE: number}, str(error), definitive=error.definitive)
            await writes.flush(state, write_conn, [trace])
            if trace.result is None or trace.result.outcome is spec.Outcome.ERROR:
                # The next cursor came from a page we could not use: stop here, resume later. A
                # listing that stopped early is never a completed run.
                state.complete = False
                state.halt(
                    "failed",
                    LISTING_PAGE_FAILED.format(
                        page=number + 1, error=trace.result.error if trace.result else "no result"
                    ),
                )
                return
            # A page cut by max_items is read again from its start when the listing resumes.
            number += 1 if page.keep is None else 0
            await marks.page(page.reply, trace.result.outcome, state.report.job_id)  # before the checkpoint
            if cursor_conn is not None:
                if page.resume is None and page.keep is None:
                    await asyncio.to_thread(cursor_conn.call, jobs.clear_cursor, source.name)
                elif state.settings.redact(str(page.resume)) != str(page.resume):
                    # A next link echoing a secret under a name the source does not send it as: never
                    # stored. The previous checkpoint stays: an interrupted listing re-reads pages.
                    log.warning("%s: the position of page %d holds a secret: not checkpointed", source.name, number + 1)
                else:
                    await asyncio.to_thread(
                        cursor_conn.call,
                        jobs.save_cursor,
                        source.name,
                        page.resume,
                        state.report.job_id,
                        listing_started_at=state.listing_started,
                        pages=number,
                        url=url,
                        cut=page.keep is not None,
                    )
            capped, resume = page.capped, page.resume
            if state.stop.is_set():
                break
        ended = number > done and resume is None and not capped  # the last page read had no next one
        if state.stop.is_set() and not ended and not capped:  # a signal, --max-runtime, a slow page: resume later
            _unfinished(state, "interrupted", "the run stopped before its end", resume, number)
            return
        if capped:  # declared by the user (or the default page cap): the run completes, the listing does not
            _unfinished(state, "capped", capped, resume, number)
            return
        # The pages ran out by themselves (an empty or last page): the whole catalogue was read, so
        # after-steps with `when: complete` may run and the next run starts over.
        state.report.metadata["listing"] = "complete"
        if state.listing_started is None:
            state.complete = False
            log.warning(
                "%s: the listing is complete, but it resumed from a checkpoint that did not record when the"
                " listing started; `when: complete` steps are not run this time",
                source.name,
            )
        else:
            state.report.metadata["listing_started_at"] = state.listing_started.isoformat()
        if cursor_conn is not None:
            await asyncio.to_thread(cursor_conn.call, jobs.clear_cursor, source.name)
        await marks.complete(state.listing_started, state.report.job_id)
    except RunFailed as error:
        state.complete = False
        state.halt("failed", state.settings.redact(str(error)))
    except Stopped:  # the next page's request never left: resume from the checkpoint
        _unfinished(state, "interrupted", "the run stopped before its end", resume, number)
    except PaginationError as error:  # going on would lose items: the listing is partial, the run fails
        state.complete = False
        state.halt("failed", str(error))
    except EntityError as error:
        state.complete = False
        trace = Trace({PAGE: number})
        trace.result = classification.failure(state, {PAGE: number}, str(error), definitive=error.definitive)
        await writes.flush(state, write_conn, [trace])
        state.halt("failed", LISTING_PAGE_FAILED.format(page=number + 1, error=error))
    finally:
        if marks.beyond:
            state.report.metadata["watermark_capped"] = marks.beyond
            log.warning(
                "%s: %d record(s) had an incremental.cursor later than when the listing started (latest %s):"
                " the watermark does not pass %s",
                source.name,
                marks.beyond,
                state.settings.redact(watermark_text(marks.latest) if marks.latest is not None else "?"),
                watermark_text(marks.ceiling) if marks.ceiling is not None else "?",
            )
        if not state.complete and "listing" not in state.report.metadata:
            state.report.metadata["listing"] = "failed" if state.report.status == "failed" else "interrupted"
        await pages.aclose()


def _record_cap(source: spec.Source, limit: int | None) -> spec.Source:
    """The source as this run pages it: an explicit --limit caps the records like max_items does."""
    cap = source.pagination.max_items
    if limit is None or (cap is not None and cap <= limit):
        return source
    return replace(source, pagination=replace(source.pagination, max_items=limit))


def _stalled(state: Run, recut: bool, number: int) -> str:
    """Review revK F8: a record cap (`--limit`, BATCH_SIZE, max_items) below a page's size cut the first
    page every run read, and every run resumed at that page's start again: the listing never got past
    it, each run reported `completed`. A run whose cap cuts the first page it reads makes no progress.
    A first cut of a page (a smoke run: `--limit 2`; or a run resuming where an uncapped run failed,
    review revM L2) writes its records, warns, and keeps a checkpoint there marked cut (a first page's
    position is None: one is kept all the same); a run resuming a checkpoint that a cap cut (`recut`)
    and cutting it again fails here, before writing, naming the setting. "" when the run may go on."""
    source, limit = state.source, state.options.max_items
    cap = source.pagination.max_items
    setting = (
        f"this run's record cap (--limit, --batch-size or BATCH_SIZE: {limit})"
        if limit is not None and (cap is None or limit < cap)
        else f"pagination.max_items ({cap})"
    )
    why = (
        "a capped listing resumes at the start of the page it cut, so with this cap every run would write the"
        f" same records of page {number + 1} and none would get past it"
    )
    if not recut:
        log.warning("%s: %s cut the first page this run read; %s", source.name, setting, why)
        return ""
    return (
        f"{source.name}: {setting} cut page {number + 1} of the listing, the first page this run read (where it"
        f" resumed), before its end: {why}; raise the cap above the page's records or run without it (an empty"
        " BATCH_SIZE), or use --restart to read the first records of the listing again"
    )


def _not_a_page(trace: Trace) -> str | None:
    """Why a list source's reply is neither a page nor the listing's declared end; None when it is one.
    A default rule's skip (a 404 from a typo'd URL) is not an end: taken as one, the `when: complete`
    cleanup would delete every row the listing wrote."""
    result = trace.result
    if result is None or result.outcome in (spec.Outcome.SUCCESS, spec.Outcome.ERROR):
        return None
    if trace.declared and result.outcome in (spec.Outcome.SKIP, spec.Outcome.SKIP_UNTIL):
        return None
    url = trace.requests[-1] if trace.requests else "?"
    how = f"the default outcome rule '{trace.rule}'" if not trace.declared else f"outcome rule '{trace.rule}'"
    return (
        f"HTTP {trace.status} from {url}: {how} files it as {result.outcome.value}, but a list source's page"
        " must succeed; only a skip by an outcome rule of the source's own ends a listing"
    )


def _where(state: Run, position: JSON, pages: int) -> str:
    """A checkpoint in words: `page 3 (cursor=abc)`, redacted."""
    name = state.source.pagination.param or "next page"
    return state.settings.redact(f"page {pages + 1} ({name}={position})")


def _unfinished(state: Run, kind: str, why: str, resume: JSON, pages: int) -> None:
    """A listing that stopped before its end without failing: capped or interrupted. The run says so
    (summary line, job metadata); its `when: complete` steps do not run."""
    state.complete = False
    # a cap that cut the first page read it (resume None: that page's own position, the first request)
    first = "its first page" if kind == "capped" else "its first page (no page was read)"
    where = _where(state, resume, pages) if resume is not None else first
    state.report.listing = f"listing not complete: {why}; resumes at {where}"
    state.report.metadata.update({"listing": kind, "resumes_at_page": pages + 1})
