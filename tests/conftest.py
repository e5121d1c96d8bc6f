"""Shared fixtures: keys generated per test, federation documents, real nodes on loopback."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from counterpart_core import federation as fed
from counterpart_core import signing
from directory_server.config import CONFIG_NAME, NodeConfig
from directory_server.node import Node
from directory_server.service.server import NodeServer

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "sample_data"
PASSPHRASE = b"test-passphrase"  # tests only; generated keys never leave tmp_path


class Clock:
    """A controllable clock for expiry logic."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime.now(UTC).replace(microsecond=0))


@dataclass
class Federation:
    """Root keys and member keys of a test federation, and documents signed by them."""

    root_keys: list[signing.SigningKey]
    member_keys: dict[str, signing.SigningKey] = field(default_factory=dict)
    threshold: int = 1

    def key(self, member: str) -> signing.SigningKey:
        if member not in self.member_keys:
            self.member_keys[member] = signing.SigningKey.generate()
        return self.member_keys[member]

    def document(
        self, members: list[str], now: datetime, *, version: int = 1, signers: list[signing.SigningKey] | None = None,
        valid_for: timedelta = timedelta(days=365),
    ) -> bytes:
        doc = fed.new_document("test", [k.public_bytes for k in self.root_keys], self.threshold, now, valid_for)
        doc.version = version
        for m in members:
            fed.add_member(doc, m, f"Member {m}", [self.key(m).public_bytes], [])
        payload = doc.SerializeToString(deterministic=True)
        return signing.sign_envelope(payload, signing.FEDERATION_TYPE, signers if signers is not None else self.root_keys)


@pytest.fixture
def federation() -> Federation:
    return Federation([signing.SigningKey.generate()])


@pytest.fixture
def make_node(tmp_path: Path, federation: Federation, clock: Clock) -> Iterator[Callable[..., Node]]:
    """make_node("GE") -> a Node with its key on disk and the federation installed."""
    nodes: list[Node] = []

    def factory(member: str, members: list[str] | None = None, database_url: str = "") -> Node:
        data_dir = tmp_path / f"node-{member}-{len(nodes)}"
        data_dir.mkdir()
        config = NodeConfig(data_dir=data_dir, member=member, database_url=database_url)
        (data_dir / CONFIG_NAME).write_text(config.to_toml(), encoding="utf-8")
        signing.write_key_file(config.key_path, federation.key(member), PASSPHRASE)
        node = Node(config, clock=clock)
        node.install_federation(federation.document(members or [member], clock()))
        nodes.append(node)
        return node

    yield factory
    for n in nodes:
        n.close()


@pytest.fixture
def sample_dir(tmp_path: Path) -> Callable[[str], Path]:
    """A private copy of one member's sample data, safe to edit."""

    def copy(member: str) -> Path:
        dst = tmp_path / f"sample-{member}"
        shutil.copytree(SAMPLE_DATA / member, dst)
        return dst

    return copy


@pytest.fixture
def served(make_node: Callable[..., Node], sample_dir: Callable[[str], Path]) -> Iterator[tuple[NodeServer, grpc.Channel]]:
    """A GE node with the GE sample data, serving on a free loopback port."""
    node = make_node("GE", ["GE", "AZ", "AM"])  # AZ and AM: requesting members known to the federation
    node.publish(sample_dir("GE"), PASSPHRASE)
    server = NodeServer(node, "127.0.0.1:0", access_log=False)
    server.start()
    channel = grpc.insecure_channel(server.address)
    yield server, channel
    channel.close()
    server.stop(grace=0)


def postgres_url() -> str:
    return os.environ.get("COUNTERPART_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used, or None when it answers."""
    try:
        engine = sa.create_engine(postgres_url(), connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return None
    except Exception as e:  # noqa: BLE001 - any failure to connect means: skip, and say why
        return f"PostgreSQL at {postgres_url()} does not answer ({type(e).__name__}: {str(e).splitlines()[0][:120]})"


@pytest.fixture
def postgres_schema_url() -> Iterator[str]:
    """A URL whose connections use a fresh, empty schema, dropped afterwards; skips with the
    reason printed when PostgreSQL does not answer."""
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    schema = f"cp_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_url())
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in postgres_url() else "?"
    try:
        yield f"{postgres_url()}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many storage contract tests ran on each backend (PostgreSQL may be absent)."""
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if "test_storage_contract" not in nodeid or getattr(report, "when", "call") not in ("call", "setup"):
                continue
            if outcome != "skipped" and report.when != "call":
                continue
            backend = "postgresql" if "[postgresql]" in nodeid else "sqlite"
            counts.setdefault(backend, {}).setdefault(outcome, 0)
            counts[backend][outcome] += 1
    if counts:
        parts = [f"{b}: " + ", ".join(f"{n} {o}" for o, n in sorted(c.items())) for b, c in sorted(counts.items())]
        terminalreporter.write_line("storage contract tests: " + "; ".join(parts))
