"""`--set path=value`: one run's changes to a source file, for smoke runs and staging.

`syncrun run sources/steam-applist.yaml --set pagination.max_items=2 --set rate_limit.per=1s` runs the
file as if it said so. Each override is applied to the YAML as read, before the schema and the
builders see it, so the result is validated exactly like a file that was written that way: a bad
value is a configuration error (exit 2) naming the path and the override. The path must be one the
schema knows (`pagination.max_items`, `request.query.max_results`, `writes[0].mode` as `writes.0.mode`);
a missing mapping on the way is created, a list item must exist. Values are YAML scalars: `2` is a
number, `1s` and `'2'` are text, `true`, `null`.

Secrets stay out of it: `auth.*` and `request.headers.*` (where credentials go), any value that holds a
`${secret.X}`, and any override value naming a setting (`${secret.X}` or `${env.X}`, checked on the
value as YAML decoded it, so `"\u0024{secret.X}"` is refused too) are refused. So an override can
never put a literal credential where the redactor would not know it, nor read the runner's
environment. What is overridden can be shown: the run logs the overrides and keeps them in its job
row's metadata ({"overrides": {"pagination.max_items": 2}}), both through the run's redactor (a value
that happens to hold a secret, mistyped on a command line, is masked).

Where credentials go is not overridable either: a source that sends any (an `auth:` block, a
`${secret.X}` anywhere in the file) keeps its origins. `--set request.url=…` (and
`pagination.allow_origins`) may change the path and query, not the scheme, host or port (the origin),
and `request.verify_tls` cannot be turned off;
pointing such a source at another host is done deliberately, by the environment variable its URL
names (`${env.STEAM_API_URL}`) or by a copy of the file. A listing's checkpoint is bound to the URL
it was made for (runner/jobs.py), so a run against another URL starts over.

Numbers are decimal (`16`, `-3`, `2.5`): YAML 1.1's other spellings (`0x10`, `0o20`, `1_000`, `1:30`)
are kept as the text they are, like `1e3`, so where a number goes they are refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import cast

from runner.errors import Problem, UsageError
from runner.expressions import JSON
from runner.fragments import FRAGMENT
from runner.redaction import Redactor
from runner.schemacheck import schema
from runner.sourcefile import Document, Path_, did_you_mean, dotted, read, show

__all__ = ["Override", "apply", "blame", "parse", "recorded"]

_SECRET = "${secret."
# A setting reference, as runner/templating.py reads one (`${env.X}`, `${secret.X}`, any future kind):
# matched on the decoded value, never on the argument's text.
_REFERENCE = re.compile(r"\$\{")
# Plain decimal numbers: what --set takes as a number (YAML 1.1's 0x10, 1_000, 1:30 stay text).
_DECIMAL = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
# Settings naming an origin where the source's credentials are sent.
_ORIGINS = (("request", "url"), ("pagination", "allow_origins"))
# Where credentials live: never overridable, whatever they hold today.
_REFUSED = (("auth",), ("request", "headers"))
# Turning TLS verification off hands the credentials to whoever answers for the host (review13b N5).
_VERIFY_TLS = ("request", "verify_tls")
_SCHEMA = "source.schema.json"


@dataclass(frozen=True, slots=True)
class Override:
    path: Path_
    value: JSON

    @property
    def name(self) -> str:
        """The path as the user wrote it: dots between keys and list indexes (`writes.0.mode`)."""
        return ".".join(str(part) for part in self.path)


def parse(texts: Iterable[str]) -> tuple[Override, ...]:
    """`path=value` texts -> overrides, in order (a later one for the same path wins). UsageError
    (exit 2) for one without `=`, with an empty key, or whose value is not a YAML scalar."""
    found: list[Override] = []
    for text in texts:
        name, equals, raw = text.partition("=")
        keys = name.strip().split(".")
        if not equals or not all(key.strip() for key in keys):
            raise UsageError(f"--set {_clip(name)}: expected path=value, e.g. --set pagination.max_items=2")
        path: Path_ = tuple(int(key) if key.isascii() and key.isdigit() else key.strip() for key in keys)
        found.append(Override(path, _scalar(".".join(keys), raw)))
    return tuple(found)


def _scalar(name: str, raw: str) -> JSON:
    if _REFERENCE.search(name):
        raise UsageError(f"--set {_clip(name)}: a path cannot name a setting (${{…}})")
    if not raw.strip():
        raise UsageError(f"--set {name}= has no value (write '' for empty text, null for none)")
    doc, problems = read(raw, f"--set {name}")
    if doc is None or problems:
        # The reason quotes no part of the value: it may be a secret, mistyped on a command line.
        reason = "not a YAML scalar" if problems else "not a value"
        raise UsageError(f"--set {name}: {reason} (quote text with '…')")
    if isinstance(doc.data, dict | list):
        kinds = "text, a number, true/false, null"
        raise UsageError(f"--set {name}: the value must be a scalar ({kinds}), not {_kind(doc.data)}")
    # Decoded: a YAML escape (`"\u0024{secret.X}"`, `"\x24{…}"`) names a setting as well as the text does.
    if isinstance(doc.data, str) and _REFERENCE.search(doc.data):
        raise UsageError(
            f"--set {name}: a value cannot name a setting (${{secret.…}}, ${{env.…}}): settings come from the"
            " environment only; give the value itself"
        )
    if isinstance(doc.data, int | float) and not isinstance(doc.data, bool) and not _DECIMAL.fullmatch(raw.strip()):
        return raw.strip()  # YAML 1.1's 0x10, 0o20, 1_000, 1:30: text, refused where a number goes
    return doc.data


def apply(doc: Document, overrides: Sequence[Override]) -> list[Problem]:
    """Set each override in `doc.data` (in place); the problems of those that cannot be set."""
    problems: list[Problem] = []
    for override in overrides:
        problem = _refusal(doc, override) or _set(doc, override)
        if problem:
            problems.append(doc.problem(override.path[:1], f"--set {override.name}: {problem}"))
    return problems


def blame(problems: list[Problem], overrides: Sequence[Override]) -> list[Problem]:
    """Problems at (or under) an overridden path say which override put the value there, without
    quoting the value (masked: it may be a secret given by mistake)."""
    named = {dotted(o.path): o for o in overrides}
    out = []
    for problem in problems:
        override = next((o for path, o in named.items() if _within(problem.path, path)), None)
        if override is None:
            out.append(problem)
            continue
        told = masking([override])(problem.message) if isinstance(override.value, str) else problem.message
        out.append(replace(problem, message=f"{told} (from --set {override.name})"))
    return out


def recorded(overrides: Sequence[Override], redact: Redactor) -> dict[str, JSON]:
    """What the job row's metadata keeps: {"pagination.max_items": 2, ...}, through the run's redactor
    (a secret's value, or a piece of one, given as a value is masked like in the log)."""
    return {redact(o.name): redact.value(o.value) for o in overrides}


def masking(overrides: Sequence[Override]) -> Redactor:
    """A redactor of the override values themselves, for messages about them before the run's secrets
    are known: a rejected value of `FRAGMENT` (8) characters or more is never echoed, nor any 8-character
    piece of it (it may be a secret given by mistake). A shorter one is shown (`'fast' is not a
    duration`): like the redactor's fragments, pieces that short are not taken for secrets."""
    return Redactor(o.value for o in overrides if isinstance(o.value, str) and len(o.value) >= FRAGMENT)


def _within(path: str, prefix: str) -> bool:
    """`path` is the overridden one, under it, or a section the override created or changed."""
    a, b = (path, prefix) if len(path) >= len(prefix) else (prefix, path)
    return a == b or a.startswith((f"{b}.", f"{b}["))


def _refusal(doc: Document, override: Override) -> str | None:
    path = override.path
    if any(path[: len(refused)] == refused for refused in _REFUSED):
        return "credentials cannot be overridden: set the secrets (environment variables) they name instead"
    current = _get(doc.data, path)
    if _SECRET in repr(current):
        return "holds a ${secret.*} value, which cannot be overridden: set that secret's environment variable instead"
    if any(path[: len(origin)] == origin for origin in _ORIGINS) and _sends_credentials(doc.data):
        was = origin_of(current)
        if was != origin_of(override.value):
            return (
                f"would send this source's credentials to another origin than the file's ({_clip(was or '(none)')});"
                " --set may change a URL's path and query only. To point the source at another host deliberately,"
                " set the environment variable its URL names (or copy the file)"
            )
    if path == _VERIFY_TLS and override.value is not True and _sends_credentials(doc.data):
        # review13b N5: without verification whoever answers for the host gets the credentials
        return (
            "would send this source's credentials without verifying the server's TLS certificate; --set cannot"
            " turn verification off on a source that sends credentials (write request.verify_tls: false in a copy"
            " of the file, deliberately)"
        )
    return None


def _sends_credentials(data: JSON) -> bool:
    """The source sends credentials somewhere: an auth block, or a ${secret.X} anywhere in the file."""
    return isinstance(data, dict) and (bool(data.get("auth")) or _SECRET in repr(data))


def origin_of(value: JSON) -> str | None:
    """The origin part of a URL as written: `https://api.example.com:8443` (scheme and host lower-case),
    or the setting reference it starts with (`${env.API_URL}`); a list (allow_origins) joins its items."""
    if isinstance(value, list):
        return " ".join(sorted(str(origin_of(item)) for item in value))
    if not isinstance(value, str):
        return None if value is None else str(value)
    text = value.strip()
    if found := re.match(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)", text):
        return found[1].lower() + found[2].rpartition("@")[2].lower()
    if found := re.match(r"\$\{[^}]*\}", text):
        return found[0]
    return re.split(r"[/?#]", text, maxsplit=1)[0]


def _get(data: JSON, path: Path_) -> JSON:
    for part in path:
        if isinstance(data, dict) and isinstance(part, str):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _set(doc: Document, override: Override) -> str | None:
    """Walk the schema and the document together; create missing mappings on the way."""
    node = _resolve(schema(_SCHEMA))
    data = doc.data
    for depth, part in enumerate(override.path):
        where = ".".join(str(p) for p in override.path[:depth]) or "the file"
        last = depth == len(override.path) - 1
        if isinstance(data, list):
            if not isinstance(part, int) or part >= len(data):
                return f"{where} is a list of {len(data)}: name an existing item by its index (0 to {len(data) - 1})"
            node = _resolve(node.get("items", {}))
            if last:
                data[part] = override.value
                return None
            data = data[part]
            continue
        if not isinstance(data, dict):
            return f"{where} is {_kind(data)}, not a mapping: cannot set {part} in it"
        key = str(part)
        child = _child(node, key)
        if child is None:
            known = sorted(_properties(node))
            hint = did_you_mean(key, known) or (f" (known here: {', '.join(known)})" if known else "")
            return f"no setting {key!r} in {where}{hint}"
        if last:
            data[key] = override.value
            return None
        if key not in data or data[key] is None:
            if _is_list(child) or isinstance(override.path[depth + 1], int):
                here = ".".join(str(p) for p in override.path[: depth + 1])
                return f"{here} is not in the file: a list's items must be there to be set (write the list in the file)"
            data[key] = {}
        data, node = data[key], child
    return None


def _is_list(node: dict[str, JSON]) -> bool:
    return any(branch.get("type") == "array" for branch in _branches(node))


def _resolve(node: JSON) -> dict[str, JSON]:
    """A schema node with its $ref followed (the source schema's refs are all `#/$defs/name`)."""
    if not isinstance(node, dict):
        return {}
    found: dict[str, JSON] = node
    while isinstance(found.get("$ref"), str):
        name = cast(str, found["$ref"]).rsplit("/", 1)[-1]
        found = cast(dict[str, JSON], cast(dict[str, JSON], schema(_SCHEMA)["$defs"])[name])
    return found


def _branches(node: dict[str, JSON]) -> list[dict[str, JSON]]:
    out = [node]
    for combinator in ("oneOf", "anyOf", "allOf"):
        for branch in cast(list[JSON], node.get(combinator, [])):
            out.extend(_branches(_resolve(branch)))
    return out


def _properties(node: dict[str, JSON]) -> dict[str, JSON]:
    found: dict[str, JSON] = {}
    for branch in _branches(node):
        found.update(cast(dict[str, JSON], branch.get("properties", {})))
    return found


def _child(node: dict[str, JSON], key: str) -> dict[str, JSON] | None:
    """The schema of `key` inside `node`: a declared property, or any key where the mapping takes any
    (request.query, writes[i].columns); None when the schema has no such setting."""
    declared = _properties(node)
    if key in declared:
        return _resolve(declared[key])
    for branch in _branches(node):
        extra = branch.get("additionalProperties")
        if isinstance(extra, dict):
            return _resolve(extra)
    return None


def _kind(value: JSON) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool) or value is None:
        return show(value)
    return "text" if isinstance(value, str) else "a number"


def _clip(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."
