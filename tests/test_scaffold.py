"""`syncrun new`: starter sources that validate, with mappings guessed from a sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from runner import cli, config, pageguess, samples, scaffold, spec
from runner.errors import UsageError
from runner.spec import SelectionType
from tests import pagedapi
from tests.apiserver import ApiServer, Recorded, Reply
from tests.pg import Database

SAMPLE = {
    "data": {
        "appid": 730,
        "name": "Counter-Strike 2",
        "is_free": True,
        "price": {"cents": 0, "currency": "USD"},
        "release_date": "2012-08-21",
        "score": 8.5,
        "tags": ["FPS", "Shooter"],
        "developers": [{"id": 1, "name": "Valve"}],
        "Weird-Key": "x",
    }
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "syncrun.yaml").write_text("status: {table: sync_status, key: appid}\nentities: {key: appid}\n")
    (tmp_path / "sample.json").write_text(json.dumps(SAMPLE))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_new_writes_a_source_that_validates(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`syncrun new` writes sources/NAME.yaml and `syncrun validate` passes on it."""
    assert cli.main(["new", "games", "--url", "https://api.example.com/apps/{appid}", "--sample", "sample.json"]) == 0
    path = project / "sources" / "games.yaml"
    assert "wrote sources/games.yaml" in capsys.readouterr().out
    assert cli.main(["validate", str(path)]) == 0
    source = config.load(path)
    assert source.entities.key == "appid"
    assert source.records is not None
    assert source.records.text == "body.data"
    columns = {f.column: f.expression.text for f in source.writes[0].columns}
    assert columns["appid"] == "entity.appid"
    assert columns["price_cents"] == "as_int(record.price.cents)"
    assert columns["release_date"] == "parse_date(record.release_date)"
    assert columns["score"] == "as_float(record.score)"
    assert columns["weird_key"] == 'record."Weird-Key"'


def test_nested_lists_are_commented_child_tables(project: Path) -> None:
    """Each nested list is offered as a commented-out child table, one row per item."""
    text = scaffold.source_text("games", "https://x/{appid}", SAMPLE, Path("sources/games.yaml"))
    assert "  # - table: games_tags\n" in text
    assert "  #   rows: record.tags\n" in text
    assert "  #     tag: item  # text" in text
    assert "  #     id: as_int(item.id)  # int, e.g. 1" in text


def test_placeholders_become_entity_columns_and_a_status_table(project: Path) -> None:
    """Every {placeholder} is an entity column; a key other than the project's gets its own status table."""
    out = project / "sources" / "items.yaml"
    assert cli.main(["new", "items", "--url", "https://x/items/{id}?lang={lang}", "--out", str(out)]) == 0
    source = config.load(out)
    assert [(c.name, c.type) for c in source.entities.columns] == [("id", "int"), ("lang", "text")]
    assert source.status is not None
    assert str(source.status.table) == "items_status"


def test_refuses_to_overwrite_without_force(project: Path) -> None:
    """An existing file is kept unless --force."""
    args = ["new", "games", "--url", "https://x/{appid}"]
    assert cli.main(args) == 0
    assert cli.main(args) == 2
    assert cli.main([*args, "--force"]) == 0


@pytest.mark.parametrize(
    ("name", "url", "message"),
    [
        ("Bad-Name", "https://x/{appid}", "source name 'Bad-Name': use lower-case letters, digits and _"),
    ],
)
def test_bad_arguments_say_what_to_do(project: Path, name: str, url: str, message: str) -> None:
    """A bad name is a UsageError that says what to write instead."""
    with pytest.raises(UsageError, match=message.replace("{", r"\{").replace("(", r"\(")):
        scaffold.source_text(name, url, None, Path("sources/x.yaml"))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"<html>", "not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"[" * 5000 + b"]" * 5000, "JSON nested deeper than 128 levels"),  # was RecursionError, exit 70
        (b'{"a": "\xff\xfe"}', "not valid UTF-8 at byte 7: invalid start byte"),  # was UnicodeDecodeError
        (b"", "empty"),
    ],
)
def test_sample_that_is_not_usable_json(project: Path, content: bytes, reason: str) -> None:
    """A sample the engine could not read either names the file and why, and how to save a response."""
    (project / "bad.json").write_bytes(content)
    with pytest.raises(UsageError) as error:
        samples.read_sample(Path("bad.json"))
    assert str(error.value).startswith(f"--sample bad.json: not JSON syncrun can use ({reason}) — save one raw")


