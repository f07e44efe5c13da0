"""conformance: a yes without jsonschema must be jsonschema's yes, on every file we have and on broken
variants of them (a yes jsonschema would not say lets a bad file through with no message at all)."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema._utils import equal as jsonschema_equal  # type: ignore[import-untyped]

from runner import conformance, schemacheck, sourcefile
from runner.conformance import Schemas, equal

ROOT = Path(__file__).parent.parent
FOLDERS = (ROOT / "sources", ROOT / "tests" / "data", ROOT / "examples")
FILES = [
    *sorted(path for folder in FOLDERS for path in folder.rglob("*.yaml") if "replays" not in path.parts),
    ROOT / "syncrun.yaml",
]


def _schema_name(path: Path) -> str:
    return "project.schema.json" if path.name == "syncrun.yaml" else "source.schema.json"


def _documents() -> list[tuple[Path, Any]]:
    found = []
    for path in FILES:
        doc, _ = sourcefile.read(path.read_bytes(), str(path))
        if doc is not None:
            found.append((path, doc.data))
    return found


def _valid(data: Any, name: str) -> bool:
    return not any(True for _ in schemacheck.validator(name).iter_errors(data))


def _schemas() -> Schemas:
    return Schemas({name: schemacheck.schema(name) for name in schemacheck.SCHEMAS})


def test_every_file_gets_jsonschemas_verdict() -> None:
    schemas = _schemas()
    documents = _documents()
    assert len(documents) > 50
    for path, data in documents:
        assert schemas.fits(data, _schema_name(path)) == _valid(data, _schema_name(path)), path


_VALUES: list[Any] = [None, True, False, 0, 1, -1, 1.0, 1.5, 2**40, "", "x", "1s", "10MB", "appid", "GET", "A b"]
_VALUES += ["https://api.example/x", "${env.X}", [], [1], ["a", "a"], ["a", "b"], [100, 100], {}, {"x": 1}]
_KEYS = ["type", "url", "key", "columns", "table", "when", "outcome", "requests", "per", "unknown", "then", "use"]


def _places(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    places = [path]
    if isinstance(data, dict):
        for key, value in data.items():
            places += _places(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            places += _places(value, (*path, index))
    return places


def _at(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def _mutate(data: Any, rng: random.Random) -> Any:
    data = copy.deepcopy(data)
    for _ in range(rng.choice((1, 1, 2))):
        places = _places(data)
        path = rng.choice(places)
        parent, kind = (_at(data, path[:-1]) if path else None), rng.random()
        other = copy.deepcopy(_at(data, rng.choice(places)))
        if not path or kind < 0.45:
            value = copy.deepcopy(rng.choice([*_VALUES, other]))
            if not path:
                return value
            parent[path[-1]] = value
        elif kind < 0.65 and isinstance(parent, dict):
            del parent[path[-1]]
        elif kind < 0.85 and isinstance(_at(data, path), dict):
            _at(data, path)[rng.choice(_KEYS)] = copy.deepcopy(rng.choice([*_VALUES, other]))
        elif isinstance(_at(data, path), list):
            _at(data, path).append(copy.deepcopy(rng.choice(_at(data, path) or _VALUES)))
        else:
            parent[path[-1]] = other
    return data


@pytest.mark.parametrize("seed", range(4))
def test_broken_variants_get_jsonschemas_verdict(seed: int) -> None:
    """Values of the wrong type or range, keys dropped, added or moved, lists grown with duplicates."""
    schemas, rng = _schemas(), random.Random(seed)
    documents = _documents()
    fits = 0
    for _ in range(400):
        path, data = rng.choice(documents)
        variant = _mutate(data, rng)
        verdict = schemas.fits(variant, _schema_name(path))
        assert verdict == _valid(variant, _schema_name(path)), (path, variant)
        fits += verdict
    assert 0 < fits < 400  # both verdicts were exercised


def test_the_bundled_sources_fit() -> None:
    """Else every run would import jsonschema again, silently (correct, but the start-up pays ~30 ms)."""
    schemas = _schemas()
    for path in [*sorted((ROOT / "sources").glob("*.yaml")), ROOT / "syncrun.yaml"]:
        doc, _ = sourcefile.read(path.read_bytes(), str(path))
        assert doc is not None
        assert schemas.fits(doc.data, _schema_name(path)), path


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "patternProperties": {"^a": {"type": "string"}}},
        {"not": {"type": "object", "patternProperties": {"^a": {"type": "string"}}}},  # unsure is not a no
        {"not": {"type": "object", "format": "email"}},
        {"$ref": "#/$defs/nowhere"},
        {"properties": {"a": {"$id": "https://y.example/other.json", "type": "string"}}},
        {"type": "object", "properties": {"a": {"uniqueItems": True}}},
    ],
)
def test_what_it_does_not_know_is_left_to_jsonschema(schema: dict[str, Any]) -> None:
    schemas = Schemas({"s.json": {"$id": "https://x.example/s.json", **schema}})
    assert not schemas.fits({"a": [[1], [1]]}, "s.json")


@pytest.mark.parametrize(
    ("one", "two"),
    [
        (True, 1),
        (False, 0),
        (1, 1.0),
        (None, False),
        ("1", 1),
        ([1, True], [1, 1]),
        ([1], [1.0]),
        ({"a": 1}, {"a": 1.0}),
        ({"a": True}, {"a": 1}),
        ({"a": 1}, {"b": 1}),
        ([], {}),
        ([[True]], [[True]]),
        ("", None),
    ],
)
def test_equal_is_jsonschemas(one: Any, two: Any) -> None:
    assert equal(one, two) == jsonschema_equal(one, two)
    assert equal(two, one) == jsonschema_equal(two, one)


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        # a known keyword's no, met before an unknown one, turned into a yes under `not` (review revA F4)
        ({"not": {"additionalProperties": False, "patternProperties": {"^x": {}}}}, {"x": 1}),
        ({"not": {"items": False, "prefixItems": [{}]}}, [1]),
        ({"oneOf": [{"additionalProperties": False, "patternProperties": {"^x": {}}}, {"type": "object"}]}, {"x": 1}),
        (
            {"if": {"additionalProperties": False, "patternProperties": {"^x": {}}}, "then": {"required": ["y"]}},
            {"x": 1},
        ),
        ({"not": {"minimum": 0}}, float("nan")),  # jsonschema's comparisons pass a NaN
        ({"oneOf": [{"maximum": 5}, {"type": "number"}]}, float("nan")),
    ],
)
def test_a_no_is_never_a_yes_jsonschema_would_not_say(schema: dict[str, Any], value: Any) -> None:
    root = {"$id": "https://x.example/s.json", **schema}
    if Schemas({"s.json": root}).fits(value, "s.json"):
        assert Draft202012Validator(root).is_valid(value)


def test_dollar_is_the_end_of_the_text_as_in_json_schema(tmp_path: Path) -> None:
    """Python's `$` also matches before a final newline: "mine\n" passed `^[a-z_]...$`, became a
    column `last_mine\n_sync` and a job type with a newline (review revA F3). Both checkers now read
    the patterns as JSON Schema (ECMA 262) does; every anchored pattern in our schemas ends with it."""
    assert conformance.matches("^[a-z]+$", "mine")
    assert not conformance.matches("^[a-z]+$", "mine\n")
    assert conformance.matches("^[a-z$]+$", "a$")  # a `$` in a class is a character
    for name in schemacheck.SCHEMAS:
        for pattern in _patterns(schemacheck.schema(name)):
            assert pattern.endswith("$") or "$" not in pattern.replace("\\$", ""), pattern
    source = (ROOT / "sources" / "example.yaml").read_text()
    for field, line in (("name", "name: example"), ("rate_limit.per", "per: 1s")):
        assert line in source, field
        bad = tmp_path / "bad.yaml"
        bad.write_text(source.replace(line, line.replace(": ", ': "') + '\\n"', 1))
        problems, _ = schemacheck.check(sourcefile.read(bad.read_bytes(), str(bad))[0], "source.schema.json")
        assert problems, field
        assert not schemacheck.validator("source.schema.json").is_valid(yaml.safe_load(bad.read_text()))


def _patterns(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return own + [p for value in node.values() for p in _patterns(value)]
    if isinstance(node, list):
        return [p for value in node for p in _patterns(value)]
    return []
