"""`syncrun new --url`'s own fetch of a sample (runner/samples.py) against hostile answers from a real
loopback server: no redirect followed (the user's headers reach no other origin), the body bounded on
the wire and decoded, a total deadline, the strict JSON parser; each ends as exit 2 with one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import socket
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest

from runner import cli, samples, spec
from runner.errors import UsageError
from tests.apiserver import ApiServer, Reply
from tests.test_security import planted_leaks

KEY = "SeCrEtApIkEy123"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "syncrun.yaml").write_text("status: {table: sync_status, key: appid}\nentities: {key: appid}\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Runs `syncrun new` expecting exit 2 and no output; its one-line message."""
    assert cli.main(["new", *args]) == 2
    captured = capsys.readouterr()
    assert not captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_a_redirect_to_another_origin_is_not_followed_and_gets_no_header(
    project: Path, api: ApiServer, other: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The review's leak: a 302 to another origin. Nothing reaches the other server; the message says
    where the redirect points and that the user can pass that URL. No file is written."""
    api.route("/redir/1", Reply(302, headers={"Location": f"{other.url}/ok/stolen"}))
    other.route("/ok/stolen", Reply(200, json={"id": 1}))
    url = f"{api.url}/redir/{{id}}"
    err = _refused(["stolen", "--url", url, "--id", "1", "--header", f"X-Api-Key: {KEY}"], capsys)
    assert f"the API answered HTTP 302, a redirect to {other.url}/ok/stolen;" in err
    assert "syncrun follows no redirect (nor would a run): pass that URL as --url" in err
    assert other.requests == []
    assert [r.headers.get("x-api-key") for r in api.requests] == [KEY]  # the origin asked got it, once
    assert not planted_leaks([err], [KEY])
    assert not (project / "sources" / "stolen.yaml").exists()


def test_a_same_origin_redirect_is_named_resolved_and_masked(
    project: Path, api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A relative Location is shown as the full URL to pass; a key of --url's query it echoes is masked."""
    key = "k-Pq8Wm3Zx7Lt2aa"
    api.route("/v1/items", Reply(301, headers={"Location": f"/v2/items?api_key={key}"}))
    err = _refused(["items", "--url", f"{api.url}/v1/items?api_key={key}"], capsys)
    assert f"a redirect to {api.url}/v2/items?api_key=" in err
    assert not planted_leaks([err], [key])
    assert [r.path for r in api.requests] == ["/v1/items"]


def _gzip_of_gzip(size: int) -> bytes:
    """gzip(gzip(`size` zero bytes)), made in steps (a few KB; `size` is never held)."""
    inner = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"0" * 1_000_000
    layer = b"".join(inner.compress(block) for _ in range(size // len(block))) + inner.flush()
    return gzip.compress(layer, 9)


def test_a_gzip_of_gzip_bomb_stops_at_the_cap(
    project: Path, api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The review's bomb: `Content-Encoding: gzip, gzip`, 300 MB of zeros in a few KB. The decoder stops
    at the cap (the run's default max_body, 10 MB): Python's allocations peak far below what inflating
    it whole would take (the review saw 3.1 GB of RSS for 1.5 GB)."""
    body = _gzip_of_gzip(300_000_000)
    assert len(body) < 10_000
    api.route("/bomb", Reply(200, body=body, headers={"Content-Encoding": "gzip, gzip"}))
    tracemalloc.start()
    try:
        err = _refused(["bomb", "--url", f"{api.url}/bomb"], capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "past request.max_body (10,000,000 bytes); stopped reading" in err or "once decoded" in err, err
    assert "save one smaller response (one page) and pass --sample" in err
    assert peak < 60_000_000, f"peak {peak:,} bytes"


def test_a_body_over_the_cap_is_refused_before_or_while_reading(
    project: Path, api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A declared length over the cap is refused unread; an undeclared (chunked) one stops at the cap."""
    api.route("/big", Reply(200, size=samples.MAX_BODY + 1))
    api.route("/chunked", Reply(200, size=samples.MAX_BODY + 100_000, chunked=True))
    assert "declares 10,000,001 bytes (Content-Length)" in _refused(["big", "--url", f"{api.url}/big"], capsys)
    err = _refused(["chunked", "--url", f"{api.url}/chunked"], capsys)
    assert "exceeded request.max_body (10,000,000 bytes); stopped reading" in err


def test_the_cap_is_the_runs_default_max_body() -> None:
    default = next(f.default for f in dataclasses.fields(spec.Request) if f.name == "max_body")
    assert default == samples.MAX_BODY


@pytest.mark.parametrize("reply", [Reply(200, drip=0.05), Reply(200, hang=True)], ids=["drip", "no-headers"])
def test_a_slow_server_ends_at_the_total_deadline(project: Path, api: ApiServer, reply: Reply) -> None:
    """A body dripped a byte at a time (each read well inside any per-read timeout), or headers that
    never come: the fetch ends at its total deadline, saying so."""
    api.route("/slow", reply)
    started = time.monotonic()
    with pytest.raises(UsageError) as raised:
        samples.fetch_reply(f"{api.url}/slow", None, deadline=1.0)
    elapsed = time.monotonic() - started
    assert str(raised.value) == (
        "--url: no complete answer within 1 s (connect, headers and body): save one response and pass --sample"
    )
    assert 0.9 <= elapsed < 6.0, elapsed  # the margin: a loaded 2-CPU machine


def test_a_body_of_declared_length_dripped_ends_at_the_deadline(project: Path) -> None:
    """The review's drip: `Content-Length: 100000`, then a byte every 0.05 s (a body read in one go
    when its length is declared: the deadline still ends it)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
            with contextlib.suppress(OSError):
                while not stop.wait(0.05):
                    connection.sendall(b" ")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(UsageError, match=r"no complete answer within 1 s \(connect, headers and body\)"):
            samples.fetch_reply(f"http://127.0.0.1:{listener.getsockname()[1]}/drip", None, deadline=1.0)
        assert time.monotonic() - started < 6.0
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=2)


def test_a_slow_answer_inside_the_deadline_is_read(project: Path, api: ApiServer) -> None:
    """Only the total deadline bounds the fetch: an answer 5.5 s late (past httpx's default 5 s per read,
    which once became aiohttp's read timeout) is still a sample."""
    api.route("/late", Reply(200, json={"id": 1}, delay=5.5))
    assert samples.fetch_reply(f"{api.url}/late", None, deadline=15.0)[0] == {"id": 1}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "JSON nested deeper than 128 levels"),
        (b"[" * 200 + b"]" * 200, "JSON nested 200 levels deep, more than 128"),
        (b'{"a": NaN}', "unusable JSON: NaN is not a JSON number"),
        (b'{"a": 1e999}', "unusable JSON: the number 1e999 is out of range for a double"),
        (b'{"a": "\xff"}', "not valid UTF-8 at byte 7"),
    ],
    ids=["deep", "200-levels", "nan", "1e999", "bad-utf8"],
)
def test_json_the_run_would_refuse_is_refused_clearly(
    project: Path, api: ApiServer, body: bytes, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    api.route("/items", Reply(200, body=body, headers={"Content-Type": "application/json"}))
    err = _refused(["items", "--url", f"{api.url}/items"], capsys)
    assert f"the API answered HTTP 200 ({problem}" in err
    assert "not a sample to learn from: save a good response and pass --sample" in err


_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (Reply(200, body=b'{"a": 1}', headers={"Content-Encoding": "gzip"}), "is not valid gzip data"),
        (Reply(200, body=gzip.compress(b'{"a": 1}')[:-8], headers={"Content-Encoding": "gzip"}), "truncated"),
        (Reply(200, body=b"x", headers={"Content-Encoding": "br"}), "Content-Encoding br, which syncrun does not"),
        (Reply(200, body=b"x", headers={"Content-Encoding": "gzip, gzip, gzip"}), "encoded 3 times"),
        (Reply(reset=True), "could not fetch a sample"),
        (Reply(raw=_HEAD + b"Content-Length: 100\r\n\r\n{}"), "could not fetch a sample"),
        (Reply(raw=_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"), "could not fetch a sample"),
        (Reply(raw=b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 500 + b"\r\n{}"), "could not fetch a sample"),
        (Reply(raw=b"garbage\r\n\r\n"), "could not fetch a sample"),
        (Reply(302, headers={"Location": "http://x/\x1b[2Jé"}), "a redirect to http://x/\\x1b[2J\\xe9;"),
        (Reply(307, headers={"Location": "http://[::1/x"}), "a redirect to http://[::1/x;"),
        (Reply(200, json={"a": 1}, headers={"Set-Cookie": "a=\xfc\x01; Path=/"}), None),
    ],
    ids=[
        "bad-gzip",
        "cut-gzip",
        "br",
        "3-codings",
        "reset",
        "short-body",
        "bad-chunk",
        "500-headers",
        "garbage",
        "odd-location",
        "bad-location",
        "odd-cookie",
    ],
)
def test_hostile_answers_exit_2_with_one_line(
    project: Path, api: ApiServer, reply: Reply, says: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Never a traceback (exit 70): each hostile answer is a one-line usage error, or (a cookie, which
    a sample fetch ignores) a scaffold."""
    api.route("/x", reply)
    if says is None:
        assert cli.main(["new", "x", "--url", f"{api.url}/x"]) == 0
        return
    assert says in _refused(["x", "--url", f"{api.url}/x"], capsys)


def test_a_url_that_cannot_be_fetched_says_so(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "give a full http:// or https:// URL" in _refused(["x", "--url", "ftp://example.com/x"], capsys)
    assert "could not fetch a sample (ConnectError" in _refused(["x", "--url", "http://127.0.0.1:9/x"], capsys)
