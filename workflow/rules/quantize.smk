# The quantization stage: one job per run, after training. Every run gets a quantization.csv so the
# DAG stays uniform; one that did not complete, or a pipeline architecture, gets a note instead of numbers.
# quantize.bits: [] turns the stage off (the aggregate then asks for none of these files).


rule quantize:
    input:
        manifest="results/{study}/{arch}/{variant}/seed{seed}/run.json",
        weights="results/{study}/{arch}/{variant}/seed{seed}/model.safetensors",
    output:
        "results/{study}/{arch}/{variant}/seed{seed}/quantization.csv",
    log:
        "logs/{study}/{arch}/{variant}/seed{seed}/quantize.log",
    group:
        run_group
    threads: 1
    resources:
        gpu=lambda wildcards: int(STUDIES[wildcards.study]["gpu"]),
        runtime=quantize_minutes,
    params:
        bits=lambda wildcards: " ".join(
            map(str, STUDIES[wildcards.study]["quantize"]["bits"])
        ),
        keep=quantize_keep,
        snapshots=quantize_snapshots,
        run=lambda wildcards, input: os.path.dirname(input.manifest),
    shell:
        "python -m harness quantize {params.run} --bits {params.bits} {params.keep} {params.snapshots}"
        " --out {output} --threads {threads} > {log} 2>&1"
