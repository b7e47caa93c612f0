"""Where a job's wall time goes, by stage: run.json's `stage_seconds`, each job log's last line, and
benchmarks/sweep_cost.py's table.

`startup` runs from the start of the job's own process (the kernel's record of it: interpreter and
imports included; under harness.worker, the process the workflow started, so the hand-over is
counted too) to the StageClock's creation; every other stage is timed where it happens.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

STARTED_ENV = "HARNESS_JOB_STARTED"  # set by harness.worker: when the job's own process started (epoch s)


def process_started() -> float:
    """When this process started (epoch seconds)."""
    import psutil

    return psutil.Process().create_time()


def job_started() -> float:
    """When the job's process started: this one, or the one that handed the job to a worker."""
    return float(os.environ[STARTED_ENV]) if STARTED_ENV in os.environ else process_started()


class StageClock:
    """Wall seconds by stage; created once a command's imports are done."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"startup": max(0.0, time.time() - job_started())}
        self._lap = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def lap(self, stage: str) -> None:
        """The seconds since the last lap (or the clock's creation) go to ``stage``."""
        now = time.perf_counter()
        self.add(stage, now - self._lap)
        self._lap = now

    def rounded(self) -> dict[str, float]:
        return {stage: round(s, 3) for stage, s in self.seconds.items()}

    def print(self) -> None:
        """One line on stderr (the job's log): `stage seconds: startup 0.05, quantization 0.41`."""
        print("stage seconds: " + ", ".join(f"{k} {v:.3f}" for k, v in self.seconds.items()), file=sys.stderr)
