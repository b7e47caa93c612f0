"""Admit every architecture of a study, train every architecture x seed, detect collapse events, quantize, aggregate, report.

    snakemake --cores 1 reports/collapse.html                    # the study named in config/config.yaml
    snakemake --cores 1 reports/collapse.html --config study=seed-tinyshakespeare seeds=[0,1,2,3,4]

Overrides that change a study's results (archs, seeds, steps) give it a folder of its own,
results/<study>+<overrides>/ (e.g. tiny+seeds=0-4+steps=2000), so no run overwrites another's.
Rules only wire files to `python -m harness ...`; every computation lives in the harness package.
"""

from pathlib import Path

from snakemake.utils import min_version

import harness.worker

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/admission.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/detect.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/look.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


# One process imports torch and the harness once for all of this invocation's train, quantize and detect
# jobs, which fork from it (harness.worker, config `worker`); jobs on cluster nodes start their own.
WORKER = []


onstart:
    if workflow.local_exec and config["worker"]:
        WORKER.append(harness.worker.start(Path("logs/worker.log")))


onsuccess:
    end_invocation(WORKER)


onerror:
    end_invocation(WORKER)


rule all:
    default_target: True
    input:
        "reports/collapse.html",
