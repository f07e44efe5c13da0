"""Whether a document passes syncrun's JSON Schemas, answered without jsonschema: `Schemas.fits`.

jsonschema (with referencing, attrs and rpds) costs ~30 ms to import, more than reading and
building a source takes, and a run only needs its verdict on a file that is right. So a file is
first checked here, with the few Draft 2020-12 keywords syncrun's schemas use, and only a file that
does not fit (or a schema using any other keyword) goes to jsonschema, which then finds and words
every problem as before (runner/schemacheck.py `check`). A yes here is therefore a promise: it must
never be said of a document jsonschema would fault (tests/test_conformance.py compares the two on
the bundled sources and on thousands of broken variants of them). A no costs only the slow path.

Each keyword follows jsonschema's own (`jsonschema/_keywords.py`): a keyword about strings passes
any other type, and so on; `integer` is syncrun's (runner/schemacheck.py: 1.0 is not one); `enum`
and `const` compare as its `equal` does (true is not 1, 1.0 is 1). `uniqueItems` is decided for
lists of text or of whole numbers only (the schemas' two kinds), anything else is left to jsonschema.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urldefrag, urljoin

Schema = Any  # a JSON Schema: a mapping of keywords, or true / false

# Keywords that say nothing about validity by themselves (`then` and `else` are read by `if`; a `$id`
# is one only at a schema's root: elsewhere it would move where `$ref`s point).
_IGNORED = frozenset({"$schema", "$id", "$defs", "$comment", "title", "description", "examples", "default"})
_IGNORED |= {"then", "else"}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_TYPES: dict[str, Callable[[object], bool]] = {
    "null": lambda value: value is None,
    "boolean": lambda value: isinstance(value, bool),
    "integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "number": _number,
    "string": lambda value: isinstance(value, str),
    "array": lambda value: isinstance(value, list),
    "object": lambda value: isinstance(value, dict),
}


def equal(one: object, two: object) -> bool:
    """jsonschema's `equal`: true and 1 differ, 1 and 1.0 do not, lists and mappings item by item."""
    if isinstance(one, str) or isinstance(two, str):
        return one == two
    if isinstance(one, list) and isinstance(two, list):
        return len(one) == len(two) and all(map(equal, one, two))
    if isinstance(one, dict) and isinstance(two, dict):
        return len(one) == len(two) and all(key in two and equal(value, two[key]) for key, value in one.items())
    if isinstance(one, bool) or isinstance(two, bool):
        return one is two
    return one == two


class Unsure(Exception):
    """A keyword (or a value under `uniqueItems`) this module does not decide: jsonschema will."""


class Schemas:
    """Schemas by name, each with its `$id` (which `$ref`s use); `fits(document, name)` is True only
    when jsonschema would find no problem."""

    def __init__(self, documents: Mapping[str, Mapping[str, Schema]]) -> None:
        self._ids = {name: str(document["$id"]) for name, document in documents.items()}
        self._roots = {self._ids[name]: document for name, document in documents.items()}
        self._refs: dict[tuple[str, str], tuple[Schema, str]] = {}

    def fits(self, document: object, name: str) -> bool:
        uri = self._ids[name]
        try:
            return self._fits(document, self._roots[uri], uri)
        except (Unsure, KeyError, TypeError, re.error):  # not ours to say (a `$ref` to nowhere: KeyError)
            return False

    def _fits(self, value: object, schema: Schema, base: str) -> bool:
        if schema is True or schema is False:
            return bool(schema)
        # An unknown keyword must not let a known one answer no either: it may change what that one
        # means (`patternProperties` beside `additionalProperties`), and under a `not` a wrong no is a
        # wrong yes (review revA F4). So the whole schema object is looked at before any keyword is.
        for keyword in schema:
            if keyword not in _KEYWORDS and (
                keyword not in _IGNORED or (keyword == "$id" and schema is not self._roots.get(base))
            ):
                raise Unsure(keyword)
        for keyword, expected in schema.items():
            check = _KEYWORDS.get(keyword)
            if check is not None and not check(self, expected, value, schema, base):
                return False
        return True

    def _ref(self, ref: str, base: str) -> tuple[Schema, str]:
        found = self._refs.get((ref, base))
        if found is None:
            uri, fragment = urldefrag(urljoin(base, ref))
            target: Schema = self._roots[uri]
            for part in fragment.split("/")[1:] if fragment else ():
                target = target[part.replace("~1", "/").replace("~0", "~")]
            found = self._refs[(ref, base)] = (target, uri)
        return found


