"""What adding run-time tokens to a Redactor costs as a run goes on: `python -m bench.redaction_growth
[SIZE] [COUNT] [EVERY]` adds COUNT random tokens of SIZE characters, one every EVERY seconds of a fake
clock (default: 1 KB tokens every 120 s for 8 hours), and prints the cost of the add and of redacting
a 300-character log line at a few points. Before the bound (runner/redaction.py RECENT/RETAIN/
MAX_RECENT) the add grew with every token ever seen: 1.9 s for the 40th."""

from __future__ import annotations

import secrets
import sys
import time

from runner.redaction import Redactor

LINE = "12:00:00 info    alpha 17 succeeded: HTTP 200 from GET https://api.example.com/apps/17?x=%2Fy " * 4


def main(size: int = 1024, count: int = 240, every: float = 120.0) -> None:
    now = [0.0]
    redact = Redactor(["configured-Secret-Xy12Zw34"], clock=lambda: now[0])
    for number in range(1, count + 1):
        now[0] += every
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
        assert redact(f"x {token} y") == "x *** y"


if __name__ == "__main__":
    main(*(int(a) if i < 2 else float(a) for i, a in enumerate(sys.argv[1:4])))  # type: ignore[arg-type]
