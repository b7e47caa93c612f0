"""Progress of a long job, one line at most every ``every`` seconds (and at its last step) on stderr,
which the workflow sends to the job's log (logs/{study}/{arch}/{variant}/seed{seed}/train.log):

    progress: step 120/300 (40%) loss 2.9130 | 8,192 tok/s | 14 s elapsed, ~21 s left

`harness status` reads the last such line of a running job. The clock is injectable for tests. No torch.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Callable, TextIO

PREFIX = "progress:"
LINE = re.compile(r"^progress: step (?P<step>\d+)/(?P<total>\d+) .*?\| (?P<elapsed>[\d.]+) s elapsed")


def duration(seconds: float) -> str:
    """12 s, 4 min 10 s, 2 h 05 min, 3 d 4 h: a duration as a person reads it."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


class Progress:
    """Call ``update(step, loss)`` after every step; it writes a line when ``every`` seconds have passed
    since the last one (or since the start), and at step ``total``. Rates count the steps of this
    process only (from ``start_step``, where a resumed run began)."""

    def __init__(self, total: int, tokens_per_step: int = 0, start_step: int = 0, every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None):
        self.total, self.tokens_per_step, self.start_step, self.every = total, tokens_per_step, start_step, every
        self.clock, self.stream = clock, stream
        self.started = self.last = clock()

    def update(self, step: int, loss: float) -> str | None:
        """The line written, or None when it is not time yet."""
        now = self.clock()
        if now - self.last < self.every and step < self.total:
            return None
        self.last = now
        line = self.line(step, loss, now - self.started)
        print(line, file=self.stream or sys.stderr, flush=True)
        return line

    def line(self, step: int, loss: float, elapsed: float) -> str:
        done = step - self.start_step
        rate = done / elapsed if elapsed > 0 else 0.0  # steps per second
        parts = [f"{PREFIX} step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%) loss {loss:.4f}"]
        if self.tokens_per_step:
            parts.append(f"{rate * self.tokens_per_step:,.0f} tok/s")
        left = (self.total - step) / rate if rate > 0 else None
        parts.append(f"{elapsed:.0f} s elapsed, " + (f"~{duration(left)} left" if left is not None else "time left unknown"))
        return " | ".join(parts)


def last_progress(text: str) -> dict | None:
    """The last progress line of a log: step, total and the seconds its process had run; None if none."""
    for line in reversed(text.splitlines()):
        if m := LINE.match(line.strip()):
            return {"step": int(m["step"]), "total": int(m["total"]), "elapsed": float(m["elapsed"])}
    return None
