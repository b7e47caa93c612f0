"""The workflow on a real SLURM cluster, through profiles/slurm and snakemake-executor-plugin-slurm.

The test brings up a single-node cluster from Debian's packages (munge, slurmctld, slurmd of
slurm-wlm 22.05) as plain background processes with a minimal slurm.conf under a temporary folder,
runs a micro study with `--workflow-profile profiles/slurm`, and checks that every training run ran
as a SLURM job (its job id in run.json is a completed job of the cluster, with the profile's time
limit) while detect, aggregate and report stayed local, and that the report was written. Then it
stops the daemons it started, by their PIDs, and removes the /etc/slurm/slurm.conf link it made.

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

import pytest
import yaml

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
# 2 architectures x 2 seeds, 30 steps: four SLURM jobs of a few seconds each
STUDY = {**MICRO_STUDY, "seeds": [0, 1], "recipe": {**MICRO_STUDY["recipe"], "steps": 30}}


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


def test_micro_study_trains_every_run_as_a_slurm_job(cluster, tmp_path):
    workdir = workflow_copy(tmp_path / "workflow")
    write_config(workdir, micro_config(STUDY))
    env = {**cluster, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{cluster['PATH']}",
           "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/slurm", "reports/collapse.html",
        # no accounting here: job states from squeue, and sooner than the plugin's default 40 s
        "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
    ]
    start = time.monotonic()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - start
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert (workdir / "reports" / "collapse.html").stat().st_size > 0
    assert (workdir / "reports" / "micro" / "collapse.html").stat().st_size > 0

    jobs = scontrol_jobs(cluster)
    manifests = {p.parent.relative_to(workdir / "results" / "micro"): json.loads(p.read_text())
                 for p in (workdir / "results" / "micro").glob("*/*/seed*/run.json")}
    assert len(manifests) == len(STUDY["archs"]) * len(STUDY["seeds"])
    seen = {}
    for run, manifest in manifests.items():
        assert manifest["status"] == "completed", (run, manifest.get("reason"))
        job_id = manifest.get("slurm_job_id")
        assert job_id in jobs, f"{run}: job id {job_id!r} is not a job of this cluster ({sorted(jobs)})"
        job = jobs[job_id]
        assert job["JobState"] == "COMPLETED", (run, job)
        assert job["Comment"].startswith("rule_train_"), (run, job)
        # the profile's resources reached sbatch
        assert minutes(job["TimeLimit"]) == TRAIN["runtime"], (run, job)
        assert job["MinMemoryNode"] == f"{TRAIN['mem_mb']}M", (run, job)
        seen[str(run)] = job_id
    # one job per run; the admission checks (one per architecture), training and the quantization stage
    # (it loads each model) are submitted, while detect, aggregate and report stay local
    assert len(set(seen.values())) == len(seen)
    assert {j["Comment"].split("_wildcards")[0] for j in jobs.values()} == {
        "rule_admission_study", "rule_admission", "rule_train", "rule_quantize"}, jobs
    print(f"\nSLURM micro study: {len(seen)} training jobs in {wall:.0f} s; job ids {seen}")
