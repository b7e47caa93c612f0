"""The workflow on a real SLURM cluster, through profiles/slurm and snakemake-executor-plugin-slurm.

The test brings up a single-node cluster from Debian's packages (munge, slurmctld, slurmd of
slurm-wlm 22.05) as plain background processes with a minimal slurm.conf under a temporary folder,
and runs the workflow with `--workflow-profile profiles/slurm`:
- a micro sweep of 12 runs goes to the cluster as 3 SLURM jobs (2 groups of 6 runs, the admission
  checks in 1; counted with scontrol by the plugin's run id, the jobs' name), each grouped job sized
  for runs one after another (1 CPU, the largest memory, the summed time limit); every run's results
  equal a local run's; `harness status`, called all along, shows runs queued and running with their
  SLURM job ids and calls squeue at most once per call;
- of two longer runs, one job is requeued mid-run (`scontrol requeue`: SIGTERM, it checkpoints) and
  one run's training process is SIGKILLed (a node failure); the first job restarts under its id, the
  second is resubmitted by the profile's retries, both resume from their checkpoints and end equal
  to uninterrupted local runs, and no run folder ever has two training processes.
Then it stops the daemons it started, by their PIDs, and removes the /etc/slurm/slurm.conf link.

It needs root, the Debian packages `slurmctld slurmd slurm-client munge`, the pip package
`snakemake-executor-plugin-slurm` and TinyShakespeare (HARNESS_DATA_DIR); without them it skips,
saying what is missing, unless HARNESS_REQUIRE_SLURM=1 (CI), where it fails instead.
Facts it relies on: no systemd, so each daemon runs in the foreground in its own session; the
plugin's job step drops SLURM_CONF before `srun`, so the config must also be at
/etc/slurm/slurm.conf; without accounting (no slurmdbd) job states come from squeue, which needs
finished jobs kept for a while (MinJobAge).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness import runlock
from harness.run import execute
from harness.study import resolve, run_spec
from harness.study import runs as planned

from tests.conftest import MICRO_STUDY, REPO, TINYSHAKESPEARE, micro_config, workflow_copy, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REQUIRED = os.environ.get("HARNESS_REQUIRE_SLURM") == "1"
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")  # where `srun` inside a job looks (SLURM_CONF is dropped)
PORTS = {"SlurmctldPort": 16817, "SlurmdPort": 16818}  # not the defaults: never a real cluster's
PROGRAMS = ("mungekey", "munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
INSTALL = ("apt-get install slurmctld slurmd slurm-client munge; "
           "pip install snakemake-executor-plugin-slurm==2.8.0")

PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
TRAIN = {**PROFILE["default-resources"], **PROFILE["set-resources"]["train"]}  # a training job's resources
# the sweep: 2 architectures x 6 seeds, 30 steps, 12 runs of a few seconds each, 6 to a SLURM job (the
# quantization stage off: the interrupted runs below take it)
SWEEP = {**MICRO_STUDY, "seeds": list(range(6)), "recipe": {**MICRO_STUDY["recipe"], "steps": 30},
         "quantize": {"bits": []}}
RUNS_PER_JOB = 6
# the profile's group sizes, with this many runs to a job (--group-components replaces the profile's list)
GROUP_SIZES = [f"runs={RUNS_PER_JOB}", *(g for g in PROFILE["group-components"] if not g.startswith("runs="))]
# interrupted runs: 2 transformer runs of 2500 steps (about 10 s each here), a checkpoint every 100
LONG = {**MICRO_STUDY, "archs": ["transformer"], "seeds": [0, 1],
        "recipe": {**MICRO_STUDY["recipe"], "steps": 2500, "checkpoint_every": 100}}


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None."""
    missing = [p for p in PROGRAMS if shutil.which(p, path=SEARCH_PATH) is None]
    if missing:
        return f"SLURM test: {', '.join(missing)} not installed ({INSTALL})"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return f"SLURM test: snakemake-executor-plugin-slurm not installed ({INSTALL})"
    if os.geteuid() != 0:
        return "SLURM test: slurmd must run as root"
    if TINYSHAKESPEARE is None:
        return "SLURM test: needs TinyShakespeare: set HARNESS_DATA_DIR (README, Tests)"
    if SYSTEM_CONF.exists():
        return f"SLURM test: {SYSTEM_CONF} exists (a real cluster's config?): not touching it"
    for port in PORTS.values():
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return f"SLURM test: port {port} is in use (another test cluster running?)"
    return None


