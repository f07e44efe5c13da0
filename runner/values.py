"""Mapped values checked and converted against their columns' catalog types, before anything is sent.

A value PostgreSQL would reject (an int out of range, 'abc' for a date, a NUL in text) raises
`Unfit` with a message naming the table, the column and the value, so the writer can fail that one
entity instead of the whole batch. Types we do not know (enums, domains, ranges) pass unchanged
and are left to PostgreSQL. Does not touch the database.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

from psycopg.types.json import Json, Jsonb

from runner.migrations import Catalog
from runner.spec import Write


class Unfit(ValueError):
    """A value does not fit its column. From `coerce`: the reason ("is not an integer"); from `fit`:
    the whole message ("apps.price_cents: 'abc' is not an integer")."""


def column_types(target: Write, catalog: Catalog) -> dict[str, str]:
    """Column -> type for a write's mapped values: the table's columns (a function writer's argument
    types), except that a lookup column carries the dimension's natural key until it is resolved."""
    types = dict(catalog.get(target.function or target.table, {}))
    for lookup in target.lookups:
        key_type = catalog.get(lookup.table, {}).get(lookup.key)
        if key_type is None:
            types.pop(lookup.column, None)
        else:
            types[lookup.column] = key_type
    return types


def fit(table: str, types: Mapping[str, str], row: Mapping[str, Any]) -> dict[str, Any]:
    """`row` with every value converted for its column; raises Unfit naming the first misfit."""
    fitted: dict[str, Any] = {}
    for column, value in row.items():
        convert = None if value is None else converter(types.get(column))
        if convert is None:
            fitted[column] = value
            continue
        try:
            fitted[column] = convert(value)
        except Unfit as unfit:
            raise Unfit(f"{table}.{column}: {show(value)} {unfit}") from None
    return fitted


def array_cast(type_name: str | None, values: Iterable[Any]) -> str | None:
    """`type[]`, to send a column's `values` (already coerced) as one array parameter and `unnest` it
    back; None when they cannot travel that way: an unknown type, an array column (`unnest` would
    flatten it), values psycopg cannot put in one array (mixed Python types: `numeric` keeps ints and
    floats as they came), or dicts and lists (only a json/jsonb column's wrappers are dumpable)."""
    if type_name is None or type_name.endswith("]"):
        return None
    kinds = {type(value) for value in values if value is not None}
    if len(kinds) > 1 or kinds & {dict, list}:
        return None
    return type_name + "[]"


def show(value: Any) -> str:
    """A value for a message, cut to 60 characters (API data can be long)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def coerce(type_name: str | None, value: Any) -> Any:
    """`value` ready for a column of `type_name` (format_type text); raises Unfit with the reason.

    >>> coerce("integer", "42")
    42
    """
    if value is None:
        return value
    convert = converter(type_name)
    return value if convert is None else convert(value)


@lru_cache(maxsize=1024)
def converter(type_name: str | None) -> Callable[[Any], Any] | None:
    """The conversion for a column type (format_type text), or None for a type we leave to PostgreSQL.

    Cached per type name: `fit` runs for every value of every row.
    """
    if type_name is None:
        return None
    if type_name.endswith("[]"):
        return _list
    base, _, size = type_name.partition("(")
    handler = _HANDLERS.get(base)
    if handler is None:
        return None
    size = size.rstrip(")")
    return lambda value: handler(value, size)


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise Unfit("is not a list")
    return value


def _int(bits: int) -> Callable[[Any, str], int]:
    limit = 2 ** (bits - 1)
    name = {16: "smallint", 32: "integer", 64: "bigint"}[bits]

    def convert(value: Any, _: str) -> int:
        if type(value) is int and -limit <= value < limit:  # the common case, first
            return value
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise Unfit("is not an integer")
        if isinstance(value, float) and not value.is_integer():
            raise Unfit("is not an integer")
        if isinstance(value, str) and not re.fullmatch(r"\s*[+-]?\d+\s*", value):
            raise Unfit("is not an integer")
        number = int(value)
        if not -limit <= number < limit:
            raise Unfit(f"is out of range for {name}")
        return number

    return convert


def _number(value: Any, _: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Unfit("is not a number")
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            raise Unfit("is not a number") from None
    return value


_BOOLEAN_TEXT = {"true": True, "false": False, "t": True, "f": False, "yes": True, "no": False}


def _boolean(value: Any, _: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOLEAN_TEXT:
        return _BOOLEAN_TEXT[value.strip().lower()]
    raise Unfit("is not a boolean")


def _date(value: Any, _: str) -> date:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise Unfit("is not a date (YYYY-MM-DD)") from None


def _timestamp(value: Any, _: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise Unfit("is not a timestamp (ISO 8601)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # naive means UTC, never the host's zone


def _naive_timestamp(value: Any, size: str) -> datetime:
    return _timestamp(value, size).astimezone(UTC).replace(tzinfo=None)


def _text(value: Any, size: str) -> str:
    if type(value) is str and not size and "\x00" not in value:  # the common case, first
        return value
    if isinstance(value, dict | list):
        raise Unfit("is not text (map it with to_json(...) to store JSON as text)")
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if "\x00" in text:
        raise Unfit("contains a NUL character, which PostgreSQL text cannot store")
    if size.isdigit() and len(text) > int(size):
        raise Unfit(f"is longer than {size} characters")
    return text


def _jsonb(value: Any, _: str) -> Jsonb:
    if "\\u0000" in json.dumps(value):
        raise Unfit("contains a NUL character, which jsonb cannot store")
    return Jsonb(value)


def _uuid(value: Any, _: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise Unfit("is not a UUID") from None


_HANDLERS: dict[str, Callable[[Any, str], Any]] = {
    "smallint": _int(16),
    "integer": _int(32),
    "bigint": _int(64),
    "numeric": _number,
    "real": _number,
    "double precision": _number,
    "boolean": _boolean,
    "date": _date,
    "timestamp with time zone": _timestamp,
    "timestamp without time zone": _naive_timestamp,
    "text": _text,
    "character varying": _text,
    "character": _text,
    "jsonb": _jsonb,
    "json": lambda value, _: Json(value),
    "uuid": _uuid,
}
