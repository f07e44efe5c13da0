"""The source-format reference is generated from the JSON Schema and kept up to date."""

from __future__ import annotations

from pathlib import Path

from runner import config, reference

ROOT = Path(__file__).resolve().parent.parent


def test_docs_reference_is_up_to_date() -> None:
    """docs/reference.md is exactly `python -m runner.reference` (regenerate it when the schema changes)."""
    expected = reference.document()
    assert (ROOT / "docs" / "reference.md").read_text() == expected, (
        "docs/reference.md is stale: run `python -m runner.reference > docs/reference.md`"
    )


def test_every_key_and_definition_is_documented() -> None:
    """Every top-level key and every object definition's keys appear in the reference."""
    schema = config.schema("source.schema.json")
    text = reference.render(schema)
    for key in schema["properties"]:
        assert f"| `{key}` |" in text
    for name, node in schema["$defs"].items():
        assert f'<a id="{name}"></a>' in text
        for key in node.get("properties", {}):
            assert f"| `{key}` |" in text


def test_render_types_defaults_and_links() -> None:
    """Refs become links, enums are listed, defaults and required are shown, pipes are escaped."""
    schema = {
        "description": "x",
        "required": ["a"],
        "properties": {
            "a": {"$ref": "#/$defs/obj"},
            "b": {"enum": ["p", "q"], "default": "p", "description": "a | b"},
            "c": {"type": "array", "items": {"$ref": "#/$defs/obj"}},
        },
        "$defs": {"obj": {"type": "object", "description": "An object.", "properties": {"k": {"type": "string"}}}},
    }
    text = reference.render(schema)
    assert "| `a` | [obj](#obj) | yes |  | An object. |" in text
    assert "| `b` | one of `p`, `q` |  | `p` | a \\| b |" in text
    assert "| `c` | list of [obj](#obj) |" in text
