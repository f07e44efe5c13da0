"""One source run: select due entities -> fetch them concurrently under the limiter -> classify ->
map -> write in batches (rows, status and state in one transaction) -> finish the job row.

The concurrency of syncrun lives here and only here. Database calls are synchronous psycopg on
connections owned by one task each, run in worker threads so the event loop keeps fetching.

    producer ──entities──▶ fetchers (×concurrency) ──results──▶ writer (batches of write_batch)
        ▲                                                          │
        └───── stop (signal, --max-runtime, run failure) ──────────┘   heartbeat every few seconds

What happens is emitted to observers the caller passes in (runner/events.py); the engine knows no
terminal. Its modules:

    pipeline        `run`: sources side by side; one source's select -> fetch -> write
    state           one source's run in progress (`Run`), `halt`, events out
    report          Options in, Report and Trace out, the job rows' error texts
    fetchers        the producer and the fetchers; the breaker's judgement per outcome
    batches         batched requests (`request.batch`): one request, an outcome per entity
    classification  replies into results: outcome rules, mapped rows
    writes          the write loop: batches into transactions, counters, events
    catalogue       list-shaped sources: pages, cursor checkpoints, watermarks
    stopping        signals, --max-runtime, the grace period
    bookkeeping     heartbeat, steps, the run's conclusion and its final job row
"""

from runner.engine.pipeline import run
from runner.engine.report import BUSY_IDS, CANCELLED, FAIL_RATIO, LISTING_PAGE_FAILED, Options, Report, Trace

__all__ = ["BUSY_IDS", "CANCELLED", "FAIL_RATIO", "LISTING_PAGE_FAILED", "Options", "Report", "Trace", "run"]
