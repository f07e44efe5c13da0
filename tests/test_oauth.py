"""OAuth2 access tokens at run time (runner/oauth.py): one token shared by every request, renewed once per
expiry and once per refused generation, before `expires_in` runs out; a failed renewal remembered
(`Token.failed`) and given to every request that waited for it, at most `retry.attempts` token
requests per renewal, and a refresh token never sent again once a rotating provider answered to it.
Against a loopback token endpoint of the tests' own (and tests.test_auth's strict OAuthServer)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import pytest

from runner import auth, cli, client, config, spec, templating
from runner.engine import stopping
from runner.errors import RunFailed
from runner.ratelimit import Limiter, RateLimitedTransport
from runner.redaction import Redactor
from tests import test_auth
from tests.apiserver import ApiServer, Recorded, Reply
from tests.pg import Database
from tests.test_auth import env  # noqa: F401 (a fixture)

CLIENT_SECRET = "cs-Wq5Er7Ty9Ui1Op3A"
REFRESH = "rt-Zx4Cv6Bn8Ml0Kj2H"
SOURCE = """\
name: t
entities: {{columns: {{appid: int}}}}
request: {{url: "{url}/apps/{{appid}}"}}
auth: {auth}
rate_limit: {{requests: 100, per: 1s}}
retry: {{attempts: 3, initial: 10ms, max_delay: 10ms}}
writes: [{{table: apps, key: [appid], columns: {{appid: entity.appid}}}}]
"""
CLIENT_CREDENTIALS = (
    "{{type: oauth2_client_credentials, token_url: '{url}/oauth/token', client_id: c1,"
    " client_secret: '${{secret.CLIENT_SECRET}}'}}"
)
REFRESH_TOKEN = (
    "{{type: oauth2_refresh_token, token_url: '{url}/oauth/token', client_id: c1,"
    " refresh_token: '${{secret.REFRESH_TOKEN}}'}}"
)
SECRETS = {("secret", "CLIENT_SECRET"): CLIENT_SECRET, ("secret", "REFRESH_TOKEN"): REFRESH}


def authenticator(api: ApiServer, tmp_path: Path, block: str) -> auth.Authenticator:
    text = SOURCE.format(url=api.url, auth=block.format(url=api.url))
    source = config.loads(text, tmp_path / "t.yaml")
    settings = templating.Settings(dict(SECRETS), Redactor(SECRETS.values()))
    found = auth.for_source(source, settings)
    assert found is not None
    return found


async def waiters(authenticator: auth.Authenticator, rejected: int | None, count: int = 8) -> list[BaseException]:
    """`count` requests at once: each renews the token of generation `rejected` (or asks for the first)."""

    async def one() -> None:
        if rejected is None:
            await authenticator.current()
        else:
            await authenticator.renew(rejected)

    try:
        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    finally:
        await authenticator.aclose()
    return [r for r in results if isinstance(r, BaseException)]


# --- one token for every request, renewed per expiry (a run against a strict provider) ------------------------
def test_client_credentials_token_is_fetched_once_and_shared(
    env: Database,  # noqa: F811 (the fixture of tests.test_auth)
    api: ApiServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One token serves every concurrent request; token requests carry the form the server demands and
    do not spend the rate limit (the run counts 20 requests, the 20 to the API)."""
    server = test_auth.OAuthServer(api)
    source = test_auth.source_with(tmp_path, test_auth.CLIENT_CREDENTIALS)
    test_auth.seed(env, source, range(1, 21))
    test_auth.route_apps(api, range(1, 21), server.app)
    assert cli.main(["run", str(source)]) == 0
    err = capsys.readouterr().err
    assert "; 20 requests in " in err
    assert f"fetched an access token from {api.url}/oauth/token (expires in 3600 s; token request 1)" in err
    assert env.scalar("select count(*) from apps") == 20
    assert len(server.token_requests) == 1
    assert server.token_requests[0]["grant_type"] == "client_credentials"
    assert server.rejected == 0


