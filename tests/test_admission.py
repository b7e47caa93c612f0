"""Admission: an architecture is checked before it costs compute (harness/admission.py).

Every deliberately broken model of tests/broken_archs.py fails the property it breaks, with a message
naming the evidence; the six built-in architectures and examples/gru.py pass at the tiny study's shape;
`harness check` prints one line per property; and through the DAG a study naming a leaking model by
dotted path never trains it, while the rest of the study goes on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
import torch.nn as nn

from harness import admission, cli
from harness.archs import make_config
from harness.status import load_studies
from harness.study import admission_spec, admission_specs, resolve, study_for_check
from tests.broken_archs import Config, Sound
from tests.conftest import MICRO_STUDY, REPO, micro_config, workflow_copy, write_config
from tests.test_workflow import snakemake

BROKEN = "tests.broken_archs"


@pytest.fixture(autouse=True)
def one_thread():
    """As the workflow's admission job runs (threads: 1); on a loaded machine more threads only wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def micro(*names: str | dict, mode: str = "as_published", **study) -> dict:
    """The micro study (d16, 1 layer, seq 32) with the transformer and the named models of this package."""
    archs = ["transformer"] + [n if not isinstance(n, str) or ":" in n else {"name": n, "build": f"{BROKEN}:{n}"}
                               for n in names]
    config = micro_config({**MICRO_STUDY, "archs": archs, "shape": {"mode": mode, "reference": "transformer"}, **study})
    return resolve(config)["micro"]


def admitted(study: dict, arch: str) -> tuple[dict, dict[str, admission.Result]]:
    record = admission.admit(admission_spec(study, arch))
    [model] = record["models"]
    return record, {r["property"]: admission.Result(**r) for r in model["results"]}


# --- every broken model fails the property it breaks, saying how ---------------------------------------

CASES = [
    ("bidirectional_gru", "causality", r"is not causal: changing token \d+ changed the logits at position \d+ "
     r"\(max \|Δ\| [\d.e-]+; (eval|train) mode, length \d+, \w+ tokens\); a language model's logits at t may depend "
     r"only on tokens <= t"),
    ("off_by_one_mask", "causality", r"is not causal: changing token (\d+) changed the logits at position (\d+) "),
    ("faint_leak", "causality", r"is not causal: changing token \d+ changed the logits at position \d+"),
    ("batchnorm", "batch_independence", r"is not batch-independent: the logits of a sequence changed when the other "
     r"sequences of its batch changed \(max \|Δ\| [\d.e-]+ at position \d+, train mode\)"),
    ("nan_at_init", "output_contract", r"returns non-finite logits at initialisation: 16,384 of 16,384 are NaN or "
     r"infinite \(eval mode, length 32\)"),
    ("wrong_shape", "output_contract", r"returns logits of shape \[2, 31, 256\] for input ids \[2, 32\] \(eval mode\); "
     r"the contract is \[B, T, V\] = \[2, 32, 256\]"),
    ("hot_init", "init_loss", r"starts far from ln V: [\d.]+ nats per token on random tokens at initialisation "
     r"against ln V = 5.545 \(warning beyond ±0.5, error above 11.09 = 2 ln V\)"),
    ("unseeded_init", "determinism", r"is not reproducible under the seed: two builds under seed 0 differ in "
     r"'emb.weight'"),
    ("dropout_in_eval", "determinism", r"is random in evaluation: two eval-mode forwards of the same tokens gave "
     r"different logits"),
    ("tied_twice", "accounting", r"is miscounted: 4,672 parameters by unique storage, 8,768 by the shape solver "
     r"\(run.json n_params, the budget it was matched at\), 4,672 in model.safetensors; 'emb.weight' and "
     r"'head.weight' share one storage but are separate parameters"),
]


@pytest.fixture(scope="module")
def broken_study() -> dict:
    return micro(*[name for name, _, _ in CASES], "sound")


@pytest.mark.parametrize("name, prop, message", CASES, ids=[c[0] for c in CASES])
def test_a_broken_model_fails_admission_on_its_property_with_its_evidence(broken_study, name, prop, message):
    record, results = admitted(broken_study, name)
    assert not record["passed"]
    assert results[prop].status == "failed", results[prop]
    assert re.search(message, results[prop].evidence), results[prop].evidence
    line = next(f for f in admission.failures(record) if results[prop].evidence in f)
    assert line.startswith(f"{name} ({BROKEN}:{name}) "), line  # one line naming the model and the evidence
    if name == "off_by_one_mask":  # the evidence is the leak itself: position t sees token t + 1
        token, position = map(int, re.search(message, results[prop].evidence).groups())
        assert token == position + 1


def test_the_same_model_without_its_bug_passes_every_check(broken_study):
    record, results = admitted(broken_study, "sound")
    assert record["passed"] and not record["warnings"]
    assert {p: r.status for p, r in results.items()} == dict.fromkeys(admission.PROPERTIES, "passed")


