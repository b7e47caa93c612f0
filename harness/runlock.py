"""One writer per run: an exclusive lock in the run's state folder, held while its training process lives.

On a cluster one run can be started twice: SLURM requeues a job whose old processes have not died
yet, or Snakemake resubmits a job whose first copy still runs (snakemake-executor-plugin-slurm #109).
Two processes must never write one run folder or its checkpoints, so ``execute`` (harness.run) holds
flock(2) on STATE/lock for the life of the run. The kernel, or the NFS lock manager, releases it
when the holder dies, even by SIGKILL, so a killed run never blocks its resubmission for good. A
second process waits up to WAIT_S (a lock of a dead NFS client lasts until its lease ends), then stops
with ``RunBusy``, naming the holder (pid, host, SLURM job id), which the file records; ``harness
status`` reads it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

LOCK_NAME = "lock"
WAIT_S = 120.0


class RunBusy(Exception):
    """Another live process is training this run."""


def holder_of(state_dir: Path) -> dict | None:
    """Who holds (or last held) the run's lock: pid, host, slurm_job_id, since; None if unknown."""
    try:
        return json.loads((Path(state_dir) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


def describe(holder: dict | None) -> str:
    if not holder:
        return "a process that has not recorded itself yet"
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}"


def _lock(path: Path) -> int | None:
    """An fd holding the exclusive lock of ``path`` (the file as it is now), or None when it is held."""
    path.parent.mkdir(parents=True, exist_ok=True)  # the holder may have finished and removed it meanwhile
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as e:
        os.close(fd)
        raise OSError(e.errno, f"cannot lock {path} ({e.strerror}): the run's state folder must be on a "
                               "file system with flock (Lustre: mount with -o flock)") from e
    try:  # a finished run removes its state folder: a lock on the removed file guards nothing
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            return fd
    except FileNotFoundError:
        pass
    os.close(fd)
    return _lock(path)


@contextlib.contextmanager
def exclusive(state_dir: Path, wait_s: float | None = None) -> Iterator[None]:
    """Hold the run's lock inside; raise RunBusy if another process holds it for ``wait_s`` seconds
    (default WAIT_S)."""
    wait_s = WAIT_S if wait_s is None else wait_s
    path = Path(state_dir) / LOCK_NAME
    deadline = time.monotonic() + wait_s
    waited = False
    while (fd := _lock(path)) is None:
        if time.monotonic() >= deadline:
            raise RunBusy(f"{describe(holder_of(state_dir))} is training this run (lock {path}); "
                          "not starting a second writer")
        if not waited:
            print(f"waiting up to {wait_s:.0f} s for {describe(holder_of(state_dir))}, which holds {path}",
                  file=sys.stderr)
            waited = True
        time.sleep(min(1.0, wait_s))
    try:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
              "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.close(fd)
