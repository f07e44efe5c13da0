"""conditional requests: a per-entity reply's ETag / Last-Modified is kept (syncrun_validators, in the
entity's transaction), sent back as If-None-Match / If-Modified-Since, and a 304 is `unchanged`:
status stamped, rows untouched (xmin), counted in items_unchanged and the summary. Real HTTP on
loopback (a server that honours validators strictly), real PostgreSQL."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from pathlib import Path

import pytest

from runner import cli, conditional, config, templating
from runner.client import Reply as ClientReply
from runner.errors import ConfigError
from tests.apiserver import ApiServer, Recorded, Reply
from tests.pg import Database
from tests.test_engine import env

__all__ = ["env"]

SOURCE = """\
name: stations
entities:
  columns: {id: int}
request:
  url: "${env.API_URL}/stations/{id}"
EXTRA
rate_limit: {requests: 500, per: 1s}
retry: {attempts: 2, initial: 10ms, max_delay: 50ms}
write_batch: 10
writes:
  - table: stations
    key: [id]
    columns: {id: entity.id, name: body.name, readings: body.readings}
"""


def source_file(tmp: Path, extra: str = "") -> Path:
    (tmp / "syncrun.yaml").write_text("status: {table: station_status, key: id}\nentities: {key: id, key_type: int}\n")
    file = tmp / "stations.yaml"
    file.write_text(SOURCE.replace("EXTRA\n", extra))
    return file


@dataclass
class Documents:
    """A strict validator-honouring API: each document has a version; ETag is "v<version>-<id>",
    Last-Modified the version's date. If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2)."""

    versions: dict[int, int]
    etag: bool = True
    last_modified: bool = True
    hostile: dict[int, dict[str, str]] = field(default_factory=dict)  # id -> headers sent instead
    sent: int = 0  # body bytes
    not_modified: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def body(self, ident: int) -> dict[str, object]:
        version = self.versions[ident]
        return {"name": f"station {ident} v{version}", "readings": list(range(version, version + 40))}

    def answer(self, request: Recorded) -> Reply:
        ident = int(request.path.rsplit("/", 1)[1])
        version = self.versions[ident]
        tag = f'"v{version}-{ident}"'
        modified = formatdate(1_700_000_000 + version * 86400, usegmt=True)
        headers = {}
        if self.etag:
            headers["ETag"] = tag
        if self.last_modified:
            headers["Last-Modified"] = modified
        headers.update(self.hostile.get(ident, {}))
        match = request.headers.get("if-none-match")
        since = request.headers.get("if-modified-since")
        fresh = match == tag if match is not None else since is not None and since == modified
        with self.lock:
            if fresh:
                self.not_modified += 1
                return Reply(304, headers=headers)
            payload = json.dumps(self.body(ident)).encode()
            self.sent += len(payload)
        return Reply(200, body=payload, headers={**headers, "Content-Type": "application/json"})


def serve(api: ApiServer, docs: Documents) -> None:
    for ident in docs.versions:
        api.route(f"/stations/{ident}", docs.answer)


def seeded(db: Database, tmp: Path, api: ApiServer, docs: Documents, extra: str = "") -> Path:
    file = source_file(tmp, extra)
    assert cli.main(["migrate", str(file)]) == 0
    db.run("create table stations (id int primary key, name text, readings jsonb);")
    db.run(f"insert into station_status (id) select generate_series(1, {len(docs.versions)});")
    serve(api, docs)
    return file


def run(file: Path, ids: int) -> int:
    return cli.main(["run", str(file), "--ids", ",".join(str(i) for i in range(1, ids + 1))])


def snapshot(db: Database) -> dict[int, str]:
    return dict(db.rows("select id, xmin::text from stations order by id"))


