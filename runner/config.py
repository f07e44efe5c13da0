"""Source files: YAML -> JSON Schema -> `spec.Source`, reporting every problem as `file:line: path: message`.

The only module that sees raw YAML. Reading keeps each node's line; the schema checks the shape;
then each section is built (templates parsed, JMESPath compiled once, durations parsed, defaults
filled) with the cross-field checks the schema cannot express. Does not resolve settings: that is
`templating.resolve` at run start, so `validate` never needs them set.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import cast

import yaml
from jmespath import functions as jp_functions
from jmespath.exceptions import ParseError
from jsonschema import Draft202012Validator, ValidationError

from runner import spec, templating
from runner.errors import ConfigError, Problem
from runner.expressions import CUSTOM_FUNCTIONS, JSON, Expression

MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 32  # deeper nesting is never a real source, and PyYAML's composer recurses
PROJECT_FILE = "syncrun.yaml"
DEFAULT_LIMIT = 100
RUN_FIELDS = frozenset({"now", "today", "job_id", "started_at"})
ENGINE_PARAMETERS = ("limit", "after_key", "source")
FUNCTIONS = frozenset(CUSTOM_FUNCTIONS) | frozenset(
    name.removeprefix("_func_") for name in dir(jp_functions.Functions) if name.startswith("_func_")
)
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^([0-9]+)(B|KB|MB|GB|KiB|MiB|GiB)$")
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
_SQL_PARAMETER = re.compile(r"%\((\w+)\)s")
_SCALAR_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null")}

Path_ = tuple[str | int, ...]  # a location in the document: keys and list indexes


def default_paths(root: Path | None = None) -> list[Path]:
    """The bundled sources: `sources/*.yaml` under `root` (default: the current directory)."""
    return sorted((root or Path()).joinpath("sources").glob("*.yaml"))


def load(path: Path) -> spec.Source:
    """Read one source file and return a ready-to-run Source; ConfigError lists every problem."""
    try:
        text = path.read_bytes()
    except OSError as error:  # a missing or unreadable file is the user's to fix, not a crash
        raise ConfigError([Problem(str(path), 1, "", f"cannot read the file: {error.strerror}")]) from None
    return loads(text, path)


def loads(text: bytes | str, path: Path) -> spec.Source:
    """Like `load`, for text already read; `path` names the file in messages and finds syncrun.yaml."""
    doc, problems = _read(text, str(path))
    if doc is None:
        raise ConfigError(problems)
    project, project_problems = _project(path)
    problems += project_problems + _schema_problems(doc, _validator("source.schema.json"))
    source = _Builder(doc, path, project, problems).source()
    if problems or source is None:
        raise ConfigError(list(dict.fromkeys(problems)))
    return source


def validate(paths: Iterable[Path]) -> dict[Path, list[Problem]]:
    """Every problem of every file (an empty list for a good one). Unexpected errors propagate."""
    results: dict[Path, list[Problem]] = {}
    for path in paths:
        try:
            load(path)
            results[path] = []
        except ConfigError as error:
            results[path] = error.problems
    return results


def parse_duration(value: str | float) -> float:
    """`500ms`, `30s`, `1m`, `1h`, `7d` or a number of seconds -> seconds; ValueError otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{_show(value)} is not a duration (use 500ms, 30s, 1m, 1h, 7d)")
    return float(match[1]) * _DURATION_UNITS[match[2]]


def parse_size(value: str | int) -> int:
    """`512KB`, `10MB`, `1GB` (`KiB`/`MiB`/`GiB` binary) or a number of bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{_show(value)} is not a size (use 512KB, 10MB, 1GB or a number of bytes)")
    return int(match[1]) * _SIZE_UNITS[match[2]]


def schema(name: str = "source.schema.json") -> dict[str, JSON]:
    """The JSON Schema, from the installed package (runner/schemas) or the checkout's schemas/."""
    packaged = resources.files("runner").joinpath("schemas", name)
    if packaged.is_file():
        return cast(dict[str, JSON], json.loads(packaged.read_text("utf-8")))
    checkout = Path(__file__).resolve().parent.parent / "schemas" / name
    return cast(dict[str, JSON], json.loads(checkout.read_text("utf-8")))


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name))


