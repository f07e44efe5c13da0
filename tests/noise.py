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
must not have that excused. On a quiet 2-CPU machine the p90 is 0.1-0.2 ms and the worst 4-20 ms; with
four CPU burners beside it, 2-4 ms and 20-80 ms.
"""

from __future__ import annotations

import subprocess
import sys
from types import TracebackType

# p90 of the sampler's oversleeps above which the machine counts as busy: 0.1-0.2 ms when quiet, 2-4 ms
# with four CPU burners (its worst wake is less telling: 5-20 ms on a quiet machine now and then)
BUSY = 0.001

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
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Noise:
        self._process = subprocess.Popen(
            [sys.executable, "-c", "import select\n" + _SAMPLER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        assert self._process is not None
        out, _ = self._process.communicate("stop\n", timeout=30)
        p90, worst = out.split()
        self.p90, self.worst = float(p90), float(worst)
        print(f"scheduling noise: p90 {self.p90 * 1000:.1f} ms, worst {self.worst * 1000:.1f} ms")

    @property
    def busy(self) -> bool:
        return self.p90 > BUSY
