"""OAuth2 access tokens at run time: one per auth block, shared by all concurrent requests and by every
source of the run using the block (`Tokens`), fetched from the token endpoint (runner/tokens.py) one
fetch at a time, renewed shortly before `expires_in` runs out and when the API refuses one. A token is
a secret the moment it arrives (the endpoint adds it to the run's Redactor), and it is never stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from runner import spec, templating, tokens
from runner.errors import RunFailed

log = logging.getLogger("syncrun")

MAX_MARGIN = 60.0  # renew at most this many seconds before expiry...
MARGIN_SHARE = 0.1  # ...and at most this share of the token's lifetime


class Tokens:
    """The OAuth2 tokens of one run, one per auth block: sources that use the same block (a shared
    one from syncrun.yaml, or two identical ones) hold one token, renewed once for all of them. A
    replayed run (`stand_in`) never asks a token endpoint: its requests are answered from a cassette,
    which never holds a token exchange, so each source gets a stand-in token instead. `grace`: how
    long the run's end waits for a renewal still in flight (the run's --grace; None: as long as the
    endpoint's retry policy lets one take), unless `abandon()` (a second signal) ends that wait."""

    def __init__(self, *, stand_in: bool = False, grace: float | None = None) -> None:
        self.stand_in, self.grace = stand_in, grace
        self.held: dict[spec.Auth, Token] = {}
        self.unverified: set[str] = set()  # token endpoints already named in a warning (once per run)
        self.abandoned = asyncio.Event()

    def token(self, auth: spec.Auth) -> Token:
        return self.held.setdefault(auth, Token(self.grace, self.abandoned))

    def abandon(self) -> None:
        """Stop waiting for renewals in flight at the run's end (a second SIGINT/SIGTERM)."""
        self.abandoned.set()


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

    def __init__(self, grace: float | None = None, abandoned: asyncio.Event | None = None) -> None:
        self.value: str | None = None
        self.generation = 0  # tokens fetched so far: which one a request was sent with
        self.renew_at = float("inf")
        self.fetches = 0  # token requests made (for tests and logs)
        self.failed: str | None = None  # the message of the fetch that failed: the run is over
        self.lock = asyncio.Lock()
        self.renewal: asyncio.Task[None] | None = None  # the fetch in flight, in a task of its own
        # the failure was raised to a request that waited for it (the run reports it), else the close logs it
        self.delivered = False
        self.grace, self.abandoned = grace, abandoned or asyncio.Event()


class AccessToken:
    """One source's access token: its auth block's shared `Token`, fetched through the source's own
    token `Endpoint` (its retry policy, deadline and, with `rate_limited`, its limiter)."""

    def __init__(
        self,
        auth: spec.Auth,
        settings: templating.Settings,
        endpoint: tokens.Endpoint,
        token: Token,
        *,
        clock: Callable[[], float],
        stand_in: bool = False,
    ) -> None:
        self.auth, self.settings, self.endpoint, self.token = auth, settings, endpoint, token
        self.clock, self.stand_in = clock, stand_in

    def value(self, template: spec.Template | None) -> str:
        assert template is not None  # the schema requires the type's fields
        return templating.render(template, {}, self.settings, url=False)

    async def current(self) -> str:
        """The token to send: fetched first when there is none yet or it is due."""
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

    def renewing(self) -> bool:
        """A fetch is in flight, or about to start (a request holds the lock to renew)."""
        renewal = self.token.renewal
        return self.token.lock.locked() or (renewal is not None and not renewal.done())

    async def fetch(self) -> None:
        """A new token into the shared Token (its lock held by the caller), fetched in a task of its own
        that the caller waits for through a shield. A request cut off while it waits (the run's stop
        grace ending its fetcher) leaves the token request going: a provider answers a renewal once (a
        rotating one spends the refresh token with that answer), and the answer must be read and stored,
        not thrown away mid-read. A request that takes the lock after a cut-off one finds the renewal
        still in flight and waits for the same task: never a second token request for one renewal."""
        token = self.token
        if token.renewal is None or token.renewal.done():
            token.renewal = asyncio.create_task(self._fetch(), name="syncrun token renewal")
        try:
            await asyncio.shield(token.renewal)
        except RunFailed:
            token.delivered = True  # this request's run fails with it (or, stopped, keeps it: Run.halt)
            raise

    async def _fetch(self) -> None:
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

    async def aclose(self) -> None:
        """Close the token endpoint's client, once a renewal still in flight (every request that waited
        for it was cut off) has stored its answer: waited for at most the run's stop grace (`Tokens`;
        else as long as the endpoint's retry policy lets a renewal take), and no longer once the run is
        abandoned (a second signal). A failure no request received is logged here, once: it may say
        that the refresh token is spent, and the next run would otherwise fail without saying why."""
        token = self.token
        renewal = token.renewal
        if renewal is not None and not renewal.done():
            longest = self.endpoint.longest()
            bound = longest if token.grace is None else min(token.grace, longest)
            abandoned = asyncio.ensure_future(token.abandoned.wait())
            try:
                await asyncio.wait({renewal, abandoned}, timeout=bound, return_when=asyncio.FIRST_COMPLETED)
            finally:
                abandoned.cancel()
            if not renewal.done():
                renewal.cancel()
                await asyncio.gather(renewal, return_exceptions=True)
                spent = (
                    f": if the provider rotates refresh tokens and answered it, {self.auth.field('refresh_token')}"
                    " may be spent, and a new one must be obtained"
                    if self.auth.type is spec.AuthType.OAUTH2_REFRESH_TOKEN
                    else ""
                )
                why = "a second signal" if token.abandoned.is_set() else f"--grace, {bound:g} s"
                log.warning("the token renewal in flight when the run stopped was given up (%s)%s", why, spent)
        failed = renewal is not None and renewal.done() and not renewal.cancelled() and not token.delivered
        if failed and renewal is not None and (error := renewal.exception()) is not None:
            token.delivered = True  # sources sharing the token: logged once
            log.warning("the token renewal in flight when the run stopped failed: %s", error)
        await self.endpoint.aclose()
