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
from collections.abc import Callable, Sequence
from pathlib import Path

# Importing `run` (and through it httpx, aiohttp, psycopg, the specs) makes ~90,000
# objects the cyclic collector tracks, nearly all of them living as long as the process: its ~130
# passes over them while they were being made cost ~30 ms of every start. So the collector is off
# while they are imported, and they are then frozen out of its generations, so that the run's
# later full collections skip them too (enabling it alone only moved a full pass into the run).
_collecting = gc.isenabled()
gc.disable()
try:
    from runner import logs, migrations
    from runner.commands import options, run
    from runner.engine import pipeline
    from runner.errors import ConfigError, SyncrunError
finally:
    gc.freeze()
    if _collecting:
        gc.enable()
pipeline.start_up_frozen()

EXIT_INTERNAL = 70


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a message quoting odd input must print, not crash (exit 70)
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in COMMANDS and not args[0].startswith("-"):
        args.insert(0, "run")  # `syncrun sources/x.yaml` is `syncrun run sources/x.yaml`
    parsed = _parser(args[0] if args and args[0] in COMMANDS else None).parse_args(args)
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


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line. Given the subcommand the arguments name, only it is declared: argparse
    consults no other subcommand once the name has matched, and a subcommand's usage, help and errors
    are its own parser's. Without one, every subcommand is declared (for the top-level usage, help
    and errors, which list them all). Declaring all nine cost every start ~2 ms (~10M instructions:
    a parser, a help formatter and gettext's look-ups per argument); each `declare` imports its own
    subcommand's module, so a run imports none of the others."""
    parser = argparse.ArgumentParser(prog="syncrun", description="Declarative sync runner: HTTP APIs into PostgreSQL.")
    parser.add_argument("--version", action=_Version)
    # with one declared, the top-level usage (an unrecognized argument's error shows it) still names all nine
    listed = None if command is None else "{" + ",".join(_COMMANDS) + "}"
    commands = parser.add_subparsers(dest="command", required=True, metavar=listed)
    for name, (summary, declare) in _COMMANDS.items():
        if command in (None, name):
            declare(commands.add_parser(name, help=summary))
    return parser


# --- each subcommand's arguments (runner/commands/NAME.py handles it) ----------------------------------------
def _validate(parser: argparse.ArgumentParser) -> None:
    from runner.commands import validate

    parser.add_argument("paths", nargs="*", type=Path, help="source files (default: sources/*.yaml)")
    options.set_option(parser)
    parser.set_defaults(handler=validate.handle)


def _migrate(parser: argparse.ArgumentParser) -> None:
    from runner.commands import migrate

    parser.add_argument("sources", nargs="*", type=Path, help="sources whose status columns to add")
    parser.add_argument("--sql", action="store_true", help="print the DDL instead of applying it")
    parser.add_argument(
        "--tables",
        action="append",
        default=[],
        choices=migrations.bundled_tables(),
        help="also create a bundled source family's target tables (runner/sql/tables/NAME.sql), e.g. steam",
    )
    parser.set_defaults(handler=migrate.handle)


def _run(parser: argparse.ArgumentParser) -> None:
    options.run(parser)
    parser.set_defaults(handler=run.handle)


def _demo(parser: argparse.ArgumentParser) -> None:
    from runner.commands import demo

    parser.add_argument(
        "--example", action="store_true", help="run sources/example.yaml against a local demo API instead"
    )
    parser.add_argument(
        "--serve", action="store_true", help="only serve the example's demo API (until Ctrl-C), for your own runs"
    )
    parser.add_argument("--port", type=int, default=8765, help="with --serve: the port on 127.0.0.1 (default 8765)")
    parser.add_argument(
        "--seed",
        type=Path,
        metavar="SOURCE",
        help="with --serve: first create SOURCE's tables and the example tables, and add the demo's apps to its"
        " status table (DATABASE_URL, else the embedded database)",
    )
    parser.set_defaults(handler=demo.handle)


def _test_read(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--ids", required=True, help="comma-separated entity keys to read")
    parser.add_argument(
        "--replay", type=Path, metavar="DIR", help="serve HTTP from the cassettes under DIR; no network"
    )
    options.set_option(parser)
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.set_defaults(handler=run.test_read)


def _status(parser: argparse.ArgumentParser) -> None:
    from runner.commands import status

    parser.add_argument("sources", nargs="*", type=Path, help="source files (default: sources/*.yaml)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--runs", type=options.count, default=5, metavar="N", help="how many recent runs to show")
    parser.set_defaults(handler=status.handle)


def _workflow(parser: argparse.ArgumentParser) -> None:
    from runner.commands import workflow

    parser.add_argument("source", type=Path)
    parser.add_argument("--out", type=Path, help="write it to this file instead of printing it")
    parser.set_defaults(handler=workflow.handle)


def _new(parser: argparse.ArgumentParser) -> None:
    from runner.commands import new

    parser.add_argument("name", help="the source name (lower-case letters, digits and _)")
    parser.add_argument("--url", required=True, help="the endpoint, with {placeholders} for entity columns")
    parser.add_argument("--sample", type=Path, help="a JSON response of the endpoint (default: fetch the URL)")
    parser.add_argument("--id", help="without --sample: the key to fetch a sample of (fills the URL's placeholder)")
    parser.add_argument("--out", type=Path, help="where to write it (default: sources/NAME.yaml)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        help="'Name: value' as curl takes it (repeatable): sent to fetch the sample; Authorization or a key"
        " header becomes an auth: block reading a ${secret.*}, never the value itself",
    )
    parser.add_argument(
        "--auth", metavar="KIND", help="write a starter auth: block of KIND (bearer, api_key, basic, ...)"
    )
    parser.set_defaults(handler=new.handle)


def _init(parser: argparse.ArgumentParser) -> None:
    from runner.commands import init

    parser.add_argument("directory", nargs="?", type=Path, default=Path(), help="where (default: here)")
    parser.set_defaults(handler=init.handle)


# name: (help, its arguments), in the order `syncrun --help` lists them
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "validate": ("check source files; exit 2 listing every problem", _validate),
    "migrate": ("create or upgrade syncrun's tables (idempotent)", _migrate),
    "run": ("run one or more sources (also: syncrun SOURCE.yaml)", _run),
    "demo": ("replay every bundled Steam source into the embedded database, offline, and show the result", _demo),
    "test-read": ("fetch and map these entities, explain each step; write nothing", _test_read),
    "status": ("per source: due, never synced, backing off, failing; last runs", _status),
    "workflow": ("print a scheduled GitHub Actions workflow for a source", _workflow),
    "new": ("write a starter source file from a URL and a sample response", _new),
    "init": ("start a project: syncrun.yaml, an example source, workflows, README", _init),
}
COMMANDS = tuple(_COMMANDS)


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
