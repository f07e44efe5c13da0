"""architecture: the house's shape, read from the source (AST only: nothing under runner/ is imported).

- every module under runner/ has at most MAX_LINES lines (house style 7: rooms stay small);
- the imports the map forbids outright do not happen (FORBIDDEN: the core knows no terminal, the
  HTTP side knows no writer, mapping knows no database, outcomes knows no fetch);
- docs/architecture.md's module table is the map: every module has a row, every row names a module,
  and a module imports only modules below its row ("a module imports only modules below it").

Every import counts: at the top of a module, inside a function (a late import hides a dependency, it
does not remove it) and under `if TYPE_CHECKING:`. Type-only imports count because the rule is about
the direction of the flow, not about import time: a module that names another's type in its
signatures knows that module's concepts, and a type-only import is how a back-edge (and a cycle)
hides. The fix for one is the same as for any other upward import: move the type down to a module
both can import (as `Reply` moved from fetch to runner.reply, and `EntityResult` from writer to
runner.results).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "runner"
MAP = ROOT / "docs" / "architecture.md"
MAX_LINES = 400

# Outside the map: the package itself (`runner/__init__.py` holds only `__version__`, which any module
# may read) and `python -m runner` (`__main__`, the entry point that only calls cli.main).
UNMAPPED = frozenset({"", "__main__"})

# (importer, forbidden imports, why and what to do). A name covers its package's modules too:
# `engine` is also `engine.pipeline` once the engine is a package; `commands` is cli's subcommands.
FORBIDDEN: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "engine",
        ("progress", "cli", "commands"),
        "the core knows no terminal: emit an event to the observers the command line passes in"
        " (the progress bar, the log lines and the step summary observe it)",
    ),
    *(
        (
            http,
            ("writer", "targets", "writeplan", "statements"),
            "the HTTP side knows nothing of writing: hand rows on through the engine",
        )
        # fetch and client, and the modules split out of them (transport, compiled request, paging, body,
        # reply), and the credentials they send (auth, oauth, refusals, tokens)
        for http in (
            "fetch",
            "client",
            "aiotransport",
            "aiowire",
            "plans",
            "pagination",
            "pagestyles",
            "body",
            "jsontext",
            "reply",
            "auth",
            "oauth",
            "refusals",
            "tokens",
        )
    ),
    (
        "commands",
        ("cli",),
        "a subcommand takes what it needs from below: run's options and their defaults are commands.options'",
    ),
    ("mapping", ("database",), "mapping turns a reply into rows without a connection: the writer writes them"),
    (
        "outcomes",
        ("fetch",),
        "classifying a reply needs only the reply: take `Reply` from the lower module both use (runner.reply)",
    ),
)


@dataclass(frozen=True)
class Import:
    importer: str  # module name under runner/, e.g. "engine" or "ratelimit.local"
    imported: str
    line: int
    where: str  # "", " (inside a function)", " (under TYPE_CHECKING)"

    def __str__(self) -> str:
        return f"{path_of(self.importer)}:{self.line} imports runner.{self.imported}{self.where}"


def module_name(path: Path) -> str:
    parts = path.relative_to(RUNNER).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(RUNNER.rglob("*.py"))}


def path_of(module: str) -> str:
    return str(MODULES[module].relative_to(ROOT))


def within(module: str, name: str) -> bool:
    """`module` is `name` or one of its package's modules."""
    return module == name or module.startswith(name + ".")


