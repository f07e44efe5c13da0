"""templating: `{column}` and `${env.X}` / `${secret.X}` templates, percent-encoding, settings."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

from runner import spec, templating
from runner.errors import SettingError


def _render(text: str, value: object, environ: dict[str, str] | None = None) -> str:
    template = templating.parse(text)
    settings = templating.resolve(template.settings, environ or {})
    return templating.render(template, {"v": value}, settings, url=True)


def test_parse_segments() -> None:
    """Literals, columns and settings (with a default) are told apart."""
    template = templating.parse("${env.BASE:-http://x}/apps/{appid}?k=${secret.KEY}")
    assert template.segments == (
        spec.Setting("env", "BASE", "http://x"),
        spec.Literal("/apps/"),
        spec.Column("appid"),
        spec.Literal("?k="),
        spec.Setting("secret", "KEY"),
    )
    assert template.columns == {"appid"}
    assert [s.secret for s in template.settings] == [False, True]


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("../admin", "..%2Fadmin"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("@evil.example", "%40evil.example"),
        ("?x=1", "%3Fx%3D1"),
        ("a#b", "a%23b"),
        ("%2F", "%252F"),
        ("é ü", "%C3%A9%20%C3%BC"),
        (730, "730"),
        (True, "true"),
        (None, ""),
    ],
)
def test_entity_values_are_percent_encoded(value: object, encoded: str) -> None:
    """An entity value stays inside its path segment: nothing in it changes host, path or query."""
    assert _render("https://api.example/apps/{v}", value) == f"https://api.example/apps/{encoded}"


@pytest.mark.parametrize(
    "value",
    ["", "abc-DEF_09.~", "...", "a.b", "a b", "a/b", "\u0661\u0662", "caf\u00e9", "x\n", "a~b%", "A" * 300, "-1"],
)
def test_text_quote_keeps_is_taken_as_it_is(value: str) -> None:
    """The shortcut for text made only of what quote() keeps gives what quote() gives (Arabic-Indic
    digits are not ASCII digits; dots alone are still encoded)."""
    expected = quote(value, safe="")
    assert templating.encode(value) == (expected.replace(".", "%2E") if set(expected) <= {"."} else expected)


def test_settings_are_inserted_as_written() -> None:
    """A setting may define scheme and host, so it is not encoded."""
    assert _render("${env.BASE}/x/{v}", 1, {"BASE": "https://h.example:8443/api"}) == "https://h.example:8443/api/x/1"


def test_setting_default_applies_when_unset_or_empty() -> None:
    """`${env.X:-d}` uses d when X is unset or empty."""
    assert _render("${env.BASE:-http://d}/{v}", 1) == "http://d/1"
    assert _render("${env.BASE:-http://d}/{v}", 1, {"BASE": ""}) == "http://d/1"


def test_missing_settings_are_named_together() -> None:
    """Every unset setting is named, never a value."""
    template = templating.parse("${env.A}/${secret.B}")
    with pytest.raises(SettingError) as caught:
        templating.resolve(template.settings, {})
    assert str(caught.value) == (
        "missing settings: A (${env.A}), B (${secret.B}) — set the environment variables before running"
    )


def test_secrets_are_redacted() -> None:
    """Resolved secrets feed the run's redactor."""
    settings = templating.resolve(templating.parse("${secret.TOKEN}").settings, {"TOKEN": "s3cr3t"})
    assert settings.redact("Bearer s3cr3t") == "Bearer ***"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{appid", "unbalanced or malformed placeholder near '{appid'"),
        ("x}", "unbalanced or malformed placeholder near '}'"),
        ("${env.X", "unbalanced or malformed placeholder near '${env.X'"),
        ("${vault.X}", "unknown setting kind '${vault.…}' (use ${env.NAME} or ${secret.NAME})"),
        ("{a-b}", "unbalanced or malformed placeholder near '{a-b}'"),
    ],
)
def test_bad_templates(text: str, message: str) -> None:
    """Malformed placeholders are a ValueError saying what to write instead."""
    with pytest.raises(ValueError, match="^" + __import__("re").escape(message)):
        templating.parse(text)


