"""A source's `auth:` block at run time: static credentials (bearer, api_key, basic) and OAuth2 access
tokens (runner/oauth.py) on each request to the source's own origin.

`AuthTransport` wraps the rate-limited transport, so every attempt and every page to the source's own
origin carries the credentials, and a request to another origin (a next-page link to `allow_origins`)
never does. Token requests (runner/tokens.py) go through a client of their own: they do not spend the
API's rate budget unless the block says so (`rate_limited: true`). A 401 renews an OAuth2 token once
for all the requests refused with it (runner/oauth.py); a refusal that remains is a run failure saying
what to check (runner/refusals.py).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from runner import refusals, spec, templating, tokens
from runner.errors import RunFailed
from runner.oauth import AccessToken, Token
from runner.oauth import Tokens as Tokens  # re-exported: the engine and `run` make the run's one as auth.Tokens
from runner.ratelimit.local import AUTHORIZE, WAITING, Limiter
from runner.ratelimit.transport import RateLimitedTransport

log = logging.getLogger("syncrun")

NO_RETRY = spec.Retry(attempts=1)
MAX_RENEWALS = 2  # a request refused with a token is sent again with a renewed one at most this often
MAX_DECLINED = 3  # a request gives up a grant to wait for a renewal in flight at most this often

Origin = tuple[str, str, int | None]


def origin(url: httpx.URL) -> Origin:
    return url.scheme, url.host, url.port


def for_source(
    source: spec.Source, settings: templating.Settings, tokens: Tokens | None = None, limiter: Limiter | None = None
) -> Authenticator | None:
    """The source's authenticator for this run, or None without an `auth:` block. `tokens` holds the
    run's OAuth2 tokens (shared between sources using one block); a new one when not given. `limiter`:
    the source's, which token requests wait for only with `auth.rate_limited`."""
    if source.auth is None:
        return None
    tokens = tokens or Tokens()
    placeholders = dict.fromkeys(source.request.url.columns, "0")
    url = httpx.URL(templating.render(source.request.url, placeholders, settings, url=True))
    verify_tls = source.request.verify_tls if source.auth.verify_tls is None else source.auth.verify_tls
    if not verify_tls and source.auth.token_url is not None:  # it receives the client secret: say so, once
        shown = settings.redact(templating.render(source.auth.token_url, {}, settings, url=True))
        if shown not in tokens.unverified:
            tokens.unverified.add(shown)
            log.warning("TLS certificate verification is disabled for the token endpoint %s", shown)
    return Authenticator(
        source.auth,
        origin(url),
        settings,
        timeout=source.request.timeout,
        retry=source.retry,
        token=tokens.token(source.auth),
        stand_in=tokens.stand_in,
        verify_tls=verify_tls,
        limiter=limiter if source.auth.rate_limited else None,
    )


class Authenticator:
    """Puts the credentials on a request; renews an OAuth2 token when it runs out or is rejected."""

    def __init__(
        self,
        auth: spec.Auth,
        own: Origin,
        settings: templating.Settings,
        *,
        timeout: float,
        retry: spec.Retry = NO_RETRY,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        token_transport: httpx.AsyncBaseTransport | None = None,
        token: Token | None = None,
        stand_in: bool = False,
        verify_tls: bool = True,
        limiter: Limiter | None = None,
    ) -> None:
        self.auth, self.own, self.settings, self.clock = auth, own, settings, clock
        self.oauth2 = auth.type in (spec.AuthType.OAUTH2_CLIENT_CREDENTIALS, spec.AuthType.OAUTH2_REFRESH_TOKEN)
        self.token = token or Token()
        self._basic_header: str | None = None
        endpoint = tokens.Endpoint(
            auth,
            settings,
            timeout=timeout,
            retry=retry,
            sleep=sleep,
            transport=token_transport,
            verify_tls=verify_tls,
            limiter=limiter,
        )
        self.access = AccessToken(auth, settings, endpoint, self.token, clock=clock, stand_in=stand_in)

    @property
    def fetches(self) -> int:
        return self.token.fetches

    def value(self, template: spec.Template | None) -> str:
        assert template is not None  # the schema requires the type's fields
        return templating.render(template, {}, self.settings, url=False)

    def _basic(self) -> str:
        """`Basic base64(username:password)`, made once. The encoded pair is masked as a secret of its
        own (any 8 characters of it): the password's pieces do not show in its base64 form, and an API
        that echoes the request's head stored it in a row (review revE F1)."""
        if self._basic_header is None:
            pair = f"{self.value(self.auth.username)}:{self.value(self.auth.password)}".encode()
            encoded = base64.b64encode(pair).decode()
            self.settings.redact.add(encoded)
            self._basic_header = f"Basic {encoded}"
        return self._basic_header

    async def apply(self, request: httpx.Request, *, fetch: bool = True) -> int | None:
        """Add the credentials to `request`, a copy made for sending (callers build the next page from
        theirs, which must stay without them); the generation of the OAuth2 token used (`Token`), else
        None. `fetch`: renew a token that is due (else the newest one is used as it is)."""
        auth = self.auth
        if auth.type is spec.AuthType.BEARER:
            request.headers["Authorization"] = f"Bearer {self.value(auth.token)}"
        elif auth.type is spec.AuthType.BASIC:
            request.headers["Authorization"] = self._basic()
        elif auth.type is spec.AuthType.API_KEY:
            assert auth.name is not None
            if auth.in_ is spec.KeyIn.HEADER:
                request.headers[auth.name] = self.value(auth.value)
            else:
                request.url = templating.with_param(request.url, auth.name, self.value(auth.value))
        else:
            if fetch or self.token.value is None:
                await self.current()
            # read together, after any wait: the generation names the value sent
            value, generation = self.token.value, self.token.generation
            request.headers["Authorization"] = f"Bearer {value}"
            return generation
        return None

    async def current(self) -> str:
        """The OAuth2 token to send (fetched first when due): runner/oauth.py."""
        return await self.access.current()

    async def renew(self, rejected: int) -> None:
        """The API refused the token of generation `rejected`: renewed once for every request refused with it."""
        await self.access.renew(rejected)

    def renewing(self) -> bool:
        """Whether an OAuth2 token is being fetched right now (a request may wait for it)."""
        return self.access.renewing()

    async def aclose(self) -> None:
        await self.access.aclose()


