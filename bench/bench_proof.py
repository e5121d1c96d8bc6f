"""Benchmark the serving side of a one-entry pull: GetConsistencyProof at 1,000,000 entries.

A peer that holds ``n - 1`` entries of a member asks this node for the proof that its tree
is a prefix of the ``n`` this node holds. The node computes it with
``Store.consistency_proof``: from the stored frontier nearest below ``n - 1`` (one row per
256 leaves, ``log_frontiers``) and the leaves after it. The baseline, in the same run and
the same process, is the computation the node did before: every leaf hash of the log read
(``Store.leaf_hashes``) and the proof computed from them (``merkle.consistency_proof``).

The log is made of random leaf hashes written straight into a fresh SQLite store, as
withheld entries (the proof reads nothing but leaf hashes; no signature is involved on this
side), with the frontier rows ``Store.append`` writes every 256 leaves. Reports CPU ms per proof (median of ``--repeat``), SQL statements
and leaf hashes read, for the new and the old computation, and checks both give the same
proof. ``--json OUT`` writes every figure.

Usage: python bench/bench_proof.py [--entries 1000000] [--repeat 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event

from counterpart_core import log, merkle, signing
from directory_server.storage import store as store_module
from directory_server.storage.models import CheckpointRow, EntryRow, LogFrontierRow
from directory_server.storage.store import Store, sqlite_url

MEMBER = "AA"


def build(data_dir: Path, entries: int, key: signing.SigningKey) -> Store:
    """A store whose member log holds ``entries`` random leaves, with the frontiers an append
    writes and a checkpoint over the whole log."""
    store = Store(sqlite_url(data_dir))
    tree = merkle.CompactRange()
    rows: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    now = datetime.now(UTC)
    with store.transaction() as s:
        for seq in range(1, entries + 1):
            h = secrets.token_bytes(32)
            tree.append(h)
            rows.append({"member": MEMBER, "seq": seq, "name": "", "kind": log.WITHHELD, "envelope": b"",
                         "leaf_hash": h, "publish_time": None, "restricted": True})
            if tree.size % store_module.FRONTIER_STEP == 0:
                steps.append({"member": MEMBER, "size": tree.size, "frontier": tree.frontier})
            if len(rows) == 50_000:
                s.execute(store_module._table(EntryRow).insert(), rows)
                rows = []
        if rows:
            s.execute(store_module._table(EntryRow).insert(), rows)
        s.execute(store_module._table(LogFrontierRow).insert(), steps)
        cp = log.build_checkpoint(MEMBER, entries, tree.root(), now, key, timedelta(days=1))
        s.add(CheckpointRow(member=MEMBER, size=entries, root_hash=tree.root(), issue_time=now,
                            expire_time=cp.expire_time, envelope=cp.envelope, frontier=tree.frontier))
    return store


def measure(store: Store, first: int, second: int, repeat: int, old: bool) -> dict[str, Any]:
    """CPU ms of each proof, statements and leaves read by the last one."""
    statements = [0]
    leaves = [0]
    original = store_module._leaf_range

    def count(*_args: Any) -> None:
        statements[0] += 1

    def leaf_range(*args: Any) -> list[bytes]:
        got = original(*args)
        leaves[0] += len(got)
        return got

    store_module._leaf_range = leaf_range
    event.listen(store.engine, "before_cursor_execute", count)
    cpu: list[float] = []
    proof: list[bytes] = []
    try:
        for _ in range(repeat):
            statements[0] = leaves[0] = 0
            c0 = time.process_time()
            if old:
                hashes = store.leaf_hashes(MEMBER, upto=second)
                leaves[0] = len(hashes)
                proof = merkle.consistency_proof(hashes, first)
            else:
                proof = store.consistency_proof(MEMBER, first, second)
            cpu.append((time.process_time() - c0) * 1e3)
    finally:
        store_module._leaf_range = original
        event.remove(store.engine, "before_cursor_execute", count)
    return {"cpu_ms_median": round(statistics.median(cpu), 3), "cpu_ms_all": [round(c, 2) for c in cpu],
            "sql_statements": statements[0], "leaves_read": leaves[0], "proof": [p.hex() for p in proof]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--old-repeat", type=int, default=3, help="repeats of the old, O(n), computation")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    key = signing.SigningKey.generate()
    with tempfile.TemporaryDirectory(prefix="counterpart-bench-proof-") as tmp:
        t0 = time.perf_counter()
        store = build(Path(tmp), a.entries, key)
        built = time.perf_counter() - t0
        try:
            n = a.entries
            cases = {f"{first}->{n}": first for first in (n - 1, n - 300, n // 2 + 7)}
            out: dict[str, Any] = {
                "entries": n, "frontier_step": store_module.FRONTIER_STEP, "build_s": round(built, 1),
                "loadavg_before": os.getloadavg(), "git_head": _git_head(), "cases": {},
            }
            for label, first in cases.items():
                new = measure(store, first, n, a.repeat, old=False)
                old = measure(store, first, n, a.old_repeat, old=True)
                assert new["proof"] == old["proof"], label
                out["cases"][label] = {"new": new, "old_full_computation": old,
                                       "ratio_old_over_new": round(old["cpu_ms_median"] / new["cpu_ms_median"], 1)}
                print(f"{label}: new {new['cpu_ms_median']} ms CPU, {new['sql_statements']} statements, "
                      f"{new['leaves_read']} leaves; old {old['cpu_ms_median']} ms, {old['leaves_read']} leaves",
                      flush=True)
            out["loadavg_after"] = os.getloadavg()
        finally:
            store.close()
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


def _git_head() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


if __name__ == "__main__":
    raise SystemExit(main())
