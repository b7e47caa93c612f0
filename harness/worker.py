"""A fork server for the workflow's short jobs: torch and the harness are imported once, not once per job.

A sweep is hundreds of train, quantize and detect jobs of a few seconds each, and each `python -m
harness ...` process used to spend ~1.5 s importing torch and ~1.5 s more on torch's meta-device
modules (harness.shape counts parameters on the meta device) before its first step. The workflow
(the Snakefile's onstart) starts one `harness worker` per Snakemake invocation, which imports all of
that once; a job's command then only connects to it (`HARNESS_WORKER` names the socket) and the
worker forks a child that runs the command exactly as the process itself would have:
- the child gets the job's stdin, stdout and stderr (its log) as file descriptors, its working
  folder, its environment and its arguments, so logs, outputs and exit codes are the job's;
- each job is its own process: a crash, a failing run or a memory blow-up ends only that child;
- SIGTERM, SIGINT and SIGHUP sent to the job's process are forwarded to the child (a training run
  checkpoints and exits 75 as before); a job process that dies without a word (SIGKILL) gets its child
  a SIGTERM, so no run goes on without its job;
- without a worker, or when it cannot be reached (a cluster node), the command runs in its own
  process as before (`run_or_delegate`).
The worker itself never runs a torch operation: forking after OpenMP or CUDA started is unsafe, so it
only imports. It exits when the process that started it (Snakemake) is gone, or on SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import select
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from harness.timing import CPU_ENV, STARTED_ENV, process_started

SOCKET_ENV = "HARNESS_WORKER"  # the socket of the worker the jobs of this workflow use
DELEGATED = ("train", "quantize", "detect")  # the per-run commands; the others run once per study
PRELOAD = ("torch", "torch._dynamo", "torch._refs", "safetensors.torch", "pandas", "scipy.stats",
           "harness.train", "harness.run", "harness.quantize", "harness.collapse", "harness.logs",
           "harness.admission")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_HEADER = struct.Struct("!I")  # the request's length, before its JSON


class WorkerGone(RuntimeError):
    """The worker closed the connection before it reported the job's exit status."""


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


# -- the job's side ---------------------------------------------------------------------------------

def delegate(conn: socket.socket, argv: list[str]) -> int:
    """Run ``harness argv`` in a child of the worker connected on ``conn``; returns its exit status as a
    shell gives it (128 + N for a child ended by signal N)."""
    pending: list[int] = []
    child: list[int] = []

    def forward(signum, _frame):
        if child:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile: its status is on the way
                os.kill(child[0], signum)
        else:
            pending.append(signum)  # before the worker said which child: sent as soon as it does

    with conn:
        previous = {s: signal.signal(s, forward) for s in FORWARDED}
        try:
            request = json.dumps({"argv0": sys.argv[0], "argv": argv, "cwd": os.getcwd(), "path": sys.path[0],
                                  "env": {**os.environ, STARTED_ENV: str(process_started()),
                                          CPU_ENV: str(time.process_time())}}).encode()
            socket.send_fds(conn, [_HEADER.pack(len(request)) + request], [0, 1, 2])
            replies = conn.makefile("r")
            for line in replies:
                reply = json.loads(line)
                if "pid" in reply:
                    child.append(reply["pid"])
                    for signum in pending:
                        os.kill(child[0], signum)
                else:
                    status = reply["status"]
                    return status if status >= 0 else 128 - status
            raise WorkerGone("the worker closed the connection before the job ended")
        except OSError as e:
            raise WorkerGone(f"the connection to the worker broke ({e})") from e
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def run_or_delegate(argv: list[str], run_here) -> int:
    """``run_here(argv)`` in this process, unless a worker is named and reachable."""
    path = os.environ.get(SOCKET_ENV)
    if not path or not argv or argv[0] not in DELEGATED or not all(_is_open(fd) for fd in (0, 1, 2)):
        return run_here(argv)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError as e:  # e.g. a job on a cluster node, where the login node's worker is out of reach
        conn.close()
        print(f"note: worker {path} unreachable ({e.strerror}); running in this process", file=sys.stderr)
        return run_here(argv)
    return delegate(conn, argv)  # once connected, a broken worker is an error: the job may have half run


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


# -- the workflow's side (Snakefile: onstart, onsuccess, onerror) ------------------------------------

