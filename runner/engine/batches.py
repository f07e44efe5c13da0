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
from runner.spec import Batch


async def process(state: Run, group: list[dict[str, JSON]]) -> list[Trace]:
    """One request for several entities; each *requested* entity gets its own outcome, so an id
    the API left out is "no data" for that entity and a failed request fails every one of them."""
    batch = state.source.request.batch
    assert batch is not None
    key = state.source.entities.key
    group = sorted(group, key=lambda entity: entity[key])  # deterministic requests (and replays)
    # A key holding the separator would be several ids on the wire (`b1,b2` is b1 and b2 to the API):
    # that entity fails alone, unsent, like a header value with a line break; the others go out.
    split = [entity for entity in group if batch.separator in str(entity[key])]
    refused = [Trace(entity) for entity in split]
    for trace in refused:
        message = f"key contains the batch separator {batch.separator!r}; not sent"
        trace.result = classification.failure(state, trace.entity, message, definitive=True)
    group = [entity for entity in group if batch.separator not in str(entity[key])]
    if not group:
        return refused
    sent = await _request(state, batch, key, group)
    return refused + sent if sent else []  # [] : the run stopped under the request, nothing is counted


async def _request(state: Run, batch: Batch, key: str, group: list[dict[str, JSON]]) -> list[Trace]:
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
