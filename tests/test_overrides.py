"""overrides: `--set path=value` for smoke runs and staging, validated by the source schema, and the
record caps of list sources (`--limit`, `pagination.max_items`) on the real Steam applist source
against a loopback GetAppList."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runner import cli, config, overrides
from runner.errors import ConfigError, UsageError
from tests import test_incremental as incremental
from tests.apiserver import ApiServer, Recorded, Reply
from tests.pg import Database

ROOT = Path(__file__).resolve().parent.parent
APPLIST = ROOT / "sources" / "steam-applist.yaml"
KEY = "applist-key-9f3c2a71"
APPS = [{"appid": 10 * i, "name": f"App {i}"} for i in range(1, 13)]  # 12 apps, 5 a page: 3 pages
PER_PAGE = 5
ROUTE = "/IStoreService/GetAppList/v1/"


# --- parsing --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("pagination.max_items=2", ("pagination", "max_items"), 2),
        ("rate_limit.per=1s", ("rate_limit", "per"), "1s"),
        ("request.query.max_results='2'", ("request", "query", "max_results"), "2"),
        ("writes.0.mode=insert", ("writes", 0, "mode"), "insert"),
        ("request.verify_tls=false", ("request", "verify_tls"), False),
        ("incremental.start=2024-01-01T00:00:00Z", ("incremental", "start"), "2024-01-01T00:00:00Z"),
        ("description=a=b", ("description",), "a=b"),
    ],
)
def test_values_are_yaml_scalars(text: str, path: tuple[Any, ...], value: Any) -> None:
    """Numbers, booleans and quoted text as YAML reads them; a timestamp stays text; an `=` after the
    first is part of the value."""
    assert overrides.parse([text]) == (overrides.Override(path, value),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pagination.max_items", "--set pagination.max_items: expected path=value, e.g. --set pagination.max_items=2"),
        ("pagination..max_items=2", "--set pagination..max_items: expected path=value"),
        ("pagination.max_items=", "--set pagination.max_items= has no value (write '' for empty text, null for none)"),
        ("rate_limit={requests: 1}", "--set rate_limit: the value must be a scalar"),
        ("records=[a, b]", "--set records: the value must be a scalar"),
        ("request.query.key=${secret.STEAM_API_KEY}", "--set request.query.key: a value cannot name a setting"),
    ],
)
def test_malformed_overrides_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError) as error:
        overrides.parse([text])
    assert str(error.value).startswith(message)


NAMES_A_SETTING = "a value cannot name a setting (${secret.…}, ${env.…})"


@pytest.mark.parametrize(
    "value",
    [
        "${secret.ANY_ENV_VAR}",
        "'${secret.ANY_ENV_VAR}'",
        '"\\u0024{secret.ANY_ENV_VAR}"',  # YAML's escapes decode after the argument is read
        '"\\x24{secret.ANY_ENV_VAR}"',
        '"\\U00000024{secret.ANY_ENV_VAR}"',
        '"\\u0024\\u007bsecret.ANY_ENV_VAR}"',
        '"$\\\n  {secret.ANY_ENV_VAR}"',  # a double-quoted line continuation joins `$` and `{`
        "${env.DATABASE_URL}",  # ${env.X} reads any variable of the runner's environment as well
        '"x\\u0024{env.DATABASE_URL}y"',
        "!!str ${secret.ANY_ENV_VAR}",
    ],
)
def test_a_value_naming_a_setting_is_refused_however_it_is_encoded(value: str) -> None:
    """review13 F2: the guard reads the value as YAML decoded it, not the argument's text, so no
    escape smuggles a `${secret.X}` (or `${env.X}`) into a request."""
    with pytest.raises(UsageError) as error:
        overrides.parse([f"request.query.leak={value}"])
    assert NAMES_A_SETTING in str(error.value)


def test_a_dollar_and_a_brace_in_separate_values_name_nothing() -> None:
    """Each override replaces a whole value: `$` in one and `{secret.X}` in another never join."""
    parsed = overrides.parse(["description=$", "request.query.a=$", "request.query.b='{secret.X}'"])
    assert [o.value for o in parsed] == ["$", "$", "{secret.X}"]
    with pytest.raises(UsageError) as error:
        overrides.parse(["request.query.${secret.X}=1"])
    assert "a path cannot name a setting" in str(error.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("concurrency=16", 16),
        ("concurrency=-3", -3),
        ("rate_limit.requests=2.5", 2.5),
        ("concurrency=0x10", "0x10"),
        ("concurrency=0o20", "0o20"),
        ("concurrency=1_0", "1_0"),
        ("concurrency=1:30", "1:30"),
        ("write_batch=1e3", "1e3"),
        ("description=2024-01-01", "2024-01-01"),
    ],
)
def test_numbers_are_decimal(text: str, value: Any) -> None:
    """review13 F10: one rule for numbers — decimal digits. YAML 1.1's hexadecimal, octal, underscored
    and sexagesimal integers stay text like `1e3` (so they are refused where a number goes)."""
    (override,) = overrides.parse([text])
    assert override.value == value


def test_a_hexadecimal_number_is_refused_where_a_number_goes() -> None:
    (problem,) = problems("concurrency=0x10")
    assert problem.endswith("concurrency: expected a whole number, got '0x10' (from --set concurrency)")


def test_zero_max_body_is_refused_like_other_zero_limits() -> None:
    (problem,) = problems("request.max_body=0B")
    assert problem.endswith("request.max_body: '0B' is out of range: must be more than 0 (from --set request.max_body)")


def test_an_item_of_a_list_the_file_lacks_is_named_as_a_list() -> None:
    """review13 F10: not "no setting '0' in entities.where", as if `where` were a mapping."""
    (problem,) = problems("entities.where.0.column=x")
    assert problem.endswith(
        "--set entities.where.0.column: entities.where is not in the file: a list's items must be there to be"
        " set (write the list in the file)"
    )


# --- applied before validation ----------------------------------------------------------------------
def load(*texts: str) -> Any:
    return config.load(APPLIST, overrides.parse(texts))


def test_overrides_change_the_loaded_source() -> None:
    source = load(
        "pagination.max_items=2", "rate_limit.requests=1", "rate_limit.burst=1", "rate_limit.per=1s", "retry.attempts=1"
    )
    assert source.pagination.max_items == 2
    assert (source.rate_limit.requests, source.rate_limit.per, source.retry.attempts) == (1, 1.0, 1)
    assert config.load(APPLIST).pagination.max_items is None  # the file itself is untouched


def problems(*texts: str) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load(*texts)
    return [str(problem) for problem in error.value.problems]


def test_an_invalid_value_is_reported_by_the_schema_naming_the_override() -> None:
    assert problems("rate_limit.per=fast") == [
        f"{APPLIST}:31: rate_limit.per: 'fast' is not a duration (use 500ms, 30s, 1m, 1h, 7d)"
        " (from --set rate_limit.per)"
    ]
    assert problems("pagination.max_items=0")[0].endswith(
        "pagination.max_items: 0 is out of range: must be at least 1 (from --set pagination.max_items)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "pagination.max_itemz=2",
            "--set pagination.max_itemz: no setting 'max_itemz' in pagination (did you mean 'max_items'?)",
        ),
        ("retries.attempts=2", "--set retries.attempts: no setting 'retries' in the file (did you mean 'retry'?)"),
        (
            "writes.5.mode=insert",
            "--set writes.5.mode: writes is a list of 2: name an existing item by its index (0 to 1)",
        ),
        ("status.table=x", "--set status.table: status is false, not a mapping: cannot set table in it"),
    ],
)
def test_a_path_the_schema_does_not_know_is_refused(text: str, message: str) -> None:
    (problem,) = problems(text)
    assert problem.endswith(message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("request.query.key=abc123", "holds a ${secret.*} value, which cannot be overridden"),
        ("auth.type=bearer", "credentials cannot be overridden"),
        ("request.headers.Authorization=Bearer abc123", "credentials cannot be overridden"),
    ],
)
def test_secrets_and_credentials_cannot_be_overridden(
    text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A literal credential on the command line would reach logs and the job row unredacted: refused,
    and the value is not echoed."""
    (problem,) = problems(text)
    assert message in problem
    assert "abc123" not in problem
    assert cli.main(["validate", str(APPLIST), "--set", text]) == 2
    assert "abc123" not in capsys.readouterr().out


