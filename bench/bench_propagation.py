"""Benchmark how long one published change takes to reach every node of a federation.

1. Sets up ten nodes on loopback, one per member that has sample data (AM AZ GE KG KZ PE
   RS TJ TM UZ): a generated root key signs a federation document listing all ten
   members with their keys and endpoints; each node gets its own data directory and
   SQLite file, an encrypted key, a ``node.toml`` whose ``peers`` are the nine others
   (full mesh; the federation endpoints name the same nine), the document installed and
   its member's sample records published (``Node.publish``, the code of
   ``counterpart-node publish``).
2. Starts each node as its own process: ``counterpart-node serve --data-dir DIR
   --log-level WARNING`` (``--node-log-level``; the production NodeServer with its sync engine: a
   whole pass on start and every 30 s of anti-entropy, and a pull of the one member a
   ``WatchCheckpoints`` push names; the push thread is woken by every commit, of its own
   process or of another one over the same data directory, ``directory_server.wake``).
   Waits for health SERVING and until every node holds every member's log; measures one
   empty gRPC round trip (Health.Check, median of 200) as the floor of one hop.
3. Measures ``--changes`` changes (default 20), round robin over the members: edits one
   record (its ``review_date``) in a private copy of the member's sample data, publishes
   it at the member's node with ``Node.publish`` in this process, and takes the time of
   its commit (``Store.watch_commits``). Then polls each of the nine other nodes' SQLite file
   (read-only, every ``--poll`` s) until its checkpoint for the member covers the new
   size. The delay of the change is the time until the last of the nine holds it; the
   delay of each node is kept too. Between changes it waits ``--gap`` s, so that the
   relay traffic a change causes has settled; the CPU all ten node processes used per
   change is recorded.
4. Checks at the end, over gRPC, that every node's GetCheckpoints shows every member's
   final size, and prints median and worst delay; ``--json OUT`` writes every figure.
   ``--baseline-ref REF`` first runs all of it with the nodes serving directory_server as
   of that git ref (e.g. main: the behaviour before), in the same run.

Every process started here is stopped on the way out (SIGTERM, then SIGKILL after 15 s).

Usage: python bench/bench_propagation.py [--changes 20] [--baseline-ref main] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import bench_find  # sibling scripts: python puts bench/ first on sys.path
import grpc
from grpc_health.v1 import health_pb2

from counterpart.v1 import log_pb2
from counterpart.v1 import replication_service_pb2 as rs
from counterpart.v1 import replication_service_pb2_grpc as rs_grpc
from counterpart_core import federation as fed
from counterpart_core import signing
from directory_server.config import CONFIG_NAME, NodeConfig
from directory_server.node import Node

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "sample_data"
MEMBERS = ["AM", "AZ", "GE", "KG", "KZ", "PE", "RS", "TJ", "TM", "UZ"]
PASSPHRASE = "bench-only-passphrase"  # generated keys in a temporary directory
CONVERGE_TIMEOUT_S = 120.0
REVIEW_DATE = re.compile(r"review_date: '\d{4}-\d{2}-\d{2}'")


def setup(work: Path) -> dict[str, dict[str, Any]]:
    """Create the ten nodes (not yet serving); return per member: dir, address, sample copy."""
    now = datetime.now(UTC).replace(microsecond=0)
    root = signing.SigningKey.generate()
    keys = {m: signing.SigningKey.generate() for m in MEMBERS}
    ports = {m: bench_find.free_port() for m in MEMBERS}
    addresses = {m: f"127.0.0.1:{ports[m]}" for m in MEMBERS}
    doc = fed.new_document("bench-propagation", [root.public_bytes], 1, now, timedelta(days=30))
    for m in MEMBERS:
        fed.add_member(doc, m, f"Member {m}", [keys[m].public_bytes], [addresses[m]])
    envelope = signing.sign_envelope(
        doc.SerializeToString(deterministic=True), signing.FEDERATION_TYPE, [root]
    )
    nodes: dict[str, dict[str, Any]] = {}
    for m in MEMBERS:
        data_dir = work / m
        data_dir.mkdir()
        config = NodeConfig(
            data_dir=data_dir,
            member=m,
            listen=addresses[m],
            peers=",".join(addresses[o] for o in MEMBERS if o != m),
        )
        (data_dir / CONFIG_NAME).write_text(config.to_toml(), encoding="utf-8")
        signing.write_key_file(config.key_path, keys[m], PASSPHRASE.encode())
        sample = work / f"sample-{m}"
        shutil.copytree(SAMPLE_DATA / m, sample)
        node = Node(config)
        try:
            node.install_federation(envelope)
            plan = node.publish(sample, PASSPHRASE.encode())
        finally:
            node.close()
        nodes[m] = {
            "dir": data_dir,
            "address": addresses[m],
            "sample": sample,
            "size": plan.checkpoint_size,
        }
    return nodes


def serve_argv(data_dir: Path, log_level: str) -> list[str]:
    exe = Path(sys.executable).parent / "counterpart-node"
    cmd = [str(exe)] if exe.exists() else [shutil.which("counterpart-node") or "counterpart-node"]
    return cmd + ["serve", "--data-dir", str(data_dir), "--log-level", log_level]


def count_log_lines(logs: dict[str, Path], offsets: dict[str, int]) -> dict[str, int]:
    """Count the nodes' JSON log lines after the given offsets: unary calls served by method
    (the access log, INFO), ranges ingested by sync (INFO), rejections by reason (WARNING)."""
    counts: dict[str, int] = {}
    for name, path in logs.items():
        with open(path, "rb") as f:
            f.seek(offsets.get(name, 0))
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("message") == "rpc":
                    key = "rpc " + str(rec.get("method", "")).rsplit("/", 1)[-1]
                elif rec.get("message") == "rejected":  # a peer's data refused: say why
                    key = f"rejected {rec.get('reason', '')}"
                else:
                    key = str(rec.get("message", ""))
                counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


class SizeReader:
    """Reads checkpoint sizes straight from a node's SQLite file (read-only, WAL): the
    poll costs the node nothing."""

    def __init__(self, data_dir: Path) -> None:
        uri = f"file:{data_dir / 'node.sqlite3'}?mode=ro"
        # read from the polling thread while the main thread publishes
        self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5, check_same_thread=False)

    def sizes(self) -> dict[str, int]:
        return {m: int(s) for m, s in self.conn.execute("SELECT member, size FROM checkpoints")}

    def size(self, member: str) -> int:
        row = self.conn.execute("SELECT size FROM checkpoints WHERE member = ?", (member,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.conn.close()


def wait_converged(readers: dict[str, SizeReader], want: dict[str, int], timeout: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if all(
            all(r.size(m) >= n for m, n in want.items()) for r in readers.values()
        ):
            return time.perf_counter() - t0
        time.sleep(0.05)
    missing = {
        node: {m: r.size(m) for m, n in want.items() if r.size(m) < n}
        for node, r in readers.items()
    }
    raise RuntimeError(f"nodes did not converge within {timeout:.0f} s: {missing}")


def poll_until(
    readers: dict[str, SizeReader], member: str, size: int, reached: dict[str, float], poll: float, timeout: float
) -> None:
    """Note in ``reached`` when (time.perf_counter()) each node first holds ``size`` of the
    member's log; give up after ``timeout`` s."""
    pending = dict(readers)
    start = time.perf_counter()
    while pending and time.perf_counter() - start < timeout:
        for o, r in list(pending.items()):
            if r.size(member) >= size:
                reached[o] = time.perf_counter()
                del pending[o]
        if pending:
            time.sleep(poll)


