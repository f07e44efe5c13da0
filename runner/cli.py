"""The `syncrun` command: parses arguments, calls config/engine/migrations, maps errors to exit codes.

Exit codes: 0 completed; 1 failed (run-level failure, or failed/processed above fail_ratio);
2 bad configuration, missing table or column, bad usage; 130/143 stopped by SIGINT/SIGTERM;
70 internal error (a bug: the traceback is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import math
import os
import socket
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
from psycopg.conninfo import make_conninfo

from runner import (
    auth,
    config,
    database,
    deletes,
    engine,
    explain,
    ids,
    jobs,
    logs,
    migrations,
    overrides,
    ownership,
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
from runner.errors import ConfigError, SyncrunError, UsageError
from runner.overrides import Override
from runner.redaction import Redactor

log = logging.getLogger("syncrun")

EXIT_INTERNAL = 70
COMMANDS = ("validate", "migrate", "run", "demo", "test-read", "status", "workflow", "new", "init")


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a message quoting odd input must print, not crash (exit 70)
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in COMMANDS and not args[0].startswith("-"):
        args.insert(0, "run")  # `syncrun sources/x.yaml` is `syncrun run sources/x.yaml`
    parsed = _parser().parse_args(args)
    try:
        return int(parsed.handler(parsed, os.environ))
    except ConfigError as error:
        print(logs.redactor()(str(error)), file=sys.stderr)
        print(f"{len(error.problems)} problem(s) found", file=sys.stderr)
        return error.exit_code
    except SyncrunError as error:
        print(logs.redactor()(f"error: {error}"), file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:
        # a bug's traceback can quote anything it was handling, a token included
        print(logs.redactor()(traceback.format_exc()), end="", file=sys.stderr)
        print("syncrun hit an internal error (a bug): please report it with the traceback above", file=sys.stderr)
        return EXIT_INTERNAL


_MAX_LIMIT = 2**31 - 1  # sync_jobs.batch_size is an integer column
_LONGEST = 10 * 365 * 86400.0  # any longer wait is a typo, and the event loop cannot schedule 1e300 s


def _seconds(text: str) -> float:
    """A duration option: a finite number of seconds above 0 (argparse turns the error into exit 2)."""
    return _number(text, 0.0, _LONGEST, "a number of seconds above 0", low_allowed=False)


def _seconds_or_zero(text: str) -> float:
    return _number(text, 0.0, _LONGEST, "a number of seconds", low_allowed=True)


def _factor(text: str) -> float:
    return _number(text, 0.0, 1e6, "a number above 0", low_allowed=False)


def _number(text: str, low: float, high: float, what: str, *, low_allowed: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (low <= value <= high if low_allowed else low < value <= high):  # NaN fails both
        raise argparse.ArgumentTypeError(f"expected {what}, at most {high:.0f}, got {text!r}")
    return value


def _count(text: str) -> int:
    """A count option: a whole number from 1 (argparse turns the error into exit 2)."""
    if not text.isascii() or not text.isdigit() or len(text) > 10 or not 1 <= int(text) <= _MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {_MAX_LIMIT}, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncrun", description="Declarative sync runner: HTTP APIs into PostgreSQL.")
    parser.add_argument("--version", action="version", version=f"syncrun {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="check source files; exit 2 listing every problem")
    validate.add_argument("paths", nargs="*", type=Path, help="source files (default: sources/*.yaml)")
    _set_option(validate)
    validate.set_defaults(handler=_validate)

    migrate = commands.add_parser("migrate", help="create or upgrade syncrun's tables (idempotent)")
    migrate.add_argument("sources", nargs="*", type=Path, help="sources whose status columns to add")
    migrate.add_argument("--sql", action="store_true", help="print the DDL instead of applying it")
    migrate.add_argument(
        "--tables",
        action="append",
        default=[],
        choices=migrations.bundled_tables(),
        help="also create a bundled source family's target tables (runner/sql/tables/NAME.sql), e.g. steam",
    )
    migrate.set_defaults(handler=_migrate)

    run = commands.add_parser("run", help="run one or more sources (also: syncrun SOURCE.yaml)")
    run.add_argument("sources", nargs="+", type=Path)
    run.add_argument("--limit", type=_count, help="entities per run (default: the source's entities.limit)")
    run.add_argument("--batch-size", type=_count, dest="batch_size", help="alias of --limit (as the seed's BATCH_SIZE)")
    run.add_argument("--ids", help="comma-separated entity keys to run instead of the selection")
    run.add_argument("--dry-run", action="store_true", help="fetch, classify and map; print; write nothing")
    run.add_argument("--max-runtime", type=_seconds, metavar="SECONDS", help="stop taking entities after this long")
    run.add_argument(
        "--grace",
        type=_seconds_or_zero,
        default=5.0,
        metavar="SECONDS",
        help="time in-flight entities get after a stop",
    )
    run.add_argument("--partition", help="static shard i/n of the selection (e.g. 0/4)")
    run.add_argument(
        "--lease",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="how long a claim on an entity lives without a heartbeat (a crashed runner's entities free up after it)",
    )
    run.add_argument(
        "--heartbeat", type=_seconds, default=5.0, metavar="SECONDS", help="job heartbeat and claim renewal interval"
    )
    run.add_argument(
        "--restart",
        action="store_true",
        help="forget a list source's checkpoint and watermark, or a per-entity source's validators",
    )
    run.add_argument("--record", type=Path, metavar="DIR", help="save the run's HTTP exchanges (secrets masked) to DIR")
    run.add_argument("--replay", type=Path, metavar="DIR", help="serve HTTP from the cassettes under DIR; no network")
    run.add_argument(
        "--rate-scale",
        type=_factor,
        default=1.0,
        metavar="K",
        help="with --replay: run the rate limiter and every wait K times faster (recorded in the job row)",
    )
    _set_option(run)
    run.add_argument("--log-format", choices=("text", "json"), default="text")
    run.add_argument("--progress-every", type=_count, default=100, metavar="N")
    run.add_argument(
        "--stale-after",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="reap running jobs without a heartbeat for this long",
    )
    run.set_defaults(handler=_run)

    demo = commands.add_parser(
        "demo", help="replay every bundled Steam source into the embedded database, offline, and show the result"
    )
    demo.add_argument(
        "--example", action="store_true", help="run sources/example.yaml against a local demo API instead"
    )
    demo.add_argument(
        "--serve", action="store_true", help="only serve the example's demo API (until Ctrl-C), for your own runs"
    )
    demo.add_argument("--port", type=int, default=8765, help="with --serve: the port on 127.0.0.1 (default 8765)")
    demo.add_argument(
        "--seed",
        type=Path,
        metavar="SOURCE",
        help="with --serve: first create SOURCE's tables and the example tables, and add the demo's apps to its"
        " status table (DATABASE_URL, else the embedded database)",
    )
    demo.set_defaults(handler=_demo)
    _more_commands(commands)
    _project_commands(commands)
    return parser


def _set_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="PATH=VALUE",
        help="override a setting of the source files for this run, e.g. pagination.max_items=2 or"
        " rate_limit.per=1s (repeatable; validated like the file; not for auth, headers or secrets)",
    )


# --- validate ------------------------------------------------------------------------------------------
def _validate(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    paths = args.paths or config.default_paths()
    sets = overrides.parse(args.overrides)
    problems = 0
    loaded: dict[Path, spec.Source] = {}
    for path in paths:
        try:
            loaded[path] = config.load(path, sets)
        except ConfigError as error:
            problems += len(error.problems)
            print(error)
        else:
            print(f"{path}: ok")
    shared = ownership.problems(loaded)  # across files: two sources writing one column
    for problem in shared:
        print(problem)
    problems += len(shared)
    if problems:
        print(f"{problems} problem(s) found", file=sys.stderr)
        return 2
    return 0


# --- migrate -------------------------------------------------------------------------------------------
def _migrate(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    sources = [config.load(path) for path in args.sources]
    tables = [migrations.tables_sql(name) for name in args.tables]
    if args.sql:
        print("\n".join([migrations.migration_sql(sources), *tables]))
        return 0
    preflight.check_environment(environ)
    with database.connect(database.dsn_from_env(environ)) as conn:
        changed: list[str] = []
        applied = migrations.migrate(conn, sources, changed=changed)
        for name, script in zip(args.tables, tables, strict=True):
            with conn.transaction():
                conn.execute(script)  # idempotent DDL: `if not exists` throughout
            applied.append(f"tables/{name}")
    if applied:
        print(f"migrated: {applied}")
    for change in changed:
        print(change)
    if not applied and not changed:
        print("up to date: nothing to create or add")
    return 0


# --- run -----------------------------------------------------------------------------------------------
def _run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    sets = overrides.parse(args.overrides)
    sources = [config.load(path, sets) for path in args.sources]
    options = _options(args, environ, sources, sets)
    preflight.check_environment(environ)  # a bad setting exits 2 here: before any request or job row
    dsn = database.dsn_from_env(environ)
    secrets, urls = _connection_secrets(environ, dsn)
    settings = templating.resolve([s for src in sources for s in src.settings], environ, extra_secrets=secrets)
    settings.redact.add(*urls, fragments=False)
    preflight.check_settings(sources, settings)
    workflow.announce_masks(environ, [v for (kind, _), v in settings.values.items() if kind == "secret"] + secrets)
    # A token obtained mid-run (runner/tokens.py) is masked in the job's log as soon as it arrives.
    settings.redact.listen(lambda values: workflow.announce_masks(environ, values))
    logs.configure(workflow.log_format(args.log_format, environ), settings.redact)
    for override in sets:  # secrets cannot be overridden (runner/overrides.py): the values can be shown
        log.info("--set %s=%s", override.name, settings.redact(repr(override.value)))
    if sets:  # the job row keeps them as the log shows them: a secret's value given by mistake is masked
        shown = overrides.recorded(sets, settings.redact)
        options = replace(options, metadata={**options.metadata, "overrides": shown})
    listed = any(s.entities.type is spec.SelectionType.LIST for s in sources)  # pages, not entities: no total
    progress.start([s.name for s in sources], None if listed else len(options.ids) if options.ids else options.limit)
    try:
        reports = asyncio.run(_execute(sources, options, settings, dsn, _playback(args)))
    finally:
        progress.stop()
    for report in reports:
        if options.dry_run and getattr(args, "explain", False):
            explain.print_reports([report], sources, settings.redact)
        elif options.dry_run:
            _print_traces(report, next(s for s in sources if s.name == report.source), settings.redact)
        _summarise(report)
    workflow.write_step_summary(environ, reports, progress.top_errors())
    return max(_exit_code(report) for report in reports)


def _options(
    args: argparse.Namespace, environ: Mapping[str, str], sources: list[spec.Source], sets: Sequence[Override] = ()
) -> engine.Options:
    given = args.limit or args.batch_size or _env_int(environ, "BATCH_SIZE")
    limit = given or sources[0].entities.limit
    if not 0 < limit <= _MAX_LIMIT:
        raise UsageError(f"--limit must be a whole number from 1 to {_MAX_LIMIT}, got {limit}")
    ids = tuple(i.strip() for i in args.ids.split(",") if i.strip()) if args.ids else None
    for source in sources:  # keys of the source's type, or a usage error before any job row
        for value in ids or ():
            selection.cast_key(source, value)
    return engine.Options(
        limit=limit,
        ids=ids,
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
) -> list[engine.Report]:
    needs_db = not (options.dry_run and options.ids and all(ids.key_only(s) for s in sources))
    target = await asyncio.to_thread(database.open_target, dsn) if needs_db else None
    catalog = None
    if target is not None:
        with target.connect() as conn:
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
            connect=target.connect if target else None,
            catalog=catalog,
            transport=transport,
            sleep=(lambda seconds: asyncio.sleep(seconds / scale)) if scale != 1.0 else asyncio.sleep,
            tokens=auth.Tokens(stand_in=playback.replay is not None),  # a replay asks no token endpoint
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
    print("; ".join([line, *notes]), file=sys.stderr)


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


# --- demo ----------------------------------------------------------------------------------------------
def _demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """The Steam sources from their replays on the embedded database (or, with --example, the example
    source against a local demo API), through the normal run path; then what was written."""
    from runner import demo  # the demo API is only imported when asked for

    if args.serve:
        return _serve_demo(args, environ)
    if args.example:
        return _example_demo(environ)
    root = _checkout()
    sources = [root / "sources" / f"{stem}.yaml" for stem in demo.STEAM_ORDER]
    specs = [config.load(path) for path in sources]
    target = database.open_target(None)  # the demo never touches the database DATABASE_URL names
    with target.connect() as conn:
        demo.fresh_database(conn)
    dsn = make_conninfo(target.dsn, dbname=demo.DEMO_DATABASE)
    with database.connect(dsn) as conn:
        migrations.migrate(conn, specs)
        demo.steam_prepare(conn, root)
    local = {**environ, "DATABASE_URL": dsn, "STEAM_API_KEY": "demo-key"}
    print(f"replaying {len(sources)} Steam sources into {database.redact_dsn(dsn)}", file=sys.stderr)
    codes = []
    for path in sources:
        replayed = root / "sources" / "replays" / path.stem
        run_args = ["run", str(path), "--replay", str(replayed), "--rate-scale", "50", "--progress-every", "50"]
        codes.append(int(_run(_parser().parse_args(run_args), local)))
    with database.connect(dsn) as conn:
        print(demo.steam_summary(conn))
    return max(codes)


def _example_demo(environ: Mapping[str, str]) -> int:
    from runner import demo

    source_path = _checkout() / "sources" / "example.yaml"
    source = config.load(source_path)
    local = {k: v for k, v in environ.items() if k != "DATABASE_URL"}  # the demo never touches your database
    target = database.open_target(None)
    with target.connect() as conn:
        migrations.migrate(conn, [source])
        demo.prepare(conn)
    with demo.serve() as url:
        print(f"demo API on {url}; embedded PostgreSQL at {target.describe()}", file=sys.stderr)
        code = _run_demo(source_path, {**local, "EXAMPLE_API_URL": url})
    with target.connect() as conn:
        print(demo.summary(conn, source.job_type))
    return code


def _run_demo(source_path: Path, environ: Mapping[str, str]) -> int:
    args = _parser().parse_args(["run", str(source_path), "--progress-every", "10"])
    return int(_run(args, environ))


def _checkout() -> Path:
    from runner import demo

    return demo.bundled_root()  # the wheel's package data, or the checkout's sources/


# --- test-read, status, workflow, new (runner/explain.py, overview.py, workflow.py, scaffold.py) ---------
def _more_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    read = commands.add_parser("test-read", help="fetch and map these entities, explain each step; write nothing")
    read.add_argument("sources", nargs="+", type=Path)
    read.add_argument("--ids", required=True, help="comma-separated entity keys to read")
    read.add_argument("--replay", type=Path, metavar="DIR", help="serve HTTP from the cassettes under DIR; no network")
    _set_option(read)
    read.add_argument("--log-format", choices=("text", "json"), default="text")
    read.set_defaults(handler=_test_read)

    status = commands.add_parser("status", help="per source: due, never synced, backing off, failing; last runs")
    status.add_argument("sources", nargs="*", type=Path, help="source files (default: sources/*.yaml)")
    status.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    status.add_argument("--runs", type=_count, default=5, metavar="N", help="how many recent runs to show")
    status.set_defaults(handler=_status)

    flow = commands.add_parser("workflow", help="print a scheduled GitHub Actions workflow for a source")
    flow.add_argument("source", type=Path)
    flow.add_argument("--out", type=Path, help="write it to this file instead of printing it")
    flow.set_defaults(handler=_workflow)

    new = commands.add_parser("new", help="write a starter source file from a URL and a sample response")
    new.add_argument("name", help="the source name (lower-case letters, digits and _)")
    new.add_argument("--url", required=True, help="the endpoint, with {placeholders} for entity columns")
    new.add_argument("--sample", type=Path, help="a JSON response of the endpoint (default: fetch the URL)")
    new.add_argument("--id", help="without --sample: the key to fetch a sample of (fills the URL's placeholder)")
    new.add_argument("--out", type=Path, help="where to write it (default: sources/NAME.yaml)")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    new.add_argument(
        "--header",
        action="append",
        default=[],
        help="'Name: value' as curl takes it (repeatable): sent to fetch the sample; Authorization or a key"
        " header becomes an auth: block reading a ${secret.*}, never the value itself",
    )
    new.add_argument("--auth", metavar="KIND", help="write a starter auth: block of KIND (bearer, api_key, basic, ...)")
    new.set_defaults(handler=_new)


def _test_read(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`run --dry-run --ids` on the same code path, printed as an explanation. Every option test-read
    declares is forwarded to run's namespace under the same name (so run options added later, like
    --replay, need only be declared here too)."""
    forwarded = _parser().parse_args(["run", *map(str, args.sources)])
    for name, value in vars(args).items():
        if name not in ("handler", "command"):
            setattr(forwarded, name, value)
    forwarded.dry_run, forwarded.explain = True, True
    return _run(forwarded, environ)


