"""GitHub Actions: scheduled workflows for sources, and what a run prints when it runs on Actions.

`render(source, path)` writes a workflow for one source: its cron (the source's `schedule:` block,
else a default), `workflow_dispatch` inputs for limit and dry run (empty means the default), a
concurrency group so runs never overlap, `timeout-minutes` from limit / rate with a margin, and
`exec syncrun … --max-runtime` below that timeout, so the runner's SIGINT/SIGTERM reaches syncrun
itself and a run stops cleanly (job row `completed`, exact counters) before any hard kill.

Under `GITHUB_ACTIONS=true` a run also prints `::add-mask::` for each secret value (the one place
a secret value is printed, on purpose: it tells the runner to mask it everywhere), groups its
output with `::group::`, turns error log lines into `::error::` annotations, and appends a Markdown
summary to `$GITHUB_STEP_SUMMARY`.

Without a `schedule:` block a source gets a default schedule: every N hours (N the smallest of 1,
2, 3, 4, 6, 8, 12, 24 that is at least the timeout, so runs fit their cadence), at a minute derived
from the source name (never :00, when GitHub's scheduler is busiest and delays runs).
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from runner import spec
from runner.events import Event, Finished

if TYPE_CHECKING:
    from runner.engine import Report

log = logging.getLogger(__name__)


SETUP_MINUTES = 4  # checkout, setup-python, pip install: paid before the first request
STOP_MARGIN_MINUTES = 2  # --max-runtime ends this long before the timeout (grace + writes + job row)
MIN_TIMEOUT_MINUTES = 10
MAX_TIMEOUT_MINUTES = 360  # GitHub's limit for a job on a hosted runner
RUN_MARGIN = 1.5  # the run's expected duration (requests / rate) times this
UNBOUNDED_PAGES = 100  # a list source without max_pages: assume this many pages
_CADENCES = (1, 2, 3, 4, 6, 8, 12, 24)


@dataclass(frozen=True, slots=True)
class Schedule:
    """The workflow-relevant part of a source's `schedule:` block (spec.Schedule when it exists)."""

    cron: str
    timeout_minutes: int | None = None
    partitions: int | None = None  # a matrix of static shards, `--partition i/n`


def schedule(source: spec.Source) -> tuple[Schedule, bool]:
    """The source's schedule and whether it was declared (False: the documented default)."""
    declared: Any = getattr(source, "schedule", None)  # spec.Source.schedule, once the schema has it
    if declared is not None:
        return (
            Schedule(
                cron=str(declared.cron),
                timeout_minutes=getattr(declared, "timeout_minutes", None),
                partitions=getattr(declared, "partitions", None),
            ),
            True,
        )
    hours = next((h for h in _CADENCES if h * 60 >= timeout_minutes(source)), 24)
    minute = 5 + int(hashlib.md5(source.name.encode()).hexdigest()[:8], 16) % 50
    return Schedule(cron=f"{minute} {'*' if hours == 1 else f'*/{hours}'} * * *"), False


def requests_per_run(source: spec.Source) -> int:
    """How many requests one run makes at most (retries aside): entities, batched, or pages."""
    if source.entities.type is spec.SelectionType.LIST:
        return source.pagination.max_pages or UNBOUNDED_PAGES
    batch = source.request.batch.size if source.request.batch else 1
    return math.ceil(source.entities.limit / batch)


def expected_seconds(source: spec.Source) -> float:
    """limit × (1 / rate): the shortest time one run can take under its rate limit."""
    return requests_per_run(source) / source.rate_limit.rate


def timeout_minutes(source: spec.Source, declared: int | None = None) -> int:
    """`timeout-minutes`: the declared one, else setup + expected × margin + stop margin, in bounds."""
    if declared is not None:
        return declared
    run = math.ceil(expected_seconds(source) * RUN_MARGIN / 60)
    return max(MIN_TIMEOUT_MINUTES, min(MAX_TIMEOUT_MINUTES, SETUP_MINUTES + run + STOP_MARGIN_MINUTES))


def max_runtime_seconds(timeout: int) -> int:
    """`--max-runtime`: what is left of the timeout after setup and the stop margin (at least 60 s)."""
    return max(60, (timeout - SETUP_MINUTES - STOP_MARGIN_MINUTES) * 60)


