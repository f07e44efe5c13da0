"""pagination against hostile APIs, through fetch.pages on a real loopback server: foreign origins,
loops, garbage and huge Link headers, cursors that are not text. Each ends as an error for that
listing, never a hang, a crash or a partial listing taken for the whole; every page is rate-limited
and retried like any request."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from runner import client, config, fetch, templating
from runner.errors import EntityError, PaginationError
from runner.ratelimit import Limiter
from runner.redaction import Redactor
from tests.apiserver import ApiServer, FakeClock, Recorded, Reply, Script

TOKEN = "s3cr3t-token-value"
SETTINGS = templating.Settings({("secret", "API_TOKEN"): TOKEN}, Redactor([TOKEN]))
FETCH_SOURCE = """\
name: t
entities: {{type: list}}
request:
  url: "{url}"
  query: {{key: "${{secret.API_TOKEN}}"}}
  headers: {{Authorization: "Bearer ${{secret.API_TOKEN}}", Accept: application/json}}
pagination: {pagination}
rate_limit: {{requests: 1000, per: 1s, burst: 50}}
retry: {{attempts: 2, initial: 10ms, max_delay: 10ms}}
records: {records}
writes: [{{table: items, key: [id], columns: {{id: record.id}}}}]
status: false
"""


def fetch_pages(url: str, pagination: str = "{type: link}", records: str = "body") -> tuple[list[fetch.Page], Limiter]:
    text = FETCH_SOURCE.format(url=url, pagination=pagination, records=records)
    source = config.loads(text, Path("t.yaml"))
    limiter = Limiter(source.rate_limit)

    async def main() -> list[fetch.Page]:
        async with client.build(source.request, limiter, max_connections=2) as http:
            pages = fetch.pages(http, source, {}, SETTINGS, limiter=limiter, sleep=FakeClock().sleep)
            return [page async for page in pages]

    return asyncio.run(main()), limiter


def linked(target: str, *, body: object = None) -> Reply:
    return Reply(200, json=body if body is not None else [{"id": 1}], headers={"Link": f'<{target}>; rel="next"'})


def test_a_next_link_to_another_origin_is_refused(api: ApiServer) -> None:
    """localhost is another origin than 127.0.0.1: the credentials would go there, so nothing is sent."""
    elsewhere = api.url.replace("127.0.0.1", "localhost") + "/x?page=2"
    api.route("/x", linked(elsewhere))
    with pytest.raises(PaginationError, match=r"leads to another origin than http://127\.0\.0\.1:\d+; refused"):
        fetch_pages(api.url + "/x")
    assert len(api.requests) == 1


@pytest.mark.parametrize("written", ["http://localhost:{port}", "HTTP://LocalHost:{port}/"])
def test_an_allowed_origin_gets_no_credentials(api: ApiServer, written: str) -> None:
    """allow_origins lets a next link lead there, without Authorization and without the secret parameter.
    Scheme and host are matched in any case, as URLs do."""
    other = api.url.replace("127.0.0.1", "localhost")
    api.route("/x", linked(other + "/y?page=2"))
    api.route("/y", Reply(200, json=[{"id": 2}]))
    allowed = written.format(port=api.url.rpartition(":")[2])
    pages, _ = fetch_pages(api.url + "/x", f"{{type: link, allow_origins: ['{allowed}']}}")
    assert [page.reply.body for page in pages] == [[{"id": 1}], [{"id": 2}]]
    first, second = api.requests
    assert first.headers["authorization"] == f"Bearer {TOKEN}"
    assert first.query["key"] == TOKEN
    assert "authorization" not in second.headers
    assert second.headers["accept"] == "application/json"
    assert "key" not in second.query


def test_only_http_next_links_are_followed(api: ApiServer) -> None:
    """A javascript: or file: next link is not a page."""
    api.route("/x", linked("file:///etc/passwd"))
    with pytest.raises(PaginationError, match=r"^next-page URL 'file:///etc/passwd' is not an http\(s\) URL"):
        fetch_pages(api.url + "/x")


def test_a_repeated_next_link_is_a_loop(api: ApiServer) -> None:
    """A next link back to a page already read would loop forever: stopped, the secret masked."""
    api.route("/x", lambda r: linked(f"/x?page={min(int(r.query.get('page', 1)) + 1, 2)}&key={TOKEN}"))
    with pytest.raises(PaginationError) as caught:
        fetch_pages(api.url + "/x")
    assert str(caught.value).startswith("pagination loop: ")
    assert "'http://127.0.0.1:" in str(caught.value)
    assert "/x?page=2' a second time (after 2 pages); stopped" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert len(api.requests) == 2


def test_a_checkpointed_next_url_holds_no_secret(api: ApiServer) -> None:
    """The API echoes the key in its next link: the page's resume URL lacks it, the request has it."""
    api.route("/x", lambda r: linked(f"/x?key={TOKEN}&page=2") if "page" not in r.query else Reply(200, json=[]))
    pages, _ = fetch_pages(api.url + "/x")
    assert pages[0].resume == f"{api.url}/x?page=2"
    assert api.requests[1].query == {"key": TOKEN, "page": "2"}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("garbage", "unreadable Link header from .*: expected <URI> at character 1, found 'garbage'"),
        ('</x?page=2>; rel="next', "expected a value for rel at character 18, found '\"next'"),
        ("<" + "a" * 20_000 + ">; rel=next", "a next-page URL of 20000 characters"),
        ("</p>; rel=x, " * 3000 + "junk", r"unexpected 'junk' at character|expected <URI> at character 39001"),
    ],
)
def test_garbage_and_huge_link_headers_fail_the_listing(api: ApiServer, header: str, message: str) -> None:
    """A Link header that is not one, or a next link no page has, fails the listing with the reason."""
    api.route("/x", Reply(200, json=[{"id": 1}], headers={"Link": header}))
    with pytest.raises(PaginationError, match=message):
        fetch_pages(api.url + "/x")