STATIONS = [
    {"id": "stn_123", "name": "Harbour", "created_at": 1717243200, "seen_ms": 1717243200000, "depth": 4.5},
    {"id": "stn_124", "name": "Pier", "created_at": 1717243260, "seen_ms": 1717243260000, "depth": 2.0},
]


@pytest.mark.parametrize(
    ("body", "records", "name"),
    [
        ({"data": STATIONS, "meta": {"total": 2}, "links": {"next": None}}, "body.data", "record.name"),
        ({"results": STATIONS, "count": 2, "next": None}, "body.results", "record.name"),
        ({"items": STATIONS, "nextPageToken": None}, "body.items", "record.name"),
        (
            {"data": [{"id": s["id"], "type": "station", "attributes": s} for s in STATIONS], "links": {}},
            "body.data",
            "record.attributes.name",
        ),
    ],
    ids=["data-meta-links", "results", "items", "jsonapi"],
)
def test_a_list_endpoint_makes_a_list_source(
    project: Path, api: ApiServer, body: dict[str, object], records: str, name: str
) -> None:
    """A URL without placeholder is a list endpoint: fetched from a real API, its envelope unwrapped,
    keyed by the records' text id, epoch timestamps mapped with from_unix; the file validates."""
    api.route("/stations", Reply(200, json=body))
    assert cli.main(["new", "stations", "--url", f"{api.url}/stations"]) == 0
    source = config.load(project / "sources" / "stations.yaml")
    assert source.entities.type is SelectionType.LIST
    assert source.status is None
    assert source.records is not None
    assert source.records.text == records
    write = source.writes[0]
    assert write.key == ("id",)
    columns = {f.column: f.expression.text for f in write.columns}
    assert columns["id"] == "record.id"  # text: "stn_123" is no int
    assert columns["name"] == name
    assert columns["created_at"] == name.replace("name", "created_at").replace("record.", "from_unix(record.") + ")"
    assert columns["seen_ms"].startswith("from_unix_ms(")
    assert columns["depth"].startswith("as_float(")
    assert [r.path for r in api.requests] == ["/stations"]


def test_a_detail_endpoint_with_a_text_id_gets_a_text_key(project: Path, api: ApiServer) -> None:
    """`--id` fetches one entity as the sample; the key named in the URL takes its type from the
    record's id (`stn_123` is text, not the project's int)."""
    api.route("/stations/stn_123", Reply(200, json={"data": STATIONS[0]}))
    url = f"{api.url}/stations/{{station_id}}"
    assert cli.main(["new", "station", "--url", url, "--id", "stn_123"]) == 0
    source = config.load(project / "sources" / "station.yaml")
    assert (source.entities.key, source.entities.key_type) == ("station_id", "text")
    assert source.records is not None
    assert source.records.text == "body.data"
    assert [r.path for r in api.requests] == ["/stations/stn_123"]


