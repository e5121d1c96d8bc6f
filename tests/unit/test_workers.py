"""The worker processes of a long sync (counterpart_core.workers): results and errors come
back to the caller's future, a worker that dies is replaced, and no worker outlives the
node that started it, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from counterpart_core.errors import SignatureError
from counterpart_core.workers import WorkerPool


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def test_results_and_errors_come_back_from_the_workers() -> None:
    pool = WorkerPool(2)
    try:
        assert pool.submit("shape_entries", "GE", []).result(timeout=60) == []
        with pytest.raises(SignatureError):
            pool.submit("check_signatures", b"not a federation document", "GE", 1, [b"x"]).result(timeout=60)
        assert len(pool.pids()) >= 1
    finally:
        pool.close(wait=True)
    assert pool.pids() == []


def test_a_killed_worker_fails_its_task_and_is_started_again() -> None:
    pool = WorkerPool(1)
    try:
        pool.submit("shape_entries", "GE", []).result(timeout=60)
        [pid] = pool.pids()
        os.kill(pid, signal.SIGKILL)
        outcomes = []
        for _ in range(3):
            try:
                outcomes.append(pool.submit("shape_entries", "GE", []).result(timeout=60))
            except RuntimeError:
                outcomes.append("failed")
        assert outcomes[-1] == []
        assert pool.pids() and pool.pids() != [pid]
    finally:
        pool.close(wait=True)


def test_no_worker_outlives_a_killed_node() -> None:
    script = (
        "import sys\n"
        "from counterpart_core.workers import WorkerPool\n"
        "pool = WorkerPool(2)\n"
        "futures = [pool.submit('shape_entries', 'GE', []) for _ in range(8)]\n"
        "[f.result(timeout=60) for f in futures]\n"
        "print(' '.join(map(str, pool.pids())), flush=True)\n"
        "sys.stdin.read()\n"
    )
    node = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert node.stdout is not None
        pids = [int(p) for p in node.stdout.readline().split()]
        assert pids and all(_alive(p) for p in pids)
    finally:
        node.send_signal(signal.SIGKILL)
        node.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
