"""What adding run-time tokens to a Redactor costs as a run goes on: `python -m bench.redaction_growth
[SIZE] [COUNT]` adds COUNT random tokens of SIZE characters (default: 240 1 KB tokens, an 8-hour run
renewing its token every 120 s), and prints the cost of the add and of redacting
a 300-character log line at a few points, then of redacting a 1 MB body and the memory the masks took.

Every run-time token stays masked for the whole run (runner/fragments.py): adding one costs what its
own pieces cost, whatever came before. Measured on the busy 2-core machine: see runner/redaction.py."""

from __future__ import annotations

import resource
import secrets
import sys
import time

from runner.redaction import Redactor

LINE = "12:00:00 info    alpha 17 succeeded: HTTP 200 from GET https://api.example.com/apps/17?x=%2Fy " * 4
BODY = ('{"id": 17, "name": "App \\u00e9 17", "note": "see https:\\/\\/example.com\\/x?a=1&amp;b=2"}, ' * 12_000)[
    :1_000_000
]


def main(size: int = 1024, count: int = 240) -> None:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    redact = Redactor(["configured-Secret-Xy12Zw34"])
    first = ""
    for number in range(1, count + 1):
        token = secrets.token_urlsafe(size)[:size]
        started = time.perf_counter()
        redact.add(token, run_time=True)
        added = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(100):
            redact(LINE)
        line = (time.perf_counter() - started) / 100
        if number in (1, 10, 40, 120, 240) or number == count:
            print(f"token {number:3}: add {added * 1000:7.1f} ms, redact a 300-character line {line * 1e6:6.1f} µs")
        first = first or token
        assert redact(f"x {token} y") == "x *** y"
    assert redact(f"x {first[100:140]} y") == "x *** y"  # the first token too, 8 hours later
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss  # KiB (Linux)
    started = time.perf_counter()
    for _ in range(3):
        redact(BODY)
    body = (time.perf_counter() - started) / 3
    print(f"{count} tokens: redact a 1 MB JSON-ish body {body * 1000:.0f} ms; peak RSS grew {grown / 1024:.0f} MiB")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
