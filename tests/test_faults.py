"""Faults a long study meets: an unreadable checkpoint, a scheduler's SIGTERM or a Ctrl-C, a full disk.

None of them may fail a run for good: a damaged checkpoint is moved aside and the other slot (or a
fresh start) takes over; a stop signal ends the job unfinished (exit 75, no outputs) after a
checkpoint, and the rerun resumes; a full disk ends the job naming the file and the space left,
keeping the last good checkpoint. Every rerun ends with the metrics of an uninterrupted run.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from harness import checkpoint, cli, runlock
from harness import train as common_loop
from harness.files import DiskFull
from harness.run import Interrupted, execute
from tests.conftest import REPO, SHARED_DATA, fill
from tests.test_train import metrics, spec_for

LATEST, PREVIOUS = checkpoint.SLOTS
SPEC = spec_for("transformer")  # 40 steps, a checkpoint every 10, a log every 5


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> pd.DataFrame:
    """The metrics of SPEC run once without any interruption."""
    if not (SHARED_DATA / "tinyshakespeare.txt").is_file():
        pytest.skip("needs ../shared/data/tinyshakespeare.txt")
    out = tmp_path_factory.mktemp("straight")
    assert execute(SPEC, out / "run", state_dir=out / "state") == "completed"
    return metrics(out / "run")


def interrupted_at(monkeypatch, call: int, state: Path, out: Path, signum=signal.SIGTERM) -> None:
    """Run SPEC, raising ``signum`` in this process during its ``call``-th training step."""
    real, calls = common_loop.train_step, itertools.count(1)

    def step(*args):
        if next(calls) == call:
            signal.raise_signal(signum)
        return real(*args)

    with monkeypatch.context() as patched:
        patched.setattr(common_loop, "train_step", step)
        with pytest.raises(Interrupted, match=f"interrupted by {signum.name} at step"):
            execute(SPEC, out, state_dir=state)
    assert not out.exists()  # no outputs: the workflow sees an unfinished job


# --- a stop signal: finish the step, checkpoint, exit unfinished; the rerun resumes --------------

def test_sigterm_mid_step_checkpoints_that_step_and_the_rerun_equals_an_uninterrupted_run(
        tmp_path, monkeypatch, straight, capsys):
    state = tmp_path / "state"
    interrupted_at(monkeypatch, 23, state, tmp_path / "run")
    assert checkpoint.checkpoint_meta(state / LATEST)["step"] == 23  # mid log window, after the step
    assert checkpoint.checkpoint_meta(state / PREVIOUS)["step"] == 20
    assert "SIGTERM received: stopping after the current step" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert execute(SPEC, tmp_path / "run", state_dir=state) == "completed"
    assert "resumed from" in capsys.readouterr().err
    pd.testing.assert_frame_equal(metrics(tmp_path / "run"), straight)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["warnings"] == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_training_process_exits_75_unfinished_and_its_rerun_resumes(tmp_path, straight, capsys, signum):
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    out, state = tmp_path / "run", tmp_path / "state"
    cmd = [sys.executable, "-m", "harness", "train", "--spec", str(tmp_path / "spec.json"), "--out", str(out),
           "--state", str(state)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (state / LATEST).exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signum)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == cli.EXIT_INTERRUPTED, stderr
    assert f"interrupted by {signum.name} at step" in stderr and "(not failed)" in stderr
    assert "run the same command again" in stderr and "run finished" not in stderr
    assert not out.exists() or not any(out.iterdir())  # neither run.json nor metrics.csv nor weights
    stopped_at = checkpoint.checkpoint_meta(state / LATEST)["step"]
    assert 10 <= stopped_at < 40

    assert cli.main(cmd[3:]) == 0  # the rerun, in this process to save a start-up
    assert f"resumed from {state / LATEST} at step {stopped_at}" in capsys.readouterr().err
    pd.testing.assert_frame_equal(metrics(out), straight)


# --- a checkpoint that does not load: moved aside, the other slot or a fresh start takes over ----

def garbage(path: Path) -> None:
    path.write_bytes(b"\xde\xad\xbe\xef garbage " * 100)


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def missing_tensor(path: Path) -> None:
    tensors = load_file(str(path))
    del tensors[next(k for k in tensors if k.startswith("model."))]
    save_file(tensors, str(path), metadata={"meta": json.dumps(checkpoint.checkpoint_meta(path))})


def wrong_shape(path: Path) -> None:  # the last model tensor: every one before it would fit
    tensors = load_file(str(path))
    last = [k for k in tensors if k.startswith("model.")][-1]
    tensors[last] = torch.zeros(tensors[last].numel() + 1)
    save_file(tensors, str(path), metadata={"meta": json.dumps(checkpoint.checkpoint_meta(path))})


@pytest.mark.parametrize("damage", [garbage, truncated, missing_tensor, wrong_shape])
@pytest.mark.parametrize("slots", [(LATEST,), (LATEST, PREVIOUS)])
def test_a_checkpoint_that_does_not_load_is_moved_aside_and_the_run_goes_on(
        tmp_path, monkeypatch, straight, capsys, damage, slots):
    state = tmp_path / "state"
    interrupted_at(monkeypatch, 25, state, tmp_path / "run")
    for slot in slots:
        damage(state / slot)
    capsys.readouterr()

    assert execute(SPEC, tmp_path / "run", state_dir=state) == "completed"
    err = capsys.readouterr().err
    for slot in slots:
        assert f"warning: checkpoint {state / slot} does not load" in err
        assert f"moved to {state / slot}.corrupt" in err
    assert ("resumed from" in err) == (len(slots) == 1)  # from the previous slot, or from the start
    warnings = json.loads((tmp_path / "run" / "run.json").read_text())["warnings"]
    assert [w.split(" does not load")[0] for w in warnings] == [f"checkpoint {state / slot}" for slot in slots]
    pd.testing.assert_frame_equal(metrics(tmp_path / "run"), straight)


def test_a_damaged_checkpoint_is_kept_aside_until_the_run_ends(tmp_path, monkeypatch, straight):
    state = tmp_path / "state"
    interrupted_at(monkeypatch, 25, state, tmp_path / "run")
    garbage(state / LATEST)
    interrupted_at(monkeypatch, 3, state, tmp_path / "run")  # the resumed run (from step 20) stops again
    assert (state / f"{LATEST}.corrupt").exists()
    assert checkpoint.checkpoint_meta(state / LATEST)["step"] == 23
    assert execute(SPEC, tmp_path / "run", state_dir=state) == "completed"
    assert len(json.loads((tmp_path / "run" / "run.json").read_text())["warnings"]) == 1  # carried over
    pd.testing.assert_frame_equal(metrics(tmp_path / "run"), straight)


# --- a full disk ---------------------------------------------------------------------------------

def test_a_checkpoint_on_a_full_disk_ends_the_job_and_keeps_the_last_good_one(
        tmp_path, monkeypatch, straight, small_fs):
    state = small_fs / "state"
    interrupted_at(monkeypatch, 25, state, tmp_path / "run")
    size = (state / LATEST).stat().st_size
    filler = fill(small_fs, leave=size // 2)  # room for no third checkpoint
    before = {slot: (state / slot).read_bytes() for slot in (LATEST, PREVIOUS)}

    with pytest.raises(DiskFull, match=rf"no space left on the device to write {state / LATEST} \(.* MiB free"):
        execute(SPEC, tmp_path / "run", state_dir=state)
    assert not (tmp_path / "run").exists()  # not recorded as failed: nothing for the workflow to keep
    assert sorted(os.listdir(state)) == sorted([*before, runlock.LOCK_NAME])  # no temporary file left
    assert {slot: (state / slot).read_bytes() for slot in before} == before

    filler.unlink()
    assert execute(SPEC, tmp_path / "run", state_dir=state) == "completed"
    pd.testing.assert_frame_equal(metrics(tmp_path / "run"), straight)


def test_outputs_on_a_full_disk_end_the_train_command_naming_the_file(tmp_path, shared_data, small_fs, capsys):
    fill(small_fs, leave=0)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    out = small_fs / "run"
    code = cli.main(["train", "--spec", str(spec), "--out", str(out), "--state", str(tmp_path / "state")])
    assert code == cli.EXIT_DISK_FULL
    err = capsys.readouterr().err
    assert f"error: no space left on the device to write {out / 'metrics.csv'} (0.0 MiB free of 1.0 MiB" in err
    assert not (out / "run.json").exists() and [p.name for p in out.iterdir()] == []
    assert (tmp_path / "state" / LATEST).exists()  # the rerun, once there is room, resumes at step 30