def test_a_token_spent_mid_run_is_renewed_once_per_expiry_at_concurrency_4(
    env: Database,  # noqa: F811 (the fixture of tests.test_auth)
    api: ApiServer,
    tmp_path: Path,
) -> None:
    """Each token stops working after 8 requests; with 4 requests in flight, the 401s they get cause one
    token request per expiry (never a storm), each rejected request is sent once more, and the run
    completes with every row."""
    server = test_auth.OAuthServer(api, uses=8)
    source = test_auth.source_with(tmp_path, test_auth.CLIENT_CREDENTIALS, concurrency=4)
    test_auth.seed(env, source, range(1, 41))
    test_auth.route_apps(api, range(1, 41), server.app)
    assert cli.main(["run", str(source)]) == 0
    assert env.scalar("select count(*) from apps") == 40
    assert env.scalar("select status from sync_jobs") == "completed"
    assert len(server.token_requests) == 5  # 40 requests, 8 per token
    assert server.rejected >= 4  # the expiries really happened mid-run


def test_a_token_is_renewed_before_expires_in_runs_out(
    env: Database,  # noqa: F811 (the fixture of tests.test_auth)
    api: ApiServer,
    tmp_path: Path,
) -> None:
    """A token that says it expires in 1 s (and does) is replaced shortly before: no request is refused."""
    server = test_auth.OAuthServer(api, expires_in=1, lifetime=1)
    source = test_auth.source_with(tmp_path, test_auth.CLIENT_CREDENTIALS, concurrency=2)
    test_auth.seed(env, source, range(1, 41))
    for appid in range(1, 41):
        api.route(f"/apps/{appid}", lambda r: (time.sleep(0.05), server.app(r))[1])
    started = time.monotonic()
    assert cli.main(["run", str(source)]) == 0
    elapsed = time.monotonic() - started
    assert env.scalar("select count(*) from apps") == 40
    assert server.rejected == 0
    assert 2 <= len(server.token_requests) <= int(elapsed / 0.9) + 2


