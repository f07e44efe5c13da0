"""ratelimit: sliding-window budget, burst pacing, bucket-wide pauses, the registry, the transport."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from statistics import median

import httpx
import pytest

from runner import client, config, spec
from runner.errors import ConfigError, UsageError
from runner.ratelimit import LATE, MARGIN, DatabaseLimiter, Limiter, RateLimitedTransport, limiters
from tests.apiserver import ApiServer, FakeClock, Reply, worst_window
from tests.noise import BUSY, Noise
from tests.pg import Database

pytestmark = pytest.mark.timing  # every test here reads real time, or shares a module with those that do

ROOT = Path(__file__).resolve().parent.parent


def rate(requests: int, per: float, *, burst: int = 1, bucket: str = "b", **kw: object) -> spec.RateLimit:
    return spec.RateLimit(requests=requests, per=per, burst=burst, bucket=bucket, **kw)  # type: ignore[arg-type]


async def grant_times(limiter: Limiter, clock: FakeClock, count: int) -> list[float]:
    times = []
    for _ in range(count):
        await limiter.acquire()
        times.append(round(clock() - 1000.0, 6))
    return times


def test_burst_one_spaces_grants_evenly() -> None:
    """With burst 1, N per P is one grant every (P + margin) / N seconds."""
    clock = FakeClock()
    limiter = Limiter(rate(4, 1.0), margin=0.0, clock=clock, sleep=clock.sleep)
    assert asyncio.run(grant_times(limiter, clock, 6)) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    assert limiter.requests == 6


def test_burst_allows_back_to_back_then_the_window_holds() -> None:
    """burst 2 of 4 per second: two at once, then pairs half a second apart; never 5 in a second."""
    clock = FakeClock()
    limiter = Limiter(rate(4, 1.0, burst=2), margin=0.0, clock=clock, sleep=clock.sleep)
    times = asyncio.run(grant_times(limiter, clock, 6))
    assert times == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    assert worst_window(times, 1.0) == 4


def test_margin_pads_the_window() -> None:
    """The safety margin widens every window: 2 per second with 10 ms margin spaces grants 505 ms."""
    clock = FakeClock()
    limiter = Limiter(rate(2, 1.0), margin=0.01, clock=clock, sleep=clock.sleep)
    assert asyncio.run(grant_times(limiter, clock, 3)) == [0.0, 0.505, 1.01]


def test_pause_holds_every_grant_until_it_ends() -> None:
    """pause(2) makes the next acquire wait 2 s; a shorter later pause does not shorten it."""
    clock = FakeClock()
    limiter = Limiter(rate(100, 1.0), clock=clock, sleep=clock.sleep)
    limiter.pause(2.0)
    limiter.pause(0.5)
    assert asyncio.run(grant_times(limiter, clock, 1)) == [2.0]


def test_oversleeping_does_not_drift_the_schedule() -> None:
    """Every sleep wakes 50 ms late: grants keep their slots 250 ms apart (the old log drifted 50 ms per
    grant: 0, .30, .60, .90, ...); only the window rule, which sees the real sends, adds the lateness,
    once per window."""
    clock = FakeClock()

    async def late(seconds: float) -> None:
        clock.now += seconds + 0.05

    limiter = Limiter(rate(4, 1.0), margin=0.0, clock=clock, sleep=late)
    assert asyncio.run(grant_times(limiter, clock, 9)) == [0.0, 0.3, 0.55, 0.8, 1.05, 1.35, 1.6, 1.85, 2.1]


def test_open_grants_count_until_sent_and_late_sends_push_the_window() -> None:
    """2 per second: two grants reserved but not sent yet block a third; once the first is sent (late,
    at 3 s) the third waits until that send has left the window (4 s), not the first grant (1 s)."""
    clock = FakeClock()
    limiter = Limiter(rate(2, 1.0), margin=0.0, clock=clock, sleep=clock.sleep)

    async def main() -> float:
        first = await limiter.reserve()
        await limiter.reserve()
        third = asyncio.create_task(limiter.reserve())
        await asyncio.sleep(0.01)
        assert not third.done()
        clock.now = 1003.0
        await limiter.sending(first)
        await third
        return clock() - 1000.0

    assert asyncio.run(main()) == 4.0


def test_a_stamp_never_moves_and_release_stamps_an_unsent_grant() -> None:
    """sending() stamps once; release() of a grant never sent stamps it then (it may have left)."""
    clock = FakeClock()
    limiter = Limiter(rate(1, 1.0), margin=0.0, clock=clock, sleep=clock.sleep)

    async def main() -> list[float]:
        sent = await limiter.reserve()
        clock.now += 0.5
        await limiter.sending(sent)
        clock.now += 2.0
        limiter.release(sent)  # already stamped at 0.5: unchanged
        failed = await limiter.reserve()  # at 2.5
        clock.now += 0.2
        limiter.release(failed)  # never sent: stamped at 2.7, so the next waits until 3.7
        await limiter.acquire()
        return [round(g - 1000.0, 6) for g in (sent.sent or 0, failed.sent or 0, clock())]

    assert asyncio.run(main()) == [0.5, 2.7, 3.7]


def test_registry_shares_one_limiter_per_bucket() -> None:
    """Two sources naming the same bucket get the same limiter; other buckets get their own."""
    registry = limiters([rate(10, 1.0, bucket="steam"), rate(10, 1.0, bucket="steam"), rate(5, 1.0, bucket="other")])
    assert set(registry) == {"steam", "other"}
    assert registry["steam"].rate.requests == 10


def test_registry_refuses_conflicting_limits_for_one_bucket() -> None:
    """The same bucket declared with different limits is an error naming both."""
    with pytest.raises(UsageError) as caught:
        limiters([rate(10, 1.0, bucket="steam"), rate(200, 60.0, bucket="steam")])
    assert str(caught.value) == (
        "rate-limit bucket 'steam' is declared twice with different limits (10 per 1 s, burst 1 and"
        " 200 per 60 s, burst 1); sources sharing a bucket must declare the same requests, per (or rate), burst,"
        " margin and shared"
    )


def test_shared_database_needs_a_dsn() -> None:
    """shared: database without a DSN is refused with a clear message (tests/test_ratelimit_shared.py has the rest)."""
    with pytest.raises(UsageError, match=r"shared: database \(bucket 'b'\) needs a database"):
        limiters([rate(10, 1.0, shared=spec.LimitScope.DATABASE)])


def test_burst_above_requests_is_refused() -> None:
    """burst must be between 1 and requests."""
    with pytest.raises(UsageError, match="burst must be between 1 and requests"):
        Limiter(rate(2, 1.0, burst=3))


def test_closed_limiter_refuses_grants() -> None:
    """acquire after close is a bug and says so."""
    limiter = Limiter(rate(2, 1.0))
    limiter.close()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(limiter.acquire())


def test_transport_acquires_before_every_request() -> None:
    """RateLimitedTransport spends one grant per request sent through it."""
    limiter = Limiter(rate(1000, 1.0))

    async def main() -> None:
        transport = RateLimitedTransport(httpx.MockTransport(lambda r: httpx.Response(204)), limiter)
        async with httpx.AsyncClient(transport=transport) as http:
            for _ in range(3):
                await http.get("http://api.test/x")

    asyncio.run(main())
    assert limiter.requests == 3


@pytest.mark.slow
def test_rate_limit_holds_at_the_server(api: ApiServer) -> None:
    """10 per 0.5 s, 30 concurrent tasks, 45 requests: no window over 10 (`check_window`); rate >= 90 %."""
    limiter = Limiter(rate(10, 0.5), clock=LastReading())
    lags: list[float] = []
    held: list[float] = []
    with Noise() as noise:
        arrivals, writes = hammer(api, limiter, requests=45, tasks=30, lags=lags, held=held)
    assert writes[-1] - writes[0] > 1.5
    check_window(arrivals, writes, lags, noise, requests=10, per=0.5, held=held)
    achieved = (len(writes) - 1) / (writes[-1] - writes[0])
    assert achieved >= 0.9 * 20, f"achieved {achieved:.2f}/s of 20/s"


def check_window(
    arrivals: list[float],
    writes: list[float],
    lags: list[float],
    noise: Noise,
    *,
    requests: int,
    per: float,
    held: Sequence[float] = (),
) -> None:
    """At most `requests` per `per` + margin as the client wrote them, and per `per` as the server
    counted them, allowing for what the machine did meanwhile, measured in the test: a preemption
    between the limiter's stamp and the write (at most the worst scheduling delay; four CPU burners
    bunched 11 writes in 0.51 s), or, where `held` measured it per request, the time between the
    limiter's last look at its clock and the write's record (it includes this process's GIL, which
    the in-process server's threads hold up to a switch interval, 5 ms, at a time: 9.5 ms was seen
    in CI's busy pass), and the in-process server's own lag, whose spread per request (arrival minus
    write) is the harness's."""
    # a quiet machine's 1-3 ms is in the margin
    window = per + MARGIN - max(0.0, noise.worst - 0.002, max(held, default=0.0))
    closest = min((b - a for a, b in zip(writes, writes[requests:], strict=False)), default=per)
    assert worst_window(writes, window) <= requests, (noise.worst, max(held, default=0.0), closest)
    if held:  # nothing awaits between the stamp and the write: a stray await would show in most requests
        print(f"stamp to write: median {median(held) * 1e6:.0f} µs, worst {max(held) * 1e3:.2f} ms")
        assert median(held) < 0.001, f"median {median(held) * 1000:.2f} ms between the stamp and the write"
    spread = max(lags) - min(lags)
    assert worst_window(arrivals, min(per, window) - spread) <= requests, (noise.worst, spread)


def test_every_attempt_spends_budget(api: ApiServer) -> None:
    """Retries go through the limiter too: grants == requests the server saw (503, 503, 200)."""
    api.route("/x", Reply(503), Reply(503), Reply(200, json={"ok": True}))
    limiter = Limiter(rate(1000, 1.0))
    request_spec = spec.Request(url=_template(api.url + "/x"))
    policy = spec.Retry(initial=0.01, jitter=0.0)

    async def main() -> client.Reply:
        async with client.build(request_spec, limiter, max_connections=2) as http:
            request = http.build_request("GET", api.url + "/x")
            return await client.send(http, request, policy, max_body=1000, timeout=2, limiter=limiter, redact=str)

    assert asyncio.run(main()).body == {"ok": True}
    assert limiter.requests == len(api.requests) == 3


def test_transport_stamps_at_the_write_and_a_new_connection_at_its_answer(api: ApiServer) -> None:
    """1 per 0.2 s: the first request opens a plain-HTTP connection, which the server may count any time
    until it answers (an accept queue or a proxy held such requests 100-300 ms): its grant stays open
    until the answer starts, so the second writes >= 0.2 after that answer; the third reuses the
    connection: >= 0.2 after the second's write."""
    api.route("/x", Reply(200, json={}, delay=0.05))
    limiter = Limiter(rate(1, 0.2), margin=0.0)
    writes: list[float] = []
    answers: list[float] = []

    async def trace(event: str, info: dict[str, object]) -> None:
        if event.endswith("send_request_headers.started"):
            writes.append(time.monotonic())
        elif event.endswith("receive_response_headers.complete"):
            answers.append(time.monotonic())

    async def main() -> None:
        async with client.build(spec.Request(url=_template(api.url + "/x")), limiter, max_connections=1) as http:
            for _ in range(3):
                (await http.get(api.url + "/x", extensions={"trace": trace})).raise_for_status()

    with Noise() as noise:
        asyncio.run(main())
    assert len(writes) == len(answers) == 3
    assert limiter.requests == 3
    assert answers[0] - writes[0] >= 0.05
    assert writes[1] - answers[0] >= 0.2 - 0.002  # the stamp comes just before the caller's trace sees it
    # reused: stamped at the write; the wake-up is late by far less than the next slot, unless the
    # machine itself was that late (measured)
    assert 0.2 <= writes[2] - writes[1] < 0.2 + 0.05 + noise.worst


def test_a_request_cancelled_while_it_waits_for_its_grant_leaves_none_open(api: ApiServer) -> None:
    """Review revJ F1: 1 per 1 s (fake clock); the first request's grant stays open until its answer
    (0.3 s late); a second, waiting for that stamp, is cancelled (its attempt's deadline did this). Its
    reserve went on and took the next grant, which nobody ever stamped: the third request waited for
    ever (a run hung). Now the third is sent, and the cancelled one cost nothing."""
    api.route("/slow", Reply(200, json={}, delay=0.3))
    api.route("/x", Reply(200, json={}))
    clock = FakeClock()
    limiter = Limiter(rate(1, 1.0), clock=clock, sleep=clock.sleep)

    async def main() -> None:
        stop = asyncio.Event()  # as a run builds it: the wait races the run's stop
        transport = RateLimitedTransport(httpx.AsyncHTTPTransport(), limiter, stop=stop)
        async with httpx.AsyncClient(transport=transport) as http:
            first = asyncio.ensure_future(http.get(api.url + "/slow"))
            while limiter.requests < 1:
                await asyncio.sleep(0.005)
            second = asyncio.ensure_future(http.get(api.url + "/x"))
            while limiter._stamped is None:  # the second waits for the first's stamp
                await asyncio.sleep(0.005)
            second.cancel()
            (await first).raise_for_status()
            (await asyncio.wait_for(http.get(api.url + "/x"), 10)).raise_for_status()
            with contextlib.suppress(asyncio.CancelledError):
                await second

    asyncio.run(main())
    assert [r.path for r in api.requests] == ["/slow", "/x"]
    assert limiter.requests == 2


def test_failed_connections_release_their_grants() -> None:
    """1 per 0.1 s against a closed port: every attempt fails before writing and still frees its grant
    (else the next would wait forever)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/x"
    limiter = Limiter(rate(1, 0.1))

    async def main() -> None:
        async with client.build(spec.Request(url=_template(url)), limiter, max_connections=2) as http:
            for _ in range(3):
                with pytest.raises(httpx.ConnectError):
                    await http.get(url)

    asyncio.run(asyncio.wait_for(main(), 5))
    assert limiter.requests == 3


def test_database_limiter_restamps_a_late_send_instead_of_discarding_it(db: Database) -> None:
    """A reservation used more than LATE after its time, at the moment of the write, is moved on the
    server to cover the real send (nothing else relies on it): no grant is lost, none taken again."""
    db.migrate()
    limiter = DatabaseLimiter(rate(100, 1.0, shared=spec.LimitScope.DATABASE), db.dsn)

    async def main() -> tuple[bool, bool]:
        on_time = await limiter.reserve()
        fresh = await limiter.sending(on_time)
        late = await limiter.reserve()
        await asyncio.sleep(LATE + 0.03)
        return fresh, await limiter.sending(late)

    try:
        assert asyncio.run(main()) == (False, False)
    finally:
        limiter.close()
    assert (limiter.requests, limiter.discarded) == (2, 0)
    assert limiter.restamped >= 1  # the late one (the first, too, when the first connect was slow)
    assert db.scalar("select seq from syncrun_rate_limits where bucket = 'b'") == 2
    first, second = (r[0] for r in db.rows("select extract(epoch from at)::float8 from syncrun_rate_log order by seq"))
    assert second - first >= LATE + 0.03
    # not ahead of real time (issue #10 saw minutes): at most the re-stamp's cover for the write after it
    assert db.scalar("select extract(epoch from last_at - clock_timestamp()) from syncrun_rate_limits") < 0.5


def _template(text: str) -> spec.Template:
    return spec.Template(text, (spec.Literal(text),))


def test_limiter_outlives_an_event_loop() -> None:
    """One limiter serves contended acquires in two successive asyncio.run calls."""
    limiter = Limiter(rate(1000, 1.0))

    async def three() -> None:
        await asyncio.gather(*(limiter.acquire() for _ in range(3)))

    asyncio.run(three())
    asyncio.run(three())
    assert limiter.requests == 6


@contextlib.contextmanager
def cpu_burners(count: int) -> Iterator[None]:
    """`count` other processes spinning on the CPU (this machine has 2 cores) for the duration."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


async def blocking_loop(stop: asyncio.Event) -> None:
    """Block the event loop for 20-40 ms every 30-80 ms, like a slow mapping or a GIL-heavy batch."""
    spin = random.Random(7)
    while not stop.is_set():
        await asyncio.sleep(spin.uniform(0.03, 0.08))
        time.sleep(spin.uniform(0.02, 0.04))


class LastReading:
    """`time.monotonic` that remembers its last reading: a limiter's stamp, when the request's trace
    reads it right after (nothing of this event loop runs in between)."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self) -> float:
        self.last = time.monotonic()
        return self.last


def hammer(
    api: ApiServer,
    limiter: Limiter,
    *,
    requests: int,
    tasks: int,
    block: bool = False,
    lags: list[float] | None = None,
    late: list[float] | None = None,
    held: list[float] | None = None,
) -> tuple[list[float], list[float]]:
    """`tasks` workers send `requests` GETs through one limiter (optionally with a blocking loop).
    Returns the server's arrival times and the client's socket writes (httpcore's trace); `lags` gets
    each request's arrival minus its write (paired by a query number): the harness's own delay; `late`
    gets how late this event loop woke a 2 ms sleeper meanwhile (what tests/noise.py's separate
    process cannot see: this process's own threads, the in-process server's, holding the GIL); `held`
    gets each write's record minus the limiter's last clock reading before it (the limiter must have
    been made with a `LastReading` clock): the time from the stamp to the write, whatever delayed it."""
    api.route("/x", Reply(200, json={}))
    request_spec = spec.Request(url=_template(api.url + "/x"), timeout=10.0)
    todo = list(range(requests))
    written: dict[str, float] = {}
    limiter_clock = limiter._clock if held is not None else None
    assert held is None or isinstance(limiter_clock, LastReading), "held needs Limiter(..., clock=LastReading())"

    def tracer(number: str) -> Callable[[str, dict[str, object]], Awaitable[None]]:
        async def trace(event: str, info: dict[str, object]) -> None:
            if event.endswith("send_request_headers.started"):
                written[number] = time.monotonic()
                if held is not None:
                    held.append(written[number] - limiter_clock.last)

        return trace

    async def sampler(stop: asyncio.Event, into: list[float]) -> None:
        while not stop.is_set():
            asked = time.monotonic()
            await asyncio.sleep(0.002)
            into.append(time.monotonic() - asked - 0.002)

    async def main() -> None:
        stop = asyncio.Event()
        blocker = asyncio.create_task(blocking_loop(stop)) if block else None
        watcher = asyncio.create_task(sampler(stop, late)) if late is not None else None
        async with client.build(request_spec, limiter, max_connections=tasks) as http:

            async def worker() -> None:
                while todo:
                    number = str(todo.pop())
                    reply = await http.get(api.url + "/x", params={"n": number}, extensions={"trace": tracer(number)})
                    reply.raise_for_status()

            await asyncio.gather(*(worker() for _ in range(tasks)))
        stop.set()
        for task in (blocker, watcher):
            if task is not None:
                await task

    asyncio.run(main())
    arrived = {r.query["n"]: r.at for r in api.requests if r.path == "/x"}
    assert len(arrived) == len(written) == requests
    if lags is not None:
        lags.extend(arrived[n] - written[n] for n in written)
    return sorted(arrived.values()), sorted(written.values())


@pytest.mark.slow
@pytest.mark.parametrize("burst", [1, 5])
def test_window_holds_at_the_server_under_cpu_load(api: ApiServer, burst: int) -> None:
    """10 per 0.5 s, 30 tasks, 70 requests, a process burning a CPU and an event loop blocked 20-40 ms
    at a time: the writes keep 10 per (0.5 s + margin) exactly, and the server sees no window over 10
    beyond its own measured lag. The in-process server's threads, on a CPU the burner shares, counted
    a request up to ~30 ms after its write and once bunched two arrivals (11 in a window, while the
    writes held 10; docs/rate-limits.md, residual exposure): that lag is the harness's, measured per
    request in this run (arrival minus write), and only its spread is allowed for."""
    limiter = Limiter(rate(10, 0.5, burst=burst), clock=LastReading())
    lags: list[float] = []
    held: list[float] = []
    with cpu_burners(1), Noise() as noise:
        arrivals, writes = hammer(api, limiter, requests=70, tasks=30, block=True, lags=lags, held=held)
    check_window(arrivals, writes, lags, noise, requests=10, per=0.5, held=held)


@pytest.mark.slow
def test_rate_reaches_97_percent_at_50_per_second(api: ApiServer) -> None:
    """50 per second, burst 1, 16 tasks, 250 requests (5 s): >= 97 % of the limit, no window over 50.
    Oversleeping one grant does not delay the next (slots are scheduled, not measured from the last).
    Ideal: 50 / 1.01 = 99 %; measured 97.8-98.5 % on a loaded 2-CPU machine (docs/rate-limits.md).
    Both are read from the client's socket writes; the server's arrivals, which add the in-process
    server's own lag (51 in a window was seen with two test runs and two CPU burners beside this one),
    are checked allowing for the spread of that lag, measured per request in this run (`check_window`)."""
    limiter = Limiter(rate(50, 1.0), clock=LastReading())
    lags: list[float] = []
    late: list[float] = []
    held: list[float] = []
    with Noise() as noise:
        arrivals, writes = hammer(api, limiter, requests=250, tasks=16, lags=lags, late=late, held=held)
    check_window(arrivals, writes, lags, noise, requests=50, per=1.0, held=held)
    achieved = (len(writes) - 1) / (writes[-1] - writes[0])
    # Steady state: the median time 50 writes take (any window of the run), so one hiccup of this
    # process (CI's busy pass once measured 96.4 % over the whole run, no machine-wide noise seen,
    # 48-49.4/s in every reproduction) does not decide; the whole run still may not fall below 92 %.
    steady = 50 / median(later - earlier for earlier, later in zip(writes, writes[50:], strict=False))
    # a busy machine (two or four CPU burners: 94-96 %) wakes the sender late more often than not; so
    # may a busy process, which only this loop's own lateness shows (p90 0.6-0.8 ms here when quiet)
    loop_p90 = sorted(late)[int(0.9 * len(late))] if late else 0.0
    share = 0.92 if noise.busy or loop_p90 > BUSY else 0.97
    shown = f"scheduling p90 {noise.p90 * 1000:.1f} ms, this loop's p90 {loop_p90 * 1000:.1f} ms"
    assert steady >= share * 50, f"steady {steady:.2f}/s, whole run {achieved:.2f}/s of 50/s ({shown})"
    assert achieved >= 0.92 * 50, f"whole run {achieved:.2f}/s of 50/s ({shown})"


# --- the token-bucket form ------------------------------------------------------------------------------
def token(per: float, burst: int, **kw: object) -> spec.RateLimit:
    return spec.RateLimit(requests=1, per=per, burst=burst, bucket="t", form=spec.LimitForm.TOKEN, **kw)  # type: ignore[arg-type]


def test_token_bucket_bursts_then_refills_one_per_interval() -> None:
    """0.33/s, burst 3 (the ported workers' limit): calls 1-3 at once, call 4 one interval (+ margin,
    3.045 s) later, then one per interval; a full bucket again after an idle spell."""
    clock = FakeClock()
    limiter = Limiter(token(1 / 0.33, 3), clock=clock, sleep=clock.sleep)
    step = round(1 / 0.33 + limiter.margin, 6)  # 0.5 % of the interval: 15 ms
    times = asyncio.run(grant_times(limiter, clock, 6))
    assert times == pytest.approx([0.0, 0.0, 0.0, step, 2 * step, 3 * step], abs=1e-5)

    async def later() -> list[float]:
        clock.now += 60
        return await grant_times(limiter, clock, 4)

    rest = asyncio.run(later())
    assert rest[:3] == [rest[0]] * 3
    assert rest[3] > rest[0] + 3.0


def test_token_bucket_counts_open_grants_and_late_sends() -> None:
    """Burst 2: two grants open (not sent) block a third; the bucket refills from when they were sent."""
    clock = FakeClock()
    limiter = Limiter(token(1.0, 2), margin=0.0, clock=clock, sleep=clock.sleep)

    async def main() -> float:
        first, second = await limiter.reserve(), await limiter.reserve()
        third = asyncio.create_task(limiter.reserve())
        await asyncio.sleep(0.01)
        assert not third.done()
        clock.now = 1002.0
        await limiter.sending(first)
        await limiter.sending(second)
        await third
        return clock() - 1000.0

    assert asyncio.run(main()) == 3.0  # sent at 2 s: two tokens back by 4 s, the first at 3 s


def test_token_form_from_yaml(tmp_path: Path) -> None:
    """`rate: 0.33/s` + `burst: 3` is the token form; with requests/per it is refused by the schema."""
    from runner import config

    source = tmp_path / "t.yaml"
    base = (ROOT / "sources" / "example.yaml").read_text()
    start = base.index("rate_limit:")
    end = base.index("\n\n", start)
    source.write_text(base[:start] + "rate_limit:\n  rate: 0.33/s\n  burst: 3\n  bucket: t" + base[end:])
    limit = config.load(source).rate_limit
    assert (limit.form, limit.requests, limit.burst) == (spec.LimitForm.TOKEN, 1, 3)
    assert limit.per == pytest.approx(1 / 0.33)
    source.write_text(base[:start] + "rate_limit:\n  rate: 1/s\n  requests: 2\n  per: 1s" + base[end:])
    with pytest.raises(ConfigError):
        config.load(source)


def test_a_declared_margin_pads_every_window() -> None:
    """`margin: 100ms` (a link whose latency varies by up to that): 2 per 1 s grants the third at 1.1 s
    instead of 1.01 s; the token form pads its interval the same way."""
    clock = FakeClock()
    window = spec.RateLimit(requests=2, per=1.0, bucket="m", margin=0.1)
    times = asyncio.run(grant_times(Limiter(window, clock=clock, sleep=clock.sleep), clock, 3))
    assert times == pytest.approx([0.0, 0.5 * 1.1, 1.1], abs=1e-6)
    clock = FakeClock()
    limiter = Limiter(token(1.0, 1, margin=0.1), clock=clock, sleep=clock.sleep)
    assert asyncio.run(grant_times(limiter, clock, 3)) == pytest.approx([0.0, 1.1, 2.2], abs=1e-6)


def test_margin_from_yaml(tmp_path: Path) -> None:
    """`rate_limit.margin` is a duration from 0s to 60s, in both forms."""
    base = "name: m\nrequest: {{url: 'https://api.example/{{appid}}'}}\nentities: {{columns: {{appid: int}}}}\n"
    base += "records: body\nwrites: [{{table: t, key: [appid], columns: {{appid: entity.appid}}}}]\nrate_limit: {rl}\n"
    good = tmp_path / "good.yaml"
    good.write_text(base.format(rl="{rate: 1/s, burst: 2, margin: 150ms}"))
    assert config.load(good).rate_limit.margin == pytest.approx(0.15)
    bad = tmp_path / "bad.yaml"
    bad.write_text(base.format(rl="{requests: 2, per: 1s, margin: 2m}"))
    with pytest.raises(ConfigError, match=r"rate_limit.margin: '2m' is out of range: from 0s to 60s"):
        config.load(bad)


def test_try_reserve_grants_only_what_reserve_would_grant_at_once() -> None:
    """The transport's synchronous grant: the same grant `reserve()` would hand out without waiting,
    else None (the slot is later, or another request already waits for the lock: its turn is kept)."""

    async def main() -> None:
        clock = FakeClock()
        limiter = Limiter(spec.RateLimit(requests=2, per=1.0, bucket="t"), margin=0.0, clock=clock, sleep=clock.sleep)
        first = limiter.try_reserve()
        assert first is not None
        assert first.at == clock()
        assert limiter.requests == 1
        second = await limiter.reserve()
        assert second.at == clock()
        assert limiter.try_reserve() is None  # two open grants fill the window
        limiter.release(first)
        limiter.release(second)
        assert limiter.try_reserve() is None  # the window holds both stamps for a second
        clock.now += 1.0
        async with limiter._loop_lock():  # a request holds the lock: never jump ahead of it
            assert limiter.try_reserve() is None
        third = limiter.try_reserve()
        assert third is not None
        assert limiter.requests == 3
        limiter.close()
        assert limiter.try_reserve() is None

    asyncio.run(main())


def test_a_shared_limiter_has_no_synchronous_grant(db: Database) -> None:
    limiter = DatabaseLimiter(spec.RateLimit(requests=5, per=1.0, bucket="t", shared=spec.LimitScope.DATABASE), db.dsn)

    async def main() -> None:
        assert limiter.try_reserve() is None

    asyncio.run(main())
