"""Benchmark a current FindCounterpart over a member with dated records against the fast path.

A current FindCounterpart over a member some of whose records carry an effective period is
answered from the as-of view of now (directory_server/asof.py), with the proofs of any
scheduled version beside the one in effect; over a member with none, from the node's
derived state directly (the fast path). This measures both in ONE run, on one node, with
the same question, so the figure that matters is their ratio:

1. Builds a GE node in a temporary directory (fresh keys, a one-member federation
   document), publishes sample_data/GE (which holds dated records), then a new version of
   the Ajara office that takes effect in 30 days, so the answer carries a pending-version
   proof and warning (``_add_pending``'s whole path); serves it over real gRPC on loopback
   (NodeServer, in this process).
2. For each concurrency (``--concurrency``, default "1,16") runs that many client threads
   calling FindCounterpart GE/mla.hearing.witness/Batumi in a loop for ``--duration``
   seconds after ``--warmup`` seconds: first through the dated path (as served), then
   through the fast path (``AsOfViews.dated`` answering False, so the very same request
   takes the current path; its answer then lacks the pending version's proof, which is
   what makes the dated path cost more, not the question), then the dated path again (so
   a drift of the machine during the run shows as a difference between the two).
3. Prints calls/s and latency percentiles per run and the dated/fast ratios; ``--json OUT``
   writes every figure.

The client threads share this process with the server: absolute figures are lower than
bench_find.py's (a separate server process); compare ratios within one run only.

Usage: python bench/bench_find_dated.py [--duration 5] [--concurrency 1,16] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from counterpart.v1 import directory_service_pb2 as ds
from counterpart_core import federation as fed
from counterpart_core import signing
from directory_client.client import DirectoryClient
from directory_server import asof
from directory_server.config import CONFIG_NAME, NodeConfig
from directory_server.node import Node
from directory_server.service.server import NodeServer

REPO = Path(__file__).resolve().parent.parent
PASSPHRASE = b"bench-passphrase"  # a key generated for this run, removed with its directory
QUESTION = ds.FindCounterpartRequest(
    requested_member="GE", request_type="mla.hearing.witness", place="Batumi", requesting_member="GE"
)


def make_node(root: Path) -> Node:
    """A GE node under ``root`` with the GE sample published, then a new version of the
    Ajara office (the one that answers for Batumi) that takes effect in 30 days: the
    current answer shows the version in effect and proves the scheduled one beside it."""
    now = datetime.now(UTC)
    root_key, member_key = signing.SigningKey.generate(), signing.SigningKey.generate()
    doc = fed.new_document("bench", [root_key.public_bytes], 1, now - timedelta(minutes=1), timedelta(days=365))
    fed.add_member(doc, "GE", "Member GE", [member_key.public_bytes], [])
    document = signing.sign_envelope(doc.SerializeToString(deterministic=True), signing.FEDERATION_TYPE, [root_key])
    data_dir = root / "node-GE"
    data_dir.mkdir()
    config = NodeConfig(data_dir=data_dir, member="GE")
    (data_dir / CONFIG_NAME).write_text(config.to_toml(), encoding="utf-8")
    signing.write_key_file(config.key_path, member_key, PASSPHRASE)
    node = Node(config)
    node.install_federation(document)
    records = root / "sample-GE"
    shutil.copytree(REPO / "sample_data" / "GE", records)
    node.publish(records, PASSPHRASE)
    authorities = records / "authorities.yaml"
    text = authorities.read_text(encoding="utf-8")
    start = text.index("- id: ajara-po\n")
    anchor = text.index("  parent: pgo\n", start) + len("  parent: pgo\n")
    later = (now + timedelta(days=30)).date().isoformat()
    authorities.write_text(text[:anchor] + f"  effective: {{from: {later}}}\n" + text[anchor:], encoding="utf-8")
    node.publish(records, PASSPHRASE)
    return node


def run(address: str, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    """``concurrency`` threads calling FindCounterpart for ``duration`` seconds after ``warmup``."""
    body = QUESTION.SerializeToString()
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start_at = time.monotonic() + warmup
    stop_at = start_at + duration

    def worker(i: int) -> None:
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_unary(
                "/counterpart.v1.DirectoryService/FindCounterpart",
                request_serializer=lambda b: b, response_deserializer=lambda b: b,
            )
            while (now := time.monotonic()) < stop_at:
                try:
                    call(body, timeout=10)
                except grpc.RpcError:
                    errors[i] += 1
                    continue
                if now >= start_at:
                    latencies[i].append(time.monotonic() - now)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=warmup + duration + 30)
    done = sorted(x for per in latencies for x in per)

    def pct(p: float) -> float:
        return round(1000 * done[min(len(done) - 1, int(p * len(done)))], 2) if done else 0.0

    return {
        "concurrency": concurrency, "calls": len(done), "errors": sum(errors),
        "calls_per_s": round(len(done) / duration, 1), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--json", type=Path)
    p.add_argument("--label", default="", help="what the run measures (saved in the JSON beside the commit)")
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-find-dated-") as tmp:
        node = make_node(Path(tmp))
        server = NodeServer(node, "127.0.0.1:0", access_log=False)
        server.start()
        try:
            # the dated path really is taken, and its answer (with the pending proof) verifies
            with DirectoryClient(server.address, federation=node.federation()) as client:
                resp, verified = client.find_counterpart(
                    requested_member=QUESTION.requested_member, request_type=QUESTION.request_type,
                    place=QUESTION.place, requesting_member=QUESTION.requesting_member,
                )
            if verified is None:
                raise SystemExit("the dated answer did not verify")
            pending = sum(1 for w in resp.warnings if "takes effect then" in w)
            original = asof.AsOfViews.dated
            results: dict[str, dict[int, dict[str, Any]]] = {"dated": {}, "fast": {}, "dated_again": {}}
            for c in levels:
                results["dated"][c] = run(server.address, c, args.warmup, args.duration)
                asof.AsOfViews.dated = lambda self, member, *_: False  # type: ignore[method-assign]
                try:
                    results["fast"][c] = run(server.address, c, args.warmup, args.duration)
                finally:
                    asof.AsOfViews.dated = original  # type: ignore[method-assign]
                results["dated_again"][c] = run(server.address, c, args.warmup, args.duration)
        finally:
            server.stop(grace=0)
            node.close()

    ratios = {
        c: round(min(results["dated"][c]["calls_per_s"], results["dated_again"][c]["calls_per_s"])
                 / results["fast"][c]["calls_per_s"], 3)
        for c in levels
    }
    print(f"pending-version warnings in the dated answer: {pending}")
    for c in levels:
        for path in ("dated", "fast", "dated_again"):
            r = results[path][c]
            print(f"c={c:<3} {path:<12} {r['calls_per_s']:>8} calls/s  p50 {r['p50_ms']} ms  "
                  f"p99 {r['p99_ms']} ms  errors {r['errors']}")
        print(f"c={c:<3} dated/fast (worse of the two dated runs): {ratios[c]}")
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=REPO, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "directory_server"], capture_output=True,
                               text=True, cwd=REPO, check=False).stdout.strip()
        out = {"commit": commit + ("-dirty" if dirty else ""), "label": args.label, "python": platform.python_version(), "duration_s": args.duration,
               "pending_warnings": pending, "results": results, "dated_over_fast": ratios}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