def test_a_rotated_refresh_token_is_refused_clearly(
    env: Database,  # noqa: F811 (the fixture of tests.test_auth)
    api: ApiServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    """A provider that answers a new refresh token fails the run: syncrun stores no tokens."""
    server = test_auth.OAuthServer(api)
    server.rotate = True
    monkeypatch.setenv("REFRESH_TOKEN", server.refresh_token)
    block = (
        "{type: oauth2_refresh_token, token_url: '${env.API_URL}/oauth/token', client_id: syncrun-client,"
        " refresh_token: '${secret.REFRESH_TOKEN}', scopes: ['read:apps']}"
    )
    source = test_auth.source_with(tmp_path, block)
    test_auth.seed(env, source, range(1, 3))
    test_auth.route_apps(api, range(1, 3), server.app)
    assert cli.main(["run", str(source)]) == 1
    err = capsys.readouterr().err
    assert "rotated the refresh token" in err
    assert "does not support" in err
    assert "rt-rotated" not in err
    assert env.scalar("select count(*) from apps") == 0


# --- a failed renewal is remembered ------------------------------------------------------------------------------
def test_a_failing_first_fetch_is_asked_once_per_renewal_not_once_per_waiter(api: ApiServer, tmp_path: Path) -> None:
    """8 requests wait for the first token; the endpoint answers 500: 3 token requests (retry.attempts),
    and all 8 requests get the same failure."""
    api.route("/oauth/token", Reply(500, json={"error": "server_error"}))
    failures = asyncio.run(waiters(authenticator(api, tmp_path, CLIENT_CREDENTIALS), None))
    assert len(api.requests) == 3
    assert len(failures) == 8
    assert all(isinstance(f, RunFailed) for f in failures)
    assert len({str(f) for f in failures}) == 1
    assert "answered HTTP 500 (server_error) — the token endpoint is rate-limited or failing" in str(failures[0])


def test_a_failing_renewal_mid_run_is_remembered(api: ApiServer, tmp_path: Path) -> None:
    """A good token, then the endpoint fails: the 8 requests refused with the old token cause one
    renewal (3 attempts), and a request afterwards is refused at once, without a token request."""
    api.route("/oauth/token", Reply(200, json={"access_token": "at-first-Mn3Bv5Cx7Z"}), Reply(503))
    found = authenticator(api, tmp_path, CLIENT_CREDENTIALS)

    async def main() -> tuple[list[BaseException], BaseException | None]:
        await found.current()
        failures = await waiters(found, found.token.generation)
        try:
            await found.current()
        except RunFailed as error:
            return failures, error
        return failures, None

    failures, later = asyncio.run(main())
    assert len(api.requests) == 1 + 3
    assert len(failures) == 8
    assert later is not None
    assert str(later) == str(failures[0])
    assert found.fetches == 4


def test_a_rotating_provider_is_sent_the_refresh_token_once(api: ApiServer, tmp_path: Path) -> None:
    """The provider spends the refresh token and answers a new one: the run stops saying the configured
    one is most likely spent; none of the 7 other waiting requests sends it again (a provider with
    reuse detection would revoke the whole token family)."""
    sent: list[str] = []

    def rotating(request: Recorded) -> Reply:
        form = dict(parse_qsl(request.body.decode()))
        sent.append(form.get("refresh_token", ""))
        if form.get("refresh_token") != REFRESH or len(sent) > 1:
            return Reply(400, json={"error": "invalid_grant", "error_description": "reused: family revoked"})
        return Reply(200, json={"access_token": "at-" + secrets.token_hex(8), "refresh_token": "rt-new-Qa1Ws2Ed3R"})

    api.route("/oauth/token", rotating)
    failures = asyncio.run(waiters(authenticator(api, tmp_path, REFRESH_TOKEN), None))
    assert sent == [REFRESH]
    assert len(failures) == 8
    message = str(failures[0])
    assert "rotated the refresh token" in message
    assert "most likely spent auth.refresh_token" in message
    assert "obtain a new refresh token" in message
    assert "rt-new" not in message
    assert REFRESH[:8] not in message


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, body=b"<html>not json</html>"),
        Reply(200, json={"access_token": "bad token with spaces", "refresh_token": "rt-new-Qa1Ws2Ed3R"}),
        Reply(200, drip=0.05),
    ],
    ids=["not json", "unusable token", "answer cut by the deadline"],
)
def test_a_refresh_token_answered_to_is_never_sent_again(reply: Reply, api: ApiServer, tmp_path: Path) -> None:
    """A success answer syncrun cannot use (or whose body never finished) may have rotated the refresh
    token: no retry with it, and the message says it may be spent."""
    api.route("/oauth/token", reply)
    block = REFRESH_TOKEN.replace("refresh_token: ", "timeout: 300ms, refresh_token: ")
    failures = asyncio.run(waiters(authenticator(api, tmp_path, block), None, count=3))
    assert len(api.requests) == 1
    assert len(failures) == 3
    assert "it has spent auth.refresh_token with this answer and a new one must be obtained" in str(failures[0])


def test_a_refresh_token_refused_with_an_error_is_retried_only_when_transient(api: ApiServer, tmp_path: Path) -> None:
    """An error answer spends nothing: a 503 is retried (retry.attempts), an invalid_grant is not."""
    api.route("/oauth/token", Reply(503), Reply(400, json={"error": "invalid_grant"}))
    failures = asyncio.run(waiters(authenticator(api, tmp_path, REFRESH_TOKEN), None, count=2))
    assert len(api.requests) == 2
    assert "the provider refused auth.refresh_token: it expired, was revoked or was already used" in str(failures[0])


