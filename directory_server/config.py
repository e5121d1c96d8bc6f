"""Node configuration: <data-dir>/node.toml, overridden by COUNTERPART_* variables and flags."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import tomli_w

from counterpart_core.errors import ConfigurationError
from counterpart_core.timeutil import parse_duration
from directory_server.storage.store import sqlite_url

CONFIG_NAME = "node.toml"


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    member: str
    listen: str = "127.0.0.1:7700"
    database_url: str = ""  # empty: SQLite file in the data directory
    key_file: str = "keys/node-key.pem"
    checkpoint_validity: str = "7d"
    heartbeat_interval: str = "1h"
    # gRPC worker threads. Lookups are Python-bound, so more threads than cores add
    # contention, not throughput (bench/README.md: 16 threads gave less than 4).
    workers: str = "4"
    # Peers to sync from ("host:port", comma-separated), besides the endpoints the
    # federation document lists for the other members.
    peers: str = ""
    # Anti-entropy: pull from every peer this often even without a push.
    sync_interval: str = "30s"
    # Deadline of one call to a peer (a range pull gets 2 ms more per entry).
    sync_deadline: str = "10s"
    # TLS 1.3 on every listener ("on" or "off"). Off is allowed on loopback only, for
    # development and tests; `counterpart-node init` creates the key and turns it on.
    tls: str = "off"
    tls_key_file: str = "keys/tls-key.pem"  # encrypted like key_file, mode 600
    tls_cert_file: str = "keys/tls-cert.pem"  # public; the secretariat lists it for the member
    # Where other member nodes connect with mutual TLS (replication of members-only
    # entries); must match the member's peer_endpoints in the federation document.
    # Empty: no peer listener.
    peer_listen: str = ""
    # "true": accept this node's own member's log from peers (to rebuild it after losing
    # the database). Otherwise a peer offering it is refused with an alarm: only this node
    # signs for its member, so someone else holds the key or another process publishes.
    restore_from_peers: str = "false"
    # "one": `serve` locks the data directory and its port, so a second process of the node
    # fails at once. "several": several serving processes of one node over one (PostgreSQL)
    # database on purpose; they share the lock and the listen port (SO_REUSEPORT).
    processes: str = "one"
    # Prometheus metrics over plain HTTP ("host:port", e.g. 127.0.0.1:9700). Empty: off.
    metrics_listen: str = ""

    @property
    def db_url(self) -> str:
        return self.database_url or sqlite_url(self.data_dir)

    @property
    def key_path(self) -> Path:
        return self._path(self.key_file)

    @property
    def checkpoint_validity_td(self) -> timedelta:
        return _duration("checkpoint_validity", self.checkpoint_validity)

    @property
    def workers_count(self) -> int:
        if not self.workers.isdigit() or not 1 <= int(self.workers) <= 256:
            raise ConfigurationError(f"workers: {self.workers!r} is not a number from 1 to 256", reason="INVALID_CONFIG")
        return int(self.workers)

    @property
    def peer_list(self) -> list[str]:
        peers = [p.strip() for p in self.peers.split(",") if p.strip()]
        for p in peers:
            host, sep, port = p.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigurationError(f"peers: {p!r} is not host:port", reason="INVALID_CONFIG")
        return peers

    @property
    def restore_from_peers_enabled(self) -> bool:
        if self.restore_from_peers not in ("true", "false"):
            raise ConfigurationError(
                f"restore_from_peers: {self.restore_from_peers!r} is not 'true' or 'false'", reason="INVALID_CONFIG"
            )
        return self.restore_from_peers == "true"

    @property
    def several_processes(self) -> bool:
        if self.processes not in ("one", "several"):
            raise ConfigurationError(f"processes: {self.processes!r} is not 'one' or 'several'", reason="INVALID_CONFIG")
        return self.processes == "several"

    @property
    def metrics_address(self) -> str:
        """``metrics_listen`` checked: "" (off) or host:port."""
        value = self.metrics_listen.strip()
        if value:
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit() or int(port) > 65535:
                raise ConfigurationError(f"metrics_listen: {value!r} is not host:port", reason="INVALID_CONFIG")
        return value

    @property
    def tls_enabled(self) -> bool:
        if self.tls not in ("on", "off"):
            raise ConfigurationError(f"tls: {self.tls!r} is not 'on' or 'off'", reason="INVALID_CONFIG")
        return self.tls == "on"

    @property
    def tls_key_path(self) -> Path:
        return self._path(self.tls_key_file)

    @property
    def tls_cert_path(self) -> Path:
        return self._path(self.tls_cert_file)

    def _path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.data_dir / p

    @property
    def sync_interval_seconds(self) -> float:
        return _duration("sync_interval", self.sync_interval).total_seconds()

    @property
    def sync_deadline_seconds(self) -> float:
        return _duration("sync_deadline", self.sync_deadline).total_seconds()

    @property
    def heartbeat_interval_td(self) -> timedelta:
        return _duration("heartbeat_interval", self.heartbeat_interval)

    def to_toml(self) -> str:
        """The file ``load_config`` reads back exactly, whatever the values hold (backslashes,
        quotes, newlines, any script): written by a TOML library, not by hand."""
        values = {f.name: str(getattr(self, f.name)) for f in fields(self) if f.name != "data_dir"}
        header = "# Counterpart node configuration; every key can be overridden by COUNTERPART_<KEY>.\n"
        return header + tomli_w.dumps(values)


def _duration(name: str, value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise ConfigurationError(f"{name}: {e}", reason="INVALID_CONFIG") from e


def load_config(data_dir: Path, overrides: dict[str, Any] | None = None) -> NodeConfig:
    path = data_dir / CONFIG_NAME
    if not path.exists():
        raise ConfigurationError(
            f"{path} does not exist; create the node with `counterpart-node init --member XX --data-dir {data_dir}`",
            reason="NOT_INITIALIZED",
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, OSError) as e:
        raise ConfigurationError(f"{path}: {e}", reason="INVALID_CONFIG") from e
    known = {f.name for f in fields(NodeConfig)} - {"data_dir"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigurationError(f"{path}: unknown option(s) {', '.join(unknown)}", reason="INVALID_CONFIG")
    values: dict[str, Any] = {k: str(v) for k, v in raw.items()}
    for key in known:
        env = os.environ.get(f"COUNTERPART_{key.upper()}")
        if env:
            values[key] = env
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    if "member" not in values:
        raise ConfigurationError(f"{path}: 'member' is required", reason="INVALID_CONFIG")
    return replace(NodeConfig(data_dir=data_dir, member=values.pop("member")), **values)
