"""`make demo`: a small federation on loopback, asked the questions prosecutors ask.

Creates everything under .demo/ (removed and recreated on every run): two root keys
and a federation document signed by both, one node per member (GE, AZ, KZ, PE) each
publishing its own sample records, the nodes serving on free loopback ports, and a
client that pins the federation document and verifies every answer. It runs the
real command-line programs, prints each command before its output, and stops every
process it started, also when a step fails.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / ".demo"
BIN = Path(sys.executable).parent
NODE = str(BIN / "counterpart-node")
CLIENT = str(BIN / "counterpart")
MEMBERS = {"GE": "Georgia", "AZ": "Azerbaijan", "KZ": "Kazakhstan", "PE": "Peru"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: list[str], env: dict[str, str], show: bool = True, quiet: bool = False) -> None:
    printable = " ".join(shlex.quote(a if not a.startswith(str(BIN)) else Path(a).name) for a in args)
    printable = printable.replace(str(DEMO) + "/", ".demo/")
    if show:
        print(f"\n$ {printable}", flush=True)
    result = subprocess.run(args, check=False, env=env, cwd=DEMO, text=True, capture_output=quiet)
    if result.returncode != 0:
        if quiet:
            sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"demo step failed (exit {result.returncode}): {printable}")


def wait_serving(address: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"node at {address} exited with {proc.returncode}; see .demo/*.log")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise SystemExit(f"node at {address} did not become healthy within {timeout:.0f}s")


def main() -> int:
    if DEMO.exists():
        shutil.rmtree(DEMO)
    DEMO.mkdir()
    passphrase = DEMO / "passphrase"
    fd = os.open(passphrase, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, secrets.token_urlsafe(24).encode())
    os.close(fd)
    env = {**os.environ, "COUNTERPART_KEY_PASSPHRASE": passphrase.read_text(), "COUNTERPART_HOME": str(DEMO / "client")}
    env.pop("COUNTERPART_SERVER", None)
    procs: list[subprocess.Popen[bytes]] = []
    ports = {m: free_port() for m in MEMBERS}
    try:
        print("== 1. The federation secretariat creates the trust root (2 root keys, threshold 2)")
        for i in (1, 2):
            run([NODE, "federation", "keygen", "--out", f"root-{i}.key"], env, show=False, quiet=True)
        run([NODE, "federation", "init", "--id", "casc-demo", "--root-key", "root-1.pub", "--root-key", "root-2.pub",
             "--threshold", "2", "--out", "federation.json"], env)

        print("\n== 2. Each member creates its node; the secretariat admits it with its public key")
        for code, name in MEMBERS.items():
            run([NODE, "init", "--member", code, "--data-dir", code, "--listen", f"127.0.0.1:{ports[code]}"], env, show=False, quiet=True)
            run([NODE, "federation", "add-member", "federation.json", "--code", code, "--display-name", name,
                 "--key", f"{code}/keys/node-key.pub", "--endpoint", f"127.0.0.1:{ports[code]}"], env, show=code == "GE")
        for i in (1, 2):
            run([NODE, "federation", "sign", "federation.json", "--key", f"root-{i}.key"], env)
        run([NODE, "federation", "verify", "federation.json"], env)

        print("\n== 3. Each node installs the document and publishes its own records, signed")
        for code in MEMBERS:
            run([NODE, "federation", "install", "federation.json", "--data-dir", code], env, show=False, quiet=True)
        run([NODE, "publish", str(REPO / "sample_data" / "GE"), "--data-dir", "GE", "--dry-run"], env)
        for code in MEMBERS:
            run([NODE, "publish", str(REPO / "sample_data" / code), "--data-dir", code], env, show=code == "GE", quiet=code != "GE")
        run([NODE, "publish", str(REPO / "sample_data" / "GE"), "--data-dir", "GE"], env)
        run([NODE, "verify", "--data-dir", "GE"], env)

        print("\n== 4. The nodes serve on loopback")
        for code in MEMBERS:
            log = open(DEMO / f"{code}.log", "wb")  # noqa: SIM115 - kept open for the child's lifetime
            procs.append(subprocess.Popen([NODE, "serve", "--data-dir", code], cwd=DEMO, env=env, stdout=log, stderr=log))
        for code, proc in zip(MEMBERS, procs, strict=True):
            wait_serving(f"127.0.0.1:{ports[code]}", proc)
            print(f"   {code} serving on 127.0.0.1:{ports[code]}")

        print("\n== 5. A prosecutor pins the federation document once, then asks")
        run([CLIENT, "trust", "federation.json"], env)
        ge, az, kz, pe = (f"127.0.0.1:{ports[c]}" for c in ("GE", "AZ", "KZ", "PE"))
        run([CLIENT, "--server", ge, "find", "--in", "GE", "--type", "mla.hearing.witness", "--place", "Batumi",
             "--from", "AZ", "--lang", "en"], env)
        run([CLIENT, "--server", pe, "find", "--in", "PE", "--type", "asset-recovery.freezing", "--from", "KZ",
             "--offence", "money-laundering"], env)
        run([CLIENT, "--server", kz, "find", "--in", "KZ", "--type", "extradition", "--from", "KG", "--urgent"], env)
        run([CLIENT, "--server", az, "search", "Баку"], env)
        run([CLIENT, "--server", ge, "members"], env)
        print("\n== Done: every answer above was verified against the pinned federation document.")
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if procs:
            print(f"stopped {len(procs)} node(s)")


if __name__ == "__main__":
    sys.exit(main())