# --- a run that could not get a token is never `completed` ----------------------------------------------------
def test_max_runtime_while_the_token_endpoint_hangs_fails_the_run(
    env: Database,  # noqa: F811 (the fixture of tests.test_auth)
    api: ApiServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--max-runtime passes while the first token request hangs; the token failure that follows (within
    the grace period) makes the run `failed`, exit 1, not `completed` with nothing processed."""
    api.route("/oauth/token", Reply(200, hang=True))
    block = test_auth.CLIENT_CREDENTIALS.replace("scopes:", "timeout: 400ms, scopes:")
    source = test_auth.source_with(tmp_path, block, concurrency=2)
    test_auth.seed(env, source, range(1, 4))
    assert cli.main(["run", str(source), "--max-runtime", "0.1"]) == 1
    err = capsys.readouterr().err
    assert "max runtime reached" in err
    assert "could not get an access token" in err
    status, processed, metadata = env.rows("select status, items_processed, metadata from sync_jobs")[0]
    assert (status, processed) == ("failed", 0)
    assert metadata["stop_reason"] == "max_runtime"


# --- requests refused at once: one renewal ----------------------------------------------------------------------
@pytest.mark.parametrize("rate_limited", [False, True])
def test_requests_refused_at_once_share_one_renewal_when_the_provider_answers_the_same_token(
    rate_limited: bool, api: ApiServer, tmp_path: Path
) -> None:
    """Review revE F2: a provider that answers every token request with the token it cached; the API
    refuses the 9 requests sent at once with it with 401 (all 9 answered together, once the last has
    arrived), then takes it. One renewal, not one per refused request: 2 token requests, and every
    request sent once more and answered 200. With `rate_limited: true` both token requests spend the
    limiter's budget, as before."""
    api.route("/oauth/token", Reply(200, json={"access_token": "at-Same5Cached7Tok9", "expires_in": 3600}))
    arrived = threading.Barrier(9, timeout=30)  # no resend can arrive among the first 9: none is answered yet
    refused = iter(range(9))
    lock = threading.Lock()

    def app(request: Recorded) -> Reply:
        with lock:
            first = next(refused, None) is not None
        if not first:
            return Reply(200, json={"ok": True})
        arrived.wait()
        return Reply(401, json={"error": "invalid_token"})

    for appid in range(9):
        api.route(f"/apps/{appid}", app)
    block = CLIENT_CREDENTIALS.replace("client_id: c1,", f"rate_limited: {str(rate_limited).lower()}, client_id: c1,")
    source = config.loads(SOURCE.format(url=api.url, auth=block.format(url=api.url)), tmp_path / "t.yaml")
    settings = templating.Settings(dict(SECRETS), Redactor(SECRETS.values()))
    limiter = Limiter(source.rate_limit)
    found = auth.for_source(source, settings, limiter=limiter)
    assert found is not None

    async def main() -> list[int]:
        transport = auth.AuthTransport(httpx.AsyncHTTPTransport(), found)
        async with httpx.AsyncClient(transport=transport) as session:
            replies = await asyncio.gather(*(session.get(f"{api.url}/apps/{appid}") for appid in range(9)))
        return [reply.status_code for reply in replies]

    assert asyncio.run(main()) == [200] * 9
    assert len([r for r in api.requests if r.path == "/oauth/token"]) == 2  # the first token, one renewal
    assert found.fetches == 2
    assert len([r for r in api.requests if r.path.startswith("/apps/")]) == 18
    assert limiter.requests == (2 if rate_limited else 0)  # only token requests go through it here


# --- a renewal, and the wait for the budget, are not on a request's clock (review revJ F1) ------------------
def test_a_slow_renewal_after_a_401_is_not_on_the_request_s_clock(api: ApiServer, tmp_path: Path) -> None:
    """Two requests refused with the first token; the renewal takes 2 s, request.timeout is 1 s. The
    attempt's clock stops at the 401 and starts again at the new grant: both are answered 200 with the
    renewed token, in one attempt each. Before, the first request's deadline fired during the renewal
    and cancelled it mid-answer; the second then renewed again, sending the refresh token a second time
    (a rotating provider may have spent it with the answer the cancellation threw away)."""
    api.route(
        "/oauth/token",
        Reply(200, json={"access_token": "at-first-Rq2Wz4Xc6V"}),
        Reply(200, json={"access_token": "at-second-Pl3Ok5Ij7U"}, delay=2.0),
    )
    app = test_auth.guarded(lambda r: r.headers.get("authorization") == "Bearer at-second-Pl3Ok5Ij7U")
    test_auth.route_apps(api, range(2), app)
    block = REFRESH_TOKEN.replace("refresh_token: ", "timeout: 5s, refresh_token: ")  # the endpoint's own deadline
    text = SOURCE.format(url=api.url, auth=block.format(url=api.url))
    source = config.loads(text.replace('{appid}"}', '{appid}", timeout: 1s}'), tmp_path / "t.yaml")
    settings = templating.Settings(dict(SECRETS), Redactor(SECRETS.values()))
    limiter = Limiter(source.rate_limit)
    found = auth.for_source(source, settings, limiter=limiter)
    assert found is not None

    async def one(http: httpx.AsyncClient, appid: int) -> int:
        request = http.build_request("GET", f"{api.url}/apps/{appid}")
        reply = await client.send(
            http, request, spec.Retry(attempts=1), max_body=1000, timeout=1.0, limiter=limiter, redact=str
        )
        return reply.status

    async def main() -> list[int]:
        http = client.build(source.request, limiter, max_connections=4, authenticator=found)
        try:
            return list(await asyncio.gather(one(http, 0), one(http, 1)))
        finally:
            await http.aclose()

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [200, 200]
    assert [r.path for r in api.requests].count("/oauth/token") == 2  # the first token, one renewal
    assert found.fetches == 2


def test_a_run_whose_first_token_is_refused_at_concurrency_above_the_rate_completes(
    env: Database,  # noqa: F811 (the fixture of tests.test_auth)
    api: ApiServer,
    tmp_path: Path,
) -> None:
    """Review revJ F1 as a run (its numbers, 5 times faster): `rate_limited: true`, 5 per 200 ms,
    concurrency 32, request.timeout 1 s, 20 entities; the API refuses the first token. The re-sends
    queue behind each other and the renewal for longer than the timeout. Before, their deadlines fired
    in the queue, each cancelled wait left a grant open for ever, and after five the run hung at 11 or
    12 processed (bounded here by --max-runtime). Now it completes, with one renewal."""
    api.route(
        "/oauth/token",
        Reply(200, json={"access_token": "at-refused-Hy6Gt8Fr0D"}),
        Reply(200, json={"access_token": "at-taken-Ju7Ki9Lo1P"}),
    )
    test_auth.route_apps(
        api, range(1, 21), test_auth.guarded(lambda r: r.headers.get("authorization") == "Bearer at-taken-Ju7Ki9Lo1P")
    )
    block = test_auth.CLIENT_CREDENTIALS.replace("scopes:", "rate_limited: true, scopes:")
    source = test_auth.source_with(tmp_path, block, concurrency=32)
    text = source.read_text().replace(
        "{requests: 200, per: 1s, burst: 20, bucket: alpha}", "{requests: 5, per: 200ms, burst: 5}"
    )
    text = text.replace("attempts: 4,", "attempts: 2,")
    source.write_text(text.replace("timeout: 2s", "timeout: 1s"))
    test_auth.seed(env, source, range(1, 21))
    assert cli.main(["run", str(source), "--max-runtime", "20"]) == 0
    status, processed, succeeded = env.rows("select status, items_processed, items_succeeded from sync_jobs")[0]
    assert (status, processed, succeeded) == ("completed", 20, 20)
    assert [r.path for r in api.requests].count("/oauth/token") == 2  # the first token, one renewal


# --- a renewal runs in a task of its own: a request cut off by the run's stop does not cut it off -----------
@pytest.mark.parametrize("rotates", [False, True], ids=["same refresh token", "rotated refresh token"])
def test_a_renewal_whose_request_the_run_s_stop_cuts_off_still_stores_its_answer(
    rotates: bool, api: ApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The API refuses the first token; the renewal's answer takes 1 s, and the run's stop grace ends
    the request that asked for it (its task cancelled) while the token endpoint is answering. The
    renewal goes on in its own task and the client's close waits for it: the new token is stored
    (generation 2, one renewal), or, when the provider rotated the refresh token with that answer, the
    rotation is logged, saying the configured one is most likely spent. Before, the cancellation cut
    the token request off mid-answer: the answer was lost (a rotating provider had spent the refresh
    token, and nothing said so)."""
    asked = threading.Event()
    second = {"access_token": "at-second-Hn5Jm7Kl9P"} | ({"refresh_token": "rt-new-Ed4Rf6Tg8Y"} if rotates else {})

    def renewal(request: Recorded) -> Reply:
        asked.set()
        return Reply(200, json=second, delay=1.0)

    api.route("/oauth/token", Reply(200, json={"access_token": "at-first-Bv2Cx4Zq6W"}), renewal)
    api.route("/apps/1", Reply(401, json={"error": "invalid_token"}))
    found = authenticator(api, tmp_path, REFRESH_TOKEN)

    async def main() -> None:
        http = httpx.AsyncClient(transport=auth.AuthTransport(httpx.AsyncHTTPTransport(), found))
        await found.current()
        request = asyncio.create_task(http.get(f"{api.url}/apps/1"))
        assert await asyncio.to_thread(asked.wait, 10)  # the renewal's token request has arrived
        request.cancel()  # the stop grace ends the fetcher
        await asyncio.gather(request, return_exceptions=True)
        await http.aclose()  # the run's end: closes the source's client

    with caplog.at_level("WARNING", logger="syncrun"):
        asyncio.run(asyncio.wait_for(main(), 30))
    assert [r.path for r in api.requests].count("/oauth/token") == 2
    assert found.fetches == 2
    if rotates:
        assert found.token.failed is not None
        assert "the token renewal in flight when the run stopped failed" in caplog.text
        assert "rotated the refresh token" in caplog.text
        assert "most likely spent auth.refresh_token" in caplog.text
        assert "rt-new" not in caplog.text
    else:
        assert (found.token.generation, found.token.value) == (2, "at-second-Hn5Jm7Kl9P")


# --- rate-limited renewals: a request granted while the token is renewed waits for the new one (revL F4) ----
def test_requests_granted_while_a_rate_limited_renewal_is_in_flight_wait_for_it(api: ApiServer, tmp_path: Path) -> None:
    """revL F4: `rate_limited: true` at 10 per second (one grant every 100 ms), 16 requests queued for
    the limiter, and a provider that revokes the first token after 2 uses. The third request's 401
    starts the renewal, whose token request queues behind the 13 others. Each of those, granted while
    the renewal is in flight, gives its grant up (spent all the same: the limit holds) and waits for
    the new token instead of sending the revoked one: one or two 401s, not one per queued request (14
    before). Every request is answered 200; one renewal."""
    lock = threading.Lock()
    uses = {"Bearer at-first-Qz1Xw3Ec5R": 0}

    def app(request: Recorded) -> Reply:
        said = request.headers.get("authorization", "")
        with lock:
            if said == "Bearer at-first-Qz1Xw3Ec5R":
                uses[said] += 1
                if uses[said] > 2:  # revoked early: its expires_in said an hour
                    return Reply(401, json={"error": "invalid_token"})
        if said not in ("Bearer at-first-Qz1Xw3Ec5R", "Bearer at-second-Vb6Nm8Lk0J"):
            return Reply(401, json={"error": "invalid_token"})
        return Reply(200, json={"ok": True})

    api.route(
        "/oauth/token",
        Reply(200, json={"access_token": "at-first-Qz1Xw3Ec5R", "expires_in": 3600}),
        Reply(200, json={"access_token": "at-second-Vb6Nm8Lk0J", "expires_in": 3600}),
    )
    test_auth.route_apps(api, range(16), app)
    block = CLIENT_CREDENTIALS.replace("client_id: c1,", "rate_limited: true, client_id: c1,")
    text = SOURCE.format(url=api.url, auth=block.format(url=api.url))
    text = text.replace("rate_limit: {requests: 100, per: 1s}", "rate_limit: {requests: 10, per: 1s, burst: 1}")
    source = config.loads(text, tmp_path / "t.yaml")
    settings = templating.Settings(dict(SECRETS), Redactor(SECRETS.values()))
    limiter = Limiter(source.rate_limit)
    found = auth.for_source(source, settings, limiter=limiter)
    assert found is not None

    async def main() -> list[int]:
        transport = auth.AuthTransport(RateLimitedTransport(httpx.AsyncHTTPTransport(), limiter), found)
        async with httpx.AsyncClient(transport=transport) as session:
            replies = await asyncio.gather(*(session.get(f"{api.url}/apps/{appid}") for appid in range(16)))
        return [reply.status_code for reply in replies]

    assert asyncio.run(asyncio.wait_for(main(), 60)) == [200] * 16
    sent = [r for r in api.requests if r.path.startswith("/apps/")]
    refused = len(sent) - 16  # each request answered 200 once; every other answer was a 401
    assert refused <= 2, f"{refused} requests sent with the revoked token"
    assert [r.path for r in api.requests].count("/oauth/token") == 2  # the first token, one renewal
    # every request sent spent a grant (token requests too), and only those count as requests made: a grant
    # given up unsent spent budget but sent nothing (review revM L1: 143 requests made, the server saw 73)
    assert limiter.requests == len(api.requests)


# --- a run's stop and the renewal in flight (review revM M1, L5) -------------------------------------------------
def test_a_renewal_that_fails_within_the_stop_s_grace_is_reported_in_the_job_row(
    env: Database,  # noqa: F811 (the fixture of tests.test_auth)
    api: ApiServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """revM M1: the API refuses the first token; SIGTERM arrives while the renewal is in flight, and the
    token endpoint then refuses it (invalid_grant) within the grace. The request waiting for it gets the
    failure, and the stopped run discarded it: exit 143, `cancelled by SIGTERM`, nothing said, the next run
    failing without a reason. Now the run stays cancelled and says it, in the log and the job row."""
    stopped = threading.Event()
    halt_all = stopping.halt_all

    def observed(*args: object) -> None:  # the engine's own handler, called through: only observed
        halt_all(*args)  # type: ignore[arg-type]
        stopped.set()

    monkeypatch.setattr(stopping, "halt_all", observed)

    def renewal(request: Recorded) -> Reply:
        os.kill(os.getpid(), signal.SIGTERM)  # the run is inside the engine: its own handler takes it
        assert stopped.wait(10)
        return Reply(400, json={"error": "invalid_grant", "error_description": "grant revoked"})

    api.route("/oauth/token", Reply(200, json={"access_token": "at-first-Lk8Jh6Gf4D"}), renewal)
    test_auth.route_apps(api, range(1, 4), Reply(401, json={"error": "invalid_token"}))
    source = test_auth.source_with(tmp_path, test_auth.CLIENT_CREDENTIALS, concurrency=1)
    test_auth.seed(env, source, range(1, 4))
    assert cli.main(["run", str(source)]) == 143
    err = capsys.readouterr().err
    status, error = env.rows("select status, error_message from sync_jobs")[0]
    assert status == "cancelled"
    assert error.startswith("cancelled by SIGTERM; while stopping: the token endpoint")
    assert "invalid_grant: grant revoked" in error
    assert err.count("while stopping: the token endpoint") == 2  # the warning once, and the summary line
    assert [r.path for r in api.requests].count("/oauth/token") == 2


@pytest.mark.parametrize("second_signal", [False, True], ids=["grace", "second signal"])
def test_the_close_waits_for_a_renewal_in_flight_at_most_the_grace(
    second_signal: bool, api: ApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """revM L5: after the stop, the close waited for a renewal in flight as long as the token retry
    policy lets one take (3 attempts × request.timeout: here 90 s); now at most the run's --grace, and
    not at all once a second signal abandoned it. The renewal is then given up, saying what that means
    for a refresh token."""
    asked = threading.Event()

    def renewal(request: Recorded) -> Reply:
        asked.set()
        return Reply(200, hang=True)

    api.route("/oauth/token", Reply(200, json={"access_token": "at-first-Mn3Bv5Cx7Z"}), renewal)
    api.route("/apps/1", Reply(401, json={"error": "invalid_token"}))
    text = SOURCE.format(url=api.url, auth=REFRESH_TOKEN.format(url=api.url))
    source = config.loads(text.replace("request: {", "request: {timeout: 30s, "), tmp_path / "t.yaml")
    settings = templating.Settings(dict(SECRETS), Redactor(SECRETS.values()))
    tokens = auth.Tokens(grace=60.0 if second_signal else 0.2)
    found = auth.for_source(source, settings, tokens)
    assert found is not None
    assert found.access.endpoint.longest() >= 90

    async def main() -> None:
        http = httpx.AsyncClient(transport=auth.AuthTransport(httpx.AsyncHTTPTransport(), found))
        await found.current()
        request = asyncio.create_task(http.get(f"{api.url}/apps/1"))
        assert await asyncio.to_thread(asked.wait, 10)
        request.cancel()  # the stop grace ends the fetcher
        await asyncio.gather(request, return_exceptions=True)
        if second_signal:
            tokens.abandon()
        await http.aclose()

    with caplog.at_level("WARNING", logger="syncrun"):
        asyncio.run(asyncio.wait_for(main(), 20))
    why = "a second signal" if second_signal else "--grace, 0.2 s"
    assert f"the token renewal in flight when the run stopped was given up ({why})" in caplog.text
    assert "auth.refresh_token may be spent" in caplog.text
    assert [r.path for r in api.requests].count("/oauth/token") == 2


def test_a_second_signal_ends_the_wait_for_a_renewal_in_flight(
    env: Database,  # noqa: F811 (the fixture of tests.test_auth)
    api: ApiServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """revM L5: SIGTERM while the renewal hangs (its deadline 20 s), then a second SIGTERM: the run ends
    after its --grace, its job row finished, without waiting for the token endpoint. Before, the engine
    took its signal handlers down before the close, and the close waited out the token retry policy."""
    stopped = threading.Event()
    halt_all = stopping.halt_all

    def observed(*args: object) -> None:  # the engine's own handler, called through: only observed
        halt_all(*args)  # type: ignore[arg-type]
        stopped.set()

    monkeypatch.setattr(stopping, "halt_all", observed)

    signalled = threading.Lock()

    def renewal(request: Recorded) -> Reply:
        if signalled.acquire(blocking=False):  # the first attempt only (a retry must not signal again)
            os.kill(os.getpid(), signal.SIGTERM)
            assert stopped.wait(10)
            os.kill(os.getpid(), signal.SIGTERM)  # the second one
        return Reply(200, hang=True)

    api.route("/oauth/token", Reply(200, json={"access_token": "at-first-Po9Iu7Yt5R"}), renewal)
    test_auth.route_apps(api, range(1, 4), Reply(401, json={"error": "invalid_token"}))
    block = test_auth.CLIENT_CREDENTIALS.replace("scopes:", "timeout: 20s, scopes:")
    source = test_auth.source_with(tmp_path, block, concurrency=1)
    test_auth.seed(env, source, range(1, 4))
    started = time.monotonic()
    assert cli.main(["run", str(source), "--grace", "0.5"]) == 143
    assert time.monotonic() - started < 15  # the token endpoint's deadline alone is 20 s
    err = capsys.readouterr().err
    assert "received SIGTERM again: no longer waiting for a token renewal in flight" in err
    assert "the token renewal in flight when the run stopped was given up (a second signal)" in err
    assert env.rows("select status, error_message from sync_jobs") == [("cancelled", "cancelled by SIGTERM")]
