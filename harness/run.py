"""One run's lifecycle, the same for every kind of run: record, train, write.

``execute`` picks the runner (the common loop of harness.train, or the runner a pipeline
architecture declares in its module) and gives it a ``RunRecord``: the manifest head (identity,
config hash, versions, threads), the metric rows, the device, the pipeline's own numbers and the
failure capture. Whatever the runner does, ``recorded`` writes the run's three declared outputs
atomically, run.json last, so its presence says the other two are whole; an exception becomes status
``failed`` with its reason, never a missing file.

Two things end a run without outputs, because they say nothing about the run and a rerun should
continue it: a stop asked for by SIGTERM (a scheduler's time limit or preemption) or SIGINT (Ctrl-C),
which the runner honours after its current step (``Interrupted``, raised by ``stop_if_requested``;
the common loop writes a checkpoint first), and a full disk (harness.files.DiskFull).
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import json
import os
import platform
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import save_file, save_model

from harness import __version__, archs
from harness.contracts import BASE_VARIANT, METRIC_COLUMNS, PIPELINE_KEY
from harness.files import DiskFull, atomic, write_atomic
from harness.runlock import exclusive
from harness.study import config_hash, init_seed
from harness.timing import StageClock

COMMON_RUNNER = "harness.train:train"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """A run stopped on request (SIGTERM, SIGINT) before its end: unfinished, not failed."""


def versions() -> dict[str, str]:
    import numpy
    import safetensors

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "safetensors": safetensors.__version__, "harness": __version__, "cuda": torch.version.cuda or ""}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"


class RunRecord:
    """What a run leaves behind: its manifest (run.json), its metric rows and its final model."""

    def __init__(self, spec: dict[str, Any], threads: int):
        self.manifest: dict[str, Any] = {
            "arch": spec.get("arch"), "variant": spec.get("variant", BASE_VARIANT), "build": spec.get("build"),
            "seed": spec.get("seed"), **({"switches": spec["switches"]} if spec.get("switches") else {}),
            # the model's initialisation seed, where an init_seed_offset moves it off the seed (data order stays)
            **({"init_seed": init_seed(spec)} if spec.get("init_seed_offset") else {}),
            "study": spec.get("study"), "config_hash": config_hash(spec), "versions": versions(),
            "threads": threads, "recipe_name": spec.get("recipe_name", "common"),
            **({"slurm_job_id": os.environ["SLURM_JOB_ID"]} if "SLURM_JOB_ID" in os.environ else {})}
        self.rows: list[dict] = []
        self.model: torch.nn.Module | None = None
        self.status, self.reason = "completed", None
        self.step = 0
        self.warnings: list[str] = []  # what went wrong without stopping the run (run.json "warnings")
        self.stop_signal: int | None = None  # set by a SIGTERM or SIGINT (see stop_on_signals)
        self.elapsed_before = 0.0  # wall time of the process(es) before a resume
        self._t0 = time.time()
        self.stages = StageClock()  # this process's seconds by stage: run.json "stage_seconds", "stage_cpu_seconds"

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self._t0

    def log(self, step: int, split: str, metric: str, value: float) -> None:
        self.rows.append({"step": step, "split": split, "metric": metric, "value": repr(float(value)),
                          "wall_time": f"{self.elapsed():.3f}"})

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)
        self.warnings.append(message)

    def stop_if_requested(self) -> None:
        """Raise Interrupted if a stop signal arrived; runners call it between steps."""
        if self.stop_signal is not None:
            raise Interrupted(f"interrupted by {signal.Signals(self.stop_signal).name} at step {self.step}")

    def set_device(self, device: torch.device, dtype: torch.dtype | None) -> None:
        self.manifest["device"] = device_name(device)
        self.manifest["dtype"] = str(dtype or torch.float32).removeprefix("torch.")

    @property
    def pipeline(self) -> dict[str, Any]:
        """A pipeline's own numbers, kept in run.json under one key (see harness.contracts)."""
        return self.manifest.setdefault(PIPELINE_KEY, {})

    def diverge(self, reason: str) -> None:
        self.status, self.reason = "diverged", reason

    def fail(self, error: BaseException) -> None:
        self.status, self.reason = "failed", f"{type(error).__name__}: {error}"

    def write(self, out_dir: Path) -> None:
        """The run's three declared outputs, run.json last."""
        out_dir = Path(out_dir)
        self.manifest.update(status=self.status, reason=self.reason, steps_done=self.step,
                             wall_time_s=round(self.elapsed(), 3), warnings=self.warnings)

        def write_metrics(tmp):
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, lineterminator="\n")
                w.writeheader()
                w.writerows(self.rows)

        meta = {"status": self.status}
        with self.stages("outputs"):
            atomic(out_dir / "metrics.csv", write_metrics)
            if self.model is not None:
                atomic(out_dir / "model.safetensors", lambda tmp: save_model(self.model, tmp, metadata=meta))
            else:  # a run that failed before its model existed still leaves every output the DAG expects
                atomic(out_dir / "model.safetensors", lambda tmp: save_file({}, tmp, metadata=meta))
        self.manifest.update(self.stages.record())
        write_atomic(out_dir / "run.json", json.dumps(self.manifest, indent=2, sort_keys=True) + "\n")
        self.stages.print()


