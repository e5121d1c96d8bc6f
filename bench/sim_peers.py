"""Simulated peers for a big federation: one process, one real store, many loopback ports.

Sets up a federation of ``--members`` simulated members (S001, S002, ...) and one more,
HOME, the node under study:

- a generated root key signs a document listing every member with its own key and its own
  loopback endpoint (HOME's endpoint is ``--home-port``);
- the simulated members' logs (one authority each, published with ``Node.publish``, each
  signed by its own member's key) are all held by ONE store in ``WORK/sim``, which one
  ``NodeServer`` serves on every simulated member's port: each port is a peer that speaks
  the real protocol over real gRPC (GetCheckpoints of every member, GetEntries,
  GetConsistencyProof, WatchCheckpoints pushes on every commit), relaying every member's log
  as a real node does. Its server takes as many watchers as there are ports;
- ``WORK/home`` is HOME's data directory, ready to serve (``node.toml``, its encrypted key,
  the document installed, no records).

It then prints one JSON line (``{"ready": ..., "addresses": [...], "home": ...}``) and reads
commands on stdin, one per line:

- ``change S017``: publishes one changed record of that member (one entry), prints
  ``{"changed": "S017", "size": N}`` once committed (the server pushes it at once);
- ``watch N ADDRESS``: opens N WatchCheckpoints streams to ADDRESS (a node followed by N
  peers) and prints how many the node accepted; ``unwatch`` closes them;
- ``quit``.

Used by bench/bench_rest.py and tests/integration/test_big_federation.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import grpc

from counterpart.v1 import replication_service_pb2 as rs
from counterpart.v1 import replication_service_pb2_grpc as rs_grpc
from counterpart_core import federation as fed
from counterpart_core import signing
from directory_server.config import CONFIG_NAME, NodeConfig
from directory_server.node import Node
from directory_server.service.server import NodeServer, setup_logging

PASSPHRASE = b"sim-only-passphrase"  # generated keys in a scratch directory
HOME = "HOME"


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_records(directory: Path, member: str, label: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "authorities.yaml").write_text(
        "\n".join([
            f"member: {member}",
            "authorities:",
            "  - id: court",
            f'    display_names: [{{language: en, text: "{label}"}}]',
            "    kind: court",
            "    coverage: {national: true}",
            "    competences:",
            "      - request_types: [mla.general]",
            "        roles: [COMPETENCE_ROLE_EXECUTES]",
        ]) + "\n",
        encoding="utf-8",
    )


def setup(work: Path, members: int, home_port: int) -> tuple[list[str], dict[str, str]]:
    now = datetime.now(UTC).replace(microsecond=0)
    codes = [f"S{i:03d}" for i in range(1, members + 1)]
    ports = free_ports(members)
    addresses = {c: f"127.0.0.1:{p}" for c, p in zip(codes, ports, strict=True)}
    addresses[HOME] = f"127.0.0.1:{home_port}"
    root = signing.SigningKey.generate()
    keys = {c: signing.SigningKey.generate() for c in [*codes, HOME]}
    doc = fed.new_document("sim-federation", [root.public_bytes], 1, now, timedelta(days=30))
    for c in [*codes, HOME]:
        fed.add_member(doc, c, f"Member {c}", [keys[c].public_bytes], [addresses[c]])
    envelope = signing.sign_envelope(doc.SerializeToString(deterministic=True), signing.FEDERATION_TYPE, [root])
    sim = work / "sim"
    sim.mkdir(parents=True)
    for c in codes:
        config = NodeConfig(data_dir=sim, member=c, key_file=f"keys/{c}.pem")
        signing.write_key_file(config.key_path, keys[c], PASSPHRASE)
    first = Node(NodeConfig(data_dir=sim, member=codes[0], key_file=f"keys/{codes[0]}.pem"))
    first.install_federation(envelope)
    first.close()
    for c in codes:
        write_records(sim / "records" / c, c, f"Court of {c}")
        publish(sim, c)
    home = work / "home"
    home.mkdir()
    config = NodeConfig(data_dir=home, member=HOME, listen=addresses[HOME])
    (home / CONFIG_NAME).write_text(config.to_toml(), encoding="utf-8")
    signing.write_key_file(config.key_path, keys[HOME], PASSPHRASE)
    node = Node(config)
    node.install_federation(envelope)
    node.close()
    return codes, addresses


def publish(sim: Path, code: str) -> int:
    node = Node(NodeConfig(data_dir=sim, member=code, key_file=f"keys/{code}.pem"))
    try:
        return node.publish(sim / "records" / code, PASSPHRASE).checkpoint_size
    finally:
        node.close()


class Watchers:
    """N WatchCheckpoints streams to one address, in their own event loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="watchers", daemon=True).start()
        self.channels: list[grpc.aio.Channel] = []
        self.calls: list[Any] = []

    def open(self, n: int, address: str) -> int:
        return asyncio.run_coroutine_threadsafe(self._open(n, address), self.loop).result(120)

    async def _open(self, n: int, address: str) -> int:
        accepted = 0
        for _ in range(n):
            channel = grpc.aio.insecure_channel(address)  # one connection per watcher, as peers have
            call = rs_grpc.ReplicationServiceStub(channel).WatchCheckpoints(rs.WatchCheckpointsRequest())
            self.channels.append(channel)
            self.calls.append(call)
        await asyncio.sleep(1.0)
        for call in self.calls:
            if not call.done():
                accepted += 1
        return accepted

    def close(self) -> None:
        async def close() -> None:
            for call in self.calls:
                call.cancel()
            for channel in self.channels:
                await channel.close(None)
            self.calls, self.channels = [], []

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(60)


