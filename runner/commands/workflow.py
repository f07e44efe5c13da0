"""`syncrun workflow`: a scheduled GitHub Actions workflow for a source, printed or written."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from runner import config, workflow


def handle(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    source = config.load(args.source)
    path = args.source.as_posix()
    if args.source.is_absolute() and args.source.is_relative_to(Path.cwd()):
        path = args.source.relative_to(Path.cwd()).as_posix()
    text = workflow.render(source, path)
    if args.out is None:
        print(text, end="")
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