def test_a_model_of_the_wrong_contract_is_not_compared_further(broken_study):
    _, results = admitted(broken_study, "wrong_shape")
    assert results["causality"].status == results["batch_independence"].status == "skipped"
    assert results["accounting"].status == results["determinism"].status == "passed"
    _, results = admitted(broken_study, "dropout_in_eval")  # forwards that do not repeat compare nothing
    assert results["causality"].status == results["batch_independence"].status == "skipped"


def test_the_faint_leak_is_caught_because_logits_are_compared_in_float64(broken_study):
    """Its leak moves logits by ~5e-5: above float64's tolerance, below the float32 one (which must sit
    above the FFT models' honest float32 rounding, up to 1.8e-5)."""
    _, results = admitted(broken_study, "faint_leak")
    assert admission.TOLERANCES["causality"] < results["causality"].value < admission.TOLERANCES["causality_float32"]
    assert results["causality"].tolerance == admission.TOLERANCES["causality"]


@dataclass
class Float32Config(Config):
    pass


class Float32Only(Sound):
    """Runs only in float32 (as a model with hard casts or a float32 kernel does)."""

    def forward(self, input_ids):
        if self.emb.weight.dtype != torch.float32:
            raise TypeError("float32 only")
        return super().forward(input_ids)


def float32_only(**hparams) -> nn.Module:
    return Float32Only(make_config(Float32Config, hparams, "float32_only"))


def test_a_model_that_runs_only_in_float32_is_compared_there_at_the_float32_tolerance():
    record, results = admitted(micro("tests.test_admission:float32_only"), "test_admission")
    assert record["passed"] and record["models"][0]["compared_in"] == "float32"
    assert results["causality"].tolerance == admission.TOLERANCES["causality_float32"]
    assert "tolerance 0.001 in float32" in results["causality"].evidence


def test_a_model_that_cannot_be_sized_fails_admission_saying_why():
    record, results = admitted(micro("tied_twice", mode="matched"), "tied_twice")  # counted twice: too big
    assert not record["passed"]
    assert results["accounting"].evidence.startswith("cannot be sized at the study's shape: ValueError: ")


# --- the built-in architectures and the worked example pass at the tiny study's shape --------------------

@pytest.fixture(scope="module")
def tiny() -> dict:
    studies, _ = load_studies(REPO)
    return studies["tiny"]


@pytest.mark.parametrize("arch", ["transformer", "memnls", "diag_ssm", "trn_hybrid", "resonance", "eam",
                                  "examples.gru:build"])
def test_every_builtin_architecture_and_the_worked_example_pass_admission_in_seconds(tiny, arch):
    study, name = study_for_check(tiny, arch, {})
    record, results = admitted(study, name)
    assert record["passed"] and not record["warnings"], admission.report(record)
    assert {p: r.status for p, r in results.items()} == dict.fromkeys(admission.PROPERTIES, "passed")
    assert results["causality"].value <= 1e-13  # honest float64 rounding: 0 to 2e-14 (resonance's FFT)
    assert abs(results["init_loss"].value) < 0.2  # nats from ln V
    assert record["models"][0]["compared_in"] == "float64"
    assert record["wall_time_s"] < 10


def test_pipelines_are_checked_on_their_evaluation_path():
    study = micro({"name": "toy", "build": "tests.toy_pipeline:build", "hparams": {"source": "transformer"}})
    record, results = admitted(study, "toy")  # no evaluation declared: its builder at the run's hparams
    assert record["passed"] and results["accounting"].evidence.startswith("counts 65,536 parameters")


# --- the cache key: the builder's source, the hyperparameters and the shape --------------------------------

def test_one_check_per_distinct_model_and_a_key_that_changes_only_with_what_it_checks(monkeypatch):
    sweep = micro(sweep={"lr": [1e-3, 1e-2], "z_loss": [0, 1e-4]})
    spec = admission_spec(sweep, "transformer")
    assert len(spec["runs"]) == 1  # four variants, one model
    assert len(admission_spec(micro(sweep={"qk_norm": [False, True]}), "transformer")["runs"]) == 2
    key = spec["checked"]
    assert admission_spec(micro(), "transformer")["checked"] == key  # the recipe is not the model
    assert admission_spec(micro(seeds=[0, 1]), "transformer")["checked"] == key
    assert admission_spec(micro(model={**MICRO_STUDY["model"], "d_model": 32}), "transformer")["checked"] != key
    seq = micro(recipe={**MICRO_STUDY["recipe"], "seq_len": 16})
    assert admission_spec(seq, "transformer")["checked"] != key
    from harness import archs

    real = archs.source_hash
    monkeypatch.setattr(archs, "source_hash", lambda s: "edited" if s == "transformer" else real(s))
    assert admission_spec(micro(), "transformer")["checked"] != key  # an edited model is checked again


def test_run_json_and_the_report_record_the_verdict_and_its_tolerances():
    from harness.aggregate import _admission_columns
    from harness.report.sections import admission_note

    record = admission.admit(admission_spec(micro(), "transformer"))
    summary = admission.summary(record)
    assert summary["passed"] and summary["tolerances"]["causality"] == 1e-9 and summary["compared_in"] == ["float64"]
    columns = _admission_columns(summary)
    assert columns["admission"] == "passed" and json.loads(columns["admission_tolerances"]) == admission.TOLERANCES
    runs = pd.DataFrame([{"arch": "transformer", **columns}, {"arch": "old", **_admission_columns(None)}])
    note = admission_note(runs)
    assert "max |Δ| of a logit <= 1e-09 compared in float64" in note and "within ±0.5 nats of ln V" in note
    assert "Not checked: old." in note


