"""Load-time checks of JMESPath text: compile errors in words, unknown function names and names
read from the context document (jmespath checks neither until it runs), and `{...}` message templates.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping
from typing import cast

from jmespath import functions as jp_functions
from jmespath.exceptions import JMESPathError
from jmespath.lexer import Lexer

from runner import spec
from runner.errors import ExpressionTooComplex
from runner.expressions import CUSTOM_FUNCTIONS, JSON, Expression
from runner.sourcefile import did_you_mean, show

FUNCTIONS = frozenset(CUSTOM_FUNCTIONS) | frozenset(
    name.removeprefix("_func_") for name in dir(jp_functions.Functions) if name.startswith("_func_")
)
Roots = Mapping[str, frozenset[str] | None]  # context names -> their known fields (None: any)


def compile_checked(text: str, roots: Roots | None) -> tuple[Expression | None, list[str]]:
    """The compiled expression, or None and what is wrong with it. `roots=None` skips the name check
    (for expressions over a reply body, whose names are the API's)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy `literals` warn: reported below instead
            expression = Expression.compile(text)
    except ExpressionTooComplex as error:
        return None, [f"bad JMESPath {show(text)}: {error} — split it into simpler expressions"]
    except JMESPathError as error:
        return None, [f"bad JMESPath {show(text)}: {_parse_message(error)}"]
    except ValueError as error:  # jmespath lets json's error out for some `literals`, e.g. `3:00`
        return None, [f"bad JMESPath {show(text)}: a `literal` is not JSON ({error})"]
    if _legacy_literal(text):
        return None, [f"bad JMESPath {show(text)}: a `literal` is not JSON (write text as 'text' or `\"text\"`)"]
    tree = expression.parsed.parsed
    if _has_surrogate(tree):  # a `"\ud800"` escape: no output, file or column could ever hold the text
        return None, [f"bad JMESPath {show(text)}: a literal or name holds a lone surrogate (\\ud800–\\udfff)"]
    messages = [
        f"unknown function {name}() in {show(text)}{did_you_mean(name, FUNCTIONS)}"
        for name in _function_names(tree)
        if name not in FUNCTIONS
    ]
    for name, field in _references(tree) if roots is not None else ():
        if message := _reference_problem(name, field, roots or {}, text):
            messages.append(message)
    return (None if messages else expression), messages


def _legacy_literal(text: str) -> bool:
    """Whether a backtick literal is not JSON: jmespath then guesses a string and warns (deprecated).
    Tokenized here because jmespath caches parsed expressions, so compile warns only the first time."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list(Lexer().tokenize(text))
    return any(issubclass(w.category, DeprecationWarning | PendingDeprecationWarning) for w in caught)


def _has_surrogate(value: object) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_surrogate(v) for v in value)
    return False


def _function_names(node: JSON) -> Iterator[str]:
    if node.get("type") == "function_expression":
        yield node["value"]
    for child in _nodes(node):
        yield from _function_names(child)


def _nodes(node: JSON) -> list[JSON]:
    """A node's child nodes: a slice's children are its numbers (or None), not nodes."""
    return [child for child in node.get("children", []) if isinstance(child, dict)]


def _references(node: JSON) -> Iterator[tuple[str, str | None]]:
    """(name, field) for each name read from the context document, e.g. `run.today` -> ("run", "today").
    Names inside projections, filters, pipes' right sides and &expr apply to elements, not the context."""
    kind, children = node["type"], _nodes(node)
    if kind == "field":
        yield node["value"], None
    elif kind == "subexpression" and children[0]["type"] == "field":
        yield children[0]["value"], _leading_field(children[1])
    elif kind in ("subexpression", "index_expression", "projection", "value_projection", "filter_projection", "pipe"):
        yield from _references(children[0])
    elif kind != "expref":
        for child in children:
            yield from _references(child)


def _leading_field(node: JSON) -> str | None:
    if node["type"] == "field":
        return cast(str, node["value"])
    return _leading_field(node["children"][0]) if node["type"] == "index_expression" else None


def _parse_message(error: Exception) -> str:
    first = str(error).splitlines()[0]
    first = re.sub(r"^(Invalid|Bad) jmespath expression: ", "", first, flags=re.IGNORECASE)
    first = re.sub(r": Parse error at column.*$", "", first).rstrip(":")
    column = getattr(error, "lex_position", None)
    return f"{first} (at column {column})" if column is not None else first


def _reference_problem(name: str, field: str | None, roots: Roots, text: str) -> str | None:
    where = f"in {show(text)}"
    if name in ("true", "false"):
        return f"'{name}' {where} is a field name, not a boolean (write `{name}` in backticks)"
    if name == "null" and field is None:
        return None  # a bare `null` reads a missing field: null, as the author meant
    if name not in roots:
        if name == "item" and "record" in roots:
            return f"'item' {where} exists only with rows: (one row per item of a list)"
        return f"unknown name '{name}' {where} (use {', '.join(roots)}{did_you_mean(name, roots, inside=True)})"
    if name == "headers" and field is not None and field != field.lower():
        quoted = field.lower().replace('"', '\\"')
        return f"'headers.{field}' {where} never matches: header names are lower-case (write headers.\"{quoted}\")"
    known = roots[name]
    if known is None or field is None or field in known:
        return None
    have = f"has {', '.join(sorted(known))}" if known else "has no columns in a list source"
    return f"'{name}.{field}' {where} does not exist ({name} {have}{did_you_mean(field, known, inside=True)})"


def message_template(text: str) -> spec.MessageTemplate:
    """`"API said {body.error}"` -> literal and compiled parts; ValueError/ParseError if malformed."""
    parts: list[str | Expression] = []
    for is_expression, part in split_message(text):
        parts.append(Expression.compile(part) if is_expression else part)
    return spec.MessageTemplate(text=text, parts=tuple(parts))


def split_message(text: str) -> list[tuple[bool, str]]:
    parts: list[tuple[bool, str]] = []
    literal, i = "", 0
    while i < len(text):
        if text.startswith(("{{", "}}"), i):
            literal, i = literal + text[i], i + 2
        elif text[i] == "}":
            raise ValueError("unbalanced '}' (write }} for a literal brace)")
        elif text[i] == "{":
            end = _closing_brace(text, i)
            parts += [(False, literal)] if literal else []
            parts.append((True, text[i + 1 : end]))
            literal, i = "", end + 1
        else:
            literal, i = literal + text[i], i + 1
    return parts + ([(False, literal)] if literal else [])


def _closing_brace(text: str, start: int) -> int:
    """The `}` closing the `{` at `start`; braces inside JMESPath quotes and literals don't count."""
    depth, quote, escaped = 0, "", False
    for i in range(start, len(text)):
        char = text[i]
        if quote:
            escaped, quote = (not escaped and char == "\\"), ("" if char == quote and not escaped else quote)
        elif char in "'\"`":
            quote = char
        elif char in "{}":
            depth += 1 if char == "{" else -1
            if depth == 0:
                return i
    raise ValueError("unclosed '{' (write {{ for a literal brace)")
