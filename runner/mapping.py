"""Rows from a response: the source's JMESPath mappings evaluated over one context document.

The context holds the record, the entity's columns, the response and the run's values:

    {"record": ..., "item": ... (only for `rows:` writes), "entity": {...},
     "response": {"status": 200, "headers": {...}, "body": ...}, "body": ..., "run": {...}}

Pure functions: no I/O, no database. A failure raises MappingError naming the column, the
expression and the value that did not fit.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal
from operator import itemgetter
from typing import Any

from jmespath.exceptions import JMESPathError

from runner import expressions, spec
from runner.errors import MappingError
from runner.expressions import EVALUATION_FAULTS, JSON, Expression, truthy

Row = dict[str, JSON]
_EXCERPT = 120


def context(
    body: JSON,
    status: int,
    headers: Mapping[str, str],
    entity: Mapping[str, JSON],
    run: Mapping[str, Any],
    *,
    whole: JSON = None,
) -> dict[str, JSON]:
    """The document every mapping and the `records` expression is evaluated over. For a batched
    request `body` is this entity's part and `whole` the full response body."""
    return {
        "entity": {name: value if type(value) in _AS_IS else _plain(value) for name, value in entity.items()},
        "response": {"status": status, "headers": dict(headers), "body": body if whole is None else whole},
        "body": body,
        "run": dict(run),
    }


_AS_IS = frozenset({int, str, float, bool, type(None)})  # what `_plain` returns as it is (no call per value)


def run_values(now: datetime, job_id: str | None) -> dict[str, JSON]:
    """The context's `run` section: when the run started (UTC) and its job."""
    return {
        "now": now.isoformat(),
        "today": now.date().isoformat(),  # the run's UTC date, never the machine's local date
        "started_at": now.isoformat(),
        "job_id": job_id,
    }


def records(source: spec.Source, base: dict[str, JSON]) -> list[JSON]:
    """The record(s) a response carries: `records:` may select one object or a list of them."""
    found = base["body"] if source.records is None else _search(source.records, base, "records")
    if found is None:
        where = source.records.text if source.records else "body"
        raise MappingError(f"records: {where!r} found nothing in the response body {_excerpt(base['body'])}")
    return found if isinstance(found, list) else [found]


def rows(source: spec.Source, base: dict[str, JSON], *, keep: int | None = None) -> dict[int, list[Row]]:
    """Rows per write target (by index in `source.writes`) for every record of one response (its
    first `keep` records: a page that max_items cut)."""
    out: dict[int, list[Row]] = {index: [] for index in range(len(source.writes))}
    found = records(source, base)
    if keep is not None:
        found = found[:keep]
    plans = [_plan(write) for write in source.writes]  # made once per write, not per response
    getters = [getters for getters, _ in plans]
    direct = {index: _over_record(write, base, plans[index][1]) for index, write in enumerate(source.writes)}
    for index, write in enumerate(source.writes):
        each = direct[index]
        if each is not None:  # one row per record, every value a path: no document per record
            out[index] = list(map(each, found))
            if write.key and _null_key(out[index], write.key):
                direct = {}  # a null key: the loop below raises the message it always raised, in order
                break
    if len(direct) < len(source.writes) or None in direct.values():
        for record in found:
            document = {**base, "record": record}
            for index, write in enumerate(source.writes):
                if direct.get(index) is None:
                    out[index].extend(_write_rows(write, document, index, getters[index]))
    return out


def _null_key(rows: list[Row], key: tuple[str, ...]) -> bool:
    """Whether a row's key column is null or missing (`row.get(column) is None`), a column at a time at
    C speed: `None in` compares by identity first, and no JSON value but null equals None."""
    try:
        return any(None in map(itemgetter(column), rows) for column in key)
    except KeyError:  # a row without a key column: null there
        return True


Getters = tuple[tuple[str, Callable[[JSON], JSON]], ...]
# `_over_record`'s part that depends on the write alone: its row maker's factory and, in column order,
# the getters of the values read from the response's document rather than the record; None: no maker
Direct = tuple[Callable[..., Callable[[JSON], Row]], tuple[Callable[[JSON], JSON], ...]] | None
Plan = tuple[Getters | None, Direct]

