"""Instructions per entity (valgrind's callgrind), the load-independent companion to `bench.cpu`.

    python -m bench.instructions [--small 300] [--large 2300] [--concurrency 16]

Runs `syncrun run` of the bench source (0 ms latency) and the aiohttp baseline, each at two sizes on a
fresh scratch schema, under `valgrind --tool=callgrind`, and reads the instructions each child executed
(callgrind's `Collected`). The cost per entity is the slope between the sizes (start-up and the job's
fixed work cancel out). Counting instructions is slow (~50x) but does not move with the machine's load,
where CPU seconds move by 10-20 % and rates by 2x on a shared 2-core machine (docs/benchmarks.md,
session 7, pass a): the measure to compare a before and an after by. Needs valgrind on PATH.
"""

from __future__ import annotations

import argparse
import re
import shutil

from bench import harness
from bench.harness import Server, Started, Workdir, scratch

_CALLGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]


def _instructions(started: Started) -> int:
    proc = started.wait(3600)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise SystemExit(f"{' '.join(proc.cmd)} exited {proc.returncode}: {proc.tail()}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=2300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--dsn", default=harness.DEFAULT_DSN)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    server, work = Server(), Workdir()
    counted: dict[tuple[str, int], int] = {}
    try:
        source = work.source(harness.apps_source(concurrency=args.concurrency))
        api = server.url(0)
        harness.bytecode()
        for n in (args.small, args.large):
            for who in ("syncrun", "aiohttp"):
                with scratch(args.dsn, "ir", n) as dsn:
                    env = {"DATABASE_URL": dsn, "BENCH_API_URL": api}
                    if who == "aiohttp":
                        module = [harness.BASELINES["aiohttp"], "--concurrency", str(args.concurrency)]
                        cmd = [*_CALLGRIND, harness.PYTHON, "-m", *module, "--limit", str(n)]
                        counted[who, n] = _instructions(Started(cmd, env, harness.REPO))
                    else:
                        harness.syncrun(["migrate", str(source)], dsn=dsn, api=api, cwd=work.path).wait()
                        cmd = [*_CALLGRIND, harness.PYTHON, "-m", "runner", "run", str(source), "--limit", str(n)]
                        counted[who, n] = _instructions(Started(cmd, env, work.path))
    finally:
        server.close()
        work.close()
    span = args.large - args.small
    per = {who: (counted[who, args.large] - counted[who, args.small]) / span for who in ("syncrun", "aiohttp")}
    for who in ("syncrun", "aiohttp"):
        fixed = counted[who, args.small] - per[who] * args.small
        print(f"{who}: {per[who] / 1e3:,.0f}k instructions per entity (slope), {fixed / 1e6:,.0f}M fixed")
    print(f"syncrun ÷ aiohttp baseline, per entity: {per['syncrun'] / per['aiohttp']:.2f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