def test_entities_limit_is_refused_on_a_list_source() -> None:
    """A catalogue has no entities to count: its cap is on records (pagination.max_items, --limit)."""
    (problem,) = problems("entities.limit=5")
    assert problem.endswith(
        "entities.limit: does not apply to a list source: cap the records a run writes with pagination.max_items"
        " (or --limit) (from --set entities.limit)"
    )


def test_validate_takes_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", str(APPLIST), "--set", "pagination.max_items=2"]) == 0
    assert cli.main(["validate", str(APPLIST), "--set", "rate_limit.per=soon"]) == 2
    assert "(from --set rate_limit.per)" in capsys.readouterr().out


# --- the applist against a loopback GetAppList ------------------------------------------------------
def applist_page(request: Recorded) -> Reply:
    """Steam's shape: `have_more_results` and `last_appid` while there is more, neither on the last page."""
    assert request.query.get("key") == KEY
    after = int(request.query.get("last_appid", 0))
    size = min(PER_PAGE, int(request.query.get("max_results", PER_PAGE)))
    rest = [app for app in APPS if app["appid"] > after]
    page = rest[:size]
    more = {"have_more_results": True, "last_appid": page[-1]["appid"]} if len(rest) > size else {}
    return Reply(200, json={"response": {"apps": page, **more}})


