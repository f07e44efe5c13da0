"""Compiled JMESPath expressions and syncrun's registry of custom JMESPath functions.

Every expression in a source file is compiled once at load time into an `Expression`; the engine
only calls `Expression.search`. The custom functions below are the whole "transform language":
there is no eval, no templating engine and no plugin loading from YAML.

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
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, TypeVar, cast

import jmespath
from jmespath import functions as jp_functions
from jmespath.parser import ParsedResult

from runner.errors import ExpressionTooComplex

JSON = Any  # the one sanctioned Any: a decoded JSON value

# jmespath's parser recurses up to 4 frames per nesting level, and its evaluator (and ours) once per
# level of the tree: bounded well below Python's recursion limit, far above any real expression
# (the bundled sources' longest is 345 characters, 8 levels deep).
MAX_EXPRESSION_LENGTH = 4000
MAX_NESTING = 48


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
_OPTIONS = jmespath.Options(custom_functions=_Functions())


def _fast(ast: dict[str, Any]) -> tuple[str, ...] | None:
    """`record.a.b` as ("record", "a", "b"); None for anything but a plain field path."""
    if ast["type"] == "field":
        return (ast["value"],)
    if ast["type"] == "subexpression":
        parts: list[str] = []
        for child in ast["children"]:
            path = _fast(child)
            if path is None:
                return None
            parts.extend(path)
        return tuple(parts)
    return None


# What evaluating an expression can raise besides JMESPathError when a function meets a value it
# cannot handle: ours are total, but jmespath's built-ins are not (to_string of a 4301-digit integer
# is a ValueError, abs/sum of huge numbers an OverflowError). mapping.py and outcomes.py turn these
# into the entity's error, with the exception's type and text, so one hostile value never ends the run.
EVALUATION_FAULTS: tuple[type[Exception], ...] = (
    ArithmeticError,
    ValueError,  # UnicodeError too
    TypeError,
    LookupError,
    AttributeError,
    RecursionError,
    OSError,
)

Compiled = Callable[[JSON], JSON]
_COMPILED = frozenset(
    {
        "comparator",
        "and_expression",
        "or_expression",
        "not_expression",
        "function_expression",
        "multi_select_list",
        "pipe",
    }
)
_ORDERING = {"lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge}


def _compile(ast: dict[str, Any]) -> Compiled | None:
    """Plain Python for the shapes outcome rules and most mappings are made of: field paths,
    literals, comparisons, `&&`, `||`, `!`, `@`, pipes, lists and function calls (the functions
    themselves are jmespath's, through its own signature checks). They run for every request and
    every row, and jmespath's interpreter costs ~5 µs a node. Anything else (projections, filters,
    slices, `&expression` arguments, …) returns None and is interpreted. Semantics follow jmespath's
    visitor exactly (tests/test_expressions.py compares)."""
    kind = ast["type"]
    if kind in ("field", "subexpression"):
        path = _fast(ast)
        return None if path is None else getter(path)
    if kind == "literal":
        value = ast["value"]
        return lambda _: value
    if kind == "current":
        return lambda data: data
    if kind not in _COMPILED:
        return None  # before the children: a slice's children are numbers, not nodes
    parts = [_compile(child) for child in ast["children"]]
    if any(part is None for part in parts):
        return None  # an `&expression` argument (sort_by, max_by, map) among them: interpreted
    compiled = [part for part in parts if part is not None]
    if kind == "function_expression":
        # Arguments evaluated here, then jmespath's own call: its signature checks (and their
        # errors) and the function itself, as the interpreter would; only the tree walk is saved.
        call = _caller(ast["value"])
        return lambda data: call([argument(data) for argument in compiled])
    if kind == "multi_select_list":
        return lambda data: None if data is None else [item(data) for item in compiled]
    if kind == "pipe":
        left, right = compiled
        return lambda data: right(left(data))
    if kind == "comparator":
        return _comparator(ast["value"], compiled[0], compiled[1])
    if kind == "and_expression":
        left, right = compiled
        return lambda data: right(data) if truthy(found := left(data)) else found
    if kind == "or_expression":
        left, right = compiled
        return lambda data: found if truthy(found := left(data)) else right(data)
    if kind == "not_expression":
        (inner,) = compiled
        return lambda data: _not(inner(data))
    return None


def _caller(name: str) -> Callable[[list[JSON]], JSON]:
    """The function `name` called on evaluated arguments. Arguments whose types its signature accepts
    go straight to it; anything else goes through jmespath's `call_function`, which raises the same
    error as the interpreter (unknown function, arity, type). jmespath checks the top-level type by
    its Python type's name (a bool is no number) and, for typed arrays, each element: those
    signatures always go through jmespath."""
    functions = _OPTIONS.custom_functions
    checked = partial(functions.call_function, name)
    entry = functions.FUNCTION_TABLE.get(name)
    if entry is None:
        return checked
    signature, function = entry["signature"], entry["function"]
    variadic = bool(signature) and bool(signature[-1].get("variadic"))
    allowed: list[frozenset[str] | None] = []
    for argument in signature:
        if not argument["types"]:
            allowed.append(None)
            continue
        names, subtypes = functions._get_allowed_pytypes(argument["types"])
        if subtypes:
            return checked
        allowed.append(frozenset(names))
    count = len(signature)

    def call(arguments: list[JSON]) -> JSON:
        if (len(arguments) >= count if variadic else len(arguments) == count) and all(
            types is None or type(value).__name__ in types for value, types in zip(arguments, allowed, strict=False)
        ):
            return function(functions, *arguments)
        return checked(arguments)

    return call


def getter(path: tuple[str, ...]) -> Compiled:
    """`_walk` over `path`, unrolled for the short paths most columns are (`record.id`,
    `record.price.cents`): a bulk page evaluates one per column per record, and the loop and the
    partial cost more than the lookups themselves."""
    if len(path) == 1:
        (a,) = path
        return lambda data: data.get(a) if isinstance(data, dict) else None
    if len(path) == 2:
        a, b = path

        def two(data: JSON) -> JSON:
            if isinstance(data, dict):
                data = data.get(a)
                if isinstance(data, dict):
                    return data.get(b)
            return None

        return two
    if len(path) == 3:
        a, b, c = path

        def three(data: JSON) -> JSON:
            if isinstance(data, dict):
                data = data.get(a)
                if isinstance(data, dict):
                    data = data.get(b)
                    if isinstance(data, dict):
                        return data.get(c)
            return None

        return three
    return partial(_walk, path)


def _walk(path: tuple[str, ...], data: JSON) -> JSON:
    for name in path:  # a field of anything but an object is null, as in jmespath
        if not isinstance(data, dict):
            return None
        data = data.get(name)
    return data


def _comparator(op: str, left: Compiled, right: Compiled) -> Compiled:
    if op == "eq":
        return lambda data: _equals(left(data), right(data))
    if op == "ne":
        return lambda data: not _equals(left(data), right(data))
    compare = _ORDERING[op]

    def ordered(data: JSON) -> JSON:
        a, b = left(data), right(data)
        return compare(a, b) if _comparable(a) and _comparable(b) else None  # else null, like jmespath

    return ordered


def _is_number(value: JSON) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _comparable(value: JSON) -> bool:
    return _is_number(value) or isinstance(value, str)


def _equals(a: JSON, b: JSON) -> bool:
    # Python says 1 == True and 0 == False; JMESPath does not.
    if (_is_number(a) and a in (0, 1) and isinstance(b, bool)) or (
        _is_number(b) and b in (0, 1) and isinstance(a, bool)
    ):
        return False
    return bool(a == b)


def truthy(value: JSON) -> bool:
    """JMESPath truthiness: false, null, "", [] and {} are false; every number (0 too) is true."""
    return not (value is None or value is False or value == "" or value == [] or value == {})


def _not(value: JSON) -> bool:
    return False if _is_number(value) and value == 0 else not value


@dataclass(frozen=True, slots=True)
class Expression:
    """A JMESPath expression compiled once; keeps its source text for messages."""

    text: str
    parsed: ParsedResult = field(repr=False, compare=False)
    fast: Compiled | None = field(default=None, repr=False, compare=False)
    path: tuple[str, ...] | None = field(default=None, repr=False, compare=False)  # a plain field path

    @classmethod
    def compile(cls, text: str) -> Expression:
        """Compile `text`; raises jmespath.exceptions.ParseError, or ExpressionTooComplex when it is
        too long or deep to parse safely (config.py turns either into a Problem)."""
        if reason := too_complex(text):
            raise ExpressionTooComplex(reason)
        try:
            parsed = jmespath.compile(text)
        except RecursionError:  # the bounds above are estimates; never let one become a crash
            raise ExpressionTooComplex(f"nested more than {MAX_NESTING} levels deep") from None
        if _depth(parsed.parsed) > MAX_NESTING:
            raise ExpressionTooComplex(f"nested more than {MAX_NESTING} levels deep")
        return cls(text, parsed, _compile(parsed.parsed), _fast(parsed.parsed))

    def search(self, data: JSON) -> JSON:
        if self.fast is not None:
            return self.fast(data)
        return self.parsed.search(data, options=_OPTIONS)


def too_complex(text: str) -> str | None:
    """Why `text` must not reach jmespath's parser, in words; None when it is safe to parse."""
    if len(text) > MAX_EXPRESSION_LENGTH:
        return f"longer than {MAX_EXPRESSION_LENGTH} characters"
    if _nesting(text) > MAX_NESTING:
        return f"nested more than {MAX_NESTING} levels deep"
    return None


def _nesting(text: str) -> int:
    """An upper bound of the parser's recursion: the deepest bracket (inside `literals` too, which
    json parses recursively) plus every prefix operator (`!`, `&expr`) and projection (`*`)."""
    depth = deepest = prefixes = 0
    quote, i = "", 0
    while i < len(text):
        char = text[i]
        if quote and char == "\\":
            i += 1  # the escaped character never closes the quote
        elif char == quote:
            quote = ""
        elif quote in ("", "`") and char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif quote in ("", "`") and char in ")]}":
            depth -= 1
        elif not quote and char in "'\"`":
            quote = char
        elif not quote and char == "&" and text.startswith("&&", i):
            i += 1  # `&&` is an operator, not an expression reference
        elif not quote and char in "!&*" and not text.startswith("!=", i):
            prefixes += 1
        i += 1
    return deepest + prefixes


def _depth(tree: dict[str, Any]) -> int:
    """The parsed tree's depth, without recursion (`a || b || …` parses flat but nests deep)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in node.get("children", ()) if isinstance(child, dict))
    return deepest
