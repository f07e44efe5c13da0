"""syncrun's custom JMESPath functions: the whole "transform language" of mappings and outcome rules.

There is no eval, no templating engine and no plugin loading from YAML: a source file can call these
(registered on every compiled expression by runner/expressions.py) and JMESPath's built-ins, nothing else.

Functions (all return null instead of raising on unusable input, so a mapping can decide). Every
function is total over JSON: a value it cannot represent is null, never an exception. Numbers are
bounded: an integer beyond the signed 64-bit range (|n| >= 2^63) and a float that is NaN or infinite
count as "no number" for every function below, and a result beyond those bounds is null too.

    as_int(v)                 "42", 42.0, "1,234" -> 42 / 1234; anything else -> null (also a value
                              beyond 64 bits, "999…9.0", NaN, infinity)
    as_float(v)               "1.5" -> 1.5; anything else -> null (also an integer or text beyond the
                              float range, NaN, infinity)
    clamp_or_null(v, lo, hi)  v when lo <= v <= hi, else null
    lower(s) / trim(s)        string case and whitespace; null passes through
    coalesce(a, b, ...)       the first argument that is not null
    parse_date(s)             "Dec 21, 2012", "21 Dec, 2012", "2012-12-21" -> "2012-12-21"; "December 2012"
                              -> "2012-12-01"; "Q2 2021" -> "2021-04-01"; "2012" -> "2012-01-01" (the
                              worker's explicit rules); "Coming soon", "Summer 2025", "Feb 30, 2025",
                              "" -> null (never a guessed or rolled-over day)
    from_unix(n)              unix seconds -> ISO-8601 UTC timestamp; null outside years 1..9999
    from_unix_ms(n)           unix milliseconds -> ISO-8601 UTC timestamp; null outside years 1..9999
    unix_date(n)              unix seconds -> "YYYY-MM-DD" (UTC); null outside years 1..9999
    enum_or(v, allowed, d)    v when v is in the list `allowed`, else d
    range_low(s)/range_high(s) "0 .. 20,000" -> 0 / 20000
    sorted_ints(list)         positive ints, de-duplicated, sorted; non-ints dropped
    add(a, b) sub(a, b) mul(a, b)  arithmetic; null if either side is null, or the result is beyond
                              64 bits / the float range
    max0(v)                   max(0, v); null stays null
    greatest(a, b)            the larger, ignoring nulls
    not_(v)                   boolean negation; null stays null
    concat(a, b, ...)         string concatenation of the non-null arguments; null when one cannot be
                              written as text (an integer of more than 4300 digits, nesting too deep)
    to_json(v)                compact JSON text of v; null when v has no JSON text (NaN, infinity, an
                              integer of more than 4300 digits, nesting too deep)
    keys_of(obj)              the keys of an object as strings (JMESPath `keys` with a null fallback)
    get(obj, key)             obj[key] for any string key, e.g. get(body, to_string(entity.appid)) for
                              Steam's {"730": {...}} bodies (JMESPath can't index by a computed key);
                              null when key has no text (an integer of more than 4300 digits)
    hours_between(a, b)       hours from timestamp a to timestamp b (ISO-8601); null if either is null
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, TypeVar, cast

import jmespath
from jmespath import functions as jp_functions

JSON = Any  # the one sanctioned Any: a decoded JSON value (imported by everyone from runner.expressions)

_MONTHS = {
    name: index
    for index, names in enumerate(
        [
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ],
        start=1,
    )
    for name in names
}
_DATE_PATTERNS = (
    re.compile(r"^(?P<m>[A-Za-z]+)\.? (?P<d>\d{1,2}),? (?P<y>\d{4})$"),  # Dec 21, 2012
    re.compile(r"^(?P<d>\d{1,2}) (?P<m>[A-Za-z]+)\.?,? (?P<y>\d{4})$"),  # 21 Dec, 2012
    re.compile(r"^(?P<y>\d{4})-(?P<mm>\d{2})-(?P<d>\d{2})$"),  # 2012-12-21
    re.compile(r"^(?P<m>[A-Za-z]+),? (?P<y>\d{4})$"),  # December 2012 (day 1)
    re.compile(r"^[Qq](?P<q>[1-4]) (?P<y>\d{4})$"),  # Q2 2021: the quarter's first day (the worker's rule)
    re.compile(r"^(?P<y>\d{4})$"),  # 2012: January 1 (the worker's rule)
)


def parse_date(text: str) -> date | None:
    """A calendar date from Steam's release-date strings; None when the text names no real day."""
    text = " ".join(text.strip().split())
    for pattern in _DATE_PATTERNS:
        match = pattern.match(text)
        if not match:
            continue
        parts = match.groupdict()
        if parts.get("q"):
            month: int | None = int(parts["q"]) * 3 - 2
        elif parts.get("m"):
            month = _MONTHS.get(parts["m"].lower())
        else:
            month = int(parts.get("mm") or 1)
        if month is None:
            return None
        try:
            return date(int(parts["y"]), month, int(parts.get("d") or 1))
        except ValueError:  # Feb 30 is not a day: never roll it into March
            return None
    return None


