"""The `auth:` block end to end: `syncrun run` against loopback servers that implement each kind
strictly (wrong or missing credentials: 401), on a real PostgreSQL.

The OAuth2 server issues tokens that stop working after a few uses or a short time, counts its token
requests and rejects a spent token with 401 `{"error": "invalid_token"}`, as providers do.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import pytest

from runner import auth, cli, client, config, fetch, spec, templating
from runner.aiotransport import BOUNDED, AiohttpTransport
from runner.auth import Authenticator, for_source
from runner.ratelimit import Limiter
from runner.redaction import Redactor
from tests.apiserver import ApiServer, Recorded, Reply
from tests.pg import Database
from tests.test_engine import SOURCE, TABLES
from tests.test_security import planted_leaks

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bearer-Zq8mW2xK7pL4vN9c"
KEY = "key-Hs3Jd8Fk2Lq9Wm4T"
PASSWORD = "pw-Rt6Yu1Io3Pa5Sd7F"
CLIENT_SECRET = "cs-Gh2Jk4Lz6Xc8Vb0N"
UNAUTHORIZED = Reply(401, json={"error": "invalid_token"}, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def source_with(tmp: Path, auth: str, *, concurrency: int = 4) -> Path:
    """test_engine's `alpha` source, its Authorization header replaced by `auth`."""
    columns = "name: record.name\n      note: record.note"
    text = SOURCE.format(name="alpha", path="apps", bucket="alpha", columns=columns)
    text = text.replace('  headers:\n    Authorization: "Bearer ${secret.API_TOKEN:-tok-default}"\n', "")
    text = text.replace("concurrency: 4", f"concurrency: {concurrency}")
    project = "status: {table: sync_status, key: appid}\nentities: {key: appid, key_type: int}\n"
    (tmp / "syncrun.yaml").write_text(project)
    file = tmp / "alpha.yaml"
    file.write_text(text + f"auth: {auth}\n")
    return file


def seed(db: Database, source: Path, appids: range) -> None:
    assert cli.main(["migrate", str(source)]) == 0
    db.run(TABLES)
    db.run("alter table apps add column note text")
    db.run(f"insert into sync_status (appid) select generate_series({appids.start}, {appids.stop - 1})")


