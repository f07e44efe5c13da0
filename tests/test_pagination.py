"""pagination: every style against tests/pagedapi.py on a real loopback server, through `syncrun run`
into a real PostgreSQL. Each style's source reaches exactly the API's rows; each deliberately broken
source fails naming its expression, and never reports a partial listing as complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import cli, pagination
from tests import pagedapi
from tests.apiserver import ApiServer, Recorded, Reply
from tests.pg import Database

TABLES = """
create table items (id int primary key, name text);
create table comments (id int primary key, ticket int not null, body text);
"""

LIST_SOURCE = """\
name: {name}
entities: {{type: list}}
request:
  url: "${{env.API_URL}}/{route}"
  headers: {{Authorization: "Bearer ${{secret.API_TOKEN}}"}}
pagination: {pagination}
rate_limit: {{requests: 1000, per: 1s, burst: 50}}
retry: {{attempts: 3, initial: 10ms, max_delay: 20ms}}
records: {records}
writes:
  - table: items
    key: [id]
    columns: {{id: record.id, name: record.name}}
status: false
concurrency: 1
write_batch: 1
"""

# style -> (route, pagination, records): one working source per style of tests/pagedapi.py
STYLES = {
    "link": ("link", "{type: link}", "body"),
    "link_split": ("link-split?per_page=7", "{type: link, page_size: 7}", "body.data"),
    "next_absolute": ("next-absolute", "{type: next_url, next: body.links.next, page_size: 10}", "body.data"),
    "next_relative": ("next-relative", "{type: next_url, next: body.next_page}", "body.data"),
    "cursor_body": (
        "cursor-body",
        "{type: cursor, param: cursor, cursor: body.response_metadata.next_cursor, page_size: 10, size_param: limit}",
        "body.members",
    ),
    "cursor_header": (
        "cursor-header",
        "{type: cursor, param: page_token, cursor: 'headers.\"x-next-page-token\"'}",
        "body.results",
    ),
    "stripe": (
        "stripe",
        "{type: cursor, param: starting_after, cursor: 'body.data[-1].id', has_more: body.has_more}",
        "body.data",
    ),
    "offset_total": (
        "offset-total",
        "{type: offset, param: offset, page_size: 10, size_param: limit, total: body.total}",
        "body.results",
    ),
    "offset": ("offset", "{type: offset, param: offset, page_size: 5, size_param: limit}", "body"),
    "pages_total": (
        "pages-total",
        "{type: page, param: page, start: 1, total_pages: body.meta.total_pages}",
        "body.items",
    ),
    "pages": ("pages", "{type: page, param: page, start: 1, page_size: 10}", "body"),
}

# style -> (route, pagination, records, what the failure names): the source's expression is wrong
# (or, for link, the API drops its rel="next"), so the API says there is more and nothing leads there.
BROKEN = {
    "link": ("link-broken", "{type: link}", "body", 'the Link header has rel="last"'),
    "next_url": (
        "next-absolute",
        "{type: next_url, next: body.links.nxt, page_size: 10}",
        "body.data",
        "the page is full (10 items, page_size 10) but next (body.links.nxt) gave nothing",
    ),
    "cursor_body": (
        "cursor-body",
        "{type: cursor, param: cursor, cursor: body.next_cursor, page_size: 10}",
        "body.members",
        "but cursor (body.next_cursor) gave nothing",
    ),
    "cursor_header": (
        "cursor-header",
        "{type: cursor, param: page_token, cursor: 'headers.\"x-next-token\"', page_size: 10}",
        "body.results",
        'but cursor (headers."x-next-token") gave nothing',
    ),
    "stripe": (
        "stripe",
        "{type: cursor, param: starting_after, cursor: 'body.data[-1].ID', has_more: body.has_more}",
        "body.data",
        "has_more (body.has_more) is true but cursor (body.data[-1].ID) gave nothing",
    ),
    "offset_total": (
        "offset-total",
        "{type: offset, param: offset, page_size: 10, size_param: limit, total: body.count}",
        "body.results",
        "pagination.total (body.count) gave nothing",
    ),
    "pages_total": (
        "pages-total",
        "{type: page, param: page, start: 1, total_pages: body.meta.pages}",
        "body.items",
        "pagination.total_pages (body.meta.pages) gave nothing",
    ),
}


@pytest.fixture
def env(db: Database, api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("API_URL", api.url)
    monkeypatch.setenv("API_TOKEN", "s3cr3t-token-value")
    pagedapi.install(api)
    return db


def list_source(tmp: Path, name: str, route: str, pagination: str, records: str) -> Path:
    file = tmp / f"{name}.yaml"
    file.write_text(LIST_SOURCE.format(name=name, route=route, pagination=pagination, records=records))
    assert cli.main(["validate", str(file)]) == 0
    return file


def prepare(db: Database, *sources: Path) -> None:
    assert cli.main(["migrate", *map(str, sources)]) == 0
    db.run(TABLES)


def job(db: Database, name: str) -> tuple[str, str | None]:
    ((status, error),) = db.rows("select status, error_message from sync_jobs where job_type = %s", (name,))
    return status, error


@pytest.mark.parametrize("style", sorted(STYLES))
def test_each_style_reaches_exactly_the_apis_rows(style: str, env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A list source of each style writes every item once, completes, and clears its checkpoint."""
    route, pagination, records = STYLES[style]
    source = list_source(tmp_path, style, route, pagination, records)
    prepare(env, source)
    assert cli.main(["run", str(source)]) == 0
    assert env.rows("select id, name from items order by id") == [(i["id"], i["name"]) for i in pagedapi.ITEMS]
    assert job(env, style) == ("completed", None)
    assert env.scalar("select count(*) from syncrun_cursors") == 0
    assert all(r.headers["authorization"] == "Bearer s3cr3t-token-value" for r in api.requests)


