# Seeds until decided (a study with seeds: {start, step, max}; harness.sequential). Each look is a
# checkpoint: it judges the claims and sensitivity pairs on the seeds so far and writes which
# architectures and variants the next look trains. The aggregate's input walks the looks, so the DAG
# grows by one look at a time and stops when every question is decided or the budget is spent.


localrules:
    look,


def run_files(study, dirs):
    """The files of each run folder that the aggregate and the looks read."""
    quantized = bool(STUDIES[study]["quantize"]["bits"])
    names = ("metrics.csv", "run.json", "events.csv") + (
        ("quantization.csv",) if quantized else ()
    )
    return [f"{run}/{name}" for run in dirs for name in names]


def budget_run_dirs(study, upto=None):
    """The run folders of a study with a seed budget up to look ``upto`` (harness.sequential.budget_runs):
    reading a look's plan through its checkpoint makes Snakemake run that look first."""

    def plan_of_look(k):
        with open(checkpoints.look.get(study=study, look=k).output[0]) as f:
            return json.load(f)

    return [
        run_dir(study, *run) for run in budget_runs(STUDIES[study], plan_of_look, upto)
    ]


checkpoint look:
    input:
        lambda wildcards: run_files(
            wildcards.study, budget_run_dirs(wildcards.study, int(wildcards.look))
        ),
    output:
        "results/{study}/looks/look{look}.json",
    log:
        "logs/{study}/look{look}.log",
    params:
        study=study_json,
        runs=lambda wildcards: budget_run_dirs(wildcards.study, int(wildcards.look)),
    shell:
        "python -m harness look --study {params.study:q} --look {wildcards.look} --out {output}"
        " {params.runs} > {log} 2>&1"