def _env_lines(source: spec.Source) -> list[str]:
    """The step's `env:` lines, one per variable (a YAML mapping keeps one value per key): a variable
    the source reads both as `${env.X}` and `${secret.X}` comes from secrets (review revH F4), since
    its value is then a secret; BATCH_SIZE and DRY_RUN are the workflow's own inputs."""
    env = {"DATABASE_URL": "${{ secrets.DATABASE_URL }}"}
    for setting in source.settings:
        if setting.secret:
            env[setting.name] = f"${{{{ secrets.{setting.name} }}}}"
        else:  # an unset variable arrives empty, which syncrun treats as unset: the default applies
            env.setdefault(setting.name, f"${{{{ vars.{setting.name} }}}}")
    env["BATCH_SIZE"] = "${{ inputs.limit }}"
    env["DRY_RUN"] = "${{ inputs.dry_run && '--dry-run' || '' }}"
    return [f"{name}: {value}" for name, value in env.items()]


def render(source: spec.Source, path: str, *, requirements: str | None = None) -> str:
    """The workflow YAML for `source`, whose file is at `path` (relative to the repository root).
    Installs syncrun from the repository itself (`pip install .`), or from `requirements` (a
    requirements file, as in a project `syncrun init` started)."""
    plan, declared = schedule(source)
    timeout = timeout_minutes(source, plan.timeout_minutes)
    runtime = max_runtime_seconds(timeout)
    origin = "its schedule: block" if declared else "the default schedule (no schedule: block)"
    command = f"exec syncrun run {path} --max-runtime {runtime}"
    if plan.partitions:
        command += f' --partition "${{{{ matrix.partition }}}}/{plan.partitions}"'
    command += " $DRY_RUN"
    env = "\n".join(f"          {line}" for line in _env_lines(source))
    matrix = ""
    if plan.partitions:
        shards = ", ".join(str(i) for i in range(plan.partitions))
        matrix = f"    strategy:\n      fail-fast: false\n      matrix:\n        partition: [{shards}]\n"
    rate = f"{source.rate_limit.rate:.3g}/s"
    install = f"python -m pip install -r {requirements}" if requirements else "python -m pip install ."
    return f"""\
# Generated by `syncrun workflow {path}` from {origin}. Do not edit: regenerate.
# Timeout {timeout} min = setup {SETUP_MINUTES} + {requests_per_run(source)} requests at {rate} \
× {RUN_MARGIN} + {STOP_MARGIN_MINUTES} (or the declared timeout_minutes);
# --max-runtime {runtime}s stops the run cleanly before it. `exec` makes syncrun the step's process,
# so a cancel's SIGINT/SIGTERM reaches it and the job row ends `cancelled` with exact counters.
name: "syncrun {source.name}"

on:
  schedule:
    - cron: "{plan.cron}"
  workflow_dispatch:
    inputs:
      limit:
        description: "Entities for this run (empty: the source's entities.limit, {source.entities.limit})"
        required: false
        default: ""
      dry_run:
        description: "Fetch and map, write nothing"
        type: boolean
        required: false
        default: false

concurrency:
  group: syncrun-{source.name}
  cancel-in-progress: false

jobs:
  sync:
    runs-on: ubuntu-latest
    timeout-minutes: {timeout}
{matrix}    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
          cache: pip
          cache-dependency-path: {requirements or "pyproject.toml"}
      - name: Install syncrun
        run: {install}
      - name: Run {source.name}
        shell: bash
        env:
{env}
        run: {command}
"""


def workflow_name(source_path: Path) -> str:
    """`sources/steam-price.yaml` -> `syncrun-steam-price.yml`."""
    return f"syncrun-{source_path.stem}.yml"


def generate_examples(paths: Sequence[Path], out: Path, root: Path) -> dict[Path, str]:
    """Workflow text per output file for these sources (paths shown relative to `root`)."""
    from runner import config  # config reads files: only needed here, not for a run's log output

    results: dict[Path, str] = {}
    for path in paths:
        source = config.load(path)
        shown = path.resolve().relative_to(root.resolve()).as_posix()
        results[out / workflow_name(path)] = render(source, shown)
    return results


# --- on GitHub Actions ---------------------------------------------------------------------------------
def active(environ: Mapping[str, str]) -> bool:
    return environ.get("GITHUB_ACTIONS") == "true"


def log_format(requested: str, environ: Mapping[str, str]) -> str:
    """Text logs become "github" (annotations) under GitHub Actions; json stays json."""
    return "github" if requested == "text" and active(environ) else requested


def mask_lines(secrets: Sequence[str]) -> list[str]:
    """`::add-mask::<value>` per secret value, so the runner masks it in the whole job's log. A
    multi-line value is announced line by line: a workflow command ends at a newline, so its second
    line would otherwise be printed as plain text (GitHub's advice for multi-line secrets)."""
    lines = (line for s in secrets if s for line in s.splitlines())
    # The runner unescapes %25, %0D and %0A in command data (as @actions/core escapes them), so a
    # literal `%` is written as %25, or a secret containing "%0A" would be registered as another value.
    return [
        f"::add-mask::{value.replace('%', '%25')}" for value in dict.fromkeys(line for line in lines if line.strip())
    ]


