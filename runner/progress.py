"""Progress of a run: a live bar on a terminal (tqdm), periodic log lines elsewhere.

The engine emits events (runner/events.py) to the observers `observers(...)` builds for the command
line, which brackets the run with `observers(...)` (it calls `start`) and `stop()`:

    Bar          one `tick` per batch of finished entities: the bar moves, failures' messages tallied
    Lines        a failed entity's warning, and a `progress` log line every N entities
    StepSummary  the Markdown summary when the run is over (runner/workflow.py)

Off a terminal (CI, cron, a pipe) `start` shows nothing and the `log.info("progress", ...)` lines
are the progress; on a terminal they are dropped while the bar is up, and every other log line is
printed above the bar. The "github" log format (runner/logs.py) turns warnings into annotations.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TextIO

from runner import spec, workflow
from runner.events import EntitiesDone, Event, Observer
from runner.jobs import Counters

if TYPE_CHECKING:  # tqdm is imported when bars go up (a terminal): a run in CI need not load it
    from tqdm import tqdm

    from runner.engine import Options

log = logging.getLogger("syncrun")


@dataclass
class _Board:
    bars: dict[str, tqdm[Any]] = field(default_factory=dict)
    errors: dict[str, Counter[str]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    handlers: list[tuple[logging.Handler, Any]] = field(default_factory=list)


_board = _Board()


class _DropProgress(logging.Filter):
    """While bars are up the periodic `progress` log lines would only repeat them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "progress"


class _AboveBars:
    """A stream for log handlers that prints each line above the bars instead of through them."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        if text.strip():
            from tqdm import tqdm

            tqdm.write(text.rstrip("\n"), file=self.stream)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def enabled(stream: TextIO | None = None) -> bool:
    """A live bar only on an interactive terminal."""
    target = stream or sys.stderr
    return bool(getattr(target, "isatty", lambda: False)())


def start(sources: Sequence[str], total: int | None, *, stream: TextIO | None = None, live: bool | None = None) -> None:
    """Begin a run of these sources, each taking up to `total` entities; bars only when `live`
    (default: stderr is a terminal)."""
    global _board
    stop()
    _board = _Board(errors={name: Counter() for name in sources})
    target = stream or sys.stderr
    if not (enabled(target) if live is None else live):
        return
    from tqdm import tqdm

    for position, name in enumerate(sources):
        _board.bars[name] = tqdm(
            total=total, desc=name, unit="entity", position=position, file=target, dynamic_ncols=True, leave=True
        )
    logger = logging.getLogger("syncrun")
    drop = _DropProgress()
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler):
            previous = handler.setStream(_AboveBars(target))
            handler.addFilter(drop)
            _board.handlers.append((handler, (previous, drop)))


def tick(source: str, counters: Counters, error: str | None = None) -> None:
    """One entity finished (the engine's hook): advance the bar, tally the error if it failed."""
    if error:
        _board.errors.setdefault(source, Counter())[error[:200]] += 1
    bar = _board.bars.get(source)
    if bar is None:
        return
    bar.n = counters.processed
    elapsed = time.monotonic() - _board.started
    bar.set_postfix(
        ok=counters.succeeded,
        failed=counters.failed,
        skipped=counters.skipped,
        rate=f"{counters.processed / elapsed:.1f}/s" if elapsed else "-",
        refresh=False,
    )
    bar.refresh()


def top_errors(n: int = 5) -> dict[str, list[tuple[str, int]]]:
    """The most frequent error messages per source since `start`."""
    return {source: counts.most_common(n) for source, counts in _board.errors.items() if counts}


def stop() -> None:
    """Close the bars and give the log handlers their streams back (safe to call twice)."""
    for bar in _board.bars.values():
        bar.close()
    _board.bars.clear()
    for handler, (previous, drop) in _board.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(previous)
            handler.removeFilter(drop)
    _board.handlers.clear()


def observers(sources: Sequence[spec.Source], options: Options, environ: Mapping[str, str]) -> list[Observer]:
    """The run's observers, bars started: a list source counts pages, not entities, so it has no total."""
    listed = any(s.entities.type is spec.SelectionType.LIST for s in sources)
    limit = options.limit or max(s.entities.limit for s in sources)
    start([s.name for s in sources], None if listed else len(options.ids) if options.ids else limit)
    return [Bar(), Lines(options.progress_every), workflow.StepSummary(environ, top_errors)]


class Bar:
    """Moves the bar (when one is up) and tallies failures' messages for the step summary."""

    def notice(self, event: Event) -> None:
        if isinstance(event, EntitiesDone):
            for result in event.results:
                if result.error:
                    _board.errors.setdefault(event.source, Counter())[result.error[:200]] += 1
            tick(event.source, event.counters)


class Lines:
    """The run's log lines: a failed entity's warning; every `every` entities, a `progress` line."""

    def __init__(self, every: int) -> None:
        self.every = every

    def notice(self, event: Event) -> None:
        if not isinstance(event, EntitiesDone):
            return
        every, before = self.every, event.before.processed
        failures = spec.Outcome.ERROR in map(_outcome, event.results)
        if not failures and event.counters.processed // every == before // every:
            return  # no failure, no line due: nothing to say (most batches)
        known = None  # the counters at the last line, counted on from there
        for index, (processed, result) in enumerate(event.each()):
            if result.outcome is spec.Outcome.ERROR:
                log.warning("%s %s failed: %s", event.source, result.key, result.error)
            if processed // every > before // every:
                known = index + 1, event.after(index, known)
                log.info("progress", extra={"source": event.source, **_figures(known[1], event)})
            before = processed


_outcome = attrgetter("outcome")


def _figures(c: Counters, event: EntitiesDone) -> dict[str, Any]:
    return {
        "processed": c.processed,
        "succeeded": c.succeeded,
        "failed": c.failed,
        "skipped": c.skipped,
        "requests": event.requests,
        "rate": round(c.processed / event.elapsed, 2) if event.elapsed else 0.0,
    }
