"""Shared auth blocks (runner/authblocks.py): syncrun.yaml's `auth:` section, a source's `use:`, the
problems each can have (pinned in tests/data/shared_auth), and one token for the sources that share a
block in a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import cli, config, spec
from runner.errors import ConfigError
from tests.apiserver import ApiServer
from tests.pg import Database
from tests.test_auth import CLIENT_SECRET, OAuthServer, route_apps
from tests.test_engine import SOURCE, TABLES

CASES = Path(__file__).parent / "data" / "shared_auth"


def expected_errors(path: Path) -> list[str]:
    return [line.removeprefix("# error: ") for line in path.read_text().splitlines() if line.startswith("# error: ")]


@pytest.mark.parametrize("case", sorted(CASES.glob("use_*.yaml")), ids=lambda p: p.stem)
def test_a_wrong_use_is_refused_at_load(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each case reports exactly its `# error:` lines (the project is tests/data/shared_auth/syncrun.yaml)."""
    monkeypatch.chdir(CASES)
    with pytest.raises(ConfigError) as caught:
        config.load(Path(case.name))
    assert [str(p) for p in caught.value.problems] == [e for e in expected_errors(case)]


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        (
            "broken_schema",
            [
                "syncrun.yaml:4: auth.chained.type: is required but missing",
                "syncrun.yaml:4: auth.chained.use: cannot be used in syncrun.yaml: a shared block is written whole"
                " (type and its keys)",
                "syncrun.yaml:5: auth.Bad-Name: 'Bad-Name' is not a valid name (lower-case letters, digits and _,"
                " not starting with a digit, ≤ 63 long)",
                "syncrun.yaml:9: auth.Bad-Name.timeout: does not apply to type: basic (remove it)",
            ],
        ),
        (
            "broken_blocks",
            [
                "syncrun.yaml:6: auth.plain.token: must come from a secret, e.g. ${secret.API_TOKEN}: a credential"
                " written in the file is committed with it, and ${env.*} values are shown in logs",
                "syncrun.yaml:12: auth.public.client_auth: client_secret_basic needs a client_secret (a public"
                " client has none: remove it)",
                "syncrun.yaml:18: auth.instant.timeout: '0s' is out of range: must be more than 0",
                "syncrun.yaml:21: auth.nowhere.token_url: must start with http:// or https:// (or a setting such as"
                " ${env.TOKEN_URL})",
            ],
        ),
    ],
)
def test_a_broken_shared_block_is_reported_where_it_is_written(
    folder: str, expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source using a broken block fails to load (exit 2 from validate and run) with the problems at
    their syncrun.yaml lines, and no second, misleading one about its `use:`."""
    monkeypatch.chdir(CASES / folder)
    with pytest.raises(ConfigError) as caught:
        config.load(Path("source.yaml"))
    assert [str(p) for p in caught.value.problems] == expected
    assert cli.main(["validate", "source.yaml"]) == 2


def test_a_broken_auth_section_keeps_the_projects_entity_key(tmp_path: Path) -> None:
    """review16b N11: a schema problem in syncrun.yaml's `auth:` is the only problem reported; the
    file's `entities:` and `status:` defaults still apply, so a source keyed by ticket_id is not also
    told that {ticket_id} is not an entity column (have: appid). A broken `entities:` still falls back."""
    (tmp_path / "syncrun.yaml").write_text(
        "status: {table: hd_status, key: ticket_id}\nentities: {key: ticket_id, key_type: int}\n"
        "auth:\n  helpdesk:\n    type: bearer\n"
    )
    file = tmp_path / "tickets.yaml"
    file.write_text(
        "name: tickets\nentities: {limit: 5}\nrequest: {url: 'https://api.example.com/tickets/{ticket_id}'}\n"
        "rate_limit: {requests: 1, per: 1s}\n"
        "writes: [{table: tickets, key: [id], columns: {id: entity.ticket_id}}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        config.load(file)
    assert [p.message for p in caught.value.problems] == ["is required but missing"]
    assert [p.path for p in caught.value.problems] == ["auth.helpdesk.token"]
    (tmp_path / "syncrun.yaml").write_text("entities: {key: ticket_id, key_type: integer}\n")
    with pytest.raises(ConfigError) as caught:
        config.load(file)
    assert any("entities.key_type" in str(p) for p in caught.value.problems)


def test_use_without_a_project_file_says_so(tmp_path: Path) -> None:
    source = (CASES / "use_unknown.yaml").read_text().replace("helpdsk", "helpdesk")
    assert config.find_project(tmp_path / "s.yaml") is None
    with pytest.raises(ConfigError) as caught:
        config.loads(source, tmp_path / "s.yaml")
    assert [p.message for p in caught.value.problems] == [
        "'helpdesk' names a shared auth block, but no syncrun.yaml was found above this file"
    ]


def test_a_used_block_is_the_shared_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """`use:` gives the source the block as written in syncrun.yaml; messages then name it there."""
    monkeypatch.chdir(CASES)
    text = (CASES / "use_unknown.yaml").read_text().replace("helpdsk", "helpdesk")
    auth = config.loads(text, Path("s.yaml")).auth
    assert auth is not None
    assert auth.type is spec.AuthType.OAUTH2_CLIENT_CREDENTIALS
    assert auth.client_auth is spec.ClientAuth.BASIC
    assert auth.shared == "helpdesk"
    assert auth.field("client_secret") == "auth.helpdesk.client_secret in syncrun.yaml"


# --- one token for the sources of a run that share a block ------------------------------------------------
PROJECT = """\
status: {table: sync_status, key: appid}
entities: {key: appid, key_type: int}
auth:
  helpdesk:
    type: oauth2_client_credentials
    token_url: ${env.API_URL}/oauth/token
    client_id: syncrun-client
    client_secret: ${secret.CLIENT_SECRET}
    scopes: [read:apps]
"""


def test_sources_sharing_a_block_share_its_token(
    db: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sources run side by side (concurrency 4 each) on one shared block: one token request in all;
    when the token is spent mid-run, the 401s of both renew it once per expiry."""
    for name, value in {"DATABASE_URL": db.dsn, "API_URL": api.url, "CLIENT_SECRET": CLIENT_SECRET}.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "syncrun.yaml").write_text(PROJECT)
    paths = []
    for name, table in (("alpha", "apps"), ("beta", "apps_b")):
        text = SOURCE.format(name=name, path="apps", bucket=name, columns="name: record.name")
        text = text.replace('  headers:\n    Authorization: "Bearer ${secret.API_TOKEN:-tok-default}"\n', "")
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(text.replace("table: apps", f"table: {table}") + "auth: {use: helpdesk}\n")
    assert cli.main(["migrate", *map(str, paths)]) == 0
    db.run(TABLES + "create table apps_b (like apps);alter table apps_b add primary key (appid);")
    db.run("insert into sync_status (appid) select generate_series(1, 30)")
    server = OAuthServer(api, uses=25)
    route_apps(api, range(1, 31), server.app)
    assert cli.main(["run", *map(str, paths)]) == 0
    assert db.scalar("select count(*) from apps") == 30
    assert db.scalar("select count(*) from apps_b") == 30
    assert len(server.token_requests) == 3  # 60 requests, 25 per token
    assert server.rejected >= 2


