"""What `syncrun new` writes about authentication and incremental syncs (runner/scaffold.py writes the rest).

`--header 'Name: value'` (curl's form, repeatable) is what the user sends to the API today. The values
are used to fetch the sample, and never written: `Authorization: Bearer …` becomes an `auth:` bearer
block, `Authorization: Basic …` a basic one, a header named like a key (`X-Api-Key`, `X-Auth-Token`)
an api_key one, each reading its secret from `${secret.SOURCE_…}`; a harmless header (`Accept`,
`User-Agent`) is written as it is, and any other one as a `${secret.*}` too, since only its name says
what it holds. A query parameter of `--url` named like a credential (`api_key`, `token`, `sig`, …) is
taken out of the URL: an api_key block `in: query` (when no other auth block is written) or a
`request.query` entry, each reading a `${secret.*}`. Whatever the sample echoes of these values (an
echo endpoint, a `/me` answer holding the key) is masked before anything is learnt from it
(`redactor`), so no piece of a value given on the command line reaches the file or an output. `--auth
KIND` writes a starter block of that kind with placeholders. A list endpoint
whose sample records carry an updated_at-like timestamp gets a commented `incremental:` starter.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from runner.errors import UsageError
from runner.redaction import Redactor

KINDS = ("bearer", "api_key", "basic", "oauth2_client_credentials", "oauth2_refresh_token")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_PLAIN_HEADERS = frozenset(
    {"accept", "accept-language", "content-type", "user-agent", "cache-control", "x-api-version", "api-version"}
)
_KEY_HEADER = re.compile(r"(^|-)(api-?key|apikey|key|token|auth|auth-token|access-token|secret)$", re.IGNORECASE)
_UPDATED = re.compile(
    r"^(updated|modified|changed|last_?modified|last_?updated|date_?modified)(_?at|_?on|_?time)?$", re.I
)
# Query parameters that carry a credential: api_key, api-key, apikey, key, access_token, token, secret,
# client_secret, password, passwd, pwd, signature, sig, auth, … (any case, with a prefix or suffix).
_KEY_PARAM = re.compile(
    r"(^|[-_.])(api[-_]?key|apikey|key|(access|auth|id|refresh)?[-_]?token|secret|password|passwd|pwd|pass"
    r"|signature|sig|auth|credentials?|session|sid)$",
    re.IGNORECASE,
)
_PLAIN_VALUE = re.compile(r"^[\x20-\x7a|~]+$")  # printable ASCII without { or }: a template reads it as it is
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)$")


@dataclass
class Starter:
    """The request headers and the `auth:` block a new source gets, and the secrets the user must set."""

    headers: list[tuple[str, str]] = field(default_factory=list)  # (name, YAML text of the value)
    query: list[tuple[str, str]] = field(default_factory=list)  # (name, YAML text): the URL's credentials
    auth: list[str] = field(default_factory=list)  # lines of the auth: block (with its comment)
    secrets: list[str] = field(default_factory=list)  # names of the ${secret.*} it reads


def parse_headers(given: list[str]) -> list[tuple[str, str]]:
    """`Name: value` pairs as curl takes them; UsageError for one that is not a header. A message never
    quotes a value (nor what may be one: a header without a colon may be a pasted token)."""
    pairs = []
    for number, text in enumerate(given, 1):
        name, colon, value = text.partition(":")
        shown = f"--header {name.strip()!r}" if colon and _HEADER_NAME.match(name.strip()) else f"--header #{number}"
        if not colon or not _HEADER_NAME.match(name.strip()) or not value.strip() or "\n" in value or "\r" in value:
            raise UsageError(f"{shown}: write it as curl does, 'Name: value' on one line (its value is not shown)")
        if not value.strip().isascii() or any(ord(char) < 32 or ord(char) == 127 for char in value.strip()):
            raise UsageError(
                f"{shown}: its value contains a non-ASCII or control character: HTTP header values must be"
                " ASCII — retype it (its value is not shown)"
            )
        pairs.append((name.strip(), value.strip()))
    return pairs


def credentials(url: str) -> tuple[str, list[tuple[str, str]]]:
    """`url` without its query parameters named like a credential, and those (name, value) pairs. A URL
    urllib cannot split (`http://[::1/x`) is refused here, before anything reads it."""
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise UsageError(f"--url is not a URL syntax can read ({error})") from None
    if not parts.query or "${" in parts.query:
        return url, []
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    found = [(name, value) for name, value in pairs if _KEY_PARAM.search(name) and value]
    if not found:
        return url, []
    kept = [(name, value) for name, value in pairs if (name, value) not in found]
    return urlunsplit(parts._replace(query=urlencode(kept, safe="{}/,:", quote_via=quote))), found


def redactor(headers: list[tuple[str, str]], query: list[tuple[str, str]]) -> Redactor:
    """Masks every value given on the command line that the file does not hold as it is (header values,
    the credential part after an Authorization scheme, a Basic password, the URL's credentials) in
    what the sample says, and in the file and messages as a last net. A harmless header (`Accept:
    application/json`), written as it is, is left alone."""
    values = [value for _, value in query]
    for name, value in headers:
        scheme, _, rest = value.partition(" ")
        if name.lower() != "authorization" or not rest.strip():
            values += [] if _plain(name, value) else [value]
            continue
        values.append(rest.strip())  # the scheme is no secret ("Bearer …" is written in a comment)
        if scheme.lower() == "basic":
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                values += base64.b64decode(rest.strip(), validate=True).decode().split(":", 1)
    return Redactor(values)


def starter(
    source: str, headers: list[tuple[str, str]], kind: str | None, query: Sequence[tuple[str, str]] = ()
) -> Starter:
    """The headers and auth block for `source`: inferred from `headers` (and `query`, the URL's
    credentials), or `kind`'s starter."""
    prefix = re.sub(r"[^A-Z0-9]+", "_", source.upper()).strip("_")
    out = Starter()
    for name, value in headers:
        lower = name.lower()
        scheme = value.split(" ", 1)[0].lower()
        if lower == "authorization" and scheme in ("bearer", "basic") and not out.auth and kind is None:
            kind = scheme
            out.auth = _block(scheme, prefix, out.secrets, f"inferred from your --header {name}: {scheme.title()} …")
        elif lower == "authorization" and (kind is not None or out.auth):
            continue  # the auth: block sets it (the value only fetched the sample)
        elif lower != "authorization" and _KEY_HEADER.search(lower) and not out.auth and kind is None:
            kind = "api_key"
            out.auth = _block("api_key", prefix, out.secrets, f"inferred from your --header {name}", name=name)
        elif _plain(name, value):
            out.headers.append((name, json.dumps(value)))
        else:  # only its name says what it holds: kept out of the file
            out.headers.append((name, _secret(f"{prefix}_{_env(name)}", out.secrets)))
    for name, _ in query:
        if not out.auth and kind is None:
            kind = "api_key"
            why = f"inferred from the parameter {name} of your --url"
            out.auth = _block("api_key", prefix, out.secrets, why, name=name, where="query")
        else:
            out.query.append((name, _secret(f"{prefix}_{_env(name)}", out.secrets)))
    if kind is not None and not out.auth:
        if kind not in KINDS:
            raise UsageError(f"--auth {kind!r}: one of {', '.join(KINDS)}")
        out.auth = _block(kind, prefix, out.secrets, "a starter: set the secrets it reads, check the rest")
    return out


def _block(
    kind: str, prefix: str, secrets: list[str], why: str, name: str = "X-Api-Key", where: str = "header"
) -> list[str]:
    lines = [f"auth:                               # {why}; see docs/auth.md", f"  type: {kind}"]
    if kind == "bearer":
        lines.append(f"  token: {_secret(f'{prefix}_TOKEN', secrets)}")
    elif kind == "api_key":
        lines += [
            f"  name: {json.dumps(name)}",
            f"  in: {where:<30}# or {'query' if where == 'header' else 'header'}",
            f"  value: {_secret(f'{prefix}_API_KEY', secrets)}",
        ]
    elif kind == "basic":
        lines += [f"  username: ${{env.{prefix}_USER}}", f"  password: {_secret(f'{prefix}_PASSWORD', secrets)}"]
    else:
        lines += [
            "  token_url: https://auth.example.com/oauth/token   # TODO: the API's token endpoint",
            f"  client_id: ${{env.{prefix}_CLIENT_ID}}",
        ]
        if kind == "oauth2_client_credentials":
            lines.append(f"  client_secret: {_secret(f'{prefix}_CLIENT_SECRET', secrets)}")
        else:
            lines.append(f"  refresh_token: {_secret(f'{prefix}_REFRESH_TOKEN', secrets)}")
        lines += [
            "  # client_auth: client_secret_basic   # if the endpoint wants the client in an Authorization header",
            "  # scopes: [read]",
        ]
    return lines


def incremental(records: list[Any] | dict[str, Any]) -> str:
    """A commented `incremental:` starter for a list endpoint whose records carry an updated_at-like
    ISO timestamp (or "" when they don't)."""
    record = records if isinstance(records, dict) else {}
    found = next(
        (k for k, v in record.items() if _UPDATED.match(k) and isinstance(v, str) and _TIMESTAMP.match(v)), None
    )
    if found is None:
        return ""
    path = found if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", found) else f'"{found}"'
    return (
        f"# incremental:                      # records carry {found}: ask only for what changed since the last\n"
        f"#   cursor: {'record.' + path:<28}# complete listing (docs/tutorial.md, incremental syncs);\n"
        '#   start: "2020-01-01T00:00:00Z"   # then send ${incremental.since}, e.g. request.query:\n'
        "#   lookback: 10m                   #   {updated_since: ${incremental.since}} (check the API's name)\n\n"
    )


def _plain(name: str, value: str) -> bool:
    """A header written into the file as it is: harmless by its name, and a plain value."""
    return name.lower() in _PLAIN_HEADERS and _PLAIN_VALUE.match(value) is not None


def _secret(name: str, secrets: list[str]) -> str:
    secrets.append(name)
    return f'"${{secret.{name}}}"'


def _env(header: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", header.upper()).strip("_")