def _resolved(name: str) -> str | None:
    """The runner module `name` (dotted, under runner) is, or is defined in; None outside runner."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name if name in MODULES else None


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.startswith("runner."):
                found = _resolved(alias.name.removeprefix("runner."))
                if found is not None:
                    yield found
        return
    if node.level:  # relative: from . import x / from .x import y
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
        parent = ".".join([*base, *([node.module] if node.module else [])])
    elif node.module == "runner" or (node.module or "").startswith("runner."):
        parent = (node.module or "").removeprefix("runner").removeprefix(".")
    else:
        return
    for alias in node.names:
        submodule = f"{parent}.{alias.name}" if parent else alias.name
        found = submodule if submodule in MODULES else _resolved(parent)
        if found is not None:
            yield found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str) -> list[Import]:
    """Every import of another runner module, anywhere in `module` (functions, TYPE_CHECKING too)."""
    found: list[Import] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            here = where
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                here = where or " (inside a function)"
            elif isinstance(child, ast.If) and _is_type_checking(child):
                here = " (under TYPE_CHECKING)"
            if isinstance(child, ast.Import | ast.ImportFrom):
                targets = dict.fromkeys(target for target in _targets(child, module) if target != module)
                found.extend(Import(module, target, child.lineno, here) for target in targets)
            visit(child, here)

    visit(ast.parse(MODULES[module].read_text(), str(MODULES[module])), "")
    return found


ALL_IMPORTS = [found for module in MODULES for found in imports_of(module)]


# --- the map: docs/architecture.md's module table ---------------------------------------------------
def map_rows() -> list[tuple[int, list[str]]]:
    """(line number, module names) of each row, top first. In the first cell, backticked names are
    modules; names in parentheses are the modules of the package before them (`commands` (`run`, ...)),
    or more modules of the row when the parentheses start with `+` (`config` (+ `exprcheck`))."""
    lines = MAP.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| module |"))
    rows: list[tuple[int, list[str]]] = []
    for number, line in enumerate(lines[start + 2 :], start + 3):
        if not line.startswith("|"):
            break
        names: list[str] = []
        depth, siblings, last = 0, False, ""
        for token in re.finditer(r"`([\w./]+)`|[()+]", line.split("|")[1]):
            text = token[0]
            if text == "(":
                depth, siblings = depth + 1, False
            elif text == ")":
                depth -= 1
            elif text == "+":
                siblings = siblings or depth > 0
            else:
                name = token[1].strip("/").replace("/", ".")
                if depth and not siblings:
                    names.append(f"{last}.{name}")
                else:
                    names.append(name)
                    last = name
        rows.append((number, names))
    return rows


ROWS = map_rows()
ROW_OF = {name: index for index, (_, names) in enumerate(ROWS) for name in names}


def row_of(module: str) -> int | None:
    """The row of `module`, or of the package it belongs to (its own row first)."""
    name = module
    while name and name not in ROW_OF:
        name = name.rpartition(".")[0]
    return ROW_OF.get(name)


def shown(row: int) -> str:
    number, names = ROWS[row]
    return f"docs/architecture.md:{number} (`{'`, `'.join(names)}`)"


# --- the tests -------------------------------------------------------------------------------------------
def test_every_module_has_at_most_400_lines() -> None:
    sizes = {module: len(path.read_text().splitlines()) for module, path in MODULES.items()}
    too_long = [
        f"{path_of(module)}: {lines} lines, {lines - MAX_LINES} over {MAX_LINES}: split it along the seam it"
        " already has into modules named by nouns (no utils), and give each a row in docs/architecture.md"
        for module, lines in sorted(sizes.items())
        if lines > MAX_LINES
    ]
    assert not too_long, "\n".join(too_long)


def test_no_forbidden_imports() -> None:
    broken = [
        f"{found}: forbidden ({importer} must not import {', '.join(forbidden)}): {why}"
        for importer, forbidden, why in FORBIDDEN
        for found in ALL_IMPORTS
        if within(found.importer, importer) and any(within(found.imported, name) for name in forbidden)
    ]
    assert not broken, "\n".join(broken)


def test_every_module_has_a_row_in_the_map() -> None:
    missing = [
        f"{path_of(module)} has no row in docs/architecture.md's module table: add one for `{module}` below"
        " every module that imports it and above every module it imports, saying what it owns"
        for module in sorted(MODULES)
        if module not in UNMAPPED and row_of(module) is None
    ]
    assert not missing, "\n".join(missing)


def test_every_row_of_the_map_names_a_module() -> None:
    unknown = [
        f"{shown(row)}: no module runner/{name.replace('.', '/')}.py (nor a package): fix the name or drop it"
        for name, row in sorted(ROW_OF.items())
        if name not in MODULES
    ]
    assert not unknown, "\n".join(unknown)


def test_imports_go_down_the_map() -> None:
    """A module imports only modules below its row; modules sharing a row (a package's modules,
    `config` (+ `exprcheck`)) form one layer and may import each other."""
    upward: list[str] = []
    for found in ALL_IMPORTS:
        here, there = row_of(found.importer), row_of(found.imported)
        if here is None or there is None or there >= here:
            continue
        upward.append(
            f"{found}, which the map lists above it: {shown(there)} is above {shown(here)}, and a module"
            f" imports only modules below it. Move the name it needs down (into runner.{found.importer} or a module"
            " below both); if the map is what is wrong, move the row"
        )
    assert not upward, "\n".join(upward)