def test_the_shared_example_in_docs_auth_validates(tmp_path: Path) -> None:
    """docs/auth.md's syncrun.yaml block and the source using it load as written."""
    import re

    text = (Path(__file__).resolve().parent.parent / "docs" / "auth.md").read_text()
    blocks = re.findall(r"```yaml\n(# (?:syncrun\.yaml|sources/).*?)```", text, re.S)
    assert len(blocks) == 2
    (tmp_path / "syncrun.yaml").write_text(blocks[0])
    source = (
        'name: t\nentities: {columns: {appid: int}}\nrequest: {url: "https://api.example.com/apps/{appid}"}\n'
        "rate_limit: {requests: 1, per: 1s}\nwrites: [{table: apps, key: [appid], columns: {appid: entity.appid}}]\n"
    )
    auth = config.loads(source + blocks[1], tmp_path / "t.yaml").auth
    assert auth is not None
    assert auth.shared == "helpdesk"
    assert auth.scopes == ("tickets:read",)


def test_a_credential_with_a_secret_default_is_refused(tmp_path: Path) -> None:
    """`${secret.NAME:-literal}` in a credential is the literal written in the file after all (review
    revG F5: `syncrun validate` accepted it, where docs/auth.md says a credential in the file is refused)."""
    (tmp_path / "syncrun.yaml").write_text("status: {table: sync_status, key: appid}\n")
    source = tmp_path / "s.yaml"
    source.write_text(
        SOURCE.format(name="alpha", path="apps", bucket="alpha", columns="name: record.name")
        + "auth: {type: bearer, token: '${secret.API_TOKEN:-committed-token-123}'}\n"
    )
    with pytest.raises(ConfigError) as caught:
        config.load(source)
    problems = [str(problem) for problem in caught.value.problems]
    assert any("a secret's default" in problem and "auth.token" in problem for problem in problems), problems
