# Seeds until decided (a study with seeds: {start, step, max}; harness.sequential). Each look is a
# checkpoint: it judges the claims and sensitivity pairs on the seeds so far and writes which
# architectures and variants the next look trains. look_runs (aggregate.smk) walks the looks, so the
# DAG grows by one look at a time and stops when every question is decided or the budget is spent; the
# aggregate reads the runs it lists.
#
# Snakemake never reruns a job whose inputs go through a checkpoint for a reason of its own (a changed
# input, params or mtime; snakemake PR #4124), so nothing downstream of the looks may have outputs
# that outlive them: look_runs's list is temporary (made whenever the aggregate runs), the plans sit in
# a folder named by the study (sequential.looks_key: a changed study starts its looks afresh), and the
# aggregate takes the next look a plan on disk asks for as a plain input (a plan reopened by a changed
# verdict rule goes on training).


localrules:
    look,


def run_files(study, dirs):
    """The files of each run folder that the aggregate and the looks read."""
    quantized = bool(STUDIES[study]["quantize"]["bits"])
    names = ("metrics.csv", "run.json", "events.csv") + (
        ("quantization.csv",) if quantized else ()
    )
    return [f"{run}/{name}" for run in dirs for name in names]


def looks_dir(study):
    return f"results/{study}/looks/{looks_key(STUDIES[study])}"


def budget_run_dirs(study, upto=None):
    """The run folders of a study with a seed budget up to look ``upto`` (harness.sequential.budget_runs):
    reading a look's plan through its checkpoint makes Snakemake run that look first."""

    def plan_of_look(k):
        key = looks_key(STUDIES[study])
        with open(checkpoints.look.get(study=study, key=key, look=k).output[0]) as f:
            return json.load(f)

    return [
        run_dir(study, *run) for run in budget_runs(STUDIES[study], plan_of_look, upto)
    ]


def next_look(wildcards):
    """The look that the plans on disk ask for next and that is not made yet, once look 1 is: a plain
    input of the aggregate, so a plan that reopened a question (a corrected verdict rule) goes on
    training instead of leaving the tables as they were."""
    study = STUDIES[wildcards.study]
    if not study.get("seed_budget"):
        return []
    for k in range(1, len(study["seed_budget"]["looks"]) + 1):
        path = f"{looks_dir(wildcards.study)}/look{k}.json"
        if not os.path.exists(path):
            return [path] if k > 1 else []
        with open(path) as f:
            if json.load(f)["done"]:
                return []
    return []


checkpoint look:
    input:
        lambda wildcards: run_files(
            wildcards.study, budget_run_dirs(wildcards.study, int(wildcards.look))
        ),
    output:
        "results/{study}/looks/{key}/look{look}.json",
    log:
        "logs/{study}/looks/{key}/look{look}.log",
    params:
        study=study_json,
        runs=lambda wildcards: budget_run_dirs(wildcards.study, int(wildcards.look)),
    shell:
        "python -m harness look --study {params.study:q} --look {wildcards.look} --out {output}"
        " {params.runs} > {log} 2>&1"
