"""Templates in source files: `{column}` for entity values, `${env.NAME:-default}` and `${secret.NAME}`
for settings, `${incremental.since}` for a list source's watermark (runner/watermarks.py). Parsed at
load, resolved once at run start, rendered per request.

Entity values are percent-encoded when rendered into a URL (nothing in a value can change scheme,
host or path structure); settings are inserted as written, because a setting such as a base URL is
meant to define them. There are no expressions, filters or defaults from thin air: a missing
setting is an error at run start naming the variable.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote_plus, urlsplit

import httpx

from runner import spec
from runner.errors import SettingError
from runner.expressions import JSON
from runner.redaction import Redactor

_TOKEN = re.compile(
    r"\$\{(?P<kind>[a-z]+)\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
    r"|\{(?P<column>[A-Za-z_][A-Za-z0-9_]*)\}"
)
_STRAY = re.compile(r"\$\{|[{}]")
SETTING_KINDS = ("env", "secret")
WATERMARK = ("incremental", "since")  # ${incremental.since}: the source's watermark (runner/watermarks.py)


def parse(text: str) -> spec.Template:
    """Split `text` into literal, column and setting segments; ValueError says what is wrong."""
    segments: list[spec.Segment] = []
    position = 0
    for match in _TOKEN.finditer(text):
        _literal(text[position : match.start()], segments)
        if match["column"]:
            segments.append(spec.Column(match["column"]))
        elif match["kind"] == WATERMARK[0]:
            if match["name"] != WATERMARK[1] or match["default"] is not None:
                raise ValueError(f"unknown value '{match[0]}' (the watermark is written ${{incremental.since}})")
            segments.append(spec.Setting(*WATERMARK))
        elif match["kind"] not in SETTING_KINDS:
            raise ValueError(f"unknown setting kind '${{{match['kind']}.…}}' (use ${{env.NAME}} or ${{secret.NAME}})")
        else:
            segments.append(spec.Setting(match["kind"], match["name"], match["default"]))
        position = match.end()
    _literal(text[position:], segments)
    return spec.Template(text, tuple(segments))


def _literal(text: str, segments: list[spec.Segment]) -> None:
    if stray := _STRAY.search(text):
        raise ValueError(
            f"unbalanced or malformed placeholder near {text[stray.start() :][:20]!r}"
            " (write {column}, ${env.NAME}, ${env.NAME:-default} or ${secret.NAME})"
        )
    if text:
        segments.append(spec.Literal(text))


@dataclass(frozen=True, slots=True)
class Settings:
    """Resolved setting values for a run, and the redactor that masks the secret ones. `values` holds
    what the environment set; a `${env.NAME:-default}` the environment leaves unset is its own use's
    default (`of`), never another use's: two sources (or a URL and a header) may give one variable
    different defaults (review revF F1: the last default read went to every use, and one source's
    requests, credentials included, went to the other's host). `secrets`: the secret values in use,
    secret defaults included (for the CI log masks)."""

    values: Mapping[tuple[str, str], str]
    redact: Redactor
    secrets: tuple[str, ...] = ()

    def get(self, setting: spec.Setting) -> str | None:
        """This use's value: the environment's, else its own default; None when it has neither."""
        value = self.values.get((setting.kind, setting.name))
        return (setting.default or None) if value is None else value

    def of(self, setting: spec.Setting) -> str:
        """`get`, for a use the run resolved (`resolve` refused a missing one): KeyError otherwise."""
        if (value := self.get(setting)) is None:
            raise KeyError((setting.kind, setting.name))
        return value


def resolve(
    settings: Iterable[spec.Setting], environ: Mapping[str, str], *, extra_secrets: Iterable[str] = ()
) -> Settings:
    """Look every setting up in `environ`. An empty value counts as unset. Raises SettingError
    naming every missing variable (never a value). `extra_secrets` (the DATABASE_URL password)
    are masked too."""
    values: dict[tuple[str, str], str] = {}
    missing: list[str] = []
    defaults: list[str] = []  # secret defaults in use: masked like the secrets the environment gives
    for setting in settings:
        if value := environ.get(setting.name):
            values[(setting.kind, setting.name)] = value
        elif setting.default:  # each use keeps its own default (Settings.of)
            defaults += [setting.default] if setting.kind == "secret" else []
        else:
            missing.append(f"{setting.name} (${{{setting.kind}.{setting.name}}})")
    if missing:
        raise SettingError(
            "missing setting"
            + ("s" if len(missing) > 1 else "")
            + ": "
            + ", ".join(sorted(set(missing)))
            + " — set the environment variable"
            + ("s" if len(missing) > 1 else "")
            + " before running"
        )
    for (kind, name), value in values.items():  # checked before the redactor percent-encodes them
        if not_utf8(value):
            raise SettingError(f"{'secret' if kind == 'secret' else 'setting'} {name} {not_utf8(value)}")
    secrets = [*(v for (kind, _), v in values.items() if kind == "secret"), *dict.fromkeys(defaults)]
    return Settings(values, Redactor([*secrets, *extra_secrets]), tuple(secrets))


DEFAULT_SPACES = "the default starts or ends with whitespace, which would be sent as it is: remove it"


def written(setting: spec.Setting) -> str:
    """How a setting with a default is named in a problem with the file: `${env.NAME:-…}` (never the
    default itself, which may be a secret's)."""
    return f"${{{setting.kind}.{setting.name}:-…}}"


def with_defaults(template: spec.Template) -> str:
    """` with the defaults written here (${env.X:-…})` when the template reads settings, else ``."""
    if not template.settings:
        return ""
    return " with the defaults written here (" + ", ".join(dict.fromkeys(map(written, template.settings))) + ")"


def not_utf8(value: str) -> str | None:
    """Python reads environment bytes that are not UTF-8 as lone surrogates, which nothing can encode."""
    if any("\udc80" <= c <= "\udcff" for c in value):
        return "is not valid UTF-8 text — set it again as UTF-8"
    return None


def render(template: spec.Template, entity: Mapping[str, JSON], settings: Settings, *, url: bool) -> str:
    """The template's text for one entity. With `url=True` entity values are percent-encoded."""
    out: list[str] = []
    for segment in template.segments:
        if isinstance(segment, spec.Literal):
            out.append(segment.text)
        elif isinstance(segment, spec.Column):
            out.append(encode(entity[segment.name]) if url else _text(entity[segment.name]))
        elif segment.kind == WATERMARK[0]:  # a value from the API's records: encoded like an entity value
            since = settings.values.get(WATERMARK, "")  # filled in by the engine; "" only in load-time checks
            out.append(encode(since) if url else since)
        else:
            out.append(settings.of(segment))
    return "".join(out)


def encode(value: JSON) -> str:
    """Percent-encode one entity value so it stays inside one URL path segment or query value."""
    if type(value) is int:  # digits and a sign: nothing to encode (bool is not an int here)
        return str(value)
    # only characters quote() keeps as they are: the text itself, without quote's per-character work
    text = value if type(value) is str and _UNRESERVED(value) else quote(_text(value), safe="")
    # "." and ".." are legal path segments that servers resolve; encode them so a value can never
    # climb out of the path the template fixed.
    return text.replace(".", "%2E") if set(text) <= {"."} else text


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch  # what quote(safe="") leaves as it is


def _text(value: JSON) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def url_problem(url: str) -> str | None:
    """What stops httpx from sending a request to `url`, in words; None when it can. Never quotes the
    URL, which may hold a secret."""
    if reason := uri_problem(url, ("http", "https")):
        return reason
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as error:  # its text quotes the URL: keep only the words before
        return f"httpx cannot parse it ({re.split(r'[,:]', str(error))[0].strip() or 'invalid URL'})"
    if parsed.userinfo:
        # review13b N3: sent as Basic credentials, unredacted (an env value), or with an Authorization
        # header a crash in the HTTP client; and `http://user@host` passes for the file's origin
        return "it has a user name or password (user@host): credentials go in auth: (or a header), never in the URL"
    return None


def query_problem(url: str, names: Iterable[str], paged: Mapping[str, str] | None = None) -> str | None:
    """What the request URL's own query or fragment would get wrong, in words; None when fine.
    `names`: request.query's parameter names, which follow the URL's own query (runner/plans.py).
    A name in both would be sent twice (`?appid=99&appid=7`), and an API reading the first value would
    answer every entity with entity 99's data (review13c R2). A #fragment is never sent (R4).
    `paged`: the parameters the pagination sets (name -> its setting), which would replace the URL's."""
    parts = urlsplit(url)
    if "#" in url:
        return "it has a #fragment, which is never sent to the server: remove it"
    own = query_names(parts.query)
    if both := [name for name in names if name in own]:
        return (
            f"the query parameter {both[0]!r} is both in the URL's own query and in request.query, so it"
            " would be sent twice: write it in one place"
        )
    if replaced := [name for name in paged or {} if name in own]:
        return paged_problem(replaced[0], (paged or {})[replaced[0]])
    return None


def query_names(query: str) -> set[str]:
    """The parameter names of a URL's query text (`a=1&b` -> {a, b}), decoded."""
    return {unquote_plus(pair.partition("=")[0]) for pair in query.split("&") if pair}


def repeated_cursor(query: str, name: str | None) -> str | None:
    """A cursor pagination's `param` written more than once in the URL's own query (`?cursor=a&cursor=b`):
    the first request would send every value, and which one the API reads as the first cursor is its
    own guess (review revL F2). None when it is there at most once."""
    if name is None:
        return None
    count = sum(1 for pair in query.split("&") if pair and unquote_plus(pair.partition("=")[0]) == name)
    if count < 2:
        return None
    return (
        f"the query parameter {name!r} is pagination.param, whose value in the URL is the first cursor, but it"
        f" is there {count} times: the first request would send them all; write it once"
    )


def paged_problem(name: str, setting: str) -> str:
    """A parameter of the URL's own query that the pagination sets too (review revJ F7)."""
    return (
        f"the query parameter {name!r} is in the URL's own query, but {setting} sets it on the listing's"
        " requests, replacing the URL's value: remove it from the URL"
    )


def uri_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    """Scheme, host, IPv6 brackets and port of a URL, in words that never quote it; None when fine."""
    if (char := next((c for c in url if ord(c) < 0x20 or ord(c) == 0x7F), None)) is not None:
        return f"it contains a control character (U+{ord(char):04X})"
    try:
        parts = urlsplit(url)
    except ValueError as error:  # its text may quote the host: not passed on
        if "Invalid IPv6 URL" in str(error):
            return "the host has an unbalanced '[' or ']' (an IPv6 host is written like http://[::1]:8080/)"
        return "its host is not a valid name or IP address"
    if parts.scheme.lower() not in schemes:
        return "it must start with " + " or ".join(f"{scheme}://" for scheme in schemes)
    if "\\" in parts.netloc:  # parsers disagree on it: httpx sent `http://a:1\@b` to host b
        return "its host part contains a backslash (percent-encode it as %5C, or use / for a path)"
    if not parts.hostname and parts.scheme.lower() != "unix":
        return f"it has no host (write {parts.scheme.lower()}://host/…)"
    host = parts.netloc.rpartition("@")[2]
    if host.startswith("[") and (reason := _ipv6_problem(host[1:].partition("]")[0])):
        return reason
    if parts.hostname and not host.startswith("[") and (reason := _host_problem(parts.hostname)):
        return reason
    port = host.rpartition("]")[2].removeprefix(":") if host.startswith("[") else host.partition(":")[2]
    if port and not valid_port(port):
        return f"it has {port_words(port)}"
    return None


# A host name's labels, as sent (ASCII: an international name is checked in its IDNA form, as httpx
# encodes it): letters, digits, '-' and '_' (service names), separated by single dots; a trailing dot
# is the root. Bracketed IPv6 hosts urlsplit checks.
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")
# Review revK F5: httpx takes an ASCII host as it is, but the resolver does not: a label over 63
# characters raised UnicodeError out of getaddrinfo (the idna codec), one starting or ending with '-'
# (RFC 1123) or a name over 253 characters (RFC 1035) is no name a resolver answers for.
_LABEL, _NAME = 63, 253
# Review revM L4: a last label of decimal digits or 0x-hex makes the host an IPv4 address to URL
# parsers and resolvers, which read `0x7f000001`, `0x7f.1`, `127.1` and `0177.0.0.1` (octal) all as
# 127.0.0.1; only the canonical dotted-decimal form is taken, so what a check reads is what is dialled.
_NUMBER = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")


def _host_problem(host: str) -> str | None:
    """Whether a host can be connected to, in words that never quote it (review revJ F5: httpx
    percent-encodes `exa mple.com` into the host and every entity failed to connect to
    `exa%20mple.com`; a run that cannot reach its host is a configuration error, not N failures)."""
    if " " in host:
        return "its host contains a space: a host is a name like api.example.com or an IP address"
    if not host.isascii() or "xn--" in host.lower():
        encoded = _idna(host)
        if encoded is None:
            return "its host is not a valid name or IP address (IDNA, the encoding of international names, refuses it)"
        host = encoded
    if not _HOST_NAME.fullmatch(host):
        return (
            "its host is not a valid name or IP address (a name has letters, digits, '-' and '_' between single dots)"
        )
    labels = host.rstrip(".").split(".")
    if (longest := max(map(len, labels))) > _LABEL:
        return f"its host has a label of {longest} characters (DNS allows at most {_LABEL} between dots)"
    if (length := len(host.rstrip("."))) > _NAME:
        return f"its host name is {length} characters long (DNS allows at most {_NAME})"
    if any(label.startswith("-") or label.endswith("-") for label in labels):
        return (
            "its host has a label that starts or ends with '-' (RFC 1123: a label starts and ends with a letter"
            " or digit)"
        )
    if _NUMBER.fullmatch(labels[-1]):  # ends in a number: an IPv4 address (WHATWG URL, "ends in a number")
        try:
            if host.endswith("."):  # httpx refuses `127.0.0.1.` as no canonical IPv4 (review revO L1)
                raise ValueError(host)
            ipaddress.IPv4Address(host)  # dotted decimal only: no leading zeros, no hex, 4 parts
        except ValueError:
            return (
                "its host is not a valid IPv4 address (four decimal numbers from 0 to 255 without leading zeros,"
                " like 127.0.0.1)"
            )
    return None


def _ipv6_problem(address: str) -> str | None:
    """A bracketed host: an IPv6 address without a zone id. Review revK F5: `[fe80::1%25eth0]` passed
    (urlsplit reads `%25eth0` as a scope) but no request can name an interface: a link-local address
    with its zone failed every entity at connect time."""
    if "%" in address:
        return (
            "its IPv6 host has a zone id (%…, an interface): requests cannot name one; use a global address"
            " or a host name"
        )
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return "its host is not a valid IPv6 address (written in brackets, like http://[2001:db8::1]:8080/)"
    return None


def _idna(host: str) -> str | None:
    """The host as httpx sends it (IDNA A-labels), or None where httpx refuses it: encoding (`²`) or
    reading back an `xn--` label (`xn--zz`), which raised out of a run as a traceback (review revK
    F2, F3: `सरकार.भारत` was refused by a `\\w` pattern that lacks combining marks)."""
    try:
        url = httpx.URL(f"http://{host}/")
        url.host  # noqa: B018 - decodes the A-labels, as every request does
        return url.raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError):  # idna's errors are ValueErrors
        return None


def valid_port(port: str) -> bool:
    return re.fullmatch(r"[0-9]{1,5}", port) is not None and 1 <= int(port) <= 65535


def port_words(port: str) -> str:
    """`port 99999 out of range (1–65535)`; a long or odd port is not quoted (it may be a secret's part)."""
    if re.fullmatch(r"[0-9]{1,6}", port):
        return f"port {int(port)} out of range (1–65535)"
    return "a port that is not a number from 1 to 65535"


def with_param(url: httpx.URL, name: str, value: str) -> httpx.URL:
    """`url` with `name` set to `value` (encoded as httpx encodes a parameter), in its place or at the
    end; the rest of the query stays as written. httpx's copy_set_param re-encodes the whole query: a
    `?cursor=*` written in the URL went out as `cursor=%2A` once a size_param was added (review revL F3),
    the URL's own `?ids=a,b` as `ids=a%2Cb` from page 2 on, and once an API key went in the query."""
    pair = str(httpx.QueryParams({name: value})).encode("ascii")
    pairs: list[bytes] = []
    placed = False
    for raw in query_pairs(url.query):  # empty pairs (`a=1&&b`) stay: the text is left as it was
        if pair_name(raw) == name:
            pairs += [] if placed else [pair]
            placed = True
        else:
            pairs.append(raw)
    return url.copy_with(query=b"&".join([*pairs, *([] if placed else [pair])]))


def query_pairs(query: bytes) -> list[bytes]:
    """A query's `&`-separated pieces as written, empty ones included; none for an empty query."""
    return query.split(b"&") if query else []


def pair_name(pair: bytes) -> str:
    """A query piece's parameter name, decoded as a server reads it."""
    return unquote_plus(pair.partition(b"=")[0].decode("ascii"))
