"""`python -m bench.faults`: the fault matrix (issue #6). Every cell but the counters must be 0.

Each fault runs the fault source (bench/faultlib.py: 24 entities, 3 write targets, 30 requests/s)
as a real `syncrun run` subprocess against tests/apiserver.py's scriptable server and a private
PostgreSQL cluster, then:

1. checks the database right after the fault run: an entity stamped as synced has exactly the rows
   its answer maps to; an entity that is not has none (no half-written entity);
2. heals the API and runs once more ("clean rerun": a normal run for transient faults, which must
   pick every unfinished entity up by itself; `--ids <all>` for faults in the data, whose entities
   legitimately back off), then checks the data equals a clean run's (timestamps and job ids aside).

Columns: proc/ok/fail/skip — the fault run's job counters; missing — rows an entity should have
and lacks (either check); dup — rows present twice; wrong — rows no expected entity explains (a
differing value, a stale child row, a half-written entity); stuck — jobs left `running` and claims
still held once every runner has exited; over — requests beyond the API's rate limit in any 1 s
window by the kernel's receive timestamps (when the runner wrote them: `StampedServer`; the server
threads' own readings bunch when they lag, which no client could prevent), plus requests that
arrived while a Retry-After pause was in force; unfair — entities put into backoff by a failure
that was not theirs; miscount — job counters that disagree with the database. `checks` lists the
fault's own expectations that failed (job status, message, exit code, duration), or `ok`.

    python -m bench.faults                 # the whole matrix (~3 minutes on 2 cores)
    python -m bench.faults --only 1a,10    # some rows
    python -m bench.faults --trials 5      # fewer SIGKILL trials
"""

from __future__ import annotations

import argparse
import email.utils
import functools
import gzip
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.faultlib import (
    RATE,
    Bouncer,
    Cluster,
    Completed,
    StampedServer,
    Workload,
    compare,
    payload,
    reap,
    wait_for,
)
from tests.apiserver import ApiServer, Recorded, Reply, Script, worst_window

KILL_TRIALS = 20


@dataclass
class Result:
    id: str
    fault: str
    status: str = ""
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    missing: int = 0
    duplicated: int = 0
    wrong: int = 0
    stuck: int = 0
    over: int = 0
    unfair: int = 0
    miscount: int = 0
    seconds: float = 0.0  # the fault run's wall time
    rss_mb: float = 0.0  # the fault run's peak resident memory (0: unknown)
    problems: list[str] = field(default_factory=list)  # expectations that failed
    notes: list[str] = field(default_factory=list)

    ZEROS = ("missing", "duplicated", "wrong", "stuck", "over", "unfair", "miscount")

    @property
    def clean(self) -> bool:
        return not self.problems and all(getattr(self, name) == 0 for name in self.ZEROS)

    def explain(self) -> str:
        return "; ".join(self.problems + self.notes)


class Pauses:
    """Retry-After pauses the server announced: (sent at, paused until), monotonic seconds."""

    def __init__(self) -> None:
        self.windows: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def add(self, seconds: float) -> None:
        now = time.monotonic()
        with self.lock:
            self.windows.append((now, now + seconds))

    def violations(self, arrivals: list[float], in_flight: int) -> int:
        """Arrivals inside an announced pause, beyond those the client could not have held back.

        A request granted before the client read the 429 may still land inside the pause: its write
        and the 429's read race on the client's event loop, and on a busy machine (two full test runs
        and two CPU burners) the read came over 150 ms late. Each of the run's other `in_flight` tasks
        holds at most one such grant, so that many arrivals per pause are the client's, not a breach."""
        over = 0
        for sent, until in self.windows:
            inside = sum(1 for a in arrivals if sent + 0.15 < a < until - 0.15)
            over += max(0, inside - in_flight)
        return over


