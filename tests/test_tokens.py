"""The token endpoint (runner/tokens.py) against a strict loopback server: how the client authenticates
(form fields or HTTP Basic), and what a hostile answer becomes (a clear RunFailed, or a token without a
known lifetime), never a traceback, a hang or a token in a message; its TLS verification (as the
source's `request.verify_tls`, unless `auth.verify_tls` says) and its rate budget (`rate_limited`)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
from pathlib import Path
from urllib.parse import parse_qsl, quote_plus

import pytest

from runner import auth, cli, config, spec, templating, tokens
from runner.errors import RunFailed
from runner.ratelimit import Limiter
from runner.redaction import Redactor
from runner.spec import Retry
from tests import test_oauth
from tests.apiserver import ApiServer, Recorded, Reply
from tests.pg import Database
from tests.test_security import tls_api  # noqa: F401 (a fixture: HTTPS with a throwaway certificate)

CLIENT_ID = "syncrun client/1"  # a space and a slash: form-encoded inside HTTP Basic (RFC 6749 §2.3.1)
SECRET = "cs-Pq7:Wx+Ly 3/Zk9"
TOKEN = "at-Mv4Nb8Qc2Rt6Yh0J"
SOURCE = """\
name: t
entities: {{columns: {{appid: int}}}}
request: {{url: "https://api.example.com/apps/{{appid}}"}}
auth:
  type: oauth2_client_credentials
  token_url: "{url}/oauth/token"
  client_id: "{client_id}"
  client_secret: "${{secret.CLIENT_SECRET}}"
  scopes: [read]
  timeout: {timeout}
{more}rate_limit: {{requests: 1, per: 1s}}
writes: [{{table: apps, key: [appid], columns: {{appid: entity.appid}}}}]
"""


def endpoint(
    api: ApiServer, tmp_path: Path, *, more: str = "", timeout: str = "2s", attempts: int = 1
) -> tokens.Endpoint:
    text = SOURCE.format(url=api.url, client_id=CLIENT_ID, timeout=timeout, more=more)
    source = config.loads(text, tmp_path / "t.yaml")
    assert source.auth is not None
    settings = templating.Settings({("secret", "CLIENT_SECRET"): SECRET}, Redactor([SECRET]))

    async def no_wait(seconds: float) -> None:
        return None

    retry = Retry(attempts=attempts, initial=0.01, max_delay=0.01)
    return tokens.Endpoint(source.auth, settings, timeout=30.0, retry=retry, sleep=no_wait)


def grant(ep: tokens.Endpoint) -> tokens.Grant:
    async def main() -> tokens.Grant:
        try:
            return await ep.grant()
        finally:
            await ep.aclose()

    return asyncio.run(main())


def failure(ep: tokens.Endpoint) -> str:
    with pytest.raises(RunFailed) as caught:
        grant(ep)
    return str(caught.value)


# --- client authentication: form fields or HTTP Basic -------------------------------------------------
def strict(method: str) -> object:
    """A token endpoint that accepts the client only one way (the other is invalid_client)."""

    def reply(request: Recorded) -> Reply:
        form = dict(parse_qsl(request.body.decode()))
        header = request.headers.get("authorization", "")
        if method == "basic":
            expected = base64.b64encode(f"{quote_plus(CLIENT_ID)}:{quote_plus(SECRET)}".encode()).decode()
            good = header == f"Basic {expected}" and "client_secret" not in form and "client_id" not in form
        else:
            good = not header and form.get("client_id") == CLIENT_ID and form.get("client_secret") == SECRET
        if not good or form.get("grant_type") != "client_credentials" or form.get("scope") != "read":
            return Reply(401, json={"error": "invalid_client"})
        return Reply(200, json={"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600})

    return reply


@pytest.mark.parametrize("server", ["basic", "post"])
@pytest.mark.parametrize("client_auth", ["client_secret_basic", "client_secret_post", None])
def test_client_authentication_method(client_auth: str | None, server: str, api: ApiServer, tmp_path: Path) -> None:
    """client_secret_post (the default) sends id and secret as form fields; client_secret_basic as an
    Authorization: Basic header of the form-encoded pair. Each works with a server that accepts only
    it, and against the other the failure says how the client was sent."""
    api.route("/oauth/token", strict(server))  # type: ignore[arg-type]
    ep = endpoint(api, tmp_path, more=f"  client_auth: {client_auth}\n" if client_auth else "")
    sent = client_auth or "client_secret_post"
    if sent.endswith(server):
        assert grant(ep) == tokens.Grant(TOKEN, 3600.0)
    else:
        message = failure(ep)
        assert (
            "answered HTTP 401 (invalid_client) — the provider does not accept the client: check auth.client_id"
            f" and auth.client_secret (sent as {sent}; the provider may want the other client_auth)"
        ) in message
        assert SECRET[:8] not in message


# --- hostile answers ------------------------------------------------------------------------------------
HOSTILE = {
    "declared huge": (Reply(200, size=50_000_000), "declares 50,000,000 bytes (Content-Length)"),
    "chunked huge": (Reply(200, size=50_000_000, chunked=True), "(exceeded the bound (65,536 bytes); stopped reading)"),
    "gzip bomb": (
        Reply(200, body=gzip.compress(b"{" + b" " * 20_000_000 + b"}"), headers={"Content-Encoding": "gzip"}),
        "inflates past the bound (65,536 bytes)",
    ),
    "deeply nested": (Reply(200, body=b"[" * 30_000 + b"]" * 30_000), "nested"),
    "deep under a key": (Reply(200, body=b'{"access_token": ' + b"[" * 5000 + b"]" * 5000 + b"}"), "nested"),
    "not json": (Reply(200, body=b"<html>sign in</html>", headers={"Content-Type": "text/html"}), "not valid JSON"),
    "a list": (Reply(200, json=[TOKEN]), "with a JSON list, not an object"),
    "empty": (Reply(200), "with an empty body"),
    "no token": (Reply(200, json={"token": TOKEN}), "without an access_token — is auth.token_url the OAuth2"),
    "null token": (Reply(200, json={"access_token": None}), "without an access_token"),
    "number token": (Reply(200, json={"access_token": 12345678}), "with an access_token that is not text (a number)"),
    "object token": (Reply(200, json={"access_token": {"v": TOKEN}}), "that is not text (an object)"),
    "bool token": (Reply(200, json={"access_token": True}), "that is not text (a boolean)"),
    "huge token": (Reply(200, json={"access_token": "x" * 9000}), "an access_token of 9,000 characters"),
    "CRLF in token": (Reply(200, json={"access_token": TOKEN + "\r\nX-Evil: 1"}), "cannot be sent in a header"),
    "NUL in token": (Reply(200, json={"access_token": TOKEN + "\x00"}), "cannot be sent in a header"),
    "non-ASCII token": (Reply(200, json={"access_token": TOKEN + "é"}), "cannot be sent in a header"),
    "space in token": (Reply(200, json={"access_token": TOKEN + " x"}), "cannot be sent in a header"),
    "NaN": (Reply(200, body=b'{"access_token": "' + TOKEN.encode() + b'", "expires_in": NaN}'), "unusable JSON"),
    "bad error body": (
        Reply(401, json={"error": "invalid\r\nclient\x1b[31m", "error_description": "x" * 500 + SECRET}),
        "answered HTTP 401 (invalid client [31m: xxxxx",
    ),
    "long error body": (Reply(401, json={"error_description": "y" * 5000 + SECRET}), "answered HTTP 401 ('{\"error_"),
    "error body nested": (Reply(400, body=b"[" * 5000), "answered HTTP 400 ('[[[[["),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_answer_is_a_clear_run_failure(case: str, api: ApiServer, tmp_path: Path) -> None:
    """Each answer ends as RunFailed naming the endpoint and what was wrong: one line, no token or secret."""
    reply, expected = HOSTILE[case]
    api.route("/oauth/token", reply)
    message = failure(endpoint(api, tmp_path))
    assert expected in message
    assert message.startswith(f"the token endpoint {api.url}/oauth/token ") or "could not get" in message
    assert "\n" not in message
    assert "\r" not in message
    assert "\x1b" not in message
    assert TOKEN[:8] not in message
    assert SECRET[:8] not in message
    assert len(message) < 600


@pytest.mark.parametrize("reply", [Reply(200, drip=0.05), Reply(200, hang=True)], ids=["drip", "hang"])
def test_a_slow_token_endpoint_runs_into_the_deadline(reply: Reply, api: ApiServer, tmp_path: Path) -> None:
    """A server that drips its answer a byte at a time (each read well within httpx's timeout) or never
    answers is cut at auth.timeout for the whole exchange, each attempt, then the run fails."""
    api.route("/oauth/token", reply)
    message = failure(endpoint(api, tmp_path, timeout="300ms", attempts=2))
    assert "could not get an access token from" in message
    assert "(no answer within 0.3 s (auth.timeout); 2 attempts)" in message
    assert [r.path for r in api.requests] == ["/oauth/token"] * 2


# --- a refusal says which key to check: by its RFC 6749 §5.2 error code, else by its status -----------------
REFUSALS = {
    "404 typo in the path": (Reply(404, json={}), "— check auth.token_url: it is not the provider's token endpoint"),
    "405": (Reply(405), "HTTP 405 — check auth.token_url"),
    "redirect": (Reply(302, headers={"Location": "/login"}), "a redirect, which token requests do not follow"),
    "500": (Reply(500, json={"error": "server_error"}), "(server_error) — the token endpoint is rate-limited or"),
    "429": (Reply(429), "HTTP 429 — the token endpoint is rate-limited or failing at the moment: nothing to fix"),
    "invalid_client": (Reply(400, json={"error": "invalid_client"}), "not accept the client: check auth.client_id"),
    "invalid_scope": (
        Reply(400, json={"error": "invalid_scope", "error_description": "unknown scope"}),
        "(invalid_scope: unknown scope) — the provider refused the scopes asked for: check auth.scopes (sent: read)",
    ),
    "invalid_request": (
        Reply(400, json={"error": "invalid_request"}),
        "found the token request malformed (a missing, repeated or unsupported parameter): check auth.extra",
    ),
    "unauthorized_client": (
        Reply(400, json={"error": "unauthorized_client"}),
        "the client auth.client_id may not use the client_credentials grant: allow it",
    ),
    "unsupported_grant_type": (
        Reply(400, json={"error": "unsupported_grant_type"}),
        "this endpoint does not offer the client_credentials grant: check auth.token_url and auth.type",
    ),
    "invalid_grant": (
        Reply(400, json={"error": "invalid_grant"}),
        "refused the client credentials grant: check auth.scopes, auth.client_id and auth.client_secret",
    ),
    "401 without a code": (Reply(401), "HTTP 401 — check auth.client_id and auth.client_secret (sent as"),
    "403 without a code": (Reply(403), "HTTP 403 — the provider refuses this client: check that auth.client_id may"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refusal_points_at_the_key_to_check(case: str, api: ApiServer, tmp_path: Path) -> None:
    """A 404 or a redirect is the URL, a 5xx or 429 the provider's trouble, an RFC 6749 error code its
    own key; the secret is never quoted, not even when the provider echoes it."""
    reply, expected = REFUSALS[case]
    if reply.json is not None:
        reply = Reply(reply.status, json={**reply.json, "echo": SECRET}, headers=reply.headers)
    api.route("/oauth/token", reply)
    message = failure(endpoint(api, tmp_path))
    assert expected in message
    if case in ("404 typo in the path", "405", "redirect", "500", "429"):
        assert "client_id" not in message  # nothing to check there
    assert SECRET[:8] not in message
    assert SECRET[-8:] not in message


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [
        (3600, 3600.0),
        (0.5 + 1, 1.5),
        ("3600", 3600.0),  # some providers send text
        (-5, None),
        (0, None),
        (10**400, None),  # float() of it would raise
        (1e308, None),
        ("soon", None),
        ("9" * 5000, None),
        ([60], None),
        ({"s": 60}, None),
        (True, None),
    ],
)
def test_expires_in_is_used_only_when_it_is_a_lifetime(
    expires_in: object, lifetime: float | None, api: ApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A useless expires_in is no failure: the token is used and renewed when the API refuses it, with a
    warning that quotes the value short."""
    body = b'{"access_token": "' + TOKEN.encode() + b'", "expires_in": ' + json.dumps(expires_in).encode() + b"}"
    api.route("/oauth/token", Reply(200, body=body))
    with caplog.at_level(logging.WARNING, logger="syncrun"):
        assert grant(endpoint(api, tmp_path)) == tokens.Grant(TOKEN, lifetime)
    warnings = [r.getMessage() for r in caplog.records]
    assert bool(warnings) == (lifetime is None)
    assert all("renewed when the API refuses it" in w and len(w) < 300 for w in warnings)


def test_a_token_is_masked_from_the_moment_it_arrives(api: ApiServer, tmp_path: Path) -> None:
    """The access token and a refresh token in the answer are added to the run's redactor, and any
    listener (GitHub Actions' ::add-mask::) hears of them before grant() returns."""
    api.route("/oauth/token", Reply(200, json={"access_token": TOKEN, "refresh_token": "rt-Kd83Jf72Hs61"}))
    ep = endpoint(api, tmp_path)
    heard: list[str] = []
    ep.settings.redact.listen(heard.extend)
    assert grant(ep).refresh_token == "rt-Kd83Jf72Hs61"
    assert TOKEN in heard
    assert "rt-Kd83Jf72Hs61" in heard
    assert ep.settings.redact(f"x {TOKEN[3:11]} rt-Kd83Jf72 y") == "x *** *** y"


@pytest.mark.parametrize(("token_type", "warned"), [("Bearer", False), ("bearer", False), (None, False), ("mac", True)])
def test_a_token_type_other_than_bearer_is_used_with_a_warning(
    token_type: str | None, warned: bool, api: ApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """syncrun sends Bearer tokens only: another token_type is said, not silently taken for one."""
    body = {"access_token": TOKEN, "expires_in": 60} | ({"token_type": token_type} if token_type else {})
    api.route("/oauth/token", Reply(200, json=body))
    with caplog.at_level(logging.WARNING, logger="syncrun"):
        assert grant(endpoint(api, tmp_path)).access_token == TOKEN
    said = [r.getMessage() for r in caplog.records if "token_type" in r.getMessage()]
    assert bool(said) == warned
    assert all("answered token_type 'mac': syncrun sends every token as Bearer" in m for m in said)


def test_a_token_endpoints_cookies_are_not_kept(api: ApiServer, tmp_path: Path) -> None:
    """A Set-Cookie from the token endpoint (here non-ASCII, which httpx cannot put into a later
    request's head: a crash) is ignored, as the API's are: the next token request carries no Cookie."""
    api.route(
        "/oauth/token",
        Reply(
            200,
            json={"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600},
            repeated=(("Set-Cookie", "a=\u00fc; Path=/"), ("Set-Cookie", "b=1; Path=/")),
        ),
    )
    ep = endpoint(api, tmp_path)

    async def twice() -> list[tokens.Grant]:
        try:
            return [await ep.grant(), await ep.grant()]
        finally:
            await ep.aclose()

    assert asyncio.run(twice()) == [tokens.Grant(TOKEN, 3600.0)] * 2
    assert [r.headers.get("cookie") for r in api.requests] == [None, None]


# --- the token endpoint's TLS and rate budget, through a source's authenticator -----------------------------
TOKEN_ANSWER = Reply(200, json={"access_token": "at-Tl5Sv7Er9Fy1Ca3B", "expires_in": 3600})


def tls_source(server: ApiServer, tmp_path: Path, *, request: str = "", block: str = "") -> auth.Authenticator:
    url = server.url.replace("http://", "https://")
    text = test_oauth.SOURCE.format(
        url=url, auth=test_oauth.CLIENT_CREDENTIALS.format(url=url).replace("client_id: c1,", block + " client_id: c1,")
    )
    text = text.replace(
        f'request: {{url: "{url}/apps/{{appid}}"}}', f'request: {{url: "{url}/apps/{{appid}}"{request}}}'
    )
    source = config.loads(text, tmp_path / "t.yaml")
    settings = templating.Settings(dict(test_oauth.SECRETS), Redactor(test_oauth.SECRETS.values()))
    found = auth.for_source(source, settings)
    assert found is not None
    return found


def first_token(found: auth.Authenticator) -> str:
    async def main() -> str:
        try:
            return await found.current()
        finally:
            await found.aclose()

    return asyncio.run(main())


def test_the_token_endpoint_follows_request_verify_tls(
    tls_api: ApiServer,  # noqa: F811 (the fixture of tests.test_security)
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A self-signed token endpoint: refused by default; accepted (with a warning naming it) when the
    source turns verification off; refused again when auth.verify_tls turns it back on for the token
    endpoint alone."""
    tls_api.route("/oauth/token", TOKEN_ANSWER)
    with pytest.raises(RunFailed, match="CERTIFICATE_VERIFY_FAILED"):
        first_token(tls_source(tls_api, tmp_path))
    with caplog.at_level("WARNING", logger="syncrun"):
        assert first_token(tls_source(tls_api, tmp_path, request=", verify_tls: false")) == "at-Tl5Sv7Er9Fy1Ca3B"
    assert "TLS certificate verification is disabled for the token endpoint https://" in caplog.text
    with pytest.raises(RunFailed, match="CERTIFICATE_VERIFY_FAILED"):
        first_token(tls_source(tls_api, tmp_path, request=", verify_tls: false", block=" verify_tls: true,"))
    assert first_token(tls_source(tls_api, tmp_path, block=" verify_tls: false,")) == "at-Tl5Sv7Er9Fy1Ca3B"


@pytest.mark.parametrize("rate_limited", [False, True])
def test_token_requests_spend_the_rate_budget_only_when_the_block_says_so(
    rate_limited: bool, api: ApiServer, tmp_path: Path
) -> None:
    """With `rate_limited: true` each token request waits for the source's limiter and counts in it;
    by default the limiter never sees one."""
    api.route("/oauth/token", Reply(503), TOKEN_ANSWER)  # two token requests: a retry is a request too
    block = test_oauth.CLIENT_CREDENTIALS.replace(
        "client_id: c1,", f"rate_limited: {str(rate_limited).lower()}, client_id: c1,"
    )
    source = config.loads(test_oauth.SOURCE.format(url=api.url, auth=block.format(url=api.url)), tmp_path / "t.yaml")
    settings = templating.Settings(dict(test_oauth.SECRETS), Redactor(test_oauth.SECRETS.values()))
    limiter = Limiter(source.rate_limit)
    found = auth.for_source(source, settings, limiter=limiter)
    assert found is not None
    assert first_token(found) == "at-Tl5Sv7Er9Fy1Ca3B"
    assert len(api.requests) == 2
    assert limiter.requests == (2 if rate_limited else 0)


def test_a_run_names_the_unverified_token_endpoint_once(
    tls_api: ApiServer,  # noqa: F811 (the fixture of tests.test_security)
    db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`request.verify_tls: false` turns verification off for the token endpoint too (it receives the
    client secret): a `syncrun run` of two sources sharing the endpoint warns once, naming it."""
    url = tls_api.url.replace("http://", "https://")
    tls_api.route("/oauth/token", TOKEN_ANSWER)
    for appid in (1, 2):
        tls_api.route(f"/apps/{appid}", Reply(200, json={"appid": appid}))
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("CLIENT_SECRET", test_oauth.CLIENT_SECRET)
    project = "status: {table: sync_status, key: appid}\nentities: {key: appid, key_type: int}\n"
    (tmp_path / "syncrun.yaml").write_text(project)
    paths = []
    for name in ("t", "u"):
        text = test_oauth.SOURCE.replace("name: t", f"name: {name}").format(
            url=url, auth=test_oauth.CLIENT_CREDENTIALS.format(url=url)
        )
        text = text.replace('/apps/{appid}"}', '/apps/{appid}", verify_tls: false}')
        path = tmp_path / f"{name}.yaml"
        path.write_text(text.replace("writes: [{table: apps", f"writes: [{{table: {name}_apps"))
        paths.append(str(path))
    db.run("create table t_apps (appid int primary key); create table u_apps (appid int primary key)")
    assert cli.main(["migrate", *paths]) == 0
    assert cli.main(["run", *paths, "--ids", "1,2"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert err.count(f"TLS certificate verification is disabled for the token endpoint {url}/oauth/token") == 1, err


def test_a_rate_limited_token_request_s_deadline_starts_at_its_grant(api: ApiServer, tmp_path: Path) -> None:
    """`rate_limited: true`, auth.timeout 500 ms, and the budget taken for 2 s (a grant held open 1 s,
    then 1 per 1 s): the token request waits its turn and is then answered. Before, its deadline ran
    while it waited for the budget: `no answer within 0.5 s` without a byte sent, and at concurrency 32
    and 5/s every renewal failed the run so."""
    api.route("/oauth/token", TOKEN_ANSWER)
    block = test_oauth.CLIENT_CREDENTIALS.replace(
        "client_id: c1,", "rate_limited: true, timeout: 500ms, client_id: c1,"
    )
    text = test_oauth.SOURCE.format(url=api.url, auth=block.format(url=api.url)).replace("attempts: 3", "attempts: 1")
    source = config.loads(text, tmp_path / "t.yaml")
    settings = templating.Settings(dict(test_oauth.SECRETS), Redactor(test_oauth.SECRETS.values()))
    limiter = Limiter(spec.RateLimit(requests=1, per=1.0, bucket="held"))
    found = auth.for_source(source, settings, limiter=limiter)
    assert found is not None

    async def main() -> str:
        held = await limiter.reserve()
        asyncio.get_running_loop().call_later(1.0, limiter.release, held)
        try:
            return await found.current()
        finally:
            await found.aclose()

    assert asyncio.run(asyncio.wait_for(main(), 30)) == "at-Tl5Sv7Er9Fy1Ca3B"
    assert len(api.requests) == 1
    assert limiter.requests == 2
