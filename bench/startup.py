"""Start-up alone: process start → first request at the server, syncrun vs the aiohttp baseline.

    python -m bench.startup [--runs 5] [--entities 200]
    python -m bench.startup --instructions

The first matrix cell of `python -m bench` measures this once; here each side runs `--runs` times
(alternating, so load moves both alike) on a small job, and the medians are compared.

`--instructions` counts instead (valgrind's callgrind, ~1 minute): each side's whole process for one
entity (`--limit 1`), start to exit. Wall times on this shared machine move 2x with the load; the
count does not, and a change to start-up moves it by what it costs (exit work included: the baseline
spends ~60M more there than syncrun, whose objects are frozen out of the collector).
"""

from __future__ import annotations

import argparse
import re
import statistics

from bench import harness
from bench.harness import Server, Started, Workdir, scratch

_CALLGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--entities", type=int, default=200)
    parser.add_argument("--dsn", default=harness.DEFAULT_DSN)
    parser.add_argument("--instructions", action="store_true", help="count instructions (callgrind) instead")
    args = parser.parse_args()
    if args.instructions:
        return instructions(args.dsn)
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


def instructions(dsn: str) -> int:
    """Instructions of `syncrun run --limit 1` and of the baseline's, each a whole process."""
    server, work = Server(), Workdir()
    counted: dict[str, int] = {}
    try:
        source = work.source(harness.apps_source(concurrency=16))
        api = server.url(0)
        harness.bytecode()
        with scratch(dsn, "startup_ir", 10) as ours, scratch(dsn, "startup_ira", 10) as theirs:
            harness.syncrun(["migrate", str(source)], dsn=ours, api=api, cwd=work.path).wait()
            syncrun = [harness.PYTHON, "-m", "runner", "run", str(source), "--limit", "1"]
            aiohttp = [harness.PYTHON, "-m", harness.BASELINES["aiohttp"], "--concurrency", "16", "--limit", "1"]
            for who, cmd, env, cwd in (
                ("syncrun", syncrun, ours, work.path),
                ("aiohttp", aiohttp, theirs, harness.REPO),
            ):
                proc = Started([*_CALLGRIND, *cmd], {"DATABASE_URL": env, "BENCH_API_URL": api}, cwd).wait(600)
                found = re.search(r"Collected : (\d+)", proc.stderr)
                if proc.returncode != 0 or found is None:
                    raise SystemExit(f"{who} exited {proc.returncode}: {proc.tail()}")
                counted[who] = int(found.group(1))
    finally:
        server.close()
        work.close()
    a, b = counted["syncrun"], counted["aiohttp"]
    print(f"instructions, one entity, process start to exit: syncrun {a / 1e6:,.1f}M, aiohttp {b / 1e6:,.1f}M,")
    print(f"over by {(a - b) / 1e6:+,.1f}M")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
