"""A YAML document checked against syncrun's JSON Schemas (runner/schemas, or the checkout's schemas/):
`conformance` answers first, and only a document it cannot pass is given to jsonschema, whose errors
become `file:line: path: message` problems a YAML author can act on (the key or value named, what is
allowed, a close match). Used by `config` (source files and syncrun.yaml) and `overrides`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from runner import conformance
from runner.conformance import Schemas
from runner.errors import Problem
from runner.expressions import JSON
from runner.sourcefile import Document, Path_, did_you_mean, show

if TYPE_CHECKING:
    from jsonschema import ValidationError  # type: ignore[import-untyped]

SCHEMAS = ("source.schema.json", "project.schema.json")


def schema(name: str = "source.schema.json") -> dict[str, JSON]:
    """The JSON Schema, from the installed package (runner/schemas) or the checkout's schemas/."""
    here = Path(__file__).resolve().parent
    if (here / "__init__.py").is_file():  # where `resources.files` looks on disk, without importing its readers (~1 ms)
        packaged: Traversable = here / "schemas" / name
    else:  # a package that is not on disk (a zip)
        packaged = resources.files("runner").joinpath("schemas", name)
    if packaged.is_file():
        return cast(dict[str, JSON], json.loads(packaged.read_text("utf-8")))
    checkout = here.parent / "schemas" / name
    return cast(dict[str, JSON], json.loads(checkout.read_text("utf-8")))


def _whole_number(checker: object, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


@functools.cache
def validator(name: str) -> Any:
    """jsonschema's validator for a schema: imported only for a file `conformance` cannot pass (~30 ms)."""
    from jsonschema import Draft202012Validator
    from jsonschema.validators import extend  # type: ignore[import-untyped]
    from referencing import Registry, Resource

    # jsonschema counts 1.0 as an integer; the builders then get a float where a count or size belongs.
    # And its `pattern` is Python's `re.search`, whose `$` passes a final newline (conformance.matches).
    strict = extend(
        Draft202012Validator,
        validators={"pattern": _pattern},
        type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _whole_number),
    )
    # syncrun.yaml's auth blocks are source.schema.json's `auth` (a `$ref` across the two files).
    known = [(str(s["$id"]), Resource.from_contents(s)) for s in map(schema, SCHEMAS)]
    return strict(schema(name), registry=Registry().with_resources(known))


