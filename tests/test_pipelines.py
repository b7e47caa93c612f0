"""Pipelines are declared, not special-cased: a pipeline architecture the harness has never seen
(tests/toy_pipeline.py: one module, named in the config by dotted path) is wired, trained, aggregated
and reported through the same DAG as eam, with no edit to the harness or the workflow."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from harness.archs import info
from harness.study import resolve, run_spec
from tests.conftest import MICRO_STUDY, micro_config, workflow_copy, write_config
from tests.test_workflow import snakemake

TOY = {"name": "toy", "build": "tests.toy_pipeline:build", "hparams": {"source": "transformer"}}


def test_the_declaration_names_the_runner_and_the_input_runs():
    assert info("tests.toy_pipeline:build").pipeline.inputs == ("source",)
    assert info("eam").pipeline.runner == "harness.eam:run" and info("transformer").pipeline is None
    study = resolve(micro_config({**MICRO_STUDY, "archs": ["transformer", TOY]}))["micro"]
    assert run_spec(study, "toy", "base", 1)["inputs"] == {"source": "results/micro/transformer/base/seed1"}
    with pytest.raises(ValueError, match=r"'toy' needs hparams.source naming another architecture"):
        resolve(micro_config({**MICRO_STUDY, "archs": ["transformer", {**TOY, "hparams": {"source": "toy"}}]}))


@pytest.mark.slow
def test_a_second_pipeline_architecture_is_one_module_and_one_config_entry(tmp_path, shared_data):
    tmp_path = workflow_copy(tmp_path / "workflow")
    study = {**MICRO_STUDY, "archs": ["transformer", TOY], "seeds": [0, 1]}
    write_config(tmp_path, {"study": "micro", "studies": {"micro": study}})

    for seed in (0, 1):  # a toy run needs the same-seed source run, and only it
        plan = snakemake(tmp_path, "-n", "--cores", "1", f"results/micro/toy/base/seed{seed}/run.json")
        assert plan.returncode == 0, plan.stderr[-2000:]
        trains = re.findall(r"wildcards: study=micro, arch=(\w+), variant=base, seed=(\d)", plan.stdout + plan.stderr)
        assert sorted(trains) == sorted([("transformer", str(seed)), ("toy", str(seed))])

    done = snakemake(tmp_path, "--cores", "2", "reports/collapse.html")
    assert done.returncode == 0, done.stderr[-3000:]
    for seed in (0, 1):
        run = json.loads((tmp_path / "results" / "micro" / "toy" / "base" / f"seed{seed}" / "run.json").read_text())
        assert run["status"] == "completed", run["reason"]
        assert run["pipeline"]["source_arch"] == "transformer" and run["pipeline"]["source_seed"] == seed
        assert run["shape"]["knob"] is None and run["n_params"] == 256 * 256
    runs = pd.read_csv(tmp_path / "results" / "micro" / "runs.csv").set_index(["arch", "seed"])
    assert runs.loc[("toy", 0), "pipeline_source_arch"] == "transformer"
    html = (tmp_path / "reports" / "collapse.html").read_text()
    section = html[html.index('<section id="pipelines">'):html.index('<section id="params">')]
    assert "<th>bigram ppl</th>" in section and section.count("<td>toy</td>") == 2