# --- reading YAML, keeping lines ----------------------------------------------------------------
@dataclass
class _Doc:
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
        return Problem(self.file, self.line(path, key=key), _dotted(path), message)


class _Refused(Exception):
    def __init__(self, mark: yaml.Mark, message: str) -> None:
        self.line, self.message = mark.line + 1, message


class _Loader(yaml.SafeLoader):
    """SafeLoader's composer, refusing aliases (no alias bombs) and absurd nesting."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(event.start_mark, "YAML aliases (*name) are not supported: repeat the value")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(event.start_mark, f"nested more than {MAX_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _read(text: bytes | str, file: str) -> tuple[_Doc | None, list[Problem]]:
    if len(text) > MAX_FILE_BYTES:
        return None, [Problem(file, 1, "", f"the file is larger than {MAX_FILE_BYTES // 1000} KB")]
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except _Refused as refused:
        return None, [Problem(file, refused.line, "", refused.message)]
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        return None, [Problem(file, mark.line + 1 if mark else 1, "", f"not valid YAML: {error.problem}")]
    except yaml.YAMLError as error:  # a reader error: bytes that are not text
        return None, [Problem(file, 1, "", f"not valid YAML: {str(error).splitlines()[0]}")]
    finally:
        loader.dispose()
    if node is None:
        return None, [Problem(file, 1, "", "the file is empty")]
    doc = _Doc(file, None, {}, {})
    problems: list[Problem] = []
    doc.data = _to_data(node, (), doc, loader, problems)
    return (doc if not problems else None), problems


def _to_data(node: yaml.Node, path: Path_, doc: _Doc, loader: _Loader, problems: list[Problem]) -> JSON:
    doc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode) and node.tag == "tag:yaml.org,2002:map":
        out: dict[str, JSON] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None:
                problems.append(Problem(doc.file, key_node.start_mark.line + 1, _dotted(path), "keys must be text"))
            elif key in out:
                first = doc.key_lines[(*path, key)]
                problems.append(doc.problem((*path, key), f"duplicate key '{key}' (first at line {first})"))
            else:
                doc.key_lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = _to_data(value_node, (*path, key), doc, loader, problems)
        return out
    if isinstance(node, yaml.SequenceNode) and node.tag == "tag:yaml.org,2002:seq":
        return [_to_data(item, (*path, i), doc, loader, problems) for i, item in enumerate(node.value)]
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:timestamp":
        return node.value  # a date stays text: the schema decides what it may be
    if isinstance(node, yaml.ScalarNode) and node.tag in _SCALAR_TAGS:
        value = loader.construct_object(node)
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(doc.problem(path, f"{node.value} is not a finite number"))
        return value
    problems.append(doc.problem(path, f"unsupported YAML tag {node.tag} (use plain values, lists and mappings)"))
    return None


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
    "bucket": "is not a valid bucket name (letters, digits, _ . : -)",
    "header_name": "is not a valid header name",
}
_DISCRIMINATOR_DEFAULTS = {"entities": ("type", "default"), "pagination": ("type", "none")}


def _schema_problems(doc: _Doc, validator: Draft202012Validator) -> list[Problem]:
    return [problem for error in validator.iter_errors(doc.data) for problem in _explain(error, doc)]


def _explain(error: ValidationError, doc: _Doc) -> list[Problem]:
    path: Path_ = tuple(error.absolute_path)
    kind, value = error.validator, error.instance
    if "propertyNames" in error.absolute_schema_path:  # the key itself is wrong: point at the key
        return [doc.problem((*path, value), _value_message(error), key=True)]
    if kind == "additionalProperties":
        return [doc.problem((*path, key), _unknown_key(key, error.schema), key=True) for key in _extra(error)]
    if kind == "required":
        missing = [name for name in error.validator_value if name not in value]
        return [doc.problem((*path, name), "is required but missing") for name in missing]
    if kind == "not":
        return [doc.problem(path, _not_applicable(path, doc), key=True)]
    return [doc.problem(path, _value_message(error))]


def _value_message(error: ValidationError) -> str:
    kind, expected, value = error.validator, error.validator_value, error.instance
    if kind == "type":
        types = [expected] if isinstance(expected, str) else list(expected)
        hint = " (quote it if you mean text)" if isinstance(value, bool) and "string" in types else ""
        return f"expected {' or '.join(_TYPE_WORDS[t] for t in types)}, got {_show(value)}{hint}"
    if kind == "enum":
        return f"{_show(value)} is not one of: {', '.join(map(str, expected))}{_did_you_mean(value, expected)}"
    if kind == "pattern":
        return f"{_show(value)} {_PATTERN_WORDS.get(error.schema.get('title', ''), f'does not match {expected}')}"
    if kind == "const":
        return f"{_show(value)} is not allowed here (write false to turn stamping off, or a mapping)"
    if kind in ("minimum", "exclusiveMinimum", "maximum"):
        word = {"minimum": "at least", "exclusiveMinimum": "more than", "maximum": "at most"}[kind]
        return f"{_show(value)} is out of range: must be {word} {expected}"
    if kind in ("minItems", "minProperties", "minLength"):
        return "must not be empty"
    if kind == "uniqueItems":
        return "lists the same value twice"
    return str(error.message)


def _extra(error: ValidationError) -> list[str]:
    known = set(error.schema.get("properties", {}))
    return [key for key in error.instance if key not in known]


def _unknown_key(key: str, schema: Mapping[str, JSON]) -> str:
    allowed = sorted(schema.get("properties", {}))
    hint = _did_you_mean(key, allowed) or f" (allowed: {', '.join(allowed)})"
    return f"unknown key {_show(key)}{hint}"


def _not_applicable(path: Path_, doc: _Doc) -> str:
    parent = _get(doc.data, path[:-1])
    name, default = _DISCRIMINATOR_DEFAULTS.get(str(path[0]), ("outcome", ""))
    if len(path) > 2 and path[0] == "outcomes":
        name, default = "outcome", ""
    chosen = parent.get(name, default) if isinstance(parent, dict) else default
    return f"does not apply to {name}: {chosen} (remove it)"


def _get(data: JSON, path: Path_) -> JSON:
    for part in path:
        data = data[part]
    return data


def _did_you_mean(word: JSON, choices: Iterable[JSON]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _show(value: JSON) -> str:
    """A value as a YAML author wrote it, short and on one line."""
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _dotted(path: Path_) -> str:
    """`writes[0].columns.price`; odd keys in quotes, with no `:` so the path stays one field."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out else part
        else:
            out += "[" + json.dumps(part).replace(":", "\\u003a") + "]"
    return out