def test_a_link_header_beyond_the_clients_limit_is_an_entity_error(api: ApiServer) -> None:
    """A header larger than the HTTP client reads ends as a fetch error, not a hang or a crash."""
    api.route("/x", Reply(200, json=[], headers={"Link": "<" + "a" * 200_000 + ">"}))
    with pytest.raises(
        EntityError, match=r"^gave up after 2 attempts: .*\(GET http://127\.0\.0\.1:\d+/x\?key=\*\*\*\)$"
    ):
        fetch_pages(api.url + "/x")


@pytest.mark.parametrize(
    ("cursor", "message"),
    [
        ({"after": 3}, r"pagination.cursor \(body.next\) gave object \{\"after\": 3\}, not a string or a number"),
        (True, r"gave true/false true, not a string or a number"),
        ("c" * 5000, "gave a cursor of 5000 characters"),
    ],
)
def test_a_cursor_that_is_not_a_string_or_number_fails(api: ApiServer, cursor: object, message: str) -> None:
    """A cursor sent as a query parameter must be text or a number."""
    api.route("/x", Reply(200, json={"data": [], "next": cursor}))
    with pytest.raises(PaginationError, match=message):
        fetch_pages(api.url + "/x", "{type: cursor, param: after, cursor: body.next}")


def test_an_api_ignoring_the_offset_is_a_loop(api: ApiServer) -> None:
    """Every offset answers the first page: stopped at the second, not read forever."""
    api.route("/x", Reply(200, json=[{"id": i} for i in range(10)]))
    with pytest.raises(
        PaginationError,
        match=r"^pagination loop: offset 10 from .* \(page 2\) has the same records as the previous page",
    ):
        fetch_pages(api.url + "/x", "{type: offset, param: offset, page_size: 10}")
    assert len(api.requests) == 2


ITEMS5 = [{"id": i, "name": f"n{i}"} for i in range(5)]


_CLOCK = itertools.count(1_700_000_000)  # a cursor that changes on every reply, as c0n<time>


def _nonce(request: Recorded) -> int:
    return int(request.query.get("n", "0")) + 1


