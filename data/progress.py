"""`Progress`: a throttled progress line for loops outside Lightning (labelling, generation, prediction)."""

from __future__ import annotations

import sys
import time


class Progress:
    """`advance(n)` after each step; prints `<name> done/total <unit> (p%), r <unit>/s, ETA h:mm:ss[, extra]` to
    stderr (a file or pipe too) at most every `every_s` seconds. `finish()` prints a summary line if any was printed."""

    def __init__(self, name: str, total: int, unit: str = "rows", every_s: float = 5.0, stream=None):
        self.name, self.total, self.unit, self.every_s = name, total, unit, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.done, self.printed = 0, False
        self.start = self.last = time.monotonic()

    def advance(self, n: int, extra: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last, self.printed = now, True
        rate = self.done / max(now - self.start, 1e-9)
        eta = max(self.total - self.done, 0) / max(rate, 1e-9)
        tail = f", {extra}" if extra else ""
        self._say(
            f"{self.done}/{self.total} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%), "
            f"{rate:.1f} {self.unit}/s, ETA {clock(eta)}{tail}"
        )

    def finish(self) -> None:
        if self.printed:
            seconds = max(time.monotonic() - self.start, 1e-9)
            self._say(f"{self.done} {self.unit} in {seconds:.1f} s, {self.done / seconds:.1f} {self.unit}/s")

    def _say(self, text: str) -> None:
        print(f"{self.name} {text}", file=self.stream, flush=True)


def clock(seconds: float) -> str:
    """`h:mm:ss`."""
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}"
