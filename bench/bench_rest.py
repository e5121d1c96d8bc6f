"""Benchmark a node of a 200-member federation at rest, and what one change costs it.

1. Starts the simulated peers (bench/sim_peers.py): one process whose one real store holds
   200 members' logs, served on 200 loopback ports, each a peer speaking the real protocol
   (and logging every unary call it serves, to count the node's calls).
2. Starts the node under study, HOME, as its own process: ``counterpart-node serve`` (the
   production NodeServer and sync engine; its peers are the 200 endpoints the federation
   document lists; sync_interval the default 30 s; heartbeat on). Waits until it holds all
   200 members' logs and has settled.
3. At rest, ``--rest`` seconds (default 60): the node's CPU (user + system, /proc) as a
   share of one core, its threads (/proc/PID/task) and RSS, and the calls it made to the
   peers (GetCheckpoints = whole passes of anti-entropy).
4. One change at one member (S017): the simulated store publishes one changed record and
   pushes it on all 200 streams; after ``--settle`` s, counts the node's calls
   (GetConsistencyProof and GetEntries: pulls; GetCheckpoints: whole passes) and what it
   ingested, of which members (its own log lines).
5. Watched by 200 peers: the simulator opens 200 WatchCheckpoints streams to the node; how
   many it accepts (WATCH_LIMIT, 32), its threads and CPU at rest for ``--rest`` / 2 s, then
   one more change (its pushes to the watchers included).

``--baseline-ref REF`` first runs the same with the node serving directory_server as of that
git ref (e.g. main: the behaviour before), in the same run.

Usage: python bench/bench_rest.py [--members 200] [--rest 60] [--baseline-ref main] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_find  # sibling scripts: python puts bench/ first on sys.path
import bench_propagation
from bench_propagation import compare_runs, interruptible, write_report
from sim_peers import SimPeers

from directory_server.config import NodeConfig

BENCH = Path(__file__).resolve().parent
CHANGED = "S017"


def threads_of(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


class Sim(SimPeers):
    """The simulated peers, logging every unary call they serve (to count the node's calls)."""

    def __init__(self, work: Path, members: int, home_port: int) -> None:
        self.log_path = work / "sim.log"
        with open(self.log_path, "wb") as log:
            super().__init__(work / "fed", members, home_port, access_log=True, stderr=log)

    def calls(self) -> dict[str, int]:
        """Unary calls served so far, by method (its access log)."""
        counts = bench_propagation.count_log_lines({"sim": self.log_path}, {})
        return {k.removeprefix("rpc "): v for k, v in counts.items() if k.startswith("rpc ")}


def held(home_dir: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{home_dir / 'node.sqlite3'}?mode=ro", uri=True, timeout=5)
    try:
        return {m: int(n) for m, n in conn.execute("SELECT member, size FROM checkpoints")}
    finally:
        conn.close()


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before)) if after.get(k, 0) != before.get(k, 0)}


def ingested(log_path: Path, offset: int) -> dict[str, int]:
    """Ranges the node ingested after ``offset`` of its log, by member."""
    out: dict[str, int] = {}
    with open(log_path, "rb") as f:
        f.seek(offset)
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("message") == "ingested":
                out[rec["member"]] = out.get(rec["member"], 0) + 1
    return out


def at_rest(pid: int, sim: Sim, seconds: float) -> dict[str, Any]:
    calls0, cpu0, t0 = sim.calls(), bench_find.proc_cpu_seconds(pid), time.perf_counter()
    threads = []
    while time.perf_counter() - t0 < seconds:
        time.sleep(min(5.0, seconds))
        threads.append(threads_of(pid))
    elapsed = time.perf_counter() - t0
    cpu = bench_find.proc_cpu_seconds(pid) - cpu0
    return {
        "seconds": round(elapsed, 1),
        "cpu_share_of_a_core": round(cpu / elapsed, 4),
        "threads_max": max(threads),
        "rss_mib": rss_mib(pid),
        "calls_to_peers_per_min": {k: round(v * 60 / elapsed, 1) for k, v in diff(sim.calls(), calls0).items()},
    }


