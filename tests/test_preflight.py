"""preflight: settings checked at run start — the exact text of each error, and never a secret in it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner import config, preflight, spec, templating
from runner.errors import SettingError

TOKEN = "s3cr3t-token-value"
SOURCE = """\
name: alpha
entities: {columns: {appid: int}}
request:
  url: "${env.API_URL}/apps/{appid}"
  query: {key: "${secret.QUERY_KEY:-k}"}
  headers: {Authorization: "Bearer ${secret.API_TOKEN}"}
rate_limit: {requests: 1, per: 1s}
writes:
  - {table: apps, key: [appid], columns: {appid: entity.appid}}
"""
FINE = {"API_URL": "http://127.0.0.1:8080/api", "API_TOKEN": TOKEN}


def _source(tmp_path: Path, text: str = SOURCE) -> spec.Source:
    (tmp_path / "alpha.yaml").write_text(textwrap.dedent(text))
    return config.load(tmp_path / "alpha.yaml")


def _check(tmp_path: Path, **environ: str) -> str | None:
    """The SettingError's text for these variables (over FINE), or None when they pass."""
    source = _source(tmp_path)
    try:
        settings = templating.resolve(source.settings, {**FINE, **environ})
        preflight.check_settings([source], settings)
    except SettingError as error:
        return str(error)
    return None


def assert_no_fragment(text: str, secret: str) -> None:
    """No 8-character piece of the secret (the whole of a shorter one) appears in `text`."""
    size = min(8, len(secret.strip()))
    for start in range(len(secret) - size + 1):
        assert secret[start : start + size] not in text, f"{secret[start : start + size]!r} leaked"


