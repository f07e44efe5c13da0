"""The `syncrun` command: parses arguments, hands them to the subcommand's module (runner/commands/),
maps errors to exit codes.

Exit codes: 0 completed; 1 failed (run-level failure, or failed/processed above fail_ratio);
2 bad configuration, missing table or column, bad usage; 130/143 stopped by SIGINT/SIGTERM;
70 internal error (a bug: the traceback is printed).
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

# Importing the subcommands (and through them httpx, aiohttp, psycopg, the specs) makes ~90,000
# objects the cyclic collector tracks, nearly all of them living as long as the process: its ~130
# passes over them while they were being made cost ~30 ms of every start. So the collector is off
# while they are imported, and they are then frozen out of its generations, so that the run's
# later full collections skip them too (enabling it alone only moved a full pass into the run).
_collecting = gc.isenabled()
gc.disable()
try:
    from runner import logs, migrations
    from runner.commands import demo, init, migrate, new, options, run, status, validate, workflow
    from runner.engine import pipeline
    from runner.errors import ConfigError, SyncrunError
finally:
    gc.freeze()
    if _collecting:
        gc.enable()
pipeline.start_up_frozen()

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncrun", description="Declarative sync runner: HTTP APIs into PostgreSQL.")
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True)

    validate_parser = commands.add_parser("validate", help="check source files; exit 2 listing every problem")
    validate_parser.add_argument("paths", nargs="*", type=Path, help="source files (default: sources/*.yaml)")
    options.set_option(validate_parser)
    validate_parser.set_defaults(handler=validate.handle)

    migrate_parser = commands.add_parser("migrate", help="create or upgrade syncrun's tables (idempotent)")
    migrate_parser.add_argument("sources", nargs="*", type=Path, help="sources whose status columns to add")
    migrate_parser.add_argument("--sql", action="store_true", help="print the DDL instead of applying it")
    migrate_parser.add_argument(
        "--tables",
        action="append",
        default=[],
        choices=migrations.bundled_tables(),
        help="also create a bundled source family's target tables (runner/sql/tables/NAME.sql), e.g. steam",
    )
    migrate_parser.set_defaults(handler=migrate.handle)

    run_parser = commands.add_parser("run", help="run one or more sources (also: syncrun SOURCE.yaml)")
    options.run(run_parser)
    run_parser.set_defaults(handler=run.handle)

    demo_parser = commands.add_parser(
        "demo", help="replay every bundled Steam source into the embedded database, offline, and show the result"
    )
    demo_parser.add_argument(
        "--example", action="store_true", help="run sources/example.yaml against a local demo API instead"
    )
    demo_parser.add_argument(
        "--serve", action="store_true", help="only serve the example's demo API (until Ctrl-C), for your own runs"
    )
    demo_parser.add_argument(
        "--port", type=int, default=8765, help="with --serve: the port on 127.0.0.1 (default 8765)"
    )
    demo_parser.add_argument(
        "--seed",
        type=Path,
        metavar="SOURCE",
        help="with --serve: first create SOURCE's tables and the example tables, and add the demo's apps to its"
        " status table (DATABASE_URL, else the embedded database)",
    )
    demo_parser.set_defaults(handler=demo.handle)
    _more_commands(commands)
    _project_commands(commands)
    return parser


# --- test-read, status, workflow, new (runner/commands/run.py, status.py, workflow.py, new.py) -------------
def _more_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    read_parser = commands.add_parser(
        "test-read", help="fetch and map these entities, explain each step; write nothing"
    )
    read_parser.add_argument("sources", nargs="+", type=Path)
    read_parser.add_argument("--ids", required=True, help="comma-separated entity keys to read")
    read_parser.add_argument(
        "--replay", type=Path, metavar="DIR", help="serve HTTP from the cassettes under DIR; no network"
    )
    options.set_option(read_parser)
    read_parser.add_argument("--log-format", choices=("text", "json"), default="text")
    read_parser.set_defaults(handler=run.test_read)

    status_parser = commands.add_parser("status", help="per source: due, never synced, backing off, failing; last runs")
    status_parser.add_argument("sources", nargs="*", type=Path, help="source files (default: sources/*.yaml)")
    status_parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    status_parser.add_argument(
        "--runs", type=options.count, default=5, metavar="N", help="how many recent runs to show"
    )
    status_parser.set_defaults(handler=status.handle)

    flow_parser = commands.add_parser("workflow", help="print a scheduled GitHub Actions workflow for a source")
    flow_parser.add_argument("source", type=Path)
    flow_parser.add_argument("--out", type=Path, help="write it to this file instead of printing it")
    flow_parser.set_defaults(handler=workflow.handle)

    new_parser = commands.add_parser("new", help="write a starter source file from a URL and a sample response")
    new_parser.add_argument("name", help="the source name (lower-case letters, digits and _)")
    new_parser.add_argument("--url", required=True, help="the endpoint, with {placeholders} for entity columns")
    new_parser.add_argument("--sample", type=Path, help="a JSON response of the endpoint (default: fetch the URL)")
    new_parser.add_argument("--id", help="without --sample: the key to fetch a sample of (fills the URL's placeholder)")
    new_parser.add_argument("--out", type=Path, help="where to write it (default: sources/NAME.yaml)")
    new_parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    new_parser.add_argument(
        "--header",
        action="append",
        default=[],
        help="'Name: value' as curl takes it (repeatable): sent to fetch the sample; Authorization or a key"
        " header becomes an auth: block reading a ${secret.*}, never the value itself",
    )
    new_parser.add_argument(
        "--auth", metavar="KIND", help="write a starter auth: block of KIND (bearer, api_key, basic, ...)"
    )
    new_parser.set_defaults(handler=new.handle)


# --- init, --version (runner/commands/init.py, runner/project.py) ------------------------------------------
def _project_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init_parser = commands.add_parser(
        "init", help="start a project: syncrun.yaml, an example source, workflows, README"
    )
    init_parser.add_argument("directory", nargs="?", type=Path, default=Path(), help="where (default: here)")
    init_parser.set_defaults(handler=init.handle)


class _Version(argparse._VersionAction):
    """argparse's `--version`, the text asked for only when it is printed: finding the installed
    distribution's metadata (and importing runner.project, runner.demo and http.server with it) cost
    every start ~2 ms."""

    @property
    def version(self) -> str:
        from runner import project

        return f"syncrun {project.version()}"

    @version.setter
    def version(self, value: str | None) -> None:
        pass  # argparse sets None at construction
