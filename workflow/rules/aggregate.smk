localrules:
    aggregate,
    look_runs,


rule aggregate:
    input:
        runs=aggregate_runs,
        next_look=next_look,
        # a study's own claims file: editing it re-tests the claims
        claims=lambda wildcards: STUDIES[wildcards.study].get("claims") or [],
        # the study-wide admission check (it runs first, by priority; the runs' own gates are their inputs)
        admission=admission_study_output,
    output:
        expand("results/{{study}}/{name}", name=AGGREGATE_FILES),
    log:
        "logs/{study}/aggregate.log",
    params:
        study=study_json,
        runs=aggregate_run_args,
        out=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "python -m harness aggregate --study {params.study:q} --out {params.out} {params.runs} > {log} 2>&1"


# with a seed budget (look.smk): the runs its looks asked for, listed for the aggregate; temporary, so
# that it is remade whenever the aggregate runs (a job downstream of a checkpoint reruns for no reason
# of its own, snakemake PR #4124)
rule look_runs:
    input:
        lambda wildcards: run_files(wildcards.study, budget_run_dirs(wildcards.study)),
    output:
        temp("results/{study}/looks/{key}/runs.txt"),
    log:
        "logs/{study}/looks/{key}/runs.log",
    params:
        runs=lambda wildcards: budget_run_dirs(wildcards.study),
    shell:
        "printf '%s\\n' {params.runs:q} > {output} 2> {log}"