# Each write's plan by its id, with the write kept so that its id is never reused while the entry
# exists (as outcomes.py keeps its constant decisions): a run asks for them once per response.
_plans: dict[int, tuple[spec.Write, Plan]] = {}
_PLANS = 256  # entries kept (a run has a few writes; a long test session loads many sources)


def _plan(write: spec.Write) -> Plan:
    """`_getters` and `_direct` of `write`, made once: both read only the write (the spec is frozen)."""
    entry = _plans.get(id(write))
    if entry is None or entry[0] is not write:
        if len(_plans) >= _PLANS:
            _plans.clear()
        entry = _plans[id(write)] = (write, (_getters(write), _direct(write)))
    return entry[1]


def _getters(write: spec.Write) -> Getters | None:
    """(column, compiled expression) for every value of a row, columns then lookups (the order `_row`
    fills them in); None when one of them is interpreted by jmespath."""
    pairs = [(f.column, f.expression.fast) for f in write.columns]
    pairs += [(lookup.column, lookup.value.fast) for lookup in write.lookups]
    if any(get is None for _, get in pairs):
        return None
    return tuple((column, get) for column, get in pairs if get is not None)


def _over_record(write: spec.Write, base: dict[str, JSON], direct: Direct) -> Callable[[JSON], Row] | None:
    """The row of one record, for a write that makes one row per record (no `rows:`, no `when`) whose
    values are all plain paths; None otherwise. A `record.…` path is walked from the record itself;
    any other path (`entity.appid`) reads the same value for every record of the response, so it is
    read once from `base` (which differs from the record's document only in `record`). Same values,
    in the same column order, as `_row`'s getters over `{**base, "record": record}`: bulk pages (1,000
    records a response) skipped building a document per record and walking it from the top, and one
    generated function per write (`_maker`) makes each row in one call, not one call per column.
    `direct`: the write's `_direct`."""
    if direct is None:
        return None
    factory, constants = direct
    return factory(*[get(base) for get in constants])


def _direct(write: spec.Write) -> Direct:
    """The factory of `write`'s row maker and the getters of its values read from `base`, in column
    order (`_over_record`); None when the write needs a document per record."""
    if write.rows is not None or write.when is not None:
        return None
    pairs = [(f.column, f.expression) for f in write.columns] + [(lk.column, lk.value) for lk in write.lookups]
    shape: list[tuple[str, tuple[str, ...] | None]] = []
    constants: list[Callable[[JSON], JSON]] = []
    for column, expression in pairs:
        path = expression.path
        if path is None or not path:
            return None
        if path[0] == "record":
            shape.append((column, path[1:]))
        else:
            shape.append((column, None))
            constants.append(expressions.getter(path))
    return _maker(tuple(shape)), tuple(constants)


@functools.lru_cache(maxsize=256)
def _maker(shape: tuple[tuple[str, tuple[str, ...] | None], ...]) -> Callable[..., Callable[[JSON], Row]]:
    """A factory, compiled once per shape, of the function making a row from a record: `shape` is each
    column with its path under `record` (None: a value the same for every record, given to the
    factory in column order). The generated code holds only names made here; every column and field
    name from the YAML is bound as a value (`_k0`, `_n0_0`, ...), never spliced into the source. A
    field of anything but an object is null, as in jmespath (`expressions.getter`)."""
    names: dict[str, object] = {}
    parameters, found, missing = [], [], []
    for i, (column, path) in enumerate(shape):
        names[f"_k{i}"] = column
        if path is None:
            parameters.append(f"_c{i}")
            found.append(f"_k{i}: _c{i}")
            missing.append(f"_k{i}: _c{i}")
            continue
        if not path:
            found.append(f"_k{i}: r")
            missing.append(f"_k{i}: r")
            continue
        names[f"_n{i}_0"] = path[0]
        value = f"g(_n{i}_0)"
        for j, name in enumerate(path[1:], start=1):
            names[f"_n{i}_{j}"] = name
            value = f"(_t.get(_n{i}_{j}) if isinstance(_t := {value}, dict) else None)"
        found.append(f"_k{i}: {value}")
        missing.append(f"_k{i}: None")
    source = (
        f"def factory({', '.join(parameters)}):\n"
        "    def row(r):\n"
        "        if isinstance(r, dict):\n"
        "            g = r.get\n"
        f"            return {{{', '.join(found)}}}\n"
        f"        return {{{', '.join(missing)}}}\n"
        "    return row\n"
    )
    exec(compile(source, "<syncrun row maker>", "exec"), names)  # our own names only: see above
    factory: Callable[..., Callable[[JSON], Row]] = names["factory"]  # type: ignore[assignment]
    return factory


