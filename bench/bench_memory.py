"""Resident memory of a node that holds a million entries, idle and while it serves.

1. Uses the dataset in ``--data-dir`` (default ``/tmp/counterpart-bench-1m``; keep it
   outside the repository). If the directory holds no dataset yet, gen_dataset.py builds
   one there: ``--members`` (200) members x ``--authorities`` (4879) authorities, which
   with each member's contacts, rules and treaties makes 5,000 signed entries per member
   and 1,000,000 in all, each member written with one ``Store.append`` (a batch of
   5,000) into worker shards that are merged at the end. That takes several minutes; run
   ``gen_dataset.py`` in the background first if you like (see bench/README.md).
2. Starts ``counterpart-node serve --data-dir DIR --no-heartbeat --listen 127.0.0.1:PORT
   --log-level WARNING`` and waits for health SERVING.
3. Reads VmRSS, VmHWM (peak RSS) and Threads of the node process from /proc/<pid>/status
   after each step:
   - ``started``: right after SERVING, and ``idle`` ``--settle`` seconds later;
   - ``lookups``: ListMembers, ListAuthorities over every member (first page of 500)
     and of one member to its end, GetAuthority, SearchAuthorities and ``--finds``
     FindCounterpart calls (bench_find's request mix);
   - ``more_finds``: ``--finds`` more FindCounterpart calls of another mix (new questions:
     with every cache bounded, memory stays where it was);
   - ``one_range``: GetCheckpoints, then GetEntries of one member's whole log;
   - ``consistency``: GetConsistencyProof of every member, from half to full size;
   - ``all_ranges``: GetEntries of every member's whole log, one after the other
     (what a new peer pulls from this node): ``--all-ranges`` entries in all;
   - ``end``: ``--settle`` seconds after the last call.
   Responses are read and dropped; the client runs in this process.
4. Prints the table; ``--json OUT`` writes it with the dataset's size on disk.

Usage: python bench/bench_memory.py [--data-dir /tmp/counterpart-bench-1m] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import bench_find  # sibling scripts: python puts bench/ first on sys.path
import gen_dataset
import grpc

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import directory_service_pb2_grpc as ds_grpc
from counterpart.v1 import replication_service_pb2 as rs
from counterpart.v1 import replication_service_pb2_grpc as rs_grpc

DEFAULT_DATA = Path("/tmp/counterpart-bench-1m")
MAX_MESSAGE = 64 * 1024 * 1024


def status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM in MiB and the thread count of a process, from /proc/<pid>/status."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
        elif key == "Threads":
            out[key] = int(value)
    return out


def lookups(channel: grpc.Channel, manifest: dict[str, Any], finds: int) -> dict[str, Any]:
    stub = ds_grpc.DirectoryServiceStub(channel)
    members: list[str] = manifest["members"]
    t0 = time.perf_counter()
    n_members = len(stub.ListMembers(ds.ListMembersRequest(), timeout=60).members)
    first_page = stub.ListAuthorities(
        ds.ListAuthoritiesRequest(parent="members/-", page_size=500), timeout=60
    )
    listed = 0
    token = ""
    pages = 0
    while True:  # one member's authorities to the end
        page = stub.ListAuthorities(
            ds.ListAuthoritiesRequest(parent=f"members/{members[-1]}", page_size=500,
                                      page_token=token),
            timeout=60,
        )
        listed += len(page.authorities)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    name = first_page.authorities[0].name
    got = stub.GetAuthority(ds.GetAuthorityRequest(name=name), timeout=60)
    found = stub.SearchAuthorities(ds.SearchAuthoritiesRequest(query="prokuratura"), timeout=60)
    requests = bench_find.make_requests(manifest, finds, seed=1)
    for req in requests:
        stub.FindCounterpart(req, timeout=60)
    return {
        "list_members_first_page": n_members,
        "first_page_authorities": len(first_page.authorities),
        "one_member_authorities": listed,
        "one_member_pages": pages,
        "get_authority_ok": got.authority.name == name,
        "search_results": len(found.authorities),
        "finds": len(requests),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def more_finds(channel: grpc.Channel, manifest: dict[str, Any], finds: int) -> dict[str, Any]:
    """``finds`` FindCounterpart calls of another request mix (seed 2): questions new to the node."""
    stub = ds_grpc.DirectoryServiceStub(channel)
    t0 = time.perf_counter()
    for req in bench_find.make_requests(manifest, finds, seed=2):
        stub.FindCounterpart(req, timeout=60)
    seconds = time.perf_counter() - t0
    return {"finds": finds, "seconds": round(seconds, 2), "finds_per_s": round(finds / seconds, 1)}


def pull_range(stub: rs_grpc.ReplicationServiceStub, member: str, end: int) -> tuple[int, int]:
    """Stream member's entries 1..end; return (entries, bytes) received."""
    entries = size = 0
    for batch in stub.GetEntries(
        rs.GetEntriesRequest(member=member, start_seq=1, end_seq=end), timeout=600
    ):
        entries += len(batch.signed_entries)
        size += sum(map(len, batch.signed_entries))
    return entries, size


