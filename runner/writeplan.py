"""A write target's value path, compiled once per run: column types looked up and converters chosen
once, rows converted in bulk.

`values.fit` looked every column's type up in the catalog and its converter up in a cache, for every
value of every row: at 1,000 records a page that was most of the writer's Python time
(docs/benchmarks.md). A `WritePlan` resolves both when the target is first written with a catalog;
`fit` then only calls each value's converter. Messages are values.fit's own: a row that does not fit
is converted again by it, which raises the Unfit naming the table, column and value.

Statements are built once per target by runner/targets.py (`lru_cache`d per target) and read from
there; tuples of the written columns come from `params`.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any

from runner.migrations import Catalog
from runner.spec import Write
from runner.values import FAULTS, Unfit, column_types, converter, fit, unchanged

Row = dict[str, Any]


class WritePlan:
    """`target`'s column types and converters under `catalog`."""

    def __init__(self, target: Write, catalog: Catalog) -> None:
        self.target, self.catalog = target, catalog
        self.label = str(target.function or target.table)
        self.types = column_types(target, catalog)
        self.converters: dict[str, Callable[[Any], Any] | None] = {
            column: converter(name) for column, name in self.types.items()
        }

    def fit(self, rows: list[Row]) -> list[Row]:
        """Every row with its values converted for their columns; raises Unfit naming the first misfit.

        Column by column first (`values.unchanged`): a column whose values all come through as they
        are (integers in range, plain text: most of a bulk page) needs no call per value; only the
        others are converted row by row."""
        if not rows:
            return []
        converters = {
            column: convert
            for column, convert in self.converters.items()
            if convert is not None and not unchanged(self.types[column], _column(rows, column))
        }
        if not converters:
            return list(rows)  # the rows are the mapping's own, made for this result and never changed
        fitted: list[Row] = []
        for row in rows:
            try:
                out = {}
                for column, value in row.items():
                    convert = None if value is None else converters.get(column)
                    out[column] = value if convert is None else convert(value)
            except (Unfit, *FAULTS):
                fit(self.label, self.types, row)  # raises the message naming table, column and value
                raise  # pragma: no cover - fit converts what failed here the same way
            fitted.append(out)
        return fitted


def _column(rows: list[Row], column: str) -> list[Any]:
    try:
        return list(map(itemgetter(column), rows))
    except KeyError:  # a row without the column: null, as row.get gives
        return [row.get(column) for row in rows]


_plans: dict[tuple[int, int], WritePlan] = {}


def plan(target: Write, catalog: Catalog) -> WritePlan:
    """The plan of `target` under `catalog`, made on first use. Entries keep their objects alive, so
    an id is never reused for another target or catalog while cached; a run has a handful."""
    key = (id(target), id(catalog))
    found = _plans.get(key)
    if found is None or found.target is not target or found.catalog is not catalog:
        if len(_plans) > 256:  # tests make many sources and catalogs: keep the cache bounded
            _plans.clear()
        found = _plans[key] = WritePlan(target, catalog)
    return found


def params(rows: list[Row], columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """Rows of values for `columns`, in order; a column a row lacks is null."""
    if not columns:
        return [() for _ in rows]
    get = itemgetter(*columns)
    try:
        values = [get(row) for row in rows]
    except KeyError:  # a row without some column: null, as row.get gives
        return [tuple(row.get(c) for c in columns) for row in rows]
    return values if len(columns) > 1 else [(value,) for value in values]
