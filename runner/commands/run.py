"""`syncrun run` (and `test-read`, the same path as a dry run explained): load, check the environment,
resolve settings, run the engine, print the summary; the exit code from the reports."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import psycopg

from runner import (
    auth,
    config,
    database,
    deletes,
    engine,
    events,
    explain,
    ids,
    jobs,
    logs,
    migrations,
    overrides,
    preflight,
    progress,
    ratelimit,
    replay,
    selection,
    spec,
    templating,
    workflow,
)
from runner.aiotransport import AiohttpTransport
from runner.commands import connections
from runner.commands.options import MAX_LIMIT, run_arguments
from runner.errors import DatabaseError, SettingError, UsageError
from runner.overrides import Override
from runner.redaction import Redactor

log = logging.getLogger("syncrun")


def handle(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    early = _early_connections(args, environ)
    try:
        return _handle(args, environ, early)
    except psycopg.Error as error:
        # the database refused a statement of the run's own (reaping old job rows without UPDATE on
        # sync_jobs, a job row's final update behind a trigger): the run's failure with the server's
        # message (exit 1), not a traceback (review revG F3)
        raise DatabaseError.refused(error) from error
    finally:
        if early is not None:
            early.close()


def _early_connections(args: argparse.Namespace, environ: Mapping[str, str]) -> database.Ahead | None:
    """A run against DATABASE_URL opens its connections (database.Ahead) while it reads its source
    files: only when the variable passes the preflight check (else that error is raised in its
    place, after the source files), and not for a dry run, which may need no database at all."""
    dsn = database.dsn_from_env(environ)
    if dsn is None or args.dry_run:
        return None
    try:
        preflight.check_environment(environ)
    except SettingError:
        return None
    return database.Ahead(database.Target(dsn, embedded=False).connect, 3 * len(args.sources))


def _handle(args: argparse.Namespace, environ: Mapping[str, str], early: database.Ahead | None) -> int:
    sets = overrides.parse(args.overrides)
    sources = [config.load(path, sets) for path in args.sources]
    options = _options(args, environ, sources, sets)
    preflight.check_environment(environ)  # a bad setting exits 2 here: before any request or job row
    dsn = database.dsn_from_env(environ)
    secrets, urls = connections.secrets(environ, dsn)
    settings = templating.resolve([s for src in sources for s in src.settings], environ, extra_secrets=secrets)
    settings.redact.add(*urls, fragments=False)
    preflight.check_settings(sources, settings)
    workflow.announce_masks(environ, [*settings.secrets, *secrets])
    # A token obtained mid-run (runner/tokens.py) is masked in the job's log as soon as it arrives.
    settings.redact.listen(lambda values: workflow.announce_masks(environ, values))
    logs.configure(workflow.log_format(args.log_format, environ), settings.redact)
    for override in sets:  # secrets cannot be overridden (runner/overrides.py): the values can be shown
        log.info("--set %s=%s", override.name, settings.redact(repr(override.value)))
    if sets:  # the job row keeps them as the log shows them: a secret's value given by mistake is masked
        shown = overrides.recorded(sets, settings.redact)
        options = replace(options, metadata={**options.metadata, "overrides": shown})
    observers = progress.observers(sources, options, environ)  # the step summary is written by one of them
    try:
        with _interruptible():
            reports = asyncio.run(_execute(sources, options, settings, dsn, _playback(args), observers, early))
    finally:
        progress.stop()
    for report in reports:
        if options.dry_run and getattr(args, "explain", False):
            explain.print_reports([report], sources, settings.redact)
        elif options.dry_run:
            _print_traces(report, next(s for s in sources if s.name == report.source), settings.redact)
        _summarise(report)
    return max(_exit_code(report) for report in reports)


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt (exit 130) wherever the run's start-up waits (review revA F5).
    asyncio.run's own SIGINT handler only cancels the main task, which a call blocking the event loop
    does not see: the first connect to a silent server held Ctrl-C for the 10 s connect timeout (and
    then exited 1), a check's query waiting on a lock held it for good. No job row exists until the
    engine runs, and the engine puts its graceful stop in place first (runner/engine/pipeline.py).
    A process that set SIGINT's handler itself (or ignores SIGINT) keeps it."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    signal.signal(signal.SIGINT, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # as Python's own handler: not that object, which asyncio.run replaces


def _options(
    args: argparse.Namespace, environ: Mapping[str, str], sources: list[spec.Source], sets: Sequence[Override] = ()
) -> engine.Options:
    given = args.limit or args.batch_size or _env_int(environ, "BATCH_SIZE")
    limit = given  # None: each source its own entities.limit (not the first source's for all)
    if limit is not None and not 0 < limit <= MAX_LIMIT:
        raise UsageError(f"--limit must be a whole number from 1 to {MAX_LIMIT}, got {limit}")
    ids_ = tuple(i.strip() for i in args.ids.split(",") if i.strip()) if args.ids is not None else None
    if ids_ is not None:  # every id named runs (review revJ F2); a limit with them is refused
        limit = ids.run_size(sources, ids_, "--limit" if args.limit else "--batch-size" if args.batch_size else None)
    if args.heartbeat * 2 > args.lease:  # review revD F2: claims lapsed between renewals (fetched twice)
        raise UsageError(
            f"--heartbeat ({args.heartbeat:g}s) must be at most half of --lease ({args.lease:g}s): claims are"
            " renewed every heartbeat, and one that lapses between renewals lets another runner take its entity"
        )
    return engine.Options(
        limit=limit,
        ids=ids_,
        dry_run=args.dry_run,
        max_runtime=args.max_runtime,
        grace=args.grace,
        partition=_partition(args.partition),
        progress_every=max(1, args.progress_every),
        holder=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
        github_run_id=environ.get("GITHUB_RUN_ID") or None,
        stale_after=args.stale_after,
        restart=args.restart,
        lease=args.lease,
        heartbeat_every=args.heartbeat,
        metadata={
            **({"replay": str(args.replay), "rate_scale": args.rate_scale} if args.replay else {}),
        },
        max_items=given,
        overridden=frozenset(o.name for o in sets),
    )


@dataclass(frozen=True, slots=True)
class _Playback:
    """Where HTTP goes: the network (optionally recorded) or a replay, and how fast time runs."""

    record: Path | None = None
    replay: Path | None = None
    rate_scale: float = 1.0


def _playback(args: argparse.Namespace) -> _Playback:
    if args.record and args.replay:
        raise UsageError("--record and --replay exclude each other")
    if args.rate_scale <= 0 or (args.rate_scale != 1.0 and not args.replay):
        raise UsageError("--rate-scale takes a positive number and only goes with --replay")
    return _Playback(args.record, args.replay, args.rate_scale)


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    if not value:  # an empty value counts as unset (workflow inputs send '')
        return None
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"{name} must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return number


def _partition(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--partition must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise UsageError(f"--partition {text}: i must be between 0 and n-1")
    return index, count


async def _execute(
    sources: list[spec.Source],
    options: engine.Options,
    settings: templating.Settings,
    dsn: str | None,
    playback: _Playback = _Playback(),
    observers: Sequence[events.Observer] = (),
    early: database.Ahead | None = None,
) -> list[engine.Report]:
    needs_db = not (options.dry_run and options.ids and all(ids.key_only(s) for s in sources))
    target = await asyncio.to_thread(database.open_target, dsn) if needs_db else None
    # Each source's three connections (select, write, job row; a dry run's select only) are opened
    # side by side (runner/engine/pipeline.py `_drive` takes them), if not already.
    per_source = 1 if options.dry_run else 3
    ahead = early or (database.Ahead(target.connect, per_source * len(sources)) if target else None)
    try:
        return await _checked_run(sources, options, settings, target, ahead, playback, observers)
    finally:
        if ahead is not None:
            ahead.close()


async def _checked_run(
    sources: list[spec.Source],
    options: engine.Options,
    settings: templating.Settings,
    target: database.Target | None,
    ahead: database.Ahead | None,
    playback: _Playback,
    observers: Sequence[events.Observer],
) -> list[engine.Report]:
    catalog = None
    if target is not None and ahead is not None:
        conn = ahead.connect()
        try:
            if target.embedded:
                migrations.migrate(conn, sources)
            catalog = migrations.check(conn, sources)
            for source in sources:  # a broken selection, or --ids it cannot supply, exits 2 before any job row
                selection.check(conn, source)
                if options.ids:
                    ids.missing(conn, source, options.ids)
            reaped = jobs.reap(conn, options.stale_after)
            if reaped:
                log.warning(
                    "marked %d abandoned job(s) failed (no heartbeat for %ss)", reaped, int(options.stale_after)
                )
            conn.commit()
        except BaseException:
            conn.close()  # rolled back
            raise
        # The checks planned the first source's selection on it (EXPLAIN): given back, it is that
        # source's select connection, its backend's catalog caches warm (its first claim ~3-6 ms sooner).
        ahead.give_back(conn)
    scale = playback.rate_scale
    rates = [replace(s.rate_limit, per=s.rate_limit.per / scale) for s in sources]
    if target is None:  # a dry run that needs no database limits itself in-process
        rates = [replace(rate, shared=spec.LimitScope.PROCESS) for rate in rates]
    limiters = ratelimit.limiters(
        rates,
        dsn=target.dsn if target else None,
        redis_url=ratelimit.redis_url_from_env(os.environ),
        time_scale=scale,
    )
    transport, recorders = _transports(playback, settings)
    try:
        return await engine.run(
            sources,
            options,
            settings=settings,
            limiters=limiters,
            connect=ahead.connect if ahead else None,
            catalog=catalog,
            transport=transport,
            sleep=(lambda seconds: asyncio.sleep(seconds / scale)) if scale != 1.0 else asyncio.sleep,
            tokens=auth.Tokens(stand_in=playback.replay is not None, grace=options.grace),  # a replay asks none
            observers=observers,
        )
    finally:
        for limiter in limiters.values():
            await limiter.aclose()
        for source in sources:
            if source.name in recorders and playback.record is not None:
                saved = recorders[source.name].save(playback.record / source.path.stem)
                print(f"recorded {len(recorders[source.name].interactions)} exchange(s) to {saved}", file=sys.stderr)


def _transports(
    playback: _Playback, settings: templating.Settings
) -> tuple[Callable[[spec.Source], httpx.AsyncBaseTransport] | None, dict[str, replay.RecordingTransport]]:
    recorders: dict[str, replay.RecordingTransport] = {}
    if playback.replay is not None:
        try:
            shared = replay.ReplayTransport(playback.replay, settings.redact)
        except FileNotFoundError as error:
            raise UsageError(str(error)) from None
        return (lambda source: shared), recorders
    if playback.record is not None:

        def recording(source: spec.Source) -> httpx.AsyncBaseTransport:
            # the transport of a normal run (runner/client.py `build`), so a recorded run sends alike
            limits = httpx.Limits(max_connections=source.concurrency, max_keepalive_connections=source.concurrency)
            inner = AiohttpTransport(verify=source.request.verify_tls, limits=limits)
            return recorders.setdefault(
                source.name, replay.RecordingTransport(inner, settings.redact, max_body=source.request.max_body)
            )

        return recording, recorders
    return None, recorders


def _exit_code(report: engine.Report) -> int:
    if report.status == "cancelled":
        return 128 + (report.signal or 15)
    if report.status == "busy":  # another run holds the listing (runner/listings.py): EX_TEMPFAIL
        return 75
    return 0 if report.status == "completed" else 1


# The summary line's note for a run --max-runtime ended (its job row: graceful_stop, stop_reason max_runtime)
STOPPED_EARLY = "stopped early: --max-runtime reached, no new entities were taken; the rest is left for the next run"


def _summarise(report: engine.Report) -> None:
    c = report.counters
    rate = c.requests / report.elapsed if report.elapsed else 0.0
    line = (
        f"{report.source}: {report.status} — processed {c.processed}, succeeded {c.succeeded}, "
        f"failed {c.failed}, skipped {c.skipped}{f', deleted {c.deleted}' if c.deleted else ''}"
        f"{f', unchanged {c.unchanged} (HTTP 304)' if c.unchanged else ''}"
        f"{f' (records of {pages} page{_s(pages)})' if (pages := report.metadata.get('pages')) else ''};"
        f" {c.requests} requests in {report.elapsed:.1f}s ({rate:.1f}/s)"
    )
    capped = f"{report.capped} entity listing{'' if report.capped == 1 else 's'} capped (not complete)"
    early = STOPPED_EARLY if report.metadata.get("stop_reason") == "max_runtime" else None
    notes = [note for note in (early, report.listing, capped if report.capped else None, report.error) if note]
    print(logs.printable("; ".join([line, *notes])), file=sys.stderr)  # an error may quote an entity key


def _s(count: object) -> str:
    return "" if count == 1 else "s"


def _print_traces(report: engine.Report, source: spec.Source, redact: Redactor) -> None:
    for trace in report.traces:
        result = trace.result
        key = result.key if result else trace.entity
        print(f"── {report.source} {key}")
        for url in trace.requests:
            print(f"   request  GET {redact(url)}")
        if trace.status is not None:
            print(f"   response {redact(trace.excerpt)} ({trace.elapsed * 1000:.0f} ms)")
        if result is None:
            continue
        print(f"   outcome  {result.outcome.value}" + (f" (rule: {trace.rule})" if trace.rule else ""))
        if result.error:
            print(f"   error    {redact(result.error)}")
        if result.outcome is spec.Outcome.DELETE:  # what a real run would remove (or keep), in its order
            for line in deletes.described(source, trace.entity):
                print(f"   {redact(line)}")
        for index, rows in result.rows.items():
            for row in rows:
                print(f"   row      {index}: {redact(repr(row))}")


def test_read(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`run --dry-run --ids` on the same code path, printed as an explanation. Every option test-read
    declares is forwarded to run's namespace under the same name (so run options added later, like
    --replay, need only be declared here too)."""
    forwarded = run_arguments([*map(str, args.sources)])
    for name, value in vars(args).items():
        if name not in ("handler", "command"):
            setattr(forwarded, name, value)
    forwarded.dry_run, forwarded.explain = True, True
    return handle(forwarded, environ)
