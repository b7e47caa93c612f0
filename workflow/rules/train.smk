# One training run per (study, arch, variant, seed), once its architecture passed admission
# (admission.smk). The resume checkpoint lives in results/{study}/.state, outside the declared
# outputs, because Snakemake deletes declared outputs before a job runs.


rule train:
    input:
        upstream=pipeline_input_files,
        admission=admission_record,
    output:
        metrics="results/{study}/{arch}/{variant}/seed{seed}/metrics.csv",
        manifest="results/{study}/{arch}/{variant}/seed{seed}/run.json",
        weights="results/{study}/{arch}/{variant}/seed{seed}/model.safetensors",
    log:
        "logs/{study}/{arch}/{variant}/seed{seed}/train.log",
    group:
        run_group
    threads: 1
    resources:
        gpu=lambda wildcards: int(STUDIES[wildcards.study]["gpu"]),
        runtime=train_minutes,
    params:
        spec=spec_json,
        out=lambda wildcards, output: os.path.dirname(output.manifest),
        state="results/{study}/.state/{arch}/{variant}/seed{seed}",
    shell:
        "python -m harness train --spec {params.spec:q} --out {params.out} --state {params.state}"
        " --admission {input.admission} --threads {threads} > {log} 2>&1"
