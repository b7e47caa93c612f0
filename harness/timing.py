"""Where a job's time goes, by stage: run.json's `stage_seconds` and `stage_cpu_seconds`, each job log's
last lines, and benchmarks/sweep_cost.py's table.

`startup` runs from the start of the job's own process (the kernel's record of it: interpreter and
imports included; under harness.worker, the process the workflow started, so the hand-over is
counted too) to the StageClock's creation; every other stage is timed where it happens. Wall
seconds say what a user waits; CPU seconds (this process's, plus the handing process's under a
worker) say what the stage costs whatever else the machine runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator

STARTED_ENV = "HARNESS_JOB_STARTED"  # set by harness.worker: when the job's own process started (epoch s)
CPU_ENV = "HARNESS_JOB_CPU"  # set by harness.worker: the CPU seconds the job's own process spent
LINES = {"wall": "stage seconds", "cpu": "stage cpu seconds"}  # a job log's last two lines, by clock


def process_started() -> float:
    """When this process started (epoch seconds)."""
    import psutil

    return psutil.Process().create_time()


class StageClock:
    """Wall and CPU seconds by stage; created once a command's imports are done."""

    def __init__(self) -> None:
        handed = STARTED_ENV in os.environ  # a worker's child: the job's process started before the fork
        started = float(os.environ[STARTED_ENV]) if handed else process_started()
        self.seconds: dict[str, float] = {"startup": max(0.0, time.time() - started)}
        self.cpu: dict[str, float] = {"startup": time.process_time() + float(os.environ.get(CPU_ENV, 0) if handed else 0)}
        self._lap = (time.perf_counter(), time.process_time())

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self._add(stage, time.perf_counter() - wall, time.process_time() - cpu)

    def _add(self, stage: str, wall: float, cpu: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + wall
        self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu

    def lap(self, stage: str) -> None:
        """The time since the last lap (or the clock's creation) goes to ``stage``."""
        now = (time.perf_counter(), time.process_time())
        self._add(stage, now[0] - self._lap[0], now[1] - self._lap[1])
        self._lap = now

    def record(self) -> dict[str, dict[str, float]]:
        """For run.json: {"stage_seconds": {...}, "stage_cpu_seconds": {...}}."""
        return {"stage_seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "stage_cpu_seconds": {k: round(v, 3) for k, v in self.cpu.items()}}

    def print(self) -> None:
        """Two lines on stderr (the job's log): `stage seconds: startup 0.050, quantization 0.410` and the
        same for `stage cpu seconds`."""
        for clock, values in (("wall", self.seconds), ("cpu", self.cpu)):
            print(f"{LINES[clock]}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()), file=sys.stderr)


def read_stage_line(log: str, clock: str = "wall") -> dict[str, float] | None:
    """The seconds by stage of a job log's last ``stage seconds`` (clock "wall") or ``stage cpu seconds``
    (clock "cpu") line, as StageClock.print wrote it; None when the log has none."""
    lines = re.findall(rf"^{LINES[clock]}: (.*)$", log, re.M)
    if not lines:
        return None
    return {stage: float(s) for stage, s in (item.rsplit(" ", 1) for item in lines[-1].split(", "))}
