"""Reading a YAML file for config: node lines kept, aliases and absurd nesting refused, and JSON
Schema errors turned into `file:line: path: message` problems a YAML author can act on.

Used by `config` (for source files and syncrun.yaml) and the modules it reads sections with (filters,
authblocks, overrides, exprcheck, ownership); returns plain dicts, lists and scalars.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml

from runner import conformance
from runner.conformance import Schemas
from runner.errors import Problem
from runner.expressions import JSON

if TYPE_CHECKING:
    from jsonschema import ValidationError  # type: ignore[import-untyped]

MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 32  # deeper nesting is never a real source, and PyYAML's composer recurses
# Whole numbers fit PostgreSQL's bigint: anything larger is never a count, size or id a source means,
# and CPython refuses to read an integer of more than 4,300 digits at all (ValueError).
MAX_INT = 2**63 - 1
_SCALAR_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null")}

Path_ = tuple[str | int, ...]  # a location in the document: keys and list indexes


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


# --- reading YAML, keeping lines ----------------------------------------------------------------
@dataclass
class Document:
    file: str
    data: JSON
    lines: dict[Path_, int]  # where each value starts
    key_lines: dict[Path_, int]  # where each mapping key is written

    def line(self, path: Path_, *, key: bool = False) -> int:
        if key and path in self.key_lines:
            return self.key_lines[path]
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)

    def problem(self, path: Path_, message: str, *, key: bool = False) -> Problem:
        return Problem(self.file, self.line(path, key=key), dotted(path), message)


class _Refused(Exception):
    def __init__(self, mark: object, message: str) -> None:
        self.line, self.message = getattr(mark, "line", 0) + 1, message


class _Loader(yaml.SafeLoader):
    """SafeLoader's composer, refusing aliases (no alias bombs) and absurd nesting."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(event.start_mark, "YAML aliases (*name) are not supported: repeat the value")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(event.start_mark, f"nested more than {MAX_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def read(text: bytes | str, file: str) -> tuple[Document | None, list[Problem]]:
    if len(text) > MAX_FILE_BYTES:
        return None, [Problem(file, 1, "", f"the file is larger than {MAX_FILE_BYTES // 1000} KB")]
    loader = None
    try:
        loader = _Loader(text)  # the reader checks the characters already here
        node = loader.get_single_node()
    except _Refused as refused:
        return None, [Problem(file, refused.line, "", refused.message)]
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        return None, [Problem(file, mark.line + 1 if mark else 1, "", f"not valid YAML: {error.problem}")]
    except yaml.reader.ReaderError as error:  # bytes that are not UTF-8, or control characters
        before = text[: error.position]
        line = (before.count("\n") if isinstance(before, str) else before.count(b"\n")) + 1
        return None, [Problem(file, line, "", f"not valid YAML: {error.reason} (character #x{error.character:04x})")]
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        return None, [Problem(file, 1, "", "the file is empty")]
    doc = Document(file, None, {}, {})
    problems: list[Problem] = []
    doc.data = _to_data(node, (), doc, loader, problems)
    return (doc if not problems else None), problems


def _to_data(node: yaml.Node, path: Path_, doc: Document, loader: _Loader, problems: list[Problem]) -> JSON:
    doc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode) and node.tag == "tag:yaml.org,2002:map":
        out: dict[str, JSON] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None or _not_text(key):
                message = "keys must be text" if key is None else f"a key {_not_text(key)}"
                problems.append(Problem(doc.file, key_node.start_mark.line + 1, dotted(path), message))
            elif key in out:
                first = doc.key_lines[(*path, key)]
                line = key_node.start_mark.line + 1
                problems.append(
                    Problem(doc.file, line, dotted((*path, key)), f"duplicate key '{key}' (first at line {first})")
                )
            else:
                doc.key_lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = _to_data(value_node, (*path, key), doc, loader, problems)
        return out
    if isinstance(node, yaml.SequenceNode) and node.tag == "tag:yaml.org,2002:seq":
        return [_to_data(item, (*path, i), doc, loader, problems) for i, item in enumerate(node.value)]
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:timestamp":
        return node.value  # a date stays text: the schema decides what it may be
    if isinstance(node, yaml.ScalarNode) and node.tag in _SCALAR_TAGS:
        value, problem = _scalar(node, loader)
        if problem:
            problems.append(doc.problem(path, problem))
        return value
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    problems.append(doc.problem(path, f"unsupported YAML tag {tag} (use plain values, lists and mappings)"))
    return None


def _scalar(node: yaml.ScalarNode, loader: _Loader) -> tuple[JSON, str | None]:
    """The scalar's value, or None and why no source can mean this number."""
    too_large = f"{_clip(node.value)} is too large: whole numbers must be within ±{MAX_INT}"
    try:
        value = loader.construct_object(node)
    except ValueError:  # an integer of more than 4,300 digits: CPython's int-string limit
        return None, too_large
    if isinstance(value, float) and not math.isfinite(value):
        return None, f"{_clip(node.value)} is not a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        return None, too_large
    if isinstance(value, str) and (problem := _not_text(value)):
        return None, problem
    return value, None


def _not_text(text: str) -> str | None:
    """A `"\\ud800"` escape makes a lone surrogate: not text, and a crash wherever it is encoded; `"\\0"`
    makes a NUL, which neither PostgreSQL text nor HTTP can carry."""
    if "\0" in text:
        return "contains a NUL character (\\0), which PostgreSQL and HTTP cannot carry: remove it"
    char = next((c for c in text if "\ud800" <= c <= "\udfff"), None)
    return None if char is None else f"contains a lone surrogate (U+{ord(char):04X}), which is not text: remove it"


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


def did_you_mean(word: JSON, choices: Iterable[JSON], *, inside: bool = False) -> str:
    """` (did you mean 'x'?)`, or `; did you mean 'x'?` to go `inside` a parenthesis; "" if nothing is close."""
    import difflib  # only a file with a problem needs it: not imported by every run

    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1) if isinstance(word, str) else []
    if not close:
        return ""
    return f"; did you mean '{close[0]}'?" if inside else f" (did you mean '{close[0]}'?)"


def show(value: JSON) -> str:
    """A value as a YAML author wrote it, short and on one line."""
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int) and abs(value) > MAX_INT:
        return "a number too large to show"  # str() of a huge int is slow, or a ValueError
    return _clip(str(value))


def _clip(text: str) -> str:
    """A number's text, shortened when absurdly long (it would fill the screen)."""
    return text if len(text) <= 40 else f"{text[:20]}…({len(text)} characters)"


def dotted(path: Path_) -> str:
    """`writes[0].columns.price`; odd keys in quotes, with no `:` so the path stays one field."""
    out = ""
    for part in path:
        if isinstance(part, str) and len(part) > 60:  # an absurd key is named, not printed whole
            part = part[:57] + "..."
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out else part
        else:
            out += "[" + json.dumps(part).replace(":", "\\u003a") + "]"
    return out
