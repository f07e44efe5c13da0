"""Reading a YAML file for config: node lines kept (`Document`: where each value and key is written),
aliases and absurd nesting refused, and the words for a value or a location in it (`show`, `dotted`,
`did_you_mean`) that every problem message uses.

Used by `config` (for source files and syncrun.yaml), `schemacheck` (the JSON Schema's problems) and
the modules config reads sections with (filters, authblocks, overrides, exprcheck, ownership); returns
plain dicts, lists and scalars.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import yaml

from runner.errors import Problem
from runner.expressions import JSON

MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 32  # deeper nesting is never a real source, and PyYAML's composer recurses
# Whole numbers fit PostgreSQL's bigint: anything larger is never a count, size or id a source means,
# and CPython refuses to read an integer of more than 4,300 digits at all (ValueError).
MAX_INT = 2**63 - 1
_SCALAR_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null")}

Path_ = tuple[str | int, ...]  # a location in the document: keys and list indexes


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
