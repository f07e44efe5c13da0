"""`syncrun new`'s sample: a saved response (`--sample`) or the endpoint's own answer, read as the
engine would read it, and the URL's `{placeholders}` that say which entity to ask for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from runner import templating
from runner.client import parse_json
from runner.errors import UsageError
from runner.spec import Column

MAX_SAMPLE = 20_000_000


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
    url: str, key_value: str | None, sent: list[tuple[str, str]] | None = None
) -> tuple[Any, dict[str, str]]:
    """The endpoint's own answer as the sample, and its headers (lower-case names; a repeated header
    joined with commas): the URL as given (a list endpoint) or with its one placeholder filled by
    `key_value`; (None, {}) when it cannot be fetched as written (a setting in it, or placeholders
    without a value). UsageError when the API does not answer with usable JSON."""
    columns = placeholders(url)
    if "${" in url or len(columns) > 1 or (columns and key_value is None):
        return None, {}
    target = url.replace("{" + columns[0] + "}", quote(key_value or "", safe="")) if columns else url
    try:
        # `sent`: the user's --header values (credentials too), sent as they are and never written.
        with httpx.stream("GET", target, headers=sent, timeout=30.0, follow_redirects=True) as response:
            raw = b""
            for chunk in response.iter_bytes():
                raw += chunk
                if len(raw) > MAX_SAMPLE:
                    raise UsageError(f"--url: the answer is larger than {MAX_SAMPLE // 1_000_000} MB; pass --sample")
    except httpx.HTTPError as error:
        raise UsageError(
            f"--url: could not fetch a sample ({type(error).__name__}): save one and pass --sample"
        ) from None
    value, problem = parse_json(raw)
    if response.status_code >= 400 or problem or value is None:
        raise UsageError(
            f"--url: the API answered HTTP {response.status_code}{f' ({problem})' if problem else ''}, not a sample"
            " to learn from: save a good response and pass --sample"
        )
    return value, {name.lower(): text for name, text in response.headers.items()}


def placeholders(url: str) -> list[str]:
    """The `{column}` names of the URL, in order of first appearance."""
    try:
        template = templating.parse(url)
    except Exception as error:  # templating raises ValueError-like errors with a message
        raise UsageError(f"--url {url!r}: {error}") from None
    names = [s.name for s in template.segments if isinstance(s, Column)]
    return list(dict.fromkeys(names))