@pytest.fixture
def env(db: Database, api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> Database:
    for name, value in {
        "DATABASE_URL": db.dsn,
        "API_URL": api.url,
        "API_TOKEN": TOKEN,
        "API_KEY": KEY,
        "API_PASSWORD": PASSWORD,
        "CLIENT_SECRET": CLIENT_SECRET,
    }.items():
        monkeypatch.setenv(name, value)
    return db


def guarded(check: object) -> object:
    """An app route that answers only requests `check` accepts, and 401 to the rest."""

    def reply(request: Recorded) -> Reply:
        if not check(request):  # type: ignore[operator]
            return UNAUTHORIZED
        appid = int(request.path.rsplit("/", 1)[1])
        return Reply(200, json={"name": f"App {appid}", "note": "ok"})

    return reply


def route_apps(api: ApiServer, appids: range, handler: object) -> None:
    for appid in appids:
        api.route(f"/apps/{appid}", handler)  # type: ignore[arg-type]


STATIC = {
    "bearer": (
        "{type: bearer, token: '${secret.API_TOKEN}'}",
        lambda r: r.headers.get("authorization") == f"Bearer {TOKEN}",
    ),
    "api_key header": (
        "{type: api_key, name: X-Api-Key, value: '${secret.API_KEY}'}",
        lambda r: r.headers.get("x-api-key") == KEY and "authorization" not in r.headers,
    ),
    "api_key query": (
        "{type: api_key, name: api_key, in: query, value: '${secret.API_KEY}'}",
        lambda r: r.query.get("api_key") == KEY,
    ),
    "basic": (
        "{type: basic, username: syncer, password: '${secret.API_PASSWORD}'}",
        lambda r: r.headers.get("authorization") == "Basic " + base64.b64encode(f"syncer:{PASSWORD}".encode()).decode(),
    ),
}


@pytest.mark.parametrize("kind", list(STATIC))
def test_static_credentials_reach_every_request(kind: str, env: Database, api: ApiServer, tmp_path: Path) -> None:
    """Each static kind puts its credential on every request; the strict server answers them all."""
    auth, check = STATIC[kind]
    source = source_with(tmp_path, auth)
    seed(env, source, range(1, 9))
    route_apps(api, range(1, 9), guarded(check))
    assert cli.main(["run", str(source)]) == 0
    assert env.scalar("select count(*) from apps") == 8
    assert len(api.requests) == 8


def test_an_api_key_in_the_query_leaves_the_rest_of_the_query_as_written(
    env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """The key is added without re-encoding the URL's own query: httpx's copy_set_param sent
    `?ids=a,b&&c=*` as `ids=a%2Cb&c=%2A` (fix9d's note on review revM M2: a query signed over its
    text, or an API reading `,` literally, saw another query)."""
    source = source_with(tmp_path, STATIC["api_key query"][0])
    source.write_text(source.read_text().replace('/apps/{appid}"', '/apps/{appid}?ids=a,b&&c=*"'))
    seed(env, source, range(1, 3))
    route_apps(api, range(1, 3), guarded(STATIC["api_key query"][1]))
    assert cli.main(["run", str(source)]) == 0
    assert sorted(r.target for r in api.requests) == [f"/apps/{n}?ids=a,b&&c=*&api_key={KEY}" for n in (1, 2)]


@pytest.mark.parametrize("kind", list(STATIC))
def test_static_credentials_an_api_echoes_are_stored_masked(
    kind: str, env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """An API that echoes the request's credentials into the body: the stored rows hold no 8-character
    piece of the credential as it was sent, its base64 form for basic included (review revE F1: the
    `Authorization: Basic …` header was stored as it came, and it decodes to the password)."""
    auth, _ = STATIC[kind]
    source = source_with(tmp_path, auth)
    seed(env, source, range(1, 5))

    def echo(request: Recorded) -> Reply:
        sent = [request.headers.get("authorization", ""), request.headers.get("x-api-key", ""), str(request.query)]
        return Reply(200, json={"name": "App", "note": " ".join(sent)})

    route_apps(api, range(1, 5), echo)
    assert cli.main(["run", str(source)]) == 0
    notes = [note for (note,) in env.rows("select note from apps")]
    assert len(notes) == 4
    assert all("***" in note for note in notes)
    basic = base64.b64encode(f"syncer:{PASSWORD}".encode()).decode()
    leaked = planted_leaks(notes, [TOKEN, KEY, PASSWORD, basic])
    assert not leaked, "\n".join(leaked)


# --- OAuth2 ------------------------------------------------------------------------------------------------
class OAuthServer:
    """A strict OAuth2 provider and API on one ApiServer: POST /oauth/token (client credentials or
    refresh token) and /apps/{id}, which accepts a token for `uses` requests or `lifetime` seconds."""

    def __init__(self, api: ApiServer, *, expires_in: float = 3600, uses: int = 10**9, lifetime: float = 3600) -> None:
        self.api, self.expires_in, self.uses, self.lifetime = api, expires_in, uses, lifetime
        self.lock = threading.Lock()
        self.issued: dict[str, list[float]] = {}  # token -> [issued at, uses]
        self.token_requests: list[dict[str, str]] = []
        self.rejected = 0
        self.refresh_token = "rt-Qw3Er5Ty7Ui9Op1A"
        self.rotate = False
        api.route("/oauth/token", self.token)

    def token(self, request: Recorded) -> Reply:
        form = dict(parse_qsl(request.body.decode()))
        with self.lock:
            self.token_requests.append(form)
        grant = form.get("grant_type")
        if request.method != "POST" or form.get("client_id") != "syncrun-client":
            return Reply(401, json={"error": "invalid_client"})
        if grant == "client_credentials" and form.get("client_secret") != CLIENT_SECRET:
            return Reply(401, json={"error": "invalid_client", "error_description": "bad client secret"})
        if grant == "refresh_token" and form.get("refresh_token") != self.refresh_token:
            return Reply(400, json={"error": "invalid_grant"})
        if grant not in ("client_credentials", "refresh_token") or form.get("scope") != "read:apps":
            return Reply(400, json={"error": "invalid_scope" if grant else "unsupported_grant_type"})
        token = "at-" + secrets.token_hex(16)
        with self.lock:
            self.issued[token] = [time.monotonic(), 0]
        body: dict[str, object] = {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
        if self.rotate:
            body["refresh_token"] = "rt-rotated-" + secrets.token_hex(8)
        return Reply(200, json=body)

    def app(self, request: Recorded) -> Reply:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        with self.lock:
            entry = self.issued.get(token)
            fresh = entry is not None and entry[1] < self.uses and time.monotonic() - entry[0] < self.lifetime
            if not fresh:
                self.rejected += 1
                return UNAUTHORIZED
            assert entry is not None
            entry[1] += 1
        appid = int(request.path.rsplit("/", 1)[1])
        return Reply(200, json={"name": f"App {appid}", "note": f"seen with {token}"}, delay=0.02)


CLIENT_CREDENTIALS = (
    "{type: oauth2_client_credentials, token_url: '${env.API_URL}/oauth/token', client_id: syncrun-client,"
    " client_secret: '${secret.CLIENT_SECRET}', scopes: ['read:apps']}"
)


def test_a_request_that_waited_for_the_rate_limit_carries_a_token_fresh_at_the_send(
    env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """Tokens of 2 s (renewed 0.2 s before) at 4 requests/s with 4 in flight: each request waits up to
    1 s for its grant. The token is put on after the grant, so no request carries a token that expired
    while it waited: no 401 (picked before the wait, about one request in three was refused and sent
    again), and each request is one rate-limited attempt."""
    server = OAuthServer(api, expires_in=2, lifetime=2)
    source = source_with(tmp_path, CLIENT_CREDENTIALS, concurrency=4)
    source.write_text(source.read_text().replace("requests: 200, per: 1s, burst: 20", "requests: 4, per: 1s, burst: 1"))
    seed(env, source, range(1, 21))
    route_apps(api, range(1, 21), server.app)
    assert cli.main(["run", str(source)]) == 0
    assert env.scalar("select count(*) from apps") == 20
    assert server.rejected == 0
    assert len([r for r in api.requests if r.path.startswith("/apps/")]) == 20
    assert len(server.token_requests) >= 3  # tokens really ran out mid-run


def test_refresh_token_grant(env: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """oauth2_refresh_token trades the refresh token (a secret) for access tokens."""
    server = OAuthServer(api)
    monkeypatch.setenv("REFRESH_TOKEN", server.refresh_token)
    auth = (
        "{type: oauth2_refresh_token, token_url: '${env.API_URL}/oauth/token', client_id: syncrun-client,"
        " refresh_token: '${secret.REFRESH_TOKEN}', scopes: ['read:apps']}"
    )
    source = source_with(tmp_path, auth)
    seed(env, source, range(1, 6))
    route_apps(api, range(1, 6), server.app)
    assert cli.main(["run", str(source)]) == 0
    assert env.scalar("select count(*) from apps") == 5
    assert [f["grant_type"] for f in server.token_requests] == ["refresh_token"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("down", "could not get an access token from http://127.0.0.1:9/oauth/token (ConnectError: "),
        (
            "bad secret",
            "answered HTTP 401 (invalid_client: bad client secret) — the provider does not accept the client:"
            " check auth.client_id and",
        ),
    ],
)
def test_a_token_endpoint_failure_fails_the_run_naming_it(
    case: str, expected: str, env: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """No token, no run: exit 1 with the token URL and what to check; no API request is sent."""
    server = OAuthServer(api)
    auth = CLIENT_CREDENTIALS
    if case == "down":
        auth = auth.replace("${env.API_URL}", "http://127.0.0.1:9")
    else:
        monkeypatch.setenv("CLIENT_SECRET", "wrong-client-secret-123")
    source = source_with(tmp_path, auth, concurrency=2)
    seed(env, source, range(1, 4))
    route_apps(api, range(1, 4), server.app)
    assert cli.main(["run", str(source)]) == 1
    err = capsys.readouterr().err
    assert expected in err
    assert "wrong-client-secret-123" not in err
    assert not [r for r in api.requests if r.path.startswith("/apps/")]
    assert env.scalar("select status from sync_jobs") == "failed"


def test_run_time_tokens_never_reach_any_output(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """The API echoes the access token into rows and error messages; syncrun (text and JSON logs, a
    run that fails on a spent token) must leave no 8-character piece of any issued token, the refresh
    token or the client secret in stdout, stderr or any text column of any table."""
    server = OAuthServer(api, uses=4)
    source = source_with(tmp_path, CLIENT_CREDENTIALS)
    source.write_text(
        source.read_text()
        + "outcomes:\n  - {when: 'status == `400`', outcome: error, message: 'API said {body.error}'}\n"
    )
    seed(env, source, range(1, 13))

    def echo(request: Recorded) -> Reply:
        reply = server.app(request)
        said = request.headers.get("authorization", "")
        if reply.status == 200 and request.path.endswith("/3"):
            return Reply(400, json={"error": f"token {said} is not allowed here"})
        return reply

    route_apps(api, range(1, 13), echo)
    outputs: list[str] = []
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    for log_format in ("text", "json"):
        env.run("update sync_status set last_alpha_sync = null")
        result = subprocess.run(
            [sys.executable, "-m", "runner", "run", str(source), "--log-format", log_format, "--progress-every", "1"],
            cwd=tmp_path,
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        outputs += [result.stdout, result.stderr]
    server.uses = 0  # every token now refused, even a new one: the run fails quoting the 401
    env.run("update sync_status set last_alpha_sync = null")
    failed = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(source)],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1
    assert "even with a newly fetched token (invalid_token)" in failed.stderr
    outputs += [failed.stdout, failed.stderr]
    assert len(server.issued) >= 4
    outputs += [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]  # .syncrun/ and all
    columns = env.rows(
        "select table_name, column_name from information_schema.columns where table_schema = current_schema()"
    )
    stored = [
        value
        for table, column in columns
        for (value,) in env.rows(f'select "{column}"::text from "{table}" where "{column}" is not null')
    ]
    assert any("seen with ***" in value for value in stored)  # the echo was stored, masked
    leaked = planted_leaks(outputs + stored, [*server.issued, CLIENT_SECRET])
    assert not leaked, "\n".join(leaked)


# --- pages: the source's own origin gets the credentials, an allowed other origin never does ---------------
LISTING = """\
name: t
entities: {{type: list}}
request: {{url: "{url}/x", headers: {{Accept: application/json}}}}
auth: {auth}
pagination: {{type: link, allow_origins: ['{other}']}}
rate_limit: {{requests: 1000, per: 1s, burst: 50}}
retry: {{attempts: 2, initial: 10ms, max_delay: 10ms}}
records: body
writes: [{{table: items, key: [id], columns: {{id: record.id}}}}]
status: false
"""
SECRETS = {
    ("secret", "API_TOKEN"): TOKEN,
    ("secret", "API_KEY"): KEY,
    ("secret", "API_PASSWORD"): PASSWORD,
    ("secret", "CLIENT_SECRET"): CLIENT_SECRET,
}


@pytest.mark.parametrize("kind", [*STATIC, "oauth2_client_credentials"])
def test_pages_on_the_own_origin_carry_the_credentials_other_origins_never(
    kind: str, api: ApiServer, other: ApiServer
) -> None:
    """Page 2 (same origin) is authenticated like page 1; page 3, on an allowed other origin, gets no
    Authorization, no key header and no key parameter."""
    server = OAuthServer(api)
    if kind in STATIC:
        auth, check = STATIC[kind]
    else:
        auth, check = (
            CLIENT_CREDENTIALS.replace("${env.API_URL}", api.url),
            lambda r: r.headers.get("authorization", "").removeprefix("Bearer ") in server.issued,
        )
    api.route("/x", lambda r: linked(api.url + "/x2", 1) if check(r) else UNAUTHORIZED)
    api.route("/x2", lambda r: linked(other.url + "/y", 2) if check(r) else UNAUTHORIZED)
    other.route("/y", Reply(200, json=[{"id": 3}]))
    source = config.loads(LISTING.format(url=api.url, other=other.url, auth=auth), Path("t.yaml"))
    settings = templating.Settings(dict(SECRETS), Redactor(SECRETS.values()))
    limiter = Limiter(source.rate_limit)

    async def main() -> list[fetch.Page]:
        authenticator = for_source(source, settings)
        async with client.build(source.request, limiter, max_connections=2, authenticator=authenticator) as http:
            return [page async for page in fetch.pages(http, source, {}, settings, limiter=limiter)]

    pages = asyncio.run(main())
    assert len(pages) == 3
    assert [r.path for r in api.requests if r.path != "/oauth/token"] == ["/x", "/x2"]
    (foreign,) = other.requests
    assert not {"authorization", "x-api-key"} & set(foreign.headers)
    assert "api_key" not in foreign.query
    assert foreign.headers["accept"] == "application/json"
    assert len(server.token_requests) == (kind not in STATIC)


def linked(target: str, item: int) -> Reply:
    return Reply(200, json=[{"id": item}], headers={"Link": f'<{target}>; rel="next"'})


def test_every_example_in_docs_auth_validates(tmp_path: Path) -> None:
    """Each `auth:` block in docs/auth.md, put in a minimal source, is valid as written."""
    import re

    text = (ROOT / "docs" / "auth.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith("auth:")]
    assert len(blocks) == 5
    base = (
        'name: t\nentities: {columns: {appid: int}}\nrequest: {url: "https://api.example.com/apps/{appid}"}\n'
        "rate_limit: {requests: 1, per: 1s}\nwrites: [{table: apps, key: [appid], columns: {appid: entity.appid}}]\n"
    )
    kinds = set()
    for block in blocks:
        source = config.loads(base + block, tmp_path / "t.yaml")
        assert source.auth is not None
        kinds.add(source.auth.type)
    assert len(kinds) == 5


def test_a_bearer_secret_that_cannot_be_a_header_exits_2_before_any_request(
    env: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token holding a non-ASCII character is caught at run start, like one in request.headers."""
    monkeypatch.setenv("API_TOKEN", "tok\u00e9n-1234567890")
    source = source_with(tmp_path, STATIC["bearer"][0])
    seed(env, source, range(1, 3))
    assert cli.main(["run", str(source)]) == 2
    assert "secret API_TOKEN is sent in header Authorization of source 'alpha'" in capsys.readouterr().err
    assert api.requests == []


def test_a_transient_token_endpoint_answer_is_retried(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A 503 from the token endpoint is retried like an API answer (source.retry), then the run goes on."""
    server = OAuthServer(api)
    calls: list[str] = []

    def flaky(request: Recorded) -> Reply:
        calls.append(request.method)
        return Reply(503, body=b"maintenance") if len(calls) == 1 else server.token(request)

    api.route("/oauth/token", flaky)
    source = source_with(tmp_path, CLIENT_CREDENTIALS)
    seed(env, source, range(1, 4))
    route_apps(api, range(1, 4), server.app)
    assert cli.main(["run", str(source)]) == 0
    assert calls == ["POST", "POST"]
    assert env.scalar("select count(*) from apps") == 3


# --- run-time tokens under GitHub Actions, in cassettes, and a replay that needs no token endpoint ------------
def test_run_time_tokens_are_masked_recorded_masked_and_not_needed_to_replay(
    env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """An API that echoes the access token into a row, an error and an ETag, with tokens that expire
    mid-run. Under GitHub Actions every issued token is announced with ::add-mask::; with --record the
    cassette holds no token (and no token exchange); --replay then completes with the token endpoint
    and the API gone, renewing stand-in tokens at the recorded 401s. No 8-character piece of any
    issued token is in any output (::add-mask:: lines aside), file, or text column of any table."""
    server = OAuthServer(api, uses=3)
    source = source_with(tmp_path, CLIENT_CREDENTIALS, concurrency=2)
    source.write_text(
        source.read_text()
        + "outcomes:\n  - {when: 'status == `400`', outcome: error, message: 'API said {body.error}'}\n"
    )
    seed(env, source, range(1, 9))

    def echo(request: Recorded) -> Reply:
        reply = server.app(request)
        said = request.headers.get("authorization", "")
        if reply.status == 200 and request.path.endswith("/3"):
            return Reply(400, json={"error": f"token {said} is not allowed here"})
        if reply.status == 200:
            return Reply(200, json=reply.json, headers={"ETag": f'"{said.removeprefix("Bearer ")}"'})
        return reply

    route_apps(api, range(1, 9), echo)
    summary = tmp_path / "summary.md"
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}

    def syncrun(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runner", "run", str(source), *args],
            cwd=tmp_path,
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
        )

    recorded = syncrun("--record", str(tmp_path / "rec"))
    assert recorded.returncode == 0, recorded.stderr
    assert len(server.issued) >= 3  # tokens expired mid-run
    masks = {line.removeprefix("::add-mask::") for line in recorded.stdout.splitlines() if "::add-mask::" in line}
    assert set(server.issued) <= masks  # every run-time token announced to the runner
    cassette = (tmp_path / "rec" / "alpha" / "cassette.yaml").read_text()
    assert "/oauth/token" not in cassette  # the token exchange is never recorded
    assert "seen with ***" in cassette
    assert env.scalar("select count(*) from syncrun_validators") == 0  # an ETag holding a token is not kept

    api.stop()  # no API, no token endpoint: the replay needs neither
    env.run("update sync_status set last_alpha_sync = null; delete from apps")
    replayed = syncrun("--replay", str(tmp_path / "rec"))
    assert replayed.returncode == 0, replayed.stderr
    assert env.scalar("select count(*) from apps") == 7  # entity 3 is an error, as recorded
    assert env.scalar("select status from sync_jobs order by started_at desc limit 1") == "completed"

    outputs = [
        "\n".join(line for line in out.splitlines() if "::add-mask::" not in line)
        for result in (recorded, replayed)
        for out in (result.stdout, result.stderr)
    ]
    outputs += [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    columns = env.rows(
        "select table_name, column_name from information_schema.columns where table_schema = current_schema()"
    )
    stored = [
        value
        for table, column in columns
        for (value,) in env.rows(f'select "{column}"::text from "{table}" where "{column}" is not null')
    ]
    leaked = planted_leaks(outputs + stored, [*server.issued, CLIENT_SECRET])
    assert not leaked, "\n".join(leaked)


GRAPH = """\
name: graph
entities: {{type: list}}
request: {{url: "${{env.API_URL}}/g"}}
auth: {auth}
pagination: {{type: next_url, next: body.next}}
rate_limit: {{requests: 1000, per: 1s, burst: 50}}
retry: {{attempts: 1}}
records: body.items
writes: [{{table: items, key: [id], columns: {{id: record.id, note: record.note}}}}]
status: false
"""


def test_an_old_token_echoed_many_renewals_later_never_reaches_any_output(
    env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """A Graph-API-style listing: each next link carries `access_token=` of the token the listing
    started with, and each page's records echo it, while the token is renewed at every page (a token
    good for one request). Page 14 fails, its error body quoting that first token: by then 13 newer
    tokens replaced it (more than any "recent" window), yet no 8-character piece of any issued token
    is in stdout, stderr, the job's error message, the checkpoint or a row."""
    server = OAuthServer(api, uses=1)
    first: list[str] = []

    def graph(request: Recorded) -> Reply:
        reply = server.app(dataclasses.replace(request, path="/apps/0"))
        if reply.status != 200:
            return reply
        token = request.headers["authorization"].removeprefix("Bearer ")
        first.append(first[0] if first else token)
        page = int(request.query.get("page", "1"))
        if page == 14:
            return Reply(503, json={"error": f"page link for {first[0]} is not ready"})
        link = f"{api.url}/g?page={page + 1}&access_token={first[0]}"
        return Reply(200, json={"items": [{"id": page, "note": f"listed for {first[0]}"}], "next": link})

    api.route("/g", graph)
    source = tmp_path / "graph.yaml"
    source.write_text(GRAPH.format(auth=CLIENT_CREDENTIALS))
    assert cli.main(["migrate", str(source)]) == 0
    env.run("create table items (id int primary key, note text)")
    result = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(source)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert len(server.issued) >= 14  # the first token was replaced 13 times before it came back
    assert env.scalar("select count(*) from items") == 13
    assert "access_token=***" in env.scalar("select error_message from sync_jobs")
    assert "holds a secret: not checkpointed" in result.stderr
    columns = env.rows(
        "select table_name, column_name from information_schema.columns where table_schema = current_schema()"
    )
    stored = [
        value
        for table, column in columns
        for (value,) in env.rows(f'select "{column}"::text from "{table}" where "{column}" is not null')
    ]
    assert any("listed for ***" in value for value in stored)
    files = [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    leaked = planted_leaks([result.stdout, result.stderr, *stored, *files], [*server.issued, CLIENT_SECRET])
    assert not leaked, "\n".join(leaked)


def test_an_authenticated_attempt_is_bounded_as_a_whole(tmp_path: Path) -> None:
    """Review revB F3: AuthTransport sends a copy of the request, made before the grant marked the
    attempt as bounded by its total deadline; the copy reached aiohttp without the mark, so every request
    of a source with `auth:` still set aiohttp's per-read timers. The mark is on the request sent."""
    seen: list[object] = []

    class Recording(AiohttpTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request.extensions.get(BOUNDED))
            return await super().handle_async_request(request)

    async def main(origin: str) -> None:
        request = spec.Request(url=spec.Template(origin, (spec.Literal(origin),)))
        bearer = spec.Auth(type=spec.AuthType.BEARER, token=spec.Template(TOKEN, (spec.Literal(TOKEN),)))
        settings = templating.Settings({}, Redactor())
        authenticator = Authenticator(bearer, auth.origin(httpx.URL(origin)), settings, timeout=5)
        limiter = Limiter(spec.RateLimit(requests=100, per=1.0, bucket="bounded"))
        limits = httpx.Limits(max_connections=1)
        built = client.build(
            request, limiter, transport=Recording(limits=limits), max_connections=1, authenticator=authenticator
        )
        try:
            reply = await client.send(
                built, built.build_request("GET", origin + "/a"), spec.Retry(attempts=1),
                max_body=1000, timeout=5, limiter=limiter, redact=str,
            )  # fmt: skip
        finally:
            await built.aclose()
        assert reply.status == 200

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert f"authorization: bearer {TOKEN}".lower().encode() in head.lower()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async def run() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        try:
            await main(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        finally:
            server.close()

    asyncio.run(run())
    assert seen == [True]
