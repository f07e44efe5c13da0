"""`--set path=value`: one run's changes to a source file, for smoke runs and staging.

`syncrun run sources/steam-applist.yaml --set pagination.max_items=2 --set rate_limit.per=1s` runs the
file as if it said so. Each override is applied to the YAML as read, before the schema and the
builders see it, so the result is validated exactly like a file that was written that way: a bad
value is a configuration error (exit 2) naming the path and the override. The path must be one the
schema knows (`pagination.max_items`, `request.query.max_results`, `writes[0].mode` as `writes.0.mode`);
a missing mapping on the way is created, a list item must exist. Values are YAML scalars: `2` is a
number, `1s` and `'2'` are text, `true`, `null`.

Secrets stay out of it: `auth.*` and `request.headers.*` (where credentials go), any value that holds a
`${secret.X}`, and any override value naming one are refused. So an override can never put a literal
credential where the redactor would not know it, and what is overridden can be shown: the run logs
the overrides and keeps them in its job row's metadata ({"overrides": {"pagination.max_items": 2}}).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import cast

from runner.errors import Problem, UsageError
from runner.expressions import JSON
from runner.sourcefile import Document, Path_, did_you_mean, dotted, read, schema, show

__all__ = ["Override", "apply", "blame", "parse", "recorded"]

_SECRET = "${secret."
# Where credentials live: never overridable, whatever they hold today.
_REFUSED = (("auth",), ("request", "headers"))
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
    if _SECRET in raw:
        raise UsageError(f"--set {name}: a value cannot name a secret; secrets come from the environment only")
    if not raw.strip():
        raise UsageError(f"--set {name}= has no value (write '' for empty text, null for none)")
    doc, problems = read(raw, f"--set {name}")
    if doc is None or problems:
        reason = problems[0].message if problems else "not a value"
        raise UsageError(f"--set {name}: {reason}")
    if isinstance(doc.data, dict | list):
        kinds = "text, a number, true/false, null"
        raise UsageError(f"--set {name}: the value must be a scalar ({kinds}), not {_kind(doc.data)}")
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
    """Problems at (or under) an overridden path say which override put the value there."""
    named = {dotted(o.path): o for o in overrides}
    out = []
    for problem in problems:
        override = next((o for path, o in named.items() if _within(problem.path, path)), None)
        told = f"{problem.message} (from --set {override.name})" if override else problem.message
        out.append(replace(problem, message=told))
    return out


def recorded(overrides: Sequence[Override]) -> dict[str, JSON]:
    """What the job row's metadata keeps: {"pagination.max_items": 2, ...} (secrets are refused above)."""
    return {o.name: o.value for o in overrides}


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
    return None


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
            data[key] = {}
        data, node = data[key], child
    return None


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
