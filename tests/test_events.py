"""The engine's events (runner/events.py), seen by an observer handed to `engine.run`: a dry run of
named ids needs no database, so this is the engine alone over loopback HTTP."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

from runner import config, engine, jobs, ratelimit, spec, templating
from runner.events import EntitiesDone, Event, Finished
from tests.apiserver import ApiServer, Reply
from tests.test_engine import app, write_source


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def notice(self, event: Event) -> None:
        self.events.append(event)


def test_observers_see_each_entity_then_the_reports(api: ApiServer, tmp_path: Path) -> None:
    """EntitiesDone for the entities (each one's result, the counters after it), then Finished with the reports."""
    api.route("/apps/1", app(1))
    api.route("/apps/2", Reply(400))
    source = config.load(write_source(tmp_path))
    settings = templating.resolve(source.settings, {**os.environ, "API_URL": api.url})
    options = engine.Options(limit=10, ids=("1", "2"), dry_run=True)
    recorder = Recorder()

    async def main() -> list[engine.Report]:
        limiters = ratelimit.limiters([replace(source.rate_limit, shared=spec.LimitScope.PROCESS)])
        try:
            return await engine.run(
                [source],
                options,
                settings=settings,
                limiters=limiters,
                connect=None,
                install_signals=False,
                observers=[recorder],
            )
        finally:
            for limiter in limiters.values():
                await limiter.aclose()

    reports = asyncio.run(main())
    done = [e for e in recorder.events if isinstance(e, EntitiesDone)]
    results = [result for event in done for result in event.results]
    assert sorted((r.key, r.outcome, r.error) for r in results) == [
        (1, spec.Outcome.SUCCESS, None),
        (2, spec.Outcome.ERROR, "HTTP 400"),
    ]
    each = [(processed, event.after(index)) for event in done for index, (processed, _) in enumerate(event.each())]
    assert [(processed, counters.processed) for processed, counters in each] == [(1, 1), (2, 2)]
    assert [event.before for event in done] == [jobs.Counters(), *(event.counters for event in done[:-1])]
    assert done[-1].counters.failed == 1
    assert done[-1].requests == 2
    assert recorder.events[-1] == Finished(reports)
