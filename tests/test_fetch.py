"""fetch: rendering requests safely, pagination, non-JSON bodies and describe()."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from runner import client, fetch, spec, templating
from runner.errors import FetchError, PaginationError
from runner.expressions import JSON, Expression
from runner.ratelimit import Limiter
from runner.redaction import Redactor
from tests.apiserver import ApiServer, FakeClock, Recorded, Reply

NO_PAGINATION = spec.Pagination()
SETTINGS = templating.Settings({("secret", "KEY"): "hunter22"}, Redactor(["hunter22"]))


def make_source(
    url: str,
    *,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    pagination: spec.Pagination = NO_PAGINATION,
) -> spec.Source:
    """A minimal Source built directly (not loaded by runner/config): entity key `appid`, a fast retry policy."""
    return spec.Source(
        name="t",
        path=Path("t.yaml"),
        job_type="t",
        entities=spec.Entities(
            type=spec.SelectionType.DEFAULT,
            key="appid",
            key_type="text",
            columns=(spec.EntityColumn("appid", "text"), spec.EntityColumn("cc", "text")),
            limit=10,
        ),
        request=spec.Request(
            url=templating.parse(url),
            query=tuple((k, templating.parse(v)) for k, v in (query or {}).items()),
            headers=tuple((k, templating.parse(v)) for k, v in (headers or {}).items()),
            timeout=5.0,
        ),
        pagination=pagination,
        rate_limit=spec.RateLimit(requests=1000, per=1.0, bucket="t"),
        retry=spec.Retry(attempts=2, initial=0.01, jitter=0.0),
        outcomes=(),
        writes=(),
        status=None,
    )


def fetch_entity(source: spec.Source, entity: dict[str, JSON]) -> list[client.Reply]:
    limiter = Limiter(source.rate_limit)

    async def main() -> list[client.Reply]:
        async with client.build(source.request, limiter, max_connections=2) as http:
            listing = await fetch.entity(http, source, entity, SETTINGS, limiter=limiter, sleep=FakeClock().sleep)
            return [page.reply for page in listing]

    return asyncio.run(main())


def build(source: spec.Source, entity: dict[str, JSON]) -> httpx.Request:
    return fetch.build_request(httpx.AsyncClient(), source, entity, SETTINGS)


# --- rendering -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("appid", "path"),
    [
        ("440", "/apps/440/details"),
        ("../../admin", "/apps/..%2F..%2Fadmin/details"),
        ("..", "/apps/%2E%2E/details"),
        ("a?b=1#frag", "/apps/a%3Fb%3D1%23frag/details"),
        ("@evil.test:80", "/apps/%40evil.test%3A80/details"),
        ("a b/c", "/apps/a%20b%2Fc/details"),
    ],
)
def test_entity_values_cannot_change_url_structure(api: ApiServer, appid: str, path: str) -> None:
    """Hostile entity values stay inside their path segment: the server sees the expected path."""
    source = make_source(api.url + "/apps/{appid}/details")
    fetch_entity(source, {"appid": appid})
    (seen,) = api.requests
    assert seen.target == path
    assert seen.query == {}


def test_query_values_are_rendered_and_encoded(api: ApiServer) -> None:
    """Query templates get raw entity values; httpx encodes them, so `&` and `=` stay inside the value."""
    source = make_source(api.url + "/apps", query={"id": "{appid}", "cc": "{cc}", "key": "${secret.KEY}"})
    fetch_entity(source, {"appid": "1&admin=true", "cc": "us"})
    (seen,) = api.requests
    assert seen.query == {"id": "1&admin=true", "cc": "us", "key": "hunter22"}


def test_the_urls_own_query_is_kept_and_request_query_follows(api: ApiServer) -> None:
    """`url: .../a?fixed=1` plus `request.query: {id: ...}`: httpx's params= replaced the URL's query,
    so the request went out as `?id=7`; now the server sees the URL's own parameters as written, then
    request.query's (an entity value still cannot add a parameter: `&` stays inside it)."""
    source = make_source(api.url + "/apps/{appid}?fixed=1&b=x%20y", query={"id": "{cc}"})
    fetch_entity(source, {"appid": "7", "cc": "7&admin=true"})
    (seen,) = api.requests
    assert seen.target == "/apps/7?fixed=1&b=x%20y&id=7%26admin%3Dtrue"
    assert seen.query == {"fixed": "1", "b": "x y", "id": "7&admin=true"}


