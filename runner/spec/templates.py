"""`{column}`, `${env.X}`, `${secret.X}` and literal text: a request value's parsed template."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Literal:
    text: str


@dataclass(frozen=True, slots=True)
class Column:
    """`{name}` in a template: an entity column (percent-encoded when it lands in a URL)."""

    name: str


@dataclass(frozen=True, slots=True)
class Setting:
    """`${env.NAME:-default}` (visible) or `${secret.NAME}` (redacted everywhere). Resolved at run start."""

    kind: str  # "env" | "secret" | "incremental" (the watermark: runner/watermarks.py)
    name: str
    default: str | None = None

    @property
    def secret(self) -> bool:
        return self.kind == "secret"


Segment = Literal | Column | Setting


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    segments: tuple[Segment, ...]

    @property
    def columns(self) -> frozenset[str]:
        return frozenset(s.name for s in self.segments if isinstance(s, Column))

    @property
    def settings(self) -> tuple[Setting, ...]:
        return tuple(s for s in self.segments if isinstance(s, Setting))