def test_good_settings_pass(tmp_path: Path) -> None:
    """A base URL with a port and path, an ASCII token: nothing to say."""
    assert _check(tmp_path) is None
    assert _check(tmp_path, API_URL="https://[::1]:8443", API_TOKEN="a b") is None


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"API_TOKEN": TOKEN + "\n"},
            "secret API_TOKEN ends with a line break — a common copy-paste mistake in CI secrets; remove it",
        ),
        (
            {"API_TOKEN": TOKEN + "\r\n"},
            "secret API_TOKEN ends with a line break — a common copy-paste mistake in CI secrets; remove it",
        ),
        (
            {"API_URL": "http://127.0.0.1:8080\r\n"},
            "setting API_URL ends with a line break — a common copy-paste mistake in CI variables; remove it",
        ),
        (
            {"API_TOKEN": "s3cr3t\x00token-value"},
            "secret API_TOKEN contains a control character (U+0000) — a setting is one line of text; remove it",
        ),
        (
            {"API_TOKEN": "s3cr3t\ttoken-value"},
            "secret API_TOKEN contains a control character (U+0009) — a setting is one line of text; remove it",
        ),
        (
            {"API_TOKEN": " " + TOKEN},
            "secret API_TOKEN starts or ends with whitespace — a common copy-paste mistake in CI secrets; remove it",
        ),
        (
            {"API_TOKEN": "s3cr3t-tökén-value"},
            "secret API_TOKEN is sent in header Authorization of source 'alpha' but contains a non-ASCII character"
            " (U+00F6): HTTP header values must be ASCII — retype it (a pasted typographic quote or non-breaking"
            " space?), or encode it as the API expects",
        ),
        (
            {"API_TOKEN": "s3cr3t-\udcff-value"},  # the byte 0xff in the environment, as Python reads it
            "secret API_TOKEN is not valid UTF-8 text — set it again as UTF-8",
        ),
        (
            {"API_URL": "http://127.0.0.1:\u00b2"},  # a digit to str.isdigit, not to int()
            "setting API_URL makes the request URL of source 'alpha' unusable: it has a port that is not a number"
            " from 1 to 65535",
        ),
        (
            {"API_URL": "http://[::1"},
            "setting API_URL makes the request URL of source 'alpha' unusable: the host has an unbalanced '[' or ']'"
            " (an IPv6 host is written like http://[::1]:8080/)",
        ),
        (
            {"API_URL": "http://127.0.0.1:8080/api?key=1&"},  # review13c R2: sent twice
            "setting API_URL makes the request URL of source 'alpha' unusable: the query parameter 'key' is both"
            " in the URL's own query and in request.query, so it would be sent twice: write it in one place",
        ),
        (
            {"API_URL": "http://127.0.0.1:8080/api#top"},  # review13c R4: never sent
            "setting API_URL makes the request URL of source 'alpha' unusable: it has a #fragment, which is never"
            " sent to the server: remove it",
        ),
        (
            {"API_URL": "http://127.0.0.1:99999"},
            "setting API_URL makes the request URL of source 'alpha' unusable: it has port 99999 out of range"
            " (1–65535)",
        ),
        (
            {"API_URL": "http://127.0.0.1:80x"},
            "setting API_URL makes the request URL of source 'alpha' unusable: it has a port that is not a number"
            " from 1 to 65535",
        ),
        (
            {"API_URL": "api.example.com"},
            "setting API_URL makes the request URL of source 'alpha' unusable: it must start with http:// or https://",
        ),
        (
            {"API_URL": "http://"},
            "setting API_URL makes the request URL of source 'alpha' unusable: it has no host (write http://host/…)",
        ),
        (  # urllib reads host 127.0.0.1; httpx sent the request to evil.example
            {"API_URL": "http://127.0.0.1:18001\\@evil.example"},
            "setting API_URL makes the request URL of source 'alpha' unusable: its host part contains a backslash"
            " (percent-encode it as %5C, or use / for a path)",
        ),
        (  # review revJ F5: httpx sent it to exa%20mple.com; every entity failed to connect
            {"API_URL": "http://exa mple.com"},
            "setting API_URL makes the request URL of source 'alpha' unusable: its host contains a space: a host"
            " is a name like api.example.com or an IP address",
        ),
        (
            {"API_URL": "http://exa%20mple.com:8080"},
            "setting API_URL makes the request URL of source 'alpha' unusable: its host is not a valid name or IP"
            " address (a name has letters, digits, '-' and '_' between single dots)",
        ),
        (  # review revK F5: urlsplit took the zone; no request can name an interface
            {"API_URL": "http://[fe80::1%25eth0]:8080"},
            "setting API_URL makes the request URL of source 'alpha' unusable: its IPv6 host has a zone id (%…, an"
            " interface): requests cannot name one; use a global address or a host name",
        ),
        (  # review revK F5: the resolver's idna codec raised UnicodeError out of the run
            {"API_URL": "http://" + "a" * 64 + ".example.com"},
            "setting API_URL makes the request URL of source 'alpha' unusable: its host has a label of 64"
            " characters (DNS allows at most 63 between dots)",
        ),
        (
            {"API_URL": "http://api-.example.com"},
            "setting API_URL makes the request URL of source 'alpha' unusable: its host has a label that starts or"
            " ends with '-' (RFC 1123: a label starts and ends with a letter or digit)",
        ),
        (
            {"API_URL": "http://10.0.0.256"},
            "setting API_URL makes the request URL of source 'alpha' unusable: its host is not a valid IPv4"
            " address (four decimal numbers from 0 to 255 without leading zeros, like 127.0.0.1)",
        ),
        (  # review revM L4: passed, and the resolver dialled 127.0.0.1
            {"API_URL": "http://0x7f.1:8080"},
            "setting API_URL makes the request URL of source 'alpha' unusable: its host is not a valid IPv4"
            " address (four decimal numbers from 0 to 255 without leading zeros, like 127.0.0.1)",
        ),
        (
            {"API_URL": "http://exa\u200bmple.com"},  # a zero-width space: no letter
            "setting API_URL makes the request URL of source 'alpha' unusable: its host is not a valid name or IP"
            " address (IDNA, the encoding of international names, refuses it)",
        ),
    ],
)
def test_bad_setting_texts(tmp_path: Path, environ: dict[str, str], message: str) -> None:
    """Each bad value: the setting's name, what is wrong and what to do — exactly this text."""
    assert _check(tmp_path, **environ) == message


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("not a url", "it must start with http:// or https://"),
        ("ftp://auth.example.com", "it must start with http:// or https://"),
        ("https://", "it has no host (write https://host/…)"),
        (  # review revJ F5
            "https://auth example.com",
            "its host contains a space: a host is a name like api.example.com or an IP address",
        ),
    ],
)
def test_a_token_url_from_a_setting_is_checked_at_run_start(tmp_path: Path, value: str, reason: str) -> None:
    """auth.token_url read from a setting gets the request URL's check, with the value (exit 2)."""
    text = SOURCE.replace(
        '  headers: {Authorization: "Bearer ${secret.API_TOKEN}"}\n',
        "auth: {type: oauth2_client_credentials, token_url: '${env.TOKEN_URL}/token', client_id: a,"
        " client_secret: '${secret.API_TOKEN}'}\n",
    )
    source = _source(tmp_path, text)
    settings = templating.resolve(source.settings, {**FINE, "TOKEN_URL": value})
    with pytest.raises(SettingError) as caught:
        preflight.check_settings([source], settings)
    assert str(caught.value) == f"setting TOKEN_URL makes the token URL of source 'alpha' unusable: {reason}"
    fine = templating.resolve(source.settings, {**FINE, "TOKEN_URL": "https://auth.example.com"})
    preflight.check_settings([source], fine)