NO_TORCH = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.partition('.')[0] == 'torch':\n"
            "            raise ImportError('torch is blocked in this test')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "from harness import cli\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")


def test_the_study_wide_check_fills_the_cache_and_each_architecture_reads_its_verdict_without_torch(tmp_path):
    study = micro("bidirectional_gru")
    cache, out = tmp_path / "cache", tmp_path / "study.json"
    assert cli.main(["check", "--spec", json.dumps(admission_specs(study)), "--cache", str(cache), "--out", str(out)]) == 0
    verdicts = json.loads(out.read_text())["archs"]
    assert verdicts["transformer"]["passed"] and not verdicts["bidirectional_gru"]["passed"]
    assert sorted(p.stem for p in cache.iterdir()) == sorted(v["checked"] for v in verdicts.values())

    def gate(arch: str) -> subprocess.CompletedProcess:  # the workflow's per-architecture job, on a cache hit
        return subprocess.run([sys.executable, "-c", NO_TORCH, "check", "--spec", json.dumps(admission_spec(study, arch)),
                               "--cache", str(cache), "--out", str(tmp_path / f"{arch}.json")],
                              capture_output=True, text=True, cwd=REPO)

    done = gate("transformer")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "transformer.json").read_text())["passed"]
    done = gate("bidirectional_gru")
    assert done.returncode == 1 and not (tmp_path / "bidirectional_gru.json").exists()
    assert re.search(rf"^error: bidirectional_gru \({BROKEN}:bidirectional_gru\) is not causal: changing token \d+",
                     done.stderr, re.M), done.stderr


# --- `harness check ARCH` ----------------------------------------------------------------------------------

def test_harness_check_prints_one_line_per_property(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert cli.main(["check", "transformer", "--shape", "tiny"]) == 0
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if line.startswith("  ")]
    assert [line.split()[0] for line in lines] == list(admission.PROPERTIES)
    assert all(line.split()[1] == "passed" for line in lines), out
    assert out[0].startswith("transformer: seq_len 128, vocab 256, 124,672 parameters")
    assert out[-1].startswith("admitted: transformer")


def test_harness_check_of_a_leaking_model_names_the_property_and_fails(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    code = cli.main(["check", f"{BROKEN}:bidirectional_gru", "--shape", "tiny", "d_model=16", "n_layers=1",
                     "seq_len=32", "mode=as_published"])
    assert code == 1
    captured = capsys.readouterr()
    assert re.search(r"^  causality\s+failed\s+is not causal: changing token", captured.out, re.M)
    assert re.search(rf"^error: {BROKEN}:bidirectional_gru is not causal: changing token \d+ changed the logits at "
                     r"position \d+", captured.err, re.M), captured.err
    assert "bidirectional_gru is not admitted: none of its runs starts" in captured.err


# --- through the DAG --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_study_naming_a_leaking_model_never_trains_it_and_the_rest_goes_on(tmp_path, shared_data):
    workdir = workflow_copy(tmp_path / "workflow")
    leaky = {"name": "leaky", "build": f"{BROKEN}:bidirectional_gru"}
    study = {**MICRO_STUDY, "archs": ["transformer", leaky], "shape": {"mode": "matched", "reference": "transformer"}}
    write_config(workdir, {"study": "micro", "studies": {"micro": study}})
    done = snakemake(workdir, "--cores", "1", "reports/collapse.html")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert re.search(rf"error: leaky \({BROKEN}:bidirectional_gru\) is not causal: changing token \d+ changed the "
                     r"logits at position \d+", output), output[-3000:]
    results = workdir / "results" / "micro"
    assert not (results / "leaky").exists() and not (workdir / "logs" / "micro" / "leaky" / "base").exists()
    assert not (results / ".admission" / "leaky.json").exists()
    run = json.loads((results / "transformer" / "base" / "seed0" / "run.json").read_text())  # the rest went on
    assert run["status"] == "completed" and run["admission"]["passed"]
    assert run["admission"]["tolerances"] == admission.TOLERANCES
    record = results / ".admission" / "transformer.json"
    checked_at = record.stat().st_mtime

    # without the leaking model the study completes, reusing the transformer's run and its admission
    write_config(workdir, {"study": "micro", "studies": {"micro": {**study, "archs": ["transformer"]}}})
    done = snakemake(workdir, "--cores", "1", "reports/collapse.html")
    assert done.returncode == 0, done.stderr[-3000:]
    assert record.stat().st_mtime == checked_at
    assert "rule train" not in done.stdout + done.stderr
    html = (workdir / "reports" / "collapse.html").read_text()
    params = html[html.index('<section id="params">'):]
    assert "<th>admission</th>" in params and "<td>passed</td>" in params
    assert "compared in float64" in params
    runs = pd.read_csv(results / "runs.csv")
    assert list(runs.admission) == ["passed"]