@dataclass
class Fault:
    id: str
    title: str
    routes: Callable[[int, Pauses], list[Script]]  # the scripted replies of one entity
    definitive: Callable[[int], bool] = lambda appid: False  # entities whose failure is theirs (they back off)
    served: Callable[[int], dict[str, Any]] = payload  # the body a stamped entity's rows must come from
    status: str = "completed"
    message: str | None = None
    code: int = 0
    max_seconds: float = 30.0
    max_rss_mb: float = 250.0  # the fault run's peak RSS (a clean run: ~70 MB)
    entities: int = 24
    workload: dict[str, Any] = field(default_factory=dict)
    during: Callable[[Any, ApiServer, Workload], None] | None = None  # acts on the running process
    bouncer: bool = False
    limit: int = RATE  # the API's limit (requests per second) the `over` column counts against
    exact: bool = False  # every request of the fault run belongs to an entity counted as succeeded
    says: Callable[[int], str] = lambda appid: ""  # a fragment the entity's recorded error must contain
    slow: bool = False

    @property
    def rerun_ids(self) -> bool:
        """Faults in the data back their entities off: the clean rerun names every entity."""
        return any(self.definitive(k) for k in range(1, self.entities + 1))


def ok(appid: int, delay: float = 0.0) -> Reply:
    return Reply(200, json=payload(appid), delay=delay)


def _retry_after_seconds(appid: int, pauses: Pauses) -> list[Script]:
    if appid % 6 == 1:

        def storm(_: Recorded) -> Reply:
            pauses.add(1.0)
            return Reply(429, json={"error": "slow down"}, headers={"Retry-After": "1"})

        return [storm, ok(appid)]
    if appid % 3 == 2:  # 429 without Retry-After: exponential backoff
        return [Reply(429), Reply(429), ok(appid)]
    return [ok(appid)]


def _retry_after_date(appid: int, pauses: Pauses) -> list[Script]:
    if appid % 8 == 1:

        def storm(_: Recorded) -> Reply:
            when = time.time() + 2
            pauses.add(when - time.time() - 1)  # an HTTP-date has whole seconds: at least 1 s of it stands
            return Reply(503, headers={"Retry-After": email.utils.formatdate(when, usegmt=True)})

        return [storm, ok(appid)]
    return [ok(appid)]


def _retry_after_beyond(appid: int, pauses: Pauses) -> list[Script]:
    if appid == 5:
        return [Reply(429, headers={"Retry-After": "3600"})]
    return [ok(appid, delay=0.05)]


def _bursts(appid: int, pauses: Pauses) -> list[Script]:
    if appid % 7 == 0:
        return [Reply(503, body=b"upstream down")]  # every attempt: gives up, transient
    if appid % 3 == 0:
        return [Reply(500), Reply(502, body=b"<html>bad gateway</html>"), Reply(504), ok(appid)]
    return [ok(appid)]


def _resets(appid: int, pauses: Pauses) -> list[Script]:
    if appid == 11:
        return [Reply(reset=True)]
    if appid % 2 == 0:
        return [Reply(reset=True), Reply(reset=True), ok(appid)]
    return [ok(appid)]


def _hangs(appid: int, pauses: Pauses) -> list[Script]:
    if appid == 9:
        return [Reply(hang=True)]
    if appid % 4 == 0:
        return [Reply(hang=True), ok(appid)]
    return [ok(appid)]


def _drips(appid: int, pauses: Pauses) -> list[Script]:
    if appid == 10:
        return [Reply(drip=0.05)]
    if appid % 4 == 1:
        return [Reply(drip=0.05), ok(appid)]
    return [ok(appid)]


def _malformed(appid: int, pauses: Pauses) -> list[Script]:
    if appid % 5 == 0:
        return [Reply(200, body=b'{"name": "App", "price": ', headers={"Content-Type": "application/json"})]
    return [ok(appid)]


def _html(appid: int, pauses: Pauses) -> list[Script]:
    if appid % 5 == 1:
        page = b"<!doctype html><html><body><h1>Service temporarily unavailable</h1></body></html>"
        return [Reply(200, body=page, headers={"Content-Type": "text/html"})]
    return [ok(appid)]


