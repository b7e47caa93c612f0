"""The eam pipeline (harness/eam.py) on a micro teacher run: its stages, its run files, its failures."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from harness import data
from harness.archs import build
from harness.run import execute
from harness.study import resolve, run_spec
from tests.conftest import MICRO_STUDY, micro_config

STAGES = {"write_tokens": 4096, "encoder_steps": 10, "decoder_steps": 10}


def micro_eam_study(**stages):
    hparams = {"teacher": "transformer", **STAGES, **stages}
    return resolve(micro_config({**MICRO_STUDY, "archs": ["transformer", {"name": "eam", "hparams": hparams}]}))["micro"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from tests.conftest import NEEDS_DATA, TINYSHAKESPEARE

    if TINYSHAKESPEARE is None:
        pytest.skip(NEEDS_DATA)
    out = tmp_path_factory.mktemp("micro") / "transformer" / "base" / "seed0"
    assert execute(run_spec(micro_eam_study(), "transformer", "base", 0), out) == "completed"
    return out


def eam_spec(teacher_dir, seed=0, **stages):
    return {**run_spec(micro_eam_study(**stages), "eam", "base", seed), "inputs": {"teacher": str(teacher_dir)}}


def test_micro_pipeline_from_a_trained_teacher(teacher, tmp_path):
    spec = eam_spec(teacher)
    assert execute(spec, tmp_path / "a") == "completed"  # its PIPELINE declaration picks harness.eam:run
    m = pd.read_csv(tmp_path / "a" / "metrics.csv")
    assert list(m.columns) == ["step", "split", "metric", "value", "wall_time"]
    curve = lambda metric: m[m.metric == metric].set_index("step").value
    assert list(curve("encoder_loss").index) == [5, 10] and list(curve("decoder_loss").index) == [15, 20]
    assert curve("encoder_loss").iloc[-1] < curve("encoder_loss").iloc[0]
    assert curve("decoder_loss").iloc[-1] < curve("decoder_loss").iloc[0] < math.log(256) + 0.5
    val = m[m.split == "val"].set_index("metric")
    assert set(val.index) == {"loss", "teacher_loss"} and set(val.step) == {20}

    run = json.loads((tmp_path / "a" / "run.json").read_text())
    summary = run["pipeline"]
    assert run["status"] == "completed" and run["reason"] is None and run["steps_done"] == 20
    assert run["n_params"] == summary["encoder_params"] + summary["decoder_params"]
    assert summary["teacher"] == "transformer" and summary["max_L"] == 12000
    assert summary["eam_loss"] == val.value["loss"] and summary["teacher_loss"] == val.value["teacher_loss"]
    assert summary["transfer"] == pytest.approx(summary["teacher_loss"] / summary["eam_loss"], rel=1e-12)
    assert 3000 <= summary["live_locations"] <= 12000 and summary["write_keys_per_s"] > 0
    assert summary["keys_written"] == 4096 and summary["memory_floats"] == 12000 * (256 + 16 + 1)
    assert run["hparams"]["teacher_d_model"] == 16 and run["shape"]["knob"] is None
    stages = run["stage_cpu_seconds"]  # timed like the common loop's runs (harness.timing; sweep_cost's table)
    assert {"startup", "data", "build", "steps", "evaluation"} <= set(stages) and stages["steps"] > stages["evaluation"] > 0

    # the teacher's loss is its own final validation loss: same fixed batches, same weights
    teacher_val = pd.read_csv(teacher / "metrics.csv").query("split == 'val' and metric == 'loss'").value.iloc[-1]
    assert summary["teacher_loss"] == pytest.approx(teacher_val, abs=1e-6)
    # the logged loss is the cross-entropy of the saved model's logits (build + weights from the run folder)
    model = build("eam", **run["hparams"])
    model.load_state_dict(load_file(str(tmp_path / "a" / "model.safetensors")), strict=True)
    corpus = data.load_corpus("tinyshakespeare", tokens="bytes")
    r = spec["recipe"]
    batches = data.fixed_batches(corpus.splits["val"], r["eval_batches"], r["batch_size"], r["seq_len"], r["eval_seed"])
    with torch.no_grad():
        ce = sum(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in batches) / len(batches)
    assert ce == pytest.approx(summary["eam_loss"], abs=1e-6)

    assert execute(spec, tmp_path / "b") == "completed"  # the same seed repeats value for value
    pd.testing.assert_frame_equal(m.drop(columns="wall_time"),
                                  pd.read_csv(tmp_path / "b" / "metrics.csv").drop(columns="wall_time"))


@pytest.mark.parametrize("change, message", [
    (lambda spec: spec.pop("inputs"), "no inputs.teacher"),
    (lambda spec: spec.update(seed=1), "seed 0, but this run's teacher is 'transformer' variant 'base' seed 1"),
    (lambda spec: spec["hparams"].update(bogus=1), r"unknown hparam(s) ['bogus']"),
    (lambda spec: spec["hparams"].update(seed=3), "cannot be set"),
])
def test_bad_teacher_or_hparams_fail_with_a_clear_reason(teacher, tmp_path, change, message):
    spec = eam_spec(teacher)
    change(spec)
    assert execute(spec, tmp_path) == "failed"
    run = json.loads((tmp_path / "run.json").read_text())
    assert message in run["reason"]
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "model.safetensors").is_file()


def test_a_non_finite_stage_loss_ends_the_run_as_diverged(teacher, tmp_path):
    broken = tmp_path / "teacher"
    broken.mkdir()
    (broken / "run.json").write_text((teacher / "run.json").read_text())
    weights = load_file(str(teacher / "model.safetensors"))
    weights["norm_f.weight"] = torch.full_like(weights["norm_f.weight"], math.nan)
    save_file(weights, str(broken / "model.safetensors"))
    assert execute(eam_spec(broken), tmp_path / "run") == "diverged"
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["reason"] == "non-finite encoder_loss at step 1" and run["steps_done"] == 1
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert m[m.metric == "encoder_loss"].step.tolist() == [1] and not (m.split == "val").any()


def test_a_stop_signal_ends_the_pipeline_unfinished_without_outputs(teacher, tmp_path, monkeypatch):
    import signal

    from harness import eam
    from harness.run import Interrupted

    real, calls = eam.train_step, iter(range(1, 100))

    def step(*args):
        if next(calls) == 13:  # in the decoder stage
            signal.raise_signal(signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(eam, "train_step", step)
    with pytest.raises(Interrupted, match="interrupted by SIGTERM at step 13"):
        execute(eam_spec(teacher), tmp_path / "run")
    assert not (tmp_path / "run").exists()