class _Renewing(Exception):
    """A rate-limited request granted while its token is being renewed: not sent with the old one."""


class AuthTransport(httpx.AsyncBaseTransport):
    """Authenticates each request to the source's origin before the inner (rate-limited) transport
    sends it. A 401 renews an OAuth2 token (unless another request already did) and sends the request
    again; twice at most: a second renewal is needed only when tokens last fewer requests than are in
    flight. A 401 that remains is a run failure: every other request would carry the same credentials."""

    def __init__(self, inner: httpx.AsyncBaseTransport, authenticator: Authenticator) -> None:
        self.inner, self.authenticator = inner, authenticator

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        authenticator = self.authenticator
        if origin(request.url) != authenticator.own:
            return await self.inner.handle_async_request(request)
        sent = _copy(request)
        used: int | None = None  # the generation of the token sent (Token)
        limited = isinstance(self.inner, RateLimitedTransport)  # authorize() then runs holding a grant
        declined = 0  # grants given up while the token was being renewed (rate_limited)

        async def authorize(sending: httpx.Request) -> None:
            # After the limiter's grant: a token picked before the wait (up to concurrency × the rate's
            # interval earlier) could expire in the queue and come back as a 401, spending the budget twice.
            # Renewing here holds the grant while the token endpoint answers; with `rate_limited` the token
            # request itself waits for the limiter, so then the newest token is taken as it is (a due one
            # was renewed before the wait, below) and a 401 renews it as usual. A grant that comes while
            # that renewal is in flight is given up, not spent on the token the API just refused: waiting
            # for the renewal here would hold the grant the token request may need (review revL F4).
            nonlocal used
            if limited and authenticator.auth.rate_limited and authenticator.renewing() and declined < MAX_DECLINED:
                raise _Renewing
            used = await authenticator.apply(sending, fetch=not authenticator.auth.rate_limited)

        async def send() -> httpx.Response:
            nonlocal declined
            while True:
                if not limited:
                    await authorize(sent)
                elif authenticator.oauth2:
                    await authenticator.current()  # a token due now is renewed before the wait, not holding a grant
                try:
                    return await self.inner.handle_async_request(sent)
                except _Renewing:
                    # The limiter released the grant unsent, counted as sent (every attempt spends budget);
                    # current() above waits for the renewal, then the request queues for a grant again.
                    declined += 1

        sent.extensions[AUTHORIZE] = authorize
        response = await send()
        renewals = 0
        while response.status_code == 401 and used is not None and renewals < MAX_RENEWALS:
            # Renewed only if no other request did it meanwhile; sent again with whichever token is current.
            await response.aclose()
            # not on the attempt's clock (client.py); the limiter's next grant (GRANTED) starts it again
            if limited and callable(waiting := sent.extensions.get(WAITING)):
                waiting(sent)
            await authenticator.renew(used)
            renewals += 1
            response = await send()
        if response.status_code == 403:  # sent with the credentials (the request is to the own origin)
            challenge = refusals.params(response.headers.get("www-authenticate", ""))
            if challenge.get("error") == "insufficient_scope":  # RFC 6750 §3.1: the same for every request
                await response.aclose()
                raise RunFailed(
                    refusals.lacking(authenticator.auth, authenticator.settings, request, challenge.get("scope", ""))
                )
        if response.status_code != 401:
            return response
        try:
            message = await refusals.rejected(
                authenticator.auth, authenticator.settings, request, response, renewed=used is not None
            )
        finally:
            await response.aclose()
        raise RunFailed(message)

    async def aclose(self) -> None:
        await self.authenticator.aclose()
        await self.inner.aclose()


def _copy(request: httpx.Request) -> httpx.Request:
    """The same request as a new object; its extensions (the rate limiter's grant callback) copied."""
    headers, extensions = request.headers.copy(), dict(request.extensions)
    return httpx.Request(request.method, request.url, headers=headers, stream=request.stream, extensions=extensions)