def nothing_new_pass(data_dir: Path, target: str, pid: int) -> list[dict[str, float]]:
    """A sync pass from this node against itself, twice: every member's checkpoint is
    offered and already held, so nothing is pulled; what is left is the per-member work of
    a pass (the offered and the held checkpoint verified, the peer's size noted). Writes
    200 rows of peer bookkeeping into the dataset."""
    from directory_server.config import load_config
    from directory_server.node import Node
    from directory_server.sync import Syncer

    node = Node(load_config(data_dir))
    syncer = Syncer(node)
    out = []
    try:
        for _ in range(2):
            server0 = bench_find.proc_cpu_seconds(pid)
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            report = syncer.sync_peer(target)
            wall = time.perf_counter() - t0
            if report.error or report.rejected or report.pulled:
                raise RuntimeError(f"unexpected sync report: {report}")
            out.append({
                "wall_s": round(wall, 3),
                "syncer_cpu_s": round(time.process_time() - cpu0, 3),
                "serving_node_cpu_s": round(bench_find.proc_cpu_seconds(pid) - server0, 3),
            })
    finally:
        syncer.close()
        node.close()
    print(f"nothing-new sync pass over {len(node.federation().members())} members: {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="RSS of a node holding a million entries.")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="dataset (made if empty)")
    p.add_argument("--members", type=int, default=200, help="members when generating")
    p.add_argument("--authorities", type=int, default=4879,
                   help="authorities per member when generating (4879: 5,000 entries/member)")
    p.add_argument("--finds", type=int, default=200, help="FindCounterpart calls among lookups")
    p.add_argument("--settle", type=float, default=10.0, help="seconds idle before 'idle', 'end'")
    p.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    a = p.parse_args(argv)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    version = bench_find.code_version()
    manifest_path = a.data_dir / gen_dataset.MANIFEST_NAME
    if not manifest_path.exists():
        print(f"generating {a.members} x {a.authorities} into {a.data_dir} (minutes) ...",
              flush=True)
        gen_dataset.generate(a.data_dir, a.members, a.authorities, os.cpu_count() or 1, False)
    manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
    disk = sum(f.stat().st_size for f in a.data_dir.glob("node.sqlite3*"))
    print(
        f"dataset: {len(manifest['members'])} members, {manifest['entries']:,} entries, "
        f"database {disk / 2**20:.1f} MiB (generated in {manifest['generation_seconds']} s)",
        flush=True,
    )
    steps: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    log_dir = Path(tempfile.mkdtemp(prefix="counterpart-bench-mem-"))
    target = f"127.0.0.1:{bench_find.free_port()}"
    argv_node = bench_find.node_argv(a.data_dir, target)
    options = [("grpc.max_receive_message_length", MAX_MESSAGE)]
    try:
        t_start = time.perf_counter()
        with bench_find.server_process("node", argv_node, target, log_dir) as node, \
                grpc.insecure_channel(target, options=options) as channel:
            pid = node.proc.pid

            def step(name: str, **extra: Any) -> None:
                s = {"step": name, **status(pid), "cpu_s": round(bench_find.proc_cpu_seconds(pid), 2),
                     **extra}
                steps.append(s)
                print(
                    f"{name:<12} VmRSS {s['VmRSS']:>8.1f} MiB  VmHWM {s['VmHWM']:>8.1f} MiB  "
                    f"threads {s['Threads']:>4}  node CPU {s['cpu_s']:.1f} s"
                    + (f"  {extra}" if extra else ""),
                    flush=True,
                )

            step("started", serving_after_s=round(time.perf_counter() - t_start, 2))
            time.sleep(a.settle)
            step("idle")
            details["lookups"] = lookups(channel, manifest, a.finds)
            step("lookups")
            # as many new questions again: with every cache bounded, memory stays where it was
            details["more_finds"] = more_finds(channel, manifest, a.finds)
            step("more_finds")
            repl = rs_grpc.ReplicationServiceStub(channel)
            vector = repl.GetCheckpoints(rs.GetCheckpointsRequest(), timeout=60)
            sizes = manifest["member_data"]
            first = manifest["members"][0]
            t0 = time.perf_counter()
            n, size = pull_range(repl, first, sizes[first]["entries"])
            details["one_range"] = {"checkpoints": len(vector.signed_checkpoints), "entries": n,
                                    "bytes": size, "seconds": round(time.perf_counter() - t0, 2)}
            step("one_range")
            t0 = time.perf_counter()
            for m in manifest["members"]:
                total = sizes[m]["entries"]
                repl.GetConsistencyProof(
                    rs.GetConsistencyProofRequest(member=m, first_size=total // 2,
                                                  second_size=total), timeout=60
                )
            details["consistency"] = {"proofs": len(manifest["members"]),
                                      "seconds": round(time.perf_counter() - t0, 2)}
            step("consistency")
            t0 = time.perf_counter()
            n = size = 0
            for m in manifest["members"]:
                got, b = pull_range(repl, m, sizes[m]["entries"])
                n += got
                size += b
            secs = time.perf_counter() - t0
            details["all_ranges"] = {"entries": n, "bytes": size, "seconds": round(secs, 1),
                                     "entries_per_s": round(n / secs, 1)}
            step("all_ranges", entries=n)
            details["nothing_new_sync_pass"] = nothing_new_pass(a.data_dir, target, pid)
            time.sleep(a.settle)
            step("end")
        print(json.dumps(details, indent=2))
        if a.json is not None:
            report = {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": bench_find.machine_info(),
                "code": version | {"changed_during_run": str(bench_find.code_version() != version)},
                "settings": {"finds": a.finds, "settle_s": a.settle},
                "dataset": {k: v for k, v in manifest.items() if k not in ("member_data", "database")}
                | {"database_bytes_now": disk},
                "steps": steps,
                "details": details,
            }
            a.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            print(f"figures written to {a.json}")
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for f in log_dir.glob("*"):
            f.unlink()
        log_dir.rmdir()


if __name__ == "__main__":
    sys.exit(main())