def _pattern(validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
    """jsonschema's `pattern` keyword, with the pattern read as JSON Schema means it."""
    if validator.is_type(instance, "string") and not conformance.matches(pattern, instance):
        from jsonschema import ValidationError

        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.cache
def _schemas() -> Schemas:
    return Schemas({name: schema(name) for name in SCHEMAS})


# --- schema errors, in words ----------------------------------------------------------------------
_TYPE_WORDS = {
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping (key: value)",
    "array": "a list",
    "null": "null",
}
_PATTERN_WORDS = {
    "duration": "is not a duration (use 500ms, 30s, 1m, 1h, 7d)",
    "size": "is not a size (use 512KB, 10MB, 1GB or a number of bytes)",
    "identifier": "is not a valid name (lower-case letters, digits and _, not starting with a digit, ≤ 63 long)",
    "qualified_name": "is not a valid name (name or schema.name; lower-case letters, digits and _)",
    "source_name": "is not a valid source name (lower-case letters, digits and _, starting with a letter, ≤ 50 long)",
    "job_type": "is not a valid job type (letters, digits, _ . -)",
    "header_name": "is not a valid header name",
    "origin": "is not an origin (http:// or https://, a host and an optional port, nothing after)",
}
_DISCRIMINATOR_DEFAULTS = {"entities": ("type", "default"), "pagination": ("type", "none"), "auth": ("type", "")}


def check(doc: Document, schema_name: str) -> tuple[list[Problem], set[Path_]]:
    """Every schema problem, and the paths they are at (so the caller can skip broken sections)."""
    if _schemas().fits(doc.data, schema_name):  # jsonschema would find nothing: it is not even imported
        return [], set()
    errors = list(validator(schema_name).iter_errors(doc.data))
    problems = [problem for error in errors for problem in _explain(error, doc)]
    # An unknown or inapplicable key leaves the rest of its section well-formed: still check that.
    return problems, {tuple(e.absolute_path) for e in errors if e.validator not in ("additionalProperties", "not")}


def _explain(error: ValidationError, doc: Document) -> list[Problem]:
    path: Path_ = tuple(error.absolute_path)
    kind, value = error.validator, error.instance
    if "propertyNames" in error.absolute_schema_path:  # the key itself is wrong: point at the key
        return [doc.problem((*path, value), _value_message(error), key=True)]
    if kind == "additionalProperties":
        return [doc.problem((*path, key), _unknown_key(key, error.schema), key=True) for key in _extra(error)]
    if kind == "required":
        missing = [name for name in error.validator_value if name not in value]
        return [doc.problem((*path, name), "is required but missing") for name in missing]
    if kind == "const" and not isinstance(value, bool):
        return []  # the type error for the same value says it better
    if kind == "not":
        return [doc.problem(path, _not_applicable(path, doc), key=True)]
    return [doc.problem(path, _value_message(error))]


def _value_message(error: ValidationError) -> str:
    kind, expected, value = error.validator, error.validator_value, error.instance
    if kind == "type":
        types = [expected] if isinstance(expected, str) else list(expected)
        types = [t for t in types if not (t == "integer" and "number" in types)]
        hint = " (quote it if you mean text)" if isinstance(value, bool) and "string" in types else ""
        words = [_TYPE_WORDS[t] for t in types]
        if types == ["object", "boolean"]:  # `status:` is a mapping, or false to turn it off
            words = [_TYPE_WORDS["object"], "false"]
        either = " or ".join([", ".join(words[:-1]), words[-1]] if len(words) > 2 else words)
        return f"expected {either}, got {show(value)}{hint}"
    if kind == "enum":
        return f"{show(value)} is not one of: {', '.join(map(str, expected))}{did_you_mean(value, expected)}"
    if kind == "pattern" and error.schema.get("title") == "bucket" and isinstance(value, str):
        return f"{show(value)} {_bucket_words(value)}"
    if kind == "pattern":
        return f"{show(value)} {_PATTERN_WORDS.get(error.schema.get('title', ''), f'does not match {expected}')}"
    if kind == "const":
        return f"{show(value)} is not allowed here (write false to turn stamping off, or a mapping)"
    if kind in ("minimum", "exclusiveMinimum", "maximum"):
        word = {"minimum": "at least", "exclusiveMinimum": "more than", "maximum": "at most"}[kind]
        return f"{show(value)} is out of range: must be {word} {expected}"
    if kind in ("minItems", "minProperties", "minLength"):
        return "must not be empty"
    if kind == "uniqueItems":
        return "lists the same value twice"
    if kind in ("oneOf", "anyOf"):  # jsonschema's own text quotes the whole value, however long
        return f"{show(value)} matches none of the forms allowed here (docs/reference.md lists them)"
    message = str(error.message)
    return message if len(message) <= 300 else message[:297] + "..."


BUCKET_MAX = 100  # schemas/source.schema.json's bucket pattern: {1,100}
_BUCKET_CHAR = re.compile(r"[A-Za-z0-9_.:-]")


def _bucket_words(value: str) -> str:
    """What is wrong with a bucket name, said exactly: one message for a name that is too long and one
    with a Cyrillic letter sent users looking for the wrong thing."""
    wrong: list[str] = []
    if not value:
        return "is not a valid bucket name: it is empty"
    if len(value) > BUCKET_MAX:
        wrong.append(f"{len(value)} characters long, at most {BUCKET_MAX} allowed")
    bad = list(dict.fromkeys(c for c in value if not _BUCKET_CHAR.fullmatch(c)))
    if bad:
        shown = ", ".join(repr(c) for c in bad[:10]) + (", ..." if len(bad) > 10 else "")
        wrong.append(f"{shown} not allowed (only ASCII letters, digits and _ . : -)")
    return "is not a valid bucket name: " + "; ".join(wrong)


def _extra(error: ValidationError) -> list[str]:
    known = set(error.schema.get("properties", {}))
    return [key for key in error.instance if key not in known]


def _unknown_key(key: str, schema: Mapping[str, JSON]) -> str:
    allowed = sorted(schema.get("properties", {}))
    hint = did_you_mean(key, allowed) or f" (allowed: {', '.join(allowed)})"
    return f"unknown key {show(key)}{hint}"


def _not_applicable(path: Path_, doc: Document) -> str:
    parent = _get(doc.data, path[:-1])
    name, default = _DISCRIMINATOR_DEFAULTS.get(str(path[0]), ("outcome", ""))
    if path[0] == "writes":
        return "does not apply to a write with function: (remove it)"
    if path[0] == "auth" and path[-1] == "use":
        return "cannot be used in syncrun.yaml: a shared block is written whole (type and its keys)"
    if path[0] == "auth" and isinstance(parent, dict) and "use" in parent:
        return "cannot sit next to use: (the shared block in syncrun.yaml is used as written; remove it here)"
    chosen = parent.get(name, default) if isinstance(parent, dict) else default
    return f"does not apply to {name}: {chosen} (remove it)"


def _get(data: JSON, path: Path_) -> JSON:
    for part in path:
        data = data[part]
    return data