def edit_sample(sample: Path, k: int) -> None:
    """Give the first record of authorities.yaml a new review date (a changed record)."""
    path = sample / "authorities.yaml"
    text = path.read_text(encoding="utf-8")
    day = datetime(2026, 1, 1) + timedelta(days=k)
    new, n = REVIEW_DATE.subn(f"review_date: '{day:%Y-%m-%d}'", text, count=1)
    if n != 1:
        raise RuntimeError(f"no review_date in {path}")
    path.write_text(new, encoding="utf-8")


def grpc_sizes(address: str) -> dict[str, int]:
    with grpc.insecure_channel(address) as channel:
        stub = rs_grpc.ReplicationServiceStub(channel)
        resp = stub.GetCheckpoints(rs.GetCheckpointsRequest(), timeout=10)
    out: dict[str, int] = {}
    for env in resp.signed_checkpoints:
        cp = log_pb2.Checkpoint()
        cp.ParseFromString(signing.parse_envelope(env).payload)
        out[cp.member] = int(cp.size)
    return out


def round_trip_ms(address: str, calls: int = 200) -> float:
    """Median of ``calls`` unary Health.Check round trips to a node: what one gRPC hop costs
    on this machine now (the floor under a push and a pull)."""
    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        check(health_pb2.HealthCheckRequest(), timeout=10)
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            check(health_pb2.HealthCheckRequest(), timeout=10)
            times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 3)