def _status(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from runner import overview

    sources = [config.load(path) for path in args.sources or config.default_paths()]
    if args.runs <= 0:
        raise UsageError(f"--runs must be a positive integer, got {args.runs}")
    preflight.check_environment(environ)
    dsn = database.dsn_from_env(environ)
    target = database.open_target(dsn)
    with target.connect() as conn:
        states = [overview.collect(conn, source, runs=args.runs) for source in sources]
    # Settings are not resolved (status needs no API token), but any secret that is set is masked.
    names = sorted({s.name for src in sources for s in src.settings if s.kind == "secret"})
    secrets, urls = _connection_secrets(environ, dsn)
    redact = Redactor([*(environ.get(name) for name in names), *secrets], whole=urls)
    print(overview.to_json(states, redact) if args.json else overview.format_text(states, redact), end="")
    return 0


def _connection_secrets(environ: Mapping[str, str], dsn: str | None) -> tuple[list[str], list[str]]:
    """The DATABASE_URL and SYNCRUN_REDIS_URL passwords (every form), and those URLs whole when they
    have one: what the redactor must mask besides the `${secret.*}` values."""
    urls = [url for url in (dsn, ratelimit.redis_url_from_env(environ)) if url and database.passwords(url)]
    return [p for url in urls for p in database.passwords(url)], urls


def _workflow(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    source = config.load(args.source)
    path = args.source.as_posix()
    if args.source.is_absolute() and args.source.is_relative_to(Path.cwd()):
        path = args.source.relative_to(Path.cwd()).as_posix()
    text = workflow.render(source, path)
    if args.out is None:
        print(text, end="")
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _new(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from runner import scaffold, starters

    out = args.out or Path("sources") / f"{args.name}.yaml"
    given = starters.parse_headers(args.header)
    url, keys = starters.credentials(args.url)  # the URL's credentials become ${secret.*}
    redact = starters.redactor(given, keys)  # no piece of a value given here reaches the file or an output
    try:
        sample, headers = (
            (scaffold.read_sample(args.sample), {}) if args.sample else scaffold.fetch_reply(args.url, args.id, given)
        )
        starter = starters.starter(args.name, given, args.auth, keys)
        reply_headers = {name: redact(value) for name, value in headers.items()}
        text = scaffold.source_text(args.name, url, redact.value(sample), out, reply_headers, starter)
    except UsageError as error:
        raise UsageError(redact(str(error))) from None
    scaffold.write(out, redact(text), force=args.force)
    print(f"wrote {out}: edit it, then {scaffold.next_steps(out, not scaffold.placeholders(url), args.name)}")
    if starter.secrets:
        print(f"it reads the secrets {', '.join(dict.fromkeys(starter.secrets))}: set them before running")
    return 0


# --- init, demo --serve, --version (runner/project.py, demo.py) -------------------------------------------
def _project_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = commands.add_parser("init", help="start a project: syncrun.yaml, an example source, workflows, README")
    init.add_argument("directory", nargs="?", type=Path, default=Path(), help="where (default: here)")
    init.set_defaults(handler=_init)


def _version() -> str:
    from runner import project

    return project.version()


def _init(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from runner import project

    written, kept = project.init(args.directory)
    for path in written:
        print(f"wrote {path}")
    for path in kept:
        print(f"kept {path} as it is", file=sys.stderr)
    if args.directory / ".gitignore" in kept:
        print("add .syncrun/ (the embedded database) to your .gitignore", file=sys.stderr)
    where = "" if args.directory == Path() else f"cd {args.directory} && "
    print(f"next: {where}syncrun validate && syncrun demo --serve --seed sources/example.yaml", file=sys.stderr)
    return 0


def _serve_demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """The example's demo API on 127.0.0.1:PORT until interrupted; with --seed, its tables and apps first."""
    from runner import demo

    if args.seed is not None:
        source = config.load(args.seed)
        if source.status is None:
            raise UsageError(f"--seed {args.seed}: the source has no status table to add the demo's apps to")
        preflight.check_environment(environ)
        target = database.open_target(database.dsn_from_env(environ))
        with target.connect() as conn:
            migrations.migrate(conn, [source])
            with conn.transaction():
                conn.execute(migrations.tables_sql("example"))
            status = source.status
            added = demo.seed(conn, database.identifier(status.table), status.key)
        print(f"{target.describe()}: example tables ready, {added} demo app(s) added to {status.table}")
    with demo.serve(args.port) as url:
        print(f"demo API on {url} (Ctrl-C stops it)", flush=True)
        threading.Event().wait()  # Ctrl-C: main's handler exits 130
    return 0
