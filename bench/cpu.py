"""CPU time per entity, measured without a profiler: a load-robust companion to the rates of `bench`.

    python -m bench.cpu [--small 1000] [--large 10000] [--concurrency 16] [--repeat 2]

Runs `syncrun run` of the bench source (0 ms latency) at two sizes, and the aiohttp baseline at the
larger one, each child on a fresh scratch schema, and reads each child's own CPU time (user + system,
from `os.wait4`). On a machine shared with other work the rates of `python -m bench` move with the
load; CPU seconds move far less. syncrun's cost per entity is the slope between the two sizes (start-up
and the job's fixed work cancel out), its fixed cost the intercept. Best of `--repeat` runs each.
"""

from __future__ import annotations

import argparse

from bench import harness
from bench.harness import Server, Started, Workdir, scratch


def _cpu(started: Started) -> float:
    proc = started.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(proc.cmd)} exited {proc.returncode}: {proc.tail()}")
    return proc.cpu_s


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dsn", default=harness.DEFAULT_DSN)
    args = parser.parse_args()
    server, work = Server(), Workdir()
    best: dict[str, float] = {}
    try:
        source = work.source(harness.apps_source(concurrency=args.concurrency))
        api = server.url(0)
        for _ in range(args.repeat):
            for label, n in (("syncrun small", args.small), ("syncrun large", args.large), ("aiohttp", args.large)):
                with scratch(args.dsn, "cpu", n) as dsn:
                    if label == "aiohttp":
                        cpu = _cpu(harness.baseline(n, args.concurrency, "aiohttp", dsn=dsn, api=api))
                    else:
                        harness.syncrun(["migrate", str(source)], dsn=dsn, api=api, cwd=work.path).wait()
                        run = ["run", str(source), "--limit", str(n)]
                        cpu = _cpu(harness.syncrun(run, dsn=dsn, api=api, cwd=work.path))
                best[label] = min(cpu, best.get(label, cpu))
    finally:
        server.close()
        work.close()
    small, large = best["syncrun small"], best["syncrun large"]
    slope = (large - small) / (args.large - args.small)
    print(f"syncrun: {small:.2f} s CPU at {args.small:,}, {large:.2f} s at {args.large:,}")
    print(f"syncrun: {slope * 1e3:.3f} ms CPU per entity (slope), {small - slope * args.small:.2f} s fixed (intercept)")
    baseline = best["aiohttp"]
    print(f"aiohttp baseline: {baseline:.2f} s CPU at {args.large:,} = {baseline / args.large * 1e3:.3f} ms/entity")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
