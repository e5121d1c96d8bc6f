"""`make demo`: a federation of five national nodes on loopback, replicating each other's
signed records and answered the questions prosecutors ask.

Creates everything under .demo/ (removed and recreated on every run): two root keys and
a federation document signed by both that lists each member's signing key, node TLS
certificate and endpoints, one node per member (GE, AZ, KZ, PE, AM), each publishing only
its own sample records. The nodes serve TLS 1.3 on free loopback ports (a public listener,
and a peer listener that requires the certificate of a member node) and sync from each
other's peer endpoints over mutual TLS, so members-only entries travel whole between them
and to nobody else. A prosecutor asks anonymously (members-only contacts withheld), is
issued a token by her national node, signs in and asks again. The demo
shows them converge, asks one member's node about other members, publishes a change at
one node and measures how long it takes to reach all the others, then stops one node and
asks the others about it. A client pins the federation document and verifies every
answer. It runs the real command-line programs, prints each command before its output,
and stops every process it started, also when a step fails.
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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from counterpart.v1 import log_pb2
from counterpart.v1 import replication_service_pb2 as rs
from counterpart.v1 import replication_service_pb2_grpc as rs_grpc
from counterpart_core.federation import read_file, verify_initial
from counterpart_core.signing import parse_envelope
from directory_server.security import channel_credentials

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / ".demo"
BIN = Path(sys.executable).parent
NODE = str(BIN / "counterpart-node")
CLIENT = str(BIN / "counterpart")
MEMBERS = {"GE": "Georgia", "AZ": "Azerbaijan", "KZ": "Kazakhstan", "PE": "Peru", "AM": "Armenia"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: list[str], env: dict[str, str], show: bool = True, quiet: bool = False, expect: int = 0) -> None:
    printable = " ".join(shlex.quote(a if not a.startswith(str(BIN)) else Path(a).name) for a in args)
    printable = printable.replace(str(DEMO) + "/", ".demo/")
    if show:
        print(f"\n$ {printable}", flush=True)
    result = subprocess.run(args, check=False, env=env, cwd=DEMO, text=True, capture_output=quiet)
    if result.returncode != expect:
        if quiet:
            sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"demo step failed (exit {result.returncode}): {printable}")


def channel(address: str) -> grpc.Channel:
    """A TLS channel to a demo node, trusting the certificates the federation document lists."""
    federation = verify_initial(read_file(DEMO / "federation.json"), datetime.now(UTC))
    creds, options = channel_credentials(federation, address, None)
    return grpc.secure_channel(address, creds, options=options)


def wait_serving(address: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"node at {address} exited with {proc.returncode}; see .demo/*.log")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise SystemExit(f"node at {address} did not become healthy within {timeout:.0f}s")


def vector(address: str) -> dict[str, bytes]:
    """The signed checkpoints a node holds, by member (its ReplicationService vector)."""
    with channel(address) as ch:
        resp = rs_grpc.ReplicationServiceStub(ch).GetCheckpoints(rs.GetCheckpointsRequest(), timeout=5)
    out: dict[str, bytes] = {}
    for envelope in resp.signed_checkpoints:
        cp = log_pb2.Checkpoint()
        cp.ParseFromString(parse_envelope(envelope).payload)
        out[cp.member] = envelope
    return out


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


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
    peer_ports = {m: free_port() for m in MEMBERS}
    try:
        print("== 1. The federation secretariat creates the trust root (2 root keys, threshold 2)")
        for i in (1, 2):
            run([NODE, "federation", "keygen", "--out", f"root-{i}.key"], env, show=False, quiet=True)
        run([NODE, "federation", "init", "--id", "casc-demo", "--root-key", "root-1.pub", "--root-key", "root-2.pub",
             "--threshold", "2", "--out", "federation.json"], env)

        print("\n== 2. Each member creates its node (signing key, TLS key and certificate); the secretariat")
        print("   admits it with its public key, its node certificate and its endpoints")
        for code, name in MEMBERS.items():
            run([NODE, "init", "--member", code, "--data-dir", code, "--listen", f"127.0.0.1:{ports[code]}",
                 "--peer-listen", f"127.0.0.1:{peer_ports[code]}"], env, show=code == "GE", quiet=code != "GE")
            run([NODE, "federation", "add-member", "federation.json", "--code", code, "--display-name", name,
                 "--key", f"{code}/keys/node-key.pub", "--tls-cert", f"{code}/keys/tls-cert.pem",
                 "--endpoint", f"127.0.0.1:{ports[code]}", "--peer-endpoint", f"127.0.0.1:{peer_ports[code]}"],
                env, show=code == "GE", quiet=code != "GE")
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

        print("\n== 4. The nodes serve TLS on loopback and sync from each other's peer endpoints (mutual TLS)")
        addresses = {code: f"127.0.0.1:{ports[code]}" for code in MEMBERS}
        for code in MEMBERS:
            log = open(DEMO / f"{code}.log", "wb")  # noqa: SIM115 - kept open for the child's lifetime
            procs.append(subprocess.Popen([NODE, "serve", "--data-dir", code], cwd=DEMO, env=env, stdout=log, stderr=log))
        running = dict(zip(MEMBERS, procs, strict=True))
        for code, proc in running.items():
            wait_serving(addresses[code], proc)
            print(f"   {code} serving on {addresses[code]}")

        def converged(nodes: list[str]) -> bool:
            want = {m: vector(addresses[m]).get(m) for m in MEMBERS}
            return all(vector(addresses[n]) == want for n in nodes)

        took = wait_until(lambda: converged(list(MEMBERS)), "the five nodes to converge")
        print(f"   converged: every node holds every member's latest signed checkpoint ({took:.2f} s after all were up)")
        run([NODE, "status", "--data-dir", "GE"], env)

        print("\n== 5. A prosecutor in Baku pins the federation document once, then asks her own node about others")
        print("   (TLS: the client accepts only the certificate the document lists for the node it asks)")
        run([CLIENT, "trust", "federation.json"], env)
        ge, az, kz, pe = (addresses[c] for c in ("GE", "AZ", "KZ", "PE"))
        witness = ["find", "--in", "GE", "--type", "mla.hearing.witness", "--place", "Batumi", "--from", "AZ",
                   "--lang", "en", "--urgent"]
        run([CLIENT, "--server", az, *witness], env)

        print("\n== 6. Not signed in, she sees no members-only contact point. Her national node's administrator")
        print("   issues her an access token; she signs in, and the same question shows Georgia's 24/7 point,")
        print("   which reached the Azerbaijani node whole, over mutual TLS between member nodes")
        run([NODE, "access", "grant", "--subject", "prosecutor.baku.1", "--role", "prosecutor", "--valid-for", "8h",
             "--data-dir", "AZ", "--out", "prosecutor.token"], env)
        run([CLIENT, "login", "--token-file", "prosecutor.token"], env)
        run([CLIENT, "--server", az, *witness], env)
        run([NODE, "access", "audit", "--data-dir", "AZ"], env)
        run([CLIENT, "logout"], env, show=False, quiet=True)
        run([CLIENT, "--server", az, "find", "--in", "PE", "--type", "asset-recovery.freezing", "--from", "AZ",
             "--offence", "money-laundering"], env)
        run([CLIENT, "--server", az, "search", "Astana"], env)
        run([CLIENT, "--server", ge, "members"], env)

        print("\n== 7. Places as a prosecutor types them: any script, old names, typos; the office that executes")
        run([CLIENT, "--server", az, "find", "--in", "GE", "--type", "mla.hearing.witness", "--place", "Аджария"], env)
        run([CLIENT, "--server", az, "find", "--in", "GE", "--type", "mla.hearing.witness", "--place", "Tiflis",
             "--lang", "fr"], env)
        run([CLIENT, "--server", az, "find", "--in", "AZ", "--type", "mla.hearing.witness", "--place", "Naxçıvan"], env)
        run([CLIENT, "--server", az, "find", "--in", "GE", "--type", "mla.hearing.witness", "--place", "Batumy"], env)
        print("   (an unknown place is an error that names the closest known places; exit code 3)")
        run([CLIENT, "--server", az, "find", "--in", "GE", "--type", "mla.hearing.witness", "--place", "Atlantis"],
            env, expect=3)
        run([CLIENT, "--server", az, "search", "Երևան"], env)
        run([CLIENT, "--server", az, "show", "members/GE/places/ge-aj"], env)

        print("\n== 7b. A reorganization dated 1 January 2027 (sample): today's answer shows the district")
        print("   office until then, and the regional office that takes over, published already")
        mtskheta = ["find", "--in", "GE", "--type", "mla.hearing.witness", "--place", "Mtskheta"]
        run([CLIENT, "--server", az, *mtskheta], env)  # before the date: the district office, change announced
        run([CLIENT, "--server", az, "show", "members/GE/authorities/mtskheta-mtianeti-po"], env)

        print("\n== 8. Armenia publishes a new unit, in effect since yesterday; how long until every")
        print("   other node holds it?")
        records = DEMO / "records-AM"
        shutil.copytree(REPO / "sample_data" / "AM", records)
        yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
        before = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        time.sleep(1.1)  # the publication comes strictly after that instant (times are signed to the second)
        (records / "new-desk.yaml").write_text(
            "member: AM\nauthorities:\n  - id: demo-cybercrime-unit\n"
            '    display_names: [{language: en, text: "Cybercrime unit of the Prosecutor General\'s Office"}]\n'
            f"    kind: prosecution-office\n    coverage: {{national: true}}\n    effective: {{from: {yesterday}}}\n"
            "    competences:\n      - request_types: [mla.electronic-evidence.preservation]\n        roles: [COMPETENCE_ROLE_EXECUTES]\n",
            encoding="utf-8",
        )
        run([NODE, "publish", str(records), "--data-dir", "AM"], env)
        new_checkpoint = vector(addresses["AM"])["AM"]
        wait_until(
            lambda: all(vector(addresses[n]).get("AM") == new_checkpoint for n in MEMBERS if n != "AM"),
            "the change to reach every node",
        )
        arrived = datetime.now(UTC)
        signed = log_pb2.Checkpoint()
        signed.ParseFromString(parse_envelope(new_checkpoint).payload)
        took = (arrived - signed.issue_time.ToDatetime(tzinfo=UTC)).total_seconds()
        print(f"   every other node ({len(MEMBERS) - 1}) held AM's new checkpoint {took:.2f} s after AM signed it "
              "(the publish command itself was still exiting)")
        run([CLIENT, "--server", pe, "show", "members/AM/authorities/demo-cybercrime-unit"], env)

        print(f"\n== 8b. As of {before}, just before Armenia published it: in effect")
        print("   then by today's knowledge (it took effect yesterday), but not what the directory")
        print("   said then (--published)")
        preserve = ["find", "--in", "AM", "--type", "mla.electronic-evidence.preservation", "--as-of", before]
        run([CLIENT, "--server", pe, *preserve], env)
        run([CLIENT, "--server", pe, *preserve, "--published"], env)
        run([CLIENT, "--server", pe, "history", "members/AM/authorities/demo-cybercrime-unit"], env)

        print("\n== 9. Kazakhstan's node goes down; the others still answer about Kazakhstan from verified copies")
        running["KZ"].send_signal(signal.SIGTERM)
        running["KZ"].wait(timeout=15)
        print(f"   KZ node stopped (exit {running['KZ'].returncode}); {kz} no longer answers")
        run([CLIENT, "--server", ge, "find", "--in", "KZ", "--type", "extradition", "--from", "GE", "--urgent"], env)
        print("\n== 10. She copies the whole federation to her laptop (verified like any sync), and answers")
        print("   from the copy with every node down: the answer says how old the copy is")
        run([CLIENT, "--server", az, "mirror"], env)
        for code, proc in running.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=15)
        print("   every node stopped")
        run([CLIENT, "--offline", *witness], env)
        run([CLIENT, "mirror", "--export", "directory-copy.db"], env)
        print("\n== Done: every answer above was verified against the pinned federation document,")
        print("   including those about members whose data came through other nodes.")
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
