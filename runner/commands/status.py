"""`syncrun status`: per source, what is due, never synced, backing off or failing, and the last runs."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from runner import config, database, preflight
from runner.commands import connections
from runner.errors import UsageError
from runner.redaction import Redactor


def handle(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from runner import overview

    sources = [config.load(path) for path in args.sources or config.default_paths()]
    if args.runs <= 0:
        raise UsageError(f"--runs must be a positive integer, got {args.runs}")
    preflight.check_environment(environ)
    dsn = database.dsn_from_env(environ)
    target = database.open_target(dsn)
    with target.connect() as conn:
        states = [overview.collect(conn, source, runs=args.runs) for source in sources]
    # Settings are not resolved (status needs no API token), but any secret that is set is masked.
    names = sorted({s.name for src in sources for s in src.settings if s.kind == "secret"})
    secrets, urls = connections.secrets(environ, dsn)
    redact = Redactor([*(environ.get(name) for name in names), *secrets], whole=urls)
    print(overview.to_json(states, redact) if args.json else overview.format_text(states, redact), end="")
    return 0
