"""The API's refusal of the credentials in words (runner/refusals.py): a 401 the credentials could not get
past fails the run with the API's reason and the `auth:` keys to check; a 403 whose challenge says
`insufficient_scope` fails it naming the scope; any other 403 stays the entity's outcome. No message
quotes a credential. Against loopback servers of the tests' own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from runner import auth, cli
from runner.errors import RunFailed
from tests import test_auth
from tests.apiserver import ApiServer, Reply
from tests.pg import Database
from tests.test_auth import env  # noqa: F401 (a fixture)
from tests.test_oauth import CLIENT_CREDENTIALS, authenticator


def send(api: ApiServer, tmp_path: Path, block: str, path: str) -> int:
    """One GET of `path` through the source's AuthTransport; its status."""
    found = authenticator(api, tmp_path, block)

    async def main() -> int:
        transport = auth.AuthTransport(httpx.AsyncHTTPTransport(), found)
        async with httpx.AsyncClient(transport=transport) as http:
            return (await http.get(f"{api.url}{path}")).status_code

    return asyncio.run(main())


def test_a_403_for_a_missing_scope_fails_the_run_naming_the_scope(api: ApiServer, tmp_path: Path) -> None:
    """The challenge names the scope the API wants: the run stops (every request carries the same token),
    saying which scope to add to auth.scopes; the token is not quoted."""
    api.route("/oauth/token", Reply(200, json={"access_token": "at-Lk9Jh7Gf5Ds3Aq1W", "expires_in": 3600}))
    challenge = 'Bearer realm="api", error="insufficient_scope", scope="tickets:write admin", error_description="x"'
    api.route("/apps/1", Reply(403, json={"error": "insufficient_scope"}, headers={"WWW-Authenticate": challenge}))
    block = CLIENT_CREDENTIALS.replace("client_id: c1,", "client_id: c1, scopes: ['tickets:read'],")
    with pytest.raises(RunFailed) as caught:
        send(api, tmp_path, block, "/apps/1")
    message = str(caught.value)
    assert message == (
        f"HTTP 403 (insufficient_scope) from GET {api.url}/apps/1 — the access token lacks a scope this request"
        " needs; the API asks for scope 'tickets:write admin'; add it to auth.scopes (sent: tickets:read)"
    )


def test_another_403_stays_the_entity_s_outcome(api: ApiServer, tmp_path: Path) -> None:
    """A 403 without that challenge (this entity is forbidden) is answered to the caller as it is."""
    api.route("/apps/1", Reply(403, json={"error": "forbidden"}, headers={"WWW-Authenticate": 'Bearer realm="a"'}))
    block = "{{type: bearer, token: '${{secret.CLIENT_SECRET}}'}}"
    assert send(api, tmp_path, block, "/apps/1") == 403
    api.route("/apps/2", Reply(403, headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'}))
    with pytest.raises(RunFailed, match="the bearer credentials lack a permission this request needs; check what"):
        send(api, tmp_path, block, "/apps/2")


@pytest.mark.parametrize("kind", list(test_auth.STATIC))
def test_wrong_static_credentials_fail_the_run_saying_what_to_check(
    kind: str,
    env: Database,  # noqa: F811 (the fixture of tests.test_auth)
    api: ApiServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    """A credential the API refuses stops the run (exit 1) with the API's reason and the key to check."""
    block, check = test_auth.STATIC[kind]
    for number, name in enumerate(("API_TOKEN", "API_KEY", "API_PASSWORD")):
        monkeypatch.setenv(name, f"wrong-{number}-Xy7Pq2Lm9Z")
    source = test_auth.source_with(tmp_path, block, concurrency=1)
    test_auth.seed(env, source, range(1, 4))
    test_auth.route_apps(api, range(1, 4), test_auth.guarded(check))
    assert cli.main(["run", str(source)]) == 1
    err = capsys.readouterr().err
    field = {"bearer": "auth.token", "basic": "auth.username and auth.password"}.get(kind, "auth.value")
    assert "HTTP 401 from GET" in err
    assert f"(invalid_token); check {field}" in err
    assert "wrong-" not in err
    assert env.scalar("select status from sync_jobs") == "failed"
