"""The training recipe: schedule, determinism, resume after a kill, divergence and failure."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from harness.study import resolve, run_spec
from harness.recipe import Recipe, lr_at
from harness.run import execute
from tests.conftest import MICRO_STUDY, REPO, micro_config


def spec_for(arch="transformer", seed=0, study=None, **recipe):
    study = {**(study or MICRO_STUDY)}
    study["recipe"] = {**study["recipe"], **recipe}
    return run_spec(resolve(micro_config(study))["micro"], arch, "base", seed)


def metrics(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv").drop(columns="wall_time")


def test_schedule_warms_up_linearly_then_follows_the_cosine_to_min_lr():
    r = Recipe.from_dict(spec_for(steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)["recipe"])
    assert lr_at(0, r) == pytest.approx(1e-4)
    assert lr_at(9, r) == pytest.approx(1e-3)
    assert lr_at(10, r) == pytest.approx(1e-3)
    assert lr_at(55, r) == pytest.approx(0.55e-3)  # half-way down the cosine
    assert lr_at(100, r) == pytest.approx(1e-4)


def test_recipe_rejects_unknown_and_missing_keys():
    recipe = spec_for()["recipe"]
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr_max'\]"):
        Recipe.from_dict({**recipe, "lr_max": 1})
    with pytest.raises(ValueError, match=r"missing key\(s\) \['lr'\]"):
        Recipe.from_dict({k: v for k, v in recipe.items() if k != "lr"})


def test_run_writes_contract_files_and_same_seed_repeats_exactly(tmp_path, shared_data):
    spec = spec_for("memnls")
    assert execute(spec, tmp_path / "a") == "completed"
    assert execute(spec, tmp_path / "b") == "completed"
    m = pd.read_csv(tmp_path / "a" / "metrics.csv")
    assert list(m.columns) == ["step", "split", "metric", "value", "wall_time"]
    logged = {"loss", "lr", "grad_norm", "grad_norm_max"}
    assert logged | {"logz_mean", "logit_abs_max", "embed_std"} <= set(m.metric)
    assert {name.partition("/")[0] for name in set(m.metric) - logged} == {  # memnls's diagnostics
        "logz_mean", "logit_abs_max", "embed_std", "grad_rms", "update_ratio", "state_potential_max",
        "state_potential_min"}
    val = m[(m.split == "val")]
    assert list(val.step) == [0, 10, 20, 30, 40]
    assert val.value.iloc[-1] < val.value.iloc[0] < math.log(256) + 0.5  # it learned
    pd.testing.assert_frame_equal(metrics(tmp_path / "a"), metrics(tmp_path / "b"))
    assert execute(spec_for("memnls", seed=1), tmp_path / "c") == "completed"
    assert not metrics(tmp_path / "a").equals(metrics(tmp_path / "c"))

    manifest = json.loads((tmp_path / "a" / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["steps_done"] == 40
    assert manifest["data"]["sha256"].startswith("86c4e6aa")
    assert manifest["shape"]["mode"] == "matched" and abs(manifest["shape"]["deviation"]) <= 0.01
    assert manifest["threads"] == 1 and manifest["dtype"] == "float32"
    for key in ("config_hash", "versions", "device", "hparams", "n_params", "wall_time_s", "recipe"):
        assert key in manifest
    weights = load_file(str(tmp_path / "a" / "model.safetensors"))
    assert sum(t.numel() for t in weights.values()) >= manifest["n_params"]
    assert not (tmp_path / ".state" / "a").exists()  # a finished run leaves no resume state


def test_killed_process_resumes_to_the_uninterrupted_metrics(tmp_path, shared_data):
    spec = spec_for("transformer", steps=400, checkpoint_every=10)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    state = tmp_path / "state"
    cmd = [sys.executable, "-m", "harness", "train", "--spec", str(tmp_path / "spec.json"),
           "--out", str(tmp_path / "resumed"), "--state", str(state)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (state / "checkpoint.safetensors").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (state / "checkpoint.safetensors").exists(), "no checkpoint appeared before the kill"
    assert not (tmp_path / "resumed" / "run.json").exists(), "the run finished before it was killed"

    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr
    straight = [*cmd[:-4], "--out", str(tmp_path / "straight"), "--state", str(tmp_path / "state2")]
    assert subprocess.run(straight, cwd=REPO, capture_output=True, timeout=300).returncode == 0
    pd.testing.assert_frame_equal(metrics(tmp_path / "resumed"), metrics(tmp_path / "straight"))


def test_a_second_process_never_trains_a_run_that_a_live_one_holds(tmp_path, shared_data, monkeypatch):
    """The run lock (harness.runlock): while a training process holds a run, another stops naming it and
    writes nothing; once the holder is SIGKILLed the next process takes the run over and resumes it."""
    from harness import runlock

    spec = spec_for("transformer", steps=400, checkpoint_every=10)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    state, out = tmp_path / "state", tmp_path / "run"
    cmd = [sys.executable, "-m", "harness", "train", "--spec", str(tmp_path / "spec.json"),
           "--out", str(out), "--state", str(state)]
    holder = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (state / "checkpoint.safetensors").exists() and time.time() < deadline:
        time.sleep(0.02)
    holder.send_signal(signal.SIGSTOP)  # alive and holding the lock, but it cannot finish the run meanwhile
    assert runlock.holder_of(state)["pid"] == holder.pid
    monkeypatch.setattr(runlock, "WAIT_S", 1.0)  # not the two minutes a user's run waits
    with pytest.raises(runlock.RunBusy, match=f"pid {holder.pid} on "):
        execute(spec, out, state_dir=state)
    assert not out.exists() and holder.poll() is None

    holder.send_signal(signal.SIGKILL)  # no grace: the kernel releases the lock
    holder.wait()
    assert execute(spec, out, state_dir=state) == "completed"
    run = json.loads((out / "run.json").read_text())
    assert run["resumed_from_step"] >= 10 and run["resumed_from_step"] % 10 == 0
    assert not state.exists()


def test_a_waiting_process_takes_the_lock_when_the_holder_finished_and_removed_the_state(tmp_path):
    """A finished run removes its state folder, lock file included; the process that waited for it must
    then take a fresh lock, not fail on the vanished folder."""
    from harness import runlock

    state = tmp_path / "state"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import shutil, sys, time; from pathlib import Path; from harness import runlock\n"
        f"with runlock.exclusive(Path({str(state)!r})):\n"
        "    print('held', flush=True); time.sleep(1.5)\n"
        f"    shutil.rmtree({str(state)!r})\n")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    with runlock.exclusive(state, wait_s=30):
        assert holder.wait(timeout=30) == 0
        assert runlock.holder_of(state)["pid"] == os.getpid()


def test_non_finite_loss_ends_the_run_as_diverged_with_its_files(tmp_path, shared_data):
    study = {**MICRO_STUDY, "archs": [{"name": "faulty", "build": "tests.faulty_archs:build",
                                       "hparams": {"fail_at": 23}}],
             "shape": {"mode": "as_published"}}
    assert execute(spec_for("faulty", study=study), tmp_path / "run") == "diverged"
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["status"] == "diverged" and manifest["steps_done"] == 24
    assert "non-finite training loss at step 24" in manifest["reason"]
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert math.isnan(m[(m.split == "train") & (m.metric == "loss")].value.iloc[-1])
    assert list(m[m.split == "val"].step) == [0, 10, 20]
    assert (tmp_path / "run" / "model.safetensors").stat().st_size > 0


def test_exception_is_recorded_as_failed_and_keeps_resume_state(tmp_path, shared_data):
    study = {**MICRO_STUDY, "archs": [{"name": "faulty", "build": "tests.faulty_archs:build",
                                       "hparams": {"fail_at": 25, "failure": "raise"}}],
             "shape": {"mode": "as_published"}}
    state = tmp_path / "state"
    assert execute(spec_for("faulty", study=study), tmp_path / "run", state_dir=state) == "failed"
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["reason"] == "RuntimeError: injected failure"
    assert manifest["steps_done"] == 25
    assert (state / "checkpoint.safetensors").exists()  # a retry resumes at step 20

    # the config changed before the retry (here: no failure any more): the stale state is discarded
    fixed = {**study, "archs": [{**study["archs"][0], "hparams": {"fail_at": 10_000}}]}
    assert execute(spec_for("faulty", study=fixed), tmp_path / "retry", state_dir=state) == "completed"
    assert execute(spec_for("faulty", study=fixed), tmp_path / "fresh", state_dir=tmp_path / "s2") == "completed"
    pd.testing.assert_frame_equal(metrics(tmp_path / "retry"), metrics(tmp_path / "fresh"))


def test_unknown_hyperparameter_fails_the_run_naming_it(tmp_path, shared_data):
    study = {**MICRO_STUDY, "archs": [{"name": "transformer", "hparams": {"n_experts": 4}}]}
    assert execute(spec_for(study=study), tmp_path / "run") == "failed"
    assert "n_experts" in json.loads((tmp_path / "run" / "run.json").read_text())["reason"]


def test_bf16_autocast_runs_on_cpu_as_the_precision_sweep_asks(tmp_path, shared_data):
    """precision bf16 is autocast on any device (a sweep's prec=bf16 variant on a laptop): the run records
    it, trains, and differs from the fp32 run only by the rounding of the autocast matmuls."""
    runs = {p: tmp_path / p for p in ("fp32", "bf16")}
    for precision, out in runs.items():
        assert execute(spec_for("transformer", steps=20, precision=precision), out) == "completed"
    assert json.loads((runs["bf16"] / "run.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((runs["fp32"] / "run.json").read_text())["dtype"] == "float32"
    val = {p: pd.read_csv(out / "metrics.csv").query("split == 'val'")["value"].to_numpy() for p, out in runs.items()}
    assert val["bf16"][0] == pytest.approx(val["fp32"][0], abs=0.02)  # the same model at step 0
    assert val["bf16"][-1] < val["bf16"][0] - 0.5 and not (val["bf16"] == val["fp32"]).all()
