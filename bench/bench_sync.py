"""Benchmark a full sync of one member's log into an empty node, against the raw crypto cost.

1. Builds a source node for one member (``AA``) whose log holds ``--entries`` signed
   entries (default 100,000): synthetic authority, contact, rule and treaty records as
   gen_dataset.py makes them (validated), each signed with the member's generated key
   by ``log.build_entry`` (in ``--jobs`` forked workers), written with ``Store.append`` in
   batches of ``--batch`` entries, each batch with a checkpoint over the log so far (the
   last one covers the whole log). By default every entry is a distinct record (padded
   with tombstones); with ``--records N``, about N records get new versions in turn (a
   history: ``--entries 1000000 --records 5000`` is DESIGN §9's 5,000 records a member
   with 200 versions each). The federation document (a generated root key; members
   ``AA`` and the target's ``AB``, no endpoints) is installed in both nodes. With
   ``--dataset DIR`` the source is built there once and copied by later runs with the
   same settings.
2. Baseline, in this process on one core: verifies the Ed25519 signature of every one of
   those envelopes (``Ed25519PublicKey.verify`` over ``signing.pae(payload_type,
   payload)``) and computes its leaf hash (``merkle.leaf_hash``); envelopes are parsed
   before the clock starts. Prints entries/s.
3. Serves the source with ``counterpart-node serve --no-heartbeat`` (the production
   ``NodeServer``) on a free loopback port, waits for health SERVING.
4. In a fresh process (so that its peak RSS is the sync's own), opens an empty target
   node (separate SQLite file) and times ``Syncer(node).sync_peer(source)``. The time is
   split by wrapping, in that process only, ``Syncer._stream`` (receive + parse of the
   gRPC batches + verify), ``RangeVerifier.add_batch`` and ``finish`` (verify, staging
   writes), ``Store.append`` / ``append_staged`` (commit) and the ``derive`` it calls.
   Reports entries/s, the ratio to the baseline, CPU seconds of target, of its signature
   workers and of the source, and VmHWM / VmRSS of the target (and the largest worker's
   peak). With ``--no-full-sync`` the target is a copy of the source's database instead.
5. Appends one more entry at the source, then times a second pass into the (now full)
   target in a fresh process: the cost of an incremental pull of one entry into a node
   that holds the whole log. Then a pass with nothing new. Then a target process that
   stays up (as a serving node does) pulls ``--follow-pulls`` entries appended one at a
   time, the CPU and SQL statements of each pull measured.
6. With ``--publish``, publishes one changed record (a rule with a new review date, a file
   holding it alone) at the source, in a fresh process and again warm, against the raw
   cost of signing and hashing one entry in the same process.
7. With ``--profile``, a further full sync into another empty node under cProfile; the
   top functions go to ``--profile-out`` (or stdout).

Usage: python bench/bench_sync.py [--entries 100000] [--records N] [--dataset DIR]
       [--publish] [--no-full-sync] [--json OUT] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import multiprocessing
import os
import pstats
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import bench_find  # sibling scripts: python puts bench/ first on sys.path
import gen_dataset
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import event

from counterpart.v1 import log_pb2
from counterpart_core import federation as fed
from counterpart_core import log, merkle, redaction, signing, spreadsheets, state, tls
from counterpart_core.records import Record, SourcedRecord
from counterpart_core.vocab import Vocabulary, default_vocabularies
from directory_server.config import CONFIG_NAME, NodeConfig
from directory_server.node import Node
from directory_server.security import TlsIdentity
from directory_server.storage.store import Store, sqlite_url

BENCH_DIR = Path(__file__).resolve().parent
SOURCE_MEMBER = "AA"
TARGET_MEMBER = "AB"
VALIDITY = timedelta(days=365)
TARGET_TIMEOUT_S = 3600.0


# --- memory --------------------------------------------------------------------------------


def proc_status_kib(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) and Threads of a process from /proc/<pid>/status."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def mib(kib: int | None) -> float:
    return round((kib or 0) / 1024, 1)


def db_bytes(data_dir: Path) -> int:
    return sum(f.stat().st_size for f in data_dir.glob("node.sqlite3*"))


# --- the source node -------------------------------------------------------------------------


def authorities_for(entries: int) -> int:
    """The number of authorities for which gen_dataset's member has at most ``entries``
    records (authorities + 2 + one contact per subdivision + 10 treaties + 10 rules)."""
    for a in range(max(4, entries - 22), 3, -1):
        subdivisions = gen_dataset.subdivision_count(a)
        total = a + 2 + min(subdivisions, a - 4) + 20
        if total <= entries:
            return a
    raise SystemExit("--entries must be at least 30")


def federation_envelope(
    keys: dict[str, signing.SigningKey], root: signing.SigningKey, now: datetime,
    certificates: dict[str, bytes] | None = None, entries: int = 0,
) -> bytes:
    doc = fed.new_document("bench", [root.public_bytes], 1, now, VALIDITY)
    # room past the log's size for the entries the run appends (the default limit is 1,000,000)
    doc.limits.max_entries_per_member = max(doc.limits.max_entries_per_member, 2 * entries)
    for code, key in keys.items():
        # no endpoints: neither node has peers besides the ones we point it at
        certs = [certificates[code]] if certificates and code in certificates else []
        fed.add_member(doc, code, f"Synthetic member {code}", [key.public_bytes], [], certs)
    return signing.sign_envelope(
        doc.SerializeToString(deterministic=True), signing.FEDERATION_TYPE, [root]
    )


def make_tls(directory: Path, now: datetime) -> dict[str, str]:
    """TLS keys (encrypted with a passphrase made for this run) and self-signed certificates
    of both nodes; the environment that carries the passphrase to the target process."""
    passphrase = secrets.token_urlsafe(16)
    for member in (SOURCE_MEMBER, TARGET_MEMBER):
        key = tls.generate_key()
        signing.write_private_key(directory / f"{member}-key.pem", key, passphrase.encode())
        (directory / f"{member}-cert.pem").write_bytes(
            tls.pem(tls.self_signed_certificate(key, member, ["127.0.0.1"], now))
        )
    return {"BENCH_TLS_PASSPHRASE": passphrase}


def make_node(data_dir: Path, member: str, federation: bytes, now: datetime) -> Node:
    data_dir.mkdir(parents=True, exist_ok=True)
    config = NodeConfig(data_dir=data_dir, member=member, listen="127.0.0.1:0")
    (data_dir / CONFIG_NAME).write_text(config.to_toml(), encoding="utf-8")
    node = Node(config, store=Store(sqlite_url(data_dir)), clock=lambda: now)
    node.install_federation(federation)
    return node


# What the signing workers share (set before the pool forks): the records and the key.
_GEN: dict[str, Any] = {}


def _version_of(seq: int) -> tuple[str, Record | None, str]:
    """(name, record or None for a tombstone, deletion reason) of entry ``seq``: the records
    first, then either tombstones of the first records (``history`` off: every entry a
    distinct record, as the default run has it) or new versions of the records in turn,
    each with another review date (``history`` on: a few thousand records with many
    versions each, DESIGN §9's realistic history)."""
    records: list[SourcedRecord] = _GEN["records"]
    if seq <= len(records):
        r = records[seq - 1]
        return r.name, r.record, ""
    if not _GEN["history"]:
        return records[seq - len(records) - 1].name, None, "bench padding"
    r = records[(seq - 1) % len(records)]
    record = type(r.record)()
    record.CopyFrom(r.record)
    version = (seq - 1) // len(records)
    if hasattr(record, "review_date"):  # a gazetteer record has none: the same content again
        record.review_date = (datetime(2020, 1, 1) + timedelta(days=version)).date().isoformat()
    return r.name, record, ""


def _sign_range(bounds: tuple[int, int]) -> list[tuple[bytes, bytes]]:
    """(envelope, leaf hash) of entries first..last, in a signing worker."""
    key: signing.SigningKey = _GEN["key"]
    now: datetime = _GEN["now"]
    out = []
    for seq in range(bounds[0], bounds[1] + 1):
        name, record, reason = _version_of(seq)
        e = log.build_entry(SOURCE_MEMBER, seq, name, record, now, key, reason)
        out.append((e.envelope, e.leaf_hash))
    return out


def _as_entry(seq: int, envelope: bytes, leaf: bytes) -> log.LogEntry:
    entry = log_pb2.Entry.FromString(signing.parse_envelope(envelope).payload)
    body = entry.WhichOneof("body") or "deletion"
    return log.LogEntry(SOURCE_MEMBER, seq, entry.name, body, envelope, leaf, entry)


def build_source(
    data_dir: Path, entries: int, batch: int, key: signing.SigningKey, federation: bytes,
    now: datetime, records_wanted: int | None = None, jobs: int = 1,
) -> tuple[dict[str, Any], list[SourcedRecord]]:
    """Write ``entries`` signed entries of SOURCE_MEMBER into a new node at ``data_dir``:
    with ``records_wanted``, that many records with versions in turn (a history), else
    as many distinct records as fit, padded with tombstones. Signed by ``jobs`` forked
    workers, stored by Store.append in batches, each with its checkpoint."""
    t0 = time.perf_counter()
    spec = gen_dataset.MemberSpec(
        0, SOURCE_MEMBER, authorities_for(records_wanted or entries), gen_dataset._raw_private(key), now
    )
    records, _ = gen_dataset.build_records(spec, Vocabulary(default_vocabularies()))
    t1 = time.perf_counter()
    _GEN.update(records=records, history=records_wanted is not None, key=key, now=now)
    node = make_node(data_dir, SOURCE_MEMBER, federation, now)
    compact = merkle.CompactRange()
    current: dict[str, state.CurrentEntry] = {}  # each name's latest entry, for the state roots
    sign_s = append_s = 0.0
    step = 1000
    ranges = [(a, min(a + step - 1, entries)) for a in range(1, entries + 1, step)]
    # the workers take SIGTERM's default: the handler main() installs would leave a worker
    # that is blocked in a lock unkillable, and Pool.terminate waiting for it forever
    pool = multiprocessing.get_context("fork").Pool(
        jobs, initializer=signal.signal, initargs=(signal.SIGTERM, signal.SIG_DFL)
    ) if jobs > 1 else None
    try:
        signed = pool.imap(_sign_range, ranges) if pool is not None else map(_sign_range, ranges)
        seq = 0
        ts = time.perf_counter()
        chunk: list[log.LogEntry] = []
        for part in signed:
            for envelope, leaf in part:
                seq += 1
                e = _as_entry(seq, envelope, leaf)
                chunk.append(e)
                compact.append(e.leaf_hash)
                current[e.name] = state.CurrentEntry(
                    e.name, e.seq, e.leaf_hash, e.kind == "deletion", redaction.record_members_only(e.record)
                )
            if len(chunk) < batch and seq < entries:
                continue
            cp = log.build_checkpoint(
                SOURCE_MEMBER, seq, compact.root(), now, key, VALIDITY, state=state.state_roots(current.values())
            )
            ta = time.perf_counter()
            node.store.append(SOURCE_MEMBER, seq - len(chunk), chunk, cp)
            sign_s += ta - ts
            ts = time.perf_counter()
            append_s += ts - ta
            chunk = []
            print(f"  ... {seq} entries stored", flush=True)
        size = node.store.log_size(SOURCE_MEMBER)
        assert size == entries, (size, entries)
        held = node.held_checkpoint(SOURCE_MEMBER)
        assert held is not None and held.size == entries
    finally:
        if pool is not None:
            pool.terminate()
        node.close()
    info = {
        "entries": entries,
        "records": len(records),
        "history": records_wanted is not None,
        "tombstones": 0 if records_wanted is not None else max(0, entries - len(records)),
        "append_batch": batch,
        "signing_jobs": jobs,
        "build_validate_s": round(t1 - t0, 2),
        "sign_s": round(sign_s, 2),
        "store_append_s": round(append_s, 2),
        "database_bytes": db_bytes(data_dir),
        "current_records": len([c for c in current.values() if not c.deleted]),
    }
    return info, records


def append_one(data_dir: Path, key: signing.SigningKey, now: datetime) -> int:
    """Append one changed record to the source's log (a new review date) with its checkpoint;
    the serving source process reads it from the same SQLite file."""
    store = Store(sqlite_url(data_dir))
    try:
        tree = store.frontier(SOURCE_MEMBER)
        size = tree.size
        seqs = store.current_seqs(SOURCE_MEMBER)
        name = next(n for n in sorted(seqs) if "/authorities/" in n)
        stored = _as_entry(seqs[name], store.envelope(SOURCE_MEMBER, seqs[name]) or b"", b"")
        assert stored.record is not None
        record = type(stored.record)()
        record.CopyFrom(stored.record)
        record.review_date = "2026-12-01"  # type: ignore[union-attr]
        e = log.build_entry(SOURCE_MEMBER, size + 1, name, record, now, key)
        tree.append(e.leaf_hash)
        # signing the state roots, as every checkpoint a node publishes does (the target checks them)
        roots = store.state_roots_after(SOURCE_MEMBER, [
            state.CurrentEntry(name, e.seq, e.leaf_hash, False, redaction.record_members_only(e.record))
        ])
        cp = log.build_checkpoint(SOURCE_MEMBER, size + 1, tree.root(), now, key, VALIDITY, state=roots)
        store.append(SOURCE_MEMBER, size, [e], cp)
        return size + 1
    finally:
        store.close()


# --- baseline ------------------------------------------------------------------------------


def raw_baseline(data_dir: Path, public_key: bytes, limit: int) -> dict[str, Any]:
    """One core: Ed25519 verify over PAE plus leaf hash, for the first ``limit`` envelopes of
    the log (a rate: 200,000 of a 1M log give it within noise, in a fifth of the time)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    store = Store(sqlite_url(data_dir))
    try:
        envelopes = [env for _, env in store.envelopes(SOURCE_MEMBER, 1, limit)]
    finally:
        store.close()
    parsed = [signing.parse_envelope(env) for env in envelopes]
    items = [(env, p.payload_type, p.payload, p.signatures[0].sig) for env, p in zip(
        envelopes, parsed, strict=True)]
    pub = Ed25519PublicKey.from_public_bytes(public_key)
    pae, leaf_hash = signing.pae, merkle.leaf_hash
    n = len(items)

    t0 = time.perf_counter()
    for env, ptype, payload, sig in items:
        pub.verify(sig, pae(ptype, payload))
        leaf_hash(env)
    both = time.perf_counter() - t0

    t0 = time.perf_counter()
    for _env, ptype, payload, sig in items:
        pub.verify(sig, pae(ptype, payload))
    verify_only = time.perf_counter() - t0

    t0 = time.perf_counter()
    for env, _ptype, _payload, _sig in items:
        leaf_hash(env)
    hash_only = time.perf_counter() - t0

    # for reference: what parsing every envelope and its entry costs (verify_entry does both)
    from counterpart.v1 import log_pb2

    t0 = time.perf_counter()
    for env in envelopes:
        e = log_pb2.Envelope()
        e.ParseFromString(env)
        entry = log_pb2.Entry()
        entry.ParseFromString(e.payload)
    parse_s = time.perf_counter() - t0

    return {
        "entries": n,
        "envelope_bytes_avg": round(sum(map(len, envelopes)) / n, 1),
        "verify_and_hash_s": round(both, 3),
        "verify_and_hash_per_s": round(n / both, 1),
        "verify_us": round(verify_only / n * 1e6, 2),
        "leaf_hash_us": round(hash_only / n * 1e6, 3),
        "parse_envelope_and_entry_us": round(parse_s / n * 1e6, 2),
    }


# --- the target process --------------------------------------------------------------------


class Timers:
    """Accumulated wall time of wrapped functions, by label."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, owner: Any, name: str, label: str) -> None:
        inner: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0
                self.calls[label] = self.calls.get(label, 0) + 1

        setattr(owner, name, timed)


def target_main(a: argparse.Namespace) -> int:
    """One sync pass of a target node from the source; figures as JSON on stdout."""
    from counterpart_core import replication as rep
    from directory_server import sync as sync_module
    from directory_server.storage import store as store_module

    data_dir: Path = a.data_dir
    federation = Path(a.federation).read_bytes()
    now = datetime.now(UTC)
    fresh = not (data_dir / CONFIG_NAME).exists()
    node = make_node(data_dir, TARGET_MEMBER, federation, now) if fresh else Node(
        NodeConfig(data_dir=data_dir, member=TARGET_MEMBER), clock=lambda: now
    )
    held_before = node.store.log_size(SOURCE_MEMBER)
    timers = Timers()
    if not a.profile:
        timers.wrap(sync_module.Syncer, "_stream", "stream")
        timers.wrap(rep.RangeVerifier, "add_batch", "verify_batches")
        timers.wrap(rep.RangeVerifier, "finish", "verify_finish")
        timers.wrap(store_module.Store, "append", "commit")
        timers.wrap(store_module.Store, "append_staged", "commit")
        timers.wrap(store_module.Store, "stage", "stage_writes")
        timers.wrap(store_module.Store, "_check_state", "commit_state_roots")
        timers.wrap(store_module, "derive", "commit_derive")
        timers.wrap(store_module.Store, "leaf_hashes", "read_leaf_hashes")
        timers.wrap(merkle.CompactRange, "from_leaf_hashes", "compact_range_rebuild")
        timers.wrap(node, "held_checkpoint", "held_checkpoint")
    syncer = sync_module.Syncer(node)
    if a.tls_dir is not None:  # present the target's certificate (mutual TLS on a peer listener)
        tls_key = signing.read_private_key(a.tls_dir / "AB-key.pem", os.environ["BENCH_TLS_PASSPHRASE"].encode())
        assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
        syncer.tls_identity = TlsIdentity(tls_key, tls.der((a.tls_dir / "AB-cert.pem").read_bytes()))
    mem_before = proc_status_kib()
    profiler = cProfile.Profile() if a.profile else None
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    report = syncer.sync_peer(a.source)
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    mem_after = proc_status_kib()
    # each worker's own peak, read while it runs (the children's ru_maxrss of getrusage also
    # counts this process's RSS, which a worker's fork shared until its exec)
    workers_hwm = [proc_status_kib(pid).get("VmHWM", 0) for pid in syncer.signatures.pids()]
    syncer.signatures.close(wait=True)  # the workers' CPU is counted once they are joined
    children = os.times()
    workers_cpu = children.children_user + children.children_system
    workers_peak_kib = max(workers_hwm, default=0)
    syncer.close()
    size = node.store.log_size(SOURCE_MEMBER)
    held = node.held_checkpoint(SOURCE_MEMBER)
    node.close()
    out: dict[str, Any] = {
        "held_before": held_before,
        "held_after": size,
        "checkpoint_size_after": held.size if held else None,
        "pulled": report.pulled,
        "refreshed": report.refreshed,
        "rejected": report.rejected,
        "error": report.error,
        "wall_s": round(elapsed, 3),
        "cpu_s": round(cpu, 2),
        "cpu_ms": round(cpu * 1e3, 2),
        "rss_before_mib": mib(mem_before.get("VmRSS")),
        "rss_after_mib": mib(mem_after.get("VmRSS")),
        "peak_rss_mib": mib(mem_after.get("VmHWM")),
        "signature_workers": syncer.signatures.workers,
        "workers_cpu_s": round(workers_cpu, 2),
        "largest_worker_peak_rss_mib": mib(workers_peak_kib) if workers_cpu else None,
        "workers_peak_rss_mib": [mib(k) for k in workers_hwm],
        # an upper bound of the node's processes together: each one's peak, added up
        "node_processes_peak_rss_sum_mib": mib(mem_after.get("VmHWM", 0) + sum(workers_hwm)),
        "database_bytes": db_bytes(data_dir),
        "split_s": {k: round(v, 3) for k, v in sorted(timers.seconds.items())},
        "split_calls": dict(sorted(timers.calls.items())),
    }
    if profiler is not None:
        buf = io.StringIO()
        stats = pstats.Stats(profiler, stream=buf)
        stats.strip_dirs().sort_stats("cumulative").print_stats(a.top)
        stats.sort_stats("tottime").print_stats(a.top)
        out["profile"] = buf.getvalue()
    print(json.dumps(out))
    return 0


PUBLISH_PASSPHRASE = b"bench passphrase"  # of a key made for the run, in its work directory


def publish_main(a: argparse.Namespace) -> int:
    """Publish one changed record (a file holding it alone, with a new review date) at the
    source node, twice: the first in a fresh process (its state trees are read from the
    stored state snapshot), the second warm. Node CPU of each, and the raw cost of signing
    and hashing one entry in the same process as the baseline. JSON on stdout."""
    data_dir: Path = a.data_dir
    node = Node(NodeConfig(data_dir=data_dir, member=SOURCE_MEMBER, key_file="bench-source.key"))
    key = node.signing_key(PUBLISH_PASSPHRASE)
    size_before = node.store.log_size(SOURCE_MEMBER)
    seqs = node.store.current_seqs(SOURCE_MEMBER)
    # a rule: the synthetic authorities carry the member code "AA" as their address's country,
    # which publishing refuses (not an ISO 3166 code); a rule has no address
    name = next(n for n in sorted(seqs) if "/rules/" in n)
    envelope = node.store.envelope(SOURCE_MEMBER, seqs[name])
    assert envelope is not None
    record = log.verify_entry(envelope, SOURCE_MEMBER, seqs[name], node.federation()).record
    assert record is not None
    runs = []
    for i, date in enumerate(("2027-01-01", "2027-01-02")):
        changed = type(record)()
        changed.CopyFrom(record)
        changed.review_date = date  # type: ignore[union-attr]
        folder = data_dir.parent / f"publish-{i}"
        shutil.rmtree(folder, ignore_errors=True)
        for written in spreadsheets.write_csv([changed], SOURCE_MEMBER, folder):
            if written.name != "rules.csv":
                written.unlink()  # an empty sheet of a kind would say the files hold (none of) that kind
        cpu0, t0 = time.process_time(), time.perf_counter()
        plan = node.publish(folder, PUBLISH_PASSPHRASE)
        runs.append({
            "cpu_ms": round((time.process_time() - cpu0) * 1e3, 2),
            "wall_ms": round((time.perf_counter() - t0) * 1e3, 2),
            "appended": plan.appended, "changed": len(plan.changed), "checkpoint_size": plan.checkpoint_size,
        })
    n = 200
    cpu0 = time.process_time()
    for i in range(n):
        e = log.build_entry(SOURCE_MEMBER, size_before + 1, name, record, datetime.now(UTC), key)
        merkle.leaf_hash(e.envelope)
    sign_ms = (time.process_time() - cpu0) / n * 1e3
    node.close()
    print(json.dumps({
        "log_size_before": size_before, "records": len(seqs), "record": name,
        "first_publish_fresh_process": runs[0], "second_publish_warm": runs[1],
        "baseline_sign_and_hash_one_entry_cpu_ms": round(sign_ms, 3),
    }))
    return 0


def follow_main(a: argparse.Namespace) -> int:
    """A running node's view of one-entry pulls: one pass with nothing new (channel,
    federation document, checkpoints read once, as a node that has been serving), then, for
    each line on stdin (the main process has appended one entry at the source meanwhile),
    one pass, its CPU measured. The first such pull also reads the member's state trees from
    the derived records (once per process); the next ones find them in memory."""
    from directory_server import sync as sync_module

    node = Node(NodeConfig(data_dir=a.data_dir, member=TARGET_MEMBER), clock=lambda: datetime.now(UTC))
    syncer = sync_module.Syncer(node)
    syncer.sync_peer(a.source)
    pulls = []
    print("READY", flush=True)
    statements = [0]

    def count(*_args: Any) -> None:
        statements[0] += 1

    event.listen(node.store.engine, "before_cursor_execute", count)
    for _line in sys.stdin:
        statements[0] = 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        report = syncer.sync_peer(a.source)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        pulls.append({"pulled": report.pulled, "cpu_ms": round(cpu * 1e3, 2), "wall_ms": round(wall * 1e3, 2),
                      "sql_statements": statements[0], "error": report.error, "rejected": report.rejected})
        print("READY", flush=True)
    syncer.close()
    node.close()
    print(json.dumps(pulls))
    return 0


def run_follow(source: str, data_dir: Path, source_dir: Path, key: signing.SigningKey, now: datetime,
               pulls: int) -> list[dict[str, Any]]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--role", "follow", "--source", source,
            "--data-dir", str(data_dir)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=bench_find._clean_env())
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "READY"
        for _ in range(pulls):
            append_one(source_dir, key, now)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "READY"
        proc.stdin.close()
        out: list[dict[str, Any]] = json.loads(proc.stdout.read().strip().splitlines()[-1])
        return out
    finally:
        proc.wait(timeout=60)


