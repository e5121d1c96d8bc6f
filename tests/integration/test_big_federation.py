"""A node peered with 200 members (issue 11, item 5), over real gRPC.

The 200 peers are simulated by one process (bench/sim_peers.py): one real store holding
200 members' logs, each signed by its own member's key, served by one NodeServer on 200
loopback ports; each port speaks the real protocol (GetCheckpoints, GetEntries,
GetConsistencyProof, WatchCheckpoints pushes). The node under test is a real NodeServer
with its sync engine, in this process. What is counted: its threads, and the work one
change at one member causes (pulls, of which members, and whole passes). No timing.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests_support_cluster import wait_for  # type: ignore[import-not-found, unused-ignore]

from directory_server.config import load_config
from directory_server.node import Node
from directory_server.service.server import NodeServer
from directory_server.sync import PeerReport

SIM = Path(__file__).resolve().parents[2] / "bench" / "sim_peers.py"
MEMBERS = 200


def _sim_module() -> Any:
    spec = importlib.util.spec_from_file_location("sim_peers", SIM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    peers = _sim_module().SimPeers(tmp_path_factory.mktemp("big"), MEMBERS, free_port())
    try:
        yield peers
    finally:
        peers.close()


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_a_node_peered_with_200_members_holds_few_threads_and_pulls_only_the_changed_member(sim: Any) -> None:
    node = Node(load_config(Path(sim.info["home_dir"])))
    before = os_threads()
    server = NodeServer(node, sim.info["home"], access_log=False, peers=[], sync_interval=3600)
    reports: list[PeerReport] = []
    server.observe_sync(reports.append)
    server.start()
    try:
        engine = server.sync
        assert engine is not None
        wait_for(lambda: len(engine.peers()) == MEMBERS, 60, "the federation's 200 peers")
        codes = {f"S{i:03d}" for i in range(1, MEMBERS + 1)}
        wait_for(lambda: set(node.store.checkpoints()) == codes, 300, "every member's log")
        # every peer's first pass (those that found a member being pulled by another peer
        # look again a few seconds later), and a watch stream to every peer
        wait_for(
            lambda: engine.jobs["pass"] >= MEMBERS and engine.idle()
            and not any(r.deferred for r in list(engine.last_reports.values())),
            120, "the first passes, none of them waiting to look again",
        )
        wait_for(lambda: engine.watching() == MEMBERS, 60, "a watch stream to every peer")
        threads = os_threads() - before
        assert threads <= 64, f"{threads} threads for 200 peers"

        jobs, pushes, seen = dict(engine.jobs), engine.pushes, len(reports)
        changed = sim.send("change S017")

        def holds() -> bool:
            row = node.store.checkpoint_row("S017")
            return row is not None and row.size == changed["size"]

        wait_for(holds, 60, "the change")
        # all 200 peers push the change (they all relay the member's log); once every push
        # is in and looked at, count what it cost
        wait_for(lambda: engine.pushes - pushes >= MEMBERS and engine.idle(), 60, "every peer's push")
        after = reports[seen:]
        assert [r.pulled for r in after if r.pulled] == [{"S017": 1}], "one pull, of the changed member only"
        assert not any(r.rejected or r.error for r in after)
        assert engine.jobs["pass"] == jobs["pass"], "no pass over every member"
        assert engine.jobs["push"] - jobs["push"] <= MEMBERS  # at most one job per peer's push
        assert os_threads() - before <= 64
    finally:
        server.stop(grace=0)
        node.close()