# Numbers the functions work with: a signed 64-bit integer or a finite float. Beyond them Python
# either raises (int(inf), str() of a 4301-digit int, datetime of year 10^12) or computes without end.
_INT_LIMIT = 2**63
_INT_DIGITS = len(str(_INT_LIMIT))


def _bounded(value: int | float) -> int | float | None:
    """`value` when it is a number the functions handle, else None."""
    if isinstance(value, int):
        return value if -_INT_LIMIT <= value < _INT_LIMIT else None
    return value if math.isfinite(value) else None


def _as_int(value: JSON) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -_INT_LIMIT <= value < _INT_LIMIT else None
    if isinstance(value, float):
        return _as_int(int(value)) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        match = _INTEGER_TEXT.fullmatch(value.strip().replace(",", ""))
        # Length first: int() of over 4300 digits raises, and "999…9.0" is not a float we can round.
        if match and len(match["digits"].lstrip("0")) <= _INT_DIGITS:
            return _as_int(int(match["digits"]) * (-1 if match["sign"] == "-" else 1))
    return None


_INTEGER_TEXT = re.compile(r"(?P<sign>[+-]?)(?P<digits>\d+)(?:\.0*)?")


def _as_float(value: JSON) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            result = float(value)
        except OverflowError:  # an integer beyond the float range
            return None
        return result if math.isfinite(result) else None
    if isinstance(value, str):
        try:
            result = float(value.strip().replace(",", ""))
        except ValueError:
            return None
        return result if math.isfinite(result) else None
    return None


def _number(value: JSON) -> float | int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return _bounded(value)
    as_int = _as_int(value)
    return as_int if as_int is not None else _as_float(value)


def _timestamp(seconds: float | int | None) -> datetime | None:
    """The UTC moment `seconds` after the epoch; None outside the years datetime holds (1..9999)."""
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, ValueError, OSError):  # each platform picks its own for "out of range"
        return None


def _text(value: JSON) -> str | None:
    """str(value), or None when Python cannot write it (an int over 4300 digits, nesting too deep)."""
    try:
        return str(value)
    except (ValueError, RecursionError):
        return None


def _range_part(value: JSON, index: int) -> int | None:
    if not isinstance(value, str):
        return None
    parts = value.split("..")
    if len(parts) != 2:
        return None
    return _as_int(parts[index])


_F = TypeVar("_F", bound=Callable[..., Any])


def _signature(*arguments: dict[str, Any]) -> Callable[[_F], _F]:
    """jmespath's `signature` decorator, typed (jmespath ships no annotations)."""
    return cast(Callable[[_F], _F], jp_functions.signature(*arguments))


