"""links: the RFC 8288 Link header, parsed strictly and in linear time."""

from __future__ import annotations

import re

import pytest

from runner import links


def test_several_links_quoted_and_unquoted_parameters() -> None:
    """One header with several links; quoted values may hold commas, semicolons and escapes."""
    header = '<https://a.example/x?page=2>; rel="next", </x?page=9>;rel=last; title="a, b; \\"c\\"" ,<p>; REL=Prev'
    assert links.parse(header) == [
        links.Link("https://a.example/x?page=2", {"rel": "next"}),
        links.Link("/x?page=9", {"rel": "last", "title": 'a, b; "c"'}),
        links.Link("p", {"rel": "Prev"}),
    ]
    assert links.target(header, "prev") == "p"  # relation names compare case-insensitively


def test_a_rel_with_several_relations() -> None:
    """`rel="next last"` is both; the first occurrence of a parameter counts."""
    (link,) = links.parse('<u>; rel="next last"; rel=prev')
    assert link.rels == frozenset({"next", "last"})
    assert links.target('<a>; rel=prev, <b>; rel="last next"', "next") == "b"


def test_repeated_headers_arrive_joined() -> None:
    """Two Link header lines reach pagination joined with ", ": the same list; empty elements are fine."""
    assert links.target("<a>; rel=first, , <b>; rel=next;", "next") == "b"
    assert links.target("", "next") is None
    assert links.target('<a>; rel="first"', "next") is None


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("https://a/x; rel=next", "expected <URI> at character 1, found 'https://a/x; rel=nex…'"),
        ("<a> rel=next", "unexpected 'rel=next' at character 5"),
        ("<a>; =next", "expected a parameter name at character 6, found '=next'"),
        ('<a>; rel="next', "expected a value for rel at character 10, found '\"next'"),
        ("<a>; rel=", "expected a value for rel at character 10, found the end"),
        ("<a<b>>", "expected <URI> at character 1, found '<a<b>>'"),
    ],
)
def test_what_is_not_a_link_header_says_where(header: str, message: str) -> None:
    """A header off the grammar is an error saying where, never a guessed "no next link"."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        links.parse(header)


def test_a_huge_header_is_parsed_in_one_pass() -> None:
    """100,000 links, or an unclosed quote after 1 MB, take one linear pass."""
    many = ", ".join(f"</p{i}>; rel=item" for i in range(100_000)) + ", </end>; rel=next"
    assert links.target(many, "next") == "/end"
    with pytest.raises(ValueError, match="expected a value for t"):
        links.parse('<a>; t="' + "x" * 1_000_000)