def _oversized(appid: int, pauses: Pauses) -> list[Script]:
    if appid % 5 == 2:
        return [Reply(200, size=5_000_000, headers={"Content-Type": "application/json"})]  # declared
    if appid % 5 == 3:
        return [Reply(200, size=5_000_000, chunked=True, headers={"Content-Type": "application/json"})]
    return [ok(appid)]


def _typed_body(appid: int) -> dict[str, Any]:
    body = payload(appid)
    if appid % 6 == 0:
        body["price"] = "lots"
    elif appid % 6 == 1:
        body["price"] = 10**20  # does not fit an int column
    elif appid % 6 == 2:
        body["price"] = {"cents": 5}
    elif appid % 6 == 3:
        del body["name"], body["tags"]  # missing fields: nulls and no tags, a legitimate answer
    return body


def _types(appid: int, pauses: Pauses) -> list[Script]:
    return [Reply(200, json=_typed_body(appid))]


def _unauthorised(appid: int, pauses: Pauses) -> list[Script]:
    return [Reply(401 if appid % 2 else 403, json={"error": "invalid API key"})]


# --- hostile responses (issue #10): each ends as that entity's outcome, in bounded memory and time ----------
JSON_TYPE = {"Content-Type": "application/json"}


def _json(appid: int) -> bytes:
    return json.dumps(payload(appid)).encode()


def _encoded(body: bytes, coding: str, **extra: Any) -> Reply:
    return Reply(200, body=body, headers={**JSON_TYPE, "Content-Encoding": coding}, **extra)


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def _lying_encodings(appid: int, pauses: Pauses) -> list[Script]:
    body = _json(appid)
    return [
        [
            _encoded(body, "gzip"),  # the header lies: plain JSON (httpx.DecodingError hung the runner)
            _encoded(gzip.compress(body)[:-12], "gzip"),  # cut inside the compressed data
            _encoded(body, "br"),  # never asked for
            _encoded(gzip.compress(gzip.compress(gzip.compress(body))), "gzip, gzip, gzip"),  # one layer too many
            _encoded(gzip.compress(body), "x-gzip"),
            _encoded(_raw_deflate(body), "deflate"),  # raw deflate where RFC 9110 says zlib: decoded
            _encoded(gzip.compress(gzip.compress(body)), "gzip, gzip"),  # legal, decoded
            ok(appid),
        ][appid % 8]
    ]


