"""`syncrun demo`: the Steam replays (or, with --example, the example source against a local demo API)
on the embedded database through the normal run path; `demo --serve` the example's demo API alone."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from psycopg.conninfo import make_conninfo

from runner import config, database, migrations, preflight
from runner.commands import run
from runner.commands.options import run_arguments
from runner.errors import UsageError


def handle(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """The Steam sources from their replays on the embedded database (or, with --example, the example
    source against a local demo API), through the normal run path; then what was written."""
    from runner import demo  # the demo API is only imported when asked for

    if args.serve:
        return _serve_demo(args, environ)
    if args.example:
        return _example_demo(environ)
    root = _checkout()
    sources = [root / "sources" / f"{stem}.yaml" for stem in demo.STEAM_ORDER]
    specs = [config.load(path) for path in sources]
    target = database.open_target(None)  # the demo never touches the database DATABASE_URL names
    with target.connect() as conn:
        demo.fresh_database(conn)
    dsn = make_conninfo(target.dsn, dbname=demo.DEMO_DATABASE)
    with database.connect(dsn) as conn:
        migrations.migrate(conn, specs)
        demo.steam_prepare(conn, root)
    local = {**environ, "DATABASE_URL": dsn, "STEAM_API_KEY": "demo-key"}
    print(f"replaying {len(sources)} Steam sources into {database.redact_dsn(dsn)}", file=sys.stderr)
    codes = []
    for path in sources:
        replayed = root / "sources" / "replays" / path.stem
        run_args = [str(path), "--replay", str(replayed), "--rate-scale", "50", "--progress-every", "50"]
        codes.append(int(run.handle(run_arguments(run_args), local)))
    with database.connect(dsn) as conn:
        print(demo.steam_summary(conn))
    return max(codes)


def _example_demo(environ: Mapping[str, str]) -> int:
    from runner import demo

    source_path = _checkout() / "sources" / "example.yaml"
    source = config.load(source_path)
    local = {k: v for k, v in environ.items() if k != "DATABASE_URL"}  # the demo never touches your database
    target = database.open_target(None)
    with target.connect() as conn:
        migrations.migrate(conn, [source])
        demo.prepare(conn)
    with demo.serve() as url:
        print(f"demo API on {url}; embedded PostgreSQL at {target.describe()}", file=sys.stderr)
        code = _run_demo(source_path, {**local, "EXAMPLE_API_URL": url})
    with target.connect() as conn:
        print(demo.summary(conn, source.job_type))
    return code


def _run_demo(source_path: Path, environ: Mapping[str, str]) -> int:
    args = run_arguments([str(source_path), "--progress-every", "10"])
    return int(run.handle(args, environ))


def _checkout() -> Path:
    from runner import demo

    return demo.bundled_root()  # the wheel's package data, or the checkout's sources/


def _serve_demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """The example's demo API on 127.0.0.1:PORT until interrupted; with --seed, its tables and apps first."""
    from runner import demo

    if args.seed is not None:
        source = config.load(args.seed)
        if source.status is None:
            raise UsageError(f"--seed {args.seed}: the source has no status table to add the demo's apps to")
        preflight.check_environment(environ)
        target = database.open_target(database.dsn_from_env(environ))
        with target.connect() as conn:
            migrations.migrate(conn, [source])
            with conn.transaction():
                conn.execute(migrations.tables_sql("example"))
            status = source.status
            added = demo.seed(conn, database.identifier(status.table), status.key)
        print(f"{target.describe()}: example tables ready, {added} demo app(s) added to {status.table}")
    with demo.serve(args.port) as url:
        print(f"demo API on {url} (Ctrl-C stops it)", flush=True)
        threading.Event().wait()  # Ctrl-C: main's handler exits 130
    return 0