@contextlib.contextmanager
def recorded(spec: dict[str, Any], out_dir: Path, threads: int) -> Iterator[RunRecord]:
    """Yield a fresh record; on exit (normal or by an exception) write the run's files, unless the run
    was interrupted or the disk is full: those leave no outputs, so that the job counts as unfinished."""
    record = RunRecord(spec, threads)
    try:
        yield record
    except (Interrupted, DiskFull):
        raise  # unfinished: no outputs, so the workflow runs the job again and it resumes
    except Exception as e:  # recorded, not hidden: the DAG and the report go on and show it
        traceback.print_exc()
        record.fail(e)
    record.write(out_dir)


@contextlib.contextmanager
def stop_on_signals(record: RunRecord) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT ask ``record``'s runner to stop after its current step.

    A second SIGINT (Ctrl-C twice) stops at once; a second SIGTERM (SLURM sends one at the time limit
    after an early --signal) changes nothing. Outside the main thread signals cannot be caught: no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, _frame):
        if record.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if record.stop_signal is None:
            print(f"{signal.Signals(signum).name} received: stopping after the current step", file=sys.stderr)
            record.stop_signal = signum

    previous = {signum: signal.signal(signum, request_stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def runner_of(build: str):
    """The function that trains one run of ``build``: its declared pipeline runner, or the common loop."""
    pipeline = archs.info(build).pipeline
    module, _, function = (pipeline.runner if pipeline else COMMON_RUNNER).partition(":")
    return getattr(importlib.import_module(module), function)


def execute(spec: dict[str, Any], out_dir: Path, state_dir: Path | None = None, threads: int = 1,
            admission: dict[str, Any] | None = None) -> str:
    """Train one run; always writes metrics.csv, run.json and model.safetensors; returns the status.

    Status is 'completed', 'diverged' (a non-finite loss ended it) or 'failed' (an exception,
    recorded with its reason). ``state_dir`` holds the resume checkpoint (default OUT/../.state/NAME).
    ``admission``: what run.json keeps of the architecture's admission check (harness.admission.summary).
    Raises, writing no outputs, Interrupted on SIGTERM/SIGINT, DiskFull on a full disk and
    harness.runlock.RunBusy while another process trains the same run.
    """
    out_dir = Path(out_dir)
    state_dir = Path(state_dir) if state_dir else out_dir.parent / ".state" / out_dir.name
    torch.set_num_threads(threads)
    with exclusive(state_dir):  # one writer per run (harness.runlock), until its state is gone
        with recorded(spec, out_dir, threads) as record, stop_on_signals(record):
            if admission is not None:
                record.manifest["admission"] = admission
            runner_of(spec["build"])(spec, record, state_dir)
        if record.status != "failed" and state_dir.exists():
            shutil.rmtree(state_dir)  # a finished run needs no resume state; a failed one may be retried
    print(f"run finished: {record.status}" + (f" ({record.reason})" if record.reason else ""), file=sys.stderr)
    return record.status
