"""The HTTP client: one `send` per logical request, with a total per-attempt timeout, a body-size cap,
tenacity retries with backoff, and Retry-After honoured for the whole rate-limit bucket.

Cookies are not kept: a `Set-Cookie` from the API is ignored, so no answer can grow the state every
later request carries or put bytes into a later request's head (docs/troubleshooting.md, "Cookies").
A source that needs a cookie sends it as a header (`request.headers: {Cookie: …}`).

httpx exceptions are translated here and nowhere else. The only tenacity import (at the first retry).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any

import httpx

from runner import spec
from runner.aiotransport import BOUNDED, AiohttpTransport, released
from runner.auth import Authenticator, AuthTransport
from runner.body import ACCEPT_ENCODING, MAX_DEPTH, excerpt, head, parse_json, read_body
from runner.errors import FetchError, RunFailed, Transient
from runner.plans import RequestPlan
from runner.ratelimit import GRANTED, WAITING, Limiter, RateLimitedTransport
from runner.reply import EXCERPT, Reply

# Where other modules (and tests) have always found them: the body's reader and the reply.
__all__ = ["ACCEPT_ENCODING", "EXCERPT", "MAX_DEPTH", "Client", "Reply", "build", "parse_json", "read_body", "send"]

if TYPE_CHECKING:
    import tenacity

log = logging.getLogger(__name__)

TRANSIENT_EXCERPT = 80  # characters of a transient answer's body quoted in its retry message
_NO_COOKIES = DefaultCookiePolicy(allowed_domains=[])  # no domain may set (or be sent) a cookie


class Client(httpx.AsyncClient):
    """httpx's client as `build` makes it. `send` below hands its requests straight to `chain` (the
    transports: auth, rate limit, aiohttp), skipping httpx's per-request work that a source run does
    not use (its cookie jar: a server's cookies are never kept, see the module's docstring; redirects
    are off, auth is a transport). `plans`: each source's compiled request (runner/plans.py)."""

    def __init__(self, *, chain: httpx.AsyncBaseTransport, **options: Any) -> None:
        # A jar that refuses every cookie, for a request sent through httpx's own `send` (`_exchange`
        # does not look at Set-Cookie at all).
        super().__init__(transport=chain, cookies=CookieJar(_NO_COOKIES), **options)
        self.chain = chain
        self.plans: dict[tuple[int, int], RequestPlan] = {}


def build(
    source_request: spec.Request,
    limiter: Limiter,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    max_connections: int,
    stop: asyncio.Event | None = None,
    authenticator: Authenticator | None = None,
) -> httpx.AsyncClient:
    """An AsyncClient whose every attempt waits for `limiter`. `transport` replaces the inner transport
    (tests: httpx.MockTransport).

    Keep `max_connections` at or above the engine's concurrency: a request that waits for a pooled
    connection after its grant arrives late and can bunch with later ones at the server.

    The inner transport is runner/aiotransport.py's: httpx's API over aiohttp's connection pool,
    which stays linear where httpcore's collapses above ~32 connections (docs/benchmarks.md). It
    hands aiohttp the URL already encoded, so `%2E%2E` in an entity value stays a literal segment.

    `authenticator` (runner/auth.py) puts the source's credentials on every request to its origin.
    """
    verify = source_request.verify_tls
    if not verify:
        log.warning("TLS certificate verification is disabled for %s", source_request.url.text)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    inner = transport or AiohttpTransport(verify=verify, limits=limits)
    # httpx's timeouts are per read; send() enforces the real total. These are only a backstop.
    timeout = httpx.Timeout(source_request.timeout)
    limited: httpx.AsyncBaseTransport = RateLimitedTransport(inner, limiter, stop=stop)
    return Client(
        chain=AuthTransport(limited, authenticator) if authenticator else limited,
        timeout=timeout,
        follow_redirects=False,
        headers={"Accept-Encoding": ACCEPT_ENCODING},  # never advertise a coding we cannot bound
    )