@pytest.mark.parametrize(
    ("pagination", "records", "route", "message"),
    [
        pytest.param(
            "{type: next_url, next: body.next}",
            "body.data",
            lambda r: Reply(200, json={"data": ITEMS5, "next": f"/x?n={_nonce(r)}&x={_nonce(r) * 7}"}),
            r"^pagination loop: page 2 \(.*\) has the same records as the previous page, with a new next page"
            r" from pagination.next \(body.next\); stopped$",
            id="next_url-with-a-nonce",
        ),
        pytest.param(
            "{type: cursor, param: c, cursor: body.next}",
            "body.data",
            lambda r: Reply(200, json={"data": ITEMS5, "next": f"c0n{next(_CLOCK)}"}),
            r"^pagination loop: page 2 .* from pagination.cursor \(body.next\); stopped; if the API ignored the"
            r" cursor, check pagination.param \(c\)$",
            id="cursor-with-a-nonce",
        ),
        pytest.param(
            "{type: link}",
            "body",
            lambda r: linked(
                f"/x?n={_nonce(r)}", body=[{"id": 1}] if _nonce(r) % 2 else [{"id": 2}]
            ),  # A, B, A, B under new links
            r"^pagination loop: page 3 \(.*\) has the same records as page 1, with a new next page from the Link",
            id="link-alternating",
        ),
        pytest.param(
            "{type: link}",
            "body.data",
            lambda r: linked(f"/x?n={_nonce(r)}", body={"data": []}),
            r"^pagination loop: page 2 \(.*\) has no records, like the previous page, with a new next page",
            id="link-empty-pages",
        ),
        pytest.param(
            "{type: link}",
            "body",
            lambda r: linked(f"/x?n={_nonce(r)}", body=ITEMS5[_nonce(r) % 5 :] + ITEMS5[: _nonce(r) % 5]),
            r"^pagination loop: page 2 \(.*\) has the same records as the previous page",
            id="link-shuffled",
        ),
    ],
)
def test_the_same_records_under_a_new_next_page_are_a_loop(
    api: ApiServer, pagination: str, records: str, route: Script, message: str
) -> None:
    """An API that puts a nonce in its next URL or cursor (or alternates two pages, or shuffles one)
    never repeats a position: the records, compared in any order with every page read so far, do."""
    api.route("/x", route)
    with pytest.raises(PaginationError, match=message) as caught:
        fetch_pages(api.url + "/x", pagination, records)
    assert TOKEN not in str(caught.value)
    assert len(api.requests) <= 3


def test_an_empty_last_page_still_ends_a_listing(api: ApiServer) -> None:
    """An empty page the style takes as the end (no next link) ends it, after another empty page too."""
    api.route(
        "/x", lambda r: linked("/x?n=1", body={"data": []}) if "n" not in r.query else Reply(200, json={"data": []})
    )
    pages, _ = fetch_pages(api.url + "/x", "{type: link}", "body.data")
    assert len(pages) == 2


def test_every_page_goes_through_the_limiter_and_the_retries(api: ApiServer) -> None:
    """Page 2 answers 503 once: it is retried, and every attempt took a rate-limit grant."""
    second = iter([Reply(503), Reply(200, json=[{"id": 2}])])
    api.route("/x", lambda r: next(second) if r.query.get("page") == "2" else linked("/x?page=2"))
    pages, limiter = fetch_pages(api.url + "/x")
    assert [page.reply.status for page in pages] == [200, 200]
    assert [r.query.get("page") for r in api.requests] == [None, "2", "2"]
    assert limiter.requests == 3


def test_a_total_may_come_from_a_header_or_as_a_whole_float(api: ApiServer) -> None:
    """X-Total-Count is text, 12.0 is a whole number: both count; -3 or "many" do not."""

    def offsets(request: Recorded, *, total: str) -> Reply:
        offset = int(request.query.get("offset", 0))
        return Reply(
            200, json=[{"id": i} for i in range(offset, min(offset + 5, 12))], headers={"X-Total-Count": total}
        )

    api.route("/x", lambda r: offsets(r, total="12"))
    pages, _ = fetch_pages(
        api.url + "/x", "{type: offset, param: offset, page_size: 5, total: 'headers.\"x-total-count\"'}"
    )
    assert [len(page.reply.body) for page in pages] == [5, 5, 2]  # type: ignore[arg-type]
    api.route("/y", Reply(200, json={"total": 12.0, "items": []}))
    with pytest.raises(PaginationError, match=r"total \(body.total\) is 12, 0 read but the page is empty"):
        fetch_pages(api.url + "/y", "{type: offset, param: offset, page_size: 5, total: body.total}", "body.items")
    api.route("/z", Reply(200, json={"total": "many", "items": [1]}))
    with pytest.raises(PaginationError, match=r'^pagination.total \(body.total\) gave "many", not a count$'):
        fetch_pages(api.url + "/z", "{type: offset, param: offset, page_size: 5, total: body.total}", "body.items")


