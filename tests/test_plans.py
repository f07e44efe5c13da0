"""plans: the compiled request builds exactly what the general path renders, for hostile values too."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from runner import client, fetch, plans, templating
from runner.errors import FetchError
from runner.expressions import JSON
from runner.ratelimit import Limiter
from runner.redaction import Redactor
from tests.test_fetch import make_source

SETTINGS = templating.Settings(
    {("secret", "KEY"): "hunter22", ("env", "BASE"): "http://api.test:8080/v1"}, Redactor(["hunter22"])
)
HOSTILE = [
    "440",
    "",
    ".",
    "..",
    "../../admin",
    "%2E%2E",
    "%41",
    "a?b=1#frag",
    "@evil.test:80",
    "a b/c",
    "caf\u00e9",
    "💥",
    "a&b=c",
    "x;y,z=w",
    "\\",
    "~-_.",
    True,
    None,
    12.5,
    -3,
]


def _both(source_url: str, entity: dict[str, JSON], **parts: dict[str, str]) -> tuple[httpx.Request, httpx.Request]:
    """(the compiled request, the general path's) for one entity."""
    source = make_source(source_url, **parts)

    async def main() -> tuple[httpx.Request, httpx.Request]:
        async with client.build(source.request, Limiter(source.rate_limit), max_connections=1) as compiled:
            fast = fetch.build_request(compiled, source, entity, SETTINGS)
            plan = compiled.plans[(id(source.request), id(SETTINGS))]
            assert plan.build(entity, compiled) is not None, "the fast path was not taken"
        general = httpx.AsyncClient(headers={"Accept-Encoding": client.ACCEPT_ENCODING}, timeout=5.0)
        return fast, fetch.build_request(general, source, entity, SETTINGS)

    return asyncio.run(main())


def _same(fast: httpx.Request, general: httpx.Request) -> None:
    assert fast.method == general.method
    assert str(fast.url) == str(general.url)
    assert fast.url.raw_path == general.url.raw_path
    assert fast.url.params.multi_items() == general.url.params.multi_items()
    assert fast.headers.raw == general.headers.raw
    assert fast.extensions == general.extensions


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("http://api.test/apps/{appid}/details", {}),
        ("${env.BASE}/apps/{appid}", {}),
        ("http://api.test/apps/{appid}.json?cc={cc}&l=en", {}),
        ("http://api.test/apps/x{appid}y{cc}", {}),
        ("http://api.test/apps", {"query": {"id": "{appid}", "key": "${secret.KEY}"}}),
        ("http://api.test/apps?fixed=1&b=x%20y", {"query": {"id": "{appid}"}}),  # the URL's own query kept
        ("http://api.test/apps/{appid}?cc={cc}", {"query": {"id": "{appid}"}}),
        ("http://api.test/apps/{appid}", {"headers": {"X-App": "{appid}", "Authorization": "Bearer ${secret.KEY}"}}),
        ("http://api.test/apps/{appid}", {"headers": {"Accept-Encoding": "identity", "Accept": "application/json"}}),
    ],
)
def test_compiled_request_is_the_general_one(url: str, parts: dict[str, dict[str, str]], value: JSON) -> None:
    entity = {"appid": value, "cc": value}
    if "headers" in parts and "{appid}" in str(parts["headers"]) and not isinstance(value, str | int | float):
        entity["appid"] = "7"  # a header value is text; the hostile part here is the URL
    try:
        fast, general = _both(url, entity, **parts)
    except FetchError:  # both refuse alike (a header value a line break or non-ASCII character breaks)
        with pytest.raises(FetchError):
            fetch.build_request(httpx.AsyncClient(), make_source(url, **parts), entity, SETTINGS)
        return
    _same(fast, general)


def test_a_header_line_break_is_refused_on_the_compiled_path() -> None:
    with pytest.raises(FetchError, match="header X-App would contain a line break"):
        _both("http://api.test/x/{appid}", {"appid": "1\r\nX-Admin: yes"}, headers={"X-App": "{appid}"})


@pytest.mark.parametrize(
    "url",
    [
        "http://{appid}.api.test/x",  # a value in the host
        "http://api.test/x/{appid}#top",  # a fragment
        "http://api.test",  # no path
        "http://api.test/a b/{appid}",  # httpx re-encodes the constant part
        "http://api.test/a/./b/{appid}",  # httpx removes the dot segment
    ],
)
def test_urls_the_plan_leaves_to_the_general_path(url: str) -> None:
    source = make_source(url)
    plan = plans.RequestPlan(httpx.AsyncClient(), source.request, SETTINGS)
    assert plan.build({"appid": "1"}, httpx.AsyncClient()) is None


def test_a_value_forming_a_dot_segment_falls_back_and_is_refused() -> None:
    """`/a/.{x}/b` with x = "" renders `/a/./b`, which httpx would shorten: the general path's
    structure check refuses it, as it always did."""
    source = make_source("http://api.test/a/.{appid}/b")
    plan = plans.RequestPlan(httpx.AsyncClient(), source.request, SETTINGS)
    assert plan.build({"appid": "x"}, httpx.AsyncClient()) is not None
    assert plan.build({"appid": ""}, httpx.AsyncClient()) is None
    with pytest.raises(FetchError, match="changed the structure"):
        fetch.build_request(httpx.AsyncClient(), source, {"appid": ""}, SETTINGS)


def test_a_client_holding_cookies_takes_the_general_path() -> None:
    """httpx adds its jar's cookies per request: the plan does not guess them."""
    source = make_source("http://api.test/x/{appid}")
    http = httpx.AsyncClient()
    plan = plans.RequestPlan(http, source.request, SETTINGS)
    assert plan.build({"appid": "1"}, http) is not None
    http.cookies.set("session", "s", domain="api.test")
    assert plan.build({"appid": "1"}, http) is None


def test_the_urls_own_query_comes_first_then_request_query() -> None:
    """`url: http://h/a?fixed=1` with `request.query: {id: ...}`: httpx's params= replaced the URL's
    query (the request went out as `?id=7`); both paths now send `?fixed=1&id=7`."""
    fast, general = _both("http://api.test/a?fixed=1", {"appid": 7}, query={"id": "{appid}"})
    _same(fast, general)
    assert fast.url.raw_path == b"/a?fixed=1&id=7"