def _unique(items: list[object]) -> bool:
    if all(isinstance(item, str) for item in items) or all(
        isinstance(item, int) and not isinstance(item, bool) for item in items
    ):
        return len(set(items)) == len(items)  # all text or all whole numbers
    raise Unsure("uniqueItems")  # anything else: jsonschema's `uniq` decides


def _one_of(checker: Schemas, options: list[Schema], value: object, base: str) -> bool:
    return sum(1 for option in options if checker._fits(value, option, base)) == 1


def _if(checker: Schemas, condition: Schema, value: object, schema: Mapping[str, Schema], base: str) -> bool:
    branch = "then" if checker._fits(value, condition, base) else "else"
    return branch not in schema or checker._fits(value, schema[branch], base)


def _additional(
    checker: Schemas, extra: Schema, value: dict[str, object], schema: Mapping[str, Any], base: str
) -> bool:
    known = schema.get("properties", {})
    return all(checker._fits(item, extra, base) for key, item in value.items() if key not in known)


def _ref(checker: Schemas, ref: str, value: object, base: str) -> bool:
    target, uri = checker._ref(ref, base)
    return checker._fits(value, target, uri)


def _str(value: object) -> bool:
    return isinstance(value, str)


def _list(value: object) -> bool:
    return isinstance(value, list)


def _dict(value: object) -> bool:
    return isinstance(value, dict)


@functools.cache
def _pattern(pattern: str) -> re.Pattern[str]:
    # Python's `$` also matches before a final newline; ECMA 262's, which JSON Schema means, only at
    # the end: "mine\n" passed `^[a-z_]...$` and became a column named `last_mine\n_sync` (review revA
    # F3). Every anchored pattern in our schemas ends with its `$` (tests/test_conformance.py checks).
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def matches(pattern: str, text: str) -> bool:
    """Whether `text` matches a schema's `pattern` as JSON Schema (ECMA 262) reads it."""
    return _pattern(pattern).search(text) is not None


_Check = Callable[[Schemas, Any, Any, Mapping[str, Any], str], bool]
_KEYWORDS: dict[str, _Check] = {
    "type": lambda c, types, v, s, b: any(_TYPES[t](v) for t in ([types] if isinstance(types, str) else types)),
    "enum": lambda c, options, v, s, b: any(equal(option, v) for option in options),
    "const": lambda c, const, v, s, b: equal(v, const),
    "pattern": lambda c, pattern, v, s, b: not _str(v) or matches(pattern, v),
    "minLength": lambda c, n, v, s, b: not _str(v) or len(v) >= n,
    "maxLength": lambda c, n, v, s, b: not _str(v) or len(v) <= n,
    # jsonschema's own comparisons, so that a NaN is decided as it decides it (it passes both)
    "minimum": lambda c, n, v, s, b: not _number(v) or not v < n,
    "maximum": lambda c, n, v, s, b: not _number(v) or not v > n,
    "minItems": lambda c, n, v, s, b: not _list(v) or len(v) >= n,
    "maxItems": lambda c, n, v, s, b: not _list(v) or len(v) <= n,
    "uniqueItems": lambda c, unique, v, s, b: not unique or not _list(v) or _unique(v),
    "minProperties": lambda c, n, v, s, b: not _dict(v) or len(v) >= n,
    "maxProperties": lambda c, n, v, s, b: not _dict(v) or len(v) <= n,
    "required": lambda c, names, v, s, b: not _dict(v) or all(name in v for name in names),
    "properties": lambda c, props, v, s, b: (
        not _dict(v) or all(c._fits(v[name], sub, b) for name, sub in props.items() if name in v)
    ),
    "additionalProperties": lambda c, extra, v, s, b: not _dict(v) or _additional(c, extra, v, s, b),
    "propertyNames": lambda c, sub, v, s, b: not _dict(v) or all(c._fits(key, sub, b) for key in v),
    "items": lambda c, sub, v, s, b: not _list(v) or all(c._fits(item, sub, b) for item in v),
    "allOf": lambda c, subs, v, s, b: all(c._fits(v, sub, b) for sub in subs),
    "anyOf": lambda c, subs, v, s, b: any(c._fits(v, sub, b) for sub in subs),
    "oneOf": lambda c, subs, v, s, b: _one_of(c, subs, v, b),
    "not": lambda c, sub, v, s, b: not c._fits(v, sub, b),
    "if": lambda c, sub, v, s, b: _if(c, sub, v, s, b),
    "$ref": lambda c, ref, v, s, b: _ref(c, ref, v, b),
}
