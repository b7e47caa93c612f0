"""`harness status [STUDY]`: what is done, running, failed and left of a study, from its files alone.

Run from the workflow's folder (the one holding config/config.yaml), during or after a study:
- the planned runs come from the config, resolved as the workflow resolves it (harness.study), for
  the study folder asked for (an override folder such as tiny+seeds=0+steps=300 is read back into
  its overrides);
- a run is done (completed or diverged) or failed by its results/{study}/{arch}/{variant}/seed{seed}/run.json;
- a run without run.json but with a log or a resume checkpoint (results/{study}/.state/) is in
  progress: running while its log has been written in the last STALE_S seconds, else stopped; its
  steps come from the last progress line of logs/{study}/{arch}/{variant}/seed{seed}/train.log (harness.progress),
  else from its checkpoint's metadata;
- the time left is rough: the seconds per step of the runs so far times the steps left, over the
  number of jobs running at once.
On a SLURM cluster (profiles/slurm) each run also shows its SLURM job: a finished run's from its
run.json, a started run's from its run lock (harness.runlock), a submitted run's from Snakemake's
marker of the job (.snakemake/incomplete/). One `squeue` call per `harness status`, and only when a
run has a job that may still be live, says which of those jobs are pending or running: a run whose
job is pending, or running an earlier run of its group, is `queued`.
No torch here unless a checkpoint has to be read.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from harness.contracts import BASE_VARIANT
from harness.progress import duration, last_progress
from harness.runlock import holder_of

STALE_S = 120  # a log untouched this long belongs to a job that is no longer running
CONFIG = Path("config") / "config.yaml"
SCHEMA = Path("workflow") / "schemas" / "config.schema.yaml"
MARKERS = Path(".snakemake") / "incomplete"  # Snakemake's record of the jobs it started (file persistence)
WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED")


@dataclass
class RunState:
    arch: str
    variant: str
    seed: int
    state: str  # completed, diverged, failed, running, stopped, queued, left
    step: int | None = None
    total: int | None = None
    wall_s: float | None = None
    note: str = ""
    job: str | None = None  # its SLURM job id, where known


@dataclass
class StudyState:
    name: str
    runs: list[RunState] = field(default_factory=list)
    planned: bool = True  # False: the config does not describe this folder; runs are those found on disk
    note: str = ""

    def count(self, *states: str) -> int:
        return sum(r.state in states for r in self.runs)


def load_studies(root: Path) -> tuple[dict[str, dict], dict[str, Any]]:
    """The resolved studies of root/config/config.yaml (as the workflow resolves them) and the config."""
    from snakemake.utils import validate

    from harness.study import check_config, coerce_overrides, resolve

    config_path, schema = root / CONFIG, root / SCHEMA
    if not config_path.is_file() or not schema.is_file():
        raise FileNotFoundError(f"{root.resolve()}: no {CONFIG} and {SCHEMA} here; run `harness status` from "
                                f"the workflow's folder (the repository root)")
    if str(root.resolve()) not in sys.path:  # architectures named by dotted path, as the workflow imports them
        sys.path.insert(0, str(root.resolve()))
    config = coerce_overrides(yaml.safe_load(config_path.read_text()) or {})
    check_config(config, schema)
    validate(config, str(schema))
    return resolve(config), config


def _parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    return seeds


def plan_of(folder: str, root: Path, studies: dict[str, dict], config: dict[str, Any]) -> dict | None:
    """The resolved study whose results live in results/FOLDER: a study of the config, or one of its
    studies under the overrides the folder is named after; None when the folder cannot be read back."""
    from harness.study import resolve

    if folder in studies:
        return studies[folder]
    base, *parts = folder.split("+")
    if base not in config["studies"]:
        return None
    overrides: dict[str, Any] = {}
    try:
        for part in parts:
            key, _, text = part.partition("=")
            if "@" in text:  # a value too long for a folder name, named by its hash
                return None
            if key == "seeds":
                overrides[key] = _parse_seeds(text)
            elif key == "steps":
                overrides[key] = int(text)
            elif key == "archs":
                names = {(a if isinstance(a, str) else a["name"]) for a in config["studies"][base]["archs"]}
                overrides[key] = [a if a in names or "." not in a else ":".join(a.rsplit(".", 1))
                                  for a in text.split(",")]
            else:
                return None
        resolved = resolve({**config, **overrides, "study": base})
    except (ValueError, KeyError):
        return None
    return resolved.get(folder)


def _checkpoint_step(path: Path) -> int | None:
    from harness.checkpoint import checkpoint_meta  # torch: only for a run that wrote no progress line

    try:
        return int(checkpoint_meta(path)["step"])
    except Exception:
        return None


def submitted(root: Path) -> dict[str, str]:
    """The SLURM job id of each output file whose job Snakemake submitted and has not seen end: its
    markers .snakemake/incomplete/<urlsafe base64 of the path> hold {"external_jobid": ...} (a name
    too long for the file system is split into folders, all but the last prefixed '@')."""
    jobs = {}
    folder = root / MARKERS
    for marker in folder.rglob("*") if folder.is_dir() else ():
        if not marker.is_file():
            continue
        try:
            encoded = "".join(part.removeprefix("@") for part in marker.relative_to(folder).parts)
            job = json.loads(marker.read_text()).get("external_jobid")
            path = base64.urlsafe_b64decode(encoded).decode()
        except (ValueError, OSError, AttributeError):
            continue  # not a marker of Snakemake's
        if job:
            jobs[path] = str(job)
    return jobs


def scheduler_states(jobs: set[str]) -> dict[str, str]:
    """The SLURM state of each of the user's jobs that the controller still lists, by id: one `squeue`
    call, none without jobs to ask about or without squeue."""
    if not jobs or shutil.which("squeue") is None:
        return {}
    try:
        done = subprocess.run(["squeue", "--me", "--states=all", "--noheader", "--format=%i|%T"],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return {}
    return dict(line.split("|", 1) for line in done.stdout.split() if "|" in line) if done.returncode == 0 else {}


def run_state(root: Path, study: str, arch: str, variant: str, seed: int, total: int | None, now: float,
              jobs: dict[str, str] | None = None) -> RunState:
    """One run's state from its files; ``jobs``: the SLURM jobs Snakemake submitted, by output file."""
    run_dir = root / "results" / study / arch / variant / f"seed{seed}"
    manifest = run_dir / "run.json"
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            return RunState(arch, variant, seed, "failed", note="run.json unreadable")
        state = m.get("status") if m.get("status") in ("completed", "diverged", "failed") else "failed"
        return RunState(arch, variant, seed, state, m.get("steps_done"), (m.get("recipe") or {}).get("steps", total),
                        m.get("wall_time_s"), (m.get("reason") or "") if state != "completed" else "",
                        m.get("slurm_job_id"))
    log = root / "logs" / study / arch / variant / f"seed{seed}" / "train.log"
    state_dir = root / "results" / study / ".state" / arch / variant / f"seed{seed}"
    ckpt = state_dir / "checkpoint.safetensors"
    # the job Snakemake submitted it in (and has not seen end), else the last that trained it
    job = (jobs or {}).get(str(manifest.relative_to(root))) or (holder_of(state_dir) or {}).get("slurm_job_id")
    if not log.is_file() and not ckpt.is_file():
        return RunState(arch, variant, seed, "left", total=total, job=job)
    progress = last_progress(log.read_text(errors="replace")) if log.is_file() else None
    step = progress["step"] if progress else (_checkpoint_step(ckpt) if ckpt.is_file() else None)
    touched = max(p.stat().st_mtime for p in (log, ckpt) if p.is_file())
    state = "running" if now - touched < STALE_S else "stopped"
    note = f"last written {duration(now - touched)} ago" + ("" if progress or step is None else ", from its checkpoint")
    return RunState(arch, variant, seed, state, step, progress["total"] if progress else total,
                    progress["elapsed"] if progress else None, note, job)