def run_target(
    source: str, data_dir: Path, federation_file: Path, profile: bool = False, top: int = 30,
    source_pid: int | None = None, tls_dir: Path | None = None, env: dict[str, str] | None = None,
) -> dict[str, Any]:
    argv = [
        sys.executable, str(Path(__file__).resolve()), "--role", "target", "--source", source,
        "--data-dir", str(data_dir), "--federation", str(federation_file), "--top", str(top),
    ]
    if tls_dir is not None:
        argv += ["--tls-dir", str(tls_dir)]
    if profile:
        argv.append("--profile")
    src0 = bench_find.proc_cpu_seconds(source_pid) if source_pid else 0.0
    busy0 = bench_find.system_busy_seconds()
    t0 = time.perf_counter()
    done = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=TARGET_TIMEOUT_S,
        env=bench_find._clean_env() | (env or {}),
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"target process failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = round(wall, 2)
    if source_pid:
        result["source_cpu_s"] = round(bench_find.proc_cpu_seconds(source_pid) - src0, 2)
    # CPU of everything else on the machine: the process's startup is in both terms
    result["machine_busy_s"] = round(bench_find.system_busy_seconds() - busy0, 2)
    return result


# --- main ----------------------------------------------------------------------------------


def describe_pass(name: str, r: dict[str, Any], entries: int) -> str:
    rate = entries / r["wall_s"] if r["wall_s"] and entries else 0.0
    return (
        f"{name}: {r['held_before']} -> {r['held_after']} entries in {r['wall_s']:.3f} s"
        + (f" = {rate:,.0f} entries/s" if entries > 1 else "")
        + f"; CPU target {r['cpu_s']:.1f} s, source {r.get('source_cpu_s', 0):.1f} s; "
        f"RSS before {r['rss_before_mib']} MiB, peak {r['peak_rss_mib']} MiB"
        + (f"; signature workers CPU {r['workers_cpu_s']} s, largest peak RSS {r['largest_worker_peak_rss_mib']} MiB"
           f"; puller and workers together at most {r.get('node_processes_peak_rss_sum_mib')} MiB"
           if r.get("workers_cpu_s") else "")
        + (f"; error {r['error']}" if r["error"] else "")
        + (f"; rejected {r['rejected']}" if r["rejected"] else "")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Benchmark a full sync of one member's log.")
    p.add_argument("--entries", type=int, default=100_000, help="entries in the source's log")
    p.add_argument("--batch", type=int, default=5000, help="entries per Store.append at the source")
    p.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    p.add_argument("--profile", action="store_true", help="also profile a full sync (cProfile)")
    p.add_argument("--profile-out", type=Path, default=None, help="write the profile text here")
    p.add_argument("--top", type=int, default=30, help="functions listed in the profile")
    p.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it")
    p.add_argument("--records", type=int, default=None,
                   help="a history: this many records (about), each in many versions, instead of distinct records")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes that sign the source's entries")
    p.add_argument("--dataset", type=Path, default=None,
                   help="build the source here once and reuse it in later runs with the same settings (copied)")
    p.add_argument("--no-full-sync", action="store_true",
                   help="make the target a copy of the source's database instead of a full sync (then pull one entry)")
    p.add_argument("--publish", action="store_true", help="also publish one changed record at the source")
    p.add_argument("--follow-pulls", type=int, default=5, help="one-entry pulls into a running target node")
    p.add_argument("--baseline-entries", type=int, default=200_000, help="entries the one-core baseline verifies")
    # internal: the target process
    p.add_argument("--role", choices=["main", "target", "publish", "follow"], default="main", help=argparse.SUPPRESS)
    p.add_argument("--source", default="", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--federation", default="", help=argparse.SUPPRESS)
    p.add_argument("--tls-dir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--tls", action="store_true",
                   help="also sync over TLS (anonymous, public listener) and mutual TLS (peer listener)")
    a = p.parse_args(argv)
    if a.role == "target":
        return target_main(a)
    if a.role == "publish":
        return publish_main(a)
    if a.role == "follow":
        return follow_main(a)
    if a.entries < 30:
        raise SystemExit("--entries must be at least 30")

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    version = bench_find.code_version()
    work = a.keep or Path(tempfile.mkdtemp(prefix="counterpart-bench-sync-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        tls_dir = work / "tls"
        tls_env = make_tls(tls_dir, now) if a.tls else {}
        certificates = {
            m: tls.der((tls_dir / f"{m}-cert.pem").read_bytes()) for m in (SOURCE_MEMBER, TARGET_MEMBER)
        } if a.tls else None
        source_dir = work / "source"
        if source_dir.exists():
            shutil.rmtree(source_dir)
        settings = {"entries": a.entries, "records": a.records, "tls": a.tls, "limit": "2x entries"}
        dataset = a.dataset
        meta = json.loads((dataset / "meta.json").read_text()) if dataset and (dataset / "meta.json").exists() else None
        if dataset is not None and meta is not None and meta["settings"] == settings:
            print(f"reusing the source built in {dataset} ({meta['source']['entries']} entries)", flush=True)
            shutil.copytree(dataset / "source", source_dir)
            envelope = (dataset / "federation.bin").read_bytes()
            source_key = signing.read_key_file(source_dir / "bench-source.key", PUBLISH_PASSPHRASE)
            source_info = meta["source"] | {"reused_from_dataset": True}
            now = datetime.fromisoformat(meta["now"])
        else:
            source_key = signing.SigningKey.generate()
            keys = {SOURCE_MEMBER: source_key, TARGET_MEMBER: signing.SigningKey.generate()}
            envelope = federation_envelope(keys, signing.SigningKey.generate(), now, certificates, a.entries)
            print(f"building the source: {a.entries} entries of {SOURCE_MEMBER} ...", flush=True)
            source_info, _records = build_source(
                source_dir, a.entries, a.batch, source_key, envelope, now, a.records, a.jobs
            )
            signing.write_key_file(source_dir / "bench-source.key", source_key, PUBLISH_PASSPHRASE)
            config = NodeConfig(data_dir=source_dir, member=SOURCE_MEMBER, listen="127.0.0.1:0",
                                key_file="bench-source.key")
            (source_dir / CONFIG_NAME).write_text(config.to_toml(), encoding="utf-8")
            if dataset is not None:
                shutil.rmtree(dataset, ignore_errors=True)
                dataset.mkdir(parents=True)
                shutil.copytree(source_dir, dataset / "source")
                (dataset / "federation.bin").write_bytes(envelope)
                (dataset / "meta.json").write_text(json.dumps(
                    {"settings": settings, "source": source_info, "now": now.isoformat()}, indent=2))
        federation_file = work / "federation.bin"
        federation_file.write_bytes(envelope)
        print(
            f"  built+validated {source_info['build_validate_s']} s, signed "
            f"{source_info['sign_s']} s, Store.append {source_info['store_append_s']} s, "
            f"database {source_info['database_bytes'] / 2**20:.1f} MiB",
            flush=True,
        )
        baseline = raw_baseline(source_dir, source_key.public_bytes, a.baseline_entries)
        print(
            f"baseline (one core): Ed25519 verify + leaf hash of {baseline['entries']} envelopes "
            f"({baseline['envelope_bytes_avg']:.0f} B avg) in {baseline['verify_and_hash_s']} s = "
            f"{baseline['verify_and_hash_per_s']:,.0f} entries/s (verify "
            f"{baseline['verify_us']} us, hash {baseline['leaf_hash_us']} us, parse "
            f"{baseline['parse_envelope_and_entry_us']} us per entry)",
            flush=True,
        )
        target = f"127.0.0.1:{bench_find.free_port()}"
        passes: dict[str, dict[str, Any]] = {}
        profile_text = ""
        argv_node = bench_find.node_argv(source_dir, target)
        with bench_find.server_process("source", argv_node, target, work) as source:
            pid = source.proc.pid
            if a.no_full_sync:
                # the target holds what the source holds (a copy of its database), as after a full sync
                # not the serving source's wake sockets (directory_server.wake), which cannot be copied
                shutil.copytree(source_dir, work / "target", ignore=shutil.ignore_patterns("wake"))
                (work / "target" / "bench-source.key").unlink()
                (work / "target" / CONFIG_NAME).write_text(
                    NodeConfig(data_dir=work / "target", member=TARGET_MEMBER).to_toml(), encoding="utf-8")
            full = run_target(target, work / "target", federation_file, source_pid=pid)
            passes["full"] = full
            print(describe_pass("full sync" if not a.no_full_sync else "nothing new (a copy)", full, a.entries),
                  flush=True)
            split = full["split_s"]
            stream, verify = split.get("stream", 0.0), split.get("verify_batches", 0.0)
            verify += split.get("verify_finish", 0.0)
            commit, derive_s = split.get("commit", 0.0), split.get("commit_derive", 0.0)
            other = full["wall_s"] - stream - split.get("verify_finish", 0.0) - commit
            print(
                f"  split: receive+parse {stream - split.get('verify_batches', 0.0):.2f} s, "
                f"verify {verify:.2f} s, commit {commit:.2f} s (of which derive "
                f"{derive_s:.2f} s), other {other:.2f} s",
                flush=True,
            )
            new_size = append_one(source_dir, source_key, now)
            inc = run_target(target, work / "target", federation_file, source_pid=pid)
            passes["incremental_one_entry"] = inc
            print(describe_pass(f"incremental (1 entry, to {new_size})", inc, 1)
                  + f"; target CPU {inc['cpu_ms']} ms (target < 20 ms)", flush=True)
            noop = run_target(target, work / "target", federation_file, source_pid=pid)
            passes["nothing_new"] = noop
            print(describe_pass("nothing new", noop, 0), flush=True)
            follow = run_follow(target, work / "target", source_dir, source_key, now, a.follow_pulls)
            passes["running_node_one_entry_pulls"] = {"pulls": follow}
            print("one-entry pulls into a running node (CPU ms, SQL statements): " + ", ".join(
                f"{f['cpu_ms']} ms/{f['sql_statements']}" for f in follow) + " (target < 20 ms; the first one "
                "reads the state trees)", flush=True)
            if a.profile:
                prof = run_target(
                    target, work / "target-profiled", federation_file, profile=True, top=a.top,
                    source_pid=pid,
                )
                profile_text = prof.pop("profile", "")
                passes["full_profiled"] = prof
                print(describe_pass("full sync under cProfile", prof, new_size), flush=True)
        published: dict[str, Any] = {}
        if a.publish:
            argv_pub = [sys.executable, str(Path(__file__).resolve()), "--role", "publish", "--data-dir",
                        str(source_dir)]
            done = subprocess.run(argv_pub, check=False, capture_output=True, text=True, timeout=TARGET_TIMEOUT_S,
                                  env=bench_find._clean_env())
            if done.returncode != 0:
                raise RuntimeError(f"publish process failed ({done.returncode}):\n{done.stderr[-4000:]}")
            published = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"publish of one changed record onto {published['log_size_before']} entries "
                f"({published['records']} records): CPU {published['first_publish_fresh_process']['cpu_ms']} ms "
                f"(fresh process), {published['second_publish_warm']['cpu_ms']} ms (warm); target < 100 ms; "
                f"baseline sign+hash of one entry {published['baseline_sign_and_hash_one_entry_cpu_ms']} ms",
                flush=True,
            )
        tls_cost: dict[str, Any] = {}
        if a.tls:
            # the same source, served over TLS: a public listener (no client certificate: the
            # target is anonymous, as the plaintext pass) and a peer listener (mutual TLS: the
            # target is a member node and receives members-only entries whole)
            public = f"127.0.0.1:{bench_find.free_port()}"
            peer = f"127.0.0.1:{bench_find.free_port()}"
            server_env = {
                "COUNTERPART_TLS": "on", "COUNTERPART_TLS_KEY_FILE": str(tls_dir / f"{SOURCE_MEMBER}-key.pem"),
                "COUNTERPART_TLS_CERT_FILE": str(tls_dir / f"{SOURCE_MEMBER}-cert.pem"),
                "COUNTERPART_PEER_LISTEN": peer, "COUNTERPART_KEY_PASSPHRASE": tls_env["BENCH_TLS_PASSPHRASE"],
            }
            roots = (tls_dir / f"{SOURCE_MEMBER}-cert.pem").read_bytes()
            with bench_find.server_process(
                "source-tls", bench_find.node_argv(source_dir, public), public, work, server_env, roots
            ) as source:
                pid = source.proc.pid
                over_tls = run_target("tls://" + public, work / "target-tls", federation_file, source_pid=pid)
                passes["full_tls_anonymous"] = over_tls
                print(describe_pass("full sync over TLS (anonymous)", over_tls, new_size), flush=True)
                mutual = run_target("tls://" + peer, work / "target-mtls", federation_file, source_pid=pid,
                                    tls_dir=tls_dir, env=tls_env)
                passes["full_mutual_tls"] = mutual
                print(describe_pass("full sync over mutual TLS (member node)", mutual, new_size), flush=True)
            plain_rate = a.entries / full["wall_s"]
            tls_cost = {
                "plaintext_entries_per_s": round(plain_rate, 1),
                "tls_anonymous_entries_per_s": round(new_size / over_tls["wall_s"], 1),
                "mutual_tls_entries_per_s": round(new_size / mutual["wall_s"], 1),
                "tls_over_plaintext": round(new_size / over_tls["wall_s"] / plain_rate, 3),
                "mutual_tls_over_plaintext": round(new_size / mutual["wall_s"] / plain_rate, 3),
                "note": "plaintext and TLS passes are anonymous (members-only entries withheld); the mutual "
                        "TLS pass receives them whole and verifies their signatures too; the TLS passes "
                        "pull one entry more (the incremental pass added it)",
            }
            print("TLS cost: " + ", ".join(f"{k} {v}" for k, v in tls_cost.items() if k != "note"), flush=True)
        sync_rate = a.entries / full["wall_s"]
        ratio = sync_rate / baseline["verify_and_hash_per_s"]
        if not a.no_full_sync:
            print(
                f"\nsync {sync_rate:,.0f} entries/s; raw verify+hash {baseline['verify_and_hash_per_s']:,.0f} "
                f"entries/s; ratio sync/raw = {ratio:.3f}"
            )
        if profile_text:
            header = (
                f"cProfile of Syncer.sync_peer: full sync of {new_size} entries into an empty node\n"
                f"(bench/bench_sync.py --entries {a.entries} --profile), {now.date().isoformat()}\n\n"
            )
            if a.profile_out:
                a.profile_out.write_text(header + profile_text, encoding="utf-8")
                print(f"profile written to {a.profile_out}")
            else:
                print(header + profile_text)
        if a.json is not None:
            for r in passes.values():
                r.pop("profile", None)
            report = {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": bench_find.machine_info(),
                "code": version | {"changed_during_run": str(bench_find.code_version() != version)},
                "settings": {"entries": a.entries, "append_batch": a.batch, "records": a.records,
                             "no_full_sync": a.no_full_sync},
                "source": source_info,
                "baseline_one_core": baseline,
                "passes": passes,
                "sync_entries_per_s": round(sync_rate, 1),
                "ratio_sync_over_raw": round(ratio, 4) if not a.no_full_sync else None,
                "incremental_one_entry_target_cpu_ms": passes["incremental_one_entry"]["cpu_ms"],
                "running_node_one_entry_cpu_ms": [f["cpu_ms"] for f in passes["running_node_one_entry_pulls"]["pulls"]],
                "publish_one_changed_record": published,
                "tls": tls_cost,
            }
            a.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            print(f"figures written to {a.json}")
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
