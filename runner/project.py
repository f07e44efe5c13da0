"""`syncrun init [DIR]`: the files of a new project, from the bundled example.

A project is a `syncrun.yaml` (project-wide defaults), `sources/` with the annotated example source,
`.github/workflows/` with a validation workflow and the example's scheduled run (runner/workflow.py),
a `requirements.txt` pinning this syncrun, a `.gitignore` and a short README. Every source written
must validate against the new project's own syncrun.yaml (not one in a parent folder). Nothing that
exists is overwritten: an existing README.md or .gitignore (a git repository's) is kept as it is,
and any other file init would write that exists makes it refuse, writing nothing; unrelated files
in the folder do not matter.
"""

from __future__ import annotations

import tempfile
from importlib import metadata
from pathlib import Path

from runner import config, workflow
from runner.demo import bundled_root
from runner.errors import UsageError

EXAMPLE = Path("sources/example.yaml")
REQUIREMENTS = "requirements.txt"
KEPT = (Path("README.md"), Path(".gitignore"))  # a repository's own: kept when they exist, not refused

_PROJECT = """\
# Project-wide defaults, so sources don't repeat them. syncrun finds this file by walking up from a
# source file's folder; `syncrun validate` checks it with every source.
status:
  table: sync_status                # where each source's last_<source>_sync stamp goes
  key: appid                        # the status table's key column
entities:
  key: appid                        # the entity key a source selects by default
  key_type: int                     # int, bigint or text
"""

_EXAMPLE_HEADER = """\
# The annotated example source: one request per due app, rows into three tables, a stamp per app.
# Try it against the demo API (a small catalogue served on 127.0.0.1:8765 by syncrun itself):
#   syncrun demo --serve --seed sources/example.yaml     # its tables, 40 demo apps, then the API
#   syncrun sources/example.yaml                          # in a second terminal
# Point EXAMPLE_API_URL at a real server with the same shape to use it for real.
"""

_VALIDATE = """\
# Checks every source on each push and pull request: the same `syncrun validate` you run locally.
name: "syncrun validate"

on:
  push:
  pull_request:

jobs:
  validate:
    runs-on: ubuntu-latest
    timeout-minutes: 10
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
          cache: pip
          cache-dependency-path: requirements.txt
      - name: Install syncrun
        run: python -m pip install -r requirements.txt
      - name: Validate sources
        run: syncrun validate
      - name: Print the DDL the sources need
        run: syncrun migrate sources/*.yaml --sql
"""

_README = """\
# {name}

A syncrun project: one YAML file per source under `sources/`, run on a schedule by GitHub Actions,
writing into PostgreSQL. `requirements.txt` says which syncrun to install.

```bash
python -m pip install -r requirements.txt
syncrun validate                                    # check every source
syncrun demo --serve --seed sources/example.yaml    # the demo API, the example's tables and 40 apps
syncrun sources/example.yaml                        # in a second terminal: a real run against it
syncrun status                                      # due, failing, last runs
```

Without `DATABASE_URL` syncrun uses an embedded PostgreSQL under `.syncrun/`; set it to use yours
(then create the tables once with `syncrun migrate sources/*.yaml`).

- `syncrun.yaml`: project-wide defaults (the status table and the entity key).
- `sources/example.yaml`: the annotated example; copy it, or start another with
  `syncrun new NAME --url 'https://api.example.com/items/{{id}}' --sample response.json`.
- `.github/workflows/syncrun-validate.yml` validates the sources on every push;
  `syncrun-example.yml` runs the example on a schedule (`syncrun workflow sources/X.yaml --out
  .github/workflows/syncrun-X.yml` writes one for another source). Set the `DATABASE_URL` secret,
  and the source's settings as secrets and variables, in the repository's settings.
"""

_REQUIREMENTS = """\
# The syncrun this project runs with (CI installs it from here): a version from your package index,
# or a wheel or git URL, e.g. syncrun @ git+https://github.com/OWNER/syncrun@v{version}
syncrun=={version}
"""

_GITIGNORE = """\
.syncrun/
.venv/
__pycache__/
"""


def version() -> str:
    """This syncrun's version, from the installed package's metadata (runner/__init__.py's when the
    package runs from a folder that was never installed)."""
    try:
        return metadata.version("syncrun")
    except metadata.PackageNotFoundError:
        from runner import __version__

        return __version__


def example_text() -> str:
    """The bundled annotated example, with a header for a project of its own."""
    text = (bundled_root() / EXAMPLE).read_text(encoding="utf-8")
    body = text[text.index("\nname:") + 1 :]  # the bundled header points at the checkout's schema and demo
    return _EXAMPLE_HEADER + body


def files(directory: Path) -> dict[Path, str]:
    """Path (under `directory`) -> text of every file `init` writes."""
    example = example_text()
    # Validated against its own syncrun.yaml, as it will be once written: the lookup walks up from the
    # source's folder, so in place it would find a parent project's (a monorepo's) file first.
    with tempfile.TemporaryDirectory(prefix="syncrun-init-") as scratch:
        (Path(scratch) / config.PROJECT_FILE).write_text(_PROJECT, encoding="utf-8")
        source = config.loads(example, Path(scratch) / EXAMPLE)  # a starter that does not validate is a bug
    scheduled = workflow.render(source, EXAMPLE.as_posix(), requirements=REQUIREMENTS)
    flows = Path(".github/workflows")
    return {
        Path(config.PROJECT_FILE): _PROJECT,
        EXAMPLE: example,
        flows / "syncrun-validate.yml": _VALIDATE,
        flows / workflow.workflow_name(EXAMPLE): scheduled,
        Path(REQUIREMENTS): _REQUIREMENTS.format(version=version()),
        Path(".gitignore"): _GITIGNORE,
        Path("README.md"): _README.format(name=directory.resolve().name),
    }


def init(directory: Path) -> tuple[list[Path], list[Path]]:
    """Write a new project into `directory`: (written, kept). An existing README.md or .gitignore is
    kept; UsageError naming every other file init would write that already exists (nothing written)."""
    planned = files(directory)
    kept = [directory / path for path in KEPT if (directory / path).exists()]
    existing = [directory / path for path in planned if path not in KEPT and (directory / path).exists()]
    if existing:
        names = ", ".join(str(path) for path in existing)
        raise UsageError(f"syncrun init never overwrites, and these exist: {names}")
    written = []
    for path, text in planned.items():
        if directory / path in kept:
            continue
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        (directory / path).write_text(text, encoding="utf-8")
        written.append(directory / path)
    return written, kept