def program(name: str) -> str:
    return shutil.which(name, path=SEARCH_PATH)


def slurm_conf(root: Path, host: str) -> str:
    """A minimal single-node cluster: no cgroups, no accounting, everything under root."""
    cpus = os.cpu_count() or 1
    return "\n".join([
        "ClusterName=harness-test",
        f"SlurmctldHost={host}(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        *(f"{key}={port}" for key, port in PORTS.items()),
        "AuthType=auth/munge",
        f"AuthInfo=socket={root}/munge/munge.socket.2",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log",
        f"SlurmdLogFile={root}/log/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU_Memory",
        "SchedulerType=sched/backfill",
        "ReturnToService=2",
        "MinJobAge=300",  # squeue must still list a finished job when the plugin asks
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "MpiDefault=none",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        # The node offers each CPU the memory the profile asks for per training job, so the profile's
        # requests reach sbatch unchanged and jobs pack by CPU; nothing enforces memory without
        # cgroups, and config_overrides keeps slurmd from draining a node that has less.
        "SlurmdParameters=config_overrides",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={cpus * TRAIN['mem_mb']} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def stop(processes: list[subprocess.Popen]) -> None:
    """TERM each daemon this test started (last started first), wait, then KILL: by PID only."""
    for proc in reversed(processes):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    for proc in reversed(processes):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def wait_for(condition, what: str, logs: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(logs.glob("*.log")))
            pytest.fail(f"SLURM test cluster: {what} not reached in {timeout:.0f} s\n{tails}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running single-node cluster; yields the environment its clients need (SLURM_CONF)."""
    # a link left by a killed earlier run points into a temporary folder that is gone
    if SYSTEM_CONF.is_symlink() and not SYSTEM_CONF.exists():
        SYSTEM_CONF.unlink()
    reason = unavailable()
    if reason:
        if REQUIRED:
            pytest.fail(f"{reason}; HARNESS_REQUIRE_SLURM=1")
        pytest.skip(reason)

    root = tmp_path_factory.mktemp("slurm")
    for name in ("munge", "state", "spool", "log"):
        (root / name).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, host))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    logs = root / "log"
    processes: list[subprocess.Popen] = []

    def start(*command: str) -> None:
        """A daemon in the foreground, in a session of its own (setsid), its output in logs/."""
        with open(logs / f"{Path(command[0]).name}.out.log", "w") as log:
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                              start_new_session=True, cwd=root))

    subprocess.run([program("mungekey"), "--create", f"--keyfile={root}/munge/munge.key"], check=True)
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SYSTEM_CONF.symlink_to(conf)
    try:
        # --force: munged refuses a socket under a folder that is not world-readable (pytest's are 0700)
        start(program("munged"), "--foreground", "--force", f"--key-file={root}/munge/munge.key",
              f"--socket={root}/munge/munge.socket.2", f"--pid-file={root}/munge/munged.pid",
              f"--seed-file={root}/munge/munged.seed", f"--log-file={logs}/munged.log")
        wait_for((root / "munge" / "munge.socket.2").exists, "munge socket", logs)
        start(program("slurmctld"), "-D", "-i", "-f", str(conf))
        start(program("slurmd"), "-D", "-f", str(conf))

        def idle() -> bool:
            done = subprocess.run([program("sinfo"), "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            return done.returncode == 0 and done.stdout.strip() == "idle"

        wait_for(idle, "an idle node", logs)
        yield env
    finally:
        stop(processes)
        if SYSTEM_CONF.is_symlink() and os.readlink(SYSTEM_CONF) == str(conf):
            SYSTEM_CONF.unlink()


def minutes(limit: str) -> int:
    """SLURM's time limit D-HH:MM:SS (or HH:MM:SS) in minutes."""
    days, _, clock = limit.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


def scontrol_jobs(env: dict[str, str]) -> dict[str, dict[str, str]]:
    """Every job the controller still knows (MinJobAge keeps finished ones), by id."""
    done = subprocess.run([program("scontrol"), "-o", "show", "job"], env=env, capture_output=True, text=True, check=True)
    jobs = {}
    for line in done.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


def snakemake(workdir: Path, env: dict[str, str], *args: str, slurm: bool = True) -> subprocess.Popen:
    """The workflow in ``workdir``: through profiles/slurm (no accounting here: job states from squeue,
    the first check after 2 s instead of the plugin's 40), or locally on 2 cores."""
    command = [sys.executable, "-m", "snakemake", *args]
    if slurm:
        command += ["--workflow-profile", "profiles/slurm", "--slurm-status-command", "squeue",
                    "--slurm-init-seconds-before-status-checks", "2"]
    else:
        command += ["--cores", "2"]
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output[-6000:]
    return output


def workflow(tmp_path: Path, name: str, study: dict) -> Path:
    workdir = workflow_copy(tmp_path / name)
    write_config(workdir, micro_config(study))
    return workdir


def client_env(cluster: dict[str, str]) -> dict[str, str]:
    return {**cluster, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{cluster['PATH']}", "PYTHONPATH": str(REPO)}


def run_folders(workdir: Path) -> dict[str, Path]:
    return {str(p.parent.relative_to(workdir / "results" / "micro")): p.parent
            for p in (workdir / "results" / "micro").glob("*/*/seed*/run.json")}


def table(path: Path) -> pd.DataFrame:
    """A run's table without its wall-clock column."""
    return pd.read_csv(path).drop(columns=["wall_time"], errors="ignore")


def slurm_run_id(output: str) -> str:
    """The plugin's run id: every SLURM job of one snakemake call carries it as its job name."""
    return re.search(r"SLURM run ID: (\S+)", output).group(1)


def harness_status(workdir: Path, env: dict[str, str]) -> list[dict[str, str]]:
    """The rows of `harness status micro`: arch, seed, state and SLURM job of each run."""
    done = subprocess.run([sys.executable, "-m", "harness", "status", "micro"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next((line for line in lines if line.lstrip().startswith("arch")), "")
    rows = []
    for line in lines[lines.index(header) + 1:] if header else []:
        if line.startswith("  time left"):
            break
        arch, seed, state, *_ = line.split()
        job = line[header.index("slurm job"):header.index("slurm job") + 9].strip() if "slurm job" in header else ""
        rows.append({"arch": arch, "seed": f"seed{seed}", "state": state, "job": job})
    return rows


def test_micro_sweep_of_12_runs_is_three_slurm_jobs_and_equals_a_local_run(cluster, tmp_path):
    env = client_env(cluster)
    grouped = workflow(tmp_path, "slurm", SWEEP)
    start = time.monotonic()
    on_cluster = snakemake(grouped, env, "reports/collapse.html", "--group-components", *GROUP_SIZES)
    # the reference, meanwhile: each run trained here, in this process, from the spec the workflow builds
    study = resolve(micro_config(SWEEP))["micro"]
    for arch, variant, seed in planned(study):
        run = Path(arch) / variant / f"seed{seed}"
        assert execute(run_spec(study, arch, variant, seed), tmp_path / "local" / run,
                       state_dir=tmp_path / "state" / run) == "completed"
    # `harness status` meanwhile, with a squeue that counts its calls before it runs the real one
    shim, calls = tmp_path / "bin", tmp_path / "squeue.calls"
    shim.mkdir()
    (shim / "squeue").write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {program("squeue")} "$@"\n')
    (shim / "squeue").chmod(0o755)
    status_env = {**env, "PATH": f"{shim}{os.pathsep}{env['PATH']}"}
    seen = set()
    while on_cluster.poll() is None:
        time.sleep(1)
        before = calls.read_text().count("\n") if calls.exists() else 0
        shown = harness_status(grouped, status_env)
        assert (calls.read_text().count("\n") if calls.exists() else 0) - before <= 1
        seen |= {(row["state"], bool(row["job"])) for row in shown}
    output = finish(on_cluster)
    wall = time.monotonic() - start
    # seen on the login node while the sweep ran: runs queued in a SLURM job, with its id, and running (a
    # run shows its job once it holds its run lock: test_requeued_and_killed_runs_... sees that)
    assert ("queued", True) in seen and "running" in {state for state, _ in seen}, seen
    assert (grouped / "reports" / "micro" / "collapse.html").stat().st_size > 0

    jobs = {i: j for i, j in scontrol_jobs(cluster).items() if j["JobName"] == slurm_run_id(output)}
    runs = run_folders(grouped)
    assert len(runs) == 12
    # the 12 runs' training jobs as 2 SLURM jobs, the admission checks as 1
    assert len(jobs) == 3, {i: (j["Comment"], j["JobState"], j["RunTime"]) for i, j in jobs.items()}
    groups = {i: j for i, j in jobs.items() if j["Comment"].startswith("rule_runs_")}
    assert len(groups) == 2 and all(j["JobState"] == "COMPLETED" for j in jobs.values()), jobs
    minutes_per_run = 5 + -(-SWEEP["recipe"]["steps"] // 120)  # workflow/rules/common.smk train_minutes
    for job in groups.values():
        # a grouped job runs its jobs one after another: one CPU, the largest memory, the summed time
        assert job["NumCPUs"] == "1" and job["MinMemoryNode"] == f"{TRAIN['mem_mb']}M", job
        assert minutes(job["TimeLimit"]) == RUNS_PER_JOB * minutes_per_run, job
    per_job = {}
    for name, folder in runs.items():
        manifest = json.loads((folder / "run.json").read_text())
        assert manifest["status"] == "completed", (name, manifest.get("reason"))
        per_job.setdefault(manifest["slurm_job_id"], []).append(name)
        pd.testing.assert_frame_equal(table(folder / "metrics.csv"), table(tmp_path / "local" / name / "metrics.csv"),
                                      obj=name)
    assert sorted(map(len, per_job.values())) == [RUNS_PER_JOB, RUNS_PER_JOB] and set(per_job) == set(groups)
    finished = harness_status(grouped, status_env)
    assert {(r["arch"], r["seed"], r["state"], r["job"]) for r in finished} == {
        (*name.split("/")[::2], "completed", job) for job, names in per_job.items() for name in names}
    print(f"\nSLURM micro sweep: 12 runs as {len(jobs)} SLURM jobs ({len(groups)} of runs) in {wall:.0f} s")


def writers(folders: list[Path]) -> int:
    """How many `harness train` processes on this machine (the cluster's one node) have a file open in
    ``folders`` (a run folder and its state folder): its holder keeps the run lock open all along, a
    process waiting for the lock opens it for an instant each second, any other would be a second writer."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0") if proc.name.isdigit() else []
            if b"harness" in argv and b"train" in argv:
                paths = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
                if any(p.startswith(f"{folder}/") for p in paths for folder in folders):
                    pids.add(proc.name)
        except OSError:  # the process ended meanwhile
            continue
    return len(pids)


def release(job_id: str, env: dict[str, str]) -> bool:
    """Let a requeued job start again at once, once it is pending: SLURM holds a requeued job back for a
    while (its BeginTime), which would only make this test wait. False until it is pending or runs again."""
    job = scontrol_jobs(env)[job_id]
    if job["JobState"] != "PENDING":
        return job["JobState"] in ("RUNNING", "COMPLETED") and job["Restarts"] != "0"
    subprocess.run([program("scontrol"), "update", f"JobId={job_id}", "StartTime=now"], env=env, check=True)
    return True


def test_requeued_and_killed_runs_resume_to_the_uninterrupted_results(cluster, tmp_path):
    """One run's SLURM job is requeued mid-run (SIGTERM: it checkpoints), the other run's training process
    is SIGKILLed (a node failure: no grace): the first job restarts under its id, the second is
    resubmitted by the profile's retries, both resume from their checkpoints, end as an uninterrupted
    local run, and no run folder ever has two training processes."""
    env = client_env(cluster)
    workdir, local = workflow(tmp_path, "slurm", LONG), workflow(tmp_path, "local", LONG)
    targets = [f"results/micro/transformer/base/seed{s}/quantization.csv" for s in LONG["seeds"]]
    proc = snakemake(workdir, env, *targets, "--group-components", "runs=1", *GROUP_SIZES[1:])
    state = {s: workdir / "results" / "micro" / ".state" / "transformer" / "base" / f"seed{s}" for s in LONG["seeds"]}
    run = {s: workdir / "results" / "micro" / "transformer" / "base" / f"seed{s}" for s in LONG["seeds"]}
    holders, most, released = {}, 0, False
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        for seed in LONG["seeds"]:
            most = max(most, writers([run[seed], state[seed]]))
        if 0 in holders and not released:
            released = release(holders[0]["slurm_job_id"], cluster)
        for seed in LONG["seeds"]:
            if seed not in holders and (state[seed] / "checkpoint.safetensors").exists():
                holders[seed] = runlock.holder_of(state[seed])
                if seed == 0:  # SIGTERM to the job's processes: the run checkpoints and stops
                    subprocess.run([program("scontrol"), "requeue", holders[seed]["slurm_job_id"]], env=cluster,
                                   check=True)
                else:  # `harness status` names the job of the run it trains, then the node "fails"
                    row = next(r for r in harness_status(workdir, env) if r["seed"] == f"seed{seed}")
                    assert (row["state"], row["job"]) == ("running", holders[seed]["slurm_job_id"]), row
                    os.kill(holders[seed]["pid"], signal.SIGKILL)
        time.sleep(0.1)
    output = finish(proc, timeout=max(1, deadline - time.monotonic()))
    assert len(holders) == 2, f"a run finished before it was interrupted: {holders}\n{output[-3000:]}"
    assert most == 1, f"{most} training processes wrote one run folder at once"

    finish(snakemake(local, env, *targets, slurm=False))
    jobs = scontrol_jobs(cluster)
    for seed in LONG["seeds"]:
        folder = workdir / "results" / "micro" / "transformer" / "base" / f"seed{seed}"
        manifest = json.loads((folder / "run.json").read_text())
        assert manifest["status"] == "completed" and manifest["resumed_from_step"] > 0, manifest
        reference = local / "results" / "micro" / "transformer" / "base" / f"seed{seed}"
        for result in ("metrics.csv", "quantization.csv"):
            pd.testing.assert_frame_equal(table(folder / result), table(reference / result), obj=f"seed{seed}/{result}")
        first = holders[seed]["slurm_job_id"]
        if seed == 0:  # requeued: the same job, restarted once
            assert manifest["slurm_job_id"] == first and jobs[first]["Restarts"] == "1", jobs[first]
        else:  # killed: that job failed, the retry is another job
            assert manifest["slurm_job_id"] != first and jobs[first]["JobState"] == "FAILED", jobs[first]
    print(f"\nrequeued run resumed from step {json.loads((workdir / 'results/micro/transformer/base/seed0/run.json').read_text())['resumed_from_step']}, "
          f"killed run from step {json.loads((workdir / 'results/micro/transformer/base/seed1/run.json').read_text())['resumed_from_step']}")
