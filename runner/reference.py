"""The source-format reference, generated from schemas/source.schema.json and project.schema.json (the
one source of truth).

    python -m runner.reference > docs/reference.md

One table per object (the top level, then each object definition in order of first use), one row
per key: its type (linked to the definition it refers to), whether it is required, its default and
its description with an example. Then the value types (duration, size, mapping, ...).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

from runner import config

Schema = dict[str, Any]


def _ref_name(node: Schema) -> str | None:
    ref = node.get("$ref")
    return str(ref).rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return f"`{text}`" if "`" not in text else f"`` {text} ``"


def _type(node: Schema, defs: Schema) -> str:
    """A short type for a property: a link to its definition, an enum, a list or map of something."""
    name = _ref_name(node)
    if name is not None:
        target = defs.get(name, {})
        return f"[{name}](#{name})" if _is_object(target) or "title" not in target else f"[{target['title']}](#{name})"
    if "enum" in node:
        return "one of " + ", ".join(_code(v) for v in node["enum"])
    if "const" in node:
        return _code(node["const"])
    kinds = node.get("type")
    if isinstance(kinds, list):
        if "object" in kinds and isinstance(node.get("then"), dict) and _ref_name(node["then"]):
            others = [k for k in kinds if k != "object"]
            alt = _code(node["else"]["const"]) if "const" in node.get("else", {}) else " or ".join(others)
            return f"{_type(node['then'], defs)} or {alt}"
        return " or ".join(kinds)
    if kinds == "array":
        return "list of " + _type(node.get("items", {}), defs)
    if kinds == "object" and isinstance(node.get("additionalProperties"), dict):
        return "map of name → " + _type(node["additionalProperties"], defs)
    if kinds == "object" and "properties" in node:
        return "object"
    return str(kinds or "any")


def _is_object(node: Schema) -> bool:
    return node.get("type") == "object" and "properties" in node


def _description(node: Schema, defs: Schema) -> str:
    text = node.get("description")
    name = _ref_name(node)
    if text is None and name is not None:
        text = defs[name].get("description")
    parts = [text or ""]
    examples = node.get("examples") or []
    if examples:
        parts.append("E.g. " + ", ".join(_code(e) for e in examples[:3]) + ".")
    bounds = [f"{label} {node[key]}" for key, label in (("minimum", "min"), ("maximum", "max")) if key in node]
    if bounds:
        parts.append("(" + ", ".join(bounds) + ")")
    return _cell(" ".join(p for p in parts if p))


def _table(node: Schema, defs: Schema) -> Iterator[str]:
    required = set(node.get("required", []))
    yield "| key | type | required | default | description |"
    yield "|---|---|---|---|---|"
    for key, prop in node.get("properties", {}).items():
        default = _code(prop["default"]) if "default" in prop else ""
        yield (
            f"| `{key}` | {_cell(_type(prop, defs))} | {'yes' if key in required else ''} | {default} |"
            f" {_description(prop, defs)} |"
        )


def _refs(node: Any) -> Iterator[str]:
    """Definition names referenced under `node`, in document order."""
    if isinstance(node, dict):
        name = _ref_name(node)
        if name is not None:
            yield name
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _ordered_objects(schema: Schema) -> list[str]:
    """Object definitions in order of first use, walking from the top level (breadth first)."""
    defs = schema.get("$defs", {})
    order: list[str] = []
    queue = list(_refs(schema.get("properties", {})))
    while queue:
        name = queue.pop(0)
        if name in order or not _is_object(defs.get(name, {})):
            continue
        order.append(name)
        queue += list(_refs(defs[name].get("properties", {})))
    order += [n for n, d in defs.items() if _is_object(d) and n not in order]
    return order


def render(schema: Schema, project: Schema | None = None) -> str:
    """The Markdown reference for a JSON Schema shaped like source.schema.json; with `project`
    (project.schema.json), a section on syncrun.yaml before the value types."""
    defs = schema.get("$defs", {})
    lines = [
        "# Source file reference",
        "",
        "<!-- Generated from schemas/source.schema.json by `python -m runner.reference > docs/reference.md`."
        " Do not edit: edit the schema and regenerate (tests/test_reference.py fails when this is stale). -->",
        "",
        _cell(schema.get("description", "")),
        "",
        "Start a file with `# yaml-language-server: $schema=../schemas/source.schema.json` and editors that"
        " speak the YAML language server complete and check it. `syncrun validate` checks everything here"
        " and more (JMESPath syntax, function names, placeholders), printing `file:line: path: problem`.",
        "",
        "## Top level",
        "",
        *_table(schema, defs),
    ]
    for name in _ordered_objects(schema):
        node = defs[name]
        lines += ["", f'<a id="{name}"></a>', "", f"## {name}", "", _cell(node.get("description", "")), ""]
        lines += list(_table(node, defs))
    if project is not None:
        lines += ["", '<a id="project"></a>', "", "## syncrun.yaml (the project file)", ""]
        lines += [_cell(project.get("description", "")), "", *_table(project, defs)]
        for key, node in project.get("properties", {}).items():
            if _is_object(node):
                lines += ["", f"### syncrun.yaml: {key}", "", *_table(node, defs)]
    lines += ["", "## Value types", ""]
    for name, node in defs.items():
        if _is_object(node):
            continue
        lines += [f'<a id="{name}"></a>', "", f"### {node.get('title', name)}", "", _cell(node.get("description", ""))]
        facts = []
        if "pattern" in node:
            facts.append(f"pattern {_code(node['pattern'])}")
        if "enum" in node:
            facts.append("one of " + ", ".join(_code(v) for v in node["enum"]))
        if node.get("examples"):
            facts.append("e.g. " + ", ".join(_code(e) for e in node["examples"][:3]))
        if facts:
            lines += ["", "; ".join(facts) + "."]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def document() -> str:
    """docs/reference.md: the source file, then syncrun.yaml."""
    return render(config.schema("source.schema.json"), config.schema("project.schema.json"))


def main() -> int:
    sys.stdout.write(document())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
