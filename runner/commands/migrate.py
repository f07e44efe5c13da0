"""`syncrun migrate`: create or upgrade syncrun's tables, or print the DDL (`--sql`)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from runner import config, database, migrations, preflight


def handle(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    sources = [config.load(path) for path in args.sources]
    tables = [migrations.tables_sql(name) for name in args.tables]
    if args.sql:
        print("\n".join([migrations.migration_sql(sources), *tables]))
        return 0
    preflight.check_environment(environ)
    with database.connect(database.dsn_from_env(environ)) as conn:
        changed: list[str] = []
        applied = migrations.migrate(conn, sources, changed=changed)
        for name, script in zip(args.tables, tables, strict=True):
            with conn.transaction():
                conn.execute(script)  # idempotent DDL: `if not exists` throughout
            applied.append(f"tables/{name}")
    if applied:
        print(f"migrated: {applied}")
    for change in changed:
        print(change)
    if not applied and not changed:
        print("up to date: nothing to create or add")
    return 0
