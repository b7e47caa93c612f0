"""harness.worker: a job handed to the workflow's worker behaves as the same command in its own process.

Equivalences checked on real training runs: the same metrics and weights; the same exit codes
(completed, failed, interrupted); SIGTERM reaches the run (it checkpoints and exits 75, and the rerun
equals an uninterrupted run); a job process killed without warning does not leave its run going on; a
worker out of reach means the job runs in its own process; a worker whose workflow is gone ends.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from harness import checkpoint, cli, worker
from harness.timing import read_stage_line
from harness.worker import SOCKET_ENV
from tests.conftest import REPO, SHARED_DATA
from tests.test_train import metrics, spec_for

LATEST = checkpoint.SLOTS[0]
SPEC = spec_for("transformer")  # 40 steps, a checkpoint every 10, a log every 5

pytestmark = pytest.mark.skipif(not (SHARED_DATA and (SHARED_DATA / "tinyshakespeare.txt").is_file()),
                                reason="needs ../shared/data/tinyshakespeare.txt")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A worker started as the Snakefile starts one; its socket and its log."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = worker.start(log)
    assert proc is not None, log.read_text()
    path = os.environ[SOCKET_ENV]
    os.environ.pop(SOCKET_ENV)  # only the jobs below get it
    yield path, log
    worker.stop(proc)
    assert proc.returncode == 0 and not Path(path).exists()


def job_env(socket_path: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV}
    env["HARNESS_DATA_DIR"] = str(SHARED_DATA)
    return {**env, SOCKET_ENV: socket_path} if socket_path else env


def train_command(tmp_path: Path, name: str) -> list[str]:
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    return [sys.executable, "-m", "harness", "train", "--spec", str(tmp_path / "spec.json"),
            "--out", str(tmp_path / name), "--state", str(tmp_path / f"{name}.state")]


def wait_until(done, timeout_s: float) -> None:
    """Poll ``done()`` until it holds or ``timeout_s`` pass (the test's own assertion then says what failed)."""
    deadline = time.time() + timeout_s
    while not done() and time.time() < deadline:
        time.sleep(0.02)


def served_pid(log: Path) -> int:
    """The pid of the child the worker forked for the latest `harness train` job (from the worker's log)."""
    return int(re.findall(r"worker: job (\d+): harness train", log.read_text())[-1])


def test_a_run_through_the_worker_equals_the_run_in_its_own_process(served, tmp_path):
    path, log = served
    own = subprocess.run(train_command(tmp_path, "own"), env=job_env(None), cwd=REPO, capture_output=True, text=True)
    served_run = subprocess.run(train_command(tmp_path, "served"), env=job_env(path), cwd=REPO,
                                capture_output=True, text=True)
    assert own.returncode == served_run.returncode == 0, served_run.stderr
    assert "unreachable" not in served_run.stderr
    pid = served_pid(log)
    assert pid != os.getpid() and f"worker: job {pid}: exit 0" in log.read_text()
    pd.testing.assert_frame_equal(metrics(tmp_path / "served"), metrics(tmp_path / "own"))
    a, b = load_file(tmp_path / "own" / "model.safetensors"), load_file(tmp_path / "served" / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    # the served job skipped the imports: its start-up and build (meta-device modules) are the worker's
    own_s, served_s = read_stage_line(own.stderr), read_stage_line(served_run.stderr)
    assert served_s["startup"] + served_s["build"] < 0.5 * (own_s["startup"] + own_s["build"]), (own_s, served_s)
    manifest = json.loads((tmp_path / "served" / "run.json").read_text())
    assert manifest["stage_seconds"]["steps"] > 0 and set(manifest["stage_seconds"]) >= {
        "startup", "data", "build", "steps", "evaluation", "probes", "checkpoints", "outputs"}


def test_exit_codes_pass_through_and_the_worker_serves_on(served, tmp_path):
    path, _ = served
    bad = [sys.executable, "-m", "harness", "quantize", str(tmp_path / "no-such-run"), "--bits", "8"]
    own = subprocess.run(bad, env=job_env(None), cwd=REPO, capture_output=True, text=True)
    via = subprocess.run(bad, env=job_env(path), cwd=REPO, capture_output=True, text=True)
    assert own.returncode == via.returncode == 2
    assert "no-such-run" in via.stderr and via.stderr.splitlines()[-1] == own.stderr.splitlines()[-1]
    ok = subprocess.run([sys.executable, "-m", "harness", "detect", "--help"], env=job_env(path), cwd=REPO,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("usage: python -m harness detect")  # the child's stdout


def test_a_served_run_that_dies_of_a_signal_ends_its_job_as_a_shell_reports_it(served, tmp_path):
    path, log = served
    proc = subprocess.Popen(train_command(tmp_path, "run"), env=job_env(path), cwd=REPO, stderr=subprocess.DEVNULL)
    state = tmp_path / "run.state"
    wait_until(lambda: (state / LATEST).exists(), 60)
    pid = served_pid(log)
    os.kill(pid, signal.SIGKILL)  # e.g. the kernel's out-of-memory killer
    assert proc.wait(timeout=60) == 128 + signal.SIGKILL
    ok = subprocess.run([sys.executable, "-m", "harness", "detect", "--help"], env=job_env(path), cwd=REPO,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "--train-key" in ok.stdout  # and the worker serves on


def alive(pid: int) -> bool:
    """A process that runs (a zombie no parent reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_reaches_the_served_run_and_its_rerun_equals_an_uninterrupted_run(served, tmp_path, capsys):
    path, _ = served
    straight = subprocess.run(train_command(tmp_path, "straight"), env=job_env(None), cwd=REPO)
    assert straight.returncode == 0
    cmd = train_command(tmp_path, "run")
    proc = subprocess.Popen(cmd, env=job_env(path), cwd=REPO, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "run.state"
    wait_until(lambda: (state / LATEST).exists(), 60)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == cli.EXIT_INTERRUPTED, stderr
    assert "interrupted by SIGTERM at step" in stderr and "(not failed)" in stderr
    stopped_at = checkpoint.checkpoint_meta(state / LATEST)["step"]
    assert 10 <= stopped_at < 40
    rerun = subprocess.run(cmd, env=job_env(path), cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0 and f"at step {stopped_at}" in rerun.stderr
    pd.testing.assert_frame_equal(metrics(tmp_path / "run"), metrics(tmp_path / "straight"))


def test_a_job_process_killed_without_warning_stops_its_run(served, tmp_path):
    """SIGKILL gives the job's process no chance to forward anything: the worker sees its connection
    close and stops the child (which checkpoints, as at any SIGTERM), so no run goes on unowned."""
    path, log = served
    cmd = train_command(tmp_path, "run")
    proc = subprocess.Popen(cmd, env=job_env(path), cwd=REPO, stderr=subprocess.DEVNULL)
    state = tmp_path / "run.state"
    wait_until(lambda: (state / LATEST).exists(), 60)
    proc.kill()
    proc.wait()
    pid = served_pid(log)
    wait_until(lambda: f"worker: job {pid}: exit" in log.read_text(), 30)
    assert f"worker: job {pid}: exit {cli.EXIT_INTERRUPTED}" in log.read_text()
    assert not (tmp_path / "run" / "run.json").exists() and not alive(pid)


def test_an_unreachable_worker_means_the_job_runs_in_its_own_process(tmp_path):
    gone = str(tmp_path / "no-worker.sock")
    run = subprocess.run(train_command(tmp_path, "run"), env=job_env(gone), cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0 and f"note: worker {gone} unreachable" in run.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "completed"


def test_a_worker_ends_with_the_process_that_started_it(tmp_path):
    log = tmp_path / "worker.log"
    starter = subprocess.run([sys.executable, "-c", "import os; from pathlib import Path; from harness import worker; "
                              f"p = worker.start(Path({str(log)!r})); print(p.pid, os.environ[{SOCKET_ENV!r}])"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    pid, path = starter.stdout.split()
    deadline = time.time() + 60
    while alive(int(pid)) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(int(pid)), f"worker {pid} outlived the process that started it"
    assert not Path(path).exists()  # it removed its socket
