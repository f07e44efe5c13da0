"""Field ownership: two sources must not silently overwrite each other's columns.

When two sources write the same column of the same table (SteamSpy and the CCU source both writing
`daily_metrics.ccu_peak` was a real bug: §7.2 #9 of the reference), `syncrun validate` reports it
unless *every* writer declares how they share the column with a `merge:` rule — `greatest`,
`keep_existing_if_null`, or an explicit `replace` ("last writer wins, on purpose"). Conflict keys
are exempt (they are the row's identity, which every writer of the table shares by definition), and
so are `mode: insert` writes, which never overwrite an existing value.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from runner import spec
from runner.errors import Problem
from runner.sourcefile import read

Writer = tuple[Path, int, bool]  # source file, index in writes, declares a merge rule for the column


def problems(sources: Mapping[Path, spec.Source]) -> list[Problem]:
    """A problem for each undeclared shared column, reported in every source that writes it."""
    writers: dict[tuple[str, str], dict[Path, Writer]] = defaultdict(dict)
    for path, source in sources.items():
        for index, write in enumerate(source.writes):
            if write.function is not None or write.mode is spec.WriteMode.INSERT:
                continue  # an insert-only write never overwrites anybody's value
            merged = {column for column, _ in write.merge}
            for column in write.column_names:
                if column not in write.key:
                    table = str(write.table).removeprefix("public.")
                    writers[(table, column)].setdefault(path, (path, index, column in merged))
    found: list[Problem] = []
    for (table, column), by_source in sorted(writers.items()):
        if len(by_source) < 2 or all(declared for _, _, declared in by_source.values()):
            continue
        for path, index, declared in by_source.values():
            if declared:
                continue
            others = ", ".join(str(p) for p in by_source if p != path)
            found.append(_problem(path, index, column, f"{table}.{column} is also written by {others}"))
    return found


def _problem(path: Path, index: int, column: str, clash: str) -> Problem:
    where = ("writes", index, "columns", column)
    document, _ = read(path.read_bytes(), str(path))
    line = document.line(where, key=True) if document is not None else 1
    return Problem(
        str(path),
        line,
        f"writes[{index}].columns.{column}",
        f"{clash}: declare how the sources share it in each of them, e.g. merge: {{{column}: greatest}},"
        f" keep_existing_if_null, or replace (last writer wins, on purpose)",
    )