def with_scheduler(run: RunState, states: dict[str, str]) -> RunState:
    """A run not finished whose SLURM job is pending, or running another run of its group, is queued;
    one whose job runs and whose log went quiet is running still."""
    job_state = states.get(run.job or "")
    if run.state not in ("running", "stopped", "left") or job_state is None:
        return run
    if job_state in WAITING:
        resumes = f", resumes from step {run.step}" if run.step else ""
        return replace(run, state="queued", note=f"SLURM job {run.job} {job_state.lower()}{resumes}")
    if job_state == "RUNNING" and run.state == "left":
        return replace(run, state="queued", note=f"SLURM job {run.job} is running an earlier run of its group")
    if job_state == "RUNNING" and run.state == "stopped":
        return replace(run, state="running")
    return run


def _runs(study: dict) -> list[tuple[str, str, int]]:
    """(arch, variant, seed) of every planned run (a study.json written before variants has one, base)."""
    from harness.study import runs

    return runs({"variants": {BASE_VARIANT: {}}, **study})


def study_state(root: Path, folder: str, studies: dict[str, dict] | None, config: dict | None,
                now: float | None = None, jobs: dict[str, str] | None = None) -> StudyState:
    now = time.time() if now is None else now
    plan = plan_of(folder, root, studies, config) if studies is not None else None
    results = root / "results" / folder
    if plan is None:  # the runs found on disk
        study = json.loads((results / "study.json").read_text()) if (results / "study.json").is_file() else None
        if study:
            runs = _runs(study)
            total = study["recipe"]["steps"]
        else:
            found = {(p.parent.parent.name, p.parent.name, int(p.name[4:]))
                     for base in (results, results / ".state", root / "logs" / folder)
                     for p in base.glob("*/*/seed*") if re.fullmatch(r"seed\d+", p.name)}
            runs, total = sorted(found), None
        state = StudyState(folder, planned=bool(study), note="" if study else
                           "not a study of config/config.yaml: its runs are those found on disk")
    else:
        runs = _runs(plan)
        total = plan["recipe"]["steps"]
        state = StudyState(folder)
    if (plan or study or {}).get("seed_budget"):
        runs, state.note = _budget(plan or study, results)
    state.runs = [run_state(root, folder, a, v, s, total, now, jobs) for a, v, s in runs]
    return state