# --- review 12: headers and userinfo towards other origins, empty pages, has_more as text ----------------
def test_an_allowed_origin_gets_its_own_host_header(api: ApiServer, other: ApiServer) -> None:
    """The first request's Host (and credentials) never go to the other server: it sees its own."""
    api.route("/x", linked(other.url + "/y?page=2"))
    other.route("/y", Reply(200, json=[{"id": 2}]))
    pages, _ = fetch_pages(api.url + "/x", f"{{type: link, allow_origins: ['{other.url}']}}")
    assert len(pages) == 2
    (first,), (second,) = api.requests, other.requests
    assert first.headers["host"] == api.url.removeprefix("http://")
    assert second.headers["host"] == other.url.removeprefix("http://")
    assert "authorization" not in second.headers
    assert "key" not in second.query
    assert second.headers["accept"] == "application/json"


@pytest.mark.parametrize("own", [True, False])
def test_a_next_url_with_userinfo_is_refused(api: ApiServer, other: ApiServer, own: bool) -> None:
    """httpx would turn user:password@ into Authorization: Basic for whatever host the API names."""
    target = (api if own else other).url.replace("http://", "http://bob:pw@") + "/y"
    api.route("/x", linked(target))
    with pytest.raises(PaginationError, match=r"carries a user name or password \(user@host\); not followed") as caught:
        fetch_pages(api.url + "/x", f"{{type: link, allow_origins: ['{other.url}']}}")
    assert "pw" not in str(caught.value)
    assert len(api.requests) == 1
    assert other.requests == []


def _numbered(request: Recorded, *, pages: int, empty_at: int | None = None, total: bool = False) -> Reply:
    """Page n holds items n*10..n*10+4 up to `pages`, then {"data": [], "meta": {}} (never {} or [])."""
    page = int(request.query.get("page", 1))
    data = [{"id": page * 10 + i} for i in range(5)] if page <= pages and page != empty_at else []
    meta = {"total_pages": pages} if total else {}
    return Reply(200, json={"data": data, "meta": meta})


def test_a_page_listing_ends_at_a_page_with_no_records(api: ApiServer) -> None:
    """No page_size, no total: {"data": [], "meta": {}} is the empty page that ends it (not a loop)."""
    api.route("/x", lambda r: _numbered(r, pages=3))
    pages, _ = fetch_pages(api.url + "/x", "{type: page, param: page, start: 1}", "body.data")
    assert len(pages) == 3
    assert [r.query.get("page") for r in api.requests] == ["1", "2", "3", "4"]


def test_an_empty_page_before_total_pages_is_a_listing_cut_short(api: ApiServer) -> None:
    """Page 3 of 5 has no records: failed, not 4 of 5 pages taken for the whole; missing_next: end accepts it."""
    api.route("/x", lambda r: _numbered(r, pages=5, empty_at=3, total=True))
    pagination = "{type: page, param: page, start: 1, total_pages: body.meta.total_pages%s}"
    with pytest.raises(
        PaginationError,
        match=r"^listing cut short after 2 pages \(10 items\): total_pages \(body.meta.total_pages\) is 5 but"
        r" page 3 is empty",
    ):
        fetch_pages(api.url + "/x", pagination % "", "body.data")
    pages, _ = fetch_pages(api.url + "/x", pagination % ", missing_next: end", "body.data")
    assert len(pages) == 2


def test_a_page_that_is_not_json_goes_on_to_the_mappings(api: ApiServer) -> None:
    """A non-JSON page is not an end: it is yielded, for the mappings to fail (docs: it fails the listing)."""
    api.route("/x", lambda r: _numbered(r, pages=5) if r.query.get("page") != "2" else Reply(200, body=b"<html>"))
    pages, _ = fetch_pages(api.url + "/x", "{type: page, param: page, start: 1}", "body.data")
    assert [page.reply.body for page in pages][1:] == [None]


