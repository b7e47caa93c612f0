"""`harness status [STUDY]`: done, running, failed and left runs of a study from its files; `harness --version`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness import __version__
from harness.status import status
from tests.conftest import MICRO_STUDY, workflow_copy, write_config

HARNESS = str(Path(sys.executable).parent / "harness")  # the console command pip installs beside python


def manifest(path: Path, status: str, steps_done: int, wall: float, reason: str | None = None, total: int = 40) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "run.json").write_text(json.dumps({"status": status, "reason": reason, "steps_done": steps_done,
                                               "wall_time_s": wall, "recipe": {"steps": total}}))


@pytest.fixture
def study_tree(tmp_path) -> Path:
    """A workflow folder with a micro study of 2 archs x 3 seeds, in every state a run can be in."""
    root = workflow_copy(tmp_path / "repo")
    study = {**MICRO_STUDY, "seeds": [0, 1, 2]}
    write_config(root, {"study": "micro", "archs": None, "seeds": None, "steps": None, "data_dir": None,
                        "studies": {"micro": study}})
    results, logs = root / "results" / "micro", root / "logs" / "micro"
    manifest(results / "transformer" / "base" / "seed0", "completed", 40, 8.0)
    manifest(results / "transformer" / "base" / "seed1", "diverged", 20, 4.0, "non-finite training loss at step 20")
    manifest(results / "transformer" / "base" / "seed2", "failed", 10, 2.0, "RuntimeError: out of memory")
    running = logs / "memnls" / "base" / "seed0" / "train.log"  # running: its log was just written
    running.parent.mkdir(parents=True)
    running.write_text("progress: step 12/40 (30%) loss 3.1000 | 2,048 tok/s | 3 s elapsed, ~7 s left\n"
                       "progress: step 25/40 (62%) loss 2.9000 | 2,048 tok/s | 6 s elapsed, ~4 s left\n")
    # stopped: a checkpoint at step 30 written long ago, and no progress line
    from safetensors.numpy import save_file

    ckpt = results / ".state" / "memnls" / "base" / "seed1" / "checkpoint.safetensors"
    ckpt.parent.mkdir(parents=True)
    save_file({"x": np.zeros(1, dtype=np.float32)}, str(ckpt), metadata={"meta": json.dumps({"step": 30})})
    old = time.time() - 3600
    os.utime(ckpt, (old, old))
    return root  # memnls seed2: left


def test_status_counts_every_state_and_the_steps_of_runs_in_progress(study_tree):
    out = status(study_tree, "micro")
    lines = out.splitlines()
    assert lines[0] == "micro: 6 runs planned: 2 done, 1 failed, 1 running, 1 stopped, 1 left"
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in lines[2:] if line.startswith("  ") and
            not line.lstrip().startswith(("arch", "time"))}
    assert rows[("transformer", "0")][:3] == ["completed", "40/40", "8"]
    assert rows[("transformer", "1")][:2] == ["diverged", "20/40"] and "non-finite" in " ".join(rows[("transformer", "1")])
    assert rows[("transformer", "2")][:2] == ["failed", "10/40"] and "out of memory" in " ".join(rows[("transformer", "2")])
    assert rows[("memnls", "0")][:2] == ["running", "25/40"]
    assert rows[("memnls", "1")][:2] == ["stopped", "30/40"] and "from its checkpoint" in lines[-2] + " ".join(
        rows[("memnls", "1")])
    assert rows[("memnls", "2")] == ["left"]
    # 14 wall seconds for 70 finished steps = 0.2 s per step; 15 + 10 + 40 steps left, one job running
    assert lines[-1] == ("  time left: about 13 s (65 steps left at 0.2 s per step from 2 finished runs, "
                         "1 job at a time)")


def test_status_without_a_study_shows_every_study_folder_and_reads_override_folders(study_tree):
    manifest(study_tree / "results" / "micro+seeds=0,1+steps=20" / "memnls" / "base" / "seed1", "completed", 20, 1.0, total=20)
    out = status(study_tree)
    heads = [line for line in out.splitlines() if not line.startswith(" ") and line]
    assert heads == ["micro: 6 runs planned: 2 done, 1 failed, 1 running, 1 stopped, 1 left",
                     "micro+seeds=0,1+steps=20: 4 runs planned: 1 done, 0 failed, 0 running, 3 left"]
    # the override folder's plan is the config's study under the overrides its name holds
    assert "memnls 1 completed 20/20" in " ".join(out.split())
    with pytest.raises(ValueError, match="no study 'mirco'.*known: micro, micro\\+seeds=0,1\\+steps=20"):
        status(study_tree, "mirco")


def test_status_before_any_run_lists_the_default_study_as_left(tmp_path):
    root = workflow_copy(tmp_path / "repo")  # the shipped config: the tiny study
    out = status(root)
    assert out.splitlines()[0] == "tiny: 18 runs planned: 0 done, 0 failed, 0 running, 18 left"


def test_the_console_command_reports_status_and_its_version(study_tree, tmp_path):
    done = subprocess.run([HARNESS, "status"], cwd=study_tree, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("micro: 6 runs planned: 2 done, 1 failed, 1 running, 1 stopped, 1 left\n")
    assert "memnls 0 running 25/40" in " ".join(done.stdout.split())
    elsewhere = subprocess.run([HARNESS, "status"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert elsewhere.returncode == 2 and "run `harness status` from the workflow's folder" in elsewhere.stderr
    version = subprocess.run([HARNESS, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"harness {__version__}"
    # the same subcommands as python -m harness
    helps = [subprocess.run(command + ["--help"], capture_output=True, text=True, timeout=60).stdout
             for command in ([HARNESS], [sys.executable, "-m", "harness"])]
    assert helps[0].startswith("usage: harness ") and helps[1].startswith("usage: python -m harness ")
    assert helps[0].split("\n\n", 1)[1] == helps[1].split("\n\n", 1)[1]
    for sub in ("train", "detect", "status", "aggregate", "report"):
        assert sub in helps[0]


def test_status_names_the_slurm_job_of_each_run_from_files_alone(study_tree, monkeypatch):
    """A finished run's job from its run.json, a started one's from its run lock, a submitted one's from
    Snakemake's marker; without squeue (here: none on PATH) no run becomes queued."""
    import base64

    from harness import runlock

    run = study_tree / "results" / "micro" / "transformer" / "base" / "seed0" / "run.json"
    run.write_text(json.dumps({**json.loads(run.read_text()), "slurm_job_id": "7"}))
    lock = study_tree / "results" / "micro" / ".state" / "memnls" / "base" / "seed0" / runlock.LOCK_NAME
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": 1, "host": "node1", "slurm_job_id": "8", "since": 0}))
    markers = study_tree / ".snakemake" / "incomplete"
    markers.mkdir(parents=True)
    for path, job in (("results/micro/memnls/base/seed2/run.json", "9"), ("results/micro/memnls/base/seed2/x", None)):
        (markers / base64.urlsafe_b64encode(path.encode()).decode()).write_text(json.dumps({"external_jobid": job}))
    monkeypatch.setenv("PATH", "")
    lines = status(study_tree, "micro").splitlines()
    assert lines[0] == "micro: 6 runs planned: 2 done, 1 failed, 1 running, 1 stopped, 1 left"
    header = next(line for line in lines if line.lstrip().startswith("arch"))
    jobs = {tuple(line.split()[:2]): line[header.index("slurm job"):][:9].strip()
            for line in lines[lines.index(header) + 1:-1]}
    assert jobs == {("transformer", "0"): "7", ("transformer", "1"): "", ("transformer", "2"): "",
                    ("memnls", "0"): "8", ("memnls", "1"): "", ("memnls", "2"): "9"}