def announce_masks(environ: Mapping[str, str], secrets: Sequence[str], out: TextIO | None = None) -> None:
    """Under GitHub Actions, print the mask commands (to stdout, where the runner reads them)."""
    if active(environ):
        stream = out or sys.stdout
        for line in mask_lines(secrets):
            print(line, file=stream)
        stream.flush()


@contextmanager
def group(title: str, environ: Mapping[str, str], out: TextIO | None = None) -> Iterator[None]:
    """`::group::title` … `::endgroup::` under GitHub Actions; nothing elsewhere."""
    stream = out or sys.stdout
    if active(environ):
        print(f"::group::{title}", file=stream)
    try:
        yield
    finally:
        if active(environ):
            print("::endgroup::", file=stream)


def step_summary(reports: Sequence[Report], errors: Mapping[str, Sequence[tuple[str, int]]] | None = None) -> str:
    """A Markdown summary of the run: counters, duration, achieved rate, top errors per source."""
    lines = [
        "## syncrun",
        "",
        "| source | status | processed | succeeded | failed | skipped | unchanged | requests | duration | rate |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for report in reports:
        c = report.counters
        rate = c.requests / report.elapsed if report.elapsed else 0.0
        lines.append(
            f"| {report.source} | {_status_badge(report.status)} | {c.processed} | {c.succeeded} | {c.failed} |"
            f" {c.skipped} | {c.unchanged} | {c.requests} | {report.elapsed:.1f} s | {rate:.2f}/s |"
        )
    for report in reports:
        if report.error:
            lines += ["", f"**{report.source}**: {_cell(report.error)}"]
        top = (errors or {}).get(report.source) or ()
        if top:
            lines += ["", f"Top errors of **{report.source}**:", "", "| count | error |", "|---:|---|"]
            lines += [f"| {count} | {_cell(message)} |" for message, count in top]
    return "\n".join(lines) + "\n"


def _status_badge(status: str) -> str:
    badges = {"completed": "✅ completed", "failed": "❌ failed", "cancelled": "⏹ cancelled", "busy": "⏳ busy"}
    return badges.get(status, status)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:300]


def write_step_summary(
    environ: Mapping[str, str],
    reports: Sequence[Report],
    errors: Mapping[str, Sequence[tuple[str, int]]] | None = None,
) -> None:
    """Append `step_summary` to `$GITHUB_STEP_SUMMARY` when it is set (any CI that sets it). A file that
    cannot be written is a warning: the summary is a courtesy, and the run's own result (its lines, job
    rows, exit status) must not be lost to it (review15 F1)."""
    target = environ.get("GITHUB_STEP_SUMMARY")
    if target:
        try:
            with open(target, "a", encoding="utf-8") as file:
                file.write(step_summary(reports, errors))
        except OSError as error:
            log.warning("could not write the step summary to $GITHUB_STEP_SUMMARY: %s", error.strerror or error)


class StepSummary:
    """An observer of the run (runner/events.py): when it is over, `write_step_summary` with the
    top errors `errors()` gives then."""

    def __init__(
        self, environ: Mapping[str, str], errors: Callable[[], Mapping[str, Sequence[tuple[str, int]]]]
    ) -> None:
        self.environ, self.errors = environ, errors

    def notice(self, event: Event) -> None:
        if isinstance(event, Finished):
            write_step_summary(self.environ, event.reports, self.errors())


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m runner.workflow [--check]`: regenerate examples/workflows/ from sources/*.yaml."""
    args = list(sys.argv[1:] if argv is None else argv)
    root = Path(__file__).resolve().parent.parent
    from runner import config

    out = root / "examples" / "workflows"
    wanted = generate_examples(config.default_paths(root), out, root)
    if "--check" in args:
        stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
        extra = [p for p in out.glob("*.yml") if p not in wanted]
        for path in [*stale, *extra]:
            print(f"{path.relative_to(root)} is out of date: run `python -m runner.workflow`", file=sys.stderr)
        return 1 if stale or extra else 0
    out.mkdir(parents=True, exist_ok=True)
    for path in out.glob("*.yml"):
        if path not in wanted:
            path.unlink()
    for path, text in wanted.items():
        path.write_text(text)
    print(f"wrote {len(wanted)} workflow(s) to {out.relative_to(root)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
