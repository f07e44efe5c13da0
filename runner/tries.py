"""One regular expression matching any of many pieces, for runner/redaction.py: a trie of alternations,
so sre tries one branch per character, and its cost does not grow with the number of pieces."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

_TRIE_DEPTH = 64  # longer pieces (a whole DSN) are plain alternatives: the trie is built recursively


def trie_regex(pieces: Iterable[str], *, loose: bool = False) -> str:
    """One regex matching any of `pieces`, longest first at each position: a trie of alternations for
    the many short ones (sre then tries one branch per character), longest-first literals for the rest.
    `loose`: a space matches `+` too (a form-encoded space, which a decoded view cannot decode: `+` is
    also itself)."""
    escape = _loose_escape if loose else re.escape
    short = [piece for piece in pieces if len(piece) <= _TRIE_DEPTH]
    long = sorted((piece for piece in pieces if len(piece) > _TRIE_DEPTH), key=len, reverse=True)
    alternatives = [escape(piece) for piece in long]
    return "|".join([*alternatives, _trie(short, escape)] if short else alternatives)


def _loose_escape(text: str) -> str:
    return "".join("[ +]" if char == " " else re.escape(char) for char in text)


def _trie(pieces: Iterable[str], escape: Callable[[str], str]) -> str:
    trie: dict[str, Any] = {}
    for piece in pieces:
        node = trie
        for char in piece:
            node = node.setdefault(char, {})
        node[""] = {}
    return _node_regex(trie, escape)


def _node_regex(node: dict[str, Any], escape: Callable[[str], str]) -> str:
    branches = [escape(char) + _node_regex(child, escape) for char, child in sorted(node.items()) if char]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if "" in node:  # a piece ends here: take the longer one when it matches (greedy), else stop here
        return f"(?:{body})?" if len(branches) == 1 else body + "?"
    return body
