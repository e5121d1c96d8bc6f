"""Federations of real nodes on loopback for the replication tests.

Each member gets its own data directory and SQLite file, its own generated key, the same
federation document, its sample records published, and a real gRPC server whose sync
engine follows the peers a topology gives it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import PASSPHRASE, SAMPLE_DATA, Federation  # type: ignore[import-not-found, unused-ignore]
from sqlalchemy import select

from counterpart_core import signing
from directory_server.config import CONFIG_NAME, NodeConfig
from directory_server.node import Node
from directory_server.service.server import NodeServer
from directory_server.storage import models

FIVE = ["AM", "AZ", "GE", "KZ", "PE"]


def line(members: list[str]) -> dict[str, list[str]]:
    """Each member talks only to its neighbours."""
    return {m: [n for n in (members[i - 1] if i else None, members[i + 1] if i + 1 < len(members) else None) if n]
            for i, m in enumerate(members)}


def star(members: list[str]) -> dict[str, list[str]]:
    """The first member is the hub; every other talks only to it."""
    hub, *rest = members
    return {hub: rest, **{m: [hub] for m in rest}}


def mesh(members: list[str]) -> dict[str, list[str]]:
    return {m: [n for n in members if n != m] for m in members}


def stored_state(node: Node) -> dict[str, Any]:
    """Everything a node holds that sync may change: logs, checkpoints, derived records and
    federation documents (not the sync bookkeeping, which counts rejections)."""
    with node.store.engine.connect() as c:
        return {
            "entries": [tuple(r) for r in c.execute(select(models.EntryRow.member, models.EntryRow.seq, models.EntryRow.envelope).order_by(models.EntryRow.member, models.EntryRow.seq))],
            "checkpoints": dict(tuple(r) for r in c.execute(select(models.CheckpointRow.member, models.CheckpointRow.envelope))),  # type: ignore[misc]
            "records": [tuple(r) for r in c.execute(select(models.RecordRow.name, models.RecordRow.seq).order_by(models.RecordRow.name))],
            "federation": [tuple(r) for r in c.execute(select(models.FederationDocumentRow.version, models.FederationDocumentRow.envelope))],
        }


def many_authorities(directory: Path, member: str, count: int, label: str = "Court") -> Path:
    """A record folder with ``count`` valid authorities (synthetic functions, no people)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"member: {member}", "authorities:"]
    for i in range(count):
        lines += [
            f"  - id: c{i:05d}",
            f'    display_names: [{{language: en, text: "{label} {i}"}}]',
            "    kind: court",
            "    coverage: {national: true}",
            "    competences:",
            "      - request_types: [mla.general]",
            "        roles: [COMPETENCE_ROLE_EXECUTES]",
        ]
    (directory / "authorities.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until check() holds; return the seconds it took, fail the test naming ``what``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


@dataclass
class Cluster:
    """Real nodes of a test federation, each serving on a free loopback port."""

    root: Path
    federation: Federation
    members: list[str]
    sync_interval: float = 2.0
    nodes: dict[str, Node] = field(default_factory=dict)
    servers: dict[str, NodeServer] = field(default_factory=dict)
    records: dict[str, Path] = field(default_factory=dict)
    document: bytes = b""

    def create(self, now: Any) -> None:
        self.document = self.federation.document(self.members, now)
        for m in self.members:
            data_dir = self.root / f"node-{m}"
            data_dir.mkdir()
            config = NodeConfig(data_dir=data_dir, member=m)
            (data_dir / CONFIG_NAME).write_text(config.to_toml(), encoding="utf-8")
            signing.write_key_file(config.key_path, self.federation.key(m), PASSPHRASE)
            node = Node(config)
            node.install_federation(self.document)
            self.records[m] = self.root / f"records-{m}"
            shutil.copytree(SAMPLE_DATA / m, self.records[m])
            node.publish(self.records[m], PASSPHRASE)
            self.nodes[m] = node

    def start(self, member: str) -> NodeServer:
        server = NodeServer(
            self.nodes[member], "127.0.0.1:0", access_log=False, peers=[], sync_interval=self.sync_interval,
        )
        server.start()
        self.servers[member] = server
        return server

    def connect(self, topology: dict[str, list[str]]) -> None:
        for m, peers in topology.items():
            self.servers[m].set_peers([self.servers[p].address for p in peers if p in self.servers])

    def start_all(self, topology: dict[str, list[str]]) -> None:
        for m in self.members:
            self.start(m)
        self.connect(topology)

    def stop(self, member: str) -> None:
        self.servers.pop(member).stop(grace=0)

    def close(self) -> None:
        for m in list(self.servers):
            self.stop(m)
        for node in self.nodes.values():
            node.close()

    def origin_checkpoints(self) -> dict[str, bytes | None]:
        return {m: self.nodes[m].store.checkpoint(m) for m in self.members}

    def converged(self, on: Iterable[str] | None = None) -> bool:
        want = self.origin_checkpoints()
        return all(self.nodes[n].store.checkpoint(m) == cp for n in (on or self.members) for m, cp in want.items())

    def wait_converged(self, timeout: float = 30.0, on: Iterable[str] | None = None) -> float:
        return wait_for(lambda: self.converged(on), timeout, "every node to hold every member's latest checkpoint")

