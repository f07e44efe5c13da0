"""replay: --record saves a run's exchanges (secrets masked); --replay serves them under the limiter."""

from __future__ import annotations

import asyncio
import gzip
import json
import resource
from pathlib import Path
from urllib.parse import quote_plus

import httpx
import pytest
import yaml

from runner import cli, spec, templating
from runner.aiotransport import AiohttpTransport
from runner.commands import run as run_command
from runner.ratelimit import Limiter, RateLimitedTransport
from runner.redaction import FRAGMENT, Redactor, forms
from runner.replay import CASSETTE, RecordingTransport, ReplayTransport
from tests.apiserver import ApiServer, Reply
from tests.pg import Database
from tests.test_engine import app, seed, write_source
from tests.test_fetch import make_source

SECRET = "s3cr3t-token-value"


def test_record_then_replay_gives_the_same_rows(
    db: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recorded run replays offline to the same rows and job counters; the secret is not in the cassette."""
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("API_URL", api.url)
    monkeypatch.setenv("API_TOKEN", SECRET)
    source = write_source(tmp_path)
    seed(db, source, appids=[1, 2, 3])
    api.route("/apps/1", app(1))
    api.route("/apps/2", Reply(503), app(2))
    api.route("/apps/3", Reply(404))
    recorded = tmp_path / "recorded"
    assert cli.main(["run", str(source), "--record", str(recorded)]) == 0
    cassette = (recorded / source.stem / CASSETTE).read_text()
    assert SECRET not in cassette
    first = db.rows("select appid, name, price_cents from apps order by appid")
    db.run("truncate apps, syncrun_state, sync_jobs; update sync_status set last_alpha_sync = null")
    served = len(api.requests)
    assert cli.main(["run", str(source), "--replay", str(recorded), "--rate-scale", "10"]) == 0
    assert len(api.requests) == served  # nothing went to the server
    assert db.rows("select appid, name, price_cents from apps order by appid") == first
    assert db.rows("select items_succeeded, items_skipped, requests_made from sync_jobs") == [(2, 1, 4)]


def test_recording_gzip_answers_and_bombs(
    db: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--record used to decode a body, then hand it on still labelled gzip (every gzip answer failed),
    and read it without bound. Now a gzip answer records and replays; a bomb is that entity's error,
    in bounded memory, as without --record."""
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("API_URL", api.url)
    source = write_source(tmp_path)
    seed(db, source, appids=[1, 2])
    api.route("/apps/1", Reply(200, body=gzip.compress(b'{"name": "App 1", "price": 10}'), headers=GZIP))
    api.route("/apps/2", Reply(200, body=gzip.compress(b"[" + b" " * 200_000_000 + b"]"), headers=GZIP))
    recorded = tmp_path / "recorded"
    assert cli.main(["run", str(source), "--record", str(recorded)]) == 0
    assert db.rows("select appid, name from apps") == [(1, "App 1")]
    (error,) = db.rows("select last_error from syncrun_state where entity_key = '2'")[0]
    assert "max_body" in error
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 1_000_000  # KiB: the bomb was not inflated
    db.run("truncate apps, syncrun_state, sync_jobs; update sync_status set last_alpha_sync = null")
    assert cli.main(["run", str(source), "--replay", str(recorded), "--ids", "1"]) == 0
    assert db.rows("select appid, name from apps") == [(1, "App 1")]


GZIP = {"Content-Type": "application/json", "Content-Encoding": "gzip"}


def test_a_request_without_a_recording_is_a_connection_error(tmp_path: Path) -> None:
    """An unrecorded request fails like an unreachable server, naming the request (masked)."""
    (tmp_path / CASSETTE).write_text("interactions: []\nversion: 1\n")
    transport = ReplayTransport(tmp_path, Redactor(["k3y"]))

    async def get() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get("http://api.test/x?key=k3y")

    with pytest.raises(httpx.ConnectError, match=r"no recorded exchange for GET http://api\.test/x\?key=\*\*\*"):
        asyncio.run(get())


def test_recording_masks_secrets_in_uri_and_body(tmp_path: Path) -> None:
    """The recorder keeps no request headers and masks secret values in the URI and the response body."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"echo": "k3y-value"})

    recorder = RecordingTransport(httpx.MockTransport(handler), Redactor(["k3y-value"]), max_body=10_000_000)

    async def get() -> None:
        async with httpx.AsyncClient(transport=recorder) as client:
            await client.get("http://api.test/x?key=k3y-value", headers={"Authorization": "Bearer k3y-value"})

    asyncio.run(get())
    saved = recorder.save(tmp_path).read_text()
    assert "k3y-value" not in saved
    assert "key=***" in saved


HOSTILE = 'k3y\\ "q/%2F+~ ünï-0a9b8c7d6e'  # \ " / % + ~, a space and non-ASCII: every escape differs


def test_a_cassette_holds_no_piece_of_a_secret_in_any_form(tmp_path: Path) -> None:
    """A secret with `\\ " / % + ~`, a space and non-ASCII, in the URL and echoed by the API in the
    status text, a kept header and the body (raw, JSON-escaped, percent-encoded, cut short): the YAML
    file has no 8-character piece of any form of it, and the recording still replays."""
    said = [HOSTILE, HOSTILE[:13], quote_plus(HOSTILE), HOSTILE[-10:]]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400,
            json={"error": said, "echo": str(request.url)},
            headers={"Retry-After": HOSTILE.encode()[:20]},
            extensions={"reason_phrase": b"Bad " + HOSTILE[:12].encode()},
        )

    recorder = RecordingTransport(httpx.MockTransport(handler), Redactor([HOSTILE]), max_body=10_000_000)

    async def get(transport: httpx.AsyncBaseTransport) -> httpx.Response:
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.get("http://api.test/x", params={"key": HOSTILE}, headers={"X-Key": "ascii-only"})

    live = asyncio.run(get(recorder))
    saved = recorder.save(tmp_path).read_text()
    for form in forms(HOSTILE) | {yaml.safe_dump(HOSTILE, width=10**6).strip()}:
        pieces = {form[i : i + FRAGMENT] for i in range(len(form) - FRAGMENT + 1)}
        assert not [piece for piece in pieces if piece in saved], form
    assert "key=***" in saved
    replayed = asyncio.run(get(ReplayTransport(tmp_path, Redactor([HOSTILE]))))
    assert replayed.status_code == live.status_code == 400
    assert replayed.json()["error"][0] == "***"


def test_a_body_with_a_secret_before_an_escape_replays_as_json(tmp_path: Path) -> None:
    """A token right before `\\"`, `\\\\`, `\\n` or `\\u00e9` in a JSON body (review revH F1): the mask
    eats nothing of the escape, so the cassette's body still parses on replay."""
    values = [f'said "{SECRET}"', f"{SECRET}\\x", f"{SECRET}\nnext", f"{SECRET}é", f'{SECRET[:12]}"cut']

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=json.dumps({"echo": values}).encode())

    recorder = RecordingTransport(httpx.MockTransport(handler), Redactor([SECRET]), max_body=10_000_000)

    async def get(transport: httpx.AsyncBaseTransport) -> httpx.Response:
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.get("http://api.test/x")

    asyncio.run(get(recorder))
    recorder.save(tmp_path)
    replayed = asyncio.run(get(ReplayTransport(tmp_path, Redactor([SECRET]))))
    assert replayed.json() == {"echo": ['said "***"', "***\\x", "***\nnext", "***é", '***"cut']}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (bytes(range(256)) * 4, "is not a cassette syncrun can read"),
        (b"interactions: 5\n", "it needs an `interactions` list"),
        (b"- just\n- a list\n", "it needs an `interactions` list"),
        (b"interactions: [{request: {method: GET}}]\n", "interaction 0 is not an exchange"),
        (
            b"interactions:\n- request: {method: GET, uri: 'http://x/'}\n  response: {status: {code: 9999}}\n",
            "interaction 0",
        ),
        (b"a: &x [1, 2]\nb: &y [*x, *x, *x, *x]\ninteractions: [*y, *y]\n", "interaction 0 is not an exchange"),
        (b"[" * 5000, "is not a cassette syncrun can read"),
    ],
)
def test_a_damaged_cassette_is_a_usage_error(
    content: bytes, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Random bytes, a foreign YAML shape, aliases or deep nesting in a cassette: exit 2 naming the file
    (random bytes and `interactions: 5` were exit 70), before any job row."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("API_URL", "http://127.0.0.1:9")
    source = write_source(tmp_path)
    (tmp_path / "rec" / source.stem).mkdir(parents=True)
    (tmp_path / "rec" / source.stem / CASSETTE).write_bytes(content)
    assert cli.main(["run", str(source), "--replay", str(tmp_path / "rec"), "--dry-run", "--ids", "1"]) == 2
    assert message in capsys.readouterr().err


def test_recording_sends_through_the_transport_of_a_normal_run(tmp_path: Path) -> None:
    """--record wraps the aiohttp transport a run uses (not httpcore's), and the limiter still stamps
    grants when the request is written: the recorder passes the transport's trace events on."""
    settings = templating.Settings({}, Redactor([]))
    make, _ = run_command._transports(run_command._Playback(record=tmp_path), settings)
    assert make is not None
    recorder = make(make_source("http://api.test/x"))
    assert isinstance(recorder, RecordingTransport)
    assert isinstance(recorder._inner, AiohttpTransport)
    limited = RateLimitedTransport(recorder, Limiter(spec.RateLimit(requests=1, per=1.0, bucket="b")))
    assert limited._traced
    asyncio.run(recorder.aclose())
