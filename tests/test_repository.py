"""Repository-level checks: bundled sources load, the schema is valid and agrees with runner/spec/."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import zipfile
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from runner import config, functions, spec

ROOT = Path(__file__).parent.parent
SCHEMA = config.schema("source.schema.json")
PROJECT_SCHEMA = config.schema("project.schema.json")

# Schema object -> the dataclass it becomes. Property names and field names must match.
OBJECTS: dict[str, type] = {
    "#": spec.Source,
    "entities": spec.Entities,
    "request": spec.Request,
    "batch": spec.Batch,
    "pagination": spec.Pagination,
    "rate_limit": spec.RateLimit,
    "retry": spec.Retry,
    "outcome_rule": spec.OutcomeRule,
    "write": spec.Write,
    "lookup": spec.Lookup,
    "status": spec.Status,
    "step": spec.Step,
    "auth": spec.Auth,
}
# Fields that are not YAML keys, with the reason.
NOT_IN_YAML = {
    (spec.Source, "path"): "where the file was read from, not written in it",
    (spec.RateLimit, "form"): "which keys were written: requests/per (window) or rate (token)",
    (spec.Write, "delete_by"): "worked out from key, replace_by and columns for outcome: delete (runner.deletes)",
    (spec.Auth, "in_"): "the YAML key `in`, a Python keyword",
    (spec.Auth, "shared"): "the name `use:` took the block by, from syncrun.yaml (runner.authblocks)",
}
NOT_IN_SPEC = {
    ("rate_limit", "rate"): "the token form's rate, stored as requests 1 per 1/rate seconds",
    ("auth", "in"): "stored as in_ (a Python keyword)",
    ("auth", "use"): "replaced by the syncrun.yaml block it names (its name kept as shared)",
}
ENUMS: dict[tuple[str, ...], type[StrEnum]] = {
    ("entities", "type"): spec.SelectionType,
    ("pagination", "type"): spec.PaginationType,
    ("pagination", "missing_next"): spec.MissingNext,
    ("rate_limit", "shared"): spec.LimitScope,
    ("outcome_rule", "outcome"): spec.Outcome,
    ("write", "mode"): spec.WriteMode,
    ("write", "on_delete"): spec.OnDelete,
    ("step", "when"): spec.StepWhen,
    ("auth", "type"): spec.AuthType,
    ("auth", "in"): spec.KeyIn,
    ("auth", "client_auth"): spec.ClientAuth,
}


def _object(name: str) -> dict[str, Any]:
    return SCHEMA if name == "#" else SCHEMA["$defs"][name]


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return {**SCHEMA["$defs"][ref.rsplit("/", 1)[1]], **node} if ref else node


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every (path, property schema) in a schema."""
    out = []
    if isinstance(node, dict):
        for name, child in node.get("properties", {}).items():
            out.append((f"{path}.{name}", child))
        for key, child in node.items():
            if key not in ("if", "then", "else", "allOf", "not"):  # branch constraints, not declarations
                out += _walk(child, f"{path}/{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            out += _walk(child, f"{path}[{index}]")
    return out


@pytest.mark.parametrize("name", ["source.schema.json", "project.schema.json"])
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    """The schemas pass the metaschema."""
    Draft202012Validator.check_schema(config.schema(name))


@pytest.mark.parametrize("source", config.default_paths(ROOT), ids=lambda p: p.name)
def test_bundled_sources_load(source: Path) -> None:
    """Every sources/*.yaml loads and names its schema for editors."""
    assert source.read_text().startswith("# yaml-language-server: $schema=")
    assert isinstance(config.load(source), spec.Source)


def test_project_file_loads() -> None:
    """syncrun.yaml is valid and names its schema."""
    assert (ROOT / "syncrun.yaml").read_text().startswith("# yaml-language-server: $schema=schemas/project")
    assert config.find_project(ROOT / "sources" / "example.yaml") == ROOT / "syncrun.yaml"


@pytest.mark.parametrize("name", OBJECTS)
def test_schema_properties_are_the_spec_fields(name: str) -> None:
    """Each schema object's keys are its dataclass's fields (exceptions listed in NOT_IN_YAML)."""
    cls = OBJECTS[name]
    fields = {f.name for f in dataclasses.fields(cls) if (cls, f.name) not in NOT_IN_YAML}
    assert {key for key in _object(name)["properties"] if (name, key) not in NOT_IN_SPEC} == fields


@pytest.mark.parametrize("name", OBJECTS)
def test_schema_defaults_are_the_dataclass_defaults(name: str) -> None:
    """A `default` documented in the schema is the value the loader fills in."""
    cls = OBJECTS[name]
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    for key, node in _object(name)["properties"].items():
        node = _resolve(node)
        if "default" not in node or key not in defaults:
            continue
        documented = node["default"]
        if node.get("title") == "duration":
            documented = config.parse_duration(documented)
        elif node.get("title") == "size":
            documented = config.parse_size(documented)
        assert documented == defaults[key], f"{name}.{key}"


def test_defaults_without_a_dataclass_default() -> None:
    """The few defaults the loader fills itself agree with the schema too."""
    entities = SCHEMA["$defs"]["entities"]["properties"]
    assert entities["limit"]["default"] == config.DEFAULT_LIMIT
    assert entities["type"]["default"] == spec.SelectionType.DEFAULT
    assert SCHEMA["$defs"]["rate_limit"]["properties"]["shared"]["default"] == spec.LimitScope.PROCESS
    project = PROJECT_SCHEMA["properties"]
    assert project["status"]["properties"]["table"]["default"] == str(config.Project().status_table)
    assert project["entities"]["properties"]["key_type"]["default"] == config.Project().key_type


@pytest.mark.parametrize("where", ENUMS, ids=".".join)
def test_schema_enums_are_the_spec_enums(where: tuple[str, str]) -> None:
    """Allowed values in the schema are exactly the StrEnum's values."""
    obj, key = where
    assert _resolve(_object(obj)["properties"][key])["enum"] == [e.value for e in ENUMS[where]]


def test_merge_enum() -> None:
    """merge: column -> replace | greatest | keep_existing_if_null."""
    merge = SCHEMA["$defs"]["write"]["properties"]["merge"]["additionalProperties"]["enum"]
    assert merge == [m.value for m in spec.Merge]


def test_every_property_is_described() -> None:
    """The schema is the reference for YAML authors: every property says what it is."""
    undescribed = [
        path for path, node in _walk(SCHEMA) + _walk(PROJECT_SCHEMA) if not _resolve(node).get("description")
    ]
    assert undescribed == []


def test_objects_are_strict() -> None:
    """Every object with declared properties refuses unknown keys."""
    for path, node in _walk({"properties": {"#": SCHEMA}}) + _walk({"properties": {"#": PROJECT_SCHEMA}}):
        node = _resolve(node)
        if "properties" in node and node.get("type") == "object":
            assert node.get("additionalProperties") is False, path
    for name, definition in SCHEMA["$defs"].items():
        if "properties" in definition:
            assert definition.get("additionalProperties") is False, name


def test_custom_functions_are_documented() -> None:
    """Every custom JMESPath function is listed in the schema and in the functions docstring."""
    text = SCHEMA["$defs"]["mapping"]["description"]
    listed = {name.strip(" .") for name in text.split("you can use:")[1].split(",")}
    assert listed == set(functions.CUSTOM_FUNCTIONS)
    doc = functions.__doc__ or ""
    assert [name for name in sorted(functions.CUSTOM_FUNCTIONS) if f"{name}(" not in doc] == []


@pytest.mark.slow
def test_wheel_carries_the_schema(tmp_path: Path) -> None:
    """An installed package finds runner/schemas/source.schema.json without the checkout's schemas/."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        check=True,
    )
    (wheel,) = wheels.glob("syncrun-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        assert "runner/schemas/source.schema.json" in archive.namelist()
        assert "runner/schemas/project.schema.json" in archive.namelist()
        archive.extractall(site)
    script = (
        "import sys; from pathlib import Path; from runner import config, sourcefile\n"
        "assert not (Path(sourcefile.__file__).parent.parent / 'schemas').exists()\n"
        "print(config.validate([Path(sys.argv[1])]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "sources" / "example.yaml")],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": []}")