def test_headers_are_rendered() -> None:
    """Header templates are rendered with entity values and settings."""
    request = build(make_source("http://api.test/x", headers={"X-App": "{appid}"}), {"appid": "7"})
    assert request.headers["x-app"] == "7"


def test_line_breaks_in_headers_are_refused() -> None:
    """An entity value cannot smuggle a second header through a line break."""
    source = make_source("http://api.test/x", headers={"X-App": "{appid}"})
    with pytest.raises(FetchError, match="header X-App would contain a line break"):
        build(source, {"appid": "1\r\nX-Admin: yes"})


@pytest.mark.parametrize("value", ["é", "caf\u00e9", "\x00", "a\x7fb", "\ud800", "💥"])
def test_non_ascii_or_control_characters_in_headers_are_the_entitys_error(value: str) -> None:
    """A text key with a non-ASCII or control character in a header template used to escape as
    UnicodeEncodeError (exit 70); it is that entity's error now, and nothing is sent."""
    source = make_source("http://api.test/x", headers={"X-App": "{appid}"})
    with pytest.raises(FetchError, match="header X-App would contain a non-ASCII or control character"):
        build(source, {"appid": value})


def test_a_column_in_the_host_is_refused() -> None:
    """The structure check: a value that would choose the host is refused, URL redacted."""
    source = make_source("http://{appid}.api.test/x?key=${secret.KEY}")
    with pytest.raises(FetchError) as caught:
        build(source, {"appid": "evil"})
    assert str(caught.value) == (
        "entity values changed the structure of the request URL http://evil.api.test/x?key=***"
        " (expected the shape of http://{appid}.api.test/x?key=${secret.KEY}); not sent"
    )


# --- bodies --------------------------------------------------------------------------------------------
def test_non_json_body_is_reported_not_raised(api: ApiServer) -> None:
    """An HTML page arrives as Reply.body None; describe() says what it was."""
    api.route(
        "/x", Reply(200, body=b"<html><body>oops</body></html>", headers={"Content-Type": "text/html; charset=utf-8"})
    )
    (reply,) = fetch_entity(make_source(api.url + "/x"), {"appid": "1"})
    assert reply.body is None
    assert fetch.describe(reply) == "HTTP 200 text/html: '<html><body>oops</body></html>'"


def test_unusable_json_is_reported_with_the_reason(api: ApiServer) -> None:
    """A JSON body that cannot be used (here 2,000 levels deep) arrives as body None; describe() says why."""
    api.route("/x", Reply(200, body=b"[" * 2000 + b"]" * 2000, headers={"Content-Type": "application/json"}))
    (reply,) = fetch_entity(make_source(api.url + "/x"), {"appid": "1"})
    assert reply.body is None
    assert fetch.describe(reply) == (
        f"HTTP 200 application/json: {'[' * 80 + '…'!r} (JSON nested deeper than {client.MAX_DEPTH} levels)"
    )


def test_describe_empty_body() -> None:
    """describe() of an empty body says so."""
    reply = client.Reply(status=204, headers={}, body=None, raw=b"", url="u", elapsed=0.0, content_type="")
    assert fetch.describe(reply) == "HTTP 204 (no content type): (empty body)"


# --- pagination ----------------------------------------------------------------------------------------
CURSOR = spec.Pagination(
    type=spec.PaginationType.CURSOR,
    param="cursor",
    cursor=Expression.compile("body.next"),
    has_more=Expression.compile("body.more"),
)


def cursor_pages(request: Recorded) -> Reply:
    page = int(request.query.get("cursor", "0"))
    return Reply(200, json={"items": [page], "next": str(page + 1), "more": page < 2})


