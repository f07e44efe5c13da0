"""Source files: YAML -> JSON Schema -> `spec.Source`, reporting every problem as `file:line: path: message`.

The only package that sees raw YAML. Reading keeps each node's line; the schema checks the shape;
then each section is built (templates parsed, JMESPath compiled once, durations parsed, defaults
filled) with the cross-field checks the schema cannot express. Does not resolve settings: that is
`templating.resolve` at run start, so `validate` never needs them set.

This module is what others import; each section is built in its own module (runner/config/source.py
puts them together), durations and sizes in units.py, syncrun.yaml's defaults in project.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from runner import authblocks, spec
from runner.config.entities import DEFAULT_LIMIT
from runner.config.outcomes import DEFAULT_OUTCOMES
from runner.config.project import PROJECT_FILE, Project, find_project, qualified
from runner.config.source import SourceBuilder as _Builder  # tests patch a section's method on it
from runner.config.units import MAX_DURATION, parse_duration, parse_size
from runner.errors import ConfigError, Problem
from runner.overrides import Override, blame
from runner.overrides import apply as apply_overrides
from runner.schemacheck import check
from runner.schemacheck import schema as schema  # re-exported: `config.schema()` for the CLI and tests
from runner.sourcefile import MAX_FILE_BYTES, read

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_OUTCOMES",
    "MAX_DURATION",
    "PROJECT_FILE",
    "Project",
    "default_paths",
    "find_project",
    "load",
    "loads",
    "parse_duration",
    "parse_size",
    "schema",
    "validate",
]


def default_paths(root: Path | None = None) -> list[Path]:
    """The bundled sources: `sources/*.yaml` under `root` (default: the current directory)."""
    return sorted((root or Path()).joinpath("sources").glob("*.yaml"))


def load(path: Path, overrides: Sequence[Override] = ()) -> spec.Source:
    """Read one source file and return a ready-to-run Source; ConfigError lists every problem.
    `overrides` (`--set`, runner/overrides.py) change the YAML as read, before it is validated."""
    try:
        with path.open("rb") as file:
            text = file.read(MAX_FILE_BYTES + 1)  # enough to tell it is too large, never a whole huge file
    except OSError as error:  # a missing or unreadable file is the user's to fix, not a crash
        raise ConfigError([Problem(str(path), 1, "", f"cannot read the file: {error.strerror}")]) from None
    return loads(text, path, overrides)


def loads(text: bytes | str, path: Path, overrides: Sequence[Override] = ()) -> spec.Source:
    """Like `load`, for text already read; `path` names the file in messages and finds syncrun.yaml."""
    doc, problems = read(text, str(path))
    if doc is None:
        raise ConfigError(problems)
    if overrides and (refused := apply_overrides(doc, overrides)):
        raise ConfigError(refused)
    project, project_problems = _project(path)
    schema_problems, blocked = check(doc, "source.schema.json")
    problems += project_problems + schema_problems
    source = _Builder(doc, path, project, problems, blocked).source()
    if problems or source is None:
        raise ConfigError(blame(list(dict.fromkeys(problems)), overrides))
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


def _project(source: Path) -> tuple[Project, list[Problem]]:
    found = find_project(source)
    if found is None:
        return Project(), []
    shown = found if source.is_absolute() else Path(os.path.relpath(found))
    doc, problems = read(found.read_bytes(), str(shown))
    schema, blocked = check(doc, "project.schema.json") if doc is not None else ([], set())
    # A broken section keeps the others: a problem in `auth:` must not also drop the entity key, or
    # every source below gets a second, misleading error about `appid` (review16b N11).
    if doc is None or not isinstance(doc.data, dict) or any(p[:1] in ((), ("status",), ("entities",)) for p in blocked):
        return Project(auth=None, file=str(shown)), problems + schema
    status, entities = doc.data.get("status", {}), doc.data.get("entities", {})
    default = Project()
    # The shared auth blocks are built like a source's own, their problems placed in syncrun.yaml;
    # not when the file has other problems (None: a source's `use:` reports nothing more).
    blocks: Mapping[str, spec.Auth | None] | None = None
    if problems or schema:
        problems += schema
    else:
        blocks = authblocks.project_blocks(_Builder(doc, shown, default, problems, set()), doc.data.get("auth"))
    return Project(
        status_table=qualified(status["table"]) if "table" in status else default.status_table,
        status_key=status.get("key", default.status_key),
        key=entities.get("key", default.key),
        key_type=entities.get("key_type", default.key_type),
        auth=blocks,
        file=str(shown),
    ), problems
