"""`syncrun validate`: check source files, listing every problem (exit 2), and two sources writing one column."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from runner import config, overrides, ownership, spec
from runner.errors import ConfigError


def handle(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    paths = args.paths or config.default_paths()
    sets = overrides.parse(args.overrides)
    problems = 0
    loaded: dict[Path, spec.Source] = {}
    for path in paths:
        try:
            loaded[path] = config.load(path, sets)
        except ConfigError as error:
            problems += len(error.problems)
            print(error)
        else:
            print(f"{path}: ok")
    shared = ownership.problems(loaded)  # across files: two sources writing one column
    for problem in shared:
        print(problem)
    problems += len(shared)
    if problems:
        print(f"{problems} problem(s) found", file=sys.stderr)
        return 2
    return 0
