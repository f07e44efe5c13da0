"""How busy the machine is while a timing test runs, measured in that test, so that its tolerances come
from measured noise rather than from guesses (a flaky test is a failing test).

    with Noise() as noise:
        ... the timed part ...
    assert gap < 0.2 + 0.05 + noise.worst
    share = 0.9 if noise.busy else 0.97

A separate process sleeps 2 ms at a time and records how late it wakes: the operating system's
scheduling delay, which every process here suffers alike (a preemption between a limiter's last look
at the clock and the write it allows, a test server's thread reading late). A process, not a thread:
a thread would also measure this process's GIL, and the tests that block their event loop on purpose
must not have that excused. On a quiet 2-CPU machine the p90 is 0.1-0.2 ms and the worst 4-20 ms;
with four CPU burners beside it, 2-4 ms and 20-80 ms. And the kernel's CPU pressure (the share of
the time some task waited for a CPU), which tells a busy machine even when sleepers wake promptly.
"""

from __future__ import annotations

import subprocess
import sys
import time
from types import TracebackType

# p90 of the sampler's oversleeps above which the machine counts as busy: 0.1-0.2 ms when quiet, 2-4 ms
# with four CPU burners (its worst wake is less telling: 5-20 ms on a quiet machine now and then)
BUSY = 0.001
# ... or the share of the time some task waited for a CPU (Linux pressure stall information): 0.05-0.1
# on this machine with a test running, 0.4 with two CPU burners beside it. A sleeper is woken promptly
# even then (p90 0.8 ms was seen with two burners), but a test that needs the CPU does not get it.
PRESSURE = "/proc/pressure/cpu"
BUSY_PRESSURE = 0.15

_SAMPLER = """
import select, sys, time
wakes = []
while True:
    asked = time.monotonic()
    time.sleep(0.002)
    wakes.append(time.monotonic() - asked - 0.002)
    if len(wakes) % 25 == 0 and select.select([sys.stdin], [], [], 0)[0]:
        break
wakes.sort()
print(wakes[int(0.9 * len(wakes))] if wakes else 0.0, wakes[-1] if wakes else 0.0)
"""


class Noise:
    """The scheduling delay seen while inside the `with`: `p90` and `worst` oversleep (seconds), `busy`."""

    def __init__(self) -> None:
        self.p90 = self.worst = 0.0
        self.pressure: float | None = None  # None where the kernel does not report it
        self._process: subprocess.Popen[str] | None = None
        self._stalled: tuple[float, int] | None = None

    def __enter__(self) -> Noise:
        command = [sys.executable, "-c", _SAMPLER]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if (stalled := _stalled()) is not None:
            self._stalled = (time.monotonic(), stalled)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        assert self._process is not None
        out, _ = self._process.communicate("stop\n", timeout=30)
        p90, worst = out.split()
        self.p90, self.worst = float(p90), float(worst)
        if self._stalled is not None and (stalled := _stalled()) is not None:
            started, before = self._stalled
            self.pressure = (stalled - before) / 1e6 / max(time.monotonic() - started, 1e-3)
        shown = "n/a" if self.pressure is None else f"{self.pressure:.2f}"
        print(f"scheduling noise: p90 {self.p90 * 1000:.1f} ms, worst {self.worst * 1000:.1f} ms, CPU pressure {shown}")

    @property
    def busy(self) -> bool:
        return self.p90 > BUSY or (self.pressure is not None and self.pressure > BUSY_PRESSURE)


def _stalled() -> int | None:
    """Microseconds so far in which some task waited for a CPU, or None."""
    try:
        with open(PRESSURE) as pressure:
            for line in pressure:
                if line.startswith("some "):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
