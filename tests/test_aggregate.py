"""aggregate: run folders -> tidy tables; failed runs kept; bad files named; deterministic output.

Also home of the synthetic run folders the report tests use: losses from harness.synthetic (healthy,
collapse, divergence), gradient norms and learning rates beside them, and a crash that logged nothing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.aggregate import aggregate
from harness.contracts import AGGREGATE_FILES, BASE_VARIANT, EVENT_COLUMNS as RUN_EVENT_COLUMNS, ID_COLUMNS
from harness.synthetic import make_run

VOCAB = 256
REFERENCE_PARAMS = 120_000
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def make_study(archs=("memnls", "transformer"), seeds=(0, 1, 2), n_evals=12, eval_every=25, logs_per_eval=5,
               **extra) -> dict:
    """A resolved study as the workflow passes it to aggregate."""
    return {
        "name": "synthetic", "description": "synthetic runs for the aggregate and report tests",
        "smoke": True, "gpu": False,
        "data": {"name": "tinyshakespeare", "tokens": "bytes"},
        "archs": {a: {"build": a, "hparams": {}} for a in archs},
        "seeds": list(seeds),
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "dropout": 0.0},
        "shape": {"mode": "matched", "reference": archs[-1], "tolerance": 0.01},
        "recipe": {"steps": n_evals * eval_every, "batch_size": 16, "seq_len": 128, "lr": 3e-3, "min_lr": 3e-4,
                   "warmup_steps": 30, "betas": [0.9, 0.95], "weight_decay": 0.01, "grad_clip": 1.0,
                   "precision": "auto", "compile": False, "log_every": eval_every // logs_per_eval,
                   "eval_every": eval_every, "eval_batches": 4, "eval_sampling": "fixed", "eval_seed": 1234,
                   "checkpoint_every": 100},
        "detect": {}, "target_ppl": None, "published": None, "published_curves": None,
        **extra,
    }


def write_run(root: Path, study: dict, arch: str, seed: int, kind: str = "healthy", status: str = "completed") -> Path:
    """One run folder (metrics.csv, run.json, events.csv) as train + detect would leave it.

    Losses come from harness.synthetic (kind: healthy | collapse | divergence | ...); the events are
    its ground truth, as a perfect detector would write them; a failed run logged nothing.
    """
    recipe = study["recipe"]
    eval_every = recipe["eval_every"]
    index = sorted(study["archs"]).index(arch)
    run_dir = root / study["name"] / arch / BASE_VARIANT / f"seed{seed}"
    run_dir.mkdir(parents=True)
    rows = pd.DataFrame(columns=["step", "split", "metric", "value"])
    truth = None
    if status != "failed":
        losses, truth = make_run(kind, 1000 * index + seed, n_evals=recipe["steps"] // eval_every, magnitude=3.0,
                                 eval_every=eval_every, logs_per_eval=eval_every // recipe["log_every"],
                                 vocab_size=VOCAB)
        train = losses[losses["split"] == "train"]
        steps = train["step"].to_numpy()
        rng = np.random.default_rng(seed)
        grad = (0.3 + 2.0 * np.exp(-steps / (recipe["steps"] / 8))) * np.exp(rng.normal(0, 0.05, len(steps)))
        grad = grad * np.exp(train["value"].to_numpy() - train["value"].cummin().to_numpy()) ** 3  # events kick it
        lr = recipe["min_lr"] + 0.5 * (recipe["lr"] - recipe["min_lr"]) * (1 + np.cos(np.pi * steps / recipe["steps"]))
        extra = [pd.DataFrame({"step": steps, "split": "train", "metric": m, "value": v})
                 for m, v in (("lr", lr), ("grad_norm", grad), ("grad_norm_max", 1.6 * grad))]
        rows = pd.concat([losses, *extra], ignore_index=True).sort_values(["step", "split", "metric"], kind="stable")
        if status == "completed":
            final = losses.loc[losses["split"] == "val", "value"].iloc[-1]
            rows = pd.concat([rows, pd.DataFrame([{"step": recipe["steps"], "split": "test", "metric": "loss",
                                                   "value": final + 0.01}])], ignore_index=True)
    rows = rows.assign(wall_time=(0.05 * rows["step"].astype(float)).round(3))
    rows.to_csv(run_dir / "metrics.csv", index=False, lineterminator="\n", float_format="%.17g", na_rep="nan")

    steps_done = 0 if status == "failed" else int(rows["step"].max())
    reference = arch == study["shape"]["reference"]
    n_params = REFERENCE_PARAMS if reference else REFERENCE_PARAMS + 37 * (index + 1)
    run = {"arch": arch, "build": arch, "seed": seed, "study": study["name"], "config_hash": f"{index:04x}beefcafe0000",
           "versions": {"python": "3.11.2", "torch": "2.13.0", "numpy": "2.3.0", "harness": "0.1.0"},
           "threads": 1, "status": status, "steps_done": steps_done, "reason": None, "wall_time_s": 0.05 * steps_done}
    if status == "failed":
        run["reason"] = "RuntimeError: synthetic crash while building the model"
    else:
        run.update(
            data={"name": "tinyshakespeare", "sha256": TINYSHAKESPEARE_SHA256, "tokens": "bytes", "vocab_size": VOCAB},
            recipe=recipe, device="cpu (x86_64)", dtype="float32", hparams={"d_model": 64, "ffn_hidden": 100 + index},
            n_params=n_params, reconstruction=arch == "memnls",
            shape={"mode": "matched", "reference": study["shape"]["reference"], "reference_params": REFERENCE_PARAMS,
                   "deviation": n_params / REFERENCE_PARAMS - 1, "knob": "ffn_hidden", "knob_value": 100 + index})
        if status == "diverged":
            run["reason"] = f"non-finite training loss at step {steps_done}"
    (run_dir / "run.json").write_text(json.dumps(run, indent=2, sort_keys=True))

    events = []
    if truth is not None and truth.type is not None:
        events.append({"study": study["name"], "arch": arch, "variant": BASE_VARIANT, "seed": seed, "type": truth.type,
                       "split": "val",
                       "onset_step": truth.onset_step, "train_onset_step": truth.onset_step - recipe["log_every"],
                       "peak_step": truth.onset_step + eval_every,
                       "end_step": truth.onset_step + 3 * eval_every if truth.recovered else None,
                       "recovered": truth.recovered,
                       "peak_value": math.exp(math.log(VOCAB) / 2) * truth.magnitude, "magnitude": truth.magnitude,
                       "score": 42.0, "threshold": 7.0, "note": f"synthetic {truth.type}"})
    pd.DataFrame(events, columns=ID_COLUMNS + RUN_EVENT_COLUMNS).to_csv(run_dir / "events.csv", index=False,
                                                                 lineterminator="\n")
    return run_dir


def make_runs(root: Path, study: dict, special: dict | None = None) -> list[Path]:
    """Every (arch, seed) of the study; ``special`` maps (arch, seed) -> write_run keyword arguments."""
    special = special or {}
    return [write_run(root, study, arch, seed, **special.get((arch, seed), {}))
            for arch in study["archs"] for seed in study["seeds"]]


def realistic_special(study: dict) -> dict:
    """2 archs x 3 seeds: transformer seed 0 collapses, seed 2 diverges; memnls seed 1 crashes."""
    return {("transformer", 0): {"kind": "collapse"},
            ("transformer", 2): {"kind": "divergence", "status": "diverged"},
            ("memnls", 1): {"status": "failed"}}


@pytest.fixture
def study_runs(tmp_path):
    study = make_study()
    return study, make_runs(tmp_path / "results", study, realistic_special(study)), tmp_path / "agg"


def test_tables_keep_every_run_and_name_the_columns(study_runs):
    study, run_dirs, out = study_runs
    aggregate(run_dirs, out, study)
    assert sorted(p.name for p in out.iterdir()) == sorted(AGGREGATE_FILES) == [
        "ablations.csv", "attribution.csv", "attribution_summary.csv", "claims.csv", "events.csv", "headlines.csv",
        "looks.csv", "lr_curves.csv", "notes.json", "pairs.csv", "quantization.csv", "quantization_summary.csv", "runs.csv",
        "sensitivity.csv", "sensitivity_pairs.csv", "study.json", "summary.csv", "trajectories.csv"]
    assert json.loads((out / "study.json").read_text()) == study

    runs = pd.read_csv(out / "runs.csv")
    for column in ["study", "arch", "variant", "seed", "status", "reason", "n_params", "deviation", "reconstruction",
                   "config_hash", "device", "dtype", "threads", "wall_time_s", "steps_done", "version_torch",
                   "data_sha256", "final_loss", "final_smoothed_loss", "best_loss", "collapsed"]:
        assert column in runs.columns, column
    assert len(runs) == 6
    status = runs.set_index(["arch", "seed"])["status"]
    assert status[("memnls", 1)] == "failed" and status[("transformer", 2)] == "diverged"
    assert (status.drop([("memnls", 1), ("transformer", 2)]) == "completed").all()
    failed = runs[runs["status"] == "failed"].iloc[0]
    assert failed["reason"].startswith("RuntimeError: synthetic crash")
    assert runs.loc[runs["status"] == "completed", "reason"].isna().all()

    trajectories = pd.read_csv(out / "trajectories.csv")
    assert list(trajectories.columns[:4]) == ["study", "arch", "variant", "seed"] == ID_COLUMNS
    expected_rows = sum(len(pd.read_csv(d / "metrics.csv")) for d in run_dirs)
    assert len(trajectories) == expected_rows
    assert not ((trajectories["arch"] == "memnls") & (trajectories["seed"] == 1)).any()  # the crash logged nothing

    events = pd.read_csv(out / "events.csv")
    assert list(events.columns[:len(ID_COLUMNS + RUN_EVENT_COLUMNS)]) == ID_COLUMNS + RUN_EVENT_COLUMNS
    assert sorted(zip(events["arch"], events["seed"], events["type"])) == [
        ("transformer", 0, "collapse"), ("transformer", 2, "divergence")]

    summary = pd.read_csv(out / "summary.csv").set_index("arch")
    assert list(summary.index) == ["memnls", "transformer"]
    assert summary.loc["memnls", "n_failed"] == 1 and summary.loc["transformer", "n_diverged"] == 1
    assert summary.loc["memnls", "n_seeds"] == 3  # the failed run counts as a seed, not as a missing one
    assert summary.loc["memnls", "n_params"] == REFERENCE_PARAMS + 37
    assert summary.loc["transformer", "deviation"] == 0
    assert summary.loc["memnls", "deviation"] == pytest.approx(37 / REFERENCE_PARAMS)

    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 1 and {pairs["arch_a"][0], pairs["arch_b"][0]} == {"memnls", "transformer"}


def test_scores_land_on_their_own_run(study_runs):
    """Each run's final and smoothed loss is computed from its own metrics.csv (no seed mix-up)."""
    study, run_dirs, out = study_runs
    aggregate(run_dirs, out, study)
    runs = pd.read_csv(out / "runs.csv").set_index(["arch", "seed"])
    for run_dir in run_dirs:
        arch, seed = run_dir.parent.parent.name, int(run_dir.name.removeprefix("seed"))
        if runs.loc[(arch, seed), "status"] != "completed":
            continue
        metrics = pd.read_csv(run_dir / "metrics.csv")
        val = metrics[(metrics["split"] == "val") & (metrics["metric"] == "loss")].sort_values("step")["value"]
        assert runs.loc[(arch, seed), "final_loss"] == pytest.approx(val.iloc[-1])
        assert runs.loc[(arch, seed), "final_smoothed_loss"] == pytest.approx(val.iloc[-3:].mean())
        assert runs.loc[(arch, seed), "best_loss"] == pytest.approx(val.min())


