"""A serving node pushes a checkpoint committed by another process at once, with no poll.

Two ways reach it: on one machine, a process over the same data directory wakes it through
the sockets of ``directory_server.wake``. On other machines over one PostgreSQL database,
PostgreSQL's LISTEN/NOTIFY reaches it (``directory_server.storage.pgnotify``). The serving
node's fallback poll is set to an hour here, so a push seen within the test's wait can only
have come through one of them. The publishing process is a real `counterpart-node publish`
subprocess, never the serving process itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from conftest import PASSPHRASE, Federation  # type: ignore[import-not-found, unused-ignore]
from tests_support_cluster import wait_for
from tests_support_records import GOOD_RECORDS

from counterpart.v1 import replication_service_pb2 as rs
from counterpart.v1 import replication_service_pb2_grpc as rs_grpc
from counterpart_core import signing
from directory_server.config import CONFIG_NAME, NodeConfig
from directory_server.node import Node
from directory_server.service.server import NodeServer

HOUR = 3600.0


class Watcher:
    """A peer following the node's WatchCheckpoints over real gRPC, keeping every push."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.pushed: list[bytes] = []
        self._call = rs_grpc.ReplicationServiceStub(self.channel).WatchCheckpoints(rs.WatchCheckpointsRequest())
        self._call.initial_metadata()  # accepted: pushes from now on reach it
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            for event in self._call:
                if event.signed_checkpoint:
                    self.pushed.append(event.signed_checkpoint)
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    def close(self) -> None:
        self._call.cancel()
        self.channel.close()


def publish_in_another_process(data_dir: Path, records: Path) -> None:
    env = {**os.environ, "COUNTERPART_KEY_PASSPHRASE": PASSPHRASE.decode()}
    done = subprocess.run(
        [sys.executable, "-m", "directory_server.cli", "publish", str(records), "--data-dir", str(data_dir)],
        check=False, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture
def records(tmp_path: Path) -> Path:
    folder = tmp_path / "records"
    folder.mkdir()
    (folder / "r.yaml").write_text(GOOD_RECORDS, encoding="utf-8")
    return folder


@pytest.fixture
def serving(make_node: Callable[..., Node]) -> Iterator[Callable[[str], tuple[Node, NodeServer, Watcher]]]:
    started: list[tuple[NodeServer, Watcher]] = []

    def start(database_url: str) -> tuple[Node, NodeServer, Watcher]:
        node = make_node("GE", database_url=database_url)
        server = NodeServer(node, "127.0.0.1:0", access_log=False, push_poll=HOUR)
        server.start()
        watcher = Watcher(server.address)
        started.append((server, watcher))
        return node, server, watcher

    yield start
    for server, watcher in started:
        watcher.close()
        server.stop(grace=0)


def test_a_publish_by_another_process_over_the_data_directory_is_pushed(
    serving: Callable[[str], tuple[Node, NodeServer, Watcher]], records: Path
) -> None:
    node, _, watcher = serving("")
    publish_in_another_process(node.config.data_dir, records)
    held = node.store.checkpoints()["GE"]
    wait_for(lambda: held in watcher.pushed, 30, "the push of the checkpoint the other process committed")


def test_a_publish_on_another_machine_over_postgresql_is_pushed(
    serving: Callable[[str], tuple[Node, NodeServer, Watcher]], postgres_schema_url: str, records: Path,
    tmp_path: Path, federation: Federation,
) -> None:
    node, server, watcher = serving(postgres_schema_url)
    listener = server._listener
    assert listener is not None, "a node on PostgreSQL listens for other machines' commits"
    wait_for(listener.listening.is_set, 30, "the node's LISTEN")
    # "another machine": a data directory of its own (no wake socket of the serving node in
    # it), the same database, the same member's key
    other = tmp_path / "other-machine"
    other.mkdir()
    config = NodeConfig(data_dir=other, member="GE", database_url=postgres_schema_url)
    (other / CONFIG_NAME).write_text(config.to_toml(), encoding="utf-8")
    signing.write_key_file(config.key_path, federation.key("GE"), PASSPHRASE)
    publish_in_another_process(other, records)
    held = node.store.checkpoints()["GE"]
    wait_for(lambda: held in watcher.pushed, 30, "the push of the checkpoint committed on the other machine")
