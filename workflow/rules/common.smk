import json
import os
import re
import sys

from snakemake.utils import validate

from harness.study import check_config, coerce_overrides, default_study, resolve, run_dir, run_spec, teacher_of

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
    seed=r"\d+",


def run_dirs(study):
    s = STUDIES[study]
    return [run_dir(study, arch, seed) for arch in s["archs"] for seed in s["seeds"]]


def teacher_files(wildcards):
    """A pipeline architecture (eam) trains on its teacher's same-seed run."""
    teacher = teacher_of(STUDIES[wildcards.study], wildcards.arch)
    if teacher is None:
        return []
    folder = run_dir(wildcards.study, teacher, wildcards.seed)
    return [f"{folder}/run.json", f"{folder}/model.safetensors"]


def spec_json(wildcards):
    return json.dumps(run_spec(STUDIES[wildcards.study], wildcards.arch, int(wildcards.seed)), sort_keys=True)


def study_json(wildcards):
    return json.dumps(STUDIES[wildcards.study], sort_keys=True)