def test_a_sample_the_api_refuses_says_so(project: Path, api: ApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    """An error answer is no sample: exit 2 saying what came back and what to do."""
    api.route("/stations", Reply(401, json={"error": "no key"}))
    assert cli.main(["new", "stations", "--url", f"{api.url}/stations"]) == 2
    assert "the API answered HTTP 401, not a sample to learn from: save a good response and pass --sample" in (
        capsys.readouterr().err
    )


def test_a_20_digit_id_is_text_and_an_iso_timestamp_keeps_its_time(project: Path, api: ApiServer) -> None:
    """A JSON:API list with a 20-digit id (past bigint: as_int overflowed) and a `created-at` with a
    time (parse_date dropped it): a text key mapped with to_string, the timestamp mapped as it is."""
    body = {
        "data": [
            {
                "id": 12345678901234567890,
                "type": "orders",
                "attributes": {"created-at": "2024-05-01T12:34:56Z", "day": "2024-05-01", "n": 3},
            }
        ]
    }
    api.route("/orders", Reply(200, json=body))
    assert cli.main(["new", "orders", "--url", f"{api.url}/orders"]) == 0
    source = config.load(project / "sources" / "orders.yaml")
    columns = {f.column: f.expression.text for f in source.writes[0].columns}
    assert columns["id"] == "to_string(record.id)"
    assert columns["created_at"] == 'record.attributes."created-at"'
    assert columns["day"] == "parse_date(record.attributes.day)"
    assert columns["n"] == "as_int(record.attributes.n)"


# route (tests/pagedapi.py) -> (pagination the scaffold writes, what its comment says was detected)
PAGED = {
    "link": ({"type": "link"}, 'detected a Link header with rel="next"'),
    "next-absolute": (
        {"type": "next_url", "next": "body.links.next"},
        "detected a next-page URL in the body (body.links.next, a URL)",
    ),
    "cursor-body?limit=10": (
        {
            "type": "cursor",
            "param": "cursor",
            "cursor": "body.response_metadata.next_cursor",
            "page_size": 10,
            "size_param": "limit",
        },
        "detected a next-page cursor in the body (body.response_metadata.next_cursor)",
    ),
    "cursor-header": (
        {"type": "cursor", "param": "page_token", "cursor": 'headers."x-next-page-token"'},
        "detected a next-page token in the x-next-page-token response header",
    ),
    "stripe": (
        {"type": "cursor", "param": "starting_after", "cursor": "body.data[-1].id", "has_more": "body.has_more"},
        "detected body.has_more and record ids",
    ),
    "offset-total?limit=10": (
        {"type": "offset", "param": "offset", "total": "body.total", "page_size": 10, "size_param": "limit"},
        "detected a total in the body (body.total)",
    ),
    "offset-total": (  # no size in the URL: the sample's page is the API's default size
        {"type": "offset", "param": "offset", "total": "body.total", "page_size": 10},
        "detected a total in the body (body.total)",
    ),
    # no total: a page or offset in the URL, or a size there the sample's page fills exactly
    "pages?per_page=7": (
        {"type": "page", "param": "page", "start": 1, "page_size": 7, "size_param": "per_page"},
        "detected per_page=7 in the URL, and the sample's 7 records fill that page",
    ),
    "offset?limit=7": (
        {"type": "offset", "param": "offset", "page_size": 7, "size_param": "limit"},
        "detected limit=7 in the URL, and the sample's 7 records fill that page",
    ),
    "pages?page=1": (
        {"type": "page", "param": "page", "start": 1, "page_size": 10},
        "detected page=1 in the URL",
    ),
    "offset?offset=0": (
        {"type": "offset", "param": "offset", "page_size": 10},
        "detected offset=0 in the URL",
    ),
    "pages-total?per_page=5": (
        {
            "type": "page",
            "param": "page",
            "start": 1,
            "total_pages": "body.meta.total_pages",
            "page_size": 5,
            "size_param": "per_page",
        },
        "detected a page count in the body (body.meta.total_pages)",
    ),
}


def _pagination(path: Path) -> dict[str, object]:
    """The `pagination:` mapping as written in the file (None when there is none)."""
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    block = loaded.get("pagination")
    assert block is None or isinstance(block, dict)
    return block or {}


@pytest.mark.parametrize("route", sorted(PAGED))
def test_a_list_endpoint_gets_the_pagination_its_reply_shows(project: Path, api: ApiServer, route: str) -> None:
    """The fetched reply's Link header, next URL, cursor (body or header), has_more + ids, page count
    or total make the matching pagination block, with a comment saying what was detected; the
    page size evident in the URL becomes page_size + size_param; the file validates."""
    pagedapi.install(api)
    assert cli.main(["new", "listing", "--url", f"{api.url}/{route}"]) == 0
    path = project / "sources" / "listing.yaml"
    assert cli.main(["validate", str(path)]) == 0
    expected, comment = PAGED[route]
    written = _pagination(path)
    assert {k: v for k, v in written.items() if k in expected or k in ("page_size", "size_param")} == expected
    assert f"# pagination: {comment}" in path.read_text()
    source = config.load(path)
    assert source.pagination is not None
    assert source.pagination.type == expected["type"]


def test_nothing_detected_says_the_source_reads_one_page(project: Path, api: ApiServer) -> None:
    """A bare list with no paging sign: no pagination block, and a comment saying so and how to add one."""
    api.route("/all", Reply(200, json=[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]))
    assert cli.main(["new", "listing", "--url", f"{api.url}/all"]) == 0
    path = project / "sources" / "listing.yaml"
    assert cli.main(["validate", str(path)]) == 0
    assert _pagination(path) == {}
    text = path.read_text()
    assert "# pagination: none detected in the sample, so this source reads ONE page (the first) only." in text
    assert "docs/reference.md#pagination" in text


def test_a_saved_sample_has_no_headers_but_its_body_still_tells(project: Path) -> None:
    """With --sample there are no headers to read; a body cursor is still found."""
    (project / "page.json").write_text(json.dumps({"items": STATIONS, "nextPageToken": "abc"}))
    assert cli.main(["new", "stations", "--url", "https://x/stations", "--sample", "page.json"]) == 0
    path = project / "sources" / "stations.yaml"
    assert _pagination(path) == {"type": "cursor", "param": "pageToken", "cursor": "body.nextPageToken"}


def _stripe_text(request: Recorded) -> Reply:
    """/stripe with has_more as the text "true"/"false", as some APIs send it."""
    size, after = int(request.query.get("limit", 10)), request.query.get("starting_after")
    start = 0 if after is None else int(after)  # ids are 1..23, in order
    more = "true" if start + size < len(pagedapi.ITEMS) else "false"
    return Reply(200, json={"object": "list", "data": pagedapi.ITEMS[start : start + size], "has_more": more})


def test_stripe_style_with_has_more_as_text(project: Path, api: ApiServer) -> None:
    """has_more: "true" (text, which the runtime reads too) is Stripe-style paging like a boolean."""
    api.route("/stripe-text", _stripe_text)
    assert cli.main(["new", "listing", "--url", f"{api.url}/stripe-text"]) == 0
    path = project / "sources" / "listing.yaml"
    assert cli.main(["validate", str(path)]) == 0
    written = _pagination(path)
    assert {k: written[k] for k in ("type", "param", "cursor", "has_more")} == {
        "type": "cursor",
        "param": "starting_after",
        "cursor": "body.data[-1].id",
        "has_more": "body.has_more",
    }


def test_a_list_source_is_told_to_dry_run_not_test_read(
    project: Path, api: ApiServer, db: Database, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--ids means nothing to a list source: the header comment and the success message point at
    `syncrun run FILE --dry-run`, which reads every page and writes nothing; a detail source keeps
    `test-read --ids`."""
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    pagedapi.install(api)
    assert cli.main(["new", "listing", "--url", f"{api.url}/link"]) == 0
    path = project / "sources" / "listing.yaml"
    out = capsys.readouterr().out
    steps = (
        "`syncrun validate sources/listing.yaml`; then create the listing table, `syncrun migrate"
        " sources/listing.yaml`, and `syncrun run sources/listing.yaml --dry-run` (reads every page, writes nothing)"
    )
    assert steps in out
    assert "--ids" not in out
    text = path.read_text()
    assert " ".join(line.removeprefix("# ") for line in text.splitlines()[:5]).count("--dry-run") == 1
    assert "--ids" not in text
    _fast(path)
    db.run("create table listing (id int primary key, name text)")
    assert cli.main(["migrate", str(path)]) == 0
    assert cli.main(["run", str(path), "--dry-run"]) == 0
    assert len(api.requests) == 1 + 3  # the sample, then every page
    assert db.rows("select count(*) from listing") == [(0,)]
    assert cli.main(["new", "games", "--url", "https://api.example.com/apps/{appid}", "--sample", "sample.json"]) == 0
    assert "`syncrun test-read sources/games.yaml --ids …`" in capsys.readouterr().out


def _fast(path: Path) -> None:
    path.write_text(
        path.read_text().replace("  requests: 1\n  per: 1s\n  burst: 1\n", "  requests: 1000\n  per: 1s\n  burst: 50\n")
    )


@pytest.mark.parametrize(
    ("route", "pages"),
    [
        ("link", 3),
        ("cursor-header", 3),
        ("stripe", 3),
        ("offset-total", 3),
        ("pages?per_page=7", 4),
        ("offset?limit=7", 4),
    ],
)
def test_a_scaffolded_list_source_reads_every_page(
    project: Path, api: ApiServer, db: Database, monkeypatch: pytest.MonkeyPatch, route: str, pages: int
) -> None:
    """End to end: the scaffolded source, migrated and run against real PostgreSQL, writes all 23
    items, not the first page's, and its job completes."""
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    pagedapi.install(api)
    assert cli.main(["new", "listing", "--url", f"{api.url}/{route}"]) == 0
    path = project / "sources" / "listing.yaml"
    _fast(path)
    assert cli.main(["migrate", str(path)]) == 0
    db.run("create table listing (id int primary key, name text)")
    assert cli.main(["run", str(path)]) == 0
    assert db.rows("select id, name from listing order by id") == [(i["id"], i["name"]) for i in pagedapi.ITEMS]
    assert db.rows("select status from sync_jobs where job_type = 'listing'") == [("completed",)]
    assert len(api.requests) == 1 + pages  # the sample, then every page (the last one short)


# --- auth and incremental starters (runner/starters.py) ------------------------------------------------------
BEARER = "sekret-Tok3n-Zq8mW2xK7pL4"


def test_a_bearer_header_becomes_an_auth_block_and_fetches_the_sample(
    project: Path, api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--header 'Authorization: Bearer …'` (curl's form) is sent to fetch the sample from an API that
    demands it, and written as an auth: bearer block reading ${secret.TICKETS_TOKEN}: the token itself is
    in no file and no output. A harmless header is kept as written; any other one becomes a secret too."""

    def tickets(request: Recorded) -> Reply:
        if request.headers.get("authorization") != f"Bearer {BEARER}" or request.headers.get("x-tenant") != "acme":
            return Reply(401, json={"error": "invalid_token"})
        return Reply(200, json={"tickets": [{"id": 1, "subject": "s", "updated_at": "2026-03-02T15:05:00Z"}]})

    api.route("/tickets", tickets)
    args = ["new", "tickets", "--url", f"{api.url}/tickets", "--header", f"Authorization: Bearer {BEARER}"]
    assert cli.main([*args, "--header", "Accept: application/json", "--header", "X-Tenant: acme"]) == 0
    out = capsys.readouterr().out
    assert "it reads the secrets TICKETS_TOKEN, TICKETS_X_TENANT: set them before running" in out
    path = project / "sources" / "tickets.yaml"
    text = path.read_text()
    assert "auth:                               # inferred from your --header Authorization: Bearer …" in text
    assert '  type: bearer\n  token: "${secret.TICKETS_TOKEN}"\n' in text
    assert '    Accept: "application/json"\n    X-Tenant: "${secret.TICKETS_X_TENANT}"\n' in text
    assert "# incremental:" in text
    assert "#   cursor: record.updated_at" in text
    assert BEARER[:8] not in text + out
    assert "acme" not in text
    assert cli.main(["validate", str(path)]) == 0
    source = config.load(path)
    assert source.auth is not None
    assert source.auth.type is spec.AuthType.BEARER


@pytest.mark.parametrize(
    ("args", "kind", "secrets"),
    [
        (["--header", "Authorization: Basic c3luYzpwdw=="], "basic", ["GAMES_PASSWORD"]),
        (["--header", "X-Api-Key: k-7Hd93Jd8"], "api_key", ["GAMES_API_KEY"]),
        (["--auth", "bearer"], "bearer", ["GAMES_TOKEN"]),
        (["--auth", "api_key"], "api_key", ["GAMES_API_KEY"]),
        (["--auth", "basic"], "basic", ["GAMES_PASSWORD"]),
        (["--auth", "oauth2_client_credentials"], "oauth2_client_credentials", ["GAMES_CLIENT_SECRET"]),
        (["--auth", "oauth2_refresh_token"], "oauth2_refresh_token", ["GAMES_REFRESH_TOKEN"]),
        (  # --auth wins; the Authorization header only fetched the sample (auth: sets it)
            ["--auth", "oauth2_client_credentials", "--header", "Authorization: Bearer x-9Kd8s7Hd"],
            "oauth2_client_credentials",
            ["GAMES_CLIENT_SECRET"],
        ),
        # another scheme (Django REST's `Token …`): the whole header value becomes a secret
        (["--header", "Authorization: Token t-8Jd7s6Hq"], None, ["GAMES_AUTHORIZATION"]),
    ],
)
def test_each_auth_kind_gets_a_starter_that_validates(
    project: Path, args: list[str], kind: str | None, secrets: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A starter block per kind, inferred or asked for with --auth: valid as written, its credentials
    ${secret.*} placeholders; no value given on the command line is written."""
    url = "https://api.example.com/apps/{appid}"
    assert cli.main(["new", "games", "--url", url, "--sample", "sample.json", *args]) == 0
    path = project / "sources" / "games.yaml"
    text = path.read_text()
    assert cli.main(["validate", str(path)]) == 0
    auth = config.load(path).auth
    assert (auth.type.value if auth else None) == kind
    assert f"it reads the secrets {', '.join(secrets)}" in capsys.readouterr().out
    for value in ("c3luYzpwdw", "k-7Hd93Jd8", "x-9Kd8s7Hd", "t-8Jd7s6Hq"):
        assert value not in text
    assert "# incremental:" not in text  # a per-entity source: no incremental starter


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--auth", "oauth"], "--auth 'oauth': one of bearer, api_key, basic, oauth2_client_credentials"),
        (["--header", "Authorization Bearer x"], "--header #1: write it as curl does"),
        (["--header", "Accept:"], "write it as curl does, 'Name: value' on one line"),
    ],
)
def test_bad_auth_arguments_say_what_to_do(
    project: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "https://api.example.com/apps/{appid}"
    assert cli.main(["new", "games", "--url", url, "--sample", "sample.json", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (project / "sources" / "games.yaml").exists()


def test_values_the_sample_echoes_never_reach_the_file(
    project: Path, api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """An endpoint that answers with the request's headers and query (httpbin's /anything, a `/me` that
    returns the key): the example comments (`# e.g. "…"`) show `***`, and no 8-character piece of any
    header value or of the URL's key is in the file or any output. The key parameter of --url becomes
    an api_key block in the query (the sample was fetched with it), a second one a request.query
    secret; the file validates."""
    from tests.test_security import planted_leaks

    bearer, cookie, trace, key, sig = (
        "STATICtok-1234567890abcdef",
        "sid=COOKIEsecret-77777777zz",
        "TRACEsecret-5555aaaa",
        "APIKEYsecret-abcdef123456",
        "SIGsecret-9f8e7d6c5b4a",
    )

    def echo(request: Recorded) -> Reply:
        if request.query.get("api_key") != key:
            return Reply(401, json={"error": "no key"})
        seen = {name: request.headers.get(name.lower()) for name in ("Authorization", "Cookie", "X-Trace-Id")}
        return Reply(200, json=[{"id": 1, "headers": seen, "query": request.query, "note": f"key={key[2:12]}"}])

    api.route("/echo", echo)
    url = f"{api.url}/echo?api_key={key}&cc=us&sig={sig}"
    args = ["new", "tkb", "--url", url, "--header", f"Authorization: Bearer {bearer}", "--header", f"Cookie: {cookie}"]
    assert cli.main([*args, "--header", f"X-Trace-Id: {trace}"]) == 0
    captured = capsys.readouterr()
    path = project / "sources" / "tkb.yaml"
    text = path.read_text()
    assert 'e.g. "Bearer ***"' in text
    assert not planted_leaks([text, captured.out, captured.err], [bearer, cookie, trace, key, sig])
    assert f"url: {api.url}/echo?cc=us\n" in text
    assert '"sig": "${secret.TKB_SIG}"' in text
    assert cli.main(["validate", str(path)]) == 0
    source = config.load(path)
    assert source.auth is not None
    assert source.auth.type is spec.AuthType.BEARER  # the Authorization header wins; the key goes to query
    assert "TKB_API_KEY" in captured.out


def test_a_key_in_the_url_alone_becomes_an_api_key_block_in_the_query(project: Path) -> None:
    key = "k-Pq8Wm3Zx7Lt2"
    url = "https://api.example.com/apps/{appid}?key=" + key + "&l=en"
    assert cli.main(["new", "games", "--url", url, "--sample", "sample.json"]) == 0
    path = project / "sources" / "games.yaml"
    text = path.read_text()
    assert key[:8] not in text
    assert key[-8:] not in text
    auth = config.load(path).auth
    assert auth is not None
    assert auth.type is spec.AuthType.API_KEY
    assert auth.in_ is spec.KeyIn.QUERY
    assert auth.name == "key"
    assert cli.main(["validate", str(path)]) == 0


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("X-Api-Key: APIKEYsecret-abcdef123456\n", "--header 'X-Api-Key': write it as curl does"),
        ("APIKEYsecret-abcdef123456", "--header #1: write it as curl does"),
        ("X-Api-Key: APIKEYsécret-abcdef123456", "--header 'X-Api-Key': its value contains a non-ASCII"),
    ],
)
def test_a_bad_header_exits_2_quoting_nothing_of_its_value(
    project: Path, header: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "https://api.example.com/apps/{appid}"
    assert cli.main(["new", "games", "--url", url, "--header", header, "--id", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "APIK" not in err
    assert "secret" not in err


def test_a_url_urllib_cannot_split_exits_2(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`http://[::1/x` (an unclosed IPv6 bracket) was a ValueError from urlsplit: exit 70."""
    assert cli.main(["new", "v6", "--url", "http://[::1/x?api_key=SeCrEtApIkEy123", "--id", "1"]) == 2
    err = capsys.readouterr().err
    assert "--url is not a URL" in err
    assert "SeCrEtAp" not in err


def test_the_written_url_keeps_a_cursor_param_as_the_first_cursor() -> None:
    """review revK F1: `syncrun new --url …/cur?cursor=*` wrote the URL without `cursor=*`, and the
    API refused the first page; a page block's `param` still leaves (pagination.start says it)."""
    cursor = "pagination:\n  type: cursor\n  param: cursor\n  size_param: limit\n"
    assert pageguess.paged_url("http://h/cur?cursor=*&limit=5&q=x", cursor) == "http://h/cur?cursor=*&q=x"
    page = "pagination:\n  type: page\n  param: page\n"
    assert pageguess.paged_url("http://h/list?page=1&q=x", page) == "http://h/list?q=x"