MIGRATIONS = "directory_server/storage/migrations/versions"


def baseline_tree(ref: str, into: Path) -> Path:
    """``directory_server`` as of the git ref, extracted under ``into`` (for PYTHONPATH).

    The data directories are set up, and changes published, by this tree's code: a ref
    whose schema is older (other migrations) could not open them, so such a ref is refused
    before anything starts, naming the migrations that differ."""
    def migrations(rev: str) -> set[str]:
        listed = subprocess.run(
            ["git", "ls-tree", "--name-only", rev, MIGRATIONS + "/"], cwd=REPO, check=True, capture_output=True, text=True
        ).stdout.split()
        return {Path(f).name for f in listed if f.endswith(".py")}

    ours, theirs = {Path(f).name for f in (REPO / MIGRATIONS).glob("*.py")}, migrations(ref)
    if ours != theirs:
        raise SystemExit(
            f"--baseline-ref {ref}: its schema differs from this tree's (migrations only here: "
            f"{sorted(ours - theirs) or 'none'}; only there: {sorted(theirs - ours) or 'none'}); "
            "this benchmark sets up its nodes with this tree's code, which the ref's nodes could not open"
        )
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", ref, "directory_server"], cwd=REPO, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def measure(a: argparse.Namespace, code: Path | None, label: str) -> dict[str, Any]:
    """Set up ten fresh nodes, serve them with the code in ``code`` (None: this tree) and
    time ``a.changes`` changes; every figure of the run."""
    work = Path(tempfile.mkdtemp(prefix="counterpart-bench-prop-"))
    try:
        t_setup = time.perf_counter()
        nodes = setup(work)
        print(
            f"[{label}] set up {len(nodes)} nodes in {time.perf_counter() - t_setup:.1f} s; sizes "
            + " ".join(f"{m}={n['size']}" for m, n in nodes.items()),
            flush=True,
        )
        env = {"PYTHONPATH": str(code)} if code is not None else {}
        changes: list[dict[str, Any]] = []
        with ExitStack() as stack:
            procs: dict[str, bench_find.Server] = {}
            for m, n in nodes.items():
                procs[m] = stack.enter_context(
                    NodeProcess(m, serve_argv(n["dir"], a.node_log_level), n["address"], work, env)
                )
            readers = {m: SizeReader(n["dir"]) for m, n in nodes.items()}
            for r in readers.values():
                stack.callback(r.close)
            want = {m: n["size"] for m, n in nodes.items()}
            took = wait_converged(readers, want, CONVERGE_TIMEOUT_S)
            print(f"[{label}] all {len(nodes)} nodes serving and converged {took:.2f} s after start")
            time.sleep(a.gap)
            rtt = round_trip_ms(nodes[MEMBERS[0]]["address"])
            pids = [s.proc.pid for s in procs.values()]
            idle0 = sum(bench_find.proc_cpu_seconds(pid) for pid in pids)
            time.sleep(5.0)
            idle_cpu = (sum(bench_find.proc_cpu_seconds(pid) for pid in pids) - idle0) / 5.0
            print(f"[{label}] idle: the ten node processes use {idle_cpu:.3f} CPU-s per s together; "
                  f"one gRPC round trip (Health.Check) {rtt:.2f} ms")
            logs = {m: s.log_path for m, s in procs.items()}
            offsets = {m: path.stat().st_size for m, path in logs.items()}
            for k in range(a.changes):
                member = MEMBERS[k % len(MEMBERS)]
                info = nodes[member]
                edit_sample(info["sample"], k)
                cpu0 = sum(bench_find.proc_cpu_seconds(pid) for pid in pids)
                size = info["size"] + 1
                # the nine nodes are polled from before the publish, by a thread, so that the
                # time each holds the change is not held back by what this process does after
                # the commit (the rest of the publish, closing the store)
                reached_at: dict[str, float] = {}
                poller = threading.Thread(
                    target=poll_until, args=({o: readers[o] for o in MEMBERS if o != member}, member, size,
                                             reached_at, a.poll, a.timeout), daemon=True,
                )
                poller.start()
                node = Node(NodeConfig(data_dir=info["dir"], member=member))
                committed: list[float] = []
                # the instant the publish commits (its checkpoint with it), right after this
                # process pokes the serving node (directory_server.wake)
                node.store.watch_commits(lambda times=committed: times.append(time.perf_counter()))
                try:
                    tp = time.perf_counter()
                    plan = node.publish(info["sample"], PASSPHRASE.encode())
                    tr = time.perf_counter()
                finally:
                    node.close()
                if plan.appended != 1 or len(committed) != 1 or plan.checkpoint_size != size:
                    raise RuntimeError(f"{member}: expected one changed record in one commit, got {plan}, {committed}")
                t0 = committed[0]
                info["size"] = size
                poller.join()
                missing = sorted(set(MEMBERS) - {member} - set(reached_at))
                if missing:
                    raise RuntimeError(f"change {k} of {member} did not reach {missing}")
                reached = {o: t - t0 for o, t in reached_at.items()}
                time.sleep(a.gap)
                cpu = sum(bench_find.proc_cpu_seconds(pid) for pid in pids) - cpu0
                delays = sorted(reached.values())
                change = {
                    "member": member,
                    "size": size,
                    "publish_s": round(tr - tp, 3),
                    "all_nine_ms": round(delays[-1] * 1000, 1),
                    "first_ms": round(delays[0] * 1000, 1),
                    "median_node_ms": round(statistics.median(delays) * 1000, 1),
                    "per_node_ms": {o: round(v * 1000, 1) for o, v in sorted(reached.items())},
                    "nodes_cpu_s": round(cpu - idle_cpu * (time.perf_counter() - t0), 3),
                }
                changes.append(change)
                print(
                    f"[{label}] change {k + 1:>2}: {member} -> size {size}: first node {change['first_ms']:.0f} ms, "
                    f"median node {change['median_node_ms']:.0f} ms, all nine {change['all_nine_ms']:.0f} ms; "
                    f"node CPU above idle {change['nodes_cpu_s']:.2f} s",
                    flush=True,
                )
            log_counts = count_log_lines(logs, offsets)
            if a.node_log_level.upper() in ("DEBUG", "INFO"):
                per_change = {k: round(v / len(changes), 1) for k, v in log_counts.items()}
                print(f"[{label}] node log lines per change (all ten nodes): {per_change}")
            final = {m: n["size"] for m, n in nodes.items()}
            for m, n in nodes.items():
                seen = grpc_sizes(n["address"])
                if seen != final:
                    raise RuntimeError(f"{m} serves {seen}, expected {final}")
            print(f"[{label}] every node's GetCheckpoints shows every member's final size")
        all_nine = sorted(c["all_nine_ms"] for c in changes)
        per_node = sorted(v for c in changes for v in c["per_node_ms"].values())
        summary = {
            "changes": len(changes),
            "all_nine_median_ms": round(statistics.median(all_nine), 1),
            "all_nine_worst_ms": all_nine[-1],
            "all_nine_best_ms": all_nine[0],
            "per_node_median_ms": round(statistics.median(per_node), 1),
            "per_node_p90_ms": bench_find.percentile(per_node, 90),
            "first_node_median_ms": round(statistics.median(c["first_ms"] for c in changes), 1),
            "nodes_cpu_s_per_change_median": round(statistics.median(c["nodes_cpu_s"] for c in changes), 3),
            "idle_nodes_cpu_s_per_s": round(idle_cpu, 3),
            "grpc_round_trip_ms": rtt,
        }
        print(
            f"\n[{label}] {len(changes)} changes: all nine nodes hold it after median "
            f"{summary['all_nine_median_ms']:.0f} ms, worst {summary['all_nine_worst_ms']:.0f} ms "
            f"(best {summary['all_nine_best_ms']:.0f} ms); single node median "
            f"{summary['per_node_median_ms']:.0f} ms, p90 {summary['per_node_p90_ms']:.0f} ms; "
            f"CPU of the ten nodes per change {summary['nodes_cpu_s_per_change_median']:.3f} s\n",
            flush=True,
        )
        return {"summary": summary, "node_log_lines": log_counts, "changes": changes}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Propagation delay of a change to ten nodes.")
    p.add_argument("--changes", type=int, default=20, help="changes to publish and time")
    p.add_argument("--gap", type=float, default=3.0, help="seconds between changes")
    p.add_argument("--poll", type=float, default=0.002, help="seconds between store polls")
    p.add_argument("--timeout", type=float, default=90.0, help="give up on a change after this")
    p.add_argument("--baseline-ref", default="",
                   help="also measure, first and in the same run, the nodes serving directory_server "
                   "as of this git ref (e.g. main): the behaviour before")
    p.add_argument("--node-log-level", default="WARNING",
                   help="the nodes' --log-level; INFO logs every call served, and the counts "
                   "per change are printed (costs the nodes some CPU)")
    p.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    a = p.parse_args(argv)

    version = bench_find.code_version()

    def run() -> None:
        runs = compare_runs(a.baseline_ref, lambda code, label: measure(a, code, label), "counterpart-bench-prop-code-")
        current = runs["current"]["summary"]
        if "baseline" in runs:
            base = runs["baseline"]["summary"]
            print(
                f"all nine, median: {current['all_nine_median_ms']:.0f} ms against {base['all_nine_median_ms']:.0f} ms "
                f"before (ratio {current['all_nine_median_ms'] / base['all_nine_median_ms']:.2f}); worst "
                f"{current['all_nine_worst_ms']:.0f} ms against {base['all_nine_worst_ms']:.0f} ms; CPU per change "
                f"{current['nodes_cpu_s_per_change_median']:.3f} s against {base['nodes_cpu_s_per_change_median']:.3f} s"
            )
        if a.json is not None:
            write_report(a.json, version, {
                "members": MEMBERS,
                "topology": "full mesh: node.toml peers = the 9 others (= federation endpoints)",
                "serve": f"counterpart-node serve --data-dir DIR --log-level {a.node_log_level} (heartbeat on)",
                "publish": "Node.publish in the bench process; the delay runs from its commit",
                "sync_interval": NodeConfig.__dataclass_fields__["sync_interval"].default,
                "workers": NodeConfig.__dataclass_fields__["workers"].default,
                "changes": a.changes,
                "gap_s": a.gap,
                "store_poll_s": a.poll,
                "baseline_ref": a.baseline_ref,
            }, {"all_nine_median_ms": 100, "all_nine_worst_ms": 250}, runs)

    return interruptible(run)


