"""What a run reads from the environment, checked at run start, before any job row or request.

Every `${env.X}`/`${secret.X}` value, each source's request URL and headers with those values filled
in, DATABASE_URL and SYNCRUN_REDIS_URL. A bad value is a SettingError (exit 2) that names the
variable, says what is wrong and how to fix it, and never quotes the value (it may be a secret).

The rules, and why each would otherwise fail every request of the run:
- no control characters (CR/LF, tab, NUL, DEL, C1) and no leading or trailing whitespace in any value:
  a trailing newline is the classic mistake of a secret pasted into CI.
- a setting sent in a header is ASCII: httpx encodes header values as ASCII (RFC 9110 treats other
  bytes as obsolete), so a pasted typographic quote or non-breaking space cannot be sent.
- the request URL, rendered with a placeholder for each entity value, is http(s) with a host, a port
  in 1–65535 and balanced IPv6 brackets, and httpx can parse it.
- DATABASE_URL is a connection string psycopg can read, with ports in 1–65535; SYNCRUN_REDIS_URL (when
  set) is a redis://, rediss:// or unix:// URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from runner import spec, templating
from runner.errors import SettingError

_REDIS_SCHEMES = ("redis", "rediss", "unix")
_PLACEHOLDER = "0"  # stands in for every entity value: the URL's structure must not depend on them


def check_environment(environ: Mapping[str, str]) -> None:
    """DATABASE_URL and SYNCRUN_REDIS_URL, when set; SettingError listing every problem."""
    problems = [
        problem
        for problem in (
            _dsn_problem(environ.get("DATABASE_URL", "")),
            _redis_problem(environ.get("SYNCRUN_REDIS_URL", "")),
        )
        if problem
    ]
    _raise(problems)


def check_settings(sources: Sequence[spec.Source], settings: templating.Settings) -> None:
    """Each resolved setting value, then each source's request URL and headers with the values filled
    in; SettingError listing every problem."""
    used = {(s.kind, s.name, s.default): s for source in sources for s in source.settings}
    # A default in use is the file's text, checked when the file was read (runner/config/request.py),
    # not a CI value to blame here (review revH F3).
    given = {key: s for key, s in used.items() if (s.kind, s.name) in settings.values}
    bad = {key: problem for key, s in given.items() if (problem := value_problem(_label(s), settings.of(s)))}
    problems = list(dict.fromkeys(bad.values()))  # ${env.X} and ${secret.X} read one variable
    for source in sources:
        if not any((s.kind, s.name, s.default) in bad for s in source.settings):
            problems += _request_problems(source, settings)
    _raise(problems)


def value_problem(label: str, value: str, *, secret: bool | None = None) -> str | None:
    """What makes one setting value unusable anywhere, in words that never quote it."""
    kind = "secrets" if (label.startswith("secret ") if secret is None else secret) else "variables"
    if value.endswith(("\n", "\r")):
        return f"{label} ends with a line break — a common copy-paste mistake in CI {kind}; remove it"
    if reason := templating.not_utf8(value):
        return f"{label} {reason}"
    if (char := _control(value)) is not None:
        return f"{label} contains a control character ({_code(char)}) — a setting is one line of text; remove it"
    if value != value.strip():
        return f"{label} starts or ends with whitespace — a common copy-paste mistake in CI {kind}; remove it"
    return None


def _request_problems(source: spec.Source, settings: templating.Settings) -> list[str]:
    problems = []
    request = source.request
    if request.url.settings:
        placeholders = dict.fromkeys(request.url.columns, _PLACEHOLDER)
        rendered = templating.render(request.url, placeholders, settings, url=True)
        paged = source.pagination.query_names()
        cursor = source.pagination.param if source.pagination.type is spec.PaginationType.CURSOR else None
        if (
            reason := templating.url_problem(rendered)
            or templating.query_problem(rendered, dict(request.query), paged)
            or templating.repeated_cursor(urlsplit(rendered).query, cursor)
        ):
            problems.append(_url_problem(source, ("request", "url"), request.url, settings, reason))
    token_url = source.auth.token_url if source.auth is not None else None
    if (
        token_url
        and token_url.settings
        and (reason := templating.url_problem(templating.render(token_url, {}, settings, url=True)))
    ):
        problems.append(_url_problem(source, ("auth", "token_url"), token_url, settings, reason))
    for header, template in [*request.headers, *_auth_headers(source.auth)]:
        for setting in template.settings:
            # the watermark is filled in later
            value = "" if setting.kind == templating.WATERMARK[0] else settings.of(setting)
            if (char := next((c for c in value if not c.isascii()), None)) is not None:
                problems.append(
                    f"{_label(setting)} is sent in header {header} of source '{source.name}' but contains"
                    f" a non-ASCII character ({_code(char)}): HTTP header values must be ASCII — retype it"
                    " (a pasted typographic quote or non-breaking space?), or encode it as the API expects"
                )
    return problems


def _url_problem(
    source: spec.Source, path: tuple[str, str], url: spec.Template, settings: templating.Settings, reason: str
) -> str:
    """The settings that make a URL unusable, in words. When one of them is its default, the URL is
    partly the file's text: the problem names the file and line (`file:line: request.url: …`), the
    default as `${env.X:-…}` (review revH F3), and the values from the environment as ever."""
    names = ", ".join(
        dict.fromkeys(
            _label(s) if (s.kind, s.name) in settings.values else f"{templating.written(s)} (its default)"
            for s in url.settings
        )
    )
    verb = "makes" if len(dict.fromkeys(url.settings)) == 1 else "make"
    what = "request URL" if path[0] == "request" else "token URL"
    message = f"{names} {verb} the {what} of source '{source.name}' unusable: {reason}"
    if all((s.kind, s.name) in settings.values for s in url.settings):
        return message
    return f"{_written_at(source.path, path)}: {message}"


def _written_at(file: Path, path: tuple[str, str]) -> str:
    """`file:line: request.url` for a problem with what the file says (read again: an error path only)."""
    from runner import sourcefile  # not needed by a run that passes

    try:
        doc, _ = sourcefile.read(file.read_bytes(), str(file))
    except OSError:
        doc = None
    return f"{file}:{doc.line(path) if doc is not None else 1}: {sourcefile.dotted(path)}"


def _auth_headers(auth: spec.Auth | None) -> list[tuple[str, spec.Template]]:
    """The auth values sent as header text as they are (basic credentials go base64-encoded)."""
    if auth is None:
        return []
    if auth.type is spec.AuthType.BEARER and auth.token is not None:
        return [("Authorization", auth.token)]
    if auth.type is spec.AuthType.API_KEY and auth.in_ is spec.KeyIn.HEADER and auth.value and auth.name:
        return [(auth.name, auth.value)]
    return []


def _dsn_problem(dsn: str) -> str | None:
    if not dsn:
        return None  # unset or empty: the embedded PostgreSQL
    if problem := value_problem("DATABASE_URL", dsn, secret=True):
        return problem
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as error:
        return (
            f"DATABASE_URL is not a connection string PostgreSQL can read ({_unquoted(error)}) — write"
            " postgresql://user:password@host:5432/dbname, percent-encoding special characters in the password"
        )
    for port in str(info.get("port") or "").split(","):
        if port and not templating.valid_port(port):
            return f"DATABASE_URL has {templating.port_words(port)}"
    return None


def _redis_problem(url: str) -> str | None:
    if not url:
        return None
    if problem := value_problem("SYNCRUN_REDIS_URL", url, secret=True):
        return problem
    if reason := templating.uri_problem(url, _REDIS_SCHEMES):
        return f"SYNCRUN_REDIS_URL is not a usable Redis URL: {reason} (e.g. redis://host:6379/0)"
    return None


def _label(setting: spec.Setting) -> str:
    return f"{'secret' if setting.secret else 'setting'} {setting.name}"


def _control(text: str) -> str | None:
    return next((c for c in text if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F), None)


def _code(char: str) -> str:
    return f"U+{ord(char):04X}"


def _unquoted(error: Exception) -> str:
    """psycopg's reason without what it quotes, which can hold the password: everything from the first
    quote to the last goes (a password can hold quotes itself, so quoted pieces cannot be told apart),
    except the one-character pieces psycopg names as syntax (`missing matching "]"`)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    first = re.sub(r'"([\]\[@:/])"', "\x00\\1\x00", first)
    return re.sub(r'".*"', '"…"', first).replace("\x00", '"').rstrip(".:")


def _raise(problems: list[str]) -> None:
    if len(problems) == 1:
        raise SettingError(problems[0])
    if problems:
        raise SettingError(f"{len(problems)} setting problems:\n  " + "\n  ".join(problems))