@functools.cache
def _bomb(codings: tuple[str, ...], size: int = 1_000_000_000) -> bytes:
    """`size` zero bytes under `codings` (applied in order), compressed without holding them in memory."""
    zeros, packer = b"\0" * 1_000_000, zlib.compressobj(9, wbits=16 + zlib.MAX_WBITS if codings[0] == "gzip" else 15)
    body = b"".join(packer.compress(zeros) for _ in range(size // len(zeros))) + packer.flush()
    for coding in codings[1:]:
        body = gzip.compress(body, 9) if coding == "gzip" else zlib.compress(body, 9)
    return body


def _bombs(appid: int, pauses: Pauses) -> list[Script]:
    if appid % 4 == 3:
        return [ok(appid)]
    codings = [("gzip", "gzip"), ("deflate", "deflate"), ("gzip",)][appid % 4]
    size = 1_000_000_000 if len(codings) == 2 else 50_000_000  # one layer of 1 GB is ~1 MB on the wire
    return [_encoded(_bomb(codings, size), ", ".join(codings), chunked=True)]  # no Content-Length to refuse


def _deep_json(appid: int, pauses: Pauses) -> list[Script]:
    if appid % 6 == 0:  # the body: 8 KB, 2,000 levels (RecursionError exited 70 on every run)
        return [Reply(200, body=b"[" * 2000 + b"]" * 2000, headers=JSON_TYPE)]
    if appid % 6 == 3:  # 30,000 levels, just under max_body
        return [Reply(200, body=b"[" * 30_000 + b"]" * 30_000, headers=JSON_TYPE)]
    if appid % 6 == 1:  # 100 levels in an unmapped field: legitimate, the entity succeeds
        nested = json.loads("[" * 99 + "[]" + "]" * 99)
        return [Reply(200, json={**payload(appid), "extra": nested})]
    return [ok(appid)]


def _hostile_values(appid: int, pauses: Pauses) -> list[Script]:
    text = _json(appid)
    price = f'"price": {appid * 10}'.encode()
    bodies = [
        text.replace(price, b'"price": NaN'),
        text.replace(price, b'"price": 1e999'),
        text.replace(price, b'"price": ' + b"9" * 5000),  # beyond CPython's int-string limit
        text.replace(b'"App ', b'"\\ud800App '),  # a lone surrogate escape
        text.replace(b'"App ', b'"\xff\xfeApp '),  # not UTF-8
        json.dumps(payload(appid)).encode("utf-16"),  # UTF-16 with a BOM: legitimate
        text.replace(b"{", b'{"price": "lots", ', 1),  # a duplicate key: the last wins
        text,
    ]
    return [Reply(200, body=bodies[appid % 8], headers=JSON_TYPE)]


def _raw_reply(head: str, body: bytes) -> Reply:
    return Reply(raw=head.replace("\n", "\r\n").encode() + b"\r\n" + body)


def _lying_framing(appid: int, pauses: Pauses) -> list[Script]:
    text = _json(appid)
    first = [
        _raw_reply("HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 9999\n", text),
        _raw_reply("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", b"%x\r\n%s\r\n" % (len(text), text)),
        _raw_reply("HTTP/1.1 200 OK\nX-Pad: " + "a" * 200_000 + "\n", b""),  # headers over httpcore's 100 KB
        Reply(200, size=10**12, chunked=True, headers=JSON_TYPE),  # an endless fast stream: max_body stops it
        Reply(raw=b"\x00\xff not HTTP at all\r\n\r\n"),
        None,
    ][appid % 6]
    if first is None:
        return [ok(appid)]
    return [first] if appid % 6 == 3 else [first, ok(appid)]  # broken framing is transient: retried


def _says(modulo: int, *fragments: str) -> Callable[[int], str]:
    """Entity k's error must contain fragments[k % modulo] (none past the list)."""
    return lambda appid: fragments[appid % modulo] if appid % modulo < len(fragments) else ""


class _Outage:
    """The API goes down after its first few answers: every later request gets a 503."""

    def __init__(self, healthy: int) -> None:
        self.left, self.lock = healthy, threading.Lock()

    def routes(self, appid: int, pauses: Pauses) -> list[Script]:
        def answer(_: Recorded) -> Reply:
            with self.lock:
                self.left -= 1
                healthy = self.left >= 0
            return ok(appid) if healthy else Reply(503, body=b"service unavailable")

        return [answer]


def _restart_postgres(proc: Any, api: ApiServer, workload: Workload) -> None:
    wait_for(lambda: len(api.requests) >= 8 or proc.poll() is not None, what="8 requests")
    workload.cluster.restart()


def _sigterm(proc: Any, api: ApiServer, workload: Workload) -> None:
    wait_for(lambda: len(api.requests) >= 7 or proc.poll() is not None, what="7 requests")
    time.sleep(0.1)  # the held requests are in flight
    proc.send_signal(signal.SIGTERM)


FAULTS = [
    Fault("1a", "429 storm, Retry-After seconds", _retry_after_seconds),
    Fault("1b", "429/503 Retry-After HTTP-date", _retry_after_date),
    Fault(
        "1c",
        "Retry-After beyond max_wait",
        _retry_after_beyond,
        status="failed",
        message="longer than retry.max_wait",
        code=1,
        max_seconds=10,
    ),
    Fault("2", "5xx bursts", _bursts),
    Fault("3", "connection resets", _resets),
    Fault("4", "accepts, never answers", _hangs, slow=True),
    Fault("5", "slow-drip bodies", _drips, slow=True),
    Fault("6", "malformed JSON", _malformed, definitive=lambda k: k % 5 == 0),
    Fault("7", "200 with an HTML error page", _html, definitive=lambda k: k % 5 == 1),
    Fault("8", "oversized bodies", _oversized, definitive=lambda k: k % 5 in (2, 3)),
    Fault("9", "wrong types / missing fields", _types, definitive=lambda k: k % 6 in (0, 1, 2), served=_typed_body),
    Fault(
        "10",
        "PostgreSQL restarted mid-run",
        lambda k, p: [ok(k, delay=0.15)],
        status="completed|failed",
        code=-1,
        max_seconds=20,
        during=_restart_postgres,
        workload={"concurrency": 2, "write_batch": 2},
        slow=True,
    ),
    Fault(
        "12",
        "SIGTERM, responses in flight",
        lambda k, p: [ok(k) if k <= 4 else ok(k, delay=0.6)],
        status="cancelled",
        message="cancelled by SIGTERM",
        code=143,
        during=_sigterm,
        exact=True,
        slow=True,
    ),
    Fault(
        "13",
        "401/403 on every request",
        _unauthorised,
        status="failed",
        message="refused our credentials",
        code=1,
    ),
    Fault(
        "14",
        "API-wide outage (503 after 4 answers)",
        lambda k, p: [],  # replaced per run: the outage counts requests across entities
        status="failed",
        message="the API looks down",
        code=1,
        entities=40,
        workload={"attempts": 2},
    ),
    Fault("15", "through pgbouncer (transaction mode)", _bursts, bouncer=True),
    Fault(
        "16",
        "Content-Encoding that lies, unknown, stacked",
        _lying_encodings,
        definitive=lambda k: k % 8 < 4,
        says=_says(8, "is not valid gzip data", "ends inside its gzip data", "Content-Encoding br", "encoded 3 times"),
        max_seconds=15,
        max_rss_mb=150,
    ),
    Fault(
        "17",
        "compression bombs (1 GB in KBs)",
        _bombs,
        definitive=lambda k: k % 4 != 3,
        says=_says(4, *["inflates past request.max_body (64,000 bytes)"] * 3),
        max_seconds=15,
        max_rss_mb=150,
    ),
    Fault(
        "18",
        "JSON nested 2,000-30,000 deep",
        _deep_json,
        definitive=lambda k: k % 3 == 0,
        says=_says(6, "JSON nested deeper than 128 levels", "", "", "JSON nested deeper than 128 levels"),
        max_seconds=15,
        max_rss_mb=150,
    ),
    Fault(
        "19",
        "NaN, 1e999, 5,000 digits, bad Unicode in JSON",
        _hostile_values,
        definitive=lambda k: k % 8 < 5,
        says=_says(
            8,
            "NaN is not a JSON number",
            "the number 1e999 is out of range",
            "more digits than Python converts",
            "lone UTF-16 surrogate",
            "not valid UTF-8 at byte",
        ),
        max_seconds=15,
        max_rss_mb=150,
    ),
    Fault(
        "20",
        "framing that lies, huge headers, endless stream",
        _lying_framing,
        definitive=lambda k: k % 6 == 3,
        says=_says(6, "", "", "", "exceeded request.max_body"),
        max_seconds=15,
        max_rss_mb=150,
    ),
]


# --- running one fault ---------------------------------------------------------------------------------
def _expect(result: Result, fault: Fault, job: tuple[Any, ...] | None, run: Completed) -> None:
    if job is None:
        result.problems.append("no job row")
        return
    status, error = job[1], job[6] or ""
    if status not in fault.status.split("|"):
        result.problems.append(f"job {status}, expected {fault.status}: {error[:200]}")
    if fault.message and fault.message not in error:
        result.problems.append(f"job error {error[:200]!r} lacks {fault.message!r}")
    if fault.code >= 0 and run.code != fault.code:
        result.problems.append(f"exit {run.code}, expected {fault.code}: {run.stderr[-300:]}")
    if run.code == 70 or "Traceback" in run.stderr:
        result.problems.append(f"internal error: {run.stderr[-600:]}")
    if run.elapsed > fault.max_seconds:
        result.problems.append(f"took {run.elapsed:.1f}s, expected under {fault.max_seconds:g}s")
    if run.peak_rss > fault.max_rss_mb * 1e6:
        result.problems.append(f"peak RSS {run.peak_rss / 1e6:.0f} MB, expected under {fault.max_rss_mb:g} MB")
    if run.hung:
        result.problems.append(f"runner hung: killed after {fault.max_seconds + 10:g}s (thread dump on its stderr)")


def _check_messages(result: Result, fault: Fault, workload: Workload) -> None:
    """An entity with an expected error must have failed with it and backed off (a poison entity that is
    never penalised holds the source up on every run)."""
    errors = dict(workload.query("select entity_key::int, last_error from syncrun_state"))
    penalised = workload.penalised()
    for appid in workload.keys:
        fragment = fault.says(appid)
        if fragment and fragment not in (errors.get(appid) or ""):
            result.problems.append(f"entity {appid}: error {errors.get(appid)!r} lacks {fragment!r}")
        if fragment and appid not in penalised:
            result.problems.append(f"entity {appid} failed definitively but was not backed off")


def over(api: ApiServer, first: int, last: int, pauses: Pauses, *, limit: int, in_flight: int) -> int:
    """Requests `first:last` beyond `limit` in any 1 s window, plus those inside a Retry-After pause
    beyond the `in_flight` the client could not hold back (`Pauses.violations`). By `Recorded.at`:
    a `StampedServer`'s are when the client wrote each request."""
    arrivals = [r.at for r in api.requests[first:last]]
    return max(0, worst_window(arrivals, 1.0) - limit) + pauses.violations(arrivals, in_flight)


def _over(api: StampedServer, first: int, last: int, pauses: Pauses, limit: int, workload: Workload) -> int:
    return over(api, first, last, pauses, limit=limit, in_flight=workload.concurrency - 1)


def _unstamped(result: Result, api: StampedServer) -> None:
    if api.unstamped:  # their `at` is a thread's reading: a window over the limit may be the server's own
        result.problems.append(f"{api.unstamped} requests without a kernel receive timestamp: `over` is unsure")


def run_fault(fault: Fault, cluster: Cluster, tmp: Path) -> Result:
    result = Result(fault.id, fault.title)
    workload = Workload(cluster, f"f{fault.id}", tmp / fault.id, entities=fault.entities, **fault.workload)
    bouncer = Bouncer(cluster) if fault.bouncer else None
    api = StampedServer().start()
    try:
        dsn = cluster.dsn(workload.name, port=bouncer.port) if bouncer else None
        pauses = Pauses()
        routes = _Outage(4).routes if fault.id == "14" else fault.routes
        for appid in workload.keys:
            api.route(f"/apps/{appid}", *routes(appid, pauses))
        # 1. the fault run
        started = time.monotonic()
        proc = workload.start(workload.run_args(), api.url, dsn)
        if fault.during is not None:
            fault.during(proc, api, workload)
        run = reap(proc, fault.max_seconds + 10, started)  # a hung runner: SIGABRT dumps its threads
        result.seconds, result.rss_mb = run.elapsed, run.peak_rss / 1e6
        if os.environ.get("SYNCRUN_FAULTS_VERBOSE"):
            print(f"--- {fault.id} stderr ---\n{run.stderr}", file=sys.stderr)
        first_end = len(api.requests)
        if fault.exact and run.code >= 0:
            requests, stamped_now = first_end, len(workload.stamped())
            if not 0 < requests == stamped_now < workload.entities:
                result.problems.append(f"{requests} requests, {stamped_now} entities stamped (of {workload.entities})")
        jobs = workload.jobs()
        job = jobs[0] if jobs else None
        _expect(result, fault, job, run)
        if job is not None:
            result.status = job[1]
            result.processed, result.succeeded, result.failed, result.skipped = job[2:6]
        stamped, errored = workload.stamped(), workload.errored()
        verdict = compare(workload.data(), {k: fault.served(k) if k in stamped else None for k in workload.keys})
        if job is not None:
            counted = {"succeeded": (job[3], len(stamped)), "failed": (job[4], len(errored - stamped))}
            counted["processed"] = (job[2], sum(job[3:6]))
            for name, (said, seen) in counted.items():
                if said != seen:
                    result.miscount += 1
                    result.notes.append(f"job says {name} {said}, database shows {seen}")
        result.unfair = len(workload.penalised() - {k for k in workload.keys if fault.definitive(k)})
        _check_messages(result, fault, workload)
        result.stuck = workload.stuck()
        if result.stuck:
            result.notes.append(
                f"after the fault run: {workload.query('select status, count(*) from sync_jobs group by 1')}, "
                f"claims held {workload.query('select entity_key from syncrun_state where claimed_by is not null')}"
            )
        # 2. heal the API, one clean rerun, the data must equal a clean run's
        for appid in workload.keys:
            api.route(f"/apps/{appid}", ok(appid))
        extra = ("--ids", ",".join(map(str, workload.keys))) if fault.rerun_ids else ()
        rerun = workload.cli(workload.run_args(*extra), api.url, dsn)
        if rerun.code != 0:
            result.problems.append(f"clean rerun exited {rerun.code}: {rerun.stderr[-300:]}")
        verdict.add(compare(workload.data(), {k: payload(k) for k in workload.keys}))
        result.missing, result.duplicated, result.wrong = verdict.missing, verdict.duplicated, verdict.wrong
        result.notes += verdict.notes
        result.stuck += workload.stuck()
        result.over = _over(api, 0, first_end, pauses, fault.limit, workload) + _over(
            api, first_end, len(api.requests), pauses, fault.limit, workload
        )
        _unstamped(result, api)
    finally:
        api.stop()
        if bouncer is not None:
            bouncer.close()
    return result


# --- 11: SIGKILL at random points ---------------------------------------------------------------------------
def kill_trial(trial: int, cluster: Cluster, tmp: Path, seed: int = 6) -> Result:
    """SIGKILL after a random number of requests; wait out the lease and the stale timeout; a normal run
    must reap the job, re-claim the unfinished entities, and leave the data equal to a clean run's."""
    rng = random.Random(seed * 1000 + trial)
    result = Result("11", "SIGKILL at random points")
    workload = Workload(cluster, f"kill{trial}", tmp / f"kill{trial}")
    api = StampedServer().start()
    try:
        for appid in workload.keys:
            api.route(f"/apps/{appid}", ok(appid, delay=0.03))
        lease = ("--lease", "1.2", "--heartbeat", "0.3", "--stale-after", "1")
        args = ["run", str(workload.source), *lease]
        proc = workload.start(args, api.url)
        at = rng.randint(0, workload.entities)
        try:
            wait_for(lambda: len(api.requests) >= at or proc.poll() is not None, what=f"{at} requests")
        finally:
            time.sleep(rng.uniform(0, 0.05))
            proc.kill()
            proc.communicate()
        first_end = len(api.requests)
        stamped = workload.stamped()
        verdict = compare(workload.data(), {k: payload(k) if k in stamped else None for k in workload.keys})
        time.sleep(1.4)  # the lease (1.2 s) and the stale timeout (1 s) run out
        rerun = workload.cli(args, api.url)
        if rerun.code != 0:
            result.problems.append(f"trial {trial}: recovery run exited {rerun.code}: {rerun.stderr[-300:]}")
        jobs = workload.jobs()
        killed = jobs[:-1]
        # The kill may land after the run already finished its job row (killed after its last request):
        # then `completed` is the truth. Anything else must have been reaped as abandoned.
        reaped = killed and killed[0][1] == "failed" and "abandoned" in (killed[0][6] or "")
        if killed and not reaped and killed[0][1] != "completed":
            result.problems.append(f"trial {trial}: killed job not reaped: {killed[0]}")
        if jobs:
            result.status = jobs[-1][1]
            result.processed, result.succeeded, result.failed, result.skipped = jobs[-1][2:6]
            if jobs[-1][3] != workload.entities - len(stamped):
                result.miscount += 1
                result.notes.append(
                    f"trial {trial}: recovery succeeded {jobs[-1][3]}, expected {workload.entities - len(stamped)}"
                )
        final = compare(workload.data(), {k: payload(k) for k in workload.keys})
        verdict.add(final)
        result.missing, result.duplicated, result.wrong = verdict.missing, verdict.duplicated, verdict.wrong
        result.notes += [f"trial {trial} (killed after {at} requests): {n}" for n in verdict.notes]
        result.stuck = workload.stuck()
        result.unfair = len(workload.penalised())
        pauses = Pauses()
        result.over = _over(api, 0, first_end, pauses, RATE, workload) + _over(
            api, first_end, len(api.requests), pauses, RATE, workload
        )
        _unstamped(result, api)
    finally:
        api.stop()
    return result


def run_kills(cluster: Cluster, tmp: Path, trials: int = KILL_TRIALS, workers: int = 2) -> Result:
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda t: kill_trial(t, cluster, tmp), range(trials)))
    total = Result("11", f"SIGKILL at random points ({trials} trials)", status="recovered")
    for r in results:
        for name in ("processed", "succeeded", "failed", "skipped", *Result.ZEROS):
            setattr(total, name, getattr(total, name) + getattr(r, name))
        total.problems += r.problems
        total.notes += r.notes
        if r.status != "completed":
            total.problems.append(f"a recovery run ended {r.status}")
    return total


