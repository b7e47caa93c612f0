import json
import os
import re
import shlex
import sys
import threading

from snakemake.utils import validate

import harness.worker
from harness.contracts import AGGREGATE_FILES
from harness.report.captions import captions
from harness.sequential import budget_runs, looks_key
from harness.study import (
    admission_dir,
    admission_spec,
    admission_specs,
    check_config,
    coerce_overrides,
    default_study,
    pipeline_runs,
    published_curves_file,
    resolve,
    run_dir,
    run_spec,
    runs,
)
from harness.text import UNITS

# Architectures named by dotted path ('pkg.module:function') are imported from the working directory.
sys.path.insert(0, os.getcwd())

# Command-line values are typed (`seeds=[0,1]` arrives as strings), then checked: a mistake stops
# here with one line, before any job runs; then the schema fills every default.
SCHEMA = os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")
try:
    check_config(coerce_overrides(config), SCHEMA)
    validate(config, SCHEMA)
    STUDIES = resolve(config)
except ValueError as e:
    sys.exit(f"error: {e}")
# the study whose report is reports/collapse.html, under the overrides (results/tiny+steps=50, ...)
DEFAULT_STUDY = default_study(STUDIES, config)

# config data_dir reaches the jobs (local or cluster) as HARNESS_DATA_DIR, so it is no run
# parameter: pointing at another copy of the same files reruns nothing.
if config["data_dir"]:
    os.environ.update(HARNESS_DATA_DIR=os.path.abspath(config["data_dir"]))


wildcard_constraints:
    study="|".join(re.escape(name) for name in STUDIES),
    arch=r"[A-Za-z0-9_-][A-Za-z0-9_.-]*",
    variant="|".join(
        sorted({re.escape(v) for s in STUDIES.values() for v in s["variants"]})
    ),
    seed=r"\d+",
    checked=r"[0-9a-f]{16}",
    look=r"\d+",
    key=r"[0-9a-f]{8}",


def run_dirs(study):
    """Every run folder of a study without a seed budget (a budget's: those its looks ask for, look.smk)."""
    return [run_dir(study, *run) for run in runs(STUDIES[study])]


def aggregate_runs(wildcards):
    """The aggregate's runs: their files, or with a seed budget the list look_runs makes (look.smk)."""
    if STUDIES[wildcards.study].get("seed_budget"):
        return f"{looks_dir(wildcards.study)}/runs.txt"
    return run_files(wildcards.study, run_dirs(wildcards.study))


def aggregate_run_args(wildcards, input):
    """The run folders on the aggregate's command line (a budget's from its list file: harness.cli's @FILE)."""
    if STUDIES[wildcards.study].get("seed_budget"):
        return f"@{input.runs}"
    return " ".join(shlex.quote(d) for d in run_dirs(wildcards.study))


def pipeline_input_files(wildcards):
    """A pipeline architecture trains on its inputs' same-seed runs (harness.study.pipeline_runs)."""
    study = STUDIES[wildcards.study]
    return [
        f"{folder}/{name}"
        for folder in pipeline_runs(
            study, wildcards.arch, wildcards.variant, int(wildcards.seed)
        ).values()
        for name in ("run.json", "model.safetensors")
    ]


def spec_json(wildcards):
    return json.dumps(
        run_spec(
            STUDIES[wildcards.study],
            wildcards.arch,
            wildcards.variant,
            int(wildcards.seed),
        ),
        sort_keys=True,
    )


def admission_json(wildcards):
    """The admission check's spec, with its cache key `checked` (harness.study.admission_spec)."""
    return json.dumps(
        admission_spec(STUDIES[wildcards.study], wildcards.arch), sort_keys=True
    )


def admission_study_json(wildcards):
    """The admission checks of every architecture of a study, for the study-wide job."""
    return json.dumps(admission_specs(STUDIES[wildcards.study]), sort_keys=True)


def admission_study_output(wildcards):
    """The study-wide admission job's output, named after the study's key: the aggregate's input, so
    the job is part of the DAG (and a new key runs it again)."""
    checked = admission_specs(STUDIES[wildcards.study])["checked"]
    return f"{admission_dir(wildcards.study)}/.study-{checked}.json"


def admission_record(wildcards):
    """Every training job waits for its architecture's admission record (ancient: it gates, never reruns)."""
    return ancient(f"{admission_dir(wildcards.study)}/{wildcards.arch}.json")


def study_json(wildcards):
    """The study as the aggregate and the looks get it, in the config's order (its sweep's order names the variants)."""
    return json.dumps(STUDIES[wildcards.study])


def figure_captions(wildcards):
    """The figures' captions for Snakemake's report (workflow/report/figure.rst), from harness.report.captions."""
    study = STUDIES[wildcards.study]
    return captions(
        UNITS.get(study["data"]["tokens"], "token"), bool(study.get("published_curves"))
    )


def quantize_keep(wildcards):
    keep = STUDIES[wildcards.study]["quantize"]["keep"]
    return "--keep " + " ".join(shlex.quote(k) for k in keep) if keep else ""


def quantize_snapshots(wildcards):
    """The folder of the run's weight snapshots, when the study keeps them (quantize.every_checkpoint)."""
    spec = run_spec(
        STUDIES[wildcards.study], wildcards.arch, wildcards.variant, int(wildcards.seed)
    )
    return (
        f"--snapshots {shlex.quote(spec['snapshots'])}" if spec.get("snapshots") else ""
    )


# On a cluster (profiles/slurm) a CPU study's runs are grouped: each run's train and quantize jobs
# form one connected component of group "runs", and the profile's group-components packs that many
# runs into one SLURM job, where they run one after another (the plugin runs a group's jobs with
# --jobs 1), so the job asks for the sum of their time limits. A GPU study's runs take hours each:
# one SLURM job per run. Local runs ignore groups.
def run_group(wildcards):
    return None if STUDIES[wildcards.study]["gpu"] else "runs"


def train_minutes(wildcards):
    """A training job's time limit on a cluster: 24 h for a GPU study's run; a CPU study's run 0.5 s
    per step (5x the tiny shape's 0.06-0.1 s) plus 5 minutes to start. A run the limit stops
    checkpoints and is resubmitted (profiles/slurm retries)."""
    study = STUDIES[wildcards.study]
    return 1440 if study["gpu"] else 5 + -(-study["recipe"]["steps"] // 120)


def quantize_minutes(wildcards):
    """A quantization job's time limit: 30 minutes for a GPU study's model, 5 for a CPU study's."""
    return 30 if STUDIES[wildcards.study]["gpu"] else 5


def end_invocation(worker):
    """When the jobs are done (onsuccess, onerror): stop the worker, and cancel the scheduler's pending
    wake-up. Snakemake arms a threading.Timer (not a daemon) after each scheduling pass, due after its job
    rate limit's period (profiles/default: 1 minute), and the interpreter waits for it before it exits.
    """
    harness.worker.stop(worker.pop() if worker else None)
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()
