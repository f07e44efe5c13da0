"""Security properties end to end (issue #6): secrets never leak, SQL cannot be injected, entity values
cannot steer a request elsewhere, TLS verification is on unless a source turns it off (loudly).

Runs `syncrun` as a subprocess against a private PostgreSQL cluster whose role has a real password
(bench/faultlib.py), so DATABASE_URL carries a secret just as `${secret.*}` does. Without initdb the
tests skip locally and fail under CI=true. YAML fuzzing lives in tests/test_config.py.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from bench import faultlib
from bench.faultlib import PASSWORD, TOKEN
from runner.redaction import FRAGMENT
from tests.apiserver import ApiServer, Recorded, Reply
from tests.cluster import unavailable
from tests.test_redaction import STYLES, TESTER, escapes, views
from tests.test_redaction import echo as escaped_echo

ROOT = Path(__file__).resolve().parent.parent


SOURCE = """\
name: sec
entities:
  type: default
  columns: {{slug: text}}
  limit: 100
request:
  url: "{base}/items/{{slug}}/detail"
  query:
    key: "${{secret.API_TOKEN}}"
    v: "1"
  headers:
    Authorization: "Bearer ${{secret.API_TOKEN}}"
  timeout: 2s
{extra}rate_limit: {{requests: 200, per: 1s, burst: 20, bucket: sec}}
retry: {{attempts: 2, initial: 10ms, max_delay: 20ms, max_wait: 2s}}
concurrency: 2
write_batch: 4
fail_ratio: 1
outcomes:
  - {{name: api error, when: "status == `400`", outcome: error, message: "API said {{body.error}}"}}
records: body
writes:
  - table: {table}
    key: [slug]
    columns:
      slug: entity.slug
      title: record.title
      note: record.note
  - table: item_tags
    key: [slug, tag]
    rows: record.tags
    columns:
      slug: entity.slug
      tag: item