# --- project defaults (syncrun.yaml) ------------------------------------------------------------------
@dataclass(frozen=True)
class Project:
    """Defaults shared by the sources below a syncrun.yaml; the built-in ones when there is none."""

    status_table: spec.QualifiedName = spec.QualifiedName(None, "sync_status")
    status_key: str = "appid"
    key: str = "appid"
    key_type: str = "int"


def find_project(source: Path) -> Path | None:
    """The nearest syncrun.yaml, walking up from the source file's directory."""
    directory = source.absolute().parent
    for candidate in (directory, *directory.parents):
        if (candidate / PROJECT_FILE).is_file():
            return candidate / PROJECT_FILE
    return None


def _project(source: Path) -> tuple[Project, list[Problem]]:
    found = find_project(source)
    if found is None:
        return Project(), []
    shown = found if source.is_absolute() else Path(os.path.relpath(found))
    doc, problems = _read(found.read_bytes(), str(shown))
    if doc is not None:
        problems += _schema_problems(doc, _validator("project.schema.json"))
    if doc is None or problems:
        return Project(), problems
    status, entities = doc.data.get("status", {}), doc.data.get("entities", {})
    default = Project()
    return Project(
        status_table=_qualified(status["table"]) if "table" in status else default.status_table,
        status_key=status.get("key", default.status_key),
        key=entities.get("key", default.key),
        key_type=entities.get("key_type", default.key_type),
    ), []


def _qualified(text: str) -> spec.QualifiedName:
    schema_name, _, name = text.rpartition(".")
    return spec.QualifiedName(schema_name or None, name)

