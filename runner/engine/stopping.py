"""How a run stops: a signal stops every source, --max-runtime its own; once stopped, in-flight
entities get `grace` seconds to finish and are then cut (their claims released at the end)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from runner.auth import Tokens
from runner.engine.report import CANCELLED
from runner.engine.state import Run

log = logging.getLogger("syncrun")


def halt_all(states: list[Run], signum: int, tokens: Tokens | None = None) -> None:
    if tokens is not None and any(state.report.signal is not None for state in states):
        # A second signal: the run is already stopping, and what it still waits for is a token renewal
        # in flight (runner/oauth.py, bounded by --grace): not waited for any longer. The grace given
        # to in-flight entities is kept (their rows and status stamps commit together).
        log.warning("received %s again: no longer waiting for a token renewal in flight", signal.Signals(signum).name)
        tokens.abandon()
        return
    log.warning("received %s: finishing in-flight entities, taking no new ones", signal.Signals(signum).name)
    for state in states:
        name = signal.Signals(signum).name
        state.halt("cancelled", CANCELLED.format(signal=name), signum, reason=name)


async def deadline(state: Run) -> None:
    if state.options.max_runtime is None:
        return
    await asyncio.sleep(state.options.max_runtime)
    log.info("max runtime reached: taking no new entities")
    state.halt("completed", None, reason="max_runtime")


async def finish_fetching(state: Run, tasks: list[asyncio.Task[None]]) -> None:
    """Wait for the fetchers; once stopped, give in-flight entities `grace` seconds, then cut them."""
    pending: set[asyncio.Task[Any]] = set(tasks)
    stop_wait: asyncio.Task[Any] = asyncio.create_task(state.stop.wait())
    while pending:
        done, pending = await asyncio.wait(pending | {stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        pending.discard(stop_wait)
        crashed = [t.exception() for t in done if t is not stop_wait and not t.cancelled() and t.exception()]
        if crashed:  # a bug: stop taking entities (the producer would wait forever for fetchers that are gone)
            state.halt("failed", state.settings.redact(f"internal error: {crashed[0]!r}"))
        if stop_wait in done or state.stop.is_set():
            break
    if pending:
        _, late = await asyncio.wait(pending, timeout=state.options.grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    # Groups still queued for fetchers that were cut: claimed, never fetched (the run stopped something)
    while not state.entities.empty():
        if isinstance(group := state.entities.get_nowait(), list):
            state.unprocessed.extend(entity[state.source.entities.key] for entity in group)
    stop_wait.cancel()
    # Every task's exception is read, not just the first one raised: several fetchers meeting the same
    # error (a shared limiter refusing the bucket) left asyncio's "Task exception was never retrieved"
    # dumps on stderr after the real message.
    errors = [task.exception() for task in tasks if task.done() and not task.cancelled()]
    for error in errors:
        if error is not None:
            raise error  # a bug in the pipeline, or the limiter's store: surface it


async def cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