def interruptible(run: Callable[[], None]) -> int:
    """Run a benchmark; SIGTERM and Ctrl-C stop it cleanly (its processes stopped, 130)."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        run()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def compare_runs(
    baseline_ref: str, measure_with: Callable[[Path | None, str], dict[str, Any]], prefix: str
) -> dict[str, dict[str, Any]]:
    """``measure_with(code, label)`` first with directory_server as of ``baseline_ref`` (if
    given: the behaviour before, in the same run), then with this tree (code None)."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        runs: dict[str, dict[str, Any]] = {}
        if baseline_ref:
            code = baseline_tree(baseline_ref, scratch / "baseline")
            runs["baseline"] = measure_with(code, f"baseline {baseline_ref}") | {"code": baseline_ref}
        runs["current"] = measure_with(None, "current") | {"code": "this tree"}
        return runs
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_report(
    path: Path, version: dict[str, str], settings: dict[str, Any], targets: dict[str, Any], runs: dict[str, Any]
) -> None:
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": bench_find.machine_info(),
        "code": version | {"changed_during_run": str(bench_find.code_version() != version)},
        "settings": settings,
        "targets": targets,
        **runs,
    }
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"figures written to {path}")


class NodeProcess:
    """bench_find's server_process, with the key passphrase in the node's environment (the
    node signs heartbeats, as in production)."""

    def __init__(self, name: str, argv: list[str], target: str, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.args = (name, argv, target, log_dir)
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> bench_find.Server:
        name, argv, target, log_dir = self.args
        log_path = log_dir / f"{name}.log"
        env = bench_find._clean_env() | {"COUNTERPART_KEY_PASSPHRASE": PASSPHRASE} | self.env
        with open(log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        server = bench_find.Server(name, self.proc, target, log_path)
        try:
            bench_find.wait_serving(server)
        except BaseException:
            bench_find.stop_process(self.proc)
            raise
        return server

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            bench_find.stop_process(self.proc)


if __name__ == "__main__":
    sys.exit(main())
