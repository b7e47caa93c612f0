"""Where a sweep's time goes, stage by stage, as the harness ran it before and as it runs it now.

Runs one study through the real workflow once per mode, each in a fresh copy of it, side by side:
    before    every job in its own process (`--config worker=false`), Snakemake's ILP scheduler
              and its default job rate limit (100/1s: a scheduler wake-up every second)
    wakeups   as shipped (jobs forked from harness.worker, greedy scheduler), but a wake-up every second
    after     as shipped: profiles/default (greedy scheduler, a wake-up a minute) and the worker
Each job's log ends with its `stage seconds` line
(harness.timing); a training run also keeps them in run.json. The table sums them over the jobs:

    startup      interpreter and imports of each job, and the hand-over to the worker
    data, build  corpus and batches; the model (its matched shape is counted on the meta device)
    steps        training steps (the batch, forward, backward, update; the probes' hooks at log steps)
    evaluation   validation and test losses
    probes       the diagnostics read at log steps
    checkpoints  resume checkpoints and weight snapshots
    outputs      metrics.csv, run.json, the weights
    quantization, detection, admission, aggregate, report: those jobs after their start-up
    snakemake    the rest: of cores x wall, Snakemake's own work and idle cores; of the CPU time (all
                 of Snakemake's process tree, from getrusage), Snakemake's work and the worker's imports

"useful" is steps + evaluation; the goal is at most 10% outside them. Wall shares depend on what else
the machine runs; CPU shares much less. It also
checks that both copies trained the same thing: metrics.csv equal run for run, wall_time aside.

    python benchmarks/sweep_cost.py [--study stability] [--archs transformer memnls] [--seeds 0] [--whole]
                                    [--cores 2] [--out /tmp/sweep_cost] [--modes before wakeups after]

With --cadence it also trains one run of the study in this process at its evaluation and probe cadence
and without them, which prices both; with --threads it times 4 runs as jobs x threads on the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd

from harness.timing import read_stage_line

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "profiles", "examples")
# each mode's --config values and Snakemake options, over profiles/default (module docstring)
MODES = {"before": (["worker=false"], ["--scheduler", "ilp", "--max-jobs-per-timespan", "100/1s"]),
         "wakeups": (["worker=true"], ["--max-jobs-per-timespan", "100/1s"]),
         "after": (["worker=true"], [])}
STAGES = ("startup", "data", "build", "steps", "evaluation", "probes", "checkpoints", "outputs", "quantization",
          "detection", "admission", "look", "aggregate", "report")
USEFUL = ("steps", "evaluation")


def stage_lines(logs: Path) -> dict[str, list[dict[str, float]]]:
    """The last stage line of each clock ("wall", "cpu": harness.timing.read_stage_line) of every job log
    that has them, by clock."""
    texts = [log.read_text(errors="replace") for log in logs.rglob("*.log")]
    found = {clock: [read_stage_line(text, clock) for text in texts] for clock in ("wall", "cpu")}
    return {clock: [line for line in lines if line is not None] for clock, lines in found.items()}


def summed(lines: list[dict[str, float]]) -> dict[str, float]:
    total = defaultdict(float)
    for line in lines:
        for stage, s in line.items():
            total[stage] += s
    return dict(total)


def run_mode(out: Path, mode: str, args: argparse.Namespace) -> dict:
    """One fresh copy of the workflow, the study run to its report; seconds by stage."""
    work = out / mode
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, work / name)
    values, options = MODES[mode]
    subset = [] if args.whole else [f"archs=[{','.join(args.archs)}]", f"seeds=[{','.join(map(str, args.seeds))}]"]
    config = [f"study={args.study}", *subset, *values]
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), *options, *args.snakemake_args.split(),
           "reports/collapse.html", "--config", *config]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # Snakemake, its jobs, the worker and its children
    if done.returncode != 0:
        sys.exit(f"{mode}: snakemake failed\n{done.stderr[-3000:]}")
    lines = stage_lines(work / "logs")
    seconds, cpu = summed(lines["wall"]), summed(lines["cpu"])
    total_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    seconds["snakemake"] = args.cores * wall - sum(seconds.values())  # and idle cores
    cpu["snakemake"] = total_cpu - sum(cpu.values())  # and the worker's imports
    runs = sorted((work / "results").glob("*/*/*/seed*/metrics.csv"))
    return {"wall": wall, "seconds": seconds, "cpu": cpu, "total_cpu": total_cpu,
            "jobs": len(lines["wall"]), "runs": runs, "work": work}


def same_runs(a: list[Path], b: list[Path], root_a: Path, root_b: Path) -> tuple[int, int]:
    """How many runs have equal metrics.csv (wall_time aside), of how many."""
    rel_b = {p.relative_to(root_b): p for p in b}
    equal = 0
    for p in a:
        other = rel_b.get(p.relative_to(root_a))
        if other is not None and pd.read_csv(p).drop(columns="wall_time").equals(
                pd.read_csv(other).drop(columns="wall_time")):
            equal += 1
    return equal, max(len(a), len(b))


def table(results: dict[str, dict], cores: int) -> str:
    """Wall seconds (share of cores x wall) and CPU seconds (share of all CPU) by stage, per mode."""
    lines = [f"{'':<13}" + "".join(f"{name:^38}" for name in results),
             f"{'stage':<13}" + f"{'wall s':>10}{'share':>8}{'cpu s':>12}{'share':>8}" * len(results)]
    for stage in (*STAGES, "snakemake"):
        if any(stage in r["seconds"] for r in results.values()):
            row = f"{stage:<13}"
            for r in results.values():
                s, c = r["seconds"].get(stage, 0.0), r["cpu"].get(stage, 0.0)
                row += f"{s:>10.1f}{100 * s / (cores * r['wall']):>7.1f}%{c:>12.1f}{100 * c / r['total_cpu']:>7.1f}%"
            lines.append(row)
    lines.append(f"{'total':<13}" + "".join(f"{cores * r['wall']:>10.1f}{'':>8}{r['total_cpu']:>12.1f}{'':>8}"
                                            for r in results.values()))
    lines.append(f"{'wall':<13}" + "".join(f"{r['wall']:>10.1f}{'':>28}" for r in results.values()))
    for name, r in results.items():
        wall = 1 - sum(r["seconds"].get(s, 0.0) for s in USEFUL) / (cores * r["wall"])
        cpu = 1 - sum(r["cpu"].get(s, 0.0) for s in USEFUL) / r["total_cpu"]
        lines.append(f"{name}: outside training steps and evaluations {100 * wall:.1f}% of cores x wall, "
                     f"{100 * cpu:.1f}% of CPU time")
    return "\n".join(lines)


def shipped_study(name: str) -> dict:
    """A study of the shipped config/config.yaml, resolved as the workflow resolves it."""
    import yaml
    from snakemake.utils import validate

    from harness.study import resolve

    config = {**yaml.safe_load((REPO / "config" / "config.yaml").read_text()), "study": name}
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))  # fills the defaults
    return resolve(config)[name]


def cadence(args: argparse.Namespace, out: Path) -> str:
    """One run of the study trained here at its cadence, then without evaluations, then without probes."""
    from harness.run import execute
    from harness.study import run_spec

    study = shipped_study(args.study)
    variant = next(v for v in study["variants"] if "qk_norm=on" not in v)  # the sweep's first variant
    spec = run_spec(study, args.archs[0], variant, args.seeds[0])
    spec.pop("snapshots", None)
    steps = spec["recipe"]["steps"]
    settings = {"as configured": {}, "evaluation at the end only": {"eval_every": steps},
                "probes at the end only": {"log_every": steps}}
    lines = [f"cadence of {args.archs[0]} {variant} seed {args.seeds[0]} ({steps} steps, eval_every "
             f"{spec['recipe']['eval_every']}, log_every {spec['recipe']['log_every']}), seconds in this process:"]
    for name, change in settings.items():
        folder = out / "cadence" / name.replace(" ", "-")
        shutil.rmtree(folder, ignore_errors=True)
        execute({**spec, "recipe": {**spec["recipe"], **change}}, folder / "run", state_dir=folder / "state")
        s = json.loads((folder / "run" / "run.json").read_text())["stage_seconds"]
        lines.append(f"  {name:<28} steps {s['steps']:6.2f}  evaluation {s['evaluation']:5.2f}  "
                     f"probes {s.get('probes', 0):5.2f}  total {sum(v for k, v in s.items() if k != 'startup'):6.2f}")
    return "\n".join(lines)


def threads(args: argparse.Namespace, out: Path) -> str:
    """4 training runs of the study as jobs x threads on ``args.cores`` cores: wall seconds."""
    from concurrent.futures import ThreadPoolExecutor

    from harness.study import run_spec

    study = shipped_study(args.study)
    variants = [v for v in study["variants"] if "qk_norm=on" not in v][:4]
    lines = [f"4 runs of {args.archs[0]} ({', '.join(variants)}), wall seconds:"]
    for jobs, n_threads in ((1, 1), (1, args.cores), (args.cores, 1), (args.cores, args.cores)):
        folder = out / "threads" / f"{jobs}x{n_threads}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        specs = []
        for i, variant in enumerate(variants):
            spec = run_spec(study, args.archs[0], variant, args.seeds[0])
            spec.pop("snapshots", None)
            (folder / f"{i}.json").write_text(json.dumps(spec))
            specs.append(folder / f"{i}.json")

        def train(i: int) -> None:
            subprocess.run([sys.executable, "-m", "harness", "train", "--spec", str(specs[i]), "--out",
                            str(folder / f"run{i}"), "--threads", str(n_threads)], check=True,
                           capture_output=True, env={k: v for k, v in os.environ.items() if k != "HARNESS_WORKER"})

        t0 = time.perf_counter()
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(train, range(len(specs))))
        lines.append(f"  {jobs} job(s) x {n_threads} thread(s): {time.perf_counter() - t0:6.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="stability")
    parser.add_argument("--archs", nargs="+", default=["transformer", "memnls"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--whole", action="store_true", help="the whole study: its own archs and seeds")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", default="/tmp/sweep_cost")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=["before", "after"])
    parser.add_argument("--snakemake-args", default="", help="more Snakemake options for every mode")
    parser.add_argument("--cadence", action="store_true", help="also price the evaluation and probe cadence")
    parser.add_argument("--threads", action="store_true", help="also time jobs x threads")
    args = parser.parse_args()
    if not os.environ.get("HARNESS_DATA_DIR"):
        print("note: HARNESS_DATA_DIR unset: the corpus is downloaded or read from the cache", file=sys.stderr)
    out = Path(args.out)
    results = {}
    for mode in args.modes:
        results[mode] = run_mode(out, mode, args)
        r = results[mode]
        print(f"{mode}: {len(r['runs'])} runs, {r['jobs']} jobs with a stage line, {r['wall']:.1f} s wall", flush=True)
    print(f"\n{args.study}, " + ("as configured" if args.whole else
                                  f"archs {' '.join(args.archs)}, seeds {' '.join(map(str, args.seeds))}") + ", "
          f"--cores {args.cores}; seconds summed over the jobs, share of cores x wall:")
    print(table(results, args.cores))
    first, *others = results
    for name in others:
        a, b = results[first], results[name]
        equal, total = same_runs(a["runs"], b["runs"], a["work"], b["work"])
        print(f"{first} -> {name}: metrics.csv equal run for run (wall_time aside): {equal} of {total}; "
              f"wall {a['wall']:.1f} s -> {b['wall']:.1f} s ({a['wall'] / b['wall']:.2f}x)")
    if args.cadence:
        print("\n" + cadence(args, out))
    if args.threads:
        print("\n" + threads(args, out))


if __name__ == "__main__":
    main()
