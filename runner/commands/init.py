"""`syncrun init`: a new project's files from the bundled example (runner/project.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path


def handle(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from runner import project

    written, kept = project.init(args.directory)
    for path in written:
        print(f"wrote {path}")
    for path in kept:
        print(f"kept {path} as it is", file=sys.stderr)
    if args.directory / ".gitignore" in kept:
        print("add .syncrun/ (the embedded database) to your .gitignore", file=sys.stderr)
    where = "" if args.directory == Path() else f"cd {args.directory} && "
    print(f"next: {where}syncrun validate && syncrun demo --serve --seed sources/example.yaml", file=sys.stderr)
    return 0
