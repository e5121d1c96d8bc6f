"""A node killed with SIGKILL at random points of a sync resumes from its verified tree
size and never holds half a batch (DESIGN §5: the cursor is the verified tree size, and
entries, derived rows and checkpoint are committed in one transaction)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from conftest import PASSPHRASE  # type: ignore[import-not-found, unused-ignore]
from tests_support_cluster import many_authorities, stored_state, wait_for

from directory_server.config import CONFIG_NAME
from directory_server.node import Node
from directory_server.service.server import NodeServer

KILLS = 8
STEP = 600  # entries the source adds before each kill


def counterpart_node() -> str:
    return str(Path(sys.executable).parent / "counterpart-node")


def check_whole(node: Node) -> None:
    """Every member's log is exactly what its checkpoint covers, every signature and root
    verifies, and the derived rows are those the log implies."""
    for member in set(node.store.members_with_logs()) | set(node.store.checkpoints()):
        row = node.store.checkpoint_row(member)
        assert row is not None, f"{member}: entries without a checkpoint"
        assert node.store.log_size(member) == row.size, f"{member}: half a batch on disk"
    checked, problems = node.verify()
    assert problems == [], problems
    assert checked == sum(node.store.log_size(m) for m in node.store.members_with_logs())
    derived = stored_state(node)["records"]
    node.rebuild()
    assert stored_state(node)["records"] == derived, "derived rows differ from what the log implies"


def test_sigkill_at_random_points_resumes_without_half_batches(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    print(f"random seed {seed}")
    source = make_node("GE", ["GE", "AZ"])
    server = NodeServer(source, "127.0.0.1:0", access_log=False)
    server.start()
    target = make_node("AZ", ["GE", "AZ"])
    config = replace(target.config, peers=server.address, sync_interval="1s", listen="127.0.0.1:0")
    (config.data_dir / CONFIG_NAME).write_text(config.to_toml(), encoding="utf-8")
    target.close()
    records = tmp_path / "source-records"
    sizes_at_kill: list[tuple[int, int]] = []
    try:
        for round_ in range(1, KILLS + 1):
            many_authorities(records, "GE", STEP * round_)
            source.publish(records, PASSPHRASE)
            proc = subprocess.Popen(
                [counterpart_node(), "serve", "--data-dir", str(config.data_dir), "--no-heartbeat",
                 "--log-level", "WARNING"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(0.3, 3.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            node = Node(config)
            try:
                check_whole(node)
                sizes_at_kill.append((node.store.log_size("GE"), source.store.log_size("GE")))
            finally:
                node.close()
        print("GE log size at each kill (target, source):", sizes_at_kill)

        proc = subprocess.Popen(
            [counterpart_node(), "serve", "--data-dir", str(config.data_dir), "--no-heartbeat"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            node = Node(config)
            want = source.store.checkpoint("GE")
            wait_for(lambda: node.store.checkpoint("GE") == want, 60, "the restarted node to converge")
            assert node.store.envelopes("GE") == source.store.envelopes("GE")
            check_whole(node)
            node.close()
        finally:
            proc.terminate()
            assert proc.wait(timeout=15) == 0
    finally:
        server.stop(grace=0)
