"""Compiled JMESPath expressions.

Every expression in a source file is compiled once at load time into an `Expression`; the engine
only calls `Expression.search`. The shapes outcome rules and most mappings are made of run as plain
Python (`_compile`); the rest through jmespath's interpreter. Either way an expression can call
syncrun's custom functions (runner/functions.py, listed there) and JMESPath's built-ins.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jmespath
from jmespath.parser import ParsedResult

from runner.errors import ExpressionTooComplex

# Every module takes JSON from here, and exprcheck the function names: re-exported from runner.functions.
from runner.functions import CUSTOM_FUNCTIONS as CUSTOM_FUNCTIONS
from runner.functions import JSON as JSON
from runner.functions import OPTIONS

# jmespath's parser recurses up to 4 frames per nesting level, and its evaluator (and ours) once per
# level of the tree: bounded well below Python's recursion limit, far above any real expression
# (the bundled sources' longest is 345 characters, 8 levels deep).
MAX_EXPRESSION_LENGTH = 4000
MAX_NESTING = 48


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
        return _function(ast["value"], compiled)
    if kind == "multi_select_list":
        if all(child["type"] == "literal" for child in ast["children"]):  # `['game', 'dlc']`: read nothing
            values = tuple(child["value"] for child in ast["children"])
            return lambda data: None if data is None else [*values]
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


def _function(name: str, arguments: list[Compiled]) -> Compiled:
    """`name(arguments…)`: the arguments evaluated in order, then `_caller`'s call. A function of one to
    three arguments whose signature `_typed` reads, called with that many, is checked inline (the same
    type-name test): every row of a mapping calls a few (`trim(record.name)`), and the list and
    generator of the general call cost about what the function itself does."""
    call = _caller(name)
    typed = _typed(name)
    if typed is None or typed[2] or len(typed[1]) != len(arguments) or len(arguments) > 3:
        return lambda data: call([argument(data) for argument in arguments])
    function, allowed = typed[0], typed[1]
    functions = OPTIONS.custom_functions
    if len(arguments) == 1:
        (a,), (ta,) = arguments, allowed

        def one(data: JSON) -> JSON:
            x = a(data)
            if ta is None or type(x).__name__ in ta:
                return function(functions, x)
            return call([x])

        return one
    if len(arguments) == 2:
        (a, b), (ta, tb) = arguments, allowed

        def two(data: JSON) -> JSON:
            x, y = a(data), b(data)
            if (ta is None or type(x).__name__ in ta) and (tb is None or type(y).__name__ in tb):
                return function(functions, x, y)
            return call([x, y])

        return two
    (a, b, c), (ta, tb, tc) = arguments, allowed

    def three(data: JSON) -> JSON:
        x, y, z = a(data), b(data), c(data)
        if (
            (ta is None or type(x).__name__ in ta)
            and (tb is None or type(y).__name__ in tb)
            and (tc is None or type(z).__name__ in tc)
        ):
            return function(functions, x, y, z)
        return call([x, y, z])

    return three


Typed = tuple[Callable[..., JSON], list[frozenset[str] | None], bool]  # function, types per argument, variadic


def _typed(name: str) -> Typed | None:
    """The function `name`, the Python type names its signature accepts per argument (None: any) and
    whether it is variadic; None when jmespath must check the call (no such function, a typed array)."""
    functions = OPTIONS.custom_functions
    entry = functions.FUNCTION_TABLE.get(name)
    if entry is None:
        return None
    signature, function = entry["signature"], entry["function"]
    variadic = bool(signature) and bool(signature[-1].get("variadic"))
    allowed: list[frozenset[str] | None] = []
    for argument in signature:
        if not argument["types"]:
            allowed.append(None)
            continue
        names, subtypes = functions._get_allowed_pytypes(argument["types"])
        if subtypes:
            return None
        allowed.append(frozenset(names))
    return function, allowed, variadic


def _caller(name: str) -> Callable[[list[JSON]], JSON]:
    """The function `name` called on evaluated arguments. Arguments whose types its signature accepts
    go straight to it; anything else goes through jmespath's `call_function`, which raises the same
    error as the interpreter (unknown function, arity, type). jmespath checks the top-level type by
    its Python type's name (a bool is no number) and, for typed arrays, each element: those
    signatures always go through jmespath."""
    functions = OPTIONS.custom_functions
    checked = partial(functions.call_function, name)
    typed = _typed(name)
    if typed is None:
        return checked
    function, allowed, variadic = typed
    count = len(allowed)

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
        too long or deep to parse safely (runner/exprcheck.py turns either into a config problem)."""
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
        return self.parsed.search(data, options=OPTIONS)


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