@pytest.mark.parametrize("style", sorted(BROKEN))
def test_a_broken_source_fails_naming_its_expression(
    style: str, env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The API says there is more, the source's next-page expression finds nothing: the run fails
    (exit 1) naming the expression, and the listing is not reported complete."""
    route, pagination, records, named = BROKEN[style]
    source = list_source(tmp_path, f"broken_{style}", route, pagination, records)
    prepare(env, source)
    assert cli.main(["run", str(source)]) == 1
    status, error = job(env, f"broken_{style}")
    assert status == "failed"
    assert error is not None
    assert named in error
    assert env.scalar("select count(*) from items") < len(pagedapi.ITEMS)
    assert "s3cr3t" not in capsys.readouterr().err


def test_missing_next_end_takes_the_condition_as_the_end(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """`missing_next: end` declares that a full page without a next link ends this API's listings."""
    pagination = "{type: next_url, next: body.links.nxt, page_size: 10, missing_next: end}"
    source = list_source(tmp_path, "declared", "next-absolute", pagination, "body.data")
    prepare(env, source)
    assert cli.main(["run", str(source)]) == 0
    assert env.scalar("select count(*) from items") == 10
    assert job(env, "declared") == ("completed", None)


@pytest.mark.parametrize(("cap", "written", "resume"), [("max_pages: 2", 20, 3), ("max_items: 15", 15, 2)])
def test_a_cap_stops_the_listing_and_keeps_it_incomplete(
    cap: str, written: int, resume: int, env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """max_pages reads whole pages up to the cap; max_items writes exactly that many records, cutting the
    page it falls in, which the checkpoint then points at (read again from its start, so no record of it
    is skipped). The listing is not complete: an after-step `when: complete` does not run."""
    source = list_source(tmp_path, "capped", "link", f"{{type: link, {cap}}}", "body")
    source.write_text(source.read_text() + "after:\n  - {when: complete, sql: 'delete from items'}\n")
    prepare(env, source)
    assert cli.main(["run", str(source)]) == 0
    assert env.scalar("select count(*) from items") == written
    assert env.rows("select items_processed, items_succeeded, items_created, metadata->>'pages' from sync_jobs") == [
        (written, written, written, "2")
    ]
    position = f"{api.url}/link?per_page=10&page={resume}"
    assert env.scalar("select cursor->>'position' from syncrun_cursors") == position
    assert cli.main(["run", str(source)]) == 0  # resumes at page 3, reads to the end: complete
    assert [r.query.get("page") for r in api.requests][-1] == "3"
    assert env.scalar("select count(*) from items") == 0  # the after-step ran this time


def test_a_cap_below_the_page_size_fails_the_run_that_cannot_get_past_it(
    env: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """review revK F8: BATCH_SIZE 5 on a listing of 10-record pages cut page 1 in every run, each
    resumed at page 1's start again and reported `completed`: the listing never got past it. The first
    such run (a smoke run) writes its 5 and warns; the next one, resuming there with the same cap, fails
    before writing, naming the setting; so does a cap cutting the page a run resumes at later on.
    --restart reads the first records again."""
    source = list_source(tmp_path, "stuck", "link", "{type: link}", "body")
    prepare(env, source)
    monkeypatch.setenv("BATCH_SIZE", "5")
    assert cli.main(["run", str(source)]) == 0
    err = capsys.readouterr().err
    assert "stuck: this run's record cap (--limit, --batch-size or BATCH_SIZE: 5) cut the first page" in err
    assert "listing not complete: max_items 5 reached; resumes at its first page\n" in err
    assert env.scalar("select count(*) from items") == 5
    assert cli.main(["run", str(source)]) == 1
    status, error = env.rows("select status, error_message from sync_jobs order by started_at")[-1]
    said = (
        "stuck: this run's record cap (--limit, --batch-size or BATCH_SIZE: 5) cut page 1 of the listing, the"
        " first page this run read (where it resumed), before its end: a capped listing resumes at the start"
        " of the page it cut"
    )
    assert (status, (error or "").startswith(said)) == ("failed", True)
    assert said in capsys.readouterr().err
    assert env.scalar("select count(*) from items") == 5
    assert cli.main(["run", str(source), "--restart"]) == 0  # a smoke run again
    monkeypatch.delenv("BATCH_SIZE")
    assert cli.main(["run", str(source), "--limit", "15"]) == 0  # page 2 cut: resumes there
    assert cli.main(["run", str(source), "--limit", "5"]) == 1
    assert "cut page 2 of the listing, the first page this run read" in capsys.readouterr().err
    assert cli.main(["run", str(source)]) == 0
    assert env.scalar("select count(*) from items") == len(pagedapi.ITEMS)


def test_a_cap_cutting_the_page_an_uncapped_run_failed_at_is_a_first_cut(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """review revM L2: an uncapped run failed at page 3 (HTTP 500) and checkpointed it; a run with
    --limit 2 resuming there failed ("every run would write the same records") though no cap had cut
    that page yet. It is a first cut: it writes 2 of its 3 records, warns and keeps a checkpoint marked
    cut; the next run cutting that page again fails before writing."""
    source = list_source(tmp_path, "broke", "link", "{type: link}", "body")
    prepare(env, source)
    failing = {"on": True}
    api.route(
        "/link",
        lambda r: Reply(500) if failing["on"] and r.query.get("page") == "3" else pagedapi.link_page(api, r),
    )
    assert cli.main(["run", str(source)]) == 1
    assert env.scalar("select count(*) from items") == 20
    capsys.readouterr()
    failing["on"] = False
    assert cli.main(["run", str(source), "--limit", "2"]) == 0
    assert "broke: this run's record cap (--limit, --batch-size or BATCH_SIZE: 2) cut the first page" in (
        capsys.readouterr().err
    )
    assert env.scalar("select count(*) from items") == 22
    assert cli.main(["run", str(source), "--limit", "2"]) == 1
    assert "cut page 3 of the listing, the first page this run read (where it resumed)" in capsys.readouterr().err
    assert env.scalar("select count(*) from items") == 22
    assert cli.main(["run", str(source)]) == 0
    assert env.scalar("select count(*) from items") == len(pagedapi.ITEMS)


def test_a_cursor_no_checkpoint_can_hold_fails_the_listing_before_its_page_is_written(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """review revM L3: a cursor holding \\u0000 failed the run with a multi-line database error after
    page 1's rows committed but not its checkpoint, and every later run did the same (jsonb refuses
    \\u0000). Now the listing fails naming the cursor, in one line, before anything of that page is
    written, and nothing is checkpointed."""
    source = list_source(tmp_path, "nul", "nul", "{type: cursor, param: cursor, cursor: body.next}", "body.items")
    prepare(env, source)
    last = Reply(200, json={"items": [{"id": 2, "name": "b"}], "next": None})
    api.route(
        "/nul", lambda r: last if "cursor" in r.query else Reply(200, json={"items": [{"id": 1}], "next": "a\u0000b"})
    )
    assert cli.main(["run", str(source)]) == 1
    status, error = job(env, "nul")
    said = 'pagination.cursor (body.next) gave a cursor holding a NUL character (\\u0000), "a\\u0000b", on http'
    assert (status, (error or "").startswith(said), "\n" in (error or "")) == ("failed", True, False)
    assert said in capsys.readouterr().err
    assert len(api.requests) == 1
    assert env.scalar("select count(*) from items") == 0
    assert env.scalar("select count(*) from syncrun_cursors") == 0


def _starred(request: Recorded) -> Reply:
    """A cursor listing that starts at `cursor=*` (Crossref, Solr) and reads `ids` as a list."""
    assert request.query.get("ids") == "a,b"
    cursor = request.query.get("cursor")
    offset = 0 if cursor == "*" else pagedapi._offset(cursor)
    more = offset + 10 < len(pagedapi.ITEMS)
    return Reply(
        200, json={"items": pagedapi.ITEMS[offset : offset + 10], "next": pagedapi.token(offset + 10) if more else None}
    )


@pytest.mark.parametrize(
    ("route", "query", "first"),
    [
        ("starred?cursor=*&ids=a,b", "", "/starred?cursor=*&ids=a,b&limit=10"),
        ("starred?ids=a,b", "query: {cursor: '*'}\n", "/starred?ids=a,b&cursor=*&limit=10"),
    ],
)
def test_a_first_cursor_goes_out_as_written_in_the_url_or_the_query(
    route: str, query: str, first: str, env: Database, api: ApiServer, tmp_path: Path
) -> None:
    """review revL F3: a first cursor `*` in request.query went out as `cursor=%2A`, written in the URL
    as `cursor=*` (and that one became %2A too once a size_param was added, as did the URL's own
    `ids=a,b` from page 2 on). Both go out literally, as the URL writes them: the raw request line."""
    source = list_source(
        tmp_path,
        "starred",
        route,
        "{type: cursor, param: cursor, cursor: body.next, page_size: 10, size_param: limit}",
        "body.items",
    )
    source.write_text(source.read_text().replace("  headers:", f"  {query}  headers:" if query else "  headers:"))
    prepare(env, source)
    api.route("/starred", _starred)
    assert cli.main(["run", str(source)]) == 0
    targets = [r.target for r in api.requests]
    assert targets[0] == first
    assert all("ids=a,b&" in target or target.endswith("ids=a,b") for target in targets)
    assert len(targets) == 3
    assert env.scalar("select count(*) from items") == len(pagedapi.ITEMS)


def test_a_failed_page_fails_the_run_and_resumes_there(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Page 2 keeps answering 503: the run fails (a listing that stopped early is never completed),
    page 1 is kept and checkpointed, and the next run resumes at page 2. The warning names the page
    as the summary does (review revJ F7: `flaky 1 failed` beside `page 2 of the listing failed`)."""
    source = list_source(tmp_path, "flaky", "link", "{type: link}", "body")
    prepare(env, source)
    api.route("/link", lambda r: Reply(503) if r.query.get("page") == "2" else pagedapi.link_page(api, r))
    assert cli.main(["run", str(source)]) == 1
    status, error = job(env, "flaky")
    assert status == "failed"
    assert error is not None
    assert error.startswith("page 2 of the listing failed: gave up after 3 attempts: HTTP 503")
    err = capsys.readouterr().err
    assert "warning flaky page 2 failed: gave up after 3 attempts: HTTP 503" in err
    assert "page 2 of the listing failed: gave up after 3 attempts: HTTP 503" in err
    assert env.scalar("select count(*) from items") == 10
    api.route("/link", lambda r: pagedapi.link_page(api, r))
    assert cli.main(["run", str(source)]) == 0
    assert [r.query.get("page") for r in api.requests][-2:] == ["2", "3"]
    assert env.scalar("select count(*) from items") == len(pagedapi.ITEMS)


def test_a_checkpoint_of_another_pagination_type_is_refused(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """The source moved from cursors to page numbers: the old checkpoint is no page; --restart helps."""
    source = list_source(tmp_path, "moved", "pages", "{type: page, param: page, start: 1, page_size: 10}", "body")
    prepare(env, source)
    env.run("insert into syncrun_cursors (source, cursor) values ('moved', '\"abc\"')")
    assert cli.main(["run", str(source)]) == 1
    assert job(env, "moved") == (
        "failed",
        "the checkpoint 'abc' is not a page position (was the pagination changed?); run with --restart to start over",
    )
    assert api.requests == []
    assert cli.main(["run", str(source), "--restart"]) == 0
    assert env.scalar("select count(*) from items") == len(pagedapi.ITEMS)


# --- per-entity listings ------------------------------------------------------------------------------
ENTITY_SOURCE = """\
name: {name}
entities: {{key: ticket, columns: {{ticket: int}}}}
request:
  url: "${{env.API_URL}}/tickets/{{ticket}}/comments"
  headers: {{Authorization: "Bearer ${{secret.API_TOKEN}}"}}
pagination: {pagination}
rate_limit: {{requests: 1000, per: 1s, burst: 50}}
retry: {{attempts: 2, initial: 10ms, max_delay: 20ms}}
records: body.comments
writes:
  - table: comments
    key: [id]
    columns: {{id: record.id, ticket: entity.ticket, body: record.body}}
status: {{table: sync_status, key: ticket}}
"""


def ticket_source(tmp: Path, name: str, pagination: str) -> Path:
    (tmp / "syncrun.yaml").write_text("status: {table: sync_status, key: ticket}\nentities: {key: ticket}\n")
    file = tmp / f"{name}.yaml"
    file.write_text(ENTITY_SOURCE.format(name=name, pagination=pagination))
    return file


def seed_tickets(db: Database, source: Path) -> None:
    prepare(db, source)
    db.run("insert into sync_status (ticket) values (1), (2), (3), (4)")


def test_an_entitys_pages_go_in_together_with_its_stamp(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """Per-entity paging: every comment of every ticket, over as many pages as each has."""
    source = ticket_source(
        tmp_path, "comments", "{type: cursor, param: page_token, cursor: 'headers.\"x-next-page-token\"'}"
    )
    seed_tickets(env, source)
    assert cli.main(["run", str(source)]) == 0
    counts = env.rows("select ticket, count(*) from comments group by ticket order by ticket")
    assert counts == [(t, n) for t, n in pagedapi.COMMENTS.items() if n]
    assert env.scalar("select count(*) from sync_status where last_comments_sync is not null") == 4
    assert len(api.requests) == 1 + 3 + 1 + 1


def test_a_failed_later_page_writes_none_of_the_entitys_rows(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """Page 3 of ticket 2 fails after its retries: none of its pages' rows go in, it is not stamped."""
    source = ticket_source(
        tmp_path, "comments", "{type: cursor, param: page_token, cursor: 'headers.\"x-next-page-token\"'}"
    )
    seed_tickets(env, source)
    third = pagedapi.token(20)
    normal = pagedapi.comments_page
    api.route("/tickets/2/comments", lambda r: Reply(503) if r.query.get("page_token") == third else normal(r))
    assert cli.main(["run", str(source)]) == 0
    assert env.scalar("select count(*) from comments where ticket = 2") == 0
    assert env.rows("select ticket from sync_status where last_comments_sync is null") == [(2,)]
    (error,) = env.rows("select last_error_message from sync_status where ticket = 2")[0]
    assert "gave up after 2 attempts" in error


def test_a_broken_entity_listing_fails_that_entity(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A wrong header name with page_size: tickets whose first page is full fail naming the expression;
    the others succeed."""
    pagination = "{type: cursor, param: page_token, cursor: 'headers.\"x-next-token\"', page_size: 10}"
    source = ticket_source(tmp_path, "comments", pagination)
    seed_tickets(env, source)
    assert cli.main(["run", str(source)]) == 0  # 2 of 4 failed: not above the default fail_ratio 0.5
    failed = env.rows("select ticket, last_error_message from sync_status where last_error_message is not null")
    assert [t for t, _ in failed] == [2, 3]
    assert all('cursor (headers."x-next-token") gave nothing' in message for _, message in failed)
    assert env.rows("select distinct ticket from comments order by 1") == [(1,)]


def test_a_paged_list_feeds_a_detail_source(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """The tutorial's shape: a list source creates a status row per ticket; the detail source then
    reads every ticket's paged comments."""
    detail = ticket_source(
        tmp_path, "comments", "{type: cursor, param: page_token, cursor: 'headers.\"x-next-page-token\"'}"
    )
    listing = tmp_path / "tickets.yaml"
    listing.write_text(
        "name: tickets\nentities: {type: list}\nrequest: {url: '${env.API_URL}/tickets'}\npagination: {type: link}\n"
        "rate_limit: {requests: 100, per: 1s}\nrecords: body.tickets\nstatus: false\n"
        "writes: [{table: sync_status, key: [ticket], mode: insert, columns: {ticket: record.id}}]\n"
    )
    prepare(env, detail, listing)
    assert cli.main(["run", str(listing)]) == 0
    assert env.rows("select ticket from sync_status order by 1") == [(t,) for t in sorted(pagedapi.COMMENTS)]
    assert cli.main(["run", str(detail)]) == 0
    assert env.scalar("select count(*) from comments") == sum(pagedapi.COMMENTS.values())


def test_a_capped_entity_listing_succeeds_but_the_run_is_not_complete(
    env: Database,
    api: ApiServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """max_pages on an entity's listing: the pages read go in, and `when: complete` after-steps skip.
    The cap is visible: the summary line, the job's metadata, a log line for the entity, test-read."""
    pagination = "{type: cursor, param: page_token, cursor: 'headers.\"x-next-page-token\"', max_pages: 2}"
    source = ticket_source(tmp_path, "comments", pagination)
    source.write_text(source.read_text() + "after:\n  - {when: complete, sql: 'delete from comments'}\n")
    seed_tickets(env, source)
    assert cli.main(["run", str(source)]) == 0
    assert env.scalar("select count(*) from comments where ticket = 2") == 20
    assert env.scalar("select count(*) from sync_status where last_comments_sync is not null") == 4
    err = capsys.readouterr().err
    assert "; 1 entity listing capped (not complete)" in err
    assert env.scalar("select metadata from sync_jobs where job_type = 'comments'") == {"capped_entities": 1}
    capped = [line for line in err.splitlines() if "was capped" in line]
    assert len(capped) == 1
    assert capped[0].endswith(
        "comments: the listing of ticket=2 was capped (max_pages 2 reached): not complete, its pages beyond the"
        " cap were not read"
    )
    assert cli.main(["test-read", str(source), "--ids", "2,3"]) == 0
    out = capsys.readouterr().out
    assert out.count("  capped    max_pages 2 reached: the listing has more pages, not read") == 1
    assert "comments: 1 entity listing capped (not complete)" in out


# --- what a list source's page may be, and when its listing is complete ----------------------------------
CLEANUP = "after:\n  - {when: complete, sql: 'delete from items'}\n"


@pytest.mark.parametrize("page", ["1", "2"])
def test_a_page_a_default_rule_skips_fails_the_listing(
    page: str, env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 404 (the default rules' skip) is no page and no end: the run fails naming URL and status, and
    the `when: complete` cleanup never runs (a typo'd URL used to wipe the table)."""
    source = list_source(tmp_path, "typo", "link", "{type: link}", "body")
    source.write_text(source.read_text() + CLEANUP)
    prepare(env, source)
    env.run("insert into items values (100, 'kept')")
    api.route("/link", lambda r: Reply(404) if r.query.get("page", "1") == page else pagedapi.link_page(api, r))
    assert cli.main(["run", str(source)]) == 1
    status, error = job(env, "typo")
    assert status == "failed"
    assert error is not None
    assert error.startswith(f"page {page} of the listing failed: HTTP 404 from {api.url}/link")
    assert "the default outcome rule 'default 404' files it as skip" in error
    assert env.scalar("select count(*) from items where id = 100") == 1
    assert env.scalar("select count(*) from items") == (1 if page == "1" else 11)
    assert "typo: failed — processed" in capsys.readouterr().err


def test_a_skip_rule_of_the_source_ends_the_listing(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """The source declares how its listing ends (an outcome rule of its own, as SteamSpy's): complete."""
    source = list_source(tmp_path, "ends", "link", "{type: link}", "body")
    rule = "outcomes:\n  - {name: past the end, when: 'status == `404`', outcome: skip}\n"
    source.write_text(source.read_text() + rule + CLEANUP)
    prepare(env, source)
    api.route("/link", lambda r: Reply(404) if r.query.get("page") == "3" else pagedapi.link_page(api, r))
    assert cli.main(["run", str(source)]) == 0
    assert job(env, "ends") == ("completed", None)
    assert env.scalar("select count(*) from items") == 0  # the cleanup ran: the listing is complete


def test_a_next_url_that_is_a_number_is_an_error(env: Database, api: ApiServer, tmp_path: Path) -> None:
    source = list_source(tmp_path, "numeric", "numeric", "{type: next_url, next: body.next}", "body.data")
    prepare(env, source)
    api.route("/numeric", Reply(200, json={"data": pagedapi.ITEMS[:3], "next": 12345}))
    assert cli.main(["run", str(source)]) == 1
    _, error = job(env, "numeric")
    assert error is not None
    assert error.startswith("pagination.next (body.next) gave int 12345, not a URL")
    assert len(api.requests) == 1


@pytest.mark.parametrize("next_url", ["http://xn--zz/items", "http://xn--a.com/x"])
def test_a_next_url_with_a_host_idna_refuses_is_an_error(
    env: Database, api: ApiServer, tmp_path: Path, next_url: str
) -> None:
    """Review revK F3: an API's next link to an `xn--` host idna cannot read raised out of the run
    (a traceback, exit 70); it is the listing's error, as any URL that is no URL."""
    source = list_source(tmp_path, "idna", "idna", "{type: next_url, next: body.next}", "body.data")
    prepare(env, source)
    api.route("/idna", Reply(200, json={"data": pagedapi.ITEMS[:3], "next": next_url}))
    assert cli.main(["run", str(source)]) == 1
    _, error = job(env, "idna")
    assert error is not None
    assert "is not a URL" in error
    assert len(api.requests) == 1


def test_a_listing_over_capped_runs_cleans_up_with_its_own_start(
    env: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """max_pages 1 over three pages: three runs read one page each. Each capped run says the listing is
    not complete (summary line, job metadata) and exits 0; when the third completes it, the cleanup's
    %(started_at)s is the first run's start, so it removes only rows no run of this listing saw."""
    source = list_source(tmp_path, "slow", "link", "{type: link, max_pages: 1}", "body")
    text = source.read_text().replace("name: record.name}", "name: record.name, seen_at: run.started_at}")
    source.write_text(text + "after:\n  - {when: complete, sql: 'delete from items where seen_at < %(started_at)s'}\n")
    prepare(env, source)
    env.run("alter table items add column seen_at timestamptz")
    env.run("insert into items values (100, 'gone', '2000-01-01')")
    for run, resumes in ((1, 2), (2, 3)):
        assert cli.main(["run", str(source)]) == 0
        err = capsys.readouterr().err
        assert f"; listing not complete: max_pages 1 reached; resumes at page {resumes} (next page=" in err
        (metadata,) = env.rows("select metadata from sync_jobs order by started_at desc limit 1")[0]
        assert metadata == {"listing": "capped", "resumes_at_page": resumes, "pages": 1}
        assert env.scalar("select count(*) from items") == 1 + 10 * run
    assert cli.main(["run", str(source)]) == 0
    assert "listing not complete" not in capsys.readouterr().err
    assert env.rows("select id from items order by id") == [(item["id"],) for item in pagedapi.ITEMS]
    first = env.scalar("select min(started_at) from sync_jobs")
    ((metadata,),) = env.rows("select metadata from sync_jobs order by started_at desc limit 1")
    assert metadata == {"listing": "complete", "listing_started_at": first.isoformat(), "pages": 1}
    assert env.scalar("select count(*) from syncrun_cursors") == 0


def test_a_checkpoint_without_the_listings_start_never_cleans_up(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A checkpoint written before the listing's start was kept (a bare position): the listing is read
    to its end, but when it started is unknown, so the `when: complete` cleanup does not run."""
    source = list_source(tmp_path, "legacy", "link", "{type: link}", "body")
    source.write_text(source.read_text() + CLEANUP)
    prepare(env, source)
    env.run("insert into items values (100, 'kept')")
    env.run(f"""insert into syncrun_cursors (source, cursor) values ('legacy', '"{api.url}/link?page=3"')""")
    assert cli.main(["run", str(source)]) == 0
    assert env.scalar("select count(*) from items where id = 100") == 1
    assert env.scalar("select count(*) from syncrun_cursors") == 0


def test_a_page_repeated_under_a_new_next_url_is_a_loop(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """A next URL with a nonce over the same page: never the same URL twice, the same page every time."""
    source = list_source(tmp_path, "nonce", "nonce", "{type: link}", "body")
    prepare(env, source)
    api.route(
        "/nonce",
        lambda r: Reply(
            200, json=pagedapi.ITEMS[:5], headers={"Link": f'<{api.url}/nonce?n={len(api.requests)}>; rel="next"'}
        ),
    )
    assert cli.main(["run", str(source)]) == 1
    _, error = job(env, "nonce")
    assert error is not None
    assert "page 2 (http://127.0.0.1:" in error
    assert 'has the same records as the previous page, with a new next page from the Link header (rel="next")' in error
    assert len(api.requests) == 2


def test_a_listing_without_max_pages_stops_at_the_default_cap(
    env: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No max_pages: the default page cap (here lowered to 2) ends the run, visibly not complete."""
    monkeypatch.setattr(pagination, "DEFAULT_MAX_PAGES", 2)
    source = list_source(tmp_path, "endless", "link", "{type: link}", "body")
    source.write_text(source.read_text() + CLEANUP)
    prepare(env, source)
    assert cli.main(["run", str(source)]) == 0
    assert "listing not complete: the default page cap (2 pages, set pagination.max_pages" in capsys.readouterr().err
    assert env.scalar("select count(*) from items") == 20  # the cleanup did not run


def test_a_capped_entity_listing_replaces_nothing(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """max_pages with replace_by: the rows beyond the cap were not read, not gone; they stay."""
    for cap, kept in (("max_pages: 1, ", 1), ("", 0)):
        pagination = f"{{type: cursor, param: page_token, {cap}cursor: 'headers.\"x-next-page-token\"'}}"
        source = ticket_source(tmp_path, "comments", pagination)
        source.write_text(source.read_text().replace("key: [id]\n", "key: [id]\n    replace_by: [ticket]\n"))
        env.run("drop table if exists comments, items, sync_status cascade")
        seed_tickets(env, source)
        env.run("insert into comments values (2999, 2, 'older than the cap')")
        assert cli.main(["run", str(source)]) == 0
        assert env.scalar("select count(*) from comments where id = 2999") == kept
        assert env.scalar("select count(*) from comments where ticket = 2") == (10 + 1 if kept else 25)


def test_an_api_key_echoed_in_next_links_is_never_checkpointed(env: Database, api: ApiServer, tmp_path: Path) -> None:
    """review16 F13: `auth: api_key, in: query`, and an API that builds its next link from the whole
    request query (the key included). Page 3 fails: the checkpoint holds the next URL without the key
    (no 8-character piece of it anywhere in the database), and the resumed run sends the key again."""
    from urllib.parse import urlencode

    from tests.test_security import planted_leaks

    key = "APIKEYsecret-abcdef123456"
    env_key = pytest.MonkeyPatch()
    env_key.setenv("API_KEY", key)

    def page(request: Recorded) -> Reply:
        if request.query.get("api_key") != key:
            return Reply(401, json={"error": "no key"})
        number = int(request.query.get("page", "1"))
        items = pagedapi.ITEMS[(number - 1) * 10 : number * 10]
        following = {**request.query, "page": str(number + 1)}
        more = number * 10 < len(pagedapi.ITEMS)
        return Reply(200, json={"items": items, "next": f"{api.url}/keyed?{urlencode(following)}" if more else None})

    source = list_source(tmp_path, "keyed", "keyed", "{type: next_url, next: body.next}", "body.items")
    source.write_text(
        source.read_text().replace('  headers: {Authorization: "Bearer ${secret.API_TOKEN}"}\n', "")
        + "auth: {type: api_key, name: api_key, in: query, value: '${secret.API_KEY}'}\n"
    )
    prepare(env, source)
    api.route("/keyed", lambda r: Reply(500) if r.query.get("page") == "3" else page(r))
    try:
        assert cli.main(["run", str(source)]) == 1
        position = env.scalar("select cursor from syncrun_cursors where source = 'keyed'")
        assert "page=3" in str(position)
        assert "api_key" not in str(position)
        columns = env.rows(
            "select table_name, column_name from information_schema.columns where table_schema = current_schema()"
        )
        stored = [
            str(value)
            for table, column in columns
            for (value,) in env.rows(f'select "{column}"::text from "{table}" where "{column}" is not null')
        ]
        assert not planted_leaks(stored, [key])
        api.route("/keyed", page)
        assert cli.main(["run", str(source)]) == 0
        assert env.scalar("select count(*) from items") == len(pagedapi.ITEMS)
        assert api.requests[-1].query.get("api_key") == key
    finally:
        env_key.undo()
