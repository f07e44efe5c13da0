"""The Steam ports end to end: each source replayed against seed.sql and compared with its golden file.

Every run goes through `syncrun` itself (cli.main in-process, or `python -m runner` in a subprocess):
fresh schema -> `syncrun migrate <source>` -> runner/sql/tables/steam.sql + sources/replays/seed.sql
-> `syncrun run <source> --replay sources/replays/<stem> --rate-scale 50` -> compare with
tests/data/golden/<stem>.json (tests/golden.py implements the README's markers).

The `test_hazard_*` tests pin the reference's §7.2 hazards (shared/reference/steam-workers.md) that
touch these sources: each shows syncrun doing the right thing, mostly on the golden replays plus a
targeted assertion, or on a small variation of a cassette.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from runner import cli, config, partitions, selection
from tests import golden
from tests.golden import Golden
from tests.pg import Database

pytestmark = pytest.mark.slow  # ~30 s in all: 40-odd replays through PostgreSQL, a few subprocesses

RATE_SCALE = "50"  # the golden runs (issue #5)
FAST = "500"  # hazard runs that do not measure time: SteamSpy's 1 page/min is 0.12 s
BASE_URL_SETTINGS = ("STEAM_API_URL", "STEAM_STORE_URL", "STEAMSPY_URL", "BATCH_SIZE")


# --- helpers ---------------------------------------------------------------------------------------
@pytest.fixture
def steam(db: Database, monkeypatch: pytest.MonkeyPatch) -> Database:
    """`db` with the run's environment: DATABASE_URL, the default base URLs, the replay key."""
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("STEAM_API_KEY", "test-steam-key")
    for name in BASE_URL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    return db


def prepare(db: Database, golden_file: Golden, monkeypatch: pytest.MonkeyPatch | None = None) -> golden.Seed:
    """Migrate the source, apply steam.sql and seed.sql; what the seed left."""
    if monkeypatch is not None:
        for name, value in golden_file.settings.items():
            monkeypatch.setenv(name, value)
    assert cli.main(["migrate", str(golden_file.source)]) == 0
    seed_now = golden.seed(db)
    return golden.snapshot(db, golden_file, seed_now)


def replay(source: Path | str, replay_dir: Path | str, *extra: str, scale: str = RATE_SCALE) -> int:
    return cli.main(["run", str(source), "--replay", str(replay_dir), "--rate-scale", scale, *extra])


def replay_subprocess(
    db: Database, golden_file: Golden, *extra: str, tz: str | None = None, replay_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in BASE_URL_SETTINGS}
    env.update(golden_file.settings, DATABASE_URL=db.dsn)
    if tz is not None:
        env["TZ"] = tz
        env["PGTZ"] = tz  # the database session too: a date must not depend on either
    command = [sys.executable, "-m", "runner", "run", str(golden_file.source)]
    command += ["--replay", str(replay_dir or golden_file.replay_dir), "--rate-scale", RATE_SCALE, *extra]
    return subprocess.run(command, env=env, cwd=golden.ROOT, capture_output=True, text=True, timeout=120)


def assert_golden(db: Database, golden_file: Golden, seed: golden.Seed, exit_code: int | None) -> None:
    problems = golden.compare(db, golden_file, seed, exit_code)
    assert not problems, golden.report(golden_file, problems)


def run_golden(steam: Database, stem: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Golden, golden.Seed]:
    """Seed, replay `stem` in-process and check it against its golden file."""
    golden_file = Golden.load(stem)
    seed = prepare(steam, golden_file, monkeypatch)
    code = replay(golden_file.source, golden_file.replay_dir)
    assert_golden(steam, golden_file, seed, code)
    return golden_file, seed


def run_replay(
    steam: Database, stem: str, monkeypatch: pytest.MonkeyPatch, *extra: str, scale: str = FAST
) -> tuple[Golden, golden.Seed, int]:
    """Seed and replay `stem` without the golden comparison (the hazard tests assert their own point)."""
    golden_file = Golden.load(stem)
    seed = prepare(steam, golden_file, monkeypatch)
    return golden_file, seed, replay(golden_file.source, golden_file.replay_dir, *extra, scale=scale)


def cassette(tmp_path: Path, stem: str, change: dict[str, list[dict[str, Any]]] | None = None) -> Path:
    """A copy of `stem`'s cassette in tmp_path/<stem>/, with the responses of some URIs replaced.

    `change` maps a URI substring to the responses that request gets instead (in order).
    """
    data = yaml.safe_load((golden.REPLAYS / stem / "cassette.yaml").read_text())
    interactions = []
    done: set[str] = set()
    for interaction in data["interactions"]:
        uri = interaction["request"]["uri"]
        hit = next((part for part in (change or {}) if part in uri), None)
        if hit is None:
            interactions.append(interaction)
        elif hit not in done:
            done.add(hit)
            interactions += [{"request": interaction["request"], "response": r} for r in (change or {})[hit]]
    assert done == set(change or {}), f"no interaction in {stem} matches {set(change or {}) - done}"
    directory = tmp_path / stem
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cassette.yaml").write_text(yaml.safe_dump({**data, "interactions": interactions}, sort_keys=False))
    return directory


def response(status: int, body: str, content_type: str = "application/json") -> dict[str, Any]:
    return {
        "status": {"code": status, "message": "x"},
        "headers": {"Content-Type": [content_type]},
        "body": {"string": body},
    }


BAD_GATEWAY = response(502, "<html><body>Bad Gateway</body></html>", "text/html")


def today_utc(db: Database) -> dt.date:
    started = db.scalar("select max(started_at) from sync_jobs")
    return started.astimezone(dt.UTC).date()


# --- 1. one end-to-end golden test per source ---------------------------------------------------------
# Engine gaps, pinned down (see the report of issue #5); the lead removes the xfail with the fix.
XFAIL = {}