class _Retryable(Exception):
    """A transient failure of one attempt. Never escapes `send`."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


async def send(
    client: httpx.AsyncClient,
    request: httpx.Request,
    policy: spec.Retry,
    *,
    max_body: int,
    timeout: float,
    limiter: Limiter,
    redact: Callable[[str], str],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Reply:
    """Send `request` until it gets a non-transient answer, at most `policy.attempts` times.

    Transient: a status in `policy.statuses`, a connection error, or an attempt that took longer
    than `timeout` (connect + send + the whole body). Between attempts: exponential backoff with
    jitter, or the server's Retry-After, which pauses the whole bucket. Raises Transient when the
    attempts run out, FetchError for a body over `max_body`, RunFailed for a Retry-After beyond
    `policy.max_wait` or a server certificate TLS verification refuses (a setting to fix, not an
    entity's transient failure to retry until the breaker trips). Any other status is returned: the
    outcome rules decide what it means.
    `client` must come from `build`: its transport starts the timeout clock when the budget is granted.
    """
    url = redact(str(request.url))
    # The first attempt runs without tenacity: building its retry machinery for every request cost
    # ~30 us of event-loop time, and most requests never retry.
    try:
        return await _attempt(client, request, policy, max_body, timeout, limiter, url)
    except _Retryable as exc:
        failed = exc
    if policy.attempts > 1:
        import tenacity  # only a retry needs it: ~5 ms of start-up otherwise

        await sleep(_delay(policy, failed, 1))
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(policy.attempts - 1),
            wait=_wait(policy),
            retry=tenacity.retry_if_exception_type(_Retryable),
            sleep=sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await _attempt(client, request, policy, max_body, timeout, limiter, url)
        except _Retryable as exc:
            failed = exc
    raise Transient(
        redact(f"gave up after {policy.attempts} attempts: {failed.reason} ({request.method} {url})")
    ) from None


def _wait(policy: spec.Retry) -> Callable[[tenacity.RetryCallState], float]:
    """tenacity's wait for the attempts after the first (its attempt 1 is the request's attempt 2)."""

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return _delay(policy, exc, state.attempt_number + 1)

    return wait


def _delay(policy: spec.Retry, exc: BaseException | None, attempt: int) -> float:
    """After failed attempt `attempt` (1-based): Retry-After when the server sent one, else exponential
    backoff with +/- jitter, capped."""
    if isinstance(exc, _Retryable) and exc.retry_after is not None:
        return exc.retry_after
    backoff = min(policy.initial * policy.factor ** (attempt - 1), policy.max_delay)
    return max(0.0, backoff * (1 + random.uniform(-policy.jitter, policy.jitter)))


async def _attempt(
    client: httpx.AsyncClient,
    request: httpx.Request,
    policy: spec.Retry,
    max_body: int,
    timeout: float,
    limiter: Limiter,
    url: str,
) -> Reply:
    deadline = _Deadline(timeout)
    request.extensions[GRANTED] = deadline.granted  # the clock starts once the rate limit lets it go
    request.extensions[WAITING] = deadline.waiting  # and stops while a 401's renewal and new grant are awaited
    try:
        response = await _exchange(client, request)
        try:
            headers = head(response)  # once for the whole attempt
            if response.status_code in policy.statuses:
                raw = await excerpt(response, headers)
                raise _transient_status(response.status_code, headers, policy, limiter, url, raw)
            raw = await read_body(response, max_body, url, headers)
        finally:
            if not released(response):
                await response.aclose()
    except asyncio.CancelledError:
        if deadline.expired():
            raise _Retryable(f"no complete answer within {timeout:g} s (request.timeout)") from None
        raise
    except TimeoutError:
        raise _Retryable(f"no complete answer within {timeout:g} s (request.timeout)") from None
    except httpx.TimeoutException as exc:
        raise _Retryable(f"timed out ({type(exc).__name__})") from None
    except httpx.LocalProtocolError as exc:  # this request's head cannot be written: another attempt neither
        raise FetchError(f"unusable request to {url} ({exc})") from None
    except httpx.TransportError as exc:
        if refused := _certificate_refused(exc):  # the same for every request to the origin: not the entity's
            raise RunFailed(
                f"TLS certificate verification failed for {url} ({refused}): if the API's certificate is"
                " signed by a private CA, set SSL_CERT_FILE to that CA's certificate file; for a test"
                " server only, set request.verify_tls: false"
            ) from None
        raise _Retryable(f"connection failed ({type(exc).__name__}: {exc})") from None
    except httpx.HTTPError as exc:  # anything else httpx raises is about this response: definitive
        raise FetchError(f"unusable response from {url} ({type(exc).__name__}: {exc})") from None
    finally:
        deadline.close()
        request.extensions.pop(GRANTED, None)
        request.extensions.pop(WAITING, None)
        request.extensions.pop(BOUNDED, None)
    return _reply(response.status_code, headers, raw, url, time.monotonic() - deadline.started)


class _Deadline:
    """An attempt's total timeout, from its grant (`granted`, called by the rate limiter's transport with
    the request it sends when the budget lets it go, and again when a shared limiter grants it again:
    runner/auth.py sends a copy, which is the one the inner transport reads `BOUNDED` from) to the end of its
    body: the attempt's task is cancelled when it runs out, and `expired` tells that cancellation from
    any other. What `asyncio.timeout` did here (its context manager, state machine and a timer made,
    then rescheduled at the grant) cost ~4 us per attempt; this makes one timer, at the grant."""

    __slots__ = ("_cancelling", "_fired", "_handle", "_loop", "_task", "_timeout", "started")

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task, self._cancelling = task, task.cancelling()
        self._timeout = timeout
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False
        self.started = time.monotonic()

    def granted(self, sending: httpx.Request) -> None:
        self.started = time.monotonic()
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(self._loop.time() + self._timeout, self._expire)
        sending.extensions[BOUNDED] = True  # aiohttp's per-read timers are not needed under it

    def waiting(self, _: httpx.Request) -> None:
        """The attempt waits again (runner/auth.py: a 401's renewal, then a new grant): the clock stops
        until `granted` starts it for the request sent again."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _expire(self) -> None:
        self._fired = True
        self._task.cancel()

    def expired(self) -> bool:
        """Whether the CancelledError being handled is this deadline's (and only its): its cancellation
        is taken back either way, as asyncio.timeout does before raising TimeoutError."""
        if not self._fired:
            return False
        self._fired = False
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._fired:  # it fired, but the attempt ended before the cancellation reached it
            self._fired = False
            self._task.uncancel()


async def _exchange(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """`client.send(request, stream=True)`, directly through a `Client`'s transports. What httpx's send
    would add and syncrun depends on is kept: the response knows its request. Its cookie jar is not:
    a jar grew without bound under a Set-Cookie flood and was sent back whole on every request, and
    one cookie with a control or non-ASCII byte made every later request raise (review11 F1, F2)."""
    if not isinstance(client, Client):
        return await client.send(request, stream=True)
    if client.is_closed:
        raise RuntimeError("the HTTP client of this run was closed")
    response = await client.chain.handle_async_request(request)
    response.request = request
    return response


def _certificate_refused(exc: BaseException) -> str:
    """Why the server's certificate was refused, when that is what failed the connection (under
    aiohttp's transport or httpx's own, an ssl.SSLCertVerificationError is in the chain); else ""."""
    reason, seen = "", exc.__cause__ or exc.__context__
    for _ in range(8):  # a chain is short; never loop on a cycle
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):  # aiohttp's own error is one, without the reason
            reason = str(getattr(seen, "verify_message", None) or reason or "certificate refused")
        seen = seen.__cause__ or seen.__context__
    return reason


def _transient_status(
    status: int, headers: Mapping[str, str], policy: spec.Retry, limiter: Limiter, url: str, raw: bytes
) -> _Retryable:
    """The retryable error for a transient status; a Retry-After pauses the bucket (or fails the run)."""
    header = headers.get("retry-after")
    retry_after = _retry_after(header) if header else None
    if retry_after is not None:
        if retry_after > policy.max_wait:
            raise RunFailed(
                f"{url} answered HTTP {status} with Retry-After: {header} ({retry_after:.0f} s),"
                f" longer than retry.max_wait ({policy.max_wait:g} s); stopping the run instead of waiting"
            )
        limiter.pause(retry_after)
    detail = f"HTTP {status}" + (f" (Retry-After: {header})" if header else "")
    # Cut by characters, with a mark: the caller redacts this text (it has the redactor), which masks
    # any 8-character piece of a secret and, before the mark, any start of one the cut left behind.
    text = raw.decode("utf-8", "replace").strip()
    text = text if len(text) <= TRANSIENT_EXCERPT else text[:TRANSIENT_EXCERPT] + "…"
    return _Retryable(detail + (f" {text!r}" if text else ""), retry_after)


def _retry_after(value: str) -> float | None:
    """Seconds from a Retry-After header: delay-seconds or an HTTP-date; None when unreadable, which
    includes NaN, infinity and a date no datetime holds (year 99999999999 is an OverflowError)."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError, OverflowError):
        return None


def _reply(status: int, headers: dict[str, str], raw: bytes, url: str, elapsed: float) -> Reply:
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    body, problem = parse_json(raw, content_type)
    return Reply(
        status=status,
        headers=headers,
        body=body,
        raw=raw[:EXCERPT],
        url=url,
        elapsed=elapsed,
        content_type=content_type,
        problem=problem,
    )