@pytest.mark.parametrize(
    ("flag", "pages"), [("false", 1), ("FALSE", 1), ("0", 1), ("", 1), (0, 1), ("true", 2), ("1", 2), (1, 2)]
)
def test_has_more_as_text_or_a_number(api: ApiServer, flag: object, pages: int) -> None:
    """Flags sent as text or 0/1 mean what they say: "false" ends the listing, "true" goes on."""

    def stripe(request: Recorded) -> Reply:
        if "after" in request.query:
            return Reply(200, json={"data": [{"id": 2}], "has_more": False})
        return Reply(200, json={"data": [{"id": 1}], "has_more": flag})

    api.route("/x", stripe)
    got, _ = fetch_pages(
        api.url + "/x", "{type: cursor, param: after, cursor: 'body.data[-1].id', has_more: body.has_more}", "body.data"
    )
    assert len(got) == pages


@pytest.mark.parametrize("flag", ["yes", 2, [True], {"more": True}])
def test_has_more_of_another_kind_fails_naming_it(api: ApiServer, flag: object) -> None:
    api.route("/x", Reply(200, json={"data": [{"id": 1}], "has_more": flag}))
    with pytest.raises(PaginationError, match=r"^pagination.has_more \(body.has_more\) gave .* expected true or false"):
        fetch_pages(
            api.url + "/x",
            "{type: cursor, param: after, cursor: 'body.data[-1].id', has_more: body.has_more}",
            "body.data",
        )


# --- review revM M2: a next link's query goes out as the API wrote it -------------------------------------
# (what the API writes after /y?, what goes on the wire): only what cannot be in a URL is escaped
AS_WRITTEN = [
    ("ids=a,b", "ids=a,b"),
    ("cursor=*", "cursor=*"),
    ("ids=a;c", "ids=a;c"),
    ("&x", "&x"),
    ("a=1&&b&=c", "a=1&&b&=c"),
    ("z=%zz", "z=%zz"),
    ("q=a b", "q=a%20b"),
]


@pytest.mark.parametrize(("written", "sent"), AS_WRITTEN)
@pytest.mark.parametrize("style", ["link", "next_url"])
def test_a_next_link_goes_out_with_its_query_as_written(api: ApiServer, style: str, written: str, sent: str) -> None:
    """review revM M2: the query of a next link was re-encoded (`ids=a,b` -> `ids=a%2Cb`, `cursor=*` ->
    `%2A`, `&x` -> `x=`, `z=%zz` -> `%25zz`), which breaks APIs that sign their links over the query
    text. Only the source's secret parameter is added (at the end), and the key the API echoed is
    dropped from the checkpoint: the raw request line shows the rest as written."""
    target = f"/y?{written}&key={TOKEN}"
    if style == "link":
        api.route("/x", linked(target))
        api.route("/y", Reply(200, json=[{"id": 2}]))
        pages, _ = fetch_pages(api.url + "/x")
    else:
        api.route("/x", Reply(200, json={"items": [{"id": 1}], "next": target}))
        api.route("/y", Reply(200, json={"items": [{"id": 2}], "next": None}))
        pages, _ = fetch_pages(api.url + "/x", "{type: next_url, next: body.next}", "body.items")
    assert [r.target for r in api.requests] == ["/x?key=" + TOKEN, f"/y?{sent}&key={TOKEN}"]
    assert pages[0].resume == f"{api.url}/y?{sent}"


def test_a_size_param_is_set_in_place_and_the_rest_of_a_next_link_kept(api: ApiServer) -> None:
    """With page_size and size_param, syncrun sets its size in the link (where the API put it, or at
    the end) and leaves every other byte of the query alone."""
    api.route("/x", Reply(200, json={"items": [{"id": 1}], "next": "/y?ids=a,b&limit=50&&c=*"}))
    api.route("/y", Reply(200, json={"items": [{"id": 2}], "next": "/z?ids=a;b"}))
    api.route("/z", Reply(200, json={"items": [{"id": 3}], "next": None}))
    pagination = "{type: next_url, next: body.next, page_size: 10, size_param: limit, missing_next: end}"
    fetch_pages(api.url + "/x", pagination, "body.items")
    assert [r.target for r in api.requests] == [
        f"/x?key={TOKEN}&limit=10",
        f"/y?ids=a,b&limit=10&&c=*&key={TOKEN}",
        f"/z?ids=a;b&key={TOKEN}&limit=10",
    ]
