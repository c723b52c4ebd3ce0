"""Helpers for tests that start several processes: a free localhost port, launching "nodes" with
torchrun on 127.0.0.1, and cleaning up every process they started, by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.cli import REPO


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid`` (children first), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the parenthesised command name
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_by_pid(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, each unfinished process and every descendant of it, by PID."""
    pids = []
    for proc in procs:
        if proc.poll() is None:
            pids += [proc.pid, *descendants(proc.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for proc in procs:
        if proc.poll() is None:
            proc.wait(timeout=grace)


def torchrun_command(node_rank: int, nodes: int, port: int, script_args: list[str]) -> list[str]:
    """``torchrun`` for one node of ``nodes`` (one process each), everything on 127.0.0.1."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--node_rank", str(node_rank),
        "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
        "--local_addr", "127.0.0.1", str(REPO / "train.py"), *script_args,
    ]


def run_nodes(script_args: list[str], cwds: list[Path], timeout: float = 300) -> list[str]:
    """Run ``train.py <script_args>`` as ``len(cwds)`` torchrun nodes on localhost, node i in ``cwds[i]``.

    Gloo is bound to the loopback interface (``GLOO_SOCKET_IFNAME=lo``), one thread per process.
    Fails with every node's output unless all exit 0; on any failure or timeout every process
    started here (the torchrun agents and their workers) is stopped by PID.

    Returns:
        The output (stdout and stderr) of each node.
    """
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", GLOO_SOCKET_IFNAME="lo",
               OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    logs = [cwd / f"node{i}.log" for i, cwd in enumerate(cwds)]
    procs: list[subprocess.Popen] = []
    try:
        for node, (cwd, log) in enumerate(zip(cwds, logs)):
            cwd.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as out:
                procs.append(subprocess.Popen(torchrun_command(node, len(cwds), port, script_args), cwd=cwd,
                                              env=env, stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        kill_by_pid(procs)
    outputs = [log.read_text() for log in logs]
    codes = [proc.returncode for proc in procs]
    if codes != [0] * len(cwds):
        shown = "\n".join(f"--- node {i} (exit {c}):\n{o[-5000:]}" for i, (c, o) in enumerate(zip(codes, outputs)))
        raise AssertionError(f"torchrun train.py {' '.join(script_args)} failed:\n{shown}")
    return outputs
