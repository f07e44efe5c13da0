"""The HTTP client: one `send` per logical request, with a total per-attempt timeout, a body-size cap,
tenacity retries with backoff, and Retry-After honoured for the whole rate-limit bucket.

httpx exceptions are translated here and nowhere else. The only tenacity import.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
import tenacity

from runner import spec
from runner.errors import FetchError, RunFailed, Transient
from runner.expressions import JSON
from runner.ratelimit import GRANTED, Limiter, RateLimitedTransport

log = logging.getLogger(__name__)

EXCERPT = 200  # bytes of the body kept in Reply.raw for messages
TRANSIENT_EXCERPT = 80  # characters of a transient answer's body quoted in its retry message


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """One HTTP response, read and closed. `body` is the decoded JSON, or None when it is not JSON."""

    status: int
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    body: JSON
    raw: bytes  # the first EXCERPT bytes, for messages
    url: str  # redacted
    elapsed: float  # seconds from the rate-limit grant to the end of the body
    content_type: str  # media type, lower-case, without parameters ("" when absent)


def build(
    source_request: spec.Request,
    limiter: Limiter,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    max_connections: int,
    aiohttp: bool = False,
) -> httpx.AsyncClient:
    """An AsyncClient whose every attempt waits for `limiter`. `transport` replaces the inner transport
    (tests: httpx.MockTransport); `aiohttp=True` uses httpx_aiohttp's transport instead of httpx's.

    Keep `max_connections` at or above the engine's concurrency: a request that waits for a pooled
    connection after its grant arrives late and can bunch with later ones at the server. Above ~32
    connections httpx's pool slows down sharply (docs: environment facts).

    httpx's own transport is the default although httpx-aiohttp measured up to 2x faster
    (docs/benchmarks.md): aiohttp re-parses the URL string with yarl, which decodes `%2E%2E` and
    resolves it, so an entity value of `..` could climb out of the templated path. Correct first.
    """
    verify = source_request.verify_tls
    if not verify:
        log.warning("TLS certificate verification is disabled for %s", source_request.url.text)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    if transport is None and aiohttp:
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(verify=verify, limits=limits)
    inner = transport or httpx.AsyncHTTPTransport(verify=verify, limits=limits)
    # httpx's timeouts are per read; send() enforces the real total. These are only a backstop.
    timeout = httpx.Timeout(source_request.timeout)
    return httpx.AsyncClient(transport=RateLimitedTransport(inner, limiter), timeout=timeout, follow_redirects=False)


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
    `policy.max_wait`. Any other status is returned: the outcome rules decide what it means.
    `client` must come from `build`: its transport starts the timeout clock when the budget is granted.
    """
    url = redact(str(request.url))
    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(policy.attempts),
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
        raise Transient(
            redact(f"gave up after {policy.attempts} attempts: {exc.reason} ({request.method} {url})")
        ) from None
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover


def _wait(policy: spec.Retry) -> Callable[[tenacity.RetryCallState], float]:
    """Retry-After when the server sent one, else exponential backoff with +/- jitter, capped."""

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return exc.retry_after
        backoff = min(policy.initial * policy.factor ** (state.attempt_number - 1), policy.max_delay)
        return max(0.0, backoff * (1 + random.uniform(-policy.jitter, policy.jitter)))

    return wait


async def _attempt(
    client: httpx.AsyncClient,
    request: httpx.Request,
    policy: spec.Retry,
    max_body: int,
    timeout: float,
    limiter: Limiter,
    url: str,
) -> Reply:
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    try:
        async with asyncio.timeout(None) as deadline:

            def granted() -> None:  # the clock starts once the rate limit lets the request go
                nonlocal started
                started = time.monotonic()
                deadline.reschedule(loop.time() + timeout)

            request.extensions[GRANTED] = granted
            response = await client.send(request, stream=True)
            try:
                if response.status_code in policy.statuses:
                    raise _transient_status(response, policy, limiter, url, await _excerpt(response))
                raw = await _read(response, max_body, url)
            finally:
                await response.aclose()
    except TimeoutError:
        raise _Retryable(f"no complete answer within {timeout:g} s (request.timeout)") from None
    except httpx.TimeoutException as exc:
        raise _Retryable(f"timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise _Retryable(f"connection failed ({type(exc).__name__}: {exc})") from None
    finally:
        request.extensions.pop(GRANTED, None)
    return _reply(response, raw, url, time.monotonic() - started)


def _transient_status(
    response: httpx.Response, policy: spec.Retry, limiter: Limiter, url: str, raw: bytes
) -> _Retryable:
    """The retryable error for a transient status; a Retry-After pauses the bucket (or fails the run)."""
    header = response.headers.get("retry-after")
    retry_after = _retry_after(header) if header else None
    if retry_after is not None:
        if retry_after > policy.max_wait:
            raise RunFailed(
                f"{url} answered HTTP {response.status_code} with Retry-After: {header} ({retry_after:.0f} s),"
                f" longer than retry.max_wait ({policy.max_wait:g} s); stopping the run instead of waiting"
            )
        limiter.pause(retry_after)
    detail = f"HTTP {response.status_code}" + (f" (Retry-After: {header})" if header else "")
    # Cut by characters, with a mark: the caller redacts this text (it has the redactor), which masks
    # any 8-character piece of a secret and, before the mark, any start of one the cut left behind.
    text = raw.decode("utf-8", "replace").strip()
    text = text if len(text) <= TRANSIENT_EXCERPT else text[:TRANSIENT_EXCERPT] + "…"
    return _Retryable(detail + (f" {text!r}" if text else ""), retry_after)


def _retry_after(value: str) -> float | None:
    """Seconds from a Retry-After header: delay-seconds or an HTTP-date; None when unreadable."""
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


async def _excerpt(response: httpx.Response) -> bytes:
    async for chunk in response.aiter_bytes():
        return chunk[:EXCERPT]
    return b""


async def _read(response: httpx.Response, max_body: int, url: str) -> bytes:
    """The whole body, abandoned (not buffered) as soon as it would exceed `max_body`."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body:
        raise FetchError(
            f"response body from {url} declares {int(declared):,} bytes (Content-Length),"
            f" more than request.max_body ({max_body:,} bytes)"
        )
    body = bytearray()
    async for chunk in response.aiter_bytes():  # decoded: a gzip bomb is counted after inflating
        body += chunk
        if len(body) > max_body:
            raise FetchError(
                f"response body from {url} exceeded request.max_body ({max_body:,} bytes); stopped reading"
            )
    return bytes(body)


def _reply(response: httpx.Response, raw: bytes, url: str, elapsed: float) -> Reply:
    headers: dict[str, str] = {}
    for name, value in response.headers.multi_items():
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    return Reply(
        status=response.status_code,
        headers=headers,
        body=_json(raw),
        raw=raw[:EXCERPT],
        url=url,
        elapsed=elapsed,
        content_type=content_type,
    )


def _json(raw: bytes) -> JSON:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:  # includes UnicodeDecodeError
        return None
