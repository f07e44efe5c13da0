"""The docs cover the CLI: every subcommand is in docs/cli.md and README.md, and the pages link up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runner import cli, config

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("cli.md", "tutorial.md", "troubleshooting.md", "reference.md")


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_every_command_is_documented(command: str) -> None:
    """Each subcommand has a section in docs/cli.md and appears as `syncrun COMMAND` in README.md."""
    assert f"\n## {command}\n" in (ROOT / "docs" / "cli.md").read_text()
    assert f"syncrun {command}" in (ROOT / "README.md").read_text()


def test_every_run_option_is_documented() -> None:
    """Every `syncrun run` option appears in docs/cli.md."""
    run = cli._parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    text = (ROOT / "docs" / "cli.md").read_text()
    for action in run._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                assert f"`{option}" in text, option


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page: str) -> None:
    """Relative links between the docs (and to the repository) point at files that exist."""
    text = (ROOT / "docs" / page).read_text()
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (ROOT / "docs" / target).exists(), f"{page} links to {target}"


def test_troubleshooting_covers_the_common_problems() -> None:
    """The troubleshooting page has a section per common problem."""
    headings = re.findall(r"^## (.+)$", (ROOT / "docs" / "troubleshooting.md").read_text(), re.M)
    for topic in ("429", "stuck", "Slow", "Mapping", "pgbouncer"):
        assert any(topic in heading for heading in headings), topic


def test_the_tutorials_paginated_example_validates(tmp_path: Path) -> None:
    """The worked list + detail example in docs/tutorial.md is a valid project as written."""
    text = (ROOT / "docs" / "tutorial.md").read_text()
    section = text[text.index("## 6. A paginated list") : text.index("## Pagination")]
    project, stations, readings = re.findall(r"```yaml\n(.*?)```", section, re.S)
    (tmp_path / "syncrun.yaml").write_text(project)
    for name, body in (("stations", stations), ("readings", readings)):
        (tmp_path / f"{name}.yaml").write_text(body)
        assert config.validate([tmp_path / f"{name}.yaml"]) == {tmp_path / f"{name}.yaml": []}


def test_the_tutorials_incremental_example_validates(tmp_path: Path) -> None:
    """The worked incremental example in docs/tutorial.md is a valid source as written."""
    text = (ROOT / "docs" / "tutorial.md").read_text()
    start = text.index("## 9. Incremental syncs")
    section = text[start : text.find("\n## ", start + 1) % (len(text) + 1)]
    (tickets,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    (tmp_path / "tickets.yaml").write_text(tickets)
    assert config.validate([tmp_path / "tickets.yaml"]) == {tmp_path / "tickets.yaml": []}
    assert "${incremental.since}" in tickets


def test_the_tutorials_selection_example_validates(tmp_path: Path) -> None:
    """The entities block of the where/order/join section, in a minimal source, is valid."""
    text = (ROOT / "docs" / "tutorial.md").read_text()
    section = text[text.index("## 10. Choosing which entities") :]
    (entities,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    rest = (
        'request: {url: "https://api.example/apps/{appid}"}\nrate_limit: {requests: 1, per: 1s}\n'
        "writes: [{table: apps, key: [appid], columns: {appid: entity.appid}}]\n"
    )
    (tmp_path / "picked.yaml").write_text("name: picked\n" + entities + rest)
    assert config.validate([tmp_path / "picked.yaml"]) == {tmp_path / "picked.yaml": []}
