"""Every command line the README, the Snakefile and the config files document, run as documented.

The commands are read from the documents themselves, so a new or changed command without a test here
fails `test_every_documented_command_is_tested`. Each runs through Snakemake's command line, as a
subprocess, in a temporary copy of the workflow (never in the working tree): a dry run (`--dry-run`
appended) of the shipped config, where a full run would take minutes to days, and for real on a micro
config, where it shows what a user sees: a default run and an override run side by side.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import MICRO_STUDY, REPO, workflow_copy, write_config

SNAKEFILE_DOC = re.compile(r'^"""(.*?)"""', re.S)
COMMAND = re.compile(r"^(snakemake|python|harness) ")


def _strip(line: str) -> str:
    """One command as written, without the shell comment after it."""
    return re.sub(r"\s+#.*$", "", line.strip())


def documented_commands() -> dict[str, set[str]]:
    """command line -> the files that document it (README code blocks and `inline` commands, the
    Snakefile's docstring, comments in config/config.yaml and profiles/*/config.yaml)."""
    found: dict[str, set[str]] = {}

    def add(line: str, where: str) -> None:
        for part in _strip(line).split(" && "):
            if COMMAND.match(part.strip()) and "..." not in part:  # not a placeholder like `python -m harness ...`
                found.setdefault(part.strip(), set()).add(where)

    readme = (REPO / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in block.splitlines():
            add(line, "README.md")
    for span in re.findall(r"`([^`\n]+)`", readme):
        if COMMAND.match(span):
            add(span, "README.md")
    for line in SNAKEFILE_DOC.match((REPO / "Snakefile").read_text()).group(1).splitlines():
        add(line, "Snakefile")
    for config in [REPO / "config" / "config.yaml", *sorted((REPO / "profiles").glob("*/config.yaml"))]:
        for line in config.read_text().splitlines():
            if line.lstrip().startswith("#"):
                add(line.lstrip().lstrip("#"), str(config.relative_to(REPO)))
    return found


MAIN = "snakemake --cores 1 reports/collapse.html"

# command -> (study folder it plans, training jobs), checked by a dry run of the shipped config
DRY_RUNS = {
    MAIN: ("tiny", 18),
    "snakemake --cores 2 reports/collapse.html": ("tiny", 18),
    "snakemake --cores 1 reports/collapse.html --config study=seed-tinyshakespeare": ("seed-tinyshakespeare", 10),
    # the study's own seeds: no override, the same folder
    "snakemake --cores 1 reports/collapse.html --config study=seed-tinyshakespeare seeds=[0,1,2,3,4]":
        ("seed-tinyshakespeare", 10),
    "snakemake --cores 1 reports/collapse.html --config study=seed-tinyshakespeare seeds=[0,1,2,3,4] steps=2000":
        ("seed-tinyshakespeare+steps=2000", 10),
    "snakemake --cores 1 reports/collapse.html --config seeds=[0,1,2,3,4] steps=2000": ("tiny+seeds=0-4+steps=2000", 30),
    "snakemake --cores 6 reports/collapse.html --config seeds=[0,1,2,3,4,5] steps=3000": ("tiny+seeds=0-5+steps=3000", 36),
    "snakemake --cores 1 reports/collapse.html --config archs=[transformer,memnls,diag_ssm]":
        ("tiny+archs=transformer,memnls,diag_ssm", 9),
    # data_dir says where the files are, not what is computed: the same folder
    "snakemake --cores 1 reports/collapse.html --config data_dir=/data/corpora": ("tiny", 18),
    "snakemake --cores 1 reports/collapse.html --config archs=[transformer] data_dir=/data/corpora":
        ("tiny+archs=transformer", 3),
    """snakemake --cores 1 reports/collapse.html --config 'archs=[transformer,"examples.gru:build"]'""":
        ("tiny+archs=transformer,examples.gru.build", 6),
    "snakemake --cores 4 reports/collapse.html --config study=seed-enwik8-70m": ("seed-enwik8-70m", 10),
    # 4 attention archs x 24 variants + memnls and diag_ssm x 12 (qk_norm=off alone), x 3 seeds
    "snakemake --cores 2 reports/collapse.html --config study=stability": ("stability", 360),
    "snakemake --cores 2 reports/collapse.html --config study=controls": ("controls", 75),  # 3 x 5 lrs x 5 seeds
    # a seed budget: its first look, 3 seeds of every variant (the later looks are planned as it goes)
    "snakemake --cores 2 reports/collapse.html --config study=stability 'seeds={start: 3, step: 2, max: 11}'":
        ("stability+seeds=3by2", 360),
    "snakemake --cores 2 reports/collapse.html --config study=stability 'seeds={start: 3, step: 2, max: 7}'":
        ("stability+seeds=3by2", 360),  # the budget the README's stability section measured
}
SLURM = "snakemake --workflow-profile profiles/slurm reports/collapse.html --config study=seed-enwik8-70m"
# the grouped sweep (README "On a SLURM cluster"): SLURM jobs of runs and of admission checks it submits
SLURM_GROUPED = {
    "snakemake --workflow-profile profiles/slurm reports/collapse.html --config study=stability": (24, 1),
    "snakemake --workflow-profile profiles/slurm reports/collapse.html --config study=stability "
    "--group-components runs=24 admission=1000": (12, 1),
}
# run for real on a micro config by test_a_default_and_an_override_run_keep_their_own_results
REAL_RUNS = {
    "snakemake --unlock",
    "snakemake --report reports/report.html",
    "python -m harness detect my_run/metrics.csv",
    "harness status",
}
OTHER = {
    'python -c "import harness.archs as a; print(a.available())"',
    "python -m harness detect harness/published/mnsm-enwik8-70m.csv",
    "harness --version",
    "harness status tiny+seeds=0-4+steps=2000",
    "harness check examples.gru:build",
    "harness check examples.gru:build --shape tiny d_model=128",
}
# run on logs of each format written by test_documented_log_formats
LOG_FORMATS = {
    "harness detect my_logs/tensorboard",
    "harness detect wandb_history.csv",
    "harness detect wandb_history.json --val-key eval/loss",
    "harness detect train_log.jsonl --key nll=train --key val_nll=val",
}
NOT_RUN = {  # installs, and commands other tests run
    'python -m harness quantize results/tiny/transformer/base/seed0 --bits 8 5 4 --keep "tok_emb.*" --out q.csv':
        "tests/test_quantize.py runs the quantize command on a run folder it trains",
    "python -m harness evaluate --model-dir my_card --arch transformer --data enwik8":
        "tests/test_evaluate.py runs it on a model folder it writes (enwik8 cannot be downloaded here)",
    'pip install -e ".[test]"': "installs",
    "pip install torch==2.13.0": "installs",
    "pip install snakemake-executor-plugin-slurm": "installs",
    "python -m pytest": "runs these tests",
    "python -m pytest -m 'not slow'": "runs these tests",
    "python benchmarks/collapse_calibration.py": "tests/test_collapse_calibration.py holds its numbers to the targets",
    "python benchmarks/verdict_calibration.py --budget 3,2,11":
        "tests/test_verdict_calibration.py measures the looks of one null and one effect on a few studies",
    "python benchmarks/verdict_calibration.py --out harness/calibration/verdicts.csv":
        "tests/test_verdict_calibration.py re-checks every case and the packaged table it writes (the full run: ~20 min)",
    "python benchmarks/sweep_cost.py": "tests/test_worker.py checks that a run through the worker equals the run in "
                                       "its own process and reads the stage seconds it sums (the benchmark: ~10 min)",
    "python benchmarks/sweep_cost.py --whole --modes before after":
        "as above, on the whole stability preset (the benchmark: ~2 h)",
}


def env() -> dict[str, str]:
    """The user's shell: this interpreter's `snakemake` and `python` first on PATH."""
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e['PATH']}"
    e["PYTHONPATH"] = str(REPO)
    return e


def run(workdir: Path, command: str, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """A documented command line, split as the shell splits it, run from the workflow copy's root."""
    return subprocess.run([*shlex.split(command), *extra], cwd=workdir, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", output, re.M)}


def planned_folders(output: str) -> set[str]:
    return set(re.findall(r"results/([^/\s]+)/", output))


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    """A fresh checkout of the workflow with the shipped config."""
    return workflow_copy(tmp_path_factory.mktemp("shipped") / "repo")


def test_every_documented_command_is_tested():
    documented = documented_commands()
    tested = {*DRY_RUNS, SLURM, *SLURM_GROUPED, *REAL_RUNS, *OTHER, *LOG_FORMATS, *NOT_RUN}
    assert set(documented) <= tested, {c: sorted(documented[c]) for c in set(documented) - tested}
    stale = tested - set(documented) - set(NOT_RUN)
    assert not stale, f"tested but no longer documented: {stale}"
    assert documented[MAIN] >= {"README.md", "Snakefile"}


@pytest.mark.parametrize("command", list(DRY_RUNS))
def test_documented_command_plans_its_study(shipped, command):
    folder, trains = DRY_RUNS[command]
    done = run(shipped, command, "--dry-run")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    counts = job_counts(done.stdout)
    assert counts["train"] == counts["detect"] == trains
    assert counts["aggregate"] == counts["report"] == counts["report_default"] == 1
    assert planned_folders(done.stdout) == {folder}
    # reports/collapse.html is the report of the effective study
    assert re.search(rf"input: reports/{re.escape(folder)}/collapse\.html", done.stdout)
    assert not (shipped / "results").exists()


def test_documented_slurm_command(shipped):
    """With the executor plugin it plans the study; without, it stops naming the missing executor
    (the README's `pip install snakemake-executor-plugin-slurm` first), and the rest of the profile plans."""
    done = run(shipped, SLURM, "--dry-run")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        assert done.returncode != 0 and "invalid choice: 'slurm'" in done.stderr
        done = run(shipped, SLURM, "--dry-run", "--executor", "local")
    assert done.returncode == 0, done.stderr[-2000:]
    assert job_counts(done.stdout)["train"] == 10 and planned_folders(done.stdout) == {"seed-enwik8-70m"}
    assert "Group job runs" not in done.stdout  # a GPU study: one SLURM job per run


@pytest.mark.parametrize("command", list(SLURM_GROUPED))
def test_documented_grouped_sweep_submits_as_few_jobs_as_it_says(shipped, command):
    """The stability preset's 360 runs (train and quantize) as groups of runs, and its 7 admission checks
    as one group; a GPU study's runs stay one to a job (test_documented_slurm_command: no group)."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("needs snakemake-executor-plugin-slurm (pip install -e \".[slurm]\"): groups exist only on a cluster")
    done = run(shipped, command, "--dry-run")
    assert done.returncode == 0, done.stderr[-2000:]
    groups = re.findall(r"Group job (\w+) \(", done.stdout)
    assert (groups.count("runs"), groups.count("admission")) == SLURM_GROUPED[command]
    assert job_counts(done.stdout)["train"] == 360


def test_documented_python_commands(shipped):
    done = run(REPO, 'python -c "import harness.archs as a; print(a.available())"')
    assert done.returncode == 0 and "transformer" in done.stdout and "memnls" in done.stdout
    done = run(REPO, "python -m harness detect harness/published/mnsm-enwik8-70m.csv")
    assert done.returncode == 0 and "arch=transformer: 4 events" in done.stdout
    assert re.search(r"collapse\s+val\s+27,500\s+27,100\s+33,500\s+27\.17", done.stdout)
    done = run(REPO, "harness --version")
    assert done.returncode == 0 and re.fullmatch(r"harness \d+\.\d+\.\d+\n", done.stdout)
    for command, params in (("harness check examples.gru:build", "124,606"),
                            ("harness check examples.gru:build --shape tiny d_model=128", "445,758")):
        done = run(shipped, command)  # the README's admission check of the worked example: every property passes
        assert done.returncode == 0, done.stderr[-2000:]
        lines = done.stdout.splitlines()
        assert lines[0].startswith(f"examples.gru:build: seq_len 128, vocab 256, {params} parameters"), done.stdout
        assert [line.split()[:2] for line in lines[1:-1]] == [[p, "passed"] for p in (
            "causality", "batch_independence", "output_contract", "init_loss", "determinism", "accounting")]
        assert lines[-1].startswith("admitted: examples.gru:build")
    done = run(shipped, "harness status tiny+seeds=0-4+steps=2000")  # before any run: all of it left
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("tiny+seeds=0-4+steps=2000: 30 runs planned: 0 done, 0 failed, 0 running, 30 left\n")


def test_documented_log_formats(tmp_path):
    """The README's `harness detect` lines on a TensorBoard folder, W&B histories and JSON lines, each
    holding the same curves with a known collapse under the names its line expects."""
    pytest.importorskip("tensorboard", reason="the TensorBoard reader is the optional group logs")
    from torch.utils.tensorboard import SummaryWriter

    from harness.synthetic import make_run
    from tests.test_logs import wandb_rows

    curves, _ = make_run("collapse", 2, n_evals=40, logs_per_eval=2, magnitude=3.0, onset=20)
    writer = SummaryWriter(str(tmp_path / "my_logs" / "tensorboard"))
    for row in curves.itertuples():
        writer.add_scalar(f"{row.split}/loss", row.value, int(row.step))
    writer.close()
    rows = wandb_rows(curves)
    pd.DataFrame(rows).to_csv(tmp_path / "wandb_history.csv")
    renamed = [{("eval/loss" if k == "val/loss" else "loss/other" if k == "train/loss" else k): v
                for k, v in r.items()} for r in rows]  # eval/loss is a default; said anyway, as documented
    (tmp_path / "wandb_history.json").write_text(json.dumps(renamed))
    with open(tmp_path / "train_log.jsonl", "w") as f:
        for step, group in curves.groupby("step", sort=True):
            names = {"train": "nll", "val": "val_nll"}
            f.write(json.dumps({"step": int(step), **{names[s]: v for s, v in zip(group.split, group.value)}}) + "\n")
    for command in sorted(LOG_FORMATS):
        done = run(tmp_path, command)
        assert done.returncode == 0, (command, done.stderr)
        assert re.search(r"^  collapse\s+val\s+10,500", done.stdout, re.M), (command, done.stdout)


def _micro_checkout(root: Path) -> Path:
    workdir = workflow_copy(root)
    study = {**MICRO_STUDY, "archs": ["transformer"], "seeds": [0, 1]}
    write_config(workdir, {"study": "micro", "archs": None, "seeds": None, "steps": None, "data_dir": None,
                           "studies": {"micro": study}})
    return workdir


@pytest.mark.slow
def test_a_default_and_an_override_run_keep_their_own_results(tmp_path, shared_data):
    """The README's main command, then an override, for real on a micro config: both result
    folders stay intact and reports/collapse.html is the report of the study last asked for."""
    workdir = _micro_checkout(tmp_path / "repo")
    done = run(workdir, MAIN)
    assert done.returncode == 0, done.stderr[-3000:]
    default = workdir / "results" / "micro" / "transformer" / "base" / "seed0"
    done = run(workdir, "harness status")
    assert done.returncode == 0 and done.stdout.startswith("micro: 2 runs planned: 2 done, 0 failed, 0 running, 0 left"), \
        done.stdout + done.stderr
    before = {name: (default / name).read_bytes() for name in ("run.json", "metrics.csv", "model.safetensors")}

    override = MAIN + " --config seeds=[0] steps=20"
    done = run(workdir, override)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = "micro+seeds=0+steps=20"
    assert sorted(p.name for p in (workdir / "results").iterdir() if not p.name.startswith(".")) == ["micro", folder]
    assert {name: (default / name).read_bytes() for name in before} == before  # untouched
    assert sorted(p.name for p in (workdir / "results" / "micro" / "transformer" / "base").iterdir()) == ["seed0", "seed1"]
    manifest = json.loads((workdir / "results" / folder / "transformer" / "base" / "seed0" / "run.json").read_text())
    assert manifest["study"] == folder and manifest["recipe"]["steps"] == 20 and manifest["status"] == "completed"
    assert json.loads(before["run.json"])["recipe"]["steps"] == 40
    study = json.loads((workdir / "results" / folder / "study.json").read_text())
    assert study["name"] == folder and study["base"] == "micro" and study["overrides"] == {"seeds": [0], "steps": 20}
    html = (workdir / "reports" / "collapse.html").read_text()
    assert html == (workdir / "reports" / folder / "collapse.html").read_text()
    assert f"<h1>{folder}: " in html and "(study micro with overrides seeds=[0] steps=20)" in html
    assert len(pd.read_csv(workdir / "results" / folder / "runs.csv")) == 1
    assert len(pd.read_csv(workdir / "results" / "micro" / "runs.csv")) == 2

    # the same override again: nothing to do; the default again: only its report is copied back
    again = run(workdir, override, "--dry-run")
    assert "Nothing to be done" in again.stdout + again.stderr
    back = run(workdir, MAIN, "--dry-run")
    assert job_counts(back.stdout) == {"report_default": 1, "total": 1}, back.stdout[-2000:]
    # data_dir names where the data is: the same study, nothing to rerun
    same = run(workdir, MAIN, "--config", f"data_dir={shared_data}", "--dry-run")
    assert job_counts(same.stdout) == {"report_default": 1, "total": 1}, same.stdout[-2000:]

    # Snakemake's own report, into reports/ (which git ignores)
    done = run(workdir, "snakemake --report reports/report.html")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trajectories.png" in (workdir / "reports" / "report.html").read_text()
    if (REPO / ".git").exists() and shutil.which("git"):
        ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "reports/report.html"])
        assert ignored.returncode == 0, "reports/report.html is not ignored by git"
    assert run(workdir, "snakemake --unlock").returncode == 0

    # detect on a run's own log, as the README shows for my_run/metrics.csv
    (workdir / "my_run").mkdir()
    shutil.copy(default / "metrics.csv", workdir / "my_run" / "metrics.csv")
    done = run(workdir, "python -m harness detect my_run/metrics.csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no events" or "onset" in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= 100


def test_readme_quotes_the_gru_example_as_it_is():
    """The worked example's size: its lines, and its parameter count in the `tiny` study."""
    import yaml
    from snakemake.utils import validate

    from harness.shape import for_spec
    from harness.study import coerce_overrides, default_study, resolve, run_spec
    from tests.conftest import SCHEMA

    readme = " ".join((REPO / "README.md").read_text().split())
    lines = len((REPO / "examples" / "gru.py").read_text().splitlines())
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["archs"] = ["transformer", "examples.gru:build"]
    validate(coerce_overrides(config), str(SCHEMA))
    studies = resolve(config)
    study = studies[default_study(studies, config)]
    gru, transformer = (for_spec(run_spec(study, a, "base", 0), 256) for a in ("gru", "transformer"))
    quoted = (f"a GRU language model, {lines} lines; in the `tiny` study the shape solver sets its `ffn_hidden` to "
              f"{gru.hparams['ffn_hidden']}, for {gru.n_params:,} parameters against the transformer's "
              f"{transformer.n_params:,})")
    assert quoted in readme
