"""What every section's builder shares: the document, where problems go, which parts the schema
already refused, and the values and expressions any section may hold."""

from __future__ import annotations

import json
import re
from pathlib import Path

from runner import spec
from runner.config.project import Project
from runner.config.units import parse_duration, parse_size
from runner.errors import Problem
from runner.exprcheck import Roots, compile_checked
from runner.expressions import JSON, Expression
from runner.sourcefile import Document, Path_, show

RUN_FIELDS = frozenset({"now", "today", "job_id", "started_at"})

# What pagination expressions are evaluated over (runner/pagination.context): one reply, no entity.
PAGINATION_ROOTS: Roots = {"status": None, "headers": None, "body": None}

_WHOLE_LINK = re.compile(r'headers\s*\.\s*("?)link\1(?![\w"-])')

_SQL_PARAMETER = re.compile(r"%\((\w+)\)s")


class Builder:
    """The ground each section's builder stands on (runner/config/source.py mixes them into one). A
    section with schema errors is skipped (its problems are reported already) while the others are
    still checked, so one run reports all."""

    def __init__(self, doc: Document, path: Path, project: Project, problems: list[Problem], blocked: set[Path_]):
        self.doc, self.path, self.project, self.problems, self.blocked = doc, path, project, problems, blocked
        self.raw: dict[str, JSON] = doc.data if isinstance(doc.data, dict) else {}

    def add(self, path: Path_, message: str) -> None:
        self.problems.append(self.doc.problem(path, message))

    def usable(self, path: Path_) -> bool:
        return not any(error[: len(path)] == path for error in self.blocked)

    def section(self, key: str, default: JSON = None) -> JSON:
        """The section's raw value; None when it has schema problems (already reported) or is missing.
        A list section is usable unless the list itself is wrong: its items are checked one by one."""
        usable = (key,) not in self.blocked if isinstance(self.raw.get(key), list) else self.usable((key,))
        return self.raw.get(key, default) if usable else None

    def mapping_roots(self, entity: frozenset[str] | None, *, record: bool = True, item: bool = False) -> Roots:
        """The mapping context: `records` sees no record yet, and only a write with rows has `item`."""
        roots: dict[str, frozenset[str] | None] = {"record": None, "item": None} if item else {"record": None}
        roots |= {
            "entity": entity,
            "response": frozenset({"status", "headers", "body"}),
            "body": None,
            "run": RUN_FIELDS,
        }
        return roots if record else {k: v for k, v in roots.items() if k != "record"}

    def assignments(self, path: Path_, raw: dict[str, JSON], roots: Roots) -> tuple[spec.Field, ...]:
        """`column: expression` pairs; a plain true/false/number/null is that literal value."""
        fields = []
        for column, value in raw.items():
            text = value if isinstance(value, str) else f"`{json.dumps(value)}`"
            if (expression := self.expression((*path, column), text, roots)) is not None:
                fields.append(spec.Field(column, expression))
        return tuple(fields)

    def duration(self, path: Path_, value: JSON, *, positive: bool = False) -> float:
        try:
            seconds = parse_duration(value)  # the schema has checked the form, not the range
        except ValueError as error:
            self.add(path, str(error))
            return 1.0  # a stand-in so the other checks go on; the problem stops the load
        if positive and seconds <= 0:
            self.add(path, f"{show(value)} is out of range: must be more than 0")
        return seconds

    def size(self, path: Path_, value: JSON) -> int:
        try:
            size = parse_size(value)
        except ValueError as error:
            self.add(path, str(error))
            return 1
        if size == 0:  # like a 0s timeout: every response would fail
            self.add(path, f"{show(value)} is out of range: must be more than 0")
            return 1
        return size

    def optional_expression(self, path: Path_, roots: Roots | None, raw: JSON = None) -> Expression | None:
        raw = self.raw if raw is None else raw
        key = path[-1]
        return self.expression(path, raw[key], roots) if key in raw and self.usable(path) else None

    def reply_expression(self, path: Path_, text: str) -> Expression | None:
        """An expression over one reply. Before headers were visible these read the body itself, so an
        unknown name is most likely a body field: the message says how to write it now."""
        expression, messages = compile_checked(text, PAGINATION_ROOTS)
        for message in messages:
            name = re.match(r"unknown name '([^']*)'", message)
            hint = f"; the reply body is `body`: write body.{name[1]})" if name else ""
            self.add(path, message[:-1] + hint if hint else message)
        if expression is not None and _WHOLE_LINK.search(text) and path[-1] in ("cursor", "next"):
            self.add(path, 'headers.link is the whole Link header (<url>; rel="next", ...): use type: link')
            return None
        return expression

    def expression(self, path: Path_, text: str, roots: Roots | None) -> Expression | None:
        """Compiled once; unknown functions and context names are problems (jmespath checks neither)."""
        expression, messages = compile_checked(text, roots)
        for message in messages:
            self.add(path, message)
        return expression


def check_sql(builder: Builder, path: Path_, text: str, *, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    used = set(_SQL_PARAMETER.findall(text))
    for name in sorted(used - set(allowed)):
        builder.add(path, f"unknown parameter %({name})s (use {', '.join(f'%({a})s' for a in allowed)})")
    for name in required:
        if name not in used:
            builder.add(path, f"the query must use %({name})s: the engine pages through it by key")
    if "%" in _SQL_PARAMETER.sub("", text).replace("%%", ""):
        builder.add(path, "a literal % must be written %% (parameters are written %(name)s)")
