localrules:
    aggregate,

rule aggregate:
    input:
        lambda wildcards: [
            f"{run}/{name}"
            for run in run_dirs(wildcards.study)
            for name in ("metrics.csv", "run.json", "events.csv")
            + (("quantization.csv",) if STUDIES[wildcards.study]["quantize"]["bits"] else ())
        ],
    output:
        expand("results/{{study}}/{name}", name=AGGREGATE_FILES),
    params:
        study=study_json,
        runs=lambda wildcards: run_dirs(wildcards.study),
        out=lambda wildcards, output: os.path.dirname(output[0]),
    log:
        "logs/{study}/aggregate.log",
    shell:
        "python -m harness aggregate --study {params.study:q} --out {params.out} {params.runs} > {log} 2>&1"
