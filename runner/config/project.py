"""syncrun.yaml: the defaults and shared `auth:` blocks of the sources below it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runner import spec

PROJECT_FILE = "syncrun.yaml"

_SYNC_STATUS = spec.QualifiedName(None, "sync_status")


@dataclass(frozen=True)
class Project:
    """Defaults shared by the sources below a syncrun.yaml; the built-in ones when there is none."""

    status_table: spec.QualifiedName = _SYNC_STATUS
    status_key: str = "appid"
    key: str = "appid"
    key_type: str = "int"
    # The shared blocks a source may `use:` (None: a block with problems; no map: the file has some).
    auth: Mapping[str, spec.Auth | None] | None = field(default_factory=dict)
    file: str | None = None  # the syncrun.yaml, as messages name it (None: there is none)


def find_project(source: Path) -> Path | None:
    """The nearest syncrun.yaml, walking up from the source file's directory."""
    directory = source.absolute().parent
    for candidate in (directory, *directory.parents):
        if (candidate / PROJECT_FILE).is_file():
            return candidate / PROJECT_FILE
    return None


def qualified(text: str) -> spec.QualifiedName:
    schema_name, _, name = text.rpartition(".")
    return spec.QualifiedName(schema_name or None, name)
