"""Benchmark FindCounterpart over gRPC on loopback, against an empty gRPC server as baseline.

1. Uses the dataset in ``--data-dir`` (made by gen_dataset.py; generated there if the
   directory is missing or empty) or, without ``--data-dir``, generates one into a
   temporary directory (``--members`` x ``--authorities``) and removes it afterwards.
2. Starts the node as a separate process::

       counterpart-node serve --data-dir DIR --no-heartbeat --listen 127.0.0.1:PORT \\
           --log-level WARNING

   waits for grpc.health.v1 SERVING, and for each concurrency (``--concurrency``,
   default "1,16") runs that many client threads in this process, each calling
   FindCounterpart in a loop for ``--duration`` seconds after ``--warmup`` seconds of
   warm-up. Requests vary the requested member, the request type (mostly types with a
   published rule, some without), the place (empty, subdivision code, municipality name
   in Latin or Cyrillic script), the requesting member, languages and urgency; they are
   serialized once beforehand and responses are kept as bytes, so the client does not
   parse protobuf inside the timed loop.
3. Does the same against bench/empty_server.py (same thread pool size, a generic
   handler answering every method with an empty message), sending the very same
   request bytes to the same method name.
4. Prints throughput (calls/s) and latency percentiles per run and the node/baseline
   ratios; ``--json OUT`` writes every figure.

Every process started here is stopped on the way out (also on Ctrl-C or an error), and
every wait is bounded.

Usage: python bench/bench_find.py [--data-dir DIR] [--duration 10] [--concurrency 1,16]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import gen_dataset  # a sibling script: python puts bench/ first on sys.path
import grpc
from grpc_health.v1 import health_pb2

from counterpart.v1 import directory_service_pb2 as ds
from counterpart_core import signing, tls
from directory_server.config import NodeConfig

BENCH_DIR = Path(__file__).resolve().parent

METHOD = "/counterpart.v1.DirectoryService/FindCounterpart"
# Request types without a published rule: the "no rule" path of FindCounterpart.
NO_RULE_TYPES = ["jit", "mla.hearing.videoconference", "asset-recovery.freezing"]
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
CALL_TIMEOUT_S = 30.0
MAX_MESSAGE = 64 * 1024 * 1024


# --- requests ------------------------------------------------------------------------------


def make_requests(
    manifest: dict[str, Any], count: int, seed: int = 1
) -> list[ds.FindCounterpartRequest]:
    """A fixed, varied mix of FindCounterpart requests over the generated federation."""
    rnd = random.Random(seed)
    members: list[str] = manifest["members"]
    rule_types: list[str] = manifest["rule_request_types"]
    data: dict[str, Any] = manifest["member_data"]
    out: list[ds.FindCounterpartRequest] = []
    for _ in range(count):
        member = rnd.choice(members)
        info = data[member]
        rt = rnd.choice(NO_RULE_TYPES) if rnd.random() < 0.1 else rnd.choice(rule_types)
        r = rnd.random()
        if r < 0.2:
            place = ""
        elif r < 0.5:
            place = f"{member}-S{rnd.randint(1, info['subdivisions']):02d}"
        else:
            municipalities = info["municipalities"]
            if municipalities:
                latin, cyrillic = rnd.choice(municipalities)
                place = latin if r < 0.75 else cyrillic
            else:
                place = ""
        req = ds.FindCounterpartRequest(requested_member=member, request_type=rt, place=place)
        if rnd.random() < 0.5 and len(members) > 1:
            req.requesting_member = rnd.choice([m for m in members if m != member][:50])
        if rnd.random() < 0.3:
            req.preferred_languages.append("en")
        req.urgent = rnd.random() < 0.1
        out.append(req)
    return out


# --- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _clean_env() -> dict[str, str]:
    """The environment without COUNTERPART_* overrides of the node's configuration."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COUNTERPART_")}


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), 0.0 if unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def system_busy_seconds() -> float:
    """CPU seconds all processes have used (Linux /proc/stat, all CPUs), 0.0 if unavailable."""
    try:
        values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    target: str
    log_path: Path
    tls_roots: bytes | None = None  # the node's certificate: TLS, trusting exactly it
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)  # more serving processes

    @property
    def procs(self) -> list[subprocess.Popen[bytes]]:
        return [self.proc, *self.others]

    def cpu_seconds(self) -> float:
        """CPU time of every serving process (Linux /proc)."""
        return sum(proc_cpu_seconds(p.pid) for p in self.procs)

    def channel(self, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        if self.tls_roots is None:
            return grpc.insecure_channel(self.target, options=list(options))
        creds = grpc.ssl_channel_credentials(self.tls_roots)
        name = [("grpc.ssl_target_name_override", tls.ANY_NODE_NAME)]
        return grpc.secure_channel(self.target, creds, options=[*options, *name])

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _start(argv: Sequence[str], log_path: Path, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_clean_env() | (env or {}),
            start_new_session=True,  # our Ctrl-C handling stops it, in order
        )


def listening(pid: int, port: int) -> bool:
    """Does the process hold a socket listening on ``port`` (Linux /proc)?"""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


@contextmanager
def server_process(
    name: str, argv: Sequence[str], target: str, log_dir: Path, env: dict[str, str] | None = None,
    tls_roots: bytes | None = None, processes: int = 1,
) -> Iterator[Server]:
    """Start a server (``processes`` of them on one port), wait for health SERVING and for
    every process to listen, stop them all on exit."""
    log_path = log_dir / f"{name}.log"
    log_path.write_bytes(b"")
    server = Server(name, _start(argv, log_path, env), target, log_path, tls_roots)
    try:
        wait_serving(server)
        port = int(target.rsplit(":", 1)[1])
        for _ in range(processes - 1):
            server.others.append(_start(argv, log_path, env))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(listening(p.pid, port) for p in server.others):
            if any(p.poll() is not None for p in server.others):
                raise RuntimeError(f"{name}: a serving process exited:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: not every process listens after {START_TIMEOUT_S:.0f} s")
            time.sleep(0.2)
        yield server
    finally:
        for p in reversed(server.procs):
            stop_process(p)


def wait_serving(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with server.channel() as channel:
        check: grpc.UnaryUnaryMultiCallable[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ] = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}"
                )
            try:
                resp = check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"{server.name} did not report SERVING within {START_TIMEOUT_S:.0f} s")