def test_every_problem_is_listed(tmp_path: Path) -> None:
    """Several bad settings are reported together; a bad value is not reported twice (as a URL too)."""
    assert _check(tmp_path, API_URL="http://h\n", API_TOKEN=TOKEN + "\n", QUERY_KEY="k\x7f") == (
        "3 setting problems:\n"
        "  setting API_URL ends with a line break — a common copy-paste mistake in CI variables; remove it\n"
        "  secret QUERY_KEY contains a control character (U+007F) — a setting is one line of text; remove it\n"
        "  secret API_TOKEN ends with a line break — a common copy-paste mistake in CI secrets; remove it"
    )


@pytest.mark.parametrize(
    "secret",
    [
        "s3cr3t-token-value\n",
        "http://user:hunter2-Zq9xW7v@[::1/",
        "http://user:hunter2-Zq9xW7v@host:123456789/",
        "p@ssw0rd-é-1234567",
        "tab\tinside-the-secret",
        "\u200bzero-width-secret",
    ],
)
def test_no_message_quotes_a_secret(tmp_path: Path, secret: str) -> None:
    """Whatever is wrong with a secret, no 8-character piece of it reaches the message."""
    text = """\
    name: alpha
    entities: {columns: {appid: int}}
    request:
      url: "${secret.API_URL}/apps/{appid}"
      headers: {Authorization: "${secret.API_TOKEN}"}
    rate_limit: {requests: 1, per: 1s}
    writes:
      - {table: apps, key: [appid], columns: {appid: entity.appid}}
    """
    source = _source(tmp_path, text)
    messages = []
    for environ in ({"API_URL": secret, "API_TOKEN": "t"}, {"API_URL": "http://h", "API_TOKEN": secret}):
        try:  # each is wrong as a URL; some are fine as a header value
            preflight.check_settings([source], templating.resolve(source.settings, environ))
        except SettingError as error:
            messages.append(str(error))
    assert messages
    for message in messages:
        assert_no_fragment(message, secret)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"DATABASE_URL": "postgresql://u:hunter2-Zq9xW7v@db.example/app\n"},
            "DATABASE_URL ends with a line break — a common copy-paste mistake in CI secrets; remove it",
        ),
        (
            {"DATABASE_URL": "postgresql://u:hunter2-Zq9xW7v@db.example:99999/app"},
            "DATABASE_URL has port 99999 out of range (1–65535)",
        ),
        (
            {"DATABASE_URL": "postgresql://u:hunter2-Zq9xW7v@[::1/app"},
            "DATABASE_URL is not a connection string PostgreSQL can read (end of string reached when looking for"
            ' matching "]" in IPv6 host address in URI: "…") — write postgresql://user:password@host:5432/dbname,'
            " percent-encoding special characters in the password",
        ),
        (
            {"DATABASE_URL": "postgresql://u:hunter2 Zq9xW7v@db.example/app"},
            'DATABASE_URL is not a connection string PostgreSQL can read (unexpected spaces found in "…", use'
            " percent-encoded spaces (%20) instead) — write postgresql://user:password@host:5432/dbname,"
            " percent-encoding special characters in the password",
        ),
        (  # a password with a quote of its own: psycopg's quoted piece ends inside it ("dbp\ "Jr")
            {"DATABASE_URL": 'postgresql://u:dbp\\ "Jr/+~ é@x-2b6d8f0a4c@db.example/app'},
            'DATABASE_URL is not a connection string PostgreSQL can read (unexpected spaces found in "…", use'
            " percent-encoded spaces (%20) instead) — write postgresql://user:password@host:5432/dbname,"
            " percent-encoding special characters in the password",
        ),
        (
            {"SYNCRUN_REDIS_URL": "redis://:hunter2-Zq9xW7v@[::1:6379/0"},
            "SYNCRUN_REDIS_URL is not a usable Redis URL: the host has an unbalanced '[' or ']' (an IPv6 host is"
            " written like http://[::1]:8080/) (e.g. redis://host:6379/0)",
        ),
        (
            {"SYNCRUN_REDIS_URL": "http://redis.example:6379"},
            "SYNCRUN_REDIS_URL is not a usable Redis URL: it must start with redis:// or rediss:// or unix://"
            " (e.g. redis://host:6379/0)",
        ),
    ],
)
def test_bad_connection_urls(environ: dict[str, str], message: str) -> None:
    """DATABASE_URL and SYNCRUN_REDIS_URL: named, what is wrong, never the password."""
    with pytest.raises(SettingError) as caught:
        preflight.check_environment(environ)
    assert str(caught.value) == message
    assert_no_fragment(str(caught.value), "hunter2-Zq9xW7v")