def test_a_request_url_with_a_user_name_or_password_is_refused() -> None:
    """review13b N3: credentials go in auth:, never in the URL (with an Authorization header the HTTP
    client crashed; without one, an env value's password went out as Basic credentials)."""
    for url in ("http://user@h.example/a", "http://u:pw@h.example:8080/a", "https://:pw@h.example/"):
        assert templating.url_problem(url) == (
            "it has a user name or password (user@host): credentials go in auth: (or a header), never in the URL"
        )
    assert templating.url_problem("http://h.example/a?x=user@host#@y") is None  # an @ after the host is no userinfo


@pytest.mark.parametrize(
    "host",
    [
        *("exa mple.com", "exa%20mple.com", "a..b", "a!b", "a,b", "1.2.3.4.5", "10.0.0.256", "3000000000"),
        *("xn--zz", "XN--ZZ.invalid", "xn--a.com", "\u00b2", "\u0661\u0662\u0667.0.0.1"),  # revK F3, F6: idna refuses
        # revM L4: a last label that is a number makes an IPv4 address, written canonically or refused
        *("0x7f000001", "0x7f.1", "0X7F.0.0.1", "127.1", "0177.0.0.1", "127.0.0.01", "2130706433", "api.1", "api.0x"),
    ],
)
def test_a_host_that_cannot_be_reached_is_refused(host: str) -> None:
    """review revJ F5: `http://exa mple.com` passed; httpx sent every request to `exa%20mple.com`, and
    each entity failed to connect. A host is a name or an IP address, and the reason never quotes it."""
    reason = templating.url_problem(f"http://{host}:8080/e/1")
    assert reason is not None
    assert reason.startswith("its host ")
    assert host not in reason


@pytest.mark.parametrize(
    "host",
    [
        *("localhost", "api.example.com", "api.example.com.", "db_1", "bücher.example", "127.0.0.1", "[::1]"),
        # revK F2: scripts with combining marks, and a dotted capital I that lower-cases to two characters
        *("सरकार.भारत", "இந்தியா.example", "ยินดี.ไทย", "İstanbul.example", "xn--bcher-kva.example"),
    ],
)
def test_host_names_and_ip_addresses_pass(host: str) -> None:
    """Names (any script, checked in their IDNA form; `_` for service names, a trailing root dot), IPv4
    and bracketed IPv6 hosts."""
    assert templating.url_problem(f"http://{host}:8080/e/1") is None


# review revK F5: host -> whether syncrun takes it. Every host it takes, httpx parses and the resolver's
# idna codec (what getaddrinfo encodes a name with) encodes; the ones it refuses that httpx takes are
# refused by RFC 1123/1035 (a '-' at a label's end, a label over 63, a name over 253) or name an
# interface no request can (an IPv6 zone id).
_HOSTS = {
    "api.example.com": True,
    "API.Example.COM": True,
    "api.example.com.": True,
    "_srv._tcp.example.com": True,
    "a-b--c.example": True,
    "a" * 63 + ".example": True,
    ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61]): True,  # 253 characters
    "bücher.example": True,
    "xn--bcher-kva.example": True,
    "127.0.0.1": True,
    "127.0.0.1.": False,  # revO L1: validate took it; every request failed (not a canonical IPv4)
    "0x.example": True,  # a hex-looking label that is not the last one: a name
    "api.0xg": True,
    "0x7f000001": False,  # revM L4: httpx and the resolver take these, as 127.0.0.1
    "0x7f.1": False,
    "127.1": False,
    "0177.0.0.1": False,
    "[::1]": True,
    "[2001:db8::1]": True,
    "[::ffff:127.0.0.1]": True,
    "a" * 64 + ".example": False,
    "ü" + "a" * 62 + ".example": False,  # 64 and more once IDNA-encoded
    ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 63]): False,  # 255 characters
    "-api.example.com": False,
    "api-.example.com": False,
    "api.-x.example": False,
    "münchen-.example": False,
    "[fe80::1%25eth0]": False,
    "[fe80::1%eth0]": False,
    "[v1.fe80::a+en1]": False,
    "[127.0.0.1]": False,
}