def start(log: Path) -> subprocess.Popen | None:
    """Start a worker for the jobs of this process (Snakemake) and name it to them in HARNESS_WORKER.
    Returns None, and the jobs start their own processes, when it does not come up within 10 s."""
    path = os.path.join(tempfile.gettempdir(), f"harness-worker-{os.getpid()}.sock")  # < 108 bytes
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        worker = subprocess.Popen([sys.executable, "-m", "harness", "worker", "--socket", path,
                                   "--parent", str(os.getpid())], stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 10
    while not os.path.exists(path):  # bound before its imports: jobs wait in its backlog meanwhile
        if worker.poll() is not None or time.monotonic() > deadline:
            print(f"harness worker did not start (see {log}); every job starts its own process", file=sys.stderr)
            stop(worker)
            return None
        time.sleep(0.02)
    os.environ[SOCKET_ENV] = path
    return worker


def stop(worker: subprocess.Popen | None) -> None:
    """End a worker that ``start`` started, once the workflow's jobs are done."""
    os.environ.pop(SOCKET_ENV, None)
    if worker is not None and worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()


# -- the worker's side ------------------------------------------------------------------------------

def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    if len(data) < _HEADER.size:
        raise WorkerGone("a request without a header")
    (size,) = _HEADER.unpack_from(data)
    while len(data) < _HEADER.size + size:
        more = conn.recv(1 << 16)
        if not more:
            raise WorkerGone("a request cut short")
        data += more
    return json.loads(data[_HEADER.size:]), fds


def _run_child(request: dict, fds: list[int], run: Callable[[list[str]], int]) -> int:
    """In the forked child: become the job's process, then run its command (``run``: harness.cli.run)."""
    for signum in (*FORWARDED, signal.SIGCHLD):
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = request["path"]
    sys.argv = [request["argv0"], *request["argv"]]
    try:
        code = run(request["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - what the process would have printed before dying
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve(path: str, parent: int, run: Callable[[list[str]], int], poll_s: float = 0.2) -> None:
    """Accept jobs on the UNIX socket ``path``, each run by ``run(argv)`` in a forked child, until process
    ``parent`` is gone or SIGTERM arrives."""
    import importlib

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    Path(path).unlink(missing_ok=True)
    listener.bind(path)  # before the imports: the first jobs wait in the backlog instead of running alone
    os.chmod(path, 0o600)
    listener.listen(128)
    for module in PRELOAD:
        importlib.import_module(module)
    children: dict[int, socket.socket | None] = {}  # pid -> the job's connection (None: the job is gone)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    print(f"worker {os.getpid()}: serving {path} (imports done)", file=sys.stderr, flush=True)
    try:
        while not stopping and os.getppid() == parent:
            by_conn = {conn: pid for pid, conn in children.items() if conn is not None}
            try:
                ready, _, _ = select.select([listener, *by_conn], [], [], poll_s)
            except InterruptedError:
                ready = []
            for conn in ready:
                if conn is listener:
                    _accept(listener, children, run)
                elif not conn.recv(1):  # the job's process is gone: its child must not run on alone
                    pid = by_conn[conn]
                    conn.close()
                    children[pid] = None  # one SIGTERM: a second could hit the child past its handlers
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            _reap(children)
    finally:
        for pid in [pid for pid, conn in children.items() if conn is not None]:  # still running when the
            with contextlib.suppress(ProcessLookupError):  # workflow ends: they checkpoint and stop
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while children and time.monotonic() < deadline:
            _reap(children)
            time.sleep(0.1)
        listener.close()
        Path(path).unlink(missing_ok=True)


def _accept(listener: socket.socket, children: dict[int, socket.socket | None], run: Callable[[list[str]], int]) -> None:
    conn, _ = listener.accept()
    try:
        request, fds = _receive(conn)
    except (OSError, ValueError, WorkerGone) as e:
        print(f"worker: bad request ({e})", file=sys.stderr, flush=True)
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        listener.close()
        for other in children.values():
            if other is not None:
                other.close()
        conn.close()
        code = 1
        try:
            code = _run_child(request, fds, run)
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    print(f"worker: job {pid}: harness {request['argv'][0]}", file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):  # a job gone already: _reap finds its child
        _send(conn, {"pid": pid})


def _reap(children: dict[int, socket.socket | None]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)  # negative: ended by that signal
        print(f"worker: job {pid}: exit {code}", file=sys.stderr, flush=True)
        if conn is not None:
            with contextlib.suppress(OSError):
                _send(conn, {"status": code})
            conn.close()