# --- the table -------------------------------------------------------------------------------------------
HEADER = (
    "#",
    "fault",
    "job",
    "proc",
    "ok",
    "fail",
    "skip",
    "missing",
    "dup",
    "wrong",
    "stuck",
    "over",
    "unfair",
    "miscount",
    "secs",
    "MB",
    "checks",
)


def format_table(results: list[Result]) -> str:
    rows = [HEADER] + [
        (
            r.id,
            r.fault,
            r.status,
            r.processed,
            r.succeeded,
            r.failed,
            r.skipped,
            r.missing,
            r.duplicated,
            r.wrong,
            r.stuck,
            r.over,
            r.unfair,
            r.miscount,
            f"{r.seconds:.1f}" if r.seconds else "-",
            f"{r.rss_mb:.0f}" if r.rss_mb else "-",
            "ok" if not r.problems else "FAILED",
        )
        for r in results
    ]
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]
    lines = [
        "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    for r in results:
        if not r.clean:
            lines.append(f"  {r.id}: {r.explain()}")
    return "\n".join(lines)


def run_matrix(cluster: Cluster, tmp: Path, only: set[str] | None = None, trials: int = KILL_TRIALS) -> list[Result]:
    results = []
    for fault in FAULTS:
        if only is None or fault.id in only:
            results.append(run_fault(fault, cluster, tmp))
        if fault.id == "10" and (only is None or "11" in only):
            results.append(run_kills(cluster, tmp, trials))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated fault ids, e.g. 1a,10,11")
    parser.add_argument("--trials", type=int, default=KILL_TRIALS, help="SIGKILL trials (fault 11)")
    args = parser.parse_args(argv)
    only = {x.strip() for x in args.only.split(",")} if args.only else None
    started = time.monotonic()
    cluster = Cluster()
    try:
        with tempfile.TemporaryDirectory(prefix="syncrun-faults-") as tmp:
            results = run_matrix(cluster, Path(tmp), only, args.trials)
    finally:
        cluster.close()
    print(format_table(results))
    print(
        f"\n{len(results)} faults in {time.monotonic() - started:.0f}s; "
        + ("all zeros" if all(r.clean for r in results) else "NOT all zeros")
    )
    return 0 if all(r.clean for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
