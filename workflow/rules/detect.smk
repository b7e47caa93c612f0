localrules:
    detect,


rule detect:
    input:
        metrics="results/{study}/{arch}/{variant}/seed{seed}/metrics.csv",
        manifest="results/{study}/{arch}/{variant}/seed{seed}/run.json",
    output:
        "results/{study}/{arch}/{variant}/seed{seed}/events.csv",
    log:
        "logs/{study}/{arch}/{variant}/seed{seed}/detect.log",
    params:
        config=lambda wildcards: json.dumps(
            STUDIES[wildcards.study]["detect"], sort_keys=True
        ),
        run=lambda wildcards, input: os.path.dirname(input.manifest),
    shell:
        "python -m harness detect {params.run} --config {params.config:q} --out {output} > {log} 2>&1"