class SimPeers:
    """This script as a child process, driven over its stdin: one JSON line back per command."""

    def __init__(self, work: Path, members: int, home_port: int, *, access_log: bool = False,
                 stderr: IO[bytes] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--work", str(work), "--members", str(members),
             "--home-port", str(home_port), *(["--access-log"] if access_log else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("COUNTERPART_")}, start_new_session=True,
        )
        self.info = self.read()

    def read(self) -> dict[str, Any]:
        out = self.proc.stdout
        assert out is not None
        line = out.readline()
        if not line:
            raise RuntimeError(f"the simulated peers exited with {self.proc.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def send(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="an empty scratch directory")
    p.add_argument("--members", type=int, default=200)
    p.add_argument("--home-port", type=int, required=True)
    p.add_argument("--access-log", action="store_true",
                   help="log every unary call served, as JSON on stderr (to count a node's calls)")
    a = p.parse_args(argv)
    if a.access_log:
        setup_logging("INFO")
    codes, addresses = setup(a.work, a.members, a.home_port)
    sim = Node(NodeConfig(data_dir=a.work / "sim", member=codes[0], key_file=f"keys/{codes[0]}.pem"))
    server = NodeServer(
        sim, addresses[codes[0]], access_log=a.access_log, max_workers=8, watch_limit=len(codes) + 16,
    )
    for c in codes[1:]:
        server.server.add_insecure_port(addresses[c])
    server.start()
    print(json.dumps({"ready": len(codes), "addresses": [addresses[c] for c in codes], "home": addresses[HOME],
                      "home_dir": str(a.work / "home")}), flush=True)
    watchers = Watchers()
    changed: dict[str, int] = {}
    try:
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "change":
                code = words[1]
                changed[code] = changed.get(code, 0) + 1
                write_records(a.work / "sim" / "records" / code, code, f"Court of {code}, changed {changed[code]} times")
                print(json.dumps({"changed": code, "size": publish(a.work / "sim", code)}), flush=True)
            elif words[0] == "watch":
                print(json.dumps({"watching": watchers.open(int(words[1]), words[2])}), flush=True)
            elif words[0] == "unwatch":
                watchers.close()
                print(json.dumps({"unwatched": True}), flush=True)
            elif words[0] == "quit":
                break
    finally:
        server.stop(grace=0)
        sim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
