"""`auth:` blocks, from YAML to `spec.Auth`: a source's own block, the named blocks of syncrun.yaml, and
a source's `auth: {use: NAME}` that takes one of those as it is written.

The schema has checked each block's shape (the keys of its `type`, `use:` alone); this adds what a
schema cannot say: credentials come from a `${secret.*}`, hold no entity values and are one line of
text; client_secret_basic needs a client secret; a `use:` names a block that exists; a request header or
query parameter the block also sets is one of two mistakes. `config._Builder` calls it with itself as
the `Checker` (it reports each problem at its file and line), for a source file and for syncrun.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol, cast

from runner import spec, templating
from runner.expressions import JSON
from runner.redaction import Redactor
from runner.sourcefile import Path_, did_you_mean, show

TEMPLATES = frozenset(
    {"token", "value", "username", "password", "token_url", "client_id", "client_secret", "refresh_token"}
)
_NONE = templating.Settings({}, Redactor())  # a URL without settings renders without any
SECRETS = frozenset({"token", "value", "password", "client_secret", "refresh_token"})


class Checker(Protocol):
    def add(self, path: Path_, message: str) -> None: ...
    def check_text(self, path: Path_, template: spec.Template) -> None: ...
    def duration(self, path: Path_, value: JSON, *, positive: bool = False) -> float: ...


def block(checker: Checker, raw: dict[str, JSON], at: Path_, *, shared: str | None = None) -> spec.Auth | None:
    """The spec of one written block at `at` (("auth",) in a source, ("auth", NAME) in syncrun.yaml);
    None when it has problems (reported through `checker`)."""
    fields: dict[str, spec.Template | None] = {}
    for key, value in raw.items():
        if key in TEMPLATES:
            fields[key] = template(checker, (*at, key), value, secret=key in SECRETS)
    extra = tuple((k, template(checker, (*at, "extra", k), v)) for k, v in _items(raw.get("extra")))
    client_auth = spec.ClientAuth(raw.get("client_auth", spec.ClientAuth.POST.value))
    if client_auth is spec.ClientAuth.BASIC and "client_secret" not in raw:
        checker.add(
            (*at, "client_auth"), "client_secret_basic needs a client_secret (a public client has none: remove it)"
        )
        return None
    timeout = checker.duration((*at, "timeout"), raw["timeout"], positive=True) if "timeout" in raw else None
    if (url := fields.get("token_url")) is not None:
        token_url(checker, (*at, "token_url"), url)
    if any(t is None for t in fields.values()) or any(t is None for _, t in extra):
        return None
    return spec.Auth(
        type=spec.AuthType(raw["type"]),
        name=cast(str | None, raw.get("name")),
        in_=spec.KeyIn(raw.get("in", "header")),
        scopes=tuple(cast(list[str], raw.get("scopes", ()))),
        extra=cast(tuple[tuple[str, spec.Template], ...], extra),
        client_auth=client_auth,
        timeout=timeout,
        verify_tls=cast(bool | None, raw.get("verify_tls")),
        rate_limited=raw.get("rate_limited") is True,
        shared=shared,
        **cast(dict[str, spec.Template], fields),
    )


def project_blocks(checker: Checker, raw: JSON) -> dict[str, spec.Auth | None]:
    """syncrun.yaml's `auth:` section: name -> spec, or None for a block with problems (reported)."""
    return {
        name: block(checker, written, ("auth", name), shared=name) if isinstance(written, dict) else None
        for name, written in _items(raw)
    }


def use(
    checker: Checker, name: str, blocks: Mapping[str, spec.Auth | None] | None, project: str | None
) -> spec.Auth | None:
    """The shared block a source's `use: NAME` names; None (a problem reported) when there is none.
    `blocks` is None when syncrun.yaml could not be read: its own problems are reported already, and
    so are a named block's (its value None)."""
    if blocks is None or name in blocks:
        return blocks[name] if blocks else None
    if project is None:
        checker.add(
            ("auth", "use"), f"{show(name)} names a shared auth block, but no syncrun.yaml was found above this file"
        )
    elif not blocks:
        checker.add(("auth", "use"), f"{show(name)} is not an auth block of {project}: it has no auth: section")
    else:
        have = ", ".join(sorted(blocks))
        checker.add(
            ("auth", "use"),
            f"{show(name)} is not an auth block of {project} (have: {have}{did_you_mean(name, blocks, inside=True)})",
        )
    return None


def check_overlap(checker: Checker, request: JSON, auth: spec.Auth) -> None:
    """A request header or query parameter that `auth` would overwrite: one of the two is a mistake."""
    if not isinstance(request, dict):
        return
    part, name = ("headers", "Authorization")
    if auth.type is spec.AuthType.API_KEY:
        part, name = ("query" if auth.in_ is spec.KeyIn.QUERY else "headers", auth.name or "")
    where = f"auth (use: {auth.shared})" if auth.shared else f"auth (type: {auth.type.value})"
    for key, _ in _items(request.get(part)):
        if key.lower() == name.lower() if part == "headers" else key == name:
            checker.add(("request", part, key), f"is also set by {where}: remove one of the two")


def token_url(checker: Checker, path: Path_, url: spec.Template) -> None:
    """An http(s) URL with a host, as the request URL must be: written whole, checked now; one that
    reads a setting is checked at run start with the value (runner/preflight.py), one whose settings
    all have defaults now as well (the defaults are the file's)."""
    first = url.segments[0] if url.segments else None
    if isinstance(first, spec.Literal) and not re.match(r"https?://", first.text, re.IGNORECASE):
        checker.add(path, "must start with http:// or https:// (or a setting such as ${env.TOKEN_URL})")
    elif all(s.default for s in url.settings) and (
        reason := templating.url_problem(templating.render(url, {}, _NONE, url=True))
    ):  # written whole in the file, defaults included (review revH F3)
        checker.add(path, f"is not a usable URL{templating.with_defaults(url)}: {reason}")


def template(checker: Checker, path: Path_, value: JSON, *, secret: bool = False) -> spec.Template | None:
    try:
        parsed = templating.parse(str(value))
    except ValueError as error:
        checker.add(path, str(error))
        return None
    if parsed.columns:
        checker.add(path, "cannot hold entity values ({column}): credentials are the same for every request")
        return None
    if any(s.kind == templating.WATERMARK[0] for s in parsed.settings):  # only env and secret read here
        checker.add(path, "cannot read ${incremental.since}: it belongs in request.query, not in credentials")
        return None
    if secret and (not any(s.secret for s in parsed.settings) or any(not s.secret for s in parsed.settings)):
        checker.add(
            path,
            "must come from a secret, e.g. ${secret.API_TOKEN}: a credential written in the file is"
            " committed with it, and ${env.*} values are shown in logs",
        )
        return None
    if secret and any(s.default for s in parsed.settings):  # review revG F5: a literal in the file after all
        checker.add(path, "a secret's default (${secret.NAME:-…}) is a credential written in the file: drop it")
        return None
    checker.check_text(path, parsed)
    return parsed


def _items(value: JSON) -> list[tuple[str, JSON]]:
    return list(value.items()) if isinstance(value, dict) else []