def test_good_connection_urls_pass() -> None:
    """Unset, empty, key=value and multi-host forms are fine."""
    preflight.check_environment({})
    preflight.check_environment({"DATABASE_URL": "", "SYNCRUN_REDIS_URL": ""})
    preflight.check_environment({"DATABASE_URL": "host=db.example port=5432 dbname=app password='a b'"})
    preflight.check_environment({"DATABASE_URL": "postgresql://u@h1:5432,h2:5433/app"})
    preflight.check_environment({"SYNCRUN_REDIS_URL": "rediss://:pw@[::1]:6380/1"})


def test_a_default_that_breaks_the_url_is_reported_at_its_file_and_line(tmp_path: Path) -> None:
    """Review revH F3: a URL whose default (the file's text) cannot be checked at load, since another
    of its settings comes from the environment: at run start the problem names the file, the line and
    the default, not a CI variable; set from the environment, the same value keeps today's message."""
    text = SOURCE.replace('"${env.API_URL}/apps/{appid}"', '"${env.API_HOST:-http://[::1}${env.API_PATH}/{appid}"')
    source = _source(tmp_path, text)
    with pytest.raises(SettingError) as caught:
        preflight.check_settings([source], templating.resolve(source.settings, {**FINE, "API_PATH": "/apps"}))
    assert str(caught.value) == (
        f"{tmp_path / 'alpha.yaml'}:4: request.url: ${{env.API_HOST:-…}} (its default), setting API_PATH make"
        " the request URL of source 'alpha' unusable: the host has an unbalanced '[' or ']' (an IPv6 host is"
        " written like http://[::1]:8080/)"
    )
    environ = {**FINE, "API_PATH": "/apps", "API_HOST": "http://[::1"}
    with pytest.raises(SettingError) as caught:
        preflight.check_settings([source], templating.resolve(source.settings, environ))
    assert str(caught.value).startswith("setting API_HOST, setting API_PATH make the request URL of source 'alpha'")