_SCALARS = (int, float, bool)


def redacted(rows: list[Row], redact: Callable[[JSON], JSON]) -> list[Row]:
    """`rows` with every value passed through `redact` (the run's `Redactor.value`), except numbers,
    booleans and nulls, which it returns as they are: 1,000-record pages need not call it for them."""
    return [{c: v if v is None or type(v) in _SCALARS else redact(v) for c, v in row.items()} for row in rows]


def status_values(status: spec.Status, base: dict[str, JSON]) -> dict[str, JSON]:
    """The `status.set` columns for a successful entity (e.g. storefront_accessible: `true`)."""
    return {f.column: _search(f.expression, base, f"status.set.{f.column}") for f in status.set}


def _write_rows(write: spec.Write, document: dict[str, JSON], index: int, getters: Getters | None = None) -> list[Row]:
    if write.rows is None:
        return [_row(write, document, index, getters)] if _wanted(write, document, index) else []
    items = _search(write.rows, document, f"writes[{index}].rows")
    if items is None:
        return []
    if not isinstance(items, list):
        raise MappingError(
            f"{write.table}: rows {write.rows.text!r} must select a list, got {type(items).__name__} {_excerpt(items)}"
        )
    documents = ({**document, "item": item} for item in items)
    # With rows:, `when` is asked per item (it may read `item`, as the schema says), not once per record.
    return [_row(write, each, index, getters) for each in documents if _wanted(write, each, index)]


def _wanted(write: spec.Write, document: dict[str, JSON], index: int) -> bool:
    return write.when is None or truthy(_search(write.when, document, f"writes[{index}].when"))


def _row(write: spec.Write, document: dict[str, JSON], index: int, getters: Getters | None = None) -> Row:
    row: Row | None = None
    if getters is not None:  # every value compiled: one comprehension, no per-column error handling
        try:
            row = {column: get(document) for column, get in getters}
        except (JMESPathError, *EVALUATION_FAULTS):
            row = None  # evaluated again below, column by column, for the message naming the column
    if row is None:
        row = {f.column: _search(f.expression, document, write.table, f.column) for f in write.columns}
        # A lookup column carries its natural-key value here; the writer swaps in the dimension's id.
        for lookup in write.lookups:
            row[lookup.column] = _search(lookup.value, document, write.table, lookup.column)
    for column in write.key:
        if row.get(column) is None:
            sources = {f.column: f.expression.text for f in write.columns}
            sources.update({lookup.column: lookup.value.text for lookup in write.lookups})
            raise MappingError(
                f"{write.table}.{column}: key column is null ({sources.get(column, '?')!r} found nothing)"
            )
    return row


def _search(expression: Expression, document: JSON, where: object, column: str | None = None) -> JSON:
    """`where` (and `column`) name the failing place; the message is only built on failure, since
    this runs for every column of every row."""
    try:
        return expression.search(document)
    except JMESPathError as error:
        place = f"{where}.{column}" if column else str(where)
        raise MappingError(f"{place}: {expression.text!r} failed: {error}") from None
    except EVALUATION_FAULTS as error:  # a value no function should have met: the entity's error, named
        place = f"{where}.{column}" if column else str(where)
        raise MappingError(f"{place}: {expression.text!r} failed: {type(error).__name__}: {error}") from None


def _plain(value: JSON) -> JSON:
    """Entity values as JSON would carry them: dates and timestamps as ISO-8601 text, decimals as
    numbers, so `entity.synced_on == run.today` compares like with like."""
    if isinstance(value, date | datetime):
        return value.isoformat()
    if isinstance(value, Decimal):  # numeric 'Infinity' equals its integral value, but int() of it raises
        return int(value) if value.is_finite() and value == value.to_integral_value() else float(value)
    return value


def _excerpt(value: JSON) -> str:
    try:
        text = json.dumps(value, default=str)
    except (ValueError, RecursionError):  # a 4301-digit integer, nesting too deep: say what it is
        text = f"<{type(value).__name__} that cannot be shown>"
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "…"
