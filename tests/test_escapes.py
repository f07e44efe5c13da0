"""escapes: a text's decoded views, every escape read as the character it stands for."""

from __future__ import annotations

from runner.escapes import ROUNDS, views


def test_text_without_escape_characters_has_no_decoding() -> None:
    assert views("plain text / no escapes") == ["plain text / no escapes"]


def test_escapes_of_escapes_take_another_round() -> None:
    """Percent-encoded JSON escapes of HTML entities: one round per layer, at most ROUNDS."""
    assert views("%5Cu00e9 &#x26;amp;") == ["%5Cu00e9 &#x26;amp;", "\\u00e9 &amp;", "é &"]
    layered = "%25" + "25" * ROUNDS + "41"  # each round decodes one layer: %2541 -> %41 -> A
    assert views(layered)[1:] == ["%" + "25" * (ROUNDS - k) + "41" for k in range(ROUNDS)]