def test_a_default_is_not_blamed_on_ci(tmp_path: Path) -> None:
    """A default with a trailing space is the file's (refused at load, file:line); the same value from
    the environment is the CI variable's copy-paste mistake, as before."""
    text = SOURCE.replace('"${secret.QUERY_KEY:-k}"', '"${env.QUERY_KEY:-k }"')
    with pytest.raises(config.ConfigError) as caught:
        _source(tmp_path, text)
    assert str(caught.value) == (
        f"{tmp_path / 'alpha.yaml'}:5: request.query.key: ${{env.QUERY_KEY:-…}}: the default starts or ends"
        " with whitespace, which would be sent as it is: remove it"
    )
    assert _check(tmp_path, QUERY_KEY="k ") == (
        "secret QUERY_KEY starts or ends with whitespace — a common copy-paste mistake in CI secrets; remove it"
    )


def test_a_url_setting_with_a_parameter_the_pagination_sets_is_refused(tmp_path: Path) -> None:
    """review revJ F7 at run start: a base URL from the environment whose query has the pagination's
    parameter (`?page=1`): the written value would be replaced on every page. Exit 2, naming it."""
    text = """\
    name: alpha
    entities: {type: list}
    request: {url: "${env.API_URL}/list"}
    pagination: {type: page, param: page, page_size: 10, size_param: per_page}
    rate_limit: {requests: 1, per: 1s}
    status: false
    writes:
      - {table: apps, key: [appid], columns: {appid: record.id}}
    """
    source = _source(tmp_path, text)
    for url, name, setting in [
        ("http://h.example/v1?page=1", "page", "param"),
        ("http://h/?per_page=5", "per_page", "size_param"),
    ]:
        with pytest.raises(SettingError) as caught:
            preflight.check_settings([source], templating.resolve(source.settings, {"API_URL": url}))
        assert str(caught.value) == (
            f"setting API_URL makes the request URL of source 'alpha' unusable: the query parameter '{name}' is in"
            f" the URL's own query, but pagination.{setting} sets it on the listing's requests, replacing the URL's"
            " value: remove it from the URL"
        )
    preflight.check_settings([source], templating.resolve(source.settings, {"API_URL": "http://h.example/v1?cc=us"}))


def test_a_cursor_param_twice_in_a_url_from_a_setting_is_refused(tmp_path: Path) -> None:
    """review revL F2 at run start: a URL from the environment holding the cursor param twice would send
    both on the first request; refused naming the variable, like the file's URL at validate."""
    text = SOURCE.replace(
        "rate_limit:", "pagination: {type: cursor, param: cursor, cursor: body.next}\nrate_limit:"
    ).replace('"${env.API_URL}/apps/{appid}"', '"${env.API_URL}"')
    source = _source(tmp_path, text)
    settings = templating.resolve(source.settings, {**FINE, "API_URL": "http://127.0.0.1:8080/a?cursor=*&cursor=b"})
    with pytest.raises(SettingError) as caught:
        preflight.check_settings([source], settings)
    assert str(caught.value) == (
        "setting API_URL makes the request URL of source 'alpha' unusable: the query parameter 'cursor' is"
        " pagination.param, whose value in the URL is the first cursor, but it is there 2 times: the first"
        " request would send them all; write it once"
    )
    fine = templating.resolve(source.settings, {**FINE, "API_URL": "http://127.0.0.1:8080/a?cursor=*"})
    preflight.check_settings([source], fine)
