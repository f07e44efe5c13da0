"""The API's refusal of a source's credentials, in words: a 401 the credentials could not get past and
a 403 whose challenge says `insufficient_scope` (RFC 6750 §3.1), each a run failure naming the
`auth:` keys to check. Reads the answer's challenge (`WWW-Authenticate`) and its first EXCERPT bytes;
quotes no credential (every message goes through the run's redactor).
"""

from __future__ import annotations

import re

import httpx

from runner import spec, templating, tokens
from runner.body import parse_json

EXCERPT = tokens.EXCERPT  # bytes of a 401 answer read for the message

FIELDS = {  # the keys that hold each type's credentials, named in the messages
    spec.AuthType.BEARER: ("token",),
    spec.AuthType.API_KEY: ("value",),
    spec.AuthType.BASIC: ("username", "password"),
    spec.AuthType.OAUTH2_CLIENT_CREDENTIALS: ("client_id", "client_secret", "scopes"),
    spec.AuthType.OAUTH2_REFRESH_TOKEN: ("refresh_token", "client_id"),
}


async def rejected(
    auth: spec.Auth, settings: templating.Settings, request: httpx.Request, response: httpx.Response, *, renewed: bool
) -> str:
    """The message for a 401 the credentials could not get past."""
    raw = await excerpt(response)
    body, _ = parse_json(raw)  # bounded depth: 2 KB of `[` is no traceback
    said = challenge(response.headers.get("www-authenticate", "")) or tokens.oauth_error(body) or tokens.text(raw)
    names = [auth.field(name) for name in FIELDS[auth.type]]
    fields = ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]
    again = " even with a newly fetched token" if renewed else ""
    url = settings.redact(str(request.url))
    return settings.redact(
        f"HTTP 401 from {request.method} {url} — the API rejected the {auth.type.value} credentials{again}"
        f"{f' ({said})' if said else ''}; check {fields}"
    )


def lacking(auth: spec.Auth, settings: templating.Settings, request: httpx.Request, scope: str) -> str:
    """The message for a 403 whose challenge says `insufficient_scope` (RFC 6750 §3.1): every request
    of the source carries the same credentials, so the run stops, naming the scope the API asked for."""
    wanted = tokens.text(scope[:120].encode()).strip("'\"")
    asked = f"; the API asks for scope {wanted!r}" if wanted else ""
    if auth.type in (spec.AuthType.OAUTH2_CLIENT_CREDENTIALS, spec.AuthType.OAUTH2_REFRESH_TOKEN):
        sent = " ".join(auth.scopes) or "none"
        what = (
            f"the access token lacks a scope this request needs{asked}; add it to {auth.field('scopes')} (sent: {sent})"
        )
    else:
        names = [auth.field(name) for name in FIELDS[auth.type]]
        what = (
            f"the {auth.type.value} credentials lack a permission this request needs{asked};"
            f" check what {names[0]} may do"
        )
    url = settings.redact(str(request.url))
    return settings.redact(f"HTTP 403 (insufficient_scope) from {request.method} {url} — {what}")


async def excerpt(response: httpx.Response) -> bytes:
    """The first EXCERPT bytes as sent (an error answer is rarely compressed; a compressed one is
    simply not quoted)."""
    raw = bytearray()
    async for chunk in response.aiter_raw():
        raw += chunk
        if len(raw) >= EXCERPT:
            break
    if response.headers.get("content-encoding", "identity").lower() not in ("", "identity"):
        return b""
    return bytes(raw[:EXCERPT])


_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))')


def params(header: str) -> dict[str, str]:
    """The auth-params of a challenge: `Bearer error="insufficient_scope", scope="a b"` (RFC 6750 §3),
    names lower-cased, the first of each kept; at most the first 4 KB read."""
    found: dict[str, str] = {}
    for match in _PARAM.finditer(header[:4096]):
        found.setdefault(match[1].lower(), match[2] if match[2] is not None else match[3])
    return found


def challenge(header: str) -> str:
    """`invalid_token` from `Bearer error="invalid_token", error_description="..."` (RFC 6750)."""
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.split()[-1:] == ["error"]:
            return tokens.text(value.strip('"')[:60].encode()).strip("'\"")
    return ""
