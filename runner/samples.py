"""`syncrun new`'s sample: a saved response (`--sample`) or the endpoint's own answer, fetched and read
as the engine would (no redirect followed, a total deadline, the bounded body reader, the strict JSON
parser), and the URL's `{placeholders}` that say which entity to ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from runner import templating
from runner.aiotransport import AiohttpTransport
from runner.body import ACCEPT_ENCODING, joined, parse_json, read_body
from runner.errors import FetchError, UsageError
from runner.spec import Column

MAX_SAMPLE = 20_000_000  # a saved --sample file
MAX_BODY = 10_000_000  # a fetched sample: the run's default request.max_body (runner/spec/request.py)
DEADLINE = 30.0  # seconds for the whole fetch of a sample: connect, headers and body
SHOWN = 300  # characters of a URL or an error quoted in a message


def read_sample(path: Path) -> Any:
    """The sample response as JSON; UsageError saying how to get one when it is not."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_SAMPLE + 1)
    except OSError as error:
        raise UsageError(f"--sample {path}: cannot read it ({error.strerror})") from None
    if len(raw) > MAX_SAMPLE:
        raise UsageError(f"--sample {path}: larger than {MAX_SAMPLE // 1_000_000} MB; save one response, not a dump")
    # The engine's own parser: what it refuses (too deep, NaN, bad bytes) it would refuse at run time too.
    value, problem = parse_json(raw)
    if problem or value is None:
        raise UsageError(
            f"--sample {path}: not JSON syncrun can use ({problem or 'empty'}) — save one raw response"
            f" of the endpoint, e.g. `curl -s 'https://…/730' > {path}`"
        )
    return value


def fetch_sample(url: str, key_value: str | None) -> Any:
    """The endpoint's own answer as the sample (its body; see `fetch_reply`)."""
    return fetch_reply(url, key_value)[0]


def fetch_reply(
    url: str,
    key_value: str | None,
    sent: list[tuple[str, str]] | None = None,
    *,
    deadline: float = DEADLINE,
    max_body: int = MAX_BODY,
) -> tuple[Any, dict[str, str]]:
    """The endpoint's own answer as the sample, and its headers (lower-case names; a repeated header
    joined with commas): the URL as given (a list endpoint) or with its one placeholder filled by
    `key_value`; (None, {}) when it cannot be fetched as written (a setting in it, or placeholders
    without a value). UsageError when the API does not answer with usable JSON within `deadline`
    seconds (connect, headers and body) and `max_body` bytes (on the wire and decoded).

    Fetched as a run fetches (runner/client.py, runner/body.py): the same transport (no proxy, no cookie jar), no
    redirect followed (`sent` holds the user's credentials: they go to this URL's origin and nowhere
    else), the body read by the bounded decoder, the strict JSON parser."""
    columns = placeholders(url)
    if "${" in url or len(columns) > 1 or (columns and key_value is None):
        return None, {}
    target = url.replace("{" + columns[0] + "}", quote(key_value or "", safe="")) if columns else url
    try:
        parts = urlsplit(target)
        full = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:  # "Invalid IPv6 URL", a port that is not a number
        full = False
    if not full:
        raise UsageError("--url: give a full http:// or https:// URL (or pass --sample)")
    status, headers, raw = asyncio.run(_fetch(target, sent or [], deadline, max_body))
    value, problem = parse_json(raw)
    if status >= 400 or problem or value is None:
        raise UsageError(
            f"--url: the API answered HTTP {status}{f' ({problem})' if problem else ''}, not a sample"
            " to learn from: save a good response and pass --sample"
        )
    return value, headers


async def _fetch(
    target: str, sent: list[tuple[str, str]], deadline: float, max_body: int
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, decoded body) of one GET of `target`; UsageError for anything else."""
    # A one-off client only to build the request as a run's client would (its default headers);
    # the request goes straight to the transport: no cookie jar, no redirects, no auth flow.
    # Its timeouts (httpx's default: 5 s per read) become aiohttp's per-read ones: only the total applies.
    builder = httpx.AsyncClient(
        headers={"Accept-Encoding": ACCEPT_ENCODING}, follow_redirects=False, timeout=httpx.Timeout(deadline)
    )
    transport = AiohttpTransport(limits=httpx.Limits(max_connections=1))
    try:
        async with asyncio.timeout(deadline):
            # `sent`: the user's --header values (credentials too), sent as they are and never written.
            request = builder.build_request("GET", target, headers=sent)
            response = await transport.handle_async_request(request)
            try:
                headers = joined(response.headers)
                location = headers.get("location")
                if 300 <= response.status_code < 400 and location is not None:
                    raise UsageError(_redirected(response.status_code, target, location))
                raw = await read_body(response, max_body, _shown(target), headers)
            finally:
                await response.aclose()
    except TimeoutError:
        raise UsageError(
            f"--url: no complete answer within {deadline:g} s (connect, headers and body):"
            " save one response and pass --sample"
        ) from None
    except FetchError as error:  # the body reader's: too large, or not decodable
        hint = (
            f"syncrun new reads a sample as a run would (request.max_body defaults to {MAX_BODY // 1_000_000} MB):"
            " save one smaller response (one page) and pass --sample"
            if "max_body" in str(error)
            else "save one response and pass --sample"
        )
        raise UsageError(f"--url: {error} — {hint}") from None
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as error:  # ValueError: aiohttp refusing a URL
        raise UsageError(
            f"--url: could not fetch a sample ({type(error).__name__}{_detail(error)}): save one and pass --sample"
        ) from None
    finally:
        await transport.aclose()
        await builder.aclose()
    return response.status_code, headers, raw


def _redirected(status: int, target: str, location: str) -> str:
    """The message for a redirect, naming where it points (resolved against `target`)."""
    with contextlib.suppress(ValueError):  # a Location urllib cannot read ("http://[::1/") is shown as it came
        location = urljoin(target, location)
    return (
        f"--url: the API answered HTTP {status}, a redirect to {_shown(location)};"
        " syncrun follows no redirect (nor would a run): pass that URL as --url"
    )


def _shown(text: str) -> str:
    """`text` fit for a one-line message: control and non-ASCII characters escaped, at most SHOWN long.
    (The caller's redactor masks any piece of a secret in it.)"""
    escaped = text.encode("unicode_escape").decode("ascii")
    return escaped if len(escaped) <= SHOWN else escaped[:SHOWN] + "…"


def _detail(error: Exception) -> str:
    """aiohttp's text of a transport error (it quotes the parser's view over several lines) on one line."""
    text = " ".join(str(error).replace("\\n", " ").split())
    return f": {_shown(text)}" if text else ""


def placeholders(url: str) -> list[str]:
    """The `{column}` names of the URL, in order of first appearance."""
    try:
        template = templating.parse(url)
    except Exception as error:  # templating raises ValueError-like errors with a message
        raise UsageError(f"--url {url!r}: {error}") from None
    names = [s.name for s in template.segments if isinstance(s, Column)]
    return list(dict.fromkeys(names))
