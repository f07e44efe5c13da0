"""Batched requests (`request.batch`): one request for several entities, each requested entity
given its own outcome from its part of the reply (`batch.record`)."""

from __future__ import annotations

from dataclasses import replace

from runner import fetch, mapping
from runner.engine import classification
from runner.engine.report import Trace
from runner.engine.state import Run
from runner.errors import EntityError, RunFailed, Stopped
from runner.expressions import JSON


async def process(state: Run, group: list[dict[str, JSON]]) -> list[Trace]:
    """One request for several entities; each *requested* entity gets its own outcome, so an id
    the API left out is "no data" for that entity and a failed request fails every one of them."""
    batch = state.source.request.batch
    assert batch is not None
    key = state.source.entities.key
    group = sorted(group, key=lambda entity: entity[key])  # deterministic requests (and replays)
    joined = batch.separator.join(str(entity[key]) for entity in group)
    traces = [Trace(entity) for entity in group]
    try:
        listing = await fetch.entity(
            state.http,
            state.source,
            group[0],
            state.settings,
            limiter=state.limiter,
            sleep=state.sleep,
            params={batch.param: joined},
        )
    except RunFailed as error:
        state.halt("failed", state.settings.redact(str(error)))
        return []
    except Stopped:
        return []
    except EntityError as error:
        for trace in traces:
            trace.result = classification.failure(state, trace.entity, str(error), definitive=error.definitive)
        return traces
    replies = classification.replies(state, listing)
    for trace in traces:
        try:
            parts = [part(state, reply, trace.entity) for reply in replies]
            trace.result = classification.classify(
                state, trace.entity, parts, trace, whole=replies[0].body, keep=listing[-1].keep
            )
            if listing[-1].capped:
                trace.result = replace(trace.result, partial=True)
                classification.capped(state, trace, listing[-1].capped)
        except EntityError as error:
            trace.result = classification.failure(state, trace.entity, str(error), definitive=error.definitive)
    return traces


def part(state: Run, reply: fetch.Reply, entity: dict[str, JSON]) -> fetch.Reply:
    """This entity's view of a batched reply: `body` is what `batch.record` picks for it."""
    batch = state.source.request.batch
    assert batch is not None
    document = mapping.context(reply.body, reply.status, reply.headers, entity, state.run_values())
    return replace(reply, body=batch.record.search(document) if reply.body is not None else None)