class _Functions(jp_functions.Functions):  # type: ignore[misc]  # untyped base class
    """Registered on every compiled expression. Names are part of the source format: never rename."""

    @_signature({"types": []})
    def _func_as_int(self, value: JSON) -> int | None:
        return _as_int(value)

    @_signature({"types": []})
    def _func_as_float(self, value: JSON) -> float | None:
        return _as_float(value)

    @_signature({"types": []}, {"types": ["number"]}, {"types": ["number"]})
    def _func_clamp_or_null(self, value: JSON, low: float, high: float) -> JSON:
        number = _number(value)
        return number if number is not None and low <= number <= high else None

    @_signature({"types": ["string", "null"]})
    def _func_lower(self, value: str | None) -> str | None:
        return None if value is None else value.lower()

    @_signature({"types": ["string", "null"]})
    def _func_trim(self, value: str | None) -> str | None:
        return None if value is None else value.strip()

    @_signature({"types": [], "variadic": True})
    def _func_coalesce(self, *values: JSON) -> JSON:
        return next((v for v in values if v is not None), None)

    @_signature({"types": []})
    def _func_parse_date(self, value: JSON) -> str | None:
        parsed = parse_date(value) if isinstance(value, str) else None
        return parsed.isoformat() if parsed else None

    @_signature({"types": []})
    def _func_from_unix(self, value: JSON) -> str | None:
        moment = _timestamp(_number(value))
        return None if moment is None else moment.isoformat()

    @_signature({"types": []})
    def _func_from_unix_ms(self, value: JSON) -> str | None:
        number = _number(value)
        moment = None if number is None else _timestamp(number / 1000)
        return None if moment is None else moment.isoformat()

    @_signature({"types": []})
    def _func_unix_date(self, value: JSON) -> str | None:
        moment = _timestamp(_number(value))
        return None if moment is None else moment.date().isoformat()

    @_signature({"types": []}, {"types": ["array"]}, {"types": []})
    def _func_enum_or(self, value: JSON, allowed: list[JSON], default: JSON) -> JSON:
        return value if value in allowed else default

    @_signature({"types": []})
    def _func_range_low(self, value: JSON) -> int | None:
        return _range_part(value, 0)

    @_signature({"types": []})
    def _func_range_high(self, value: JSON) -> int | None:
        return _range_part(value, 1)

    @_signature({"types": ["array", "null"]})
    def _func_sorted_ints(self, values: list[JSON] | None) -> list[int]:
        ints = {_as_int(v) for v in values or []}
        return sorted(i for i in ints if i is not None and i > 0)

    @_signature({"types": []}, {"types": []})
    def _func_add(self, a: JSON, b: JSON) -> JSON:
        x, y = _number(a), _number(b)
        return None if x is None or y is None else _bounded(x + y)

    @_signature({"types": []}, {"types": []})
    def _func_sub(self, a: JSON, b: JSON) -> JSON:
        x, y = _number(a), _number(b)
        return None if x is None or y is None else _bounded(x - y)

    @_signature({"types": []}, {"types": []})
    def _func_mul(self, a: JSON, b: JSON) -> JSON:
        x, y = _number(a), _number(b)
        return None if x is None or y is None else _bounded(x * y)

    @_signature({"types": []})
    def _func_max0(self, value: JSON) -> JSON:
        number = _number(value)
        return None if number is None else max(0, number)

    @_signature({"types": []}, {"types": []})
    def _func_greatest(self, a: JSON, b: JSON) -> JSON:
        numbers = [n for n in (_number(a), _number(b)) if n is not None]
        return max(numbers) if numbers else None

    @_signature({"types": []})
    def _func_not_(self, value: JSON) -> bool | None:
        return None if value is None else not value

    @_signature({"types": [], "variadic": True})
    def _func_concat(self, *values: JSON) -> str | None:
        texts = [_text(v) for v in values if v is not None]
        return None if None in texts else "".join(cast(list[str], texts))

    @_signature({"types": []})
    def _func_to_json(self, value: JSON) -> str | None:
        try:  # allow_nan=False: NaN is not JSON, and PostgreSQL's json types reject it
            return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
        except (ValueError, RecursionError):
            return None

    @_signature({"types": []})
    def _func_keys_of(self, value: JSON) -> list[str] | None:
        return [str(k) for k in value] if isinstance(value, dict) else None

    @_signature({"types": []}, {"types": []})
    def _func_get(self, value: JSON, key: JSON) -> JSON:
        name = None if key is None else _text(key)
        return value.get(name) if isinstance(value, dict) and name is not None else None

    @_signature({"types": []}, {"types": []})
    def _func_hours_between(self, start: JSON, end: JSON) -> float | None:
        try:
            a, b = datetime.fromisoformat(str(start)), datetime.fromisoformat(str(end))
        except (ValueError, RecursionError):  # str() of a 4301-digit int is a ValueError too
            return None
        if start is None or end is None or (a.tzinfo is None) != (b.tzinfo is None):
            return None
        return (b - a).total_seconds() / 3600


CUSTOM_FUNCTIONS: frozenset[str] = frozenset(
    name.removeprefix("_func_") for name in vars(_Functions) if name.startswith("_func_")
)
OPTIONS = jmespath.Options(custom_functions=_Functions())  # what every compiled expression evaluates with
