"""Mapped values checked and converted against their columns' catalog types, before anything is sent.

A value PostgreSQL (or psycopg, writing it) would reject raises `Unfit` with a message naming the
table, the column and the value, so the writer can fail that one entity instead of the whole batch:
an int out of range, 'abc' for a date, an integer of more than 4300 digits (Python cannot write it as
text), NaN or infinity for a number (never stored as a number that means nothing), a NUL character or
a lone surrogate in text or JSON (PostgreSQL cannot store either; a NUL is refused, not stripped, so
stored text is always what the API sent). Text length is bounded by the response size limit the
client enforces; `varchar(n)` is checked here. Types we do not know (enums, domains, ranges) pass unchanged
and are left to PostgreSQL. Does not touch the database.
"""

from __future__ import annotations

import json
import math
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
        except _FAULTS as error:  # a value no converter foresaw: still this entity's error, named
            reason = f"{type(error).__name__}: {error}"
            raise Unfit(f"{table}.{column}: {show(value)} cannot be converted: {reason}") from None
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


# What a converter could raise beyond Unfit on a value nobody foresaw (fit names it in the message).
FAULTS = _FAULTS = (ArithmeticError, ValueError, TypeError, LookupError, RecursionError)
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # a lone surrogate has no UTF-8 encoding: psycopg would raise


def show(value: Any) -> str:
    """A value for a message, cut to 60 characters (API data can be long)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # repr of an int over 4300 digits raises
        return f"<{type(value).__name__} that cannot be shown>"
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
        if isinstance(value, str) and not re.fullmatch(r"\s*[+-]?\d{1,40}\s*", value):
            raise Unfit("is not an integer")  # 40 digits: int() of over 4300 raises ValueError
        number = int(value)
        if not -limit <= number < limit:
            raise Unfit(f"is out of range for {name}")
        return number

    return convert


# What PostgreSQL's numeric input reads (ASCII digits; Python's float() takes more: "1_0", "١").
# The exponent is bounded: numeric refuses exponents beyond about ±1000.
_NUMBER_TEXT = re.compile(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?\s*")
_DIGITS = 4300  # Python's limit for int <-> text (sys.get_int_max_str_digits); psycopg writes ints as text


def _number(value: Any, _: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Unfit("is not a number")
    if isinstance(value, int) and value.bit_length() > _DIGITS * 3:  # 3 bits < 1 digit: cheap, safe bound
        try:
            str(value)
        except ValueError:
            raise Unfit(f"has more than {_DIGITS} digits") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise Unfit("is not a finite number")
    if isinstance(value, str) and not (len(value) <= _DIGITS and _NUMBER_TEXT.fullmatch(value)):
        raise Unfit("is not a number")
    return value


def _float(value: Any, size: str) -> float:
    """real / double precision: as a Python float, which must be finite (an int beyond ~1.8e308 is not)."""
    _number(value, size)
    try:
        number = float(value)
    except OverflowError:
        raise Unfit("is out of range for double precision") from None
    if not math.isfinite(number):
        raise Unfit("is out of range for double precision")
    return number


def _real(value: Any, size: str) -> float:
    number = _float(value, size)
    if abs(number) > _REAL_MAX or (number != 0 and abs(number) < _REAL_MIN):
        raise Unfit("is out of range for real")
    return number


_REAL_MAX, _REAL_MIN = 3.4028234663852886e38, 1.401298464324817e-45


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
    if type(value) is str and not size and "\x00" not in value and not _SURROGATE.search(value):  # common case
        return value
    if isinstance(value, dict | list):
        raise Unfit("is not text (map it with to_json(...) to store JSON as text)")
    try:
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    except ValueError:  # str() of an int over 4300 digits
        raise Unfit(f"has more than {_DIGITS} digits to write as text") from None
    if "\x00" in text:
        raise Unfit("contains a NUL character, which PostgreSQL text cannot store")
    if _SURROGATE.search(text):
        raise Unfit("contains a lone surrogate (\\ud800-\\udfff), which is not UTF-8")
    if size.isdigit() and len(text) > int(size):
        raise Unfit(f"is longer than {size} characters")
    return text


def _jsonb(value: Any, _: str) -> Jsonb:
    if "\\u0000" in _json_text(value):
        raise Unfit("contains a NUL character, which jsonb cannot store")
    return Jsonb(value)


def _json(value: Any, _: str) -> Json:
    _json_text(value)
    return Json(value)


def _json_text(value: Any) -> str:
    """The JSON psycopg will send, checked: PostgreSQL's json types refuse NaN and lone surrogates."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)  # an emoji stays one character
    except ValueError as error:  # NaN / infinity, an int over 4300 digits
        raise Unfit(f"is not JSON ({error})") from None
    except RecursionError:
        raise Unfit("is nested too deeply for JSON") from None
    if _SURROGATE.search(text):
        raise Unfit("contains a lone surrogate (\\ud800-\\udfff), which JSON in PostgreSQL cannot store")
    return text


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
    "real": _real,
    "double precision": _float,
    "boolean": _boolean,
    "date": _date,
    "timestamp with time zone": _timestamp,
    "timestamp without time zone": _naive_timestamp,
    "text": _text,
    "character varying": _text,
    "character": _text,
    "jsonb": _jsonb,
    "json": _json,
    "uuid": _uuid,
}

_INT_LIMITS = {"smallint": 1 << 15, "integer": 1 << 31, "bigint": 1 << 63}


def unchanged(type_name: str | None, values: list[Any]) -> bool:
    """True when `converter(type_name)` returns each non-null value of `values` as it is, checked for
    the whole column at once (C-speed builtins): integers of the column's range, plain text without a
    NUL or lone surrogate, booleans, finite doubles. False means "convert them one by one", never "they do not fit"."""
    kinds = set(map(type, values))
    present = [value for value in values if value is not None] if _NONE in kinds else values
    kinds.discard(_NONE)
    if not present:
        return True
    limit = _INT_LIMITS.get(type_name or "")
    if limit is not None:
        return kinds == {int} and -limit <= min(present) and max(present) < limit
    if type_name in ("text", "character varying"):  # without a (size): `text`'s and varchar's common case
        joined = "".join(present) if kinds == {str} else "\x00"  # a NUL or surrogate is one character:
        # no join can make or hide one; ASCII text (isascii reads its flag) holds no surrogate
        return "\x00" not in joined and (joined.isascii() or not _SURROGATE.search(joined))
    if type_name == "boolean":
        return kinds == {bool}
    if type_name == "double precision":  # float() of a float is that float
        return kinds == {float} and all(map(math.isfinite, present))
    return False


_NONE = type(None)
