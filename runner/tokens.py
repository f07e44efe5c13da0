"""The OAuth2 token endpoint: one token request and what its answer is worth.

`Endpoint.grant()` POSTs the grant (client credentials or refresh token) with the client's id and
secret as form fields or as HTTP Basic (`auth.client_auth`), retried like an API request
(`source.retry`: a connection error, a timeout or a status in `retry.statuses`). The endpoint's TLS
certificate is verified as `auth.verify_tls` says (default: `request.verify_tls`), and with
`auth.rate_limited` each attempt waits for the source's rate limit and spends its budget. Each attempt has a
deadline for the whole exchange (`auth.timeout`, else `request.timeout`: connect, send and the answer
read to its end, so a server that drips one byte a second cannot hold a run), and the answer is read
with the API bodies' bounded reader (runner/body.read_body: MAX_BODY bytes, decoded in steps).

The answer is hostile until checked: not JSON, a list, nested past the parser's depth, an
access_token that is not text, too long (MAX_TOKEN) or not sendable in a header (a CR/LF, a control
or non-ASCII character), an `expires_in` that is negative, zero, huge, text or NaN. Each one is a
run failure naming the endpoint and what to check, or, for a useless `expires_in`, a warning and a
token renewed only when the API refuses it. A token is handed to the run's redactor before anything
else can see it; no message ever quotes one.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import quote_plus

import httpx

from runner import spec, templating
from runner.body import ACCEPT_ENCODING, parse_json, read_body
from runner.errors import FetchError, RunFailed
from runner.ratelimit.local import GRANTED, Limiter
from runner.ratelimit.transport import RateLimitedTransport

_NO_COOKIES = DefaultCookiePolicy(allowed_domains=[])  # no domain may set (or be sent) a cookie

log = logging.getLogger("syncrun")

MAX_BODY = 64 * 1024  # bytes of a token answer: a JWT with claims is a few KB; more is not a token answer
MAX_TOKEN = (
    8192  # characters of an access or refresh token (header limits are ~8 KB; the redactor's cost grows with it)
)
MAX_LIFETIME = 3650 * 86400.0  # an expires_in beyond ten years is a typo or a lie
EXCERPT = 2048  # bytes of an error answer read for the message
_HEADER_TEXT = re.compile(r"[\x21-\x7e]+")  # a token as RFC 6750 allows it, roughly: visible ASCII
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True, slots=True)
class Grant:
    """A checked token answer: the access token, its lifetime in seconds (None: unknown), and the
    refresh token the endpoint answered, if any (a rotation, for the refresh token grant)."""

    access_token: str
    expires_in: float | None
    refresh_token: str | None = None


class Endpoint:
    """The token requests of one source (its retry policy and deadline); `transport` is for tests."""

    def __init__(
        self,
        auth: spec.Auth,
        settings: templating.Settings,
        *,
        timeout: float,
        retry: spec.Retry,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
        verify_tls: bool = True,
        limiter: Limiter | None = None,
    ) -> None:
        self.auth, self.settings, self.retry, self.sleep = auth, settings, retry, sleep
        self.timeout = auth.timeout or timeout
        self.deadline_key = auth.field("timeout") if auth.timeout else "request.timeout"
        inner = transport or httpx.AsyncHTTPTransport(verify=verify_tls)
        if limiter is not None:  # auth.rate_limited: the token endpoint shares the API's quota
            inner = RateLimitedTransport(inner, limiter)
        self.limited = limiter is not None
        # No cookies, as for the API (runner/client.py): a token endpoint's Set-Cookie could otherwise
        # grow every later token request or put bytes httpx cannot encode into one (a crash)
        self.http = httpx.AsyncClient(
            transport=inner, timeout=self.timeout, follow_redirects=False, cookies=CookieJar(_NO_COOKIES)
        )
        self.attempts = 0  # token requests sent (for tests and logs)
        self.answered: int | None = None  # the status of the current attempt, once its headers arrived

    def value(self, template: spec.Template | None) -> str:
        assert template is not None  # the schema requires the type's fields
        return templating.render(template, {}, self.settings, url=False)

    def longest(self) -> float:
        """The longest `grant()` takes, its waits for the rate limit aside: every attempt to its deadline
        and the pauses between them."""
        policy = self.retry
        pauses = sum(
            min(policy.initial * policy.factor ** (n - 1), policy.max_delay) for n in range(1, policy.attempts)
        )
        return policy.attempts * self.timeout + pauses

    def request_parts(self) -> tuple[str, dict[str, str], dict[str, str]]:
        """(URL, form, headers) of the token request."""
        auth = self.auth
        form: dict[str, str] = {}
        if auth.type is spec.AuthType.OAUTH2_REFRESH_TOKEN:
            form |= {"grant_type": "refresh_token", "refresh_token": self.value(auth.refresh_token)}
        else:
            form["grant_type"] = "client_credentials"
        headers = {"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING}
        client_id = self.value(auth.client_id)
        if auth.client_auth is spec.ClientAuth.BASIC:
            # RFC 6749 §2.3.1: each of id and secret form-encoded, then joined by `:` and base64-encoded.
            pair = f"{quote_plus(client_id, safe='')}:{quote_plus(self.value(auth.client_secret), safe='')}"
            encoded = base64.b64encode(pair.encode()).decode()
            self.settings.redact.add(encoded)  # a credential, should anything echo the header
            headers["Authorization"] = f"Basic {encoded}"
        else:
            form["client_id"] = client_id
            if auth.client_secret is not None:
                form["client_secret"] = self.value(auth.client_secret)
        if auth.scopes:
            form["scope"] = " ".join(auth.scopes)
        form |= {name: self.value(template) for name, template in auth.extra}
        return self.value(auth.token_url), form, headers

    async def grant(self) -> Grant:
        """A new token from the endpoint; RunFailed saying why not."""
        url, form, headers = self.request_parts()
        shown = self.settings.redact(url)
        status, raw = await self.post(url, form, headers, shown)
        if status // 100 != 2:
            raise RunFailed(self.settings.redact(self.refused(shown, status, raw[:EXCERPT])))
        try:
            # In a thread: adding a token to the redactor compiles its pattern (~0.1 s for a 1 KB token),
            # which would stall every other request of the run on the event loop.
            return await asyncio.to_thread(self.checked, shown, status, raw)
        except RunFailed as error:
            raise RunFailed(f"{error}{self.maybe_spent()}") from None

    def maybe_spent(self) -> str:
        """For the refresh-token grant, after a success answer syncrun could not use: a rotating
        provider has spent the configured refresh token with it (syncrun never sends it again)."""
        if self.auth.type is not spec.AuthType.OAUTH2_REFRESH_TOKEN:
            return ""
        return (
            f"; if the provider rotates refresh tokens, it has spent {self.auth.field('refresh_token')} with"
            " this answer and a new one must be obtained"
        )

    async def post(self, url: str, form: dict[str, str], headers: dict[str, str], shown: str) -> tuple[int, bytes]:
        """(status, body) of the token request, retried like an API request when the connection fails,
        the deadline passes or the answer is transient; RunFailed when the attempts run out."""
        policy = self.retry
        for attempt in range(1, policy.attempts + 1):
            self.attempts += 1
            self.answered = None
            try:
                # With auth.rate_limited the deadline starts at the grant (`exchange`): a wait for the
                # budget behind `concurrency` requests is no slowness of the endpoint's
                async with asyncio.timeout(None if self.limited else self.timeout) as deadline:
                    status, raw = await self.exchange(url, form, headers, shown, deadline)
            except (httpx.HTTPError, TimeoutError) as error:
                # A refresh token the provider answered to (its status line arrived) is never sent again:
                # a rotating provider may have spent it, and re-sending a spent one revokes the family.
                spent = self.answered is not None and self.auth.type is spec.AuthType.OAUTH2_REFRESH_TOKEN
                if attempt == policy.attempts or spent:
                    what = (
                        f"no answer within {self.timeout:g} s ({self.deadline_key})"
                        if isinstance(error, TimeoutError)
                        else f"{type(error).__name__}: {error}"
                    )
                    raise RunFailed(
                        self.settings.redact(
                            f"could not get an access token from {shown} ({what}; {attempt} attempts)"
                            + (
                                f" after it answered HTTP {self.answered}{self.maybe_spent()}"
                                if spent
                                else f" — check {self.auth.field('token_url')} and that the token endpoint is up"
                            )
                        )
                    ) from None
            else:
                if status not in policy.statuses or attempt == policy.attempts:
                    return status, raw
            await self.sleep(min(policy.initial * policy.factor ** (attempt - 1), policy.max_delay))
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    async def exchange(
        self, url: str, form: dict[str, str], headers: dict[str, str], shown: str, deadline: asyncio.Timeout
    ) -> tuple[int, bytes]:
        request = self.http.build_request("POST", url, data=form, headers=headers)
        loop = asyncio.get_running_loop()
        request.extensions[GRANTED] = lambda _: deadline.reschedule(loop.time() + self.timeout)
        response = await self.http.send(request, stream=True)
        self.answered = response.status_code
        try:
            raw = await read_body(response, MAX_BODY, shown)
        except FetchError as error:  # too large (declared, on the wire or once decoded), or a broken coding
            detail = str(error).removeprefix(f"response body from {shown} ").replace("request.max_body", "the bound")
            raise RunFailed(
                self.settings.redact(
                    f"the token endpoint {shown} answered a body syncrun does not read ({detail});"
                    f" a token answer is at most {MAX_BODY:,} bytes"
                )
            ) from None
        finally:
            await response.aclose()
        return response.status_code, raw

    def checked(self, shown: str, status: int, raw: bytes) -> Grant:
        """The answer of a 2xx, checked; the tokens in it added to the redactor first."""
        body, problem = parse_json(raw)
        what = f"the token endpoint {shown} answered HTTP {status}"
        if not isinstance(body, dict):
            said = problem or ("an empty body" if body is None else f"a JSON {type(body).__name__}, not an object")
            raise RunFailed(f"{what} with {said} — is {self.auth.field('token_url')} the OAuth2 token endpoint?")
        token = body.get("access_token")
        if token is None or token == "":
            raise RunFailed(
                f"{what} without an access_token — is {self.auth.field('token_url')} the OAuth2 token endpoint?"
            )
        if not isinstance(token, str):
            raise RunFailed(f"{what} with an access_token that is not text ({_kind(token)})")
        if len(token) > MAX_TOKEN:
            raise RunFailed(
                f"{what} with an access_token of {len(token):,} characters (at most {MAX_TOKEN:,} are used)"
            )
        self.settings.redact.add(token, run_time=True)  # before anything else can see it
        if not _HEADER_TEXT.fullmatch(token):
            raise RunFailed(
                f"{what} with an access_token that cannot be sent in a header"
                " (a space, a line break, a control or a non-ASCII character)"
            )
        kind = body.get("token_type")
        if kind is not None and (not isinstance(kind, str) or kind.lower() != "bearer"):
            log.warning(
                "the token endpoint %s answered token_type %s: syncrun sends every token as Bearer (RFC 6750),"
                " the only kind it supports; if the API refuses it, ask the provider for Bearer tokens",
                shown,
                self.settings.redact(_shown(kind)),
            )
        rotated = body.get("refresh_token")
        rotated = rotated if isinstance(rotated, str) and rotated else None
        if rotated is not None and len(rotated) <= MAX_TOKEN:
            self.settings.redact.add(rotated, run_time=True)
        return Grant(token, self.lifetime(shown, body.get("expires_in")), rotated)

    def lifetime(self, shown: str, expires: object) -> float | None:
        """`expires_in` in seconds; None (with a warning) when it is absent or not a usable lifetime."""
        if expires is None:
            return None
        seconds = expires
        if isinstance(expires, str) and expires.strip().isdigit() and len(expires.strip()) <= 12:
            seconds = int(expires.strip())  # some providers send "3600"
        # Compared, never converted: float(10**400) raises, and NaN or infinity fail the comparison.
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and 1 <= seconds <= MAX_LIFETIME:
            return float(seconds)
        log.warning(
            "the token endpoint %s answered expires_in %s, not a lifetime from 1 s to 10 years: the token"
            " is renewed when the API refuses it",
            shown,
            self.settings.redact(_shown(expires)),
        )
        return None

    def refused(self, shown: str, status: int, raw: bytes) -> str:
        body, _ = parse_json(raw)
        said = oauth_error(body) or text(raw)
        code = body.get("error") if isinstance(body, dict) else None
        return (
            f"the token endpoint {shown} answered HTTP {status}{f' ({said})' if said else ''}"
            f" — {self.advice(status, code if isinstance(code, str) else '')}"
        )

    def advice(self, status: int, code: str) -> str:
        """What to do about a refusal: by its RFC 6749 §5.2 error code when it has one, else by status."""
        auth, field = self.auth, self.auth.field
        refresh = auth.type is spec.AuthType.OAUTH2_REFRESH_TOKEN
        grant = "refresh_token" if refresh else "client_credentials"
        client = field("client_id") + (f" and {field('client_secret')}" if auth.client_secret is not None else "")
        sent = f" (sent as {auth.client_auth.value}; the provider may want the other client_auth)"
        scopes = " ".join(auth.scopes) or "none"
        by_code = {
            "invalid_client": f"the provider does not accept the client: check {client}"
            + (sent if auth.client_secret is not None else ""),
            "invalid_grant": (
                f"the provider refused {field('refresh_token')}: it expired, was revoked or was already"
                " used (a rotating provider spends each one); obtain a new refresh token"
                if refresh
                else f"the provider refused the client credentials grant: check {field('scopes')}, {client}"
            ),
            "unauthorized_client": f"the client {field('client_id')} may not use the {grant} grant: allow it"
            " for this client at the provider, or use the other auth.type",
            "unsupported_grant_type": f"this endpoint does not offer the {grant} grant: check"
            f" {field('token_url')} and auth.type",
            "invalid_scope": f"the provider refused the scopes asked for: check {field('scopes')} (sent: {scopes})",
            "invalid_request": f"the provider found the token request malformed (a missing, repeated or"
            f" unsupported parameter): check {field('extra')} (fields it requires, e.g. audience) and"
            f" {field('client_auth')}",
        }
        if code in by_code:
            return by_code[code]
        if 300 <= status < 400:
            return (
                "a redirect, which token requests do not follow (they carry the client secret):"
                f" check {field('token_url')}"
            )
        if status in (404, 405, 410):
            return f"check {field('token_url')}: it is not the provider's token endpoint"
        if status == 429 or status >= 500:
            return "the token endpoint is rate-limited or failing at the moment: nothing to fix here, run again later"
        if status == 401 or (status == 400 and not code):
            refresh_hint = f" and {field('refresh_token')}" if refresh else ""
            return f"check {client}{refresh_hint}" + (sent if auth.client_secret is not None else "")
        if status == 403:
            return f"the provider refuses this client: check that {field('client_id')} may use the {grant} grant"
        return f"check {field('token_url')}, {client} and {field('scopes')}"

    async def aclose(self) -> None:
        await self.http.aclose()


def oauth_error(body: object) -> str:
    """`invalid_client: bad secret` from an RFC 6749 error body, one line of printable text."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, str):
        return ""
    assert isinstance(body, dict)
    description = body.get("error_description")
    return _line(error[:60]) + (f": {_line(description[:120])}" if isinstance(description, str) else "")


def text(raw: bytes) -> str:
    """An answer's first 80 characters as one quoted line."""
    line = _line(raw.decode("utf-8", "replace"))
    return repr(line if len(line) <= 80 else line[:80] + "…") if line else ""


def _line(value: str) -> str:
    return " ".join(_UNPRINTABLE.sub(" ", value).split())


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def _shown(value: object) -> str:
    shown = _line(repr(value))
    return shown if len(shown) <= 40 else shown[:39] + "…"
