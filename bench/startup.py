"""Start-up alone: process start → first request at the server, syncrun vs the aiohttp baseline.

    python -m bench.startup [--runs 5] [--entities 200]

The first matrix cell of `python -m bench` measures this once; here each side runs `--runs` times
(alternating, so load moves both alike) on a small job, and the medians are compared.
"""

from __future__ import annotations

import argparse
import statistics

from bench import harness
from bench.harness import Server, Workdir, scratch


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--entities", type=int, default=200)
    parser.add_argument("--dsn", default=harness.DEFAULT_DSN)
    args = parser.parse_args()
    server, work = Server(), Workdir()
    ours: list[float] = []
    theirs: list[float] = []
    try:
        source = work.source(harness.apps_source(concurrency=16))
        api = server.url(0)
        for _ in range(args.runs):
            with scratch(args.dsn, "startup", args.entities) as dsn:
                harness.syncrun(["migrate", str(source)], dsn=dsn, api=api, cwd=work.path).wait()
                server.reset()
                started = harness.syncrun(
                    ["run", str(source), "--limit", str(args.entities)], dsn=dsn, api=api, cwd=work.path
                )
                proc = started.wait()
                if proc.returncode != 0:
                    raise SystemExit(f"syncrun exited {proc.returncode}: {proc.tail()}")
                ours.append(min(server.stats()[0]) - started.spawned)
            with scratch(args.dsn, "startup_a", args.entities) as dsn:
                server.reset()
                started = harness.baseline(args.entities, 16, "aiohttp", dsn=dsn, api=api)
                started.wait()
                theirs.append(min(server.stats()[0]) - started.spawned)
    finally:
        server.close()
        work.close()
    a, b = statistics.median(ours), statistics.median(theirs)
    print("syncrun  ", " ".join(f"{x:.3f}" for x in ours))
    print("aiohttp  ", " ".join(f"{x:.3f}" for x in theirs))
    print(f"median: syncrun {a:.3f} s, aiohttp {b:.3f} s, over by {a - b:+.3f} s (target ≤ +0.1 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
