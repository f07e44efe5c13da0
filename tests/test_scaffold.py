"""`syncrun new`: starter sources that validate, with mappings guessed from a sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner import cli, config, scaffold
from runner.errors import UsageError

SAMPLE = {
    "data": {
        "appid": 730,
        "name": "Counter-Strike 2",
        "is_free": True,
        "price": {"cents": 0, "currency": "USD"},
        "release_date": "2012-08-21",
        "score": 8.5,
        "tags": ["FPS", "Shooter"],
        "developers": [{"id": 1, "name": "Valve"}],
        "Weird-Key": "x",
    }
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "syncrun.yaml").write_text("status: {table: sync_status, key: appid}\nentities: {key: appid}\n")
    (tmp_path / "sample.json").write_text(json.dumps(SAMPLE))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_new_writes_a_source_that_validates(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`syncrun new` writes sources/NAME.yaml and `syncrun validate` passes on it."""
    assert cli.main(["new", "games", "--url", "https://api.example.com/apps/{appid}", "--sample", "sample.json"]) == 0
    path = project / "sources" / "games.yaml"
    assert "wrote sources/games.yaml" in capsys.readouterr().out
    assert cli.main(["validate", str(path)]) == 0
    source = config.load(path)
    assert source.entities.key == "appid"
    assert source.records is not None
    assert source.records.text == "body.data"
    columns = {f.column: f.expression.text for f in source.writes[0].columns}
    assert columns["appid"] == "entity.appid"
    assert columns["price_cents"] == "as_int(record.price.cents)"
    assert columns["release_date"] == "parse_date(record.release_date)"
    assert columns["score"] == "as_float(record.score)"
    assert columns["weird_key"] == 'record."Weird-Key"'


def test_nested_lists_are_commented_child_tables(project: Path) -> None:
    """Each nested list is offered as a commented-out child table, one row per item."""
    text = scaffold.source_text("games", "https://x/{appid}", SAMPLE, Path("sources/games.yaml"))
    assert "  # - table: games_tags\n" in text
    assert "  #   rows: record.tags\n" in text
    assert "  #     tag: item  # text" in text
    assert "  #     id: as_int(item.id)  # int, e.g. 1" in text


def test_placeholders_become_entity_columns_and_a_status_table(project: Path) -> None:
    """Every {placeholder} is an entity column; a key other than the project's gets its own status table."""
    out = project / "sources" / "items.yaml"
    assert cli.main(["new", "items", "--url", "https://x/items/{id}?lang={lang}", "--out", str(out)]) == 0
    source = config.load(out)
    assert [(c.name, c.type) for c in source.entities.columns] == [("id", "int"), ("lang", "text")]
    assert source.status is not None
    assert str(source.status.table) == "items_status"


def test_refuses_to_overwrite_without_force(project: Path) -> None:
    """An existing file is kept unless --force."""
    args = ["new", "games", "--url", "https://x/{appid}"]
    assert cli.main(args) == 0
    assert cli.main(args) == 2
    assert cli.main([*args, "--force"]) == 0


@pytest.mark.parametrize(
    ("name", "url", "message"),
    [
        ("Bad-Name", "https://x/{appid}", "source name 'Bad-Name': use lower-case letters, digits and _"),
        ("games", "https://x/all", "has no {placeholder}: put the entity key where it goes"),
    ],
)
def test_bad_arguments_say_what_to_do(project: Path, name: str, url: str, message: str) -> None:
    """A bad name or a URL without placeholder is a UsageError that says what to write instead."""
    with pytest.raises(UsageError, match=message.replace("{", r"\{").replace("(", r"\(")):
        scaffold.source_text(name, url, None, Path("sources/x.yaml"))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"<html>", "not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"[" * 5000 + b"]" * 5000, "JSON nested deeper than 128 levels"),  # was RecursionError, exit 70
        (b'{"a": "\xff\xfe"}', "not valid UTF-8 at byte 7: invalid start byte"),  # was UnicodeDecodeError
        (b"", "empty"),
    ],
)
def test_sample_that_is_not_usable_json(project: Path, content: bytes, reason: str) -> None:
    """A sample the engine could not read either names the file and why, and how to save a response."""
    (project / "bad.json").write_bytes(content)
    with pytest.raises(UsageError) as error:
        scaffold.read_sample(Path("bad.json"))
    assert str(error.value).startswith(f"--sample bad.json: not JSON syncrun can use ({reason}) — save one raw")