def _budget(study: dict, results: Path) -> tuple[list[tuple[str, str, int]], str]:
    """The runs a seed budget has asked for so far, from its looks' plans on disk, and where it stands."""
    from harness.sequential import budget_runs, looks_key

    def plan_of_look(k: int) -> dict | None:
        path = results / "looks" / looks_key(study) / f"look{k}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    counts = study["seed_budget"]["looks"]
    made = [p for k in range(1, len(counts) + 1) if (p := plan_of_look(k)) is not None]
    last = made[-1] if made else None
    if last is not None and last["done"]:
        note = (f"seeds until decided: done at look {last['look']} of at most {len(counts)} ({last['seeds']} seeds): "
                f"{len(last['decided'])} questions decided, {len(last['open'])} open")
    else:
        k = len(made) + 1
        note = (f"seeds until decided: look {k} of at most {len(counts)} in progress ({counts[k - 1]} seeds)"
                + (f"; look {last['look']}: {len(last['decided'])} decided, {len(last['open'])} open, more seeds "
                   f"of {', '.join(last['need'])}" if last else ""))
    return budget_runs(study, plan_of_look), note


def time_left(study: StudyState) -> str | None:
    """A rough time left: seconds per step so far times the steps left, over the jobs running at once."""
    finished = [r for r in study.runs if r.state in ("completed", "diverged") and r.step and r.wall_s]
    measured = finished or [r for r in study.runs if r.state == "running" and r.step and r.wall_s]
    steps_left = sum((r.total or 0) - (r.step or 0) for r in study.runs if r.state in ("running", "stopped", "left"))
    if not steps_left:
        return None
    if not measured:
        return "unknown until a run has logged its progress"
    per_step = sum(r.wall_s for r in measured) / sum(r.step for r in measured)
    jobs = max(1, study.count("running"))
    source = f"{len(measured)} finished run{'s' * (len(measured) != 1)}" if finished else "the running jobs"
    return (f"about {duration(steps_left * per_step / jobs)} ({steps_left:,} steps left at {per_step:.3g} s per "
            f"step from {source}, {jobs} job{'s' * (jobs != 1)} at a time)")