@pytest.mark.parametrize(
    "stem",
    [
        pytest.param(stem, marks=pytest.mark.xfail(strict=True, reason=XFAIL[stem])) if stem in XFAIL else stem
        for stem in golden.STEMS
    ],
)
def test_replay_matches_golden(stem: str, steam: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replaying the source once against seed.sql gives exactly the golden file's state."""
    run_golden(steam, stem, monkeypatch)


def test_comparator_reports_table_key_column_expected_and_actual(
    steam: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The golden comparison is not vacuous: each kind of drift is reported on one readable line."""
    golden_file, seed = run_golden(steam, "steam-applist", monkeypatch)
    steam.run("update apps set name = 'Wrong' where appid = 20")
    steam.run("update apps set name = 'Touched' where appid = 440")  # not listed: must stay as seeded
    steam.run("delete from sync_status where appid = 30")
    steam.run("insert into syncrun_state (source, entity_key, consecutive_errors) values ('applist', 'x', 2)")
    steam.run("update sync_jobs set items_failed = 1")
    lines = [str(p) for p in golden.compare(steam, golden_file, seed, 0)]
    assert "apps [appid=20] name: expected 'Team Fortress Classic', actual 'Wrong' (differs)" in lines
    assert any(line.startswith("apps [appid=440] name: expected 'Team Fortress 2'") for line in lines)
    assert "sync_status [appid=30] *: expected 'a row', actual None (missing row)" in lines
    assert "syncrun_state [applist x] consecutive_errors: expected 0, actual 2 (unlisted error state)" in lines
    assert "sync_jobs [applist] items_failed: expected 0, actual 1 (differs)" in lines
    assert len(lines) == 6, lines  # + sync_status row_count


def test_every_source_has_a_golden_and_a_replay() -> None:
    sources = sorted(p.stem for p in (golden.ROOT / "sources").glob("steam*.yaml"))
    assert sources == golden.STEMS
    for stem in sources:
        assert (golden.REPLAYS / stem / "cassette.yaml").is_file()


# --- 2. time zones: a subprocess run under a far-off TZ gives the same golden state -------------------
@pytest.mark.parametrize(
    ("stem", "tz"),
    [
        ("steam-storefront", "Asia/Tokyo"),  # release dates: "Dec 21, 2012" was 2012-12-20 in Node under Tokyo
        ("steam-histogram", "America/Los_Angeles"),  # unix midnights: a local-time date would be the day before
    ],
)
def test_hazard_16_dates_do_not_shift_with_the_time_zone(stem: str, tz: str, steam: Database) -> None:
    golden_file = Golden.load(stem)
    seed = prepare(steam, golden_file)
    done = replay_subprocess(steam, golden_file, tz=tz)
    assert done.returncode == golden_file.exit_code, done.stderr
    assert_golden(steam, golden_file, seed, done.returncode)


def test_hazard_16_run_today_is_the_utc_date_in_any_time_zone(steam: Database) -> None:
    """ccu under a TZ whose local date is not the UTC date still writes the UTC day's rows."""
    now = dt.datetime.now(dt.UTC)
    # +14 h and -12 h span 26 hours: at any moment one of them is on another calendar day than UTC
    tz = next(
        name
        for name, offset in (("Pacific/Kiritimati", 14), ("Etc/GMT+12", -12))
        if (now + dt.timedelta(hours=offset)).date() != now.date()
    )
    golden_file = Golden.load("steam-ccu")
    prepare(steam, golden_file)
    done = replay_subprocess(steam, golden_file, tz=tz)
    assert done.returncode == 0, done.stderr
    today = today_utc(steam)
    dates = steam.rows("select distinct metric_date from daily_metrics where ccu_source = 'steam_api'")
    assert dates == [(today,)]
    # 570's seeded row for the UTC day got the sample (greatest keeps 700000); no second row for 570
    assert peaks(steam)[570] == (700000, "steam_api")
    assert steam.scalar("select count(*) from daily_metrics where appid = 570 and ccu_peak is not null") == 1


def test_hazard_16_dates_are_utc_and_never_guessed(steam: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Vague or impossible release dates are null (never guessed, never rolled over); the raw text is kept.
    A quarter is its first month, as the worker's explicit rule says (not a guess: issue #13)."""
    run_golden(steam, "steam-storefront", monkeypatch)
    rows = dict(steam.rows("select release_date_raw, release_date from apps where release_date_raw is not null"))
    assert rows["Q2 2021"] == dt.date(2021, 4, 1)
    assert rows["Summer 2025"] is None
    assert rows["Feb 30, 2025"] is None
    assert rows["Coming soon"] is None
    assert rows["Dec 21, 2012"] == rows["21 Dec, 2012"] == dt.date(2012, 12, 21)


# --- 3. a replay opens no socket beyond loopback --------------------------------------------------------
def _loopback(host: object) -> bool:
    if not isinstance(host, str):
        return True  # AF_UNIX paths as bytes
    if host in ("localhost", "") or host.startswith("/"):
        return True  # unix sockets (psycopg's default) are local by definition
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any connect or name lookup that is not loopback raises, and is recorded."""
    attempts: list[str] = []

    def refuse(what: str) -> OSError:
        attempts.append(what)
        return OSError(f"test guard: non-loopback network access: {what}")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_create, real_getaddrinfo = socket.create_connection, socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if not _loopback(host):
            raise refuse(f"connect {address}")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if not _loopback(host):
            raise refuse(f"connect_ex {address}")
        return real_connect_ex(self, address)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        if not _loopback(address[0]):
            raise refuse(f"create_connection {address}")
        return real_create(address, *args, **kwargs)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and not _loopback(name):
            raise refuse(f"getaddrinfo {name}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


def test_network_guard_trips_on_a_real_address(no_network: list[str]) -> None:
    """The guard itself works (else the next test would prove nothing)."""
    with pytest.raises(OSError, match="test guard"):
        socket.create_connection(("192.0.2.1", 443), timeout=0.1)
    with pytest.raises(OSError, match="test guard"):
        socket.getaddrinfo("store.steampowered.com", 443)
    with socket.socket() as sock, pytest.raises(OSError, match="test guard"):
        sock.connect(("203.0.113.7", 80))
    assert len(no_network) == 3


@pytest.mark.parametrize("stem", ["steam-storefront", "steam-applist", "steam-reviews"])
def test_replay_opens_no_socket_beyond_loopback(
    stem: str, steam: Database, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    """A replay serves every request from the cassette: no DNS lookup, no connection to Steam."""
    run_golden(steam, stem, monkeypatch)
    assert no_network == []


# --- 4. the §7.2 hazards --------------------------------------------------------------------------------
STOREFRONT_DUE = {570, 1086940, 2222220, 2378500, 4615010, 1500010, 1500020, 1500030, 1500040, 1500050, 3000000}


def test_hazard_3_partitions_balanced_on_appids(steam: Database) -> None:
    """Static shards hash the key: appids (multiples of 10) spread evenly, unlike appid % n."""
    appids = range(10, 600_010, 10)  # 60,000 Steam-like appids
    for count in (2, 3, 5, 6, 10):
        sizes = [0] * count
        for appid in appids:
            sizes[partitions.partition_of(appid, count)] += 1
        mean = len(appids) / count
        assert all(abs(size - mean) < 0.05 * mean for size in sizes), (count, sizes)
    # what #3 was about: appid % 6 leaves shards 1, 3, 5 empty, appid % 5 puts everything on shard 0
    assert {a % 6 for a in appids} == {0, 2, 4}
    assert {a % 5 for a in appids} == {0}
    # the SQL twin (used by the selection) agrees with the Python one
    sample = list(range(10, 20_010, 10))
    shard = partitions.partition_sql(psycopg.sql.SQL("k"), 6)
    in_sql = steam.rows(psycopg.sql.SQL("select k, {} from unnest(%s::int[]) as k").format(shard), (sample,))
    assert dict(in_sql) == {k: partitions.partition_of(k, 6) for k in sample}


def test_hazard_3_partitions_split_a_run_without_overlap_or_gaps(
    steam: Database, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """storefront --partition i/3 (dry runs): every due app in exactly one shard, the one its hash names."""
    golden_file = Golden.load("steam-storefront")
    prepare(steam, golden_file, monkeypatch)
    shards: list[set[int]] = []
    for shard in range(3):
        capsys.readouterr()
        assert (
            replay(golden_file.source, golden_file.replay_dir, "--partition", f"{shard}/3", "--dry-run", scale=FAST)
            == 0
        )
        out = capsys.readouterr().out
        shards.append({int(line.split()[-1]) for line in out.splitlines() if line.startswith("── storefront ")})
    assert set().union(*shards) == STOREFRONT_DUE
    assert sum(len(s) for s in shards) == len(STOREFRONT_DUE)  # no app in two shards
    for shard, apps in enumerate(shards):
        assert apps == {a for a in STOREFRONT_DUE if partitions.partition_of(a, 3) == shard}
    assert all(shards), [len(s) for s in shards]  # 11 multiples of 10, and no shard is empty


def price_cassette(tmp_path: Path, name: str, appids: str, body: str) -> Path:
    uri = f"https://store.steampowered.com/api/appdetails/?appids={appids}&filters=price_overview&cc=us"
    directory = tmp_path / name
    directory.mkdir()
    interaction = {
        "request": {"method": "GET", "uri": uri, "body": None, "headers": {}},
        "response": response(200, body),
    }
    (directory / "cassette.yaml").write_text(yaml.safe_dump({"interactions": [interaction], "version": 1}))
    return directory


def test_hazard_4_no_price_is_null_never_0(steam: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Free (data []), out-of-bounds and unanswered apps never get price 0; Steam's answers are stamped."""
    golden_file = Golden.load("steam-price")
    seed = prepare(steam, golden_file, monkeypatch)
    cases = {  # one app per run (--ids), so the request is exactly this id
        "570": '{"570":{"success":true,"data":[]}}',
        "2222220": '{"2222220":{"success":true,"data":{"price_overview":{"final":999999,"discount_percent":0}}}}',
        "4615010": '{"1086940":{"success":true,"data":[]}}',  # the id is missing from the body
        "99999990": '{"99999990":{"success":false}}',
    }
    for appid, body in cases.items():
        directory = price_cassette(tmp_path, appid, appid, body)
        replay(golden_file.source, directory, "--ids", appid, scale=FAST)
    today = today_utc(steam)
    assert steam.scalar("select count(*) from apps where current_price_cents = 0") == 0
    assert steam.scalar("select count(*) from daily_metrics where price_cents = 0") == 0
    prices = {r[0]: r[1:] for r in steam.rows("select appid, current_price_cents, current_discount_percent from apps")}
    assert prices[570] == (None, 0)
    assert prices[2222220] == (None, 0)  # the seeded 1999 / 10 replaced: Steam answered, unusable
    assert prices[4615010] == (None, 0)  # seeded values, untouched
    assert 99999990 not in prices  # success:false writes nothing
    metrics = dict(steam.rows("select appid, price_cents from daily_metrics where metric_date = %s", (today,)))
    assert metrics == {570: None, 2222220: None}
    status = {
        r[0]: r[1:] for r in steam.rows("select appid, last_price_sync is not null, last_error_source from sync_status")
    }
    assert status[570] == status[2222220] == status[99999990] == (True, None)
    assert status[4615010] == (False, "price")  # Steam said nothing about it: an error, not stamped
    assert seed.tables["apps"][(4615010,)]["updated_at"] == steam.scalar(
        "select updated_at from apps where appid = 4615010"
    )


def test_hazard_4_failed_price_request_is_an_error_never_price_0(
    steam: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The batch request fails on every attempt: each app is an error; nothing written, nothing stamped."""
    golden_file = Golden.load("steam-price")
    seed = prepare(steam, golden_file, monkeypatch)
    directory = cassette(tmp_path, "steam-price", {"appdetails": [BAD_GATEWAY]})
    code = replay(golden_file.source, directory, scale=FAST)
    job = golden.job_row(steam, "price")
    assert (job["items_processed"], job["items_succeeded"], job["items_failed"], job["items_skipped"]) == (5, 0, 5, 0)
    assert code == 1  # every app failed: above fail_ratio
    # apps and daily_metrics exactly as seeded: no price 0, no new rows
    for table in ("apps", "daily_metrics"):
        rows = {tuple(r[k] for k in seed.keys[table]): r for r in golden.fetch(steam, table)}
        assert rows == seed.tables[table], f"{table} changed after a failed price request"
    due = [570, 1086940, 2222220, 99999990, 4615010]
    status = steam.rows(
        "select appid, last_price_sync, last_error_source, last_error_message from sync_status"
        " where appid = any(%s) order by appid",
        (due,),
    )
    assert all(r[1] is None and r[2] == "price" and "HTTP 502" in (r[3] or "") for r in status), status
    # every request was retried to retry.attempts (4), each attempt counted
    urls = {m.split("(GET ")[-1] for (m,) in steam.rows("select last_error from syncrun_state where source = 'price'")}
    assert job["requests_made"] == 4 * len(urls)


def test_hazard_5_histogram_error_is_not_no_data(steam: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """{"success":2} is an error (unstamped, counted failed); only an empty histogram is "no data"."""
    run_replay(steam, "steam-histogram", monkeypatch)
    rows = {
        r[0]: r[1:]
        for r in steam.rows("select appid, last_histogram_sync is not null, last_error_source from sync_status")
    }
    assert rows[730] == (False, "histogram")
    assert rows[570] == (True, None)  # the empty histogram: a stamped skip
    job = golden.job_row(steam, "histogram")
    assert (job["items_failed"], job["items_skipped"]) == (1, 1)


def test_hazard_5_histogram_transport_error_is_an_error(
    steam: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A 502 on every attempt is an error too: not stamped, not hidden for 7 days, items_failed counts it;
    the entity is not backed off for it."""
    golden_file = Golden.load("steam-histogram")
    prepare(steam, golden_file, monkeypatch)
    directory = cassette(tmp_path, "steam-histogram", {"appreviewhistogram/2378500": [BAD_GATEWAY]})
    assert replay(golden_file.source, directory, scale=FAST) == 0
    row = steam.rows("select last_histogram_sync, last_error_source from sync_status where appid = 2378500")
    assert row == [(None, "histogram")]
    assert steam.scalar("select count(*) from review_histogram where appid = 2378500") == 0
    job = golden.job_row(steam, "histogram")
    assert (job["items_failed"], job["items_skipped"], job["requests_made"]) == (2, 1, 7)
    # Recorded, but no backoff: only definitive failures advance it (issue #3 §4), so an API outage
    # never delays the entity's next run.
    state = steam.rows(
        "select last_error, skip_until, consecutive_errors, next_attempt_at from syncrun_state"
        " where source = 'histogram' and entity_key = '2378500'"
    )
    assert len(state) == 1
    assert "HTTP 502" in state[0][0]
    assert state[0][1:] == (None, 0, None)


def test_hazard_6_steamspy_fetch_error_is_not_not_found(
    steam: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """(§7.2 #6, steamspy_app) a fetch error is an error, never filed as "not found" and stamped."""
    golden_file = Golden.load("steamspy-app")
    prepare(steam, golden_file, monkeypatch)
    directory = cassette(tmp_path, "steamspy-app", {"appid=3527290": [BAD_GATEWAY]})
    assert replay(golden_file.source, directory, scale=FAST) == 0
    row = steam.rows("select last_steamspy_individual_fetch, last_error_source from sync_status where appid = 3527290")
    assert row == [(None, "steamspy_app")]


def test_hazard_7_every_steam_source_has_a_request_timeout() -> None:
    """No request without a timeout (the workers had none): every source sets one, at most 2 minutes."""
    for stem in golden.STEMS:
        source = config.load(golden.ROOT / "sources" / f"{stem}.yaml")
        timeout = source.request.timeout
        assert timeout is not None, stem
        assert 0 < timeout <= 120, (stem, timeout)


@pytest.mark.parametrize(
    ("stem", "bucket", "requests"),
    [
        ("steamspy-all", "steamspy-all", 4),  # page 1's 502 and its retry
        ("steam-storefront", "steam-store", 12),  # 1500040's 429 and its retry
        ("steam-reviews", "steam-reviews", 5),  # 730's 503 and its retry
        ("steam-histogram", "steam-histogram", 5),  # 2378500's 502 and its retry
    ],
)
def test_hazard_7_timeouts_and_retries_spend_budget(
    stem: str, bucket: str, requests: int, steam: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every attempt, retries included, took a token from the shared bucket (the worker's retries bypassed it)."""
    run_replay(steam, stem, monkeypatch)
    assert steam.scalar("select requests_made from sync_jobs") == requests
    # seq counts every grant; a grant the process could not use on time (a loaded machine) is dropped
    # and a fresh one taken, so the bucket may count more grants than requests, never fewer.
    [(name, grants)] = steam.rows("select bucket, seq from syncrun_rate_limits")
    assert name == bucket
    assert grants >= requests


def test_hazard_7_retry_waits_for_a_token(steam: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """steamspy-all at 1 page a minute (burst 1): 4 requests, one a retry, need 3 full windows, not 2."""
    golden_file = Golden.load("steamspy-all")
    prepare(steam, golden_file, monkeypatch)
    scale = 200
    started = time.monotonic()
    assert replay(golden_file.source, golden_file.replay_dir, scale=str(scale)) == 0
    elapsed = time.monotonic() - started
    assert elapsed >= 3 * 60 / scale * 0.95, f"{elapsed:.2f}s: the retry did not wait for its token"


def test_hazard_7_retry_after_pauses_the_bucket_at_the_rate_scale(
    steam: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A replayed 429 with Retry-After: 2 pauses the bucket 2 s / K under --rate-scale K, like every other wait."""
    golden_file = Golden.load("steam-storefront")
    prepare(steam, golden_file, monkeypatch)
    limited = response(429, '{"error":"rate limited"}')
    limited["headers"]["Retry-After"] = ["2"]
    recorded = yaml.safe_load((golden_file.replay_dir / "cassette.yaml").read_text())["interactions"]
    ok = next(
        i["response"] for i in recorded if "1500040" in i["request"]["uri"] and i["response"]["status"]["code"] == 200
    )
    directory = cassette(tmp_path, "steam-storefront", {"appids=1500040": [limited, ok]})
    started = time.monotonic()
    assert replay(golden_file.source, directory, "--ids", "1500040", scale=FAST) == 0
    elapsed = time.monotonic() - started
    job = golden.job_row(steam, "storefront")
    assert (job["requests_made"], job["items_succeeded"]) == (2, 1)
    assert elapsed < 1.2, f"{elapsed:.2f}s: the 2 s Retry-After was not scaled by --rate-scale {FAST}"


def test_hazard_8_shared_buckets(steam: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources on one endpoint declare one database-shared bucket with the same numbers, and really share it."""
    sources = {stem: config.load(golden.ROOT / "sources" / f"{stem}.yaml") for stem in golden.STEMS}
    by_bucket: dict[str, set[str]] = {}
    for stem, source in sources.items():
        assert source.rate_limit.shared.value == "database", stem
        by_bucket.setdefault(source.rate_limit.bucket, set()).add(stem)
    assert by_bucket["steam-store"] == {"steam-storefront", "steam-price"}
    assert by_bucket["steam-webapi"] == {"steam-applist", "steam-ccu"}
    for stems in by_bucket.values():
        limits = {
            (sources[s].rate_limit.requests, sources[s].rate_limit.per, sources[s].rate_limit.burst) for s in stems
        }
        assert len(limits) == 1, stems
    # storefront then price, applist then ccu, on one database: one bucket row each, counting both
    prepare(steam, Golden.load("steam-storefront"), monkeypatch)
    for stem in ("steam-storefront", "steam-price", "steam-applist", "steam-ccu"):
        other = Golden.load(stem)
        assert cli.main(["migrate", str(other.source)]) == 0
        replay(other.source, other.replay_dir, scale=FAST)
    buckets = dict(steam.rows("select bucket, seq from syncrun_rate_limits"))
    made = dict(steam.rows("select job_type, requests_made from sync_jobs"))
    assert set(buckets) == {"steam-store", "steam-webapi"}
    # every request of both sources took a grant from the one shared row (dropped late grants add more)
    assert buckets["steam-store"] >= made["storefront"] + made["price"]
    assert buckets["steam-webapi"] >= made["applist"] + made["ccu"]


def peaks(db: Database) -> dict[int, tuple[int | None, str | None]]:
    rows = db.rows("select appid, ccu_peak, ccu_source from daily_metrics where metric_date = %s", (today_utc(db),))
    return {r[0]: (r[1], r[2]) for r in rows}


def test_hazard_9_steamspy_never_lowers_ccu_peak(steam: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """SteamSpy's lower CCU never overwrites today's Steam API sample; a later Steam sample still wins."""
    run_replay(steam, "steamspy-all", monkeypatch)
    assert peaks(steam)[570] == (700000, "steam_api")  # SteamSpy said 627387
    assert peaks(steam)[1086940] == (71234, "steamspy")  # nothing else wrote this row: SteamSpy fills it
    # the CCU source afterwards: 1086940's Steam sample (95000) is higher and takes over
    ccu = Golden.load("steam-ccu")
    assert cli.main(["migrate", str(ccu.source)]) == 0
    assert replay(ccu.source, ccu.replay_dir, scale=FAST) == 0
    assert peaks(steam)[570] == (700000, "steam_api")
    assert peaks(steam)[1086940] == (95000, "steam_api")


def test_hazard_9_steamspy_app_never_overwrites_a_steam_sample(
    steam: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """steamspy_app's CCU goes in only when today's row has none: a Steam sample written first stays."""
    golden_file = Golden.load("steamspy-app")
    prepare(steam, golden_file, monkeypatch)
    steam.run(
        "insert into daily_metrics (appid, metric_date, ccu_peak, ccu_source)"
        " values (1500050, (now() at time zone 'utc')::date, 10, 'steam_api')"
    )
    assert replay(golden_file.source, golden_file.replay_dir, scale=FAST) == 0
    assert peaks(steam)[1500050] == (10, "steam_api")  # SteamSpy said 40: not a Steam sample
    owners = steam.rows("select owners_min, owners_max from daily_metrics where appid = 1500050")
    assert owners == [(20000, 50000)]  # its own columns are still written


def test_hazard_10_greatest_is_atomic(steam: Database) -> None:
    """The peak is greatest(existing, new) inside the upsert: a concurrent higher peak is never lost.

    A row lock held by this test stands in for a concurrent writer: the ccu run's upsert of 730 waits
    on it, the test commits a higher peak, and the run must keep that peak. A read-compare-write (the
    Supabase path) would have read the old peak and overwritten the new one with its own sample.
    """
    golden_file = Golden.load("steam-ccu")
    prepare(steam, golden_file)
    other = psycopg.connect(steam.dsn)
    try:
        other.execute(
            "insert into daily_metrics (appid, metric_date, ccu_peak, ccu_source)"
            " values (730, (now() at time zone 'utc')::date, 100, 'steam_api')"
        )
        other.commit()
        other.execute(
            "update daily_metrics set ccu_peak = 2000000 where appid = 730"
            " and metric_date = (now() at time zone 'utc')::date"
        )  # uncommitted: holds the row lock
        env = {k: v for k, v in os.environ.items() if k not in BASE_URL_SETTINGS}
        env.update(golden_file.settings, DATABASE_URL=steam.dsn)
        command = [sys.executable, "-m", "runner", "run", str(golden_file.source), "--ids", "730"]
        command += ["--replay", str(golden_file.replay_dir), "--rate-scale", FAST]
        process = subprocess.Popen(command, env=env, cwd=golden.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            waiting = False
            while not waiting and time.monotonic() < deadline and process.poll() is None:
                waiting = bool(
                    steam.scalar(
                        "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                        " and query ilike '%daily_metrics%' and pid <> pg_backend_pid()"
                    )
                )
                time.sleep(0.02)
            assert waiting, "the ccu run's upsert never waited on the locked daily_metrics row"
            other.commit()  # the concurrent writer's higher peak lands first
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode == 0, stderr.decode()
    finally:
        other.close()
    assert peaks(steam)[730] == (2000000, "steam_api")
    assert steam.scalar("select player_count from ccu_snapshots where appid = 730") == 1034567


def test_hazard_10_ccu_peak_keeps_the_higher_seeded_value(steam: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    run_replay(steam, "steam-ccu", monkeypatch)
    assert peaks(steam)[570] == (700000, "steam_api")
    assert steam.scalar("select player_count from ccu_snapshots where appid = 570") == 650000


def test_hazard_11_junctions_are_replaced(steam: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Storefront replaces an app's links (stale developer and DLC gone, another source's DLC kept), even to none."""
    golden_file, _, code = run_replay(steam, "steam-storefront", monkeypatch)
    assert code == 0

    def links() -> tuple[set[str], set[tuple[int, str]]]:
        developers = steam.rows(
            "select d.normalized_name from app_developers l join developers d on d.id = l.developer_id"
            " where l.appid = 1086940"
        )
        dlc = steam.rows("select dlc_appid, source from app_dlc where parent_appid = 1086940")
        return {r[0] for r in developers}, set(dlc)

    assert links() == ({"larian studios"}, {(2378500, "storefront"), (3165620, "storefront"), (1234560, "pics")})
    assert steam.scalar("select count(*) from developers where normalized_name = 'old dev'") == 1  # dimension kept

    # the next page lists another developer and no DLC at all: the links follow it
    body = (
        '{"1086940":{"success":true,"data":{"type":"game","name":"Baldur\'s Gate 3","is_free":false,'
        '"developers":["Larian Studios","New Dev"],"publishers":["Larian Studios"],"dlc":[],'
        '"packages":[359370],"release_date":{"coming_soon":false,"date":"Aug 3, 2023"}}}}'
    )
    directory = cassette(tmp_path, "steam-storefront", {"appids=1086940": [response(200, body)]})
    assert replay(golden_file.source, directory, "--ids", "1086940", scale=FAST) == 0
    assert links() == ({"larian studios", "new dev"}, {(1234560, "pics")})


def test_hazard_17_same_day_review_deltas(steam: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A second sync the same UTC day widens the day's row from the day's baseline; nothing is lost."""
    golden_file, _, code = run_replay(steam, "steam-reviews", monkeypatch)
    assert code == 0
    # 570's row holds the whole day's increment (60000 from the 2,500,000 baseline), not the 10000 since 5 h ago
    row = steam.rows("select reviews_added, positive_added, negative_added from review_deltas where appid = 570")
    assert row == [(60000, 50000, 10000)]

    # another sync of 570 and 1086940 today: both still measure from the day's baseline
    body = (
        '{"success":1,"query_summary":{"num_reviews":0,"review_score":8,"review_score_desc":"Very Positive",'
        '"total_positive":%d,"total_negative":%d,"total_reviews":%d},"reviews":[],"cursor":"*"}'
    )
    directory = cassette(
        tmp_path,
        "steam-reviews",
        {
            "appreviews/570?": [response(200, body % (2158000, 412000, 2570000))],
            "appreviews/1086940?": [response(200, body % (1000, 130, 1130))],
        },
    )
    assert replay(golden_file.source, directory, "--ids", "570,1086940", scale=FAST) == 0
    today = today_utc(steam)
    deltas = steam.rows(
        "select appid, delta_date, reviews_added, positive_added, negative_added, round(hours_since_last_sync)"
        " from review_deltas where appid in (570, 1086940) order by appid"
    )
    assert deltas == [(570, today, 70000, 58000, 12000, 29), (1086940, today, 130, 100, 30, 25)]
    baseline = steam.rows(
        "select appid, reviews_baseline_date, reviews_baseline_total, reviews_baseline_positive,"
        " last_known_total_reviews from sync_status where appid in (570, 1086940) order by appid"
    )
    assert baseline == [(570, today, 2500000, 2100000, 2570000), (1086940, today, 1000, 900, 1130)]
    assert steam.scalar("select count(*) from review_deltas") == 3  # still one row per app per day


# --- engine contracts the goldens rely on ----------------------------------------------------------------
def test_a_complete_catalogue_run_runs_its_after_step_and_clears_the_cursor(
    steam: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, code = run_replay(steam, "steamspy-all", monkeypatch)
    assert code == 0
    assert steam.rows("select cursor from syncrun_cursors where source = 'steamspy' and cursor is not null") == []
    assert steam.scalar("select steamspy_available from sync_status where appid = 3527290") is False


def test_price_batch_is_one_request_for_up_to_30_apps(steam: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 5 due apps go out as one request (request.batch.size 30), even with concurrency 2."""
    _, _, code = run_replay(steam, "steam-price", monkeypatch)
    assert steam.scalar("select requests_made from sync_jobs where job_type = 'price'") == 1
    assert code == 0


def test_cassette_helper_replaces_exactly_the_named_exchanges(tmp_path: Path) -> None:
    directory = cassette(tmp_path, "steam-price", {"appdetails": [BAD_GATEWAY]})
    data = yaml.safe_load((directory / "cassette.yaml").read_text())
    assert [i["response"]["status"]["code"] for i in data["interactions"]] == [502]


# --- issue #13: the seed's error columns, the reviews worker's ladder, transient runs ---------------------
def test_reviews_keeps_the_seed_error_columns_and_the_workers_ladder(
    steam: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reviews replay over apps with errors recorded before: 1086940 succeeds, so its
    consecutive_errors goes to 0 and last_error_* are cleared (the worker's success write);
    3000000 fails a 6th time in a row, so the seed's counter goes 5 -> 6 (previous+1) and it backs off
    6 h: the worker's min(15 * 2^(n-1), 360) minutes, not syncrun's default 8 h at n = 6."""
    golden_file = Golden.load("steam-reviews")
    prepare(steam, golden_file, monkeypatch)
    steam.run(
        "update sync_status set consecutive_errors = 2, last_error_source = 'reviews', last_error_message = 'old',"
        " last_error_at = now() - interval '1 day' where appid = 1086940;"
        " update sync_status set consecutive_errors = 5 where appid = 3000000;"
        " insert into syncrun_state (source, entity_key, consecutive_errors, last_error, last_error_at)"
        " values ('reviews', '3000000', 5, 'earlier', now() - interval '7 hours')"
    )
    assert replay(golden_file.source, golden_file.replay_dir, scale=FAST) == 0
    errors = "select consecutive_errors, last_error_source, last_error_message from sync_status where appid = %s"
    assert steam.rows(errors, (1086940,)) == [(0, None, None)]
    assert steam.rows(errors, (3000000,)) == [(6, "reviews", "Steam did not return a reviews summary (success=2)")]
    state = steam.rows(
        "select consecutive_errors, round(extract(epoch from next_attempt_at - now()) / 60)"
        " from syncrun_state where source = 'reviews' and entity_key = '3000000'"
    )
    assert state == [(6, 360)]


def test_ccu_backs_off_an_app_failing_transiently_on_every_run(
    steam: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """CCU's 502 app (1500070, one attempt): each run counts a transiently failed run; from the 3rd
    it backs off (15 min), where the worker asked it again with full retries on every run."""
    golden_file, _, code = run_replay(steam, "steam-ccu", monkeypatch)
    assert code == 0
    directory = cassette(tmp_path, "steam-ccu", {"appid=1500070": [response(502, "<html>Bad Gateway</html>")] * 2})
    for runs in (2, 3):
        replay(golden_file.source, directory, "--ids", "1500070", scale=FAST)
        assert steam.rows(
            "select transient_runs, next_attempt_at is not null from syncrun_state"
            " where source = 'ccu' and entity_key = '1500070'"
        ) == [(runs, runs == 3)]
    assert steam.scalar("select consecutive_errors from sync_status where appid = 1500070") == 3


# --- issue #13: what the workers said, with the real sources ----------------------------------------------
def due(db: Database, stem: str, limit: int = 100) -> list[int]:
    """The appids the bundled source would select now, in order (nothing claimed)."""
    source = config.load(Golden.load(stem).source)
    selection.check(db.conn, source)
    pages = selection.chunks(db.conn, source, limit=limit, holder="t", lease_seconds=60, claim=False)
    return [row["appid"] for page in pages for row in page]


def test_storefront_takes_released_games_without_a_date_first(steam: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Supabase's fresh-release capture: a game marked released that still has no date goes first."""
    prepare(steam, Golden.load("steam-storefront"), monkeypatch)
    before = due(steam, "steam-storefront")
    assert before[:3] == [570, 1086940, 2222220]
    steam.run("update apps set is_released = true where appid in (1500050, 2378500)")  # 2378500 is a dlc
    assert due(steam, "steam-storefront")[:3] == [1500050, 570, 1086940]
    golden_file = Golden.load("steam-storefront")
    assert replay(golden_file.source, golden_file.replay_dir, "--limit", "1", scale=FAST) == 0
    synced = steam.rows("select appid from sync_status where last_storefront_sync > now() - interval '10 minutes'")
    assert synced == [(1500050,)]


def test_reviews_never_takes_a_future_release_without_reviews_unless_promoted(
    steam: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    golden_file = Golden.load("steam-reviews")
    prepare(steam, golden_file, monkeypatch)
    assert sorted(due(steam, "steam-reviews")) == [570, 730, 1086940, 3000000]
    # 730 becomes a release 30 days out with no reviews; 1086940 one 30 days out that has reviews
    steam.run("update apps set release_date = (now() at time zone 'utc')::date + 30 where appid in (730, 1086940)")
    assert sorted(due(steam, "steam-reviews")) == [570, 1086940, 3000000]
    steam.run("update apps set release_date = (now() at time zone 'utc')::date + 7 where appid = 730")  # the edge
    assert 730 in due(steam, "steam-reviews")
    steam.run("update apps set release_date = (now() at time zone 'utc')::date + 8 where appid = 730")
    assert 730 not in due(steam, "steam-reviews")
    # a promotion brings it back, first
    steam.run("update sync_status set reviews_priority_override_until = now() + interval '6 hours' where appid = 730")
    assert due(steam, "steam-reviews")[0] == 730
    assert replay(golden_file.source, golden_file.replay_dir, scale=FAST) == 0
    assert steam.scalar("select last_reviews_sync is not null from sync_status where appid = 730") is True


def test_reviews_takes_the_launch_window_first(steam: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    prepare(steam, Golden.load("steam-reviews"), monkeypatch)
    steam.run("update apps set release_date = (now() at time zone 'utc')::date - 3 where appid = 1086940")
    assert due(steam, "steam-reviews")[0] == 1086940


def test_storefront_404_is_an_error_not_a_skip(
    steam: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    golden_file = Golden.load("steam-storefront")
    prepare(steam, golden_file, monkeypatch)
    directory = cassette(tmp_path, "steam-storefront", {"appids=570&": [response(404, "")]})
    assert replay(golden_file.source, directory, "--ids", "570", scale=FAST) == 1  # its one entity failed
    assert steam.scalar("select last_storefront_sync from sync_status where appid = 570") is None
    state = steam.rows("select consecutive_errors, last_error from syncrun_state where entity_key = '570'")
    assert state == [(1, "storefront HTTP 404")]
    assert steam.scalar("select items_failed from sync_jobs where job_type = 'storefront'") == 1


def test_ccu_result_42_stamps_the_sync_time(steam: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, code = run_replay(steam, "steam-ccu", monkeypatch)
    assert code == 0
    assert steam.scalar("select last_ccu_sync > now() - interval '10 minutes' from sync_status where appid = 1500060")


def test_ccu_source_stays_with_a_higher_kept_peak(steam: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """greatest keeps SteamSpy's higher figure for 730, and its source with it (the worker's >= rule)."""
    golden_file = Golden.load("steam-ccu")
    prepare(steam, golden_file, monkeypatch)
    steam.run(
        "insert into daily_metrics (appid, metric_date, ccu_peak, ccu_source)"
        " values (730, (now() at time zone 'utc')::date, 2000000, 'steamspy'),"
        "        (1086940, (now() at time zone 'utc')::date, 95000, 'steamspy')"
    )
    assert replay(golden_file.source, golden_file.replay_dir, scale=FAST) == 0
    assert peaks(steam)[730] == (2000000, "steamspy")  # the sample was 1034567
    assert peaks(steam)[1086940] == (95000, "steam_api")  # an equal sample takes over, as the worker


def test_developer_spelling_does_not_depend_on_arrival_order(
    steam: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ "Sable Works" and "sable works " for one developer keep "Sable Works", in one batch or across runs."""
    golden_file = Golden.load("steam-storefront")
    prepare(steam, golden_file, monkeypatch)
    body = (
        '{"%d":{"success":true,"data":{"type":"game","name":"x","developers":["%s"],"publishers":["%s"],'
        '"release_date":{"coming_soon":false,"date":"2012"}}}}'
    )

    def run_with(spellings: dict[int, str]) -> None:
        change = {f"appids={a}&": [response(200, body % (a, name, name.upper()))] for a, name in spellings.items()}
        directory = cassette(tmp_path / str(len(list(tmp_path.iterdir()))), "steam-storefront", change)
        ids = ",".join(str(a) for a in spellings)
        assert replay(golden_file.source, directory, "--ids", ids, scale=FAST) == 0

    run_with({570: "sable works ", 1086940: "Sable Works", 2222220: "SABLE works"})  # one batch
    run_with({570: "sable works"})  # a later run with another spelling
    names = steam.rows("select name from developers where normalized_name = 'sable works'")
    assert names == [("Sable Works",)]
    assert steam.rows("select name from publishers where normalized_name = 'sable works'") == [("SABLE WORKS",)]
    assert steam.scalar("select release_date from apps where appid = 570") == dt.date(2012, 1, 1)  # a bare year


@pytest.mark.parametrize(
    ("body", "content_type", "detail"),
    [
        ("<html><body>Steam is busy</body></html>", "text/html", "(HTTP 200 text/html: '<html><body>Steam is busy"),
        ('{"570": {"success": true, "data": {"name": "Dota', "application/json", "(HTTP 200 application/json: '{"),
    ],
)
def test_storefront_not_json_keeps_what_arrived(
    steam: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body: str, content_type: str, detail: str
) -> None:
    """review13 F7: the source's `not json` rule names the error; the engine's description of what
    arrived (bounded, redacted) follows it instead of being replaced by it."""
    golden_file = Golden.load("steam-storefront")
    prepare(steam, golden_file, monkeypatch)
    directory = cassette(tmp_path, "steam-storefront", {"appids=570&": [response(200, body, content_type)] * 4})
    assert replay(golden_file.source, directory, "--ids", "570", scale=FAST) == 1
    (error,) = steam.rows("select last_error from syncrun_state where entity_key = '570'")[0]
    assert error.startswith(f"storefront sent no JSON object {detail}")
    assert len(error) < 300
    assert steam.scalar("select last_error_message from sync_status where appid = 570") == error


def test_ccu_html_keeps_what_arrived(steam: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """review13 F7: `Steam CCU: HTTP 200, result null` says what arrived too."""
    golden_file = Golden.load("steam-ccu")
    prepare(steam, golden_file, monkeypatch)
    page = response(200, "<html>maintenance</html>", "text/html")
    directory = cassette(tmp_path, "steam-ccu", {"appid=730": [page] * 4})
    assert replay(golden_file.source, directory, "--ids", "730", scale=FAST) == 1
    (error,) = steam.rows("select last_error from syncrun_state where entity_key = '730'")[0]
    assert error == "Steam CCU: HTTP 200, result null (HTTP 200 text/html: '<html>maintenance</html>')"