def test_cursor_pagination_follows_the_cursor(api: ApiServer) -> None:
    """cursor: the next cursor goes into `param` until has_more is false."""
    api.route("/x", cursor_pages)
    replies = fetch_entity(make_source(api.url + "/x", pagination=CURSOR), {"appid": "1"})
    assert [r.body["items"] for r in replies] == [[0], [1], [2]]
    assert [r.query.get("cursor") for r in api.requests] == [None, "1", "2"]


def test_cursor_loop_is_an_error(api: ApiServer) -> None:
    """An API that hands out the same cursor twice would loop forever: FetchError."""
    api.route("/x", Reply(200, json={"next": "abc", "more": True}))
    with pytest.raises(FetchError, match=r"pagination loop: .* returned cursor 'abc' a second time"):
        fetch_entity(make_source(api.url + "/x", pagination=CURSOR), {"appid": "1"})


def test_max_pages_caps_pagination(api: ApiServer) -> None:
    """max_pages stops paging even while the API says there is more."""
    api.route("/x", cursor_pages)
    pagination = spec.Pagination(
        type=spec.PaginationType.CURSOR, param="cursor", cursor=Expression.compile("body.next"), max_pages=2
    )
    assert len(fetch_entity(make_source(api.url + "/x", pagination=pagination), {"appid": "1"})) == 2


def test_page_pagination_stops_at_an_empty_page(api: ApiServer) -> None:
    """page: numbers from `start`; the empty page ends paging and is not returned."""
    api.route("/x", lambda r: Reply(200, json=[r.query["p"]] if int(r.query["p"]) < 3 else []))
    pagination = spec.Pagination(type=spec.PaginationType.PAGE, param="p", start=1)
    replies = fetch_entity(make_source(api.url + "/x", pagination=pagination), {"appid": "1"})
    assert [r.body for r in replies] == [["1"], ["2"]]
    assert [r.query["p"] for r in api.requests] == ["1", "2", "3"]


def test_a_non_2xx_reply_after_the_first_page_fails_the_entity(api: ApiServer) -> None:
    """A 404 mid-way ends the paging; for an entity it is an error: its listing would be partial."""
    api.route("/x", lambda r: Reply(200, json=[1]) if r.query["p"] == "0" else Reply(404, json={}))
    source = make_source(api.url + "/x", pagination=spec.Pagination(type=spec.PaginationType.PAGE, param="p"))
    with pytest.raises(PaginationError, match=r"^page 2 of the listing answered HTTP 404 application/json: '\{\}'"):
        fetch_entity(source, {"appid": "1"})
    assert [r.query["p"] for r in api.requests] == ["0", "1"]


# --- one page without a walk ----------------------------------------------------------------------------
def test_a_one_page_listing_is_the_page_the_walk_gives(api: ApiServer) -> None:
    """`fetch.entity` sends a source without pagination (nor max_items) straight, without a `Walk`:
    its one page is the page `fetch.pages` yields for it, item count and all."""
    api.route("/apps/7", Reply(200, json={"data": [1, 2, 3]}), Reply(200, json={"data": [1, 2, 3]}))
    source = make_source(api.url + "/apps/{appid}")
    limiter = Limiter(source.rate_limit)

    async def main() -> tuple[list[fetch.Page], list[fetch.Page]]:
        async with client.build(source.request, limiter, max_connections=2) as http:
            direct = await fetch.entity(http, source, {"appid": "7"}, SETTINGS, limiter=limiter)
            walked = [page async for page in fetch.pages(http, source, {"appid": "7"}, SETTINGS, limiter=limiter)]
            return direct, walked

    direct, walked = asyncio.run(main())
    assert len(direct) == len(walked) == 1
    (one,), (other,) = direct, walked
    assert (one.resume, one.capped, one.keep, one.items) == (other.resume, other.capped, other.keep, other.items)
    assert (one.reply.status, one.reply.body, one.reply.url) == (200, {"data": [1, 2, 3]}, api.url + "/apps/7")
    assert other.reply.body == one.reply.body
