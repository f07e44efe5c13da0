"""GitHub Actions: generated workflows, the bundled examples, masks, annotations and the step summary."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from runner import cli, config, jobs, logs, workflow
from runner.engine import Report
from runner.redaction import Redactor
from tests.apiserver import ApiServer, Reply
from tests.pg import Database
from tests.test_engine import app, seed, write_source

ROOT = Path(__file__).resolve().parent.parent


def test_render_has_schedule_inputs_concurrency_timeout_and_settings(tmp_path: Path) -> None:
    """The workflow is valid YAML with cron, dispatch inputs, a non-cancelling group, secrets and vars."""
    source = config.load(write_source(tmp_path))
    text = workflow.render(source, "sources/alpha.yaml")
    doc = yaml.safe_load(text)
    triggers = doc[True]  # YAML 1.1 reads the key `on` as true
    assert triggers["schedule"][0]["cron"] == workflow.schedule(source)[0].cron
    assert set(triggers["workflow_dispatch"]["inputs"]) == {"limit", "dry_run"}
    assert doc["concurrency"] == {"group": "syncrun-alpha", "cancel-in-progress": False}
    job = doc["jobs"]["sync"]
    step = job["steps"][-1]
    assert step["env"]["API_TOKEN"] == "${{ secrets.API_TOKEN }}"
    assert step["env"]["API_URL"] == "${{ vars.API_URL }}"
    assert step["env"]["DATABASE_URL"] == "${{ secrets.DATABASE_URL }}"
    assert step["env"]["BATCH_SIZE"] == "${{ inputs.limit }}"
    assert step["run"].startswith("exec syncrun run sources/alpha.yaml --max-runtime ")
    runtime = int(step["run"].split("--max-runtime ")[1].split()[0])
    assert runtime < job["timeout-minutes"] * 60


class _Strict(yaml.SafeLoader):
    """A loader that refuses a key twice in one mapping (GitHub does; safe_load keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        assert len(keys) == len(set(keys)), f"duplicate key in {keys}"
        return super().construct_mapping(node, deep=deep)


def test_a_variable_read_as_env_and_as_secret_is_one_secret(tmp_path: Path) -> None:
    """Review revH F4: `${env.API_TOKEN}` and `${secret.API_TOKEN}` in one source (and the workflow's
    own BATCH_SIZE read by the source) give each variable once, a secret from secrets."""
    file = write_source(tmp_path)
    query = "{t: '${env.API_TOKEN}', n: '${env.BATCH_SIZE:-5}', u: '${secret.API_URL}'}"
    text = file.read_text().replace("  timeout: 2s", f"  query: {query}\n  timeout: 2s")
    file.write_text(text)
    source = config.load(file)
    assert {(s.name, s.secret) for s in source.settings} >= {("API_TOKEN", False), ("API_TOKEN", True)}
    step = yaml.load(workflow.render(source, "sources/alpha.yaml"), Loader=_Strict)["jobs"]["sync"]["steps"][-1]
    assert step["env"] == {
        "DATABASE_URL": "${{ secrets.DATABASE_URL }}",
        "API_URL": "${{ secrets.API_URL }}",
        "API_TOKEN": "${{ secrets.API_TOKEN }}",
        "BATCH_SIZE": "${{ inputs.limit }}",
        "DRY_RUN": "${{ inputs.dry_run && '--dry-run' || '' }}",
    }


def test_timeout_follows_limit_over_rate(tmp_path: Path) -> None:
    """timeout-minutes grows with limit / rate, within GitHub's bounds; max-runtime stays below it."""
    source = config.load(write_source(tmp_path))
    slow = replace(source, rate_limit=replace(source.rate_limit, requests=1, per=1.0))
    slow = replace(slow, entities=replace(slow.entities, limit=3000))
    assert workflow.expected_seconds(slow) == 3000
    timeout = workflow.timeout_minutes(slow)
    assert timeout == workflow.SETUP_MINUTES + 75 + workflow.STOP_MARGIN_MINUTES
    assert workflow.max_runtime_seconds(timeout) == (timeout - 6) * 60
    huge = replace(slow, entities=replace(slow.entities, limit=10**6))
    assert workflow.timeout_minutes(huge) == workflow.MAX_TIMEOUT_MINUTES
    assert workflow.timeout_minutes(source) == workflow.MIN_TIMEOUT_MINUTES


def test_declared_schedule_is_used(tmp_path: Path) -> None:
    """A source's schedule block (cron, timeout_minutes, partitions) wins over the default."""

    class Declared:
        cron = "15 */2 * * *"
        timeout_minutes = 55
        partitions = 3

    source = config.load(write_source(tmp_path))
    fake = type("WithSchedule", (), {name: getattr(source, name) for name in dir(source) if not name.startswith("_")})
    fake.schedule = Declared()  # type: ignore[attr-defined]
    text = workflow.render(fake, "sources/alpha.yaml")  # type: ignore[arg-type]
    doc = yaml.safe_load(text)
    assert doc[True]["schedule"][0]["cron"] == "15 */2 * * *"
    assert doc["jobs"]["sync"]["timeout-minutes"] == 55
    assert doc["jobs"]["sync"]["strategy"]["matrix"]["partition"] == [0, 1, 2]
    assert '--partition "${{ matrix.partition }}/3"' in text
    assert "from its schedule: block" in text


def test_default_cadence_fits_the_timeout(tmp_path: Path) -> None:
    """Without a schedule: block the cadence in hours is at least the timeout, never at minute 0."""
    source = config.load(write_source(tmp_path))
    slow = replace(source, rate_limit=replace(source.rate_limit, requests=1, per=1.0))
    slow = replace(slow, entities=replace(slow.entities, limit=7000))
    plan, declared = workflow.schedule(slow)
    minute, hours = plan.cron.split()[:2]
    assert not declared
    assert 5 <= int(minute) < 55
    assert int(hours.removeprefix("*/")) * 60 >= workflow.timeout_minutes(slow)


def test_bundled_example_workflows_are_up_to_date() -> None:
    """examples/workflows/ is what `python -m runner.workflow` generates from sources/*.yaml."""
    assert workflow.main(["--check"]) == 0, "run `python -m runner.workflow` and commit the result"


def test_cli_workflow_prints_the_same_text(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`syncrun workflow sources/x.yaml` prints exactly the bundled example."""
    monkeypatch.chdir(ROOT)
    assert cli.main(["workflow", "sources/steam-price.yaml"]) == 0
    assert capsys.readouterr().out == (ROOT / "examples/workflows/syncrun-steam-price.yml").read_text()


def test_masks_and_groups_only_under_github_actions(capsys: pytest.CaptureFixture[str]) -> None:
    """::add-mask:: per secret and ::group:: only when GITHUB_ACTIONS=true."""
    workflow.announce_masks({}, ["s3cr3t"])
    with workflow.group("x", {}):
        pass
    assert capsys.readouterr().out == ""
    workflow.announce_masks({"GITHUB_ACTIONS": "true"}, ["s3cr3t", "s3cr3t", ""])
    with workflow.group("alpha", {"GITHUB_ACTIONS": "true"}):
        print("inside")
    assert capsys.readouterr().out == "::add-mask::s3cr3t\n::group::alpha\ninside\n::endgroup::\n"


def test_github_log_format_annotates_warnings_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """The github log format prefixes ::warning:: and ::error::, and still redacts."""
    assert workflow.log_format("text", {"GITHUB_ACTIONS": "true"}) == "github"
    assert workflow.log_format("json", {"GITHUB_ACTIONS": "true"}) == "json"
    assert workflow.log_format("text", {}) == "text"
    logs.configure("github", Redactor(["hunter22"]))
    log = logging.getLogger("syncrun")
    log.info("plain")
    log.warning("app 1 failed: hunter22")
    log.error("run failed")
    lines = capsys.readouterr().err.splitlines()
    assert not lines[0].startswith("::")
    assert lines[1].startswith("::warning::")
    assert "hunter22" not in lines[1]
    assert lines[2].startswith("::error::")


def test_step_summary_markdown() -> None:
    """The summary has a row per source with counters, duration and rate, then top errors."""
    counters = jobs.Counters(processed=9, succeeded=3, failed=2, unchanged=4, requests=20)
    report = Report("alpha", elapsed=10.0, counters=counters)
    text = workflow.step_summary([report], {"alpha": [("HTTP 500 | oops", 2)]})
    assert "| source | status | processed | succeeded | failed | skipped | unchanged | requests |" in text
    assert "| alpha | ✅ completed | 9 | 3 | 2 | 0 | 4 | 20 | 10.0 s | 2.00/s |" in text
    assert "| 2 | HTTP 500 \\| oops |" in text


@pytest.fixture
def gh_env(db: Database, api: ApiServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("DATABASE_URL", db.dsn)
    monkeypatch.setenv("API_URL", api.url)
    monkeypatch.setenv("API_TOKEN", "s3cr3t-token-value")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    return summary


def test_run_under_github_actions_masks_and_writes_a_summary(
    gh_env: Path, db: Database, api: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run under GITHUB_ACTIONS prints ::add-mask:: for the secret and appends the step summary."""
    source = write_source(tmp_path)
    seed(db, source, appids=[1, 2])
    api.route("/apps/1", app(1))
    api.route("/apps/2", Reply(500))
    assert cli.main(["run", str(source)]) == 0
    out = capsys.readouterr()
    assert "::add-mask::s3cr3t-token-value" in out.out.splitlines()
    assert "s3cr3t-token-value" not in out.err
    summary = gh_env.read_text()
    assert "| alpha | ✅ completed | 2 | 1 | 1 |" in summary


def test_a_step_summary_that_cannot_be_written_is_a_warning(
    gh_env: Path,
    db: Database,
    api: ApiServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unwritable $GITHUB_STEP_SUMMARY costs the summary, not the run's result lines or its exit
    status (review15 F1: a traceback, exit 70, hid them)."""
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "missing" / "summary.md"))
    source = write_source(tmp_path)
    seed(db, source, appids=[1])
    api.route("/apps/1", app(1))
    assert cli.main(["run", str(source)]) == 0
    out = capsys.readouterr()
    assert "alpha: completed" in out.out + out.err
    assert "could not write the step summary" in out.out + out.err
