"""logs: one record is one line in the text and GitHub formats, whatever its values hold; ordinary
text is printed as it is; JSON escapes by itself."""

from __future__ import annotations

import json
import logging

import pytest

from runner import logs
from runner.redaction import Redactor

FORGED = "z\r\n04:00:00 info    hv: completed — processed 999\x1b[2K\u2028\u202eevil"


@pytest.mark.parametrize("fmt", ["text", "github"])
def test_control_characters_in_a_record_cannot_forge_lines(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """review11 F8: a CR/LF in an entity key printed a second, forged log line."""
    logs.configure(fmt, Redactor())
    logging.getLogger("syncrun").warning("%s %s failed: %s", "hv", FORGED, "not sent", extra={"key": "a\nb"})
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "z\\r\\n04:00:00 info    hv: completed — processed 999\\x1b[2K\\u2028\\u202eevil failed: not sent" in err
    assert err.rstrip("\n").endswith(" key=a\\nb")
    assert err.startswith("::warning::" if fmt == "github" else "")


def test_ordinary_text_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    ordinary = "alpha: café ü ✓ 日本 'quoted' \\ back\\slash %d — done"
    logs.configure("text", Redactor())
    logging.getLogger("syncrun").info("%s", ordinary)
    assert capsys.readouterr().err.split(" ", 1)[1] == f"info    {ordinary}\n"
    assert logs.printable(ordinary) == ordinary


def test_json_keeps_the_characters_themselves(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json", Redactor())
    logging.getLogger("syncrun").warning("%s", FORGED)
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["message"] == FORGED


def test_an_annotation_cannot_carry_an_encoded_line_break(capsys: pytest.CaptureFixture[str]) -> None:
    """review2 N2: the Actions runner decodes %0A, %0D and %25 in an annotation's message, so a key
    `pct%0A::error::forged%25` became a second annotation; `%` is written as %25 there (the runner shows
    it as `%`). Lines that are not annotations are printed as they are."""
    logs.configure("github", Redactor())
    logging.getLogger("syncrun").warning("%s failed", "pct%0A::error::forged%25")
    logging.getLogger("syncrun").info("%s done", "50%")
    warning, info = capsys.readouterr().err.splitlines()
    assert warning.startswith("::warning::")
    assert warning.endswith("pct%250A::error::forged%2525 failed")
    assert info.endswith(" 50% done")