def test_second_pass_gets_304_for_unchanged_entities(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = Documents({1: 1, 2: 1, 3: 1, 4: 1})
    file = seeded(env, tmp_path, api, docs)
    assert run(file, 4) == 0
    assert env.rows("select entity_key, etag, last_modified is not null from syncrun_validators order by 1") == [
        (str(i), f'"v1-{i}"', True) for i in range(1, 5)
    ]
    assert not any("if-none-match" in r.headers for r in api.requests)  # nothing to ask the first time
    rows, stamps = snapshot(env), dict(env.rows("select id, last_stations_sync from station_status"))
    docs.versions[3] = 2  # one entity changed on the server
    before = len(api.requests)
    capsys.readouterr()
    assert run(file, 4) == 0
    second = api.requests[before:]
    assert sorted(r.headers.get("if-none-match", "") for r in second) == [f'"v1-{i}"' for i in range(1, 5)]
    assert all("if-modified-since" in r.headers for r in second)
    assert docs.not_modified == 3
    after = snapshot(env)
    assert {i: after[i] == rows[i] for i in rows} == {1: True, 2: True, 3: False, 4: True}  # xmin: not rewritten
    assert env.scalar("select name from stations where id = 3") == "station 3 v2"
    newer = dict(env.rows("select id, last_stations_sync from station_status"))
    assert all(newer[i] > stamps[i] for i in stamps)  # every entity was checked: all stamped
    assert env.scalar("select etag from syncrun_validators where entity_key = '3'") == '"v2-3"'
    assert env.rows(
        "select items_processed, items_succeeded, items_skipped, items_unchanged, items_failed from sync_jobs"
        " order by started_at desc limit 1"
    ) == [(4, 1, 0, 3, 0)]
    assert "unchanged 3 (HTTP 304)" in capsys.readouterr().err
    assert env.scalar("select count(*) from syncrun_state where last_success_at is null") == 0


def test_last_modified_alone_is_used(env: Database, api: ApiServer, tmp_path: Path) -> None:
    docs = Documents({1: 1, 2: 1}, etag=False)
    file = seeded(env, tmp_path, api, docs)
    assert run(file, 2) == 0
    assert env.scalar("select count(*) from syncrun_validators where etag is null and last_modified like '%GMT'") == 2
    assert run(file, 2) == 0
    assert docs.not_modified == 2
    assert "if-none-match" not in api.requests[-1].headers


def test_off_switch_sends_and_keeps_nothing(env: Database, api: ApiServer, tmp_path: Path) -> None:
    docs = Documents({1: 1, 2: 1})
    file = seeded(env, tmp_path, api, docs, extra="  conditional: false\n")
    assert run(file, 2) == 0
    assert run(file, 2) == 0
    assert docs.not_modified == 0
    assert not any("if-none-match" in r.headers or "if-modified-since" in r.headers for r in api.requests)
    assert env.scalar("select count(*) from syncrun_validators") == 0
    assert env.rows("select items_succeeded, items_unchanged from sync_jobs order by started_at") == [(2, 0), (2, 0)]


def test_hostile_validators_are_not_kept(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """An ETag of 2,000 characters and one with non-ASCII bytes are dropped (never sent back); a
    well-formed Last-Modified next to them is still kept."""
    docs = Documents({1: 1, 2: 1, 3: 1}, last_modified=False)
    docs.hostile = {1: {"ETag": '"' + "x" * 2000 + '"'}, 2: {"ETag": '"caf\xe9"'}}
    file = seeded(env, tmp_path, api, docs)
    assert run(file, 3) == 0
    assert env.rows("select entity_key, etag from syncrun_validators order by 1") == [("3", '"v1-3"')]
    assert run(file, 3) == 0
    assert docs.not_modified == 1
    assert {r.path: r.headers.get("if-none-match") for r in api.requests[-3:]} == {
        "/stations/1": None,
        "/stations/2": None,
        "/stations/3": '"v1-3"',
    }


def test_clean_refuses_line_breaks_and_oversize() -> None:
    assert conditional.clean('"abc"') == '"abc"'
    assert conditional.clean('  W/"abc"  ') == 'W/"abc"'
    assert conditional.clean('"a"\r\nX-Injected: 1') is None
    assert conditional.clean('"a"\nb') is None
    assert conditional.clean("") is None
    assert conditional.clean("x" * conditional.MAX_VALIDATOR) == "x" * conditional.MAX_VALIDATOR
    assert conditional.clean("x" * (conditional.MAX_VALIDATOR + 1)) is None
    reply = ClientReply(
        status=200, headers={"etag": '"a"\r\nSet-Cookie: x'}, body=None, raw=b"", url="", elapsed=0, content_type=""
    )
    assert not conditional.kept(reply)


def test_304_without_a_validator_is_an_error(env: Database, api: ApiServer, tmp_path: Path) -> None:
    file = seeded(env, tmp_path, api, Documents({1: 1}))
    api.route("/stations/1", Reply(304))
    assert run(file, 1) == 1  # 1 of 1 failed: above fail_ratio
    assert env.rows("select items_failed, items_unchanged from sync_jobs") == [(1, 0)]
    assert "HTTP 304 Not Modified, but no validator was sent" in env.scalar(
        "select last_error from syncrun_state where entity_key = '1'"
    )
    assert env.scalar("select count(*) from stations") == 0


def test_conditional_true_needs_one_request_per_entity(tmp_path: Path) -> None:
    file = source_file(tmp_path, "  conditional: true\n")
    file.write_text(file.read_text() + "pagination: {type: page, param: page, page_size: 10}\n")
    with pytest.raises(ConfigError, match="conditional requests need one request per entity"):
        config.load(file)


def test_second_pass_savings(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """The measurement in docs/benchmarks.md: 100 entities, 10% changed between passes."""
    count = 100  # the default --limit
    docs = Documents(dict.fromkeys(range(1, count + 1), 1))
    file = seeded(env, tmp_path, api, docs)
    assert run(file, count) == 0
    first = {"requests": len(api.requests), "bytes": docs.sent, "rows": len(snapshot(env))}
    rows = snapshot(env)
    for ident in range(1, count + 1, 10):
        docs.versions[ident] = 2
    docs.sent, before = 0, len(api.requests)
    assert run(file, count) == 0
    after = snapshot(env)
    second = {
        "requests": len(api.requests) - before,
        "bytes": docs.sent,
        "rows": sum(after[i] != rows[i] for i in rows),
        "304": docs.not_modified,
    }
    print(f"\nconditional requests, {count} entities, 10% changed: pass 1 {first}; pass 2 {second}")
    assert second == {"requests": count, "bytes": second["bytes"], "rows": count // 10, "304": count - count // 10}
    assert second["bytes"] * 5 < first["bytes"]


def test_on_by_default_only_for_one_request_per_entity(tmp_path: Path) -> None:
    """Default on; `false` turns it off; a paged entity never sends validators (its first page's
    validator says nothing of the others), nor does a batched request."""
    assert conditional.enabled(config.load(source_file(tmp_path)))
    assert not conditional.enabled(config.load(source_file(tmp_path, "  conditional: false\n")))
    paged = source_file(tmp_path)
    paged.write_text(paged.read_text() + "pagination: {type: page, param: page, page_size: 10}\n")
    assert not conditional.enabled(config.load(paged))


# --- review16 F1: a validator says the API's document did not change, not that our rows are right ---------
def sent_validators(api: ApiServer, since: int) -> int:
    return sum("if-none-match" in r.headers or "if-modified-since" in r.headers for r in api.requests[since:])


def test_emptied_target_table_is_fetched_again(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """The rows are gone (a truncate, a restore): their validators are not sent, so the entities come
    back instead of being `unchanged` forever. Entities whose rows are there still get 304s."""
    docs = Documents({1: 1, 2: 1, 3: 1})
    file = seeded(env, tmp_path, api, docs)
    assert run(file, 3) == 0
    env.run("delete from stations where id in (1, 2)")
    before = len(api.requests)
    assert run(file, 3) == 0
    assert {r.path: "if-none-match" in r.headers for r in api.requests[before:]} == {
        "/stations/1": False,
        "/stations/2": False,
        "/stations/3": True,
    }
    assert docs.not_modified == 1
    assert env.scalar("select count(*) from stations") == 3
    env.run("truncate stations")
    assert run(file, 3) == 0
    assert env.scalar("select count(*) from stations") == 3
    assert env.rows("select items_succeeded, items_unchanged from sync_jobs order by started_at desc limit 1") == [
        (3, 0)
    ]


@dataclass
class Keyed(Documents):
    """The same API, its documents carrying their id (mapped as `id: body.id`, the tutorial's style)."""

    def body(self, ident: int) -> dict[str, object]:
        return {"id": ident, **super().body(ident)}


def test_emptied_table_is_fetched_again_when_the_key_comes_from_the_reply(
    env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """review16b N1: with the key column mapped from the reply (`id: body.id`), not `entity.id`, the
    row each validator's reply wrote is kept with it (row_key) and looked up: deleted or truncated
    rows are re-fetched, present ones still get 304s."""
    docs = Keyed({1: 1, 2: 1, 3: 1})
    file = seeded(env, tmp_path, api, docs)
    file.write_text(file.read_text().replace("{id: entity.id,", "{id: body.id,"))
    assert run(file, 3) == 0
    assert env.rows("select entity_key, row_key from syncrun_validators order by 1") == [
        (str(i), {"id": str(i)}) for i in range(1, 4)
    ]
    assert run(file, 3) == 0
    assert docs.not_modified == 3
    env.run("delete from stations where id = 2")
    before = len(api.requests)
    assert run(file, 3) == 0
    assert {r.path: "if-none-match" in r.headers for r in api.requests[before:]} == {
        "/stations/1": True,
        "/stations/2": False,
        "/stations/3": True,
    }
    env.run("truncate stations")
    before = len(api.requests)
    assert run(file, 3) == 0
    assert sent_validators(api, before) == 0
    assert env.scalar("select count(*) from stations") == 3
    assert env.rows("select items_succeeded, items_unchanged from sync_jobs order by started_at desc limit 1") == [
        (3, 0)
    ]


def test_another_server_behind_the_same_setting_gets_no_validators(
    env: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review16b N8: `${env.API_URL}` pointed elsewhere (here localhost instead of 127.0.0.1, as a
    staging -> production switch would be): the origin is in the fingerprint, so the first server's
    validators are not sent to the second; its own are, from the run after."""
    docs = Documents({1: 1, 2: 1})
    file = seeded(env, tmp_path, api, docs)
    assert run(file, 2) == 0
    assert run(file, 2) == 0
    assert docs.not_modified == 2
    monkeypatch.setenv("API_URL", api.url.replace("127.0.0.1", "localhost"))
    before = len(api.requests)
    assert run(file, 2) == 0
    assert sent_validators(api, before) == 0
    assert run(file, 2) == 0
    assert docs.not_modified == 4


def test_the_origin_holds_no_secret(tmp_path: Path) -> None:
    """The origin is scheme://host:port only (no user info, path or query), and masked by the run's
    redactor: a secret in the URL never reaches the fingerprint's input in plain form."""
    file = tmp_path / "o.yaml"
    file.write_text(
        SOURCE.replace("EXTRA\n", "").replace(
            '"${env.API_URL}/stations/{id}"', '"https://u:${secret.PW}@${secret.HOST}:8443/k/${secret.PW}/{id}"'
        )
    )
    (tmp_path / "syncrun.yaml").write_text("status: {table: s, key: id}\nentities: {key: id, key_type: int}\n")
    source = config.load(file)
    secrets = {"PW": "password-12345678", "HOST": "internal-api.example"}
    settings = templating.resolve(source.settings, secrets)
    found = conditional.origin(source, settings)
    assert found == "https://***:8443"
    assert not any(piece in found for value in secrets.values() for piece in (value, value[:8]))
    file.write_text(file.read_text().replace("${secret.HOST}", "${env.HOST}"))
    source = config.load(file)
    settings = templating.resolve(source.settings, {"PW": "password-12345678", "HOST": "API.example"})
    assert conditional.origin(source, settings) == "https://api.example:8443"


def test_a_changed_mapping_fetches_every_entity_again(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A column added to the writes: validators kept under the old mapping are not sent, the new
    column is filled on the next run; the run after that is conditional again."""
    docs = Documents({1: 1, 2: 1})
    file = seeded(env, tmp_path, api, docs)
    assert run(file, 2) == 0
    env.run("alter table stations add column first_reading int")
    file.write_text(
        file.read_text().replace(
            "readings: body.readings}", "readings: body.readings, first_reading: 'body.readings[0]'}"
        )
    )
    before = len(api.requests)
    assert run(file, 2) == 0
    assert sent_validators(api, before) == 0
    assert env.rows("select id, first_reading from stations order by id") == [(1, 1), (2, 1)]
    assert run(file, 2) == 0
    assert docs.not_modified == 2


def test_restart_forgets_the_validators(env: Database, api: ApiServer, tmp_path: Path) -> None:
    docs = Documents({1: 1, 2: 1})
    file = seeded(env, tmp_path, api, docs)
    assert run(file, 2) == 0
    before = len(api.requests)
    assert cli.main(["run", str(file), "--ids", "1,2", "--restart"]) == 0
    assert sent_validators(api, before) == 0
    assert env.scalar("select count(*) from syncrun_validators") == 2  # kept again by that run
    assert run(file, 2) == 0
    assert docs.not_modified == 2


def test_dry_run_and_test_read_send_no_validators(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a dry run shows is what the API answers: never a 304 hiding it."""
    docs = Documents({1: 1})
    file = seeded(env, tmp_path, api, docs)
    assert run(file, 1) == 0
    before = len(api.requests)
    assert cli.main(["run", str(file), "--ids", "1", "--dry-run"]) == 0
    assert cli.main(["test-read", str(file), "--ids", "1"]) == 0
    assert sent_validators(api, before) == 0
    assert docs.not_modified == 0
    assert "station 1 v1" in capsys.readouterr().out


def test_fingerprint_is_stable_and_follows_the_mappings(tmp_path: Path) -> None:
    file = source_file(tmp_path)
    first = conditional.fingerprint(config.load(file))
    assert conditional.fingerprint(config.load(file)) == first
    file.write_text(file.read_text().replace("name: body.name", "name: body.title"))
    assert conditional.fingerprint(config.load(file)) != first


# --- review16 F12: a validator holding a secret never reaches the database ------------------------------
def test_a_validator_echoing_a_secret_is_not_kept(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """The API echoes the Authorization header (a configured ${secret.*}) into ETag and Last-Modified:
    neither is kept, the next request is unconditional, and no piece of the secret is in the table."""
    from tests.test_security import planted_leaks

    docs = Documents({1: 1, 2: 1})
    file = seeded(env, tmp_path, api, docs)
    file.write_text(file.read_text() + "auth: {type: bearer, token: '${secret.API_TOKEN}'}\n")

    def echo(request: Recorded) -> Reply:
        reply = docs.answer(request)
        said = request.headers.get("authorization", "")
        if request.path.endswith("/1"):
            return replace(reply, headers={**reply.headers, "ETag": f'"{said}"', "Last-Modified": f"tok {said}"})
        return reply

    api.route("/stations/1", echo)
    assert run(file, 2) == 0
    assert env.rows("select entity_key, etag from syncrun_validators order by 1") == [("2", '"v1-2"')]
    stored = [str(row) for row in env.rows("select * from syncrun_validators")]
    assert not planted_leaks(stored, ["s3cr3t-token-value"])


def test_a_validator_echoing_a_run_time_token_is_not_kept(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """The same with an OAuth2 access token obtained at run time (added to the run's Redactor)."""
    from tests.test_auth import CLIENT_CREDENTIALS, CLIENT_SECRET, OAuthServer
    from tests.test_security import planted_leaks

    server = OAuthServer(api)
    docs = Documents({1: 1, 2: 1})
    file = seeded(env, tmp_path, api, docs)
    file.write_text(file.read_text() + f"auth: {CLIENT_CREDENTIALS}\n")

    def echo(request: Recorded) -> Reply:
        reply = docs.answer(request)
        said = request.headers.get("authorization", "")
        return replace(reply, headers={**reply.headers, "ETag": f'W/"{said[-20:]}"', "Last-Modified": said})

    api.route("/stations/1", echo)
    api.route("/stations/2", echo)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLIENT_SECRET", CLIENT_SECRET)
        assert run(file, 2) == 0
    assert server.issued
    assert env.scalar("select count(*) from syncrun_validators") == 0
    stored = [str(row) for row in env.rows("select * from syncrun_validators")]
    assert not planted_leaks(stored, list(server.issued))


# --- review16 F14: `unchanged` in status and the step summary ------------------------------------------------
def test_status_and_step_summary_count_unchanged(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = Documents({1: 1, 2: 1, 3: 1})
    file = seeded(env, tmp_path, api, docs)
    assert run(file, 3) == 0
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert run(file, 3) == 0
    assert "| stations | ✅ completed | 3 | 0 | 0 | 0 | 3 |" in summary.read_text()
    capsys.readouterr()
    assert cli.main(["status", str(file), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["sources"][0]["runs"]
    assert [(r["processed"], r["succeeded"], r["unchanged"]) for r in runs] == [(3, 0, 3), (3, 3, 0)]
    assert cli.main(["status", str(file)]) == 0
    assert "processed 3 (ok 0, failed 0, skipped 0, unchanged 3)" in capsys.readouterr().out
