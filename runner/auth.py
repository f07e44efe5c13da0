"""A source's `auth:` block at run time: static credentials (bearer, api_key, basic) and OAuth2 access
tokens fetched while the run goes (client credentials, refresh token).

`AuthTransport` wraps the rate-limited transport, so every attempt and every page to the source's own
origin carries the credentials, and a request to another origin (a next-page link to `allow_origins`)
never does. Token requests (runner/tokens.py) go through a client of their own: they do not spend the
API's rate budget unless the block says so (`rate_limited: true`). One token is shared by all
concurrent requests, and by every source of the run using the same auth block (`Tokens`); one fetch
is in flight at a time; it is renewed shortly before `expires_in` runs out, and once when the API
answers 401 to it. A token is a secret the moment it arrives (added to the run's Redactor), and it is
never stored.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import Awaitable, Callable

import httpx

from runner import spec, templating, tokens
from runner.body import parse_json
from runner.errors import RunFailed
from runner.ratelimit.local import AUTHORIZE, WAITING, Limiter
from runner.ratelimit.transport import RateLimitedTransport

log = logging.getLogger("syncrun")

EXCERPT = tokens.EXCERPT  # bytes of a 401 answer read for the message
NO_RETRY = spec.Retry(attempts=1)
MAX_RENEWALS = 2  # a request refused with a token is sent again with a renewed one at most this often
MAX_MARGIN = 60.0  # renew at most this many seconds before expiry...
MARGIN_SHARE = 0.1  # ...and at most this share of the token's lifetime

Origin = tuple[str, str, int | None]
_FIELDS = {
    spec.AuthType.BEARER: ("token",),
    spec.AuthType.API_KEY: ("value",),
    spec.AuthType.BASIC: ("username", "password"),
    spec.AuthType.OAUTH2_CLIENT_CREDENTIALS: ("client_id", "client_secret", "scopes"),
    spec.AuthType.OAUTH2_REFRESH_TOKEN: ("refresh_token", "client_id"),
}


def origin(url: httpx.URL) -> Origin:
    return url.scheme, url.host, url.port


class Tokens:
    """The OAuth2 tokens of one run, one per auth block: sources that use the same block (a shared
    one from syncrun.yaml, or two identical ones) hold one token, renewed once for all of them. A
    replayed run (`stand_in`) never asks a token endpoint: its requests are answered from a cassette,
    which never holds a token exchange, so each source gets a stand-in token instead."""

    def __init__(self, *, stand_in: bool = False) -> None:
        self.stand_in = stand_in
        self.held: dict[spec.Auth, Token] = {}
        self.unverified: set[str] = set()  # token endpoints already named in a warning (once per run)

    def token(self, auth: spec.Auth) -> Token:
        return self.held.setdefault(auth, Token())


class Token:
    """One access token and when to renew it; one fetch in flight at a time (the lock). Renewals are
    told apart by `generation`, not by the token's value: a provider may answer a renewal with the
    token it gave before (cached until it expires), and a request refused with generation 3 renews
    only while generation 3 is current; the others refused with it wait for that renewal and use its
    token (review revE F2: compared by value, 9 requests refused at once made 9 token requests). A failed fetch
    is remembered (`failed`): every request that waited for the renewal, and any later one, gets the
    same failure without asking the endpoint again. Otherwise each waiter would repeat the whole retry
    policy (8 requests in flight, 3 attempts: 24 token requests for one failure), and with a rotating
    refresh-token provider re-send a refresh token the provider has already spent, which providers with
    reuse detection answer by revoking the whole token family."""

    def __init__(self) -> None:
        self.value: str | None = None
        self.generation = 0  # tokens fetched so far: which one a request was sent with
        self.renew_at = float("inf")
        self.fetches = 0  # token requests made (for tests and logs)
        self.failed: str | None = None  # the message of the fetch that failed: the run is over
        self.lock = asyncio.Lock()


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
        self.stand_in = stand_in
        self._basic_header: str | None = None
        self.endpoint = tokens.Endpoint(
            auth,
            settings,
            timeout=timeout,
            retry=retry,
            sleep=sleep,
            transport=token_transport,
            verify_tls=verify_tls,
            limiter=limiter,
        )

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
                request.url = request.url.copy_set_param(auth.name, self.value(auth.value))
        else:
            if fetch or self.token.value is None:
                await self.current()
            # read together, after any wait: the generation names the value sent
            value, generation = self.token.value, self.token.generation
            request.headers["Authorization"] = f"Bearer {value}"
            return generation
        return None

    async def current(self) -> str:
        token = self.token
        async with token.lock:
            if token.value is None or self.clock() >= token.renew_at or token.failed is not None:
                await self.fetch()
            assert token.value is not None
            return token.value

    async def renew(self, rejected: int) -> None:
        """The API refused the token of generation `rejected`: fetch a new one, unless another request
        already did (or is doing it: this waits for the lock, then finds a later generation)."""
        async with self.token.lock:
            if self.token.generation == rejected:
                await self.fetch()

    async def fetch(self) -> None:
        """A new token into the shared Token (its lock held by the caller)."""
        token = self.token
        if token.failed is not None:
            raise RunFailed(token.failed)
        if self.stand_in:
            token.fetches += 1
            token.generation += 1
            token.value, token.renew_at = f"replayed-token-{token.fetches}", float("inf")
            return
        started = self.clock()
        before = self.endpoint.attempts
        try:
            grant = await self.endpoint.grant()
            self.refuse_rotation(grant)
        except RunFailed as error:
            token.failed = str(error)
            raise
        finally:
            token.fetches += self.endpoint.attempts - before  # each attempt is a token request
        shown = self.settings.redact(self.value(self.auth.token_url))
        token.value = grant.access_token
        token.generation += 1
        expires = grant.expires_in
        token.renew_at = (
            float("inf") if expires is None else started + expires - min(MAX_MARGIN, expires * MARGIN_SHARE)
        )
        lasts = f"expires in {expires:g} s" if expires is not None else "no expires_in"
        log.info("fetched an access token from %s (%s; token request %d)", shown, lasts, token.fetches)

    def refuse_rotation(self, grant: tokens.Grant) -> None:
        """A refresh-token grant answered with a new refresh token: the provider rotates them. The one
        configured is then most likely spent, and syncrun never stores tokens: say so, and what to do."""
        if (
            self.auth.type is spec.AuthType.OAUTH2_REFRESH_TOKEN
            and grant.refresh_token is not None
            and grant.refresh_token != self.value(self.auth.refresh_token)
        ):
            shown = self.settings.redact(self.value(self.auth.token_url))
            raise RunFailed(
                f"the token endpoint {shown} rotated the refresh token (it answered a new one), which"
                f" syncrun does not support: it never stores tokens. The provider has most likely spent"
                f" {self.auth.field('refresh_token')} with this answer, so the next run would fail with"
                " invalid_grant: obtain a new refresh token, and use a client that does not rotate refresh"
                " tokens, or oauth2_client_credentials"
            )

    async def rejected(self, request: httpx.Request, response: httpx.Response, *, renewed: bool) -> str:
        """The message for a 401 the credentials could not get past."""
        raw = await _excerpt(response)
        body, _ = parse_json(raw)  # bounded depth: 2 KB of `[` is no traceback
        said = _challenge(response.headers.get("www-authenticate", "")) or tokens.oauth_error(body) or tokens.text(raw)
        names = [self.auth.field(name) for name in _FIELDS[self.auth.type]]
        fields = ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]
        again = " even with a newly fetched token" if renewed else ""
        url = self.settings.redact(str(request.url))
        return self.settings.redact(
            f"HTTP 401 from {request.method} {url} — the API rejected the {self.auth.type.value} credentials{again}"
            f"{f' ({said})' if said else ''}; check {fields}"
        )

    def lacking(self, request: httpx.Request, scope: str) -> str:
        """The message for a 403 whose challenge says `insufficient_scope` (RFC 6750 §3.1): every request
        of the source carries the same credentials, so the run stops, naming the scope the API asked for."""
        wanted = tokens.text(scope[:120].encode()).strip("'\"")
        asked = f"; the API asks for scope {wanted!r}" if wanted else ""
        if self.oauth2:
            sent = " ".join(self.auth.scopes) or "none"
            what = (
                f"the access token lacks a scope this request needs{asked};"
                f" add it to {self.auth.field('scopes')} (sent: {sent})"
            )
        else:
            names = [self.auth.field(name) for name in _FIELDS[self.auth.type]]
            what = (
                f"the {self.auth.type.value} credentials lack a permission this request needs{asked};"
                f" check what {names[0]} may do"
            )
        url = self.settings.redact(str(request.url))
        return self.settings.redact(f"HTTP 403 (insufficient_scope) from {request.method} {url} — {what}")

    async def aclose(self) -> None:
        await self.endpoint.aclose()


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

        async def authorize(sending: httpx.Request) -> None:
            # After the limiter's grant: a token picked before the wait (up to concurrency × the rate's
            # interval earlier) could expire in the queue and come back as a 401, spending the budget twice.
            # Renewing here holds the grant while the token endpoint answers; with `rate_limited` the token
            # request itself waits for the limiter, so then the newest token is taken as it is (a due one
            # was renewed before the wait, below) and a 401 renews it as usual.
            nonlocal used
            used = await authenticator.apply(sending, fetch=not authenticator.auth.rate_limited)

        async def send() -> httpx.Response:
            if not isinstance(self.inner, RateLimitedTransport):
                await authorize(sent)
            elif authenticator.oauth2:
                await authenticator.current()  # a token due now is renewed before the wait, not holding a grant
            return await self.inner.handle_async_request(sent)

        sent.extensions[AUTHORIZE] = authorize
        response = await send()
        renewals = 0
        while response.status_code == 401 and used is not None and renewals < MAX_RENEWALS:
            # Renewed only if no other request did it meanwhile; sent again with whichever token is current.
            await response.aclose()
            # not on the attempt's clock (client.py); the limiter's next grant (GRANTED) starts it again
            if isinstance(self.inner, RateLimitedTransport) and callable(waiting := sent.extensions.get(WAITING)):
                waiting(sent)
            await authenticator.renew(used)
            renewals += 1
            response = await send()
        if response.status_code == 403:  # sent with the credentials (the request is to the own origin)
            challenge = _params(response.headers.get("www-authenticate", ""))
            if challenge.get("error") == "insufficient_scope":  # RFC 6750 §3.1: the same for every request
                await response.aclose()
                raise RunFailed(authenticator.lacking(request, challenge.get("scope", "")))
        if response.status_code != 401:
            return response
        try:
            message = await authenticator.rejected(request, response, renewed=used is not None)
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


async def _excerpt(response: httpx.Response) -> bytes:
    """The first EXCERPT bytes as sent (an error answer is rarely compressed; a compressed one is
    simply not quoted)."""
    raw = bytearray()
    async for chunk in response.aiter_raw():
        raw += chunk
        if len(raw) >= EXCERPT:
            break
    if response.headers.get("content-encoding", "identity").lower() not in ("", "identity"):
        return b""
    return bytes(raw[:EXCERPT])


_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))')


def _params(header: str) -> dict[str, str]:
    """The auth-params of a challenge: `Bearer error="insufficient_scope", scope="a b"` (RFC 6750 §3),
    names lower-cased, the first of each kept; at most the first 4 KB read."""
    found: dict[str, str] = {}
    for match in _PARAM.finditer(header[:4096]):
        found.setdefault(match[1].lower(), match[2] if match[2] is not None else match[3])
    return found


def _challenge(header: str) -> str:
    """`invalid_token` from `Bearer error="invalid_token", error_description="..."` (RFC 6750)."""
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.split()[-1:] == ["error"]:
            return tokens.text(value.strip('"')[:60].encode()).strip("'\"")
    return ""
