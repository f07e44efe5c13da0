"""What `syncrun new` writes about authentication and incremental syncs (runner/scaffold.py writes the rest).

`--header 'Name: value'` (curl's form, repeatable) is what the user sends to the API today. The values
are used to fetch the sample, and never written: `Authorization: Bearer …` becomes an `auth:` bearer
block, `Authorization: Basic …` a basic one, a header named like a key (`X-Api-Key`, `X-Auth-Token`)
an api_key one, each reading its secret from `${secret.SOURCE_…}`; a harmless header (`Accept`,
`User-Agent`) is written as it is, and any other one as a `${secret.*}` too, since only its name says
what it holds. `--auth KIND` writes a starter block of that kind with placeholders. A list endpoint
whose sample records carry an updated_at-like timestamp gets a commented `incremental:` starter.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from runner.errors import UsageError

KINDS = ("bearer", "api_key", "basic", "oauth2_client_credentials", "oauth2_refresh_token")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_PLAIN_HEADERS = frozenset(
    {"accept", "accept-language", "content-type", "user-agent", "cache-control", "x-api-version", "api-version"}
)
_KEY_HEADER = re.compile(r"(^|-)(api-?key|apikey|key|token|auth|auth-token|access-token|secret)$", re.IGNORECASE)
_UPDATED = re.compile(
    r"^(updated|modified|changed|last_?modified|last_?updated|date_?modified)(_?at|_?on|_?time)?$", re.I
)
_PLAIN_VALUE = re.compile(r"^[\x20-\x7a|~]+$")  # printable ASCII without { or }: a template reads it as it is
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)$")


@dataclass
class Starter:
    """The request headers and the `auth:` block a new source gets, and the secrets the user must set."""

    headers: list[tuple[str, str]] = field(default_factory=list)  # (name, YAML text of the value)
    auth: list[str] = field(default_factory=list)  # lines of the auth: block (with its comment)
    secrets: list[str] = field(default_factory=list)  # names of the ${secret.*} it reads


def parse_headers(given: list[str]) -> list[tuple[str, str]]:
    """`Name: value` pairs as curl takes them; UsageError for one that is not a header."""
    pairs = []
    for text in given:
        name, colon, value = text.partition(":")
        if not colon or not _HEADER_NAME.match(name.strip()) or not value.strip() or "\n" in value or "\r" in value:
            raise UsageError(f"--header {text[:20]!r}…: write it as curl does, 'Name: value' on one line")
        pairs.append((name.strip(), value.strip()))
    return pairs


def starter(source: str, headers: list[tuple[str, str]], kind: str | None) -> Starter:
    """The headers and auth block for `source`: inferred from `headers`, or `kind`'s starter."""
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
        elif lower in _PLAIN_HEADERS and _PLAIN_VALUE.match(value):
            out.headers.append((name, json.dumps(value)))
        else:  # only its name says what it holds: kept out of the file
            out.headers.append((name, _secret(f"{prefix}_{_env(name)}", out.secrets)))
    if kind is not None and not out.auth:
        if kind not in KINDS:
            raise UsageError(f"--auth {kind!r}: one of {', '.join(KINDS)}")
        out.auth = _block(kind, prefix, out.secrets, "a starter: set the secrets it reads, check the rest")
    return out


def _block(kind: str, prefix: str, secrets: list[str], why: str, name: str = "X-Api-Key") -> list[str]:
    lines = [f"auth:                               # {why}; see docs/auth.md", f"  type: {kind}"]
    if kind == "bearer":
        lines.append(f"  token: {_secret(f'{prefix}_TOKEN', secrets)}")
    elif kind == "api_key":
        lines += [
            f"  name: {name}",
            "  in: header                        # or query",
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


def _secret(name: str, secrets: list[str]) -> str:
    secrets.append(name)
    return f'"${{secret.{name}}}"'


def _env(header: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", header.upper()).strip("_")
