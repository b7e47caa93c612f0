"""The Snakemake workflow itself: dry run, lint, early config errors, a whole DAG, kill and resume.

Every run happens in a temporary copy of the workflow (conftest.workflow_copy), never in the
working tree, so no test depends on (or touches) the results/ a user's own runs left there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.study import resolve, run_spec
from tests.conftest import MICRO_STUDY, REPO, micro_config, workflow_copy, write_config

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# Snakemake's own notices, printed before the workflow is read
NOTICES = ("Using workflow specific profile", "Config file config/config.yaml is extended")


def env() -> dict[str, str]:
    """Jobs run `python -m harness`: this interpreter, and dotted-path archs importable from the repo."""
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e['PATH']}"
    e["PYTHONPATH"] = str(REPO)
    return e


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Snakemake's CLI in a workflow copy, as a user runs it from the checkout's root."""
    return subprocess.run([*SNAKEMAKE, *args], cwd=workdir, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", output, re.M)}


def own_lines(done: subprocess.CompletedProcess) -> list[str]:
    """The output lines that are not Snakemake's start-up notices."""
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip() and not line.startswith(NOTICES)]


@pytest.fixture
def workdir(tmp_path) -> Path:
    return workflow_copy(tmp_path / "workflow")


def test_dry_run_of_the_shipped_config_plans_every_arch_and_seed(workdir):
    done = snakemake(workdir, "-n", "--cores", "1", "reports/collapse.html")
    assert done.returncode == 0, done.stderr
    counts = job_counts(done.stdout)
    assert counts["train"] == counts["detect"] == counts["quantize"] == 18  # tiny: 6 archs x 3 seeds
    assert counts["aggregate"] == counts["report"] == 1


def test_dry_run_of_the_stability_preset_plans_every_variant_and_wires_eam_to_its_variants_teacher(workdir):
    done = snakemake(workdir, "-n", "--cores", "1", "reports/stability/collapse.html")
    assert done.returncode == 0, done.stderr
    counts = job_counts(done.stdout)
    # the 4 attention archs x 24 variants (qk_norm off and on), memnls and diag_ssm x 12 (qk_norm off), x 3 seeds
    assert counts["train"] == counts["detect"] == counts["quantize"] == (4 * 24 + 2 * 12) * 3
    jobs = re.findall(r"output: (results/stability/(\w+)/([^/]+)/seed(\d)/metrics.csv)", done.stdout)
    lrs = ("0.003", "0.01", "0.03", "0.1", "0.3", "1")
    variants = {f"lr={lr},z_loss={z},qk_norm={q}" for lr in lrs for z in ("0", "0.001") for q in ("off", "on")}
    assert {variant for _, _, variant, _ in jobs} == variants
    for arch in ("memnls", "diag_ssm"):  # no qk_norm: its off variants alone, none trained twice
        assert {v for _, a, v, _ in jobs if a == arch} == {v for v in variants if v.endswith("qk_norm=off")}
    eam = re.search(r"input: (results/stability/transformer/lr=0.3,z_loss=0.001,qk_norm=on/seed2/run.json)[^\n]*\n"
                    r"\s+output: results/stability/eam/lr=0.3,z_loss=0.001,qk_norm=on/seed2/metrics.csv", done.stdout)
    assert eam, "eam trains on the transformer run of its own variant and seed"


def test_lint_finds_nothing_but_the_pip_installed_environment(workdir):
    done = snakemake(workdir, "--lint")
    findings = set(re.findall(r"^\s+\* (.+?):?$", done.stdout + done.stderr, re.M))
    assert findings == {"Specify a conda environment or container for each rule."}, findings


@pytest.mark.parametrize(
    "override, message",
    [
        ("steps=-1", "config steps: -1 is less than the minimum of 1"),
        ("seeds=[0,0]", "config seeds: [0, 0] has non-unique elements"),
        ("seeds=[a]", "config seeds[0]: 'a' is not of type 'integer'"),
        ("archs=[transformer,nope]", "unknown architecture 'nope'"),
        ("study=nope", "'nope' is not one of the studies"),
        ("archs=[examples.gru:nobuild]", "module 'examples.gru' has no callable 'nobuild' (did you mean examples.gru:build?)"),
        ("archs=[examples.nothere:build]", "module 'examples.nothere' is not importable"),
        ("step=100", "config: unknown key 'step'; did you mean steps?"),
        ("seed=[0]", "config: unknown key 'seed'; did you mean seeds?"),
    ],
)
def test_bad_config_stops_before_any_job_in_one_line(workdir, override, message):
    done = snakemake(workdir, "-n", "--cores", "1", "reports/collapse.html", "--config", override)
    assert done.returncode != 0
    lines = own_lines(done)
    assert len(lines) == 1 and message in lines[0], done.stdout + done.stderr  # no schema dump, no traceback
    assert len((done.stdout + done.stderr).splitlines()) <= 3



