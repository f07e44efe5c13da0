"""The command line's option types and `run`'s options, declared once: runner/cli.py adds them to its
`run` parser, and `demo` and `test-read` build a `run` with the same defaults from them (`run_arguments`)
without going back up to the command line."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

MAX_LIMIT = 2**31 - 1  # sync_jobs.batch_size is an integer column
_LONGEST = 10 * 365 * 86400.0  # any longer wait is a typo, and the event loop cannot schedule 1e300 s


def seconds(text: str) -> float:
    """A duration option: a finite number of seconds above 0 (argparse turns the error into exit 2)."""
    return _number(text, 0.0, _LONGEST, "a number of seconds above 0", low_allowed=False)


def seconds_or_zero(text: str) -> float:
    return _number(text, 0.0, _LONGEST, "a number of seconds", low_allowed=True)


def factor(text: str) -> float:
    return _number(text, 0.0, 1e6, "a number above 0", low_allowed=False)


def _number(text: str, low: float, high: float, what: str, *, low_allowed: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (low <= value <= high if low_allowed else low < value <= high):  # NaN fails both
        raise argparse.ArgumentTypeError(f"expected {what}, at most {high:.0f}, got {text!r}")
    return value


def count(text: str) -> int:
    """A count option: a whole number from 1 (argparse turns the error into exit 2)."""
    if not text.isascii() or not text.isdigit() or len(text) > 10 or not 1 <= int(text) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_LIMIT}, got {text!r}")
    return int(text)


def set_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="PATH=VALUE",
        help="override a setting of the source files for this run, e.g. pagination.max_items=2 or"
        " rate_limit.per=1s (repeatable; validated like the file; not for auth, headers or secrets)",
    )


def run_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """`syncrun run ARGV`'s arguments, defaults included: how `demo` and `test-read` build a run."""
    parser = argparse.ArgumentParser(prog="syncrun run")
    run(parser)
    return parser.parse_args(argv)


def run(parser: argparse.ArgumentParser) -> None:
    """`syncrun run`'s arguments and their defaults."""
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--limit", type=count, help="entities per run (default: the source's entities.limit)")
    parser.add_argument(
        "--batch-size", type=count, dest="batch_size", help="alias of --limit (as the seed's BATCH_SIZE)"
    )
    parser.add_argument("--ids", help="comma-separated entity keys to run instead of the selection")
    parser.add_argument("--dry-run", action="store_true", help="fetch, classify and map; print; write nothing")
    parser.add_argument("--max-runtime", type=seconds, metavar="SECONDS", help="stop taking entities after this long")
    parser.add_argument(
        "--grace",
        type=seconds_or_zero,
        default=5.0,
        metavar="SECONDS",
        help="time in-flight entities get after a stop",
    )
    parser.add_argument("--partition", help="static shard i/n of the selection (e.g. 0/4)")
    parser.add_argument(
        "--lease",
        type=seconds,
        default=600.0,
        metavar="SECONDS",
        help="how long a claim on an entity lives without a heartbeat (a crashed runner's entities free up after it)",
    )
    parser.add_argument(
        "--heartbeat", type=seconds, default=5.0, metavar="SECONDS", help="job heartbeat and claim renewal interval"
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="forget a list source's checkpoint and watermark, or a per-entity source's validators",
    )
    parser.add_argument(
        "--record", type=Path, metavar="DIR", help="save the run's HTTP exchanges (secrets masked) to DIR"
    )
    parser.add_argument(
        "--replay", type=Path, metavar="DIR", help="serve HTTP from the cassettes under DIR; no network"
    )
    parser.add_argument(
        "--rate-scale",
        type=factor,
        default=1.0,
        metavar="K",
        help="with --replay: run the rate limiter and every wait K times faster (recorded in the job row)",
    )
    set_option(parser)
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--progress-every", type=count, default=100, metavar="N")
    parser.add_argument(
        "--stale-after",
        type=seconds,
        default=300.0,
        metavar="SECONDS",
        help="reap running jobs without a heartbeat for this long",
    )
