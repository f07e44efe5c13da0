"""ownership: `syncrun validate` refuses two sources writing one column unless both declare how."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import cli

SOURCE = """\
name: {name}
entities: {{type: default, columns: {{appid: int}}}}
request: {{url: "http://127.0.0.1:1/{name}/{{appid}}"}}
rate_limit: {{requests: 1, per: 1s}}
writes:
  - table: apps
    key: [appid]
    {mode}
    columns:
      appid: entity.appid
      name: record.name
      {extra}
    {merge}
"""


def source(tmp: Path, name: str, *, merge: str = "", mode: str = "", extra: str = "") -> Path:
    (tmp / "syncrun.yaml").write_text("status: {table: sync_status, key: appid}\n")
    path = tmp / f"{name}.yaml"
    path.write_text(SOURCE.format(name=name, merge=merge, mode=mode, extra=extra))
    return path


def validate(*paths: Path) -> int:
    return cli.main(["validate", *map(str, paths)])


def test_two_sources_writing_one_column_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both writers of apps.name are reported, at the column's line, naming the other source."""
    a, b = source(tmp_path, "alpha"), source(tmp_path, "beta")
    assert validate(a, b) == 2
    out = capsys.readouterr().out
    assert f"{a}:11: writes[0].columns.name: apps.name is also written by {b}: declare how" in out
    assert f"{b}:11: writes[0].columns.name: apps.name is also written by {a}: declare how" in out


def test_declared_sharing_is_accepted(tmp_path: Path) -> None:
    """With a merge rule for the column in both sources (greatest, keep_existing_if_null or replace) it validates."""
    a = source(tmp_path, "alpha", merge="merge: {name: replace}")
    b = source(tmp_path, "beta", merge="merge: {name: keep_existing_if_null}")
    assert validate(a, b) == 0


def test_one_sided_declaration_still_reports_the_other(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the source that did not declare how it shares the column is reported."""
    a = source(tmp_path, "alpha", merge="merge: {name: greatest}")
    b = source(tmp_path, "beta")
    assert validate(a, b) == 2
    out = capsys.readouterr().out
    assert str(b) + ":11:" in out
    assert str(a) + ":11:" not in out


def test_keys_and_insert_only_writes_are_not_conflicts(tmp_path: Path) -> None:
    """The conflict key is shared identity, and an insert-only write never overwrites anybody."""
    a = source(tmp_path, "alpha")
    b = source(tmp_path, "beta", mode="mode: insert")
    assert validate(a, b) == 0
