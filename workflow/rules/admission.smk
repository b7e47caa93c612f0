# The admission check (harness/admission.py): once per architecture of a study, before any of its
# training jobs, at the study's shape. A failing check ends its job with one line per failed property
# and writes no record, so no training job of that architecture starts. The record is cached by the
# builder's source hash and the hyperparameters (harness.study.admission_spec's `checked`, a param:
# a new key runs the check again). Training jobs take it as ancient() input: a check run again gates
# them, but never by itself retrains a finished run.


rule admission:
    output:
        "results/{study}/.admission/{arch}.json",
    log:
        "logs/{study}/{arch}/admission.log",
    priority: 100
    threads: 1
    resources:
        gpu=lambda wildcards: int(STUDIES[wildcards.study]["gpu"]),
    params:
        spec=admission_json,
    shell:
        "python -m harness check --spec {params.spec:q} --out {output} --device auto --threads {threads} > {log}"
