"""Recorded HTTP exchanges: `--record DIR` saves a run's exchanges, `--replay DIR` serves them.

Both are httpx transports plugged in *under* the rate limiter (the engine's injected transport
seam), so a replay spends rate-limit budget exactly like the live run; `--rate-scale K` speeds the
limiter and every wait up by K instead of switching anything off.

The files are vcrpy cassettes (format version 1), so cassettes recorded with vcrpy replay here and
ours load in vcrpy. We don't use vcrpy's own patching: it hooks `httpx.AsyncClient` above the
transport, which would bypass the limiter. Secrets are masked (`***`) in everything recorded (URI,
status text, the few response headers kept, the body) *before* it is serialised: the redactor knows
a secret's JSON, percent and YAML escapes and masks any 8-character piece of them, so neither an API
echoing a token in an escaped form nor YAML's own escaping can carry one into the file. Request
headers are not recorded at all. The same masking is applied to live requests before matching, so a
replay works with any secret value.

A request matches an exchange by method, scheme, host, path and its query parameters in any order.
Exchanges for the same request play in recorded order; the last one then repeats.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from runner import body
from runner.errors import UsageError
from runner.redaction import Redactor

CASSETTE = "cassette.yaml"
Key = tuple[str, str, str, str, tuple[tuple[str, str], ...]]


def _key(method: str, url: httpx.URL | str, redact: Redactor) -> Key:
    parsed = httpx.URL(redact(str(url)))
    query = tuple(sorted(parsed.params.multi_items()))
    return method.upper(), parsed.scheme, parsed.host, parsed.path, query


class ReplayTransport(httpx.AsyncBaseTransport):
    """Serves the exchanges of every `cassette.yaml` under `directory`; opens no socket at all."""

    def __init__(self, directory: Path, redact: Redactor) -> None:
        self._redact = redact
        self._exchanges: dict[Key, list[dict[str, Any]]] = defaultdict(list)
        files = sorted(directory.rglob(CASSETTE)) if directory.is_dir() else []
        if not files:
            raise FileNotFoundError(f"no {CASSETTE} under {directory}: record one with --record {directory}")
        for file in files:
            for method, uri, response in _interactions(file):
                self._exchanges[_key(method, uri, redact)].append(response)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        queue = self._exchanges.get(_key(request.method, request.url, self._redact))
        if not queue:
            # A connection error, so the engine treats it like any unreachable server: retried, then
            # that entity fails with this message.
            raise httpx.ConnectError(
                f"replay has no recorded exchange for {request.method} {self._redact(str(request.url))}"
            )
        response = queue.pop(0) if len(queue) > 1 else queue[0]
        headers = [(name, value) for name, values in response.get("headers", {}).items() for value in values]
        body = (response.get("body") or {}).get("string") or ""
        content = body.encode("utf-8", "surrogatepass")
        return httpx.Response(response["status"]["code"], headers=headers, content=content, request=request)


def _interactions(file: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, uri, response) of each exchange in a cassette, its shape checked: a damaged or foreign
    file is a usage error naming it (exit 2), never a crash in the middle of a run."""
    try:
        # Aliases are fine (safe_dump writes them for repeated objects): they share one object, and the
        # shape check below looks at each exchange once, never expanding nested aliases.
        document = yaml.safe_load(file.read_bytes())
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as error:
        raise UsageError(f"{file} is not a cassette syncrun can read: {str(error).splitlines()[0]}") from None
    interactions = document.get("interactions") if isinstance(document, dict) else None
    if not isinstance(interactions, list):
        raise UsageError(f"{file} is not a cassette: it needs an `interactions` list (record one with --record)")
    for number, interaction in enumerate(interactions):
        if not _exchange(interaction):
            raise UsageError(
                f"{file}: interaction {number} is not an exchange syncrun recorded (request.method and uri,"
                " response.status.code 100–599, headers of text lists, body.string text)"
            )
        yield interaction["request"]["method"], interaction["request"]["uri"], interaction["response"]


def _exchange(interaction: Any) -> bool:
    request = interaction.get("request") if isinstance(interaction, dict) else None
    response = interaction.get("response") if isinstance(interaction, dict) else None
    if not (isinstance(request, dict) and isinstance(response, dict)):
        return False
    status = response.get("status")
    code = status.get("code") if isinstance(status, dict) else None
    headers = response.get("headers", {})
    body = response.get("body") or {}
    return (
        isinstance(request.get("method"), str)
        and isinstance(request.get("uri"), str)
        and type(code) is int
        and 100 <= code <= 599
        and isinstance(headers, dict)
        and all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in headers.values())
        and isinstance(body, dict)
        and isinstance(body.get("string") or "", str)
    )


class RecordingTransport(httpx.AsyncBaseTransport):
    """Passes requests to `inner` and keeps every exchange (secrets masked) for `save`."""

    def __init__(self, inner: httpx.AsyncBaseTransport, redact: Redactor, *, max_body: int) -> None:
        self._inner, self._redact, self._max_body = inner, redact, max_body
        self.interactions: list[dict[str, Any]] = []
        # The rate limiter stamps a grant when the inner transport writes the request (its trace
        # events pass through here untouched, on the same request), as in a run without --record.
        self.emits_trace = getattr(inner, "emits_trace", False) or isinstance(inner, httpx.AsyncHTTPTransport)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        try:  # decoded by a run's own bounded reader (runner.body): a bomb costs no more when recording
            content = await body.read_body(response, self._max_body, self._redact(str(request.url)))
        finally:
            await response.aclose()
        self.interactions.append(
            {
                "request": {
                    "method": request.method,
                    "uri": self._redact(str(request.url)),
                    "body": None,
                    "headers": {},  # request headers carry credentials; matching never needs them
                },
                "response": {
                    "status": {"code": response.status_code, "message": self._redact(response.reason_phrase)},
                    "headers": {
                        name: [self._redact(value)]
                        for name, value in response.headers.items()
                        if name.lower() in ("content-type", "retry-after", "date")
                    },
                    "body": {"string": self._redact(content.decode("utf-8", "replace"))},
                },
            }
        )
        # The body is decoded now: its Content-Encoding (and the length on the wire) no longer describe it.
        drop = (b"content-encoding", b"content-length")
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in drop]
        return httpx.Response(response.status_code, headers=headers, content=content, request=request)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CASSETTE
        path.write_text(yaml.safe_dump({"interactions": self.interactions, "version": 1}, sort_keys=False))
        return path
