"""A source's `auth:` block at run time: static credentials (bearer, api_key, basic) and OAuth2 access
tokens fetched while the run goes (client credentials, refresh token).

`AuthTransport` wraps the rate-limited transport, so every attempt and every page to the source's own
origin carries the credentials, and a request to another origin (a next-page link to `allow_origins`)
never does. Token requests go through a plain client of their own: they do not spend the API's rate
budget. One token is shared by all concurrent requests; one fetch is in flight at a time; it is renewed
shortly before `expires_in` runs out, and once when the API answers 401 to it. A token is a secret the
moment it arrives (added to the run's Redactor), and it is never stored.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable

import httpx

from runner import spec, templating
from runner.errors import RunFailed

log = logging.getLogger("syncrun")

EXCERPT = 2048  # bytes of a 401 or token-endpoint answer read for the message
NO_RETRY = spec.Retry(attempts=1)
MAX_RENEWALS = 2  # a request refused with a token is sent again with a renewed one at most this often
MAX_MARGIN = 60.0  # renew at most this many seconds before expiry...
MARGIN_SHARE = 0.1  # ...and at most this share of the token's lifetime

Origin = tuple[str, str, int | None]
_HEADER_TEXT = re.compile(r"[\x21-\x7e]+")  # a token as RFC 6750 allows it, roughly: visible ASCII

_FIELDS = {
    spec.AuthType.BEARER: "auth.token",
    spec.AuthType.API_KEY: "auth.value",
    spec.AuthType.BASIC: "auth.username and auth.password",
    spec.AuthType.OAUTH2_CLIENT_CREDENTIALS: "auth.client_id, auth.client_secret and auth.scopes",
    spec.AuthType.OAUTH2_REFRESH_TOKEN: "auth.refresh_token and auth.client_id",
}


def origin(url: httpx.URL) -> Origin:
    return url.scheme, url.host, url.port


def for_source(source: spec.Source, settings: templating.Settings) -> Authenticator | None:
    """The source's authenticator for this run, or None without an `auth:` block."""
    if source.auth is None:
        return None
    placeholders = dict.fromkeys(source.request.url.columns, "0")
    url = httpx.URL(templating.render(source.request.url, placeholders, settings, url=True))
    return Authenticator(source.auth, origin(url), settings, timeout=source.request.timeout, retry=source.retry)


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
    ) -> None:
        self.auth, self.own, self.settings, self.clock = auth, own, settings, clock
        self.retry, self.sleep = retry, sleep
        self.oauth2 = auth.type in (spec.AuthType.OAUTH2_CLIENT_CREDENTIALS, spec.AuthType.OAUTH2_REFRESH_TOKEN)
        self.token: str | None = None
        self.renew_at = float("inf")
        self.fetches = 0  # token requests made (for tests and logs)
        self.lock = asyncio.Lock()
        self.http = httpx.AsyncClient(transport=token_transport, timeout=timeout, follow_redirects=False)

    def value(self, template: spec.Template | None) -> str:
        assert template is not None  # the schema requires the type's fields
        return templating.render(template, {}, self.settings, url=False)

    async def apply(self, request: httpx.Request) -> str | None:
        """Add the credentials to `request`, a copy made for sending (callers build the next page from
        theirs, which must stay without them); the OAuth2 token used, else None."""
        auth = self.auth
        if auth.type is spec.AuthType.BEARER:
            request.headers["Authorization"] = f"Bearer {self.value(auth.token)}"
        elif auth.type is spec.AuthType.BASIC:
            pair = f"{self.value(auth.username)}:{self.value(auth.password)}".encode()
            request.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        elif auth.type is spec.AuthType.API_KEY:
            assert auth.name is not None
            if auth.in_ is spec.KeyIn.HEADER:
                request.headers[auth.name] = self.value(auth.value)
            else:
                request.url = request.url.copy_set_param(auth.name, self.value(auth.value))
        else:
            token = await self.current()
            request.headers["Authorization"] = f"Bearer {token}"
            return token
        return None

    async def current(self) -> str:
        async with self.lock:
            if self.token is None or self.clock() >= self.renew_at:
                await self.fetch()
            assert self.token is not None
            return self.token

    async def renew(self, rejected: str) -> None:
        """The API refused `rejected`: fetch a new token, unless another request already did."""
        async with self.lock:
            if self.token == rejected:
                await self.fetch()

    async def fetch(self) -> None:
        auth = self.auth
        url = self.value(auth.token_url)
        form: dict[str, str] = {"client_id": self.value(auth.client_id)}
        if auth.type is spec.AuthType.OAUTH2_REFRESH_TOKEN:
            form |= {"grant_type": "refresh_token", "refresh_token": self.value(auth.refresh_token)}
        else:
            form["grant_type"] = "client_credentials"
        if auth.client_secret is not None:
            form["client_secret"] = self.value(auth.client_secret)
        if auth.scopes:
            form["scope"] = " ".join(auth.scopes)
        form |= {name: self.value(template) for name, template in auth.extra}
        shown = self.settings.redact(url)
        started = self.clock()
        response = await self.post(url, form, shown)
        body = _json(response.content[:EXCERPT] if response.status_code >= 400 else response.content)
        token = body.get("access_token") if isinstance(body, dict) else None
        if response.status_code // 100 != 2 or not isinstance(token, str) or not token:
            raise RunFailed(self.settings.redact(self.token_failure(shown, response, body)))
        self.settings.redact.add(token)  # before anything else can see it
        if not _HEADER_TEXT.fullmatch(token):
            raise RunFailed(
                f"the token endpoint {shown} answered an access_token that cannot be sent in a header"
                " (a line break, a control or a non-ASCII character)"
            )
        assert isinstance(body, dict)
        rotated = body.get("refresh_token")
        if isinstance(rotated, str):
            self.settings.redact.add(rotated)
            if auth.type is spec.AuthType.OAUTH2_REFRESH_TOKEN and rotated != self.value(auth.refresh_token):
                raise RunFailed(
                    f"the token endpoint {shown} rotated the refresh token (it answered a new one), which"
                    " syncrun does not support: it never stores tokens, so the next run would hold a spent one"
                    " — use a client that does not rotate refresh tokens, or oauth2_client_credentials"
                )
        self.token = token
        expires = body.get("expires_in")
        if isinstance(expires, int | float) and not isinstance(expires, bool) and 0 < expires < 10**9:
            self.renew_at = started + expires - min(MAX_MARGIN, expires * MARGIN_SHARE)
        else:
            self.renew_at = float("inf")  # renewed only when the API rejects it
        lasts = f"expires in {expires:g} s" if self.renew_at != float("inf") else "no expires_in"
        log.info("fetched an access token from %s (%s; token request %d)", shown, lasts, self.fetches)

    async def post(self, url: str, form: dict[str, str], shown: str) -> httpx.Response:
        """The token request, retried like an API request (source.retry: attempts, backoff, statuses)
        when the connection fails or the answer is transient; RunFailed when the attempts run out."""
        policy = self.retry
        for attempt in range(1, policy.attempts + 1):
            self.fetches += 1
            try:
                response = await self.http.post(url, data=form, headers={"Accept": "application/json"})
            except httpx.HTTPError as error:
                if attempt == policy.attempts:
                    raise RunFailed(
                        self.settings.redact(
                            f"could not get an access token from {shown} ({type(error).__name__}: {error};"
                            f" {attempt} attempts) — check auth.token_url and that the token endpoint is up"
                        )
                    ) from None
            else:
                if response.status_code not in policy.statuses or attempt == policy.attempts:
                    return response
            await self.sleep(min(policy.initial * policy.factor ** (attempt - 1), policy.max_delay))
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    def token_failure(self, shown: str, response: httpx.Response, body: object) -> str:
        what = f"the token endpoint {shown} answered HTTP {response.status_code}"
        if response.status_code // 100 == 2:
            return f"{what} without an access_token — is auth.token_url the OAuth2 token endpoint?"
        said = _oauth_error(body) or _text(response.content)
        hint = (
            "check auth.client_id and auth.client_secret"
            if self.auth.type is spec.AuthType.OAUTH2_CLIENT_CREDENTIALS
            else "check auth.refresh_token (it may have expired or been revoked) and auth.client_id"
        )
        return f"{what}{f' ({said})' if said else ''} — {hint}"

    async def rejected(self, request: httpx.Request, response: httpx.Response, *, renewed: bool) -> str:
        """The message for a 401 the credentials could not get past."""
        raw = await _excerpt(response)
        body = _json(raw)
        said = _challenge(response.headers.get("www-authenticate", "")) or _oauth_error(body) or _text(raw)
        fields = _FIELDS[self.auth.type]
        again = " even with a newly fetched token" if renewed else ""
        url = self.settings.redact(str(request.url))
        return self.settings.redact(
            f"HTTP 401 from {request.method} {url} — the API rejected the {self.auth.type.value} credentials{again}"
            f"{f' ({said})' if said else ''}; check {fields}"
        )

    async def aclose(self) -> None:
        await self.http.aclose()


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
        used = await authenticator.apply(sent)
        response = await self.inner.handle_async_request(sent)
        renewals = 0
        while response.status_code == 401 and used is not None and renewals < MAX_RENEWALS:
            # Renewed only if no other request did it meanwhile; sent again with whichever token is current.
            await response.aclose()
            await authenticator.renew(used)
            renewals += 1
            used = await authenticator.apply(sent)
            response = await self.inner.handle_async_request(sent)
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
    """The same request as a new object; its extensions (the rate limiter's grant callback) shared."""
    headers, extensions = request.headers.copy(), request.extensions
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


def _json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _oauth_error(body: object) -> str:
    """`invalid_client: bad secret` from an RFC 6749 error body."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, str):
        return ""
    assert isinstance(body, dict)
    description = body.get("error_description")
    return error[:60] + (f": {description[:120]}" if isinstance(description, str) else "")


def _challenge(header: str) -> str:
    """`invalid_token` from `Bearer error="invalid_token", error_description="..."` (RFC 6750)."""
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.split()[-1:] == ["error"]:
            return value.strip('"')[:60]
    return ""


def _text(raw: bytes) -> str:
    text = " ".join(raw.decode("utf-8", "replace").split())
    return repr(text if len(text) <= 80 else text[:80] + "…") if text else ""
