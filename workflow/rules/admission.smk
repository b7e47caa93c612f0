# The admission checks (harness/admission.py), at the study's shape, before any training job. One job
# per architecture writes its record only when every check passed, else ends with one line per
# failed property; every training job of the architecture takes that record as input, so a failing
# check starts none of them while the other architectures go on. Verdicts are cached by their key (the
# builder's source hash, the hyperparameters and the shape: harness.study.admission_spec's `checked`)
# in .admission/cache/{checked}.json. The study-wide job, first by priority, checks every
# architecture in one process (PyTorch loaded once), so the per-architecture jobs find their verdicts
# there without loading it; the aggregate takes its output, named after the study's key, as input.
# Training jobs take the record as ancient() input: a check run again gates them, but never by itself
# retrains a finished run.


rule admission_study:
    output:
        "results/{study}/.admission/.study-{checked}.json",
    log:
        "logs/{study}/admission-{checked}.log",
    priority: 200
    threads: 1
    resources:
        gpu=lambda wildcards: int(STUDIES[wildcards.study]["gpu"]),
    params:
        spec=admission_study_json,
        cache=lambda wildcards: f"{admission_dir(wildcards.study)}/cache",
    shell:
        "python -m harness check --spec {params.spec:q} --cache {params.cache} --out {output}"
        " --device auto --threads {threads} > {log} 2>&1"


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
        cache=lambda wildcards: f"{admission_dir(wildcards.study)}/cache",
    shell:
        "python -m harness check --spec {params.spec:q} --cache {params.cache} --out {output}"
        " --device auto --threads {threads} > {log}"