def _httpx_takes(host: str) -> bool:
    try:
        raw = httpx.URL(f"http://{host}:8080/").raw_host
    except (httpx.InvalidURL, ValueError):
        return False
    if host.startswith("["):
        return True
    try:
        raw.decode("ascii").encode("idna")  # as getaddrinfo encodes a name (a UnicodeError for a 64-label)
    except UnicodeError:
        return False
    return True


@pytest.mark.parametrize(("host", "taken"), sorted(_HOSTS.items()))
def test_hosts_are_checked_as_httpx_and_the_resolver_read_them(host: str, taken: bool) -> None:
    """review revK F5: labels over 63 characters, IPv6 zone ids and labels starting or ending with '-'
    passed the host check. They are refused, never quoted; what httpx and the resolver take still passes."""
    reason = templating.url_problem(f"http://{host}:8080/e/1")
    assert (reason is None) == taken, reason
    if taken:
        assert _httpx_takes(host)
    else:
        assert reason is not None
        assert reason.startswith("its ")
        assert host not in reason


def test_each_use_of_a_variable_keeps_its_own_default() -> None:
    """Two templates give one unset variable different defaults: each renders with its own (review
    revF F1: the last default read went to every use, and one source's requests went to the other's
    host). Set, the environment's value is every use's."""
    one = templating.parse("http://127.0.0.1:${env.PORT:-27621}/one")
    two = templating.parse("http://127.0.0.1:${env.PORT:-27622}/two")
    uses = [*one.settings, *two.settings]
    unset = templating.resolve(uses, {})
    assert templating.render(one, {}, unset, url=True) == "http://127.0.0.1:27621/one"
    assert templating.render(two, {}, unset, url=True) == "http://127.0.0.1:27622/two"
    given = templating.resolve(uses, {"PORT": "9"})
    assert templating.render(one, {}, given, url=True) == "http://127.0.0.1:9/one"
    assert templating.render(two, {}, given, url=True) == "http://127.0.0.1:9/two"


def test_a_secret_default_in_use_is_masked() -> None:
    """A `${secret.NAME:-default}` the environment leaves unset sends its default: masked like any secret."""
    template = templating.parse("Bearer ${secret.TOKEN:-fallback-Qw3rTy9Zx}")
    settings = templating.resolve(template.settings, {})
    assert templating.render(template, {}, settings, url=False) == "Bearer fallback-Qw3rTy9Zx"
    assert "fallback-Qw3rTy9Zx" in settings.secrets
    assert "Qw3rTy9Zx" not in settings.redact("the API said fallback-Qw3rTy9Zx is wrong")


def test_a_variable_used_with_and_without_a_default_is_missing_when_unset() -> None:
    with_default = templating.parse("${env.HOST:-example.test}")
    without = templating.parse("${env.HOST}")
    with pytest.raises(SettingError, match="HOST"):
        templating.resolve([*with_default.settings, *without.settings], {})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # httpx's copy_set_param gave `ids=a%2Cb&c=%2A&k=…`: an API reading `,` or `*` literally, or a
        # signature over the query text, saw another query (review revM M2, fix9d's note on api keys)
        ("http://h/p?ids=a,b&&c=*", "http://h/p?ids=a,b&&c=*&k=v+w%2F%2A"),
        ("http://h/p?k=old&x=1", "http://h/p?k=v+w%2F%2A&x=1"),
        ("http://h/p", "http://h/p?k=v+w%2F%2A"),
        ("http://h/p?%6B=old&k=dup&y", "http://h/p?k=v+w%2F%2A&y"),
    ],
)
def test_with_param_sets_one_parameter_and_keeps_the_rest_of_the_query_as_written(url: str, expected: str) -> None:
    assert str(templating.with_param(httpx.URL(url), "k", "v w/*")) == expected