"""

TABLES = """
create table items (slug text primary key, title text, note text);
create table item_tags (slug text not null, tag text not null, primary key (slug, tag));
"""


class Project:
    """A database in the private cluster, the `sec` source, and subprocess runs of syncrun."""

    def __init__(self, cluster: faultlib.Cluster, tmp: Path, name: str, *, base: str = "${env.API_URL}") -> None:
        self.tmp, self.cluster = tmp, cluster
        self.env: dict[str, str] = {"API_TOKEN": TOKEN}  # what every syncrun run gets on top of os.environ
        self.template = SOURCE
        (tmp / "syncrun.yaml").write_text(
            "status: {table: sync_status, key: slug}\nentities: {key: slug, key_type: text}\n"
        )
        self.source = tmp / "sec.yaml"
        self.write_source(base=base)
        self.dsn = cluster.create_database(name)
        self.outputs: list[str] = []
        self.syncrun("migrate", str(self.source), api_url="http://127.0.0.1:9")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(TABLES)  # type: ignore[arg-type]

    def write_source(self, *, base: str = "${env.API_URL}", extra: str = "", table: str = "items") -> None:
        self.source.write_text(self.template.format(base=base, extra=extra, table=table))

    def seed(self, slugs: list[str]) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("insert into sync_status (slug) select unnest(%s::text[])", (slugs,))

    def syncrun(
        self, *args: str, api_url: str, dsn: str | None = None, code: int | None = 0
    ) -> subprocess.CompletedProcess[str]:
        env = {
            k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY")
        }
        env |= {"DATABASE_URL": dsn or self.dsn, "API_URL": api_url, "PYTHONPATH": str(ROOT), **self.env}
        # Run in the test's directory, so whatever syncrun writes under `.syncrun/` lands there (and is searched).
        result = subprocess.run(
            [sys.executable, "-m", "runner", *args], cwd=self.tmp, env=env, capture_output=True, text=True, timeout=120
        )
        self.outputs += [result.stdout, result.stderr]
        if code is not None:
            assert result.returncode == code, result.stdout + result.stderr
        return result

    def rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def every_text_value(self) -> list[str]:
        """Every value of every column of every table in the database, data tables included (an echoed
        token is masked before it is stored), as text: one column at a time (a whole row's text form
        would escape `"` and `\\` once more)."""
        columns = self.rows(
            "select c.table_schema, c.table_name, c.column_name from information_schema.columns c"
            " join information_schema.tables t using (table_schema, table_name)"
            " where c.table_schema not in ('pg_catalog', 'information_schema') and t.table_type = 'BASE TABLE'",
        )
        values: list[str] = []
        for schema, table, column in columns:
            query = psycopg.sql.SQL("select {}::text from {}.{} where {} is not null").format(
                psycopg.sql.Identifier(column),
                psycopg.sql.Identifier(schema),
                psycopg.sql.Identifier(table),
                psycopg.sql.Identifier(column),
            )
            values += [row[0] for row in self.rows(query)]  # type: ignore[arg-type]
        return values


def echo(request: Recorded) -> Reply:
    """An API that quotes the request back, credentials included, in whatever it answers."""
    said = f"{request.target} {request.headers.get('authorization')}"
    slug = request.path.split("/")[2]
    if slug == "bad":
        return Reply(400, json={"error": f"key rejected: {said}"})
    if slug == "down":
        return Reply(503, body=f"upstream failed for {said}".encode())
    if slug == "html":
        return Reply(200, body=f"<html>{said}</html>".encode(), headers={"Content-Type": "text/html"})
    return Reply(200, json={"title": f"Item {slug}", "note": said, "tags": [said[-40:]]})


def test_secrets_never_appear_in_any_output(cluster: faultlib.Cluster, tmp_path: Path) -> None:
    """With a known API token and DATABASE_URL password, run every path — run (text and JSON logs),
    errors echoing the token, --dry-run, test-read, --record, status, a failed connection — and
    search stdout, stderr, every text column of every table and the cassette for any 8-character piece
    of either secret, in any escape."""
    project = Project(cluster, tmp_path, "sec_secrets")
    slugs = ["ok1", "ok2", "bad", "down", "html"]
    project.seed(slugs)
    api = ApiServer().start()
    try:
        for slug in slugs:
            api.route(f"/items/{slug}/detail", echo)
        src, url = str(project.source), api.url
        project.syncrun("run", src, "--dry-run", "--ids", "ok1,bad", api_url=url)
        project.syncrun("test-read", src, "--ids", "ok1,bad,html", api_url=url)
        project.syncrun("run", src, "--log-format", "json", "--progress-every", "1", api_url=url)
        project.syncrun("run", src, "--ids", ",".join(slugs), "--record", str(tmp_path / "rec"), api_url=url)
        project.syncrun("run", src, "--ids", "ok1,down", "--log-format", "text", "--progress-every", "1", api_url=url)
        project.syncrun("status", src, api_url=url)
        project.syncrun("status", src, "--json", api_url=url)
        wrong_db = project.dsn.rsplit("/", 1)[0] + "/no_such_database"
        failed = project.syncrun("run", src, api_url=url, dsn=wrong_db, code=1)
        assert "***" in failed.stderr
        wrong_port = project.dsn.replace(f":{cluster.port}/", ":1/")
        project.syncrun("status", src, api_url=url, dsn=wrong_port, code=1)
        cassettes = [p.read_text() for p in (tmp_path / "rec").rglob("*") if p.is_file()]
    finally:
        api.stop()
    assert cassettes
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" and r.query["key"] == TOKEN for r in api.requests)
    # The mapped data tables hold what the API said (it echoed the token into `note` on purpose, to test
    # dry-run output and the cassette): data, not syncrun's output. Every other table is searched.
    stored = project.every_text_value()
    assert len(stored) > 10
    assert any("***" in value for value in stored)  # the echoed token was there, masked
    leaked = planted_leaks(project.outputs + stored + cassettes, [TOKEN, PASSWORD])
    assert not leaked, "\n".join(leaked)


# --- planted hostile secrets (issue #10 §4) ------------------------------------------------------------
# Each has `\\ " / % + ~`, spaces or non-ASCII and is long enough to be cut by an 80-byte excerpt. The
# header one is ASCII (httpx sends header values as ASCII); the multi-line one may be refused at run start.
QUERY_SECRET = 'qk\\ "Zx/%2B+~ ünï✓ çode-7e1f9a3b5d'
HEADER_SECRET = 'hk \\"Wv/%41+~ plain-ascii-4c8e2a6f0b'
MULTI_SECRET = "mk first line Yq7\nsecond line ÿ-5a9c3e7b"
DB_SECRET = 'dbp\\ "Jr/%3F+~ é@x:y-2b6d8f0a4c'
REDIS_SECRET = "rds/+~ %é\\ Kp-6f1e3d5c7b"  # in SYNCRUN_REDIS_URL: unused by this source, still masked
PLANTED = [QUERY_SECRET, HEADER_SECRET, MULTI_SECRET, DB_SECRET, REDIS_SECRET]
CUTS = range(40, 76, 5)  # where an 80-character excerpt ends inside the echoed secret: 8 different places

HOSTILE_SOURCE = SOURCE.replace('    key: "${{secret.API_TOKEN}}"', '    key: "${{secret.QUERY_KEY}}"').replace(
    '    Authorization: "Bearer ${{secret.API_TOKEN}}"', '    X-Key: "${{secret.HEADER_KEY}}"'
)
MULTI_SOURCE = HOSTILE_SOURCE.replace("secret.QUERY_KEY", "secret.MULTI_KEY")


def hostile_echo(request: Recorded) -> Reply:
    """Quotes the secrets back as received (decoded, raw, percent-encoded), whole and cut, in JSON
    bodies (escaped), text bodies, error bodies and transient errors."""
    slug = request.path.split("/")[2]
    said = (
        f"{request.target} {request.headers.get('x-key')} {request.query.get('key')} {request.headers.get('x-multi')}"
    )
    if slug.startswith("cut"):  # the 80-character excerpt ends `cut` characters into the JSON text
        pad = "p" * (int(slug[3:]) - len('{"error": "'))
        return Reply(400, json={"error": pad + str(request.query.get("key")) + " " + said})
    if slug.startswith("tcut"):  # a transient answer quoting the key; its retry message cuts at 80
        pad = "t" * int(slug[4:])
        return Reply(503, body=f"{pad}{request.query.get('key')} {said}".encode())
    if slug == "long":  # a long body (past the 200-byte excerpt) with the secret at every offset
        return Reply(200, json={"title": "long", "note": "n" * 150 + said * 3, "tags": [said[-40:]]})
    return echo(request)


def fragments(text: str) -> set[str]:
    return {text[i : i + FRAGMENT] for i in range(len(text) - FRAGMENT + 1)}


def planted_leaks(texts: list[str], secrets: list[str] = PLANTED) -> list[str]:
    """Every place where any 8-character piece of any of `secrets`, in any escape, appears."""
    pieces = {piece for secret in secrets for text in escapes(secret) for piece in fragments(text)}
    found = []
    for text in texts:
        for piece in pieces:
            if piece in text:
                at = text.find(piece)
                found.append(f"{piece!r} in …{text[max(0, at - 60) : at + 60]!r}…")
                break
    return found


def test_planted_hostile_secrets_never_leak_in_any_form(cluster: faultlib.Cluster, tmp_path: Path) -> None:
    """Secrets with `\\ " / % + ~`, spaces, non-ASCII and a newline, echoed back by the API whole, cut at
    8 places by 80-character excerpts, JSON-escaped and percent-encoded; a DATABASE_URL whose password
    has the same (percent-encoded, and once not); runs of every kind: run (text, JSON and GitHub logs,
    with a step summary), --dry-run, test-read, --record, --replay, status, status --json, failed
    connections. Stdout, stderr, every file under the test's directory (cassettes, step summary,
    `.syncrun/`) and every column of every table syncrun writes hold no 8-character piece of any of them."""
    project = Project(cluster, tmp_path, "sec_planted")
    role = "planted_role"
    with cluster.admin() as conn:
        conn.execute(psycopg.sql.SQL("drop role if exists {}").format(psycopg.sql.Identifier(role)))
        conn.execute(
            psycopg.sql.SQL("create role {} login password {} in role {}").format(
                psycopg.sql.Identifier(role), psycopg.sql.Literal(DB_SECRET), psycopg.sql.Identifier(faultlib.ROLE)
            )
        )
    dsn = f"postgresql://{role}:{quote(DB_SECRET, safe='')}@127.0.0.1:{cluster.port}/sec_planted"
    project.template = HOSTILE_SOURCE
    project.write_source()
    project.env = {
        "QUERY_KEY": QUERY_SECRET,
        "HEADER_KEY": HEADER_SECRET,
        "MULTI_KEY": MULTI_SECRET,
        "SYNCRUN_REDIS_URL": f"redis://:{quote(REDIS_SECRET, safe='')}@127.0.0.1:1/0",
    }
    slugs = ["ok1", "bad", "down", "html", "long", *(f"cut{n}" for n in CUTS), *(f"tcut{n}" for n in CUTS)]
    project.seed(slugs)
    summary = tmp_path / "step-summary.md"
    api = ApiServer().start()
    try:
        for slug in slugs:
            api.route(f"/items/{slug}/detail", hostile_echo)
        src, url, ids = str(project.source), api.url, ",".join(slugs)

        def syncrun(*args: str, code: int | None = 0, **env: str) -> subprocess.CompletedProcess[str]:
            project.env |= env
            try:
                return project.syncrun(*args, api_url=url, dsn=env.get("DATABASE_URL", dsn), code=code)
            finally:
                for name in env:
                    project.env.pop(name, None)

        syncrun("run", src, "--dry-run", "--ids", ids)
        syncrun("test-read", src, "--ids", ids)
        syncrun("run", src, "--log-format", "json", "--progress-every", "1")
        syncrun("run", src, "--ids", ids, "--record", str(tmp_path / "rec"))
        syncrun("run", src, "--ids", ids, "--replay", str(tmp_path / "rec"), "--rate-scale", "20")
        github = syncrun("run", src, "--ids", ids, GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary))
        syncrun("status", src)
        syncrun("status", src, "--json")
        wrong_db = syncrun("status", src, code=1, DATABASE_URL=dsn.replace("/sec_planted", "/no_such_database"))
        assert "***" in wrong_db.stderr
        raw_dsn = f"postgresql://{role}:{DB_SECRET}@127.0.0.1:{cluster.port}/sec_planted"  # not percent-encoded
        unencoded = syncrun("run", src, "--ids", "ok1", code=2, DATABASE_URL=raw_dsn)
        assert "percent-encoded" in unencoded.stderr
        # The multi-line secret, in the query: refused at run start (exit 2) or sent and echoed;
        # whatever happens nothing of it may show, also under GitHub Actions.
        project.template = MULTI_SOURCE
        project.write_source()
        multi = syncrun("run", src, "--ids", "ok1,bad,down,cut60,tcut60", code=None)
        assert multi.returncode in (0, 2), multi.stderr  # ran (those entities failed), or refused it
        syncrun("test-read", src, "--ids", "ok1", code=None)
        multi = syncrun("run", src, "--ids", "ok1", code=None, GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary))
        if multi.returncode == 0:  # announced line by line: a second line would be printed as plain text
            assert {f"::add-mask::{line}" for line in MULTI_SECRET.splitlines()} <= set(multi.stdout.splitlines())
    finally:
        api.stop()
    assert any(r.query.get("key") == QUERY_SECRET for r in api.requests)
    assert any(r.headers.get("x-key") == HEADER_SECRET for r in api.requests)
    masks = [line for line in github.stdout.splitlines() if line.startswith("::add-mask::")]
    # The one place a secret is printed (the runner eats it): `%` escaped as the runner unescapes it.
    assert "::add-mask::" + QUERY_SECRET.replace("%", "%25") in masks
    outputs = [
        "\n".join(line for line in out.splitlines() if not line.startswith("::add-mask::")) for out in project.outputs
    ]
    files = [p.read_text("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file()]
    # Every path was taken with a secret in it: masked in the summary's top errors, the cassette, and
    # in excerpts cut short (the transient errors' 80 characters end with a cut mark).
    assert "***" in summary.read_text()
    assert "***" in "".join(p.read_text() for p in (tmp_path / "rec").rglob("cassette.yaml"))
    assert "***…" in "".join(project.outputs)
    stored = project.every_text_value()
    assert sum("***" in value for value in stored) >= len(CUTS)  # the echoed secrets were there, masked
    leaked = planted_leaks(outputs + files + stored)
    assert not leaked, "\n".join(leaked)


def styled_echo(request: Recorded) -> Reply:
    """Quotes the token back escaped each character its own way: PHP's `\\/`, .NET's `\\u002F`, UTF-16
    (a body read as UTF-8 shows a NUL after each character), HTML entities, and a mix of all of them."""
    slug = request.path.split("/")[2]
    token = str(request.query.get("key"))
    if slug == "utf16":
        return Reply(400, body=f"bad key {token}".encode("utf-16-le"), headers={"Content-Type": "text/plain"})
    chosen = [sorted(STYLES)[(i * 5) % len(STYLES)] for i in range(len(token))] if slug == "mixed" else slug
    said = escaped_echo(token, chosen)
    if slug.startswith("html"):
        return Reply(400, body=f"<p>bad key {said}</p>".encode(), headers={"Content-Type": "text/html"})
    body = '{"title": "t", "note": "' + said + '", "tags": ["' + said[-40:] + '"]}'
    return Reply(200, body=body.encode(), headers={"Content-Type": "application/json"})


def test_a_token_echoed_in_unknown_escapes_never_leaks(cluster: faultlib.Cluster, tmp_path: Path) -> None:
    """The outside tester's finding: an API echoing the token PHP-, .NET-, UTF-16- or HTML-escaped (or
    all mixed) put it in test-read, --dry-run and --record output. No decoding of any output, file or
    stored value reads any 8-character piece of it."""
    project = Project(cluster, tmp_path, "sec_styled")
    project.env = {"API_TOKEN": TESTER}
    slugs = ["php", "dotnet", "utf16", "html-decimal", "html-hex", "mixed"]
    project.seed(slugs)
    api = ApiServer().start()
    try:
        for slug in slugs:
            api.route(f"/items/{slug}/detail", styled_echo)
        src, url, ids = str(project.source), api.url, ",".join(slugs)
        project.syncrun("test-read", src, "--ids", ids, api_url=url)
        project.syncrun("run", src, "--dry-run", "--ids", ids, api_url=url)
        project.syncrun("run", src, "--ids", ids, "--record", str(tmp_path / "rec"), api_url=url)
    finally:
        api.stop()
    assert any(r.query.get("key") == TESTER for r in api.requests)
    files = [p.read_text("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file()]
    assert "***" in "".join(p.read_text() for p in (tmp_path / "rec").rglob("cassette.yaml"))
    readable = [reading for text in project.outputs + files + project.every_text_value() for reading in views(text)]
    leaked = [f"{piece!r} in {text[:300]!r}" for text in readable for piece in fragments(TESTER) if piece in text]
    assert not leaked, "\n".join(leaked[:5])


INJECTION = "'); DROP TABLE items; --"


def test_sql_values_are_bound_and_identifiers_validated(cluster: faultlib.Cluster, tmp_path: Path) -> None:
    """SQL-looking text in entity keys (text keys) and in every mapped field is stored verbatim; a table
    name that is not a plain identifier is rejected by validation before anything runs."""
    project = Project(cluster, tmp_path, "sec_sql")
    slugs = [INJECTION, "x'; drop table sync_status; --", 'a"b', "robert'); delete from items where ('1'='1"]
    project.seed(slugs)
    api = ApiServer().start()
    try:
        for slug in slugs:
            api.route(
                f"/items/{quote(slug, safe='')}/detail",
                Reply(200, json={"title": INJECTION, "note": f"{slug}\\'; --", "tags": [INJECTION, "$$; drop $$"]}),
            )
        project.syncrun("run", str(project.source), api_url=api.url)
    finally:
        api.stop()
    assert sorted(project.rows("select slug, title, note from items")) == sorted(
        (slug, INJECTION, f"{slug}\\'; --") for slug in slugs
    )
    assert len(project.rows("select * from item_tags")) == 2 * len(slugs)
    assert len(project.rows("select * from sync_status where last_sec_sync is not null")) == len(slugs)
    for bad in ['"items; drop table items; --"', '"Items"', '"items\\"x"', '"public.items; --"']:
        project.write_source(table=bad)
        result = project.syncrun("validate", str(project.source), api_url=api.url, code=2)
        assert "writes[0].table" in result.stdout
    assert project.rows("select count(*) from items") == [(len(slugs),)]


HOSTILE = ["../admin", "..", ".", "@evil.example", "?x=1", "#frag", "%2F", "a/b", "ünïcødé ✓", "a b+c", "\\..\\x"]


def test_entity_values_cannot_change_scheme_host_or_path(cluster: faultlib.Cluster, tmp_path: Path) -> None:
    """Entity keys full of URL syntax: the server sees every request on the template's host, under
    /items/<one segment>/detail with only the template's query names, and each entity gets its own data."""
    project = Project(cluster, tmp_path, "sec_urls")
    project.seed(HOSTILE)
    api = ApiServer().start()
    expected = {}
    try:
        for slug in HOSTILE:
            segment = quote(slug, safe="")
            segment = segment.replace(".", "%2E") if set(segment) <= {"."} else segment
            expected[f"/items/{segment}/detail"] = slug
            api.route(f"/items/{segment}/detail", Reply(200, json={"title": slug, "tags": []}))
        project.syncrun("run", str(project.source), api_url=api.url)
    finally:
        api.stop()
    host = api.url.removeprefix("http://")
    assert len(api.requests) == len(HOSTILE)
    for request in api.requests:
        assert request.headers["host"] == host
        assert request.path in expected, request.target
        assert set(request.query) == {"key", "v"}
    assert sorted(project.rows("select slug, title from items")) == sorted((s, s) for s in HOSTILE)