@pytest.fixture
def steam(db: Database, api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("STEAM_API_URL", api.url)
    monkeypatch.setenv("STEAM_API_KEY", KEY)
    monkeypatch.delenv("BATCH_SIZE", raising=False)
    api.route(ROUTE, applist_page)
    assert cli.main(["migrate", "--tables", "steam", str(APPLIST)]) == 0
    return db


def job(db: Database) -> tuple[Any, ...]:
    rows = db.rows(
        "select status, items_processed, items_succeeded, items_created, items_updated, metadata"
        " from sync_jobs order by started_at desc limit 1"
    )
    return tuple(rows[0])


FAST = ["--set", "rate_limit.per=10ms", "--set", "retry.initial=10ms"]


def test_limit_caps_a_list_source_to_that_many_apps(
    steam: Database, api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: `--limit 2` on the applist wrote a whole page. Now it writes exactly 2 apps
    (the first page cut), counts apps not pages, and the capped listing resumes at that page."""
    assert cli.main(["run", str(APPLIST), "--limit", "2", *FAST]) == 0
    assert steam.rows("select appid from apps order by appid") == [(10,), (20,)]
    status, processed, succeeded, created, updated, metadata = job(steam)
    assert (status, processed, succeeded, created, updated) == ("completed", 2, 2, 2, 0)
    assert metadata["listing"] == "capped"
    assert (metadata["pages"], metadata["resumes_at_page"]) == (1, 1)
    assert "listing not complete: max_items 2 reached" in capsys.readouterr().err
    assert len(api.requests) == 1


def test_set_max_items_and_rate_limit_for_a_smoke_run(
    steam: Database, api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--set pagination.max_items=7` reads two pages and keeps 7 apps; the overrides are in the job
    row's metadata and the log, the secret query parameter in neither."""
    assert cli.main(["run", str(APPLIST), "--set", "pagination.max_items=7", *FAST]) == 0
    assert steam.scalar("select count(*) from apps") == 7
    _, processed, _, created, _, metadata = job(steam)
    assert (processed, created, metadata["pages"]) == (7, 7, 2)
    assert metadata["overrides"] == {"pagination.max_items": 7, "rate_limit.per": "10ms", "retry.initial": "10ms"}
    err = capsys.readouterr().err
    assert "--set pagination.max_items=7" in err
    assert KEY not in err
    assert KEY[:8] not in str(metadata)
    # The next run resumes at the cut page, from its start: no app of it is skipped.
    assert cli.main(["run", str(APPLIST), *FAST]) == 0
    assert steam.scalar("select count(*) from apps") == len(APPS)
    assert api.requests[2].query.get("last_appid") == "50"


def test_an_override_cannot_send_the_sources_credentials_to_another_origin(
    steam: Database, api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """review13 F3: the applist sends STEAM_API_KEY in its query; `--set request.url=` naming another
    host (or a userinfo trick) exits 2 before any request or job row, saying how to do it deliberately."""
    for url in ("http://127.0.0.1:9/steal", f"http://evil@{api.url.partition('://')[2]}/x"):
        assert cli.main(["run", str(APPLIST), "--set", f"request.url={url}", *FAST]) == 2
        err = capsys.readouterr().err
        assert "--set request.url: would send this source's credentials to another origin than the file's" in err
        assert "set the environment variable its URL names (or copy the file)" in err
    assert (len(api.requests), steam.scalar("select count(*) from sync_jobs")) == (0, 0)


def test_an_override_cannot_turn_tls_verification_off_on_a_credentialed_source(
    steam: Database, api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """review13b N5: `--set request.verify_tls=false` would hand STEAM_API_KEY to whoever answers for
    the host: refused (exit 2) like an origin change, before any request or job row; `true` is fine."""
    assert cli.main(["run", str(APPLIST), "--set", "request.verify_tls=false", *FAST]) == 2
    err = capsys.readouterr().err
    assert "--set request.verify_tls: would send this source's credentials without verifying" in err
    assert (len(api.requests), steam.scalar("select count(*) from sync_jobs")) == (0, 0)
    assert cli.main(["validate", str(APPLIST), "--set", "request.verify_tls=true"]) == 0


def test_a_checkpoint_is_resumed_only_by_the_listing_it_was_made_for(
    steam: Database, api: ApiServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """review13 F3: the checkpoint records the listing's URL; a run against another URL (here the
    deliberate way: the environment variable the file's URL names) starts over and says so."""
    assert cli.main(["run", str(APPLIST), "--set", "pagination.max_items=7", *FAST]) == 0
    (stored,) = steam.rows("select cursor from syncrun_cursors")
    assert stored[0]["url"] == f"{api.url}{ROUTE}?key=***&max_results=50000"  # the key redacted
    api.route(f"/mirror{ROUTE}", applist_page)
    monkeypatch.setenv("STEAM_API_URL", f"{api.url}/mirror")
    capsys.readouterr()
    assert cli.main(["run", str(APPLIST), "--set", "pagination.max_items=1", *FAST]) == 0
    assert (api.requests[-1].path, api.requests[-1].query.get("last_appid")) == (f"/mirror{ROUTE}", None)
    assert "the checkpoint was made for another URL" in capsys.readouterr().err
    assert KEY[:8] not in str(steam.rows("select cursor from syncrun_cursors"))


def test_a_checkpoint_is_not_resumed_after_a_query_change(
    steam: Database, api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """review13b N6: the checkpoint records `request.query` too, so a run asking another query (a
    filter parameter, here the page size) starts over instead of resuming another listing's position;
    the same query resumes."""
    assert cli.main(["run", str(APPLIST), "--set", "pagination.max_items=7", *FAST]) == 0
    capsys.readouterr()
    asked = len(api.requests)
    assert (
        cli.main(
            ["run", str(APPLIST), "--set", "request.query.max_results=3", "--set", "pagination.max_items=7", *FAST]
        )
        == 0
    )
    assert api.requests[asked].query.get("last_appid") is None
    assert api.requests[asked].query.get("max_results") == "3"
    assert "the checkpoint was made for another URL" in capsys.readouterr().err
    asked = len(api.requests)
    assert cli.main(["run", str(APPLIST), "--set", "request.query.max_results=3", *FAST]) == 0
    assert api.requests[asked].query.get("last_appid") is not None  # the same listing: resumed


def test_a_secrets_value_given_to_set_reaches_no_output(
    steam: Database, api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """review13 F9: a secret's value (or an 8-character piece of it) mistyped into a --set value is
    masked in the log, the job row's metadata and a validation error; no piece of it reaches stdout,
    stderr or any table syncrun writes."""
    values = [f"xx {KEY}", f"yy {KEY[3:15]}"]
    assert cli.main(["run", str(APPLIST), *(f"--set=description={v}" for v in values[:1]), *FAST]) == 0
    assert cli.main(["run", str(APPLIST), f"--set=description={values[1]}", "--restart", *FAST]) == 0
    assert cli.main(["run", str(APPLIST), f"--set=pagination.max_items={KEY}", *FAST]) == 2
    out, err = capsys.readouterr()
    assert "expected a whole number, got '***' (from --set pagination.max_items)" in err
    stored = steam.rows(
        "select (select json_agg(j)::text from sync_jobs j), (select json_agg(c)::text from syncrun_cursors c),"
        " (select json_agg(s)::text from syncrun_state s)"
    )
    metadata = [row[0] for row in steam.rows("select metadata->'overrides'->>'description' from sync_jobs")]
    assert sorted(metadata) == ["xx ***", "yy ***"]
    for text in (out, err, str(stored)):
        for start in range(len(KEY) - 7):
            assert KEY[start : start + 8] not in text


def test_test_read_takes_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    """test-read forwards --set like run's other options: the override is validated before anything."""
    assert cli.main(["test-read", str(APPLIST), "--ids", "10", "--set", "rate_limit.per=bad"]) == 2
    assert "rate_limit.per: 'bad' is not a duration (use 500ms, 30s, 1m, 1h, 7d) (from --set rate_limit.per)" in (
        capsys.readouterr().err
    )


# --- the incremental watermark, overridden for one run ---------------------------------------------------
def test_set_incremental_start_overrides_the_watermark_for_one_run(
    db: Database, api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--set incremental.start=…` asks from that point this run, leaving the stored watermark alone
    until its listing completes, when the watermark becomes what it saw (a reset may move it back)."""
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("API_URL", api.url)
    env = db
    changes = incremental.timestamps(api)
    file = incremental.source(tmp_path, env)
    assert cli.main(["run", str(file)]) == 0
    assert incremental.stored(env) == {"type": "timestamp", "value": "2021-03-02T15:05:00+01:00"}
    changes.take()
    api.route("/changes", Reply(500, json={"error": "down"}))  # a failed override run keeps the watermark
    assert cli.main(["run", str(file), "--set", "incremental.start=2021-03-02T00:00:00Z"]) == 1
    assert incremental.stored(env) == {"type": "timestamp", "value": "2021-03-02T15:05:00+01:00"}
    api.route("/changes", changes.reply)
    changes.put(3, "2021-03-02T01:00:00Z")  # the latest record is now earlier than the stored watermark
    changes.put(4, "2021-03-02T02:00:00Z")
    changes.put(5, "2021-03-02T03:00:00Z")
    assert cli.main(["run", str(file), "--set", "incremental.start=2021-03-02T00:00:00Z"]) == 0
    assert changes.sinces[-1] == "2021-03-01T23:50:00Z"  # the override minus the lookback
    assert changes.take() == [3, 4, 5]
    assert incremental.stored(env) == {"type": "timestamp", "value": "2021-03-02T03:00:00+00:00"}
    ((metadata,),) = env.rows("select metadata from sync_jobs order by started_at desc limit 1")
    assert metadata["overrides"] == {"incremental.start": "2021-03-02T00:00:00Z"}
