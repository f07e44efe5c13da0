"""Profile one `syncrun run` of a bench scenario with cProfile (main thread: the event loop).

    python -m bench.profile [--entities 5000] [--latency 0] [--bulk] [--top 35]

Sets up a scratch schema and the bench API exactly as `python -m bench` does, runs
`python -m cProfile -o <file> -m runner run bench.yaml --limit N`, and prints the top functions by
own time and by cumulative time. Database writes run in worker threads, which cProfile does not see:
their cost shows up as time the event loop spends waiting, not as rows here.
"""

from __future__ import annotations

import argparse
import pstats
import tempfile
from pathlib import Path

from bench import harness
from bench.harness import Server, Started, Workdir, scratch


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=5000, help="entities (or, with --bulk, pages of 1,000)")
    parser.add_argument("--latency", type=int, default=0, help="server latency, ms")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bulk", action="store_true", help="the bulk scenario (1,000 records per response)")
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--dsn", default=harness.DEFAULT_DSN)
    args = parser.parse_args()
    if args.bulk:
        text = harness.BULK_SOURCE.format(concurrency=4, write_batch=5)
    else:
        text = harness.apps_source(concurrency=args.concurrency)
    server, work = Server(), Workdir()
    output = Path(tempfile.mkdtemp(prefix="syncrun-profile-")) / "syncrun.prof"
    try:
        source = work.source(text)
        with scratch(args.dsn, "profile", args.entities) as dsn:
            api = server.url(args.latency)
            harness.syncrun(["migrate", str(source)], dsn=dsn, api=api, cwd=work.path).wait()
            env = {"DATABASE_URL": dsn, "BENCH_API_URL": api}
            cmd = ["-m", "cProfile", "-o", str(output), "-m", "runner", "run", str(source)]
            proc = Started([harness.PYTHON, *cmd, "--limit", str(args.entities)], env, work.path).wait()
            print(f"exit {proc.returncode} in {proc.elapsed:.2f} s; {proc.tail(1)}")
    finally:
        server.close()
        work.close()
    stats = pstats.Stats(str(output))
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    print(f"profile kept at {output} (open with `python -m pstats` or snakeviz)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
