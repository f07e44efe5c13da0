"""RateLimitedTransport: every request an `AsyncClient` sends (retries included) waits for its bucket's
budget, and its grant is stamped when its bytes actually leave."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx

from runner.errors import Stopped
from runner.ratelimit.local import AUTHORIZE, GRANTED, Grant, Limiter


class RateLimitedTransport(httpx.AsyncBaseTransport):
    """Wait for the bucket's budget before every request an `AsyncClient` sends, retries included, and
    stamp the grant when the request's bytes actually leave.

    With httpx's own transport (httpcore), and with runner/aiotransport.py's (whose requests announce
    their send under httpcore's event names: runner/aiowire.py), the stamp comes from the `trace`
    extension at `send_request_headers.started`: the connection is taken from the pool (and connected)
    by then, and nothing awaits between that event and the socket write. Any other inner transport (MockTransport)
    has no such event: the grant is stamped as it is handed over, and what that transport does before
    writing (connecting, its own pool) is not seen; see docs/rate-limits.md.

    Wraps rather than subclasses, so tests build `RateLimitedTransport(httpx.MockTransport(h), limiter)`
    and exercise the production path.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, limiter: Limiter, *, stop: asyncio.Event | None = None) -> None:
        self._inner, self._limiter = inner, limiter
        # httpcore's transport, and runner/aiotransport.py's, which announces its sends under httpcore's names
        self._traced = isinstance(inner, httpx.AsyncHTTPTransport) or getattr(inner, "emits_trace", False)
        # Once the run is stopped, a request still waiting for its grant is not sent (`Stopped`): the
        # wait is not in-flight work, so the run ends at once instead of after the grace period.
        self._stop = stop
        self._stopping: asyncio.Future[Any] | None = None  # one waiter on `stop`, shared by all requests

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        limiter, stop = self._limiter, self._stop
        # the budget has room now: no coroutine, no wait (a request that must wait takes `_wait`)
        grant = limiter.try_reserve() if stop is None or not stop.is_set() else None
        if grant is None:
            grant = await self._wait()
        extensions = request.extensions
        previous = extensions.get("trace")
        try:
            authorize = extensions.get(AUTHORIZE)
            if callable(authorize):  # the credentials, as fresh as the moment of sending (runner/auth.py)
                try:
                    await authorize(request)
                except BaseException:
                    # Given up unsent (a token renewal in flight, a failed one, the run's end): the grant
                    # still spends budget (`release` below stamps it), but `requests` counts requests
                    # sent, as the job row's requests_made says (review revM L1).
                    limiter.requests -= 1
                    raise
            # called with the request sent: a copy (runner/auth.py's) is what the inner transport reads
            granted = extensions.get(GRANTED)
            if callable(granted):
                granted(request)
            if not self._traced:
                if await limiter.sending(grant) and callable(granted):
                    granted(request)
                return await self._inner.handle_async_request(request)

            fresh = False  # this request opened a plain-HTTP connection: the server may count it late

            async def trace(event: str, info: dict[str, Any]) -> None:
                nonlocal fresh
                if event.startswith("connection.connect_tcp."):
                    fresh = True
                elif event.startswith("connection.start_tls."):
                    fresh = False  # the server took part in the handshake: it has the connection
                # the last thing before the write: nothing of ours awaits between this stamp and the
                # socket (a caller's own trace runs after it, so it sees the write's moment too)
                elif event.endswith(".send_request_headers.started"):
                    again = await (limiter.sending_unseen(grant) if fresh else limiter.sending(grant, learn=True))
                    if again and callable(granted):
                        granted(request)  # granted again (a shared limiter): restart the attempt's clock
                elif event.endswith(".receive_response_headers.complete"):
                    limiter.answered(grant)  # a no-op once stamped at the write
                if previous is not None:
                    await previous(event, info)

            extensions["trace"] = trace
            return await self._inner.handle_async_request(request)
        finally:
            limiter.release(grant)
            if previous is None:
                extensions.pop("trace", None)
            else:
                extensions["trace"] = previous

    async def _wait(self) -> Grant:
        stop = self._stop
        if stop is None:
            return await self._limiter.reserve()
        if self._stopping is None or self._stopping.get_loop() is not asyncio.get_running_loop():
            self._stopping = asyncio.ensure_future(stop.wait())
        if not self._stopping.done():
            reserving = asyncio.ensure_future(self._limiter.reserve())
            try:
                await asyncio.wait({reserving, self._stopping}, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                # Cancelled while waiting (the attempt's deadline, the run's end): `asyncio.wait` leaves
                # the reserve running, and a grant it hands out later would stay open, counted in every
                # window, for ever; a few of those and nothing is granted again (review revJ F1: a hang).
                reserving.cancel()
                reserving.add_done_callback(self._abandoned)
                raise
            if not self._stopping.done():
                return reserving.result()
            reserving.cancel()  # a shared limiter gives the reservation back
            with contextlib.suppress(asyncio.CancelledError, Stopped):
                self._limiter.release(await reserving)  # granted in the same step: stamped, never sent
                self._limiter.requests -= 1
        raise Stopped("the run stopped while this request waited for its rate-limit grant; not sent")

    def _abandoned(self, reserving: asyncio.Future[Grant]) -> None:
        """A reserve whose caller is gone: a grant it got all the same (in the step it was cancelled) is
        stamped as sent now, as `release` stamps any grant never sent; one it never got costs nothing."""
        if not reserving.cancelled() and reserving.exception() is None:
            self._limiter.release(reserving.result())
            self._limiter.requests -= 1  # never sent: not a request made

    async def aclose(self) -> None:
        if self._stopping is not None:
            self._stopping.cancel()
        await self._inner.aclose()