def test_an_invocation_exits_when_its_jobs_are_done(workdir, shared_data):
    """profiles/default wakes Snakemake's scheduler once a minute (max-jobs-per-timespan), through a timer
    the interpreter waits for at exit; common.smk's end_invocation cancels it, so no invocation idles for up
    to a minute after its last job (without it: 50-60 s here)."""
    write_config(workdir, micro_config())
    started = time.monotonic()
    done = snakemake(workdir, "--cores", "1", "results/micro/.admission/transformer.json")
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    h, m, s = re.search(r"Elapsed time: (\d+):(\d+):([\d.]+)", done.stderr).groups()
    ran = 3600 * int(h) + 60 * int(m) + float(s)  # Snakemake's own clock: from reading the workflow to the end
    assert ran > 1 and wall - ran < 20, (wall, ran)

@pytest.mark.slow
def test_whole_dag_with_an_added_a_diverging_and_a_crashing_architecture(workdir, shared_data):
    study = {
        **MICRO_STUDY,
        "archs": [
            "transformer",
            {"name": "memnls", "hparams": {"ffn_mult": 5}},
            {"name": "gru", "build": "examples.gru:build"},  # the README's worked example
            {"name": "diverging", "build": "tests.faulty_archs:build", "hparams": {"fail_at": 15}},
            {"name": "crashing", "build": "tests.faulty_archs:build", "hparams": {"fail_at": 15, "failure": "raise"}},
        ],
        "seeds": [0, 1],
        "shape": {"mode": "matched", "reference": "transformer"},
    }
    write_config(workdir, {"study": "micro", "studies": {"micro": study}})
    done = snakemake(workdir, "--cores", "2", "reports/collapse.html")
    assert done.returncode == 0, done.stderr[-3000:]

    runs = pd.read_csv(workdir / "results" / "micro" / "runs.csv")
    assert len(runs) == 10
    status = dict(zip(runs.arch + "/" + runs.seed.astype(str), runs.status))
    assert status["diverging/0"] == status["diverging/1"] == "diverged"  # recorded, not hidden
    assert status["crashing/0"] == status["crashing/1"] == "failed"
    assert {status[f"{a}/{s}"] for a in ("transformer", "memnls", "gru") for s in (0, 1)} == {"completed"}
    assert (runs.deviation.abs() <= 0.01).all()  # every run, the failing ones too, was built at the budget
    html = (workdir / "reports" / "collapse.html").read_text()
    assert html == (workdir / "reports" / "micro" / "collapse.html").read_text()
    not_completed = html[html.index('<section id="not-completed">'):html.index('<section id="trajectories">')]
    assert not_completed.count("<td>diverging</td>") == not_completed.count("<td>crashing</td>") == 2
    assert "injected failure" in not_completed and "gru" in html
    again = snakemake(workdir, "-n", "--cores", "1", "reports/collapse.html")
    assert "Nothing to be done" in again.stdout + again.stderr

    # the figures are registered for Snakemake's own report, with their captions
    made = snakemake(workdir, "--report", "reports/report.html")
    assert made.returncode == 0, made.stderr[-3000:]
    page = (workdir / "reports" / "report.html").read_text()
    for name in ("trajectories", "distributions", "collapse_rate", "pairs", "grad_norm"):
        assert (workdir / "reports" / "micro" / "figures" / f"{name}.png").is_file()
        assert f"{name}.png" in page
    assert "Share of trained seeds with a collapse or a divergence" in page


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_workflow_resumes_from_its_checkpoint(workdir, tmp_path, shared_data, signum):
    study = {**MICRO_STUDY, "archs": ["transformer"],
             "recipe": {**MICRO_STUDY["recipe"], "steps": 400, "checkpoint_every": 10}}
    write_config(workdir, {"study": "micro", "studies": {"micro": study}})
    checkpoint = workdir / "results" / "micro" / ".state" / "transformer" / "base" / "seed0" / "checkpoint.safetensors"
    run = workdir / "results" / "micro" / "transformer" / "base" / "seed0"
    target = str(run.relative_to(workdir) / "run.json")

    # a whole process group, as a crash, a scheduler or a Ctrl-C in a terminal would signal it
    proc = subprocess.Popen([*SNAKEMAKE, "--cores", "1", target], cwd=workdir,
                            env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signum)
    assert proc.wait(timeout=120) != 0  # SIGTERM: the job checkpoints its step and ends unfinished
    assert checkpoint.exists(), "no checkpoint before the kill"
    assert not (run / "run.json").exists(), "the run finished before the kill"
    if signum == signal.SIGTERM:
        log = (workdir / "logs" / "micro" / "transformer" / "base" / "seed0" / "train.log").read_text()
        assert "run interrupted by SIGTERM at step" in log and "(not failed)" in log

    assert snakemake(workdir, "--unlock").returncode == 0
    done = snakemake(workdir, "--cores", "1", target)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (workdir / "logs" / "micro" / "transformer" / "base" / "seed0" / "train.log").read_text()
    assert "resumed from" in log

    spec = run_spec(resolve(micro_config(study))["micro"], "transformer", "base", 0)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    straight = subprocess.run([sys.executable, "-m", "harness", "train", "--spec", str(tmp_path / "spec.json"),
                               "--out", str(tmp_path / "straight"), "--state", str(tmp_path / "state2")],
                              cwd=REPO, env=env(), capture_output=True, timeout=300)
    assert straight.returncode == 0
    resumed = pd.read_csv(run / "metrics.csv").drop(columns="wall_time")
    pd.testing.assert_frame_equal(resumed, pd.read_csv(tmp_path / "straight" / "metrics.csv").drop(columns="wall_time"))
