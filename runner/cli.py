"""The `syncrun` command: parses arguments, calls config/engine/migrations, maps errors to exit codes.

Exit codes: 0 completed; 1 failed (run-level failure, or failed/processed above fail_ratio);
2 bad configuration, missing table or column, bad usage; 130/143 stopped by SIGINT/SIGTERM;
70 internal error (a bug: the traceback is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import traceback
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from runner import config, database, engine, jobs, logs, migrations, ratelimit, spec, templating
from runner.errors import ConfigError, SyncrunError, UsageError
from runner.redaction import Redactor

log = logging.getLogger("syncrun")

EXIT_INTERNAL = 70
COMMANDS = ("validate", "migrate", "run", "demo")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in COMMANDS and not args[0].startswith("-"):
        args.insert(0, "run")  # `syncrun sources/x.yaml` is `syncrun run sources/x.yaml`
    parsed = _parser().parse_args(args)
    try:
        return int(parsed.handler(parsed, os.environ))
    except ConfigError as error:
        print(error, file=sys.stderr)
        print(f"{len(error.problems)} problem(s) found", file=sys.stderr)
        return error.exit_code
    except SyncrunError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:
        traceback.print_exc()
        print("syncrun hit an internal error (a bug): please report it with the traceback above", file=sys.stderr)
        return EXIT_INTERNAL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncrun", description="Declarative sync runner: HTTP APIs into PostgreSQL.")
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="check source files; exit 2 listing every problem")
    validate.add_argument("paths", nargs="*", type=Path, help="source files (default: sources/*.yaml)")
    validate.set_defaults(handler=_validate)

    migrate = commands.add_parser("migrate", help="create or upgrade syncrun's tables (idempotent)")
    migrate.add_argument("sources", nargs="*", type=Path, help="sources whose status columns to add")
    migrate.add_argument("--sql", action="store_true", help="print the DDL instead of applying it")
    migrate.set_defaults(handler=_migrate)

    run = commands.add_parser("run", help="run one or more sources (also: syncrun SOURCE.yaml)")
    run.add_argument("sources", nargs="+", type=Path)
    run.add_argument("--limit", type=int, help="entities per run (default: the source's entities.limit)")
    run.add_argument("--batch-size", type=int, dest="batch_size", help="alias of --limit (as the seed's BATCH_SIZE)")
    run.add_argument("--ids", help="comma-separated entity keys to run instead of the selection")
    run.add_argument("--dry-run", action="store_true", help="fetch, classify and map; print; write nothing")
    run.add_argument("--max-runtime", type=float, metavar="SECONDS", help="stop taking entities after this long")
    run.add_argument(
        "--grace", type=float, default=5.0, metavar="SECONDS", help="time in-flight entities get after a stop"
    )
    run.add_argument("--partition", help="static shard i/n of the selection (e.g. 0/4)")
    run.add_argument("--log-format", choices=("text", "json"), default="text")
    run.add_argument("--progress-every", type=int, default=100, metavar="N")
    run.add_argument(
        "--stale-after",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="reap running jobs without a heartbeat for this long",
    )
    run.set_defaults(handler=_run)

    demo = commands.add_parser("demo", help="run the example source against a local demo API on the embedded database")
    demo.set_defaults(handler=_demo)
    return parser


# --- validate ------------------------------------------------------------------------------------------
def _validate(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    paths = args.paths or config.default_paths()
    problems = 0
    for path in paths:
        try:
            config.load(path)
        except ConfigError as error:
            problems += len(error.problems)
            print(error)
        else:
            print(f"{path}: ok")
    if problems:
        print(f"{problems} problem(s) found", file=sys.stderr)
        return 2
    return 0


# --- migrate -------------------------------------------------------------------------------------------
def _migrate(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    sources = [config.load(path) for path in args.sources]
    if args.sql:
        print(migrations.migration_sql(sources))
        return 0
    with database.connect(database.dsn_from_env(environ)) as conn:
        applied = migrations.migrate(conn, sources)
    print(f"migrated: {applied}" if applied else "up to date")
    return 0


# --- run -----------------------------------------------------------------------------------------------
def _run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    sources = [config.load(path) for path in args.sources]
    options = _options(args, environ, sources)
    dsn = database.dsn_from_env(environ)
    secrets = [p for p in [database.password(dsn)] if p]
    settings = templating.resolve([s for src in sources for s in src.settings], environ, extra_secrets=secrets)
    logs.configure(args.log_format, settings.redact)
    reports = asyncio.run(_execute(sources, options, settings, dsn))
    for report in reports:
        if options.dry_run:
            _print_traces(report, settings.redact)
        _summarise(report)
    return max(_exit_code(report) for report in reports)


def _options(args: argparse.Namespace, environ: Mapping[str, str], sources: list[spec.Source]) -> engine.Options:
    limit = args.limit or args.batch_size or _env_int(environ, "BATCH_SIZE") or sources[0].entities.limit
    if limit <= 0:
        raise UsageError(f"--limit must be a positive integer, got {limit}")
    return engine.Options(
        limit=limit,
        ids=tuple(i.strip() for i in args.ids.split(",") if i.strip()) if args.ids else None,
        dry_run=args.dry_run,
        max_runtime=args.max_runtime,
        grace=args.grace,
        partition=_partition(args.partition),
        progress_every=max(1, args.progress_every),
        holder=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
        github_run_id=environ.get("GITHUB_RUN_ID") or None,
        stale_after=args.stale_after,
    )


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
    sources: list[spec.Source], options: engine.Options, settings: templating.Settings, dsn: str | None
) -> list[engine.Report]:
    needs_db = not (options.dry_run and options.ids and all(_key_only(s) for s in sources))
    target = await asyncio.to_thread(database.open_target, dsn) if needs_db else None
    catalog = None
    if target is not None:
        with target.connect() as conn:
            if target.embedded:
                migrations.migrate(conn, sources)
            catalog = migrations.check(conn, sources)
            reaped = jobs.reap(conn, options.stale_after)
            if reaped:
                log.warning(
                    "marked %d abandoned job(s) failed (no heartbeat for %ss)", reaped, int(options.stale_after)
                )
    limiters = ratelimit.limiters(s.rate_limit for s in sources)
    try:
        return await engine.run(
            sources,
            options,
            settings=settings,
            limiters=limiters,
            connect=target.connect if target else None,
            catalog=catalog,
        )
    finally:
        for limiter in limiters.values():
            limiter.close()


def _key_only(source: spec.Source) -> bool:
    return source.entities.column_names <= {source.entities.key}


def _exit_code(report: engine.Report) -> int:
    if report.status == "cancelled":
        return 128 + (report.signal or 15)
    return 0 if report.status == "completed" else 1


def _summarise(report: engine.Report) -> None:
    c = report.counters
    rate = c.requests / report.elapsed if report.elapsed else 0.0
    line = (
        f"{report.source}: {report.status} — processed {c.processed}, succeeded {c.succeeded}, "
        f"failed {c.failed}, skipped {c.skipped}; {c.requests} requests in {report.elapsed:.1f}s ({rate:.1f}/s)"
    )
    print(line + (f"; {report.error}" if report.error else ""), file=sys.stderr)


def _print_traces(report: engine.Report, redact: Redactor) -> None:
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
        for index, rows in result.rows.items():
            for row in rows:
                print(f"   row      {index}: {redact(repr(row))}")


# --- demo ----------------------------------------------------------------------------------------------
def _demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Serve the demo API, run sources/example.yaml against it on the embedded database, show the result."""
    from runner import demo  # the demo API is only imported when asked for

    source_path = _bundled_source("example.yaml")
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


def _bundled_source(name: str) -> Path:
    path = Path(__file__).resolve().parent.parent / "sources" / name
    if not path.exists():
        raise UsageError(f"{path} not found: run `syncrun demo` from a checkout of the syncrun repository")
    return path