def test_output_is_deterministic_and_leaves_no_temp_files(study_runs):
    study, run_dirs, out = study_runs
    aggregate(run_dirs, out, study)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    aggregate(list(reversed(run_dirs)), out, study)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~umask}  # not mkstemp's 0600


def _break(run_dir: Path, name: str, how: str) -> None:
    path = run_dir / name
    if how == "missing":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(b'{"arch": "transformer", "seed": 0,' if name == "run.json" else b"\x00\xff\xfe")
    elif how == "columns":
        path.write_text("step,value\n1,2.0\n")
    elif how == "text_value":
        path.write_text("step,split,metric,value,wall_time\n10,train,loss,oops,0.1\n")


@pytest.mark.parametrize("name, how, error", [
    ("metrics.csv", "missing", FileNotFoundError),
    ("run.json", "missing", FileNotFoundError),
    ("events.csv", "missing", FileNotFoundError),
    ("run.json", "garbage", ValueError),
    ("metrics.csv", "garbage", ValueError),
    ("metrics.csv", "columns", ValueError),
    ("events.csv", "columns", ValueError),
    ("metrics.csv", "text_value", ValueError),
])
def test_a_bad_file_is_named_in_the_error(study_runs, name, how, error):
    study, run_dirs, out = study_runs
    bad = run_dirs[4]
    _break(bad, name, how)
    with pytest.raises(error, match=str(bad / name).replace("\\", "\\\\")):
        aggregate(run_dirs, out, study)
    assert not out.exists()  # nothing half-written


def test_runs_of_another_study_or_twice_the_same_run_are_refused(study_runs, tmp_path):
    study, run_dirs, out = study_runs
    with pytest.raises(ValueError, match="belongs to study 'synthetic', not 'other'"):
        aggregate(run_dirs, out, {**study, "name": "other"})
    twin = tmp_path / "twin"
    twin.mkdir()
    for name in ("metrics.csv", "run.json", "events.csv"):
        (twin / name).write_bytes((run_dirs[0] / name).read_bytes())
    with pytest.raises(ValueError, match="same run"):
        aggregate(run_dirs + [twin], out, study)
