"""The `syncrun` command as a user runs it: a separate process, signals, exit codes, output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import jobs
from tests.apiserver import ApiServer, Reply
from tests.pg import Database
from tests.test_engine import app, seed, write_source

ROOT = Path(__file__).resolve().parent.parent


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.fixture
def env(db: Database, api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("API_URL", api.url)
    return {"DATABASE_URL": db.dsn, "API_URL": api.url, "API_TOKEN": "s3cr3t-token-value"}


def held_routes(api: ApiServer, fast: int, held: int, hold: float) -> None:
    for appid in range(1, fast + 1):
        api.route(f"/apps/{appid}", app(appid))
    for appid in range(fast + 1, fast + held + 1):
        api.route(f"/apps/{appid}", Reply(200, json={"name": f"App {appid}", "price": 1}, delay=hold))


@pytest.mark.slow
def test_sigterm_cancels_cleanly_with_exact_counters(
    db: Database, api: ApiServer, env: dict[str, str], tmp_path: Path
) -> None:
    """SIGTERM while responses are held open: in-flight entities finish and are written, the job is
    `cancelled` with exact counters, no entity is half-written, exit 143."""
    source = write_source(tmp_path)
    seed(db, source, appids=range(1, 13))
    held_routes(api, fast=2, held=10, hold=1.0)
    process = start(["run", str(source)], env)
    wait_for(lambda: len(api.requests) >= 5)  # 2 done, >= 2 held open by the server
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 143, err
    status, processed, succeeded, created, updated, error, metadata = db.rows(
        "select status, items_processed, items_succeeded, items_created, items_updated, error_message, metadata"
        " from sync_jobs"
    )[0]
    assert status == "cancelled"
    written = db.scalar("select count(*) from apps")
    stamped = db.scalar("select count(*) from sync_status where last_alpha_sync is not null")
    assert processed == succeeded == written == stamped == len(api.requests)
    assert processed < 12
    assert (created, updated) == (written, 0)  # every app row was new
    assert error == "cancelled by SIGTERM"
    assert metadata == {"graceful_stop": True, "stop_reason": "SIGTERM"}


def test_a_killed_runs_job_row_keeps_what_it_committed(
    db: Database, api: ApiServer, env: dict[str, str], tmp_path: Path
) -> None:
    """review13 F5: the job row's counters follow each committed batch (not only the heartbeat, here
    once an hour), so a runner killed outright (SIGKILL) leaves a row that, reaped, says what it wrote."""
    source = write_source(tmp_path)
    seed(db, source, appids=range(1, 9))
    held_routes(api, fast=4, held=4, hold=5.0)
    process = start(["run", str(source), "--set", "write_batch=2", "--heartbeat", "3600", "--lease", "7200"], env)
    counters = "select items_processed, items_succeeded, items_created, requests_made from sync_jobs"
    wait_for(lambda: db.rows(counters) and db.rows(counters)[0][1] == 4)
    process.kill()
    process.communicate(timeout=20)
    assert db.rows("select status from sync_jobs") == [("running",)]
    assert jobs.reap(db.conn, 0) == 1
    status, error, processed, succeeded, created, requests = db.rows(
        "select status, error_message, items_processed, items_succeeded, items_created, requests_made from sync_jobs"
    )[0]
    assert (status, error.startswith("abandoned: no heartbeat for")) == ("failed", True)
    stamped = db.scalar("select count(*) from sync_status where last_alpha_sync is not null")
    assert processed == succeeded == created == stamped == db.scalar("select count(*) from apps") == 4
    assert requests >= 4


@pytest.mark.slow
def test_max_runtime_stops_cleanly_and_completes(
    db: Database, api: ApiServer, env: dict[str, str], tmp_path: Path
) -> None:
    """--max-runtime takes no new entities after the deadline, writes in-flight ones, marks the job completed."""
    source = write_source(tmp_path)
    seed(db, source, appids=range(1, 31))
    held_routes(api, fast=0, held=30, hold=0.4)
    process = start(["run", str(source), "--max-runtime", "1"], env)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    status, processed, error, metadata = db.rows(
        "select status, items_processed, error_message, metadata from sync_jobs"
    )[0]
    assert status == "completed"
    assert 0 < processed < 30
    assert processed == db.scalar("select count(*) from apps") == len(api.requests)
    assert error is None
    assert metadata == {"graceful_stop": True, "stop_reason": "max_runtime"}
    # the summary line says it stopped early, and why (review13 F6)
    (summary,) = [line for line in err.splitlines() if line.startswith("alpha: completed — ")]
    assert summary.endswith(
        "; stopped early: --max-runtime reached, no new entities were taken; the rest is left for the next run"
    )


def test_validate_exit_codes(tmp_path: Path) -> None:
    """validate exits 0 for the bundled sources and 2 (listing file:line: path) for a broken one."""
    ok = subprocess.run([sys.executable, "-m", "runner", "validate"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Bad-Name\nrate_limit: {requests: 1, per: soon}\n")
    result = subprocess.run(
        [sys.executable, "-m", "runner", "validate", str(bad)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert f"{bad}:1: name:" in result.stdout
    assert f"{bad}:2: rate_limit.per:" in result.stdout


def test_unreachable_database_url_fails_without_fallback(tmp_path: Path) -> None:
    """A set but unreachable DATABASE_URL fails the run (never the embedded database), password masked."""
    source = write_source(tmp_path)
    env = {**os.environ, "DATABASE_URL": "postgresql://u:hunter22@127.0.0.1:1/x", "API_URL": "http://127.0.0.1:1"}
    result = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(source)], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert result.returncode == 1
    assert "hunter22" not in result.stdout + result.stderr
    assert "***" in result.stderr


def test_json_logs_never_contain_secrets(db: Database, api: ApiServer, env: dict[str, str], tmp_path: Path) -> None:
    """--log-format json prints one JSON object per line; the secret and DB password never appear."""
    import json

    source = write_source(tmp_path)
    seed(db, source, appids=[1, 2])
    api.route("/apps/1", Reply(400, json={"error": "token s3cr3t-token-value rejected"}))
    api.route("/apps/2", app(2))
    source.write_text(
        source.read_text()
        + "outcomes:\n  - {when: 'status == `400`', outcome: error, message: 'API said {body.error}'}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(source), "--log-format", "json", "--progress-every", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("{")]
    assert lines
    assert all(isinstance(json.loads(line), dict) for line in lines)
    assert "s3cr3t-token-value" not in result.stdout + result.stderr
    stored = db.scalar("select last_error from syncrun_state where entity_key = '1'")
    assert "s3cr3t-token-value" not in stored
    assert "***" in stored


# --- bad settings exit 2 before anything happens ----------------------------------------------------------
BAD_SETTINGS = {
    "token with a trailing newline": (
        {"API_TOKEN": "s3cr3t-token-value\n"},
        "secret API_TOKEN ends with a line break — a common copy-paste mistake in CI secrets; remove it",
    ),
    "token with CRLF": (
        {"API_TOKEN": "s3cr3t-token-value\r\n"},
        "secret API_TOKEN ends with a line break — a common copy-paste mistake in CI secrets; remove it",
    ),
    "non-ASCII token": (
        {"API_TOKEN": "s3cr3t-tökén-value"},
        "secret API_TOKEN is sent in header Authorization of source 'alpha' but contains a non-ASCII character"
        " (U+00F6): HTTP header values must be ASCII — retype it (a pasted typographic quote or non-breaking"
        " space?), or encode it as the API expects",
    ),
    "token that is not UTF-8": (
        {"API_TOKEN": "s3cr3t-\udcff-value"},  # the byte 0xff, passed through as Python reads it
        "secret API_TOKEN is not valid UTF-8 text — set it again as UTF-8",
    ),
    "URL with a trailing newline": (
        {"API_URL": "{api}\n"},
        "setting API_URL ends with a line break — a common copy-paste mistake in CI variables; remove it",
    ),
    "unterminated IPv6 host": (
        {"API_URL": "http://[::1"},
        "setting API_URL makes the request URL of source 'alpha' unusable: the host has an unbalanced '[' or ']'"
        " (an IPv6 host is written like http://[::1]:8080/)",
    ),
    "a space in the host": (  # review revJ F5: every entity failed to connect to exa%20mple.com
        {"API_URL": "http://exa mple.com"},
        "setting API_URL makes the request URL of source 'alpha' unusable: its host contains a space: a host is"
        " a name like api.example.com or an IP address",
    ),
    "port out of range": (
        {"API_URL": "http://127.0.0.1:99999"},
        "setting API_URL makes the request URL of source 'alpha' unusable: it has port 99999 out of range (1–65535)",
    ),
    "DATABASE_URL with a trailing newline": (
        {"DATABASE_URL": "{dsn}\n"},
        "DATABASE_URL ends with a line break — a common copy-paste mistake in CI secrets; remove it",
    ),
    "unterminated IPv6 Redis host": (
        {"SYNCRUN_REDIS_URL": "redis://:r3dis-pass-word@[::1:6379/0"},
        "SYNCRUN_REDIS_URL is not a usable Redis URL: the host has an unbalanced '[' or ']' (an IPv6 host is"
        " written like http://[::1]:8080/) (e.g. redis://host:6379/0)",
    ),
}


@pytest.mark.parametrize("case", BAD_SETTINGS, ids=list(BAD_SETTINGS))
def test_bad_setting_exits_2_before_any_request_or_job(
    db: Database, api: ApiServer, env: dict[str, str], tmp_path: Path, case: str
) -> None:
    """A real `syncrun run` with one bad setting: exit 2 with exactly the message naming it; no job row,
    no request reached the server, and no 8-character piece of any secret in the output."""
    source = write_source(tmp_path)
    seed(db, source, appids=[1, 2])
    api.route("/apps/1", app(1))
    api.route("/apps/2", app(2))
    changes, message = BAD_SETTINGS[case]
    bad = {name: value.format(api=api.url, dsn=db.dsn) for name, value in changes.items()}
    result = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(source)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env, **bad},
    )
    assert (result.returncode, result.stderr) == (2, f"error: {message}\n")
    assert db.scalar("select count(*) from sync_jobs") == 0
    assert api.requests == []
    for secret in ("s3cr3t-token-value", "s3cr3t-tökén-value", "r3dis-pass-word"):
        for start in range(len(secret) - 7):
            assert secret[start : start + 8] not in result.stdout + result.stderr


HOSTILE_FILES = {
    "a 5000-digit number": ("limit: 200", "limit: " + "9" * 5000),
    "a float for a size": ("max_body: 1MB", "max_body: 1.0"),
    "JMESPath nested 5000 deep": ("records: body.data", "records: '" + "(" * 5000 + "body" + ")" * 5000 + "'"),
    "JMESPath nested 20000 deep": ("records: body.data", "records: '" + "!" * 20000 + "body'"),
    "YAML nested 5000 deep": ("records: body.data", "records: " + "[" * 5000),
    "a NUL byte": ("cc: us", "cc: \x00"),
}


@pytest.mark.parametrize("case", HOSTILE_FILES, ids=list(HOSTILE_FILES))
def test_hostile_files_exit_2_never_70(tmp_path: Path, case: str) -> None:
    """`syncrun validate` and `syncrun run` on files that used to crash: exit 2 with located problems."""
    old, new = HOSTILE_FILES[case]
    path = tmp_path / "hostile.yaml"
    path.write_text((ROOT / "sources" / "example.yaml").read_text().replace(old, new))
    for command in ("validate", "run"):
        result = subprocess.run(
            [sys.executable, "-m", "runner", command, str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "DATABASE_URL": "postgresql://u@127.0.0.1:1/x"},
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert f"{path}:" in result.stdout + result.stderr


CATALOGUE = """\
name: catalogue
entities: {type: list}
request: {url: "${env.API_URL}/catalogue"}
pagination: {type: page, param: page, start: 0}
rate_limit: {requests: 1, per: 60s, burst: 1, bucket: catalogue}
status: false
records: body.items
writes:
  - table: apps
    key: [appid]
    columns: {appid: record.appid, name: record.name}
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_catalogue_waiting_for_its_next_grant_stops_within_the_grace_period(
    db: Database, api: ApiServer, env: dict[str, str], tmp_path: Path, signum: signal.Signals
) -> None:
    """1 request per 60 s: page 0 is written, page 1 waits for its grant. A signal stops the wait after
    the grace period (it used to wait the whole minute): exit 130/143, job `cancelled`, page 0 kept."""
    source = tmp_path / "catalogue.yaml"
    source.write_text(CATALOGUE)
    (tmp_path / "syncrun.yaml").write_text("status: {table: sync_status, key: appid}\n")
    assert (
        subprocess.run([sys.executable, "-m", "runner", "migrate", str(source)], env={**os.environ, **env}).returncode
        == 0
    )
    db.run("create table apps (appid int primary key, name text)")
    api.route("/catalogue", lambda r: Reply(200, json={"items": [{"appid": int(r.query["page"]) + 1, "name": "x"}]}))
    process = start(["run", str(source), "--grace", "1"], env)
    wait_for(lambda: db.scalar("select count(*) from apps") == 1, timeout=20)
    time.sleep(0.3)  # waiting for page 1's grant now
    signalled = time.monotonic()
    process.send_signal(signum)
    _, err = process.communicate(timeout=30)
    assert time.monotonic() - signalled < 10  # the grace period (1 s) plus shutdown, not the minute
    assert process.returncode == 128 + signum, err
    ((status, reason, processed),) = db.rows("select status, metadata->>'stop_reason', items_processed from sync_jobs")
    assert (status, reason, processed) == ("cancelled", signum.name, 1)  # one record of one page
    assert len(api.requests) == 1


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--grace", "nan"),
        ("--grace", "-1"),
        ("--heartbeat", "0"),
        ("--heartbeat", "inf"),
        ("--lease", "1e400"),
        ("--max-runtime", "-5"),
        ("--stale-after", "soon"),
        ("--rate-scale", "0"),
        ("--rate-scale", "nan"),
        ("--limit", "0"),
        ("--limit", "1" * 5000),
        ("--batch-size", "-3"),
        ("--progress-every", "1.5"),
    ],
)
def test_bad_option_values_exit_2_naming_the_option(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """NaN, infinities, negatives and zero used to pass argparse's float/int and fail later (or wait
    forever): they exit 2 at once, naming the option."""
    from runner import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "sources/example.yaml", option, value])
    assert exit_.value.code == 2
    assert f"argument {option}: expected" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--ids", "1e3"],
        ["--ids", "1,two"],
        ["--ids", "9" * 30],
        ["--ids", "٣"],  # an Arabic-Indic digit: isdigit() says yes, PostgreSQL says no
        ["--ids", "3000000000"],  # past PostgreSQL's integer: the example's key is int
        ["--limit", "99999999999999999999"],
    ],
)
def test_ids_and_limits_the_database_cannot_take_exit_2_before_any_job(
    args: list[str], db: Database, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--ids 1e3` for an int key made a job row and then exit 70; a limit past the integer column
    exit 70 too. Both are usage errors now, before anything is written."""
    from runner import cli

    monkeypatch.setenv("DATABASE_URL", db.dsn)
    try:
        code = cli.main(["run", "sources/example.yaml", *args])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    assert code == 2
    assert "--ids" in capsys.readouterr().err or args[0] == "--limit"
    assert db.scalar("select to_regclass('sync_jobs')") is None  # not even migrated: refused before any of it


@pytest.mark.slow
@pytest.mark.parametrize("shared", ["process", "database"])
def test_waiting_for_a_grant_is_not_in_flight_work(
    db: Database, api: ApiServer, env: dict[str, str], tmp_path: Path, shared: str
) -> None:
    """1 per 60 s and --grace 30: a SIGTERM while the other entities wait for their grants ends the run
    at once (waiting is not in-flight work: a tester saw a new request 16.9 s after the signal), sends
    nothing more, and leaves those entities unfailed for the next run; exit 143, job `cancelled`."""
    source = write_source(tmp_path)
    text = source.read_text().replace(
        "rate_limit: {requests: 200, per: 1s, burst: 20, bucket: alpha}",
        f"rate_limit: {{requests: 1, per: 60s, burst: 1, bucket: wait-{shared}, shared: {shared}}}",
    )
    source.write_text(text)
    seed(db, source, appids=[1, 2, 3])
    for appid in (1, 2, 3):
        api.route(f"/apps/{appid}", app(appid))
    process = start(["run", str(source), "--grace", "30"], env)
    wait_for(lambda: db.scalar("select count(*) from apps") == 1, timeout=20)
    time.sleep(0.3)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=40)
    assert time.monotonic() - signalled < 5, err
    assert process.returncode == 143, err
    assert len(api.requests) == 1
    assert db.rows("select status, items_processed, items_failed from sync_jobs") == [("cancelled", 1, 0)]
    assert db.scalar("select count(*) from syncrun_state where last_error is not null") == 0


@pytest.mark.slow
@pytest.mark.parametrize("ids", [True, False], ids=["ids", "default"])
def test_a_run_cut_by_the_grace_period_releases_every_claim_it_holds(
    db: Database, api: ApiServer, env: dict[str, str], tmp_path: Path, ids: bool
) -> None:
    """review11 F3: SIGTERM with requests outliving --grace. The entities queued for the fetchers the
    grace period cut were in no list of unfinished keys, so their claims stayed for the whole lease and
    the next `--ids` run silently skipped them. The run releases every claim it still holds; the next
    run of the same ids runs all of them."""
    source = write_source(tmp_path)  # concurrency 4: 4 in flight, 8 queued, the producer 4 more ahead
    seed(db, source, appids=range(1, 41))
    for appid in range(1, 41):
        api.route(f"/apps/{appid}", Reply(hang=True))
    every = ["--ids", ",".join(map(str, range(1, 41)))]
    process = start(["run", str(source), "--grace", "0.2", *(every if ids else [])], env)
    wait_for(lambda: len(api.requests) >= 4)
    wait_for(lambda: db.scalar("select count(*) from syncrun_state where claimed_by is not null") >= 16)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 143, err
    assert db.rows("select status, items_processed from sync_jobs") == [("cancelled", 0)]
    assert db.scalar("select count(*) from syncrun_state where claimed_by is not null") == 0
    for appid in range(1, 41):
        api.route(f"/apps/{appid}", app(appid))
    again = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(source), *every],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert again.returncode == 0, again.stderr
    assert db.scalar("select items_succeeded from sync_jobs where status = 'completed'") == 40


def test_a_bad_source_file_exits_2_without_waiting_for_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run opens its connections while it reads its source files (runner/database.py `Ahead`); a
    file that does not validate still exits 2 at once with its problems, while a connect to a server
    that never answers (a listening socket nobody accepts on) is still waiting for its timeout."""
    import socket

    from runner import cli, database

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nunknown_key: 1\n")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("DATABASE_URL", f"postgresql://app:s3cret@127.0.0.1:{silent.getsockname()[1]}/app")
        started = time.monotonic()
        code = cli.main(["run", str(bad)])
        elapsed = time.monotonic() - started
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown_key" in err
    assert "s3cret" not in err
    assert elapsed < database.CONNECT_TIMEOUT  # waiting for the connect would take all of it


def test_a_heartbeat_longer_than_half_the_lease_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """Review revD F2: `--lease 1 --heartbeat 100` ran, and its claims lapsed between renewals: a
    second runner took and fetched entities the first still worked on. Now exit 2 before any request."""
    from runner import cli

    assert cli.main(["run", "sources/example.yaml", "--lease", "1", "--heartbeat", "100"]) == 2
    assert "--heartbeat (100s) must be at most half of --lease (1s)" in capsys.readouterr().err


# Modules a run must not import (issue #11, start-up): the other subcommands' (a run parses only its
# own arguments), and what only a file with a problem (difflib) or a text with an HTML entity (html) needs.
NOT_FOR_A_RUN = {
    *(f"runner.commands.{name}" for name in ("demo", "init", "migrate", "new", "status", "validate", "workflow")),
    "difflib",
    "html",
    "html.entities",
}


def test_a_run_imports_only_what_every_run_needs() -> None:
    """`syncrun run` (its module imported, its arguments parsed) imports no other subcommand's module,
    and neither difflib nor html: each costs every start its share of the ~0.1 s start-up budget."""
    code = "import sys; from runner import cli; cli._parser('run').parse_args(['run', 'x.yaml']); print(*sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert NOT_FOR_A_RUN.isdisjoint(loaded.stdout.split())


@pytest.mark.parametrize("command", ["run", "validate", "test-read"])
def test_one_declared_subcommand_keeps_the_top_level_usage(command: str) -> None:
    """With only the named subcommand declared, the usage an unrecognized argument prints still lists
    all nine, as with every one declared."""
    from runner import cli

    assert cli._parser(command).format_usage() == cli._parser().format_usage()