def render(study: StudyState) -> str:
    done, failed = study.count("completed", "diverged"), study.count("failed")
    running, stopped, left = study.count("running"), study.count("stopped"), study.count("left")
    queued = study.count("queued")
    head = (f"{study.name}: {len(study.runs)} run{'s' * (len(study.runs) != 1)}"
            f"{' planned' if study.planned else ' found'}: {done} done, {failed} failed, {running} running, "
            + (f"{stopped} stopped, " if stopped else "") + (f"{queued} queued, " if queued else "") + f"{left} left")
    lines = [head] + ([f"  ({study.note})"] if study.note else [])
    if study.runs:
        names = [r.arch if r.variant == BASE_VARIANT else f"{r.arch} {r.variant}" for r in study.runs]
        width = max(len("arch"), *map(len, names))
        jobs = any(r.job for r in study.runs)  # a column of SLURM job ids, on a cluster
        lines.append(f"  {'arch':<{width}}  {'seed':>4}  {'state':<9}  {'steps':>13}  {'wall time':>10}  "
                     + ("slurm job  " if jobs else "") + "note")
        for name, r in zip(names, study.runs):
            steps = f"{r.step if r.step is not None else '?'}/{r.total if r.total is not None else '?'}"
            steps = "" if r.state == "left" else steps
            wall = duration(r.wall_s) if r.wall_s is not None else ""
            job = f"{r.job or '':>9}  " if jobs else ""
            lines.append(f"  {name:<{width}}  {r.seed:>4}  {r.state:<9}  {steps:>13}  {wall:>10}  {job}{r.note}".rstrip())
    if (left_text := time_left(study)) is not None:
        lines.append(f"  time left: {left_text}")
    return "\n".join(lines)


def status(root: Path, folder: str | None = None) -> str:
    """The status of study FOLDER, or of every study folder under results/ (the config's default study
    when there is none yet)."""
    root = Path(root)
    try:
        studies, config = load_studies(root)
    except FileNotFoundError:
        if not (root / "results").is_dir():
            raise
        studies, config = None, None
    if folder is None:
        results = root / "results"
        folders = sorted(p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if results.is_dir() else []
        if folders:
            names = [p.name for p in folders]
        elif studies is not None:
            from harness.study import default_study

            names = [default_study(studies, config)]
        else:
            names = []
    else:
        names = [folder]
        if studies is not None and plan_of(folder, root, studies, config) is None and not (root / "results" / folder).is_dir():
            known = sorted(studies) + sorted(p.name for p in (root / "results").glob("*") if p.is_dir()
                                             and not p.name.startswith("."))
            raise ValueError(f"no study {folder!r}: neither a study of {CONFIG} nor a folder of results/; "
                             f"known: {', '.join(dict.fromkeys(known))}")
    jobs = submitted(root)
    states = [study_state(root, name, studies, config, jobs=jobs) for name in names]
    live = {r.job for study in states for r in study.runs if r.job and r.state in ("running", "stopped", "left")}
    scheduler = scheduler_states(live)
    for study in states:
        study.runs = [with_scheduler(r, scheduler) for r in study.runs]
    return "\n\n".join(render(study) for study in states)