@pytest.fixture
def tls_api(tmp_path: Path) -> Iterator[ApiServer]:
    """An ApiServer speaking HTTPS with a self-signed certificate."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl is not installed (needed for a self-signed certificate)")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ApiServer()
    server._httpd.socket = context.wrap_socket(server._httpd.socket, server_side=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_tls_verification_is_on_by_default_and_off_only_with_a_warning(
    cluster: faultlib.Cluster, tmp_path: Path, tls_api: ApiServer
) -> None:
    """A self-signed certificate fails the run by default, once, naming the settings that fix it (it was
    each entity's transient failure, retried with budget spent until the breaker tripped; review11
    O3); SSL_CERT_FILE naming the certificate trusts it; `request.verify_tls: false` accepts it and
    the run log says that verification is off, naming the URL."""
    project = Project(cluster, tmp_path, "sec_tls")
    project.seed(["one", "two", "three", "four", "five", "six"])
    for slug in ("one", "two"):
        tls_api.route(f"/items/{slug}/detail", Reply(200, json={"title": slug.title(), "tags": []}))
    url = tls_api.url.replace("http://", "https://")
    strict = project.syncrun("run", str(project.source), api_url=url, code=1)
    assert "TLS certificate verification failed for https://127.0.0.1:" in strict.stderr
    assert "self-signed certificate" in strict.stderr
    assert "SSL_CERT_FILE" in strict.stderr
    assert "request.verify_tls: false" in strict.stderr
    assert "verification is disabled" not in strict.stderr
    assert "Traceback" not in strict.stderr
    assert project.rows("select count(*) from items") == [(0,)]
    assert project.rows("select status from sync_jobs") == [("failed",)]
    project.env["SSL_CERT_FILE"] = str(tmp_path / "cert.pem")
    project.syncrun("run", str(project.source), "--ids", "two", api_url=url)
    del project.env["SSL_CERT_FILE"]
    assert project.rows("select slug, title from items") == [("two", "Two")]
    project.source.write_text(
        project.source.read_text().replace("  timeout: 2s\n", "  timeout: 2s\n  verify_tls: false\n")
    )
    relaxed = project.syncrun("run", str(project.source), "--ids", "one", api_url=url)
    assert "TLS certificate verification is disabled for ${env.API_URL}/items/{slug}/detail" in relaxed.stderr
    assert sorted(project.rows("select slug, title from items")) == [("one", "One"), ("two", "Two")]


def test_cookies_an_api_sets_cannot_stop_a_run(cluster: faultlib.Cluster, tmp_path: Path, api: ApiServer) -> None:
    """review11 F2: one Set-Cookie with a control character or a non-ASCII byte made every later
    request of the run raise (exit 70). syncrun keeps no cookies: every entity is written, exit 0, and
    no request carries a Cookie header."""
    project = Project(cluster, tmp_path, "sec_cookie")
    slugs = ["one", "two", "three", "four", "five"]
    project.seed(slugs)
    cookies = {"one": "a=x\x01y; Path=/", "two": "b=\xfc\xfe; Path=/", "three": "c=x\x7fy; Path=/"}
    for slug in slugs:
        headers = {"Set-Cookie": cookies[slug]} if slug in cookies else {}
        api.route(f"/items/{slug}/detail", Reply(200, json={"title": slug.title(), "tags": []}, headers=headers))
    project.syncrun("run", str(project.source), "--ids", ",".join(slugs), api_url=api.url)
    assert sorted(project.rows("select slug, title from items")) == sorted((s, s.title()) for s in slugs)
    assert len(api.requests) == len(slugs)
    assert all("cookie" not in r.headers for r in api.requests)