# --- load ----------------------------------------------------------------------------------


@dataclass
class RunResult:
    server: str
    label: str  # "cold": every question new to the node; "warm": after every one was asked once
    processes: int
    connections: int
    concurrency: int
    duration_s: float
    calls: int
    errors: dict[str, int]
    throughput: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    request_bytes_avg: float
    response_bytes_avg: float
    server_cpu_s: float
    server_cpu_ms_per_call: float
    client_cpu_s: float
    other_cpu_s: float  # used by other processes on the machine during the run (interference)
    loadavg_after: list[float] = field(default_factory=list)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def _loop(
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes],
    payloads: Sequence[bytes],
    offset: int,
    deadline: float,
    stop: threading.Event,
    latencies: list[float],
    sizes: list[int],
    errors: Counter[str],
) -> None:
    i = offset
    n = len(payloads)
    perf = time.perf_counter
    while not stop.is_set():
        payload = payloads[i % n]
        i += 1
        t0 = perf()
        if t0 >= deadline:
            return
        try:
            resp: bytes = call(payload, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            errors[code.name if code else "UNKNOWN"] += 1
            continue
        latencies.append(perf() - t0)
        sizes.append(len(resp))


def channels(server: Server, count: int) -> list[grpc.Channel]:
    """``count`` channels, each on a connection of its own (SO_REUSEPORT spreads connections,
    not calls, over the serving processes)."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.use_local_subchannel_pool", 1)]
    return [server.channel(options) for _ in range(count)]


def prime(server: Server, payloads: Sequence[bytes], connections: int, stop: threading.Event) -> float:
    """Ask every request once on every connection (in parallel), not measured: each serving
    process then holds the answers it will be asked for. Returns the seconds it took."""
    chans = channels(server, connections)
    t0 = time.perf_counter()
    try:
        def ask_all(ch: grpc.Channel) -> None:
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(METHOD)
            for payload in payloads:
                if stop.is_set():
                    return
                try:
                    call(payload, timeout=CALL_TIMEOUT_S)
                except grpc.RpcError:
                    pass

        threads = [threading.Thread(target=ask_all, args=(ch,), daemon=True) for ch in chans]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for ch in chans:
            ch.close()
    if stop.is_set():
        raise KeyboardInterrupt
    return time.perf_counter() - t0


def run_load(
    server: Server,
    payloads: Sequence[bytes],
    concurrency: int,
    duration: float,
    warmup: float,
    stop: threading.Event,
    connections: int = 1,
    label: str = "",
) -> RunResult:
    """``concurrency`` threads calling the server for ``duration`` s (after ``warmup`` s),
    thread k on connection k mod ``connections``."""
    chans = channels(server, max(1, min(connections, concurrency)))
    try:
        # no (de)serializers: bytes in, bytes out
        callables: list[grpc.UnaryUnaryMultiCallable[bytes, bytes]] = [ch.unary_unary(METHOD) for ch in chans]
        stride = max(1, len(payloads) // concurrency)

        def phase(seconds: float) -> tuple[list[list[float]], list[list[int]], Counter[str], float]:
            lat: list[list[float]] = [[] for _ in range(concurrency)]
            sizes: list[list[int]] = [[] for _ in range(concurrency)]
            errors: Counter[str] = Counter()
            start = time.perf_counter()
            deadline = start + seconds
            threads = [
                threading.Thread(
                    target=_loop,
                    args=(
                        callables[k % len(callables)],
                        payloads,
                        k * stride + int(seconds * 1000),
                        deadline,
                        stop,
                        lat[k],
                        sizes[k],
                        errors,
                    ),
                    name=f"client-{k}",
                    daemon=True,
                )
                for k in range(concurrency)
            ]
            try:
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(seconds + CALL_TIMEOUT_S + 5)
                    if t.is_alive():
                        raise RuntimeError(f"client thread {t.name} did not finish in time")
            except BaseException:
                stop.set()  # let every client thread end before the channel and server go
                raise
            if stop.is_set():
                raise KeyboardInterrupt
            return lat, sizes, errors, time.perf_counter() - start

        if warmup > 0:
            phase(warmup)
        cpu0 = server.cpu_seconds()
        client0 = time.process_time()
        busy0 = system_busy_seconds()
        lat, sizes, errors, elapsed = phase(duration)
        server_cpu = server.cpu_seconds() - cpu0
        client_cpu = time.process_time() - client0
        other_cpu = max(0.0, system_busy_seconds() - busy0 - server_cpu - client_cpu)
    finally:
        for ch in chans:
            ch.close()
    all_lat = sorted(x * 1000 for per in lat for x in per)
    all_sizes = [s for per in sizes for s in per]
    calls = len(all_lat)
    return RunResult(
        server=server.name,
        label=label or ("warm" if warmup > 0 else "cold"),
        processes=len(server.procs),
        connections=len(chans),
        concurrency=concurrency,
        duration_s=round(elapsed, 3),
        calls=calls,
        errors=dict(errors),
        throughput=round(calls / elapsed, 1) if elapsed > 0 else 0.0,
        mean_ms=round(sum(all_lat) / calls, 3) if calls else float("nan"),
        p50_ms=round(percentile(all_lat, 50), 3),
        p90_ms=round(percentile(all_lat, 90), 3),
        p99_ms=round(percentile(all_lat, 99), 3),
        max_ms=round(all_lat[-1], 3) if calls else 0.0,
        request_bytes_avg=round(sum(map(len, payloads)) / len(payloads), 1),
        response_bytes_avg=round(sum(all_sizes) / len(all_sizes), 1) if all_sizes else 0.0,
        server_cpu_s=round(server_cpu, 2),
        server_cpu_ms_per_call=round(1000 * server_cpu / calls, 3) if calls else float("nan"),
        client_cpu_s=round(client_cpu, 2),
        other_cpu_s=round(other_cpu, 2),
        loadavg_after=[round(x, 2) for x in os.getloadavg()],
    )


def sanity_check(server: Server, requests: Sequence[ds.FindCounterpartRequest]) -> dict[str, Any]:
    """Parse a few real answers (outside any timing) to show the queries find something."""
    levels: Counter[str] = Counter()
    candidates = proofs = 0
    errors: Counter[str] = Counter()
    with server.channel([("grpc.max_receive_message_length", MAX_MESSAGE)]) as ch:
        call: grpc.UnaryUnaryMultiCallable[
            ds.FindCounterpartRequest, ds.FindCounterpartResponse
        ] = ch.unary_unary(
            METHOD,
            request_serializer=ds.FindCounterpartRequest.SerializeToString,
            response_deserializer=ds.FindCounterpartResponse.FromString,
        )
        for req in requests:
            try:
                resp: ds.FindCounterpartResponse = call(req, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as e:
                code = e.code() if isinstance(e, grpc.Call) else None
                errors[code.name if code else "UNKNOWN"] += 1
                continue
            levels[ds.CoverageLevel.Name(resp.place.level)] += 1
            candidates += len(resp.candidates)
            proofs += len(resp.proofs)
    ok = sum(levels.values())
    return {
        "calls": len(requests),
        "ok": ok,
        "errors": dict(errors),
        "avg_candidates": round(candidates / ok, 2) if ok else 0.0,
        "avg_proofs": round(proofs / ok, 2) if ok else 0.0,
        "place_levels": dict(levels),
    }


# --- reporting -----------------------------------------------------------------------------


def tls_material(directory: Path) -> dict[str, str]:
    """A TLS key (encrypted, mode 600) and self-signed certificate for the benchmark's node,
    and the environment that makes `counterpart-node serve` use them."""
    passphrase = secrets.token_urlsafe(16).encode()
    key = tls.generate_key()
    signing.write_private_key(directory / "tls-key.pem", key, passphrase)
    cert = tls.self_signed_certificate(key, "AA", ["127.0.0.1"], datetime.now(UTC))
    (directory / "tls-cert.pem").write_bytes(tls.pem(cert))
    return {
        "COUNTERPART_TLS": "on", "COUNTERPART_TLS_KEY_FILE": str(directory / "tls-key.pem"),
        "COUNTERPART_TLS_CERT_FILE": str(directory / "tls-cert.pem"),
        "COUNTERPART_KEY_PASSPHRASE": passphrase.decode(),
    }


def tls_ratios(runs: list[RunResult]) -> list[dict[str, Any]]:
    """TLS against plaintext, same node, same run."""
    by = {(r.server, r.concurrency): r for r in runs}
    out = []
    for c in sorted({r.concurrency for r in runs}):
        plain, over_tls = by.get(("node", c)), by.get(("node-tls", c))
        if plain is None or over_tls is None or not plain.throughput:
            continue
        row = {
            "concurrency": c,
            "throughput_ratio_tls_over_plain": round(over_tls.throughput / plain.throughput, 3),
            "p50_ms_plain": round(plain.p50_ms, 2), "p50_ms_tls": round(over_tls.p50_ms, 2),
            "p99_ms_plain": round(plain.p99_ms, 2), "p99_ms_tls": round(over_tls.p99_ms, 2),
            "server_cpu_ms_per_call_plain": round(1000 * plain.server_cpu_s / max(plain.calls, 1), 3),
            "server_cpu_ms_per_call_tls": round(1000 * over_tls.server_cpu_s / max(over_tls.calls, 1), 3),
        }
        print(f"TLS vs plaintext, c={c}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "concurrency"))
        out.append(row)
    return out


def print_table(runs: list[RunResult]) -> list[dict[str, Any]]:
    """Each node run beside the baseline at the same concurrency, as ratios."""
    base = {(r.concurrency, r.connections): r for r in runs if r.server == "baseline"}
    header = (
        f"{'node':>18} {'conc':>4} | {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms':>7} | "
        f"{'base calls/s':>12} {'p50 ms':>7} {'p99 ms':>7} | {'thr ratio':>9} {'p50 ratio':>9} {'p99 ratio':>9}"
    )
    print(header)
    print("-" * len(header))
    ratios: list[dict[str, Any]] = []
    for n in runs:
        if n.server == "baseline" or n.server == "node-tls":
            continue
        name = f"{n.server}/{n.label}"
        cols = (
            f"{name:>18} {n.concurrency:>4} | {n.throughput:>9.1f} {n.p50_ms:>8.2f} {n.p99_ms:>8.2f} "
            f"{n.server_cpu_ms_per_call:>7.2f} | "
        )
        b = base.get((n.concurrency, n.connections)) or base.get((n.concurrency, 1))
        if b is None:
            print(cols + f"{'-':>12} {'-':>7} {'-':>7} | {'-':>9} {'-':>9} {'-':>9}")
            continue
        row = {
            "server": n.server, "label": n.label, "processes": n.processes, "concurrency": n.concurrency,
            "connections": n.connections, "baseline_connections": b.connections,
            "throughput_ratio": round(n.throughput / b.throughput, 4) if b.throughput else None,
            "p50_ratio": round(n.p50_ms / b.p50_ms, 1) if b.p50_ms else None,
            "p99_ratio": round(n.p99_ms / b.p99_ms, 1) if b.p99_ms else None,
            "server_cpu_ms_per_call": n.server_cpu_ms_per_call,
        }
        ratios.append(row)
        print(
            cols + f"{b.throughput:>12.1f} {b.p50_ms:>7.3f} {b.p99_ms:>7.3f} | "
            f"{row['throughput_ratio']:>9} {row['p50_ratio']:>9} {row['p99_ratio']:>9}"
        )
    return ratios


def describe_run(r: RunResult) -> str:
    errs = f", errors {r.errors}" if r.errors else ""
    return (
        f"{r.server:>8} {r.label} p={r.processes} conns={r.connections} c={r.concurrency:<3} {r.calls:>7} calls in {r.duration_s:.1f} s = "
        f"{r.throughput:.1f}/s; ms mean {r.mean_ms:.2f} p50 {r.p50_ms:.2f} p90 {r.p90_ms:.2f} "
        f"p99 {r.p99_ms:.2f} max {r.max_ms:.2f}; resp {r.response_bytes_avg:.0f} B; "
        f"CPU s: server {r.server_cpu_s:.1f} ({r.server_cpu_ms_per_call:.2f} ms/call) client {r.client_cpu_s:.1f} "
        f"other {r.other_cpu_s:.1f}{errs}"
    )


# --- main ----------------------------------------------------------------------------------


def machine_info() -> dict[str, object]:
    """What a figure depends on besides the code: cores, versions, load at the end of the run."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "grpc": grpc.__version__,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def code_version() -> dict[str, str]:
    """The commit checked out and a hash of the server's sources (others may edit them)."""
    repo = BENCH_DIR.parent
    digest = hashlib.sha256()
    for f in sorted((repo / "directory_server").rglob("*.py")):
        digest.update(str(f.relative_to(repo)).encode() + b"\0" + f.read_bytes())
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        head = ""
    return {"git_head": head, "directory_server_sha256": digest.hexdigest()[:16]}


def load_or_generate(
    data_dir: Path | None, members: int, authorities: int, tmp_root: Path
) -> tuple[Path, dict[str, Any]]:
    if data_dir is None:
        data_dir = tmp_root / "data"
    manifest_path = data_dir / gen_dataset.MANIFEST_NAME
    if manifest_path.exists():
        print(f"reusing dataset {data_dir}")
    else:
        if data_dir.exists() and any(data_dir.iterdir()):
            raise SystemExit(f"{data_dir} is not empty and holds no {gen_dataset.MANIFEST_NAME}")
        print(f"generating {members} members x {authorities} authorities into {data_dir} ...")
        gen_dataset.generate(data_dir, members, authorities, os.cpu_count() or 1, force=False)
    manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
    return data_dir, manifest


def node_argv(data_dir: Path, target: str, several: bool = False) -> list[str]:
    exe = Path(sys.executable).parent / "counterpart-node"
    cmd = [str(exe)] if exe.exists() else [shutil.which("counterpart-node") or "counterpart-node"]
    return cmd + [
        "serve",
        "--data-dir",
        str(data_dir),
        "--no-heartbeat",
        "--listen",
        target,
        "--log-level",
        "WARNING",
        *(["--allow-several"] if several else []),
    ]


def postgres_url() -> str:
    return os.environ.get("COUNTERPART_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def postgres_copy(data_dir: Path) -> Iterator[tuple[str, float]]:
    """The dataset's SQLite database copied into a fresh PostgreSQL schema (migrated by the
    node's own Store, then every table row for row); yields the node's database URL and the
    seconds the copy took; drops the schema on the way out."""
    import sqlalchemy as sa

    from directory_server.storage.models import Base
    from directory_server.storage.store import Store, sqlite_url

    schema = f"cp_bench_{secrets.token_hex(6)}"
    admin = sa.create_engine(postgres_url())
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in postgres_url() else "?"
    url = f"{postgres_url()}{sep}options=-csearch_path%3D{schema}"
    t0 = time.perf_counter()
    try:
        Store(url).close()  # the schema, by the node's migrations
        src = sa.create_engine(sqlite_url(data_dir))
        dst = sa.create_engine(url)
        for table in Base.metadata.sorted_tables:
            with src.connect() as s, dst.begin() as d:
                result = s.execution_options(yield_per=5000).execute(table.select())
                for part in result.partitions(5000):
                    d.execute(table.insert(), [dict(row._mapping) for row in part])
        with dst.begin() as d:
            d.execute(sa.text("ANALYZE"))
        src.dispose()
        dst.dispose()
        yield url, time.perf_counter() - t0
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Benchmark FindCounterpart over gRPC on loopback.")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="dataset from gen_dataset.py (generated there if missing/empty; "
        "default: a temporary directory, removed afterwards)",
    )
    p.add_argument("--members", type=int, default=200, help="members when generating")
    p.add_argument(
        "--authorities", type=int, default=500, help="authorities per member when generating"
    )
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds before each run")
    p.add_argument("--concurrency", default="1,16", help="comma-separated client thread counts")
    p.add_argument("--requests", type=int, default=4000, help="distinct requests in the mix")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--skip-baseline", action="store_true", help="measure the node only")
    p.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    p.add_argument("--tls", action="store_true", help="also serve the node over TLS and compare")
    p.add_argument(
        "--processes", default="1",
        help="comma-separated numbers of serving processes of the node (one port, --allow-several), e.g. 1,2",
    )
    p.add_argument(
        "--database", default="sqlite",
        help="comma-separated: sqlite (the dataset's file) and/or postgres (a copy in a fresh schema of "
        "$COUNTERPART_BENCH_POSTGRES_URL, default postgresql+psycopg://postgres@127.0.0.1:5432/test, dropped after)",
    )
    p.add_argument(
        "--connections", type=int, default=16,
        help="client connections when the node runs several processes (calls spread per connection)",
    )
    p.add_argument(
        "--no-cold", action="store_true",
        help="skip the cold run (every question new to the node) and the priming pass before the warm runs",
    )
    a = p.parse_args(argv)
    process_counts = [int(x) for x in a.processes.split(",") if x.strip()]
    databases = [x.strip() for x in a.database.split(",") if x.strip()]
    if not process_counts or min(process_counts) < 1 or max(process_counts) > 16:
        raise SystemExit("--processes: counts between 1 and 16")
    if not set(databases) <= {"sqlite", "postgres"} or not databases:
        raise SystemExit("--database: sqlite and/or postgres")
    concurrencies = [int(x) for x in a.concurrency.split(",") if x.strip()]
    if not concurrencies or min(concurrencies) < 1 or max(concurrencies) > 256:
        raise SystemExit("--concurrency: thread counts between 1 and 256")
    if not 0 < a.duration <= 600 or not 0 <= a.warmup <= 600:
        raise SystemExit("--duration must be in (0, 600] and --warmup in [0, 600] seconds")

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    version = code_version()
    tmp_root = Path(tempfile.mkdtemp(prefix="counterpart-bench-"))
    runs: list[RunResult] = []
    try:
        data_dir, manifest = load_or_generate(a.data_dir, a.members, a.authorities, tmp_root)
        requests = make_requests(manifest, a.requests, a.seed)
        payloads = [r.SerializeToString() for r in requests]
        # one question per member, with a place, from another mix: warms each member's index
        first: dict[str, bytes] = {}
        for r in make_requests(manifest, 50 * len(manifest["members"]), a.seed + 1000):
            if r.place and r.requested_member not in first:
                first[r.requested_member] = r.SerializeToString()
        touch = list(first.values())
        db_bytes = sum(f.stat().st_size for f in data_dir.glob("node.sqlite3*"))
        print(
            f"dataset: {len(manifest['members'])} members x {manifest['authorities_per_member']} "
            f"authorities, {manifest['entries']} entries, database {db_bytes / 2**20:.1f} MiB; "
            f"{len(payloads)} requests, avg {sum(map(len, payloads)) / len(payloads):.0f} B"
        )
        sanity: dict[str, Any] = {}
        copies: dict[str, float] = {}
        for database in databases:
            with contextlib.ExitStack() as stack:
                env: dict[str, str] = {}
                if database == "postgres":
                    url, seconds = stack.enter_context(postgres_copy(data_dir))
                    env["COUNTERPART_DATABASE_URL"] = url
                    copies[database] = round(seconds, 1)
                    print(f"copied the dataset into PostgreSQL in {seconds:.1f} s")
                for n in process_counts:
                    port = free_port()
                    target = f"127.0.0.1:{port}"
                    name = f"node-{database}-p{n}"
                    conns = 1 if n == 1 else a.connections
                    argv_node = node_argv(data_dir, target, several=n > 1)
                    with server_process(name, argv_node, target, tmp_root, env, processes=n) as node:
                        if not sanity:
                            sanity = sanity_check(node, requests[:100])
                            print(f"sanity (100 parsed answers): {sanity}")
                        if not a.no_cold:
                            # every question new to the node (what a kept answer cannot help),
                            # after one other question per member (what a member's index holds
                            # is built: its tree, its place names)
                            took = prime(node, touch, conns, stop)
                            print(f"touched every member of {name} in {took:.1f} s")
                            r = run_load(node, payloads[100:], 1, a.duration, 0.0, stop, label="cold")
                            runs.append(r)
                            print(describe_run(r), flush=True)
                            took = prime(node, payloads, conns, stop)
                            print(f"primed {name}: every request once on each of {conns} connection(s) in {took:.1f} s")
                        for c in concurrencies:
                            r = run_load(node, payloads, c, a.duration, a.warmup, stop, conns, label="warm")
                            runs.append(r)
                            print(describe_run(r), flush=True)
        if a.tls:
            # the same node and data over TLS 1.3 (a certificate made for this run; the node's
            # key file is encrypted like a real one)
            env = tls_material(tmp_root)
            port = free_port()
            target = f"127.0.0.1:{port}"
            roots = (tmp_root / "tls-cert.pem").read_bytes()
            with server_process("node-tls", node_argv(data_dir, target), target, tmp_root, env, roots) as node:
                for c in concurrencies:
                    r = run_load(node, payloads, c, a.duration, a.warmup, stop)
                    runs.append(r)
                    print(describe_run(r), flush=True)
        if not a.skip_baseline:
            port = free_port()
            target = f"127.0.0.1:{port}"
            argv_base = [
                sys.executable,
                str(BENCH_DIR / "empty_server.py"),
                "--listen",
                target,
                "--workers",
                NodeConfig.__dataclass_fields__["workers"].default,  # the node's default
            ]
            # the client as each node run had it: one connection, and as many as the runs of
            # several processes had
            layouts = sorted({1} | ({a.connections} if max(process_counts) > 1 else set()))
            with server_process("baseline", argv_base, target, tmp_root) as base:
                for conns in layouts:
                    for c in concurrencies:
                        if conns > 1 and c == 1:
                            continue  # one thread uses one connection
                        r = run_load(base, payloads, c, a.duration, a.warmup, stop, conns, label="empty")
                        runs.append(r)
                        print(describe_run(r), flush=True)
        print()
        ratios = print_table(runs)
        tls_cost = tls_ratios(runs)
        if a.json is not None:
            report = {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine_info(),
                "code": version | {"changed_during_run": str(code_version() != version)},
                "settings": {
                    "processes": process_counts,
                    "databases": databases,
                    "connections_when_several": a.connections,
                    "postgres_copy_s": copies,
                    "duration_s": a.duration,
                    "warmup_s": a.warmup,
                    "concurrency": concurrencies,
                    "requests": len(payloads),
                    "seed": a.seed,
                },
                # no paths of this machine in the figures: they are committed to bench/results
                "dataset": {k: v for k, v in manifest.items() if k not in ("member_data", "database")}
                | {"database_bytes_now": db_bytes},
                "sanity": sanity,
                "runs": [asdict(r) for r in runs],
                "ratios_node_over_baseline": ratios,
                "tls_over_plaintext": tls_cost,
            }
            a.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {a.json}")
        return 0
    except KeyboardInterrupt:
        stop.set()
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