def one_change(pid: int, sim: Sim, home_dir: Path, log_path: Path, settle: float) -> dict[str, Any]:
    calls0, cpu0, offset = sim.calls(), bench_find.proc_cpu_seconds(pid), log_path.stat().st_size
    changed = sim.send(f"change {CHANGED}")
    t0 = time.perf_counter()
    while held(home_dir).get(CHANGED, 0) < changed["size"]:
        if time.perf_counter() - t0 > 60:
            raise RuntimeError("the node did not pull the change within 60 s")
        time.sleep(0.005)
    reached = time.perf_counter() - t0
    time.sleep(settle)
    calls = diff(sim.calls(), calls0)
    return {
        "member": CHANGED,
        "reached_ms": round(reached * 1000, 1),
        "calls_to_peers": calls,
        "pulls": calls.get("GetConsistencyProof", 0),
        "whole_passes": calls.get("GetCheckpoints", 0),
        "ingested_by_member": ingested(log_path, offset),
        "node_cpu_s": round(bench_find.proc_cpu_seconds(pid) - cpu0, 3),
        "settle_s": settle,
    }


def measure(a: argparse.Namespace, code: Path | None, label: str) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="counterpart-bench-rest-"))
    sim: Sim | None = None
    try:
        t = time.perf_counter()
        sim = Sim(work, a.members, bench_find.free_port())
        home_dir = Path(sim.info["home_dir"])
        print(f"[{label}] {a.members} simulated peers set up and serving in {time.perf_counter() - t:.1f} s", flush=True)
        env = {"PYTHONPATH": str(code)} if code is not None else {}
        node = bench_propagation.NodeProcess("home", bench_propagation.serve_argv(home_dir, "INFO"), sim.info["home"],
                                             work, env)
        node.env["COUNTERPART_KEY_PASSPHRASE"] = "sim-only-passphrase"
        server = node.__enter__()
        try:
            pid = server.proc.pid
            t = time.perf_counter()
            while len(held(home_dir)) < a.members:
                if time.perf_counter() - t > 600:
                    raise RuntimeError(f"the node holds {len(held(home_dir))} of {a.members} members after 600 s")
                time.sleep(0.2)
            print(f"[{label}] the node holds all {a.members} members' logs {time.perf_counter() - t:.1f} s after start",
                  flush=True)
            time.sleep(a.settle_start)
            rest = at_rest(pid, sim, a.rest)
            print(f"[{label}] at rest: {rest}", flush=True)
            change = one_change(pid, sim, home_dir, server.log_path, a.settle)
            print(f"[{label}] one change: {change}", flush=True)
            accepted = sim.send(f"watch {a.members} {sim.info['home']}")["watching"]
            watched = at_rest(pid, sim, a.rest / 2) | {"watchers_accepted": accepted}
            print(f"[{label}] watched by {a.members} peers: {watched}", flush=True)
            watched_change = one_change(pid, sim, home_dir, server.log_path, a.settle)
            print(f"[{label}] one change while watched: {watched_change}", flush=True)
            sim.send("unwatch")
        finally:
            node.__exit__()
        return {"at_rest": rest, "one_change": change, "watched": watched, "watched_change": watched_change}
    finally:
        if sim is not None:
            sim.close()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A node of a 200-member federation at rest.")
    p.add_argument("--members", type=int, default=200)
    p.add_argument("--rest", type=float, default=60.0, help="seconds measured at rest")
    p.add_argument("--settle-start", type=float, default=15.0, help="seconds after convergence before measuring")
    p.add_argument("--settle", type=float, default=5.0, help="seconds counted after a change reached the node")
    p.add_argument("--baseline-ref", default="", help="first measure the node serving directory_server as of this git ref")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)

    version = bench_find.code_version()

    def run() -> None:
        runs = compare_runs(a.baseline_ref, lambda code, label: measure(a, code, label), "counterpart-bench-rest-code-")
        if a.json is not None:
            write_report(a.json, version, {
                "members": a.members, "rest_s": a.rest, "settle_s": a.settle, "settle_start_s": a.settle_start,
                "sync_interval": NodeConfig.__dataclass_fields__["sync_interval"].default,
                "peers": "one process, one store, one NodeServer on one port per simulated member",
                "baseline_ref": a.baseline_ref,
            }, {"cpu_share_of_a_core": 0.05, "threads_max": 64, "pulls_per_change": "bounded, of that member only"}, runs)

    return interruptible(run)


if __name__ == "__main__":
    sys.exit(main())
