"""Real nodes on loopback replicate each other's signed logs (DESIGN §5).

Five members in a line, a star and a full mesh converge; a member's records reach a node
that never talks to it; a partition heals; tombstones reach every node; lookups answer
about other members from the verified copy, also once the origin is down; a member that
shows two histories to two nodes is caught once those nodes talk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import PASSPHRASE  # type: ignore[import-not-found, unused-ignore]
from sqlalchemy import func, select
from tests_support_cluster import FIVE, Cluster, line, mesh, star, stored_state, wait_for
from tests_support_records import GOOD_RECORDS

from counterpart.v1 import directory_service_pb2 as ds
from directory_server.cli import main as node_cli
from directory_server.lookup import Directory
from directory_server.node import Node
from directory_server.service.server import NodeServer
from directory_server.storage import models
from directory_server.sync import Syncer


@pytest.fixture
def cluster(tmp_path: Path, federation: object) -> Iterator[Cluster]:
    c = Cluster(tmp_path, federation, list(FIVE))  # type: ignore[arg-type]
    c.create(datetime.now(UTC))
    yield c
    c.close()


def counts(node: Node, member: str, public_only: bool = False) -> dict[str, int]:
    """Current records of a member per kind (only those anyone may see, with ``public_only``)."""
    with node.store.engine.connect() as c:
        q = select(models.RecordRow.kind, func.count()).where(models.RecordRow.member == member)
        if public_only:
            q = q.where(models.RecordRow.public.is_(True))
        return {k: int(n) for k, n in c.execute(q.group_by(models.RecordRow.kind))}


def add_authority(records: Path, member: str, ident: str, name: str) -> str:
    """A new record file with one authority; returns the record's resource name."""
    (records / f"extra-{ident}.yaml").write_text(
        f"member: {member}\nauthorities:\n  - id: {ident}\n"
        f'    display_names: [{{language: en, text: "{name}"}}]\n'
        "    kind: court\n    coverage: {national: true}\n",
        encoding="utf-8",
    )
    return f"members/{member}/authorities/{ident}"


@pytest.mark.parametrize("topology", [line, star, mesh], ids=["line", "star", "mesh"])
def test_five_nodes_converge(cluster: Cluster, topology: Callable[[list[str]], dict[str, list[str]]]) -> None:
    peers = topology(cluster.members)
    cluster.start_all(peers)
    cluster.wait_converged()
    for n in cluster.members:
        for m in cluster.members:
            # every puller is anonymous (no TLS yet): members-only contacts reach no other node
            assert counts(cluster.nodes[n], m) == counts(cluster.nodes[m], m, public_only=n != m), (n, m)
        assert cluster.nodes[n].verify()[1] == [], f"{n} holds something that does not verify"
        assert not cluster.nodes[n].store.rejections()


def test_records_reach_a_node_that_never_talks_to_their_member(cluster: Cluster) -> None:
    """In the line AM-AZ-GE-KZ-PE, AM only talks to AZ: PE's records reach it through relays."""
    cluster.start_all(line(cluster.members))
    cluster.wait_converged()
    am = cluster.nodes["AM"]
    peers_seen = {p.peer for p in am.store.peer_rows()}
    assert peers_seen == {cluster.servers["AZ"].address}
    answer = Directory(am.store, am.federation).find_counterpart(
        ds.FindCounterpartRequest(requested_member="PE", request_type="mla.general", requesting_member="AM")
    )
    assert answer.candidates, answer.warnings
    assert all(c.authority.name.startswith("members/PE/") for c in answer.candidates)
    pe = next(p for p in answer.provenances if p.member == "PE")
    assert pe.signed_checkpoint == cluster.nodes["PE"].store.checkpoint("PE")
    assert pe.checkpoint_size == cluster.nodes["PE"].store.log_size("PE") and not pe.stale


def test_others_answer_about_a_member_whose_node_is_down(cluster: Cluster) -> None:
    cluster.start_all(mesh(cluster.members))
    cluster.wait_converged()
    cluster.stop("KZ")
    ge = cluster.nodes["GE"]
    answer = Directory(ge.store, ge.federation).find_counterpart(
        ds.FindCounterpartRequest(requested_member="KZ", request_type="mla.general", requesting_member="GE")
    )
    assert answer.candidates
    kz = next(p for p in answer.provenances if p.member == "KZ")
    assert kz.signed_checkpoint == cluster.nodes["KZ"].store.checkpoint("KZ")
    assert not kz.stale


def test_partition_heals(cluster: Cluster) -> None:
    left, right = ["AM", "AZ"], ["GE", "KZ", "PE"]
    cluster.start_all({m: [n for n in (left if m in left else right) if n != m] for m in cluster.members})
    name_left = add_authority(cluster.records["AZ"], "AZ", "p-left", "Court on the left")
    cluster.nodes["AZ"].publish(cluster.records["AZ"], PASSPHRASE)
    name_right = add_authority(cluster.records["KZ"], "KZ", "p-right", "Court on the right")
    cluster.nodes["KZ"].publish(cluster.records["KZ"], PASSPHRASE)

    def side_has(side: list[str], name: str) -> bool:
        return all(cluster.nodes[n].store.record_row(name) is not None for n in side)

    wait_for(lambda: side_has(left, name_left) and side_has(right, name_right), 30, "each side to converge")
    assert all(cluster.nodes[n].store.record_row(name_right) is None for n in left)
    assert all(cluster.nodes[n].store.record_row(name_left) is None for n in right)

    cluster.connect(mesh(cluster.members))
    cluster.wait_converged()
    assert side_has(cluster.members, name_left) and side_has(cluster.members, name_right)


def test_tombstones_reach_every_node(cluster: Cluster) -> None:
    cluster.start_all(star(cluster.members))
    name = add_authority(cluster.records["GE"], "GE", "to-go", "Court that closes")
    cluster.nodes["GE"].publish(cluster.records["GE"], PASSPHRASE)
    cluster.wait_converged()
    assert all(cluster.nodes[n].store.record_row(name) is not None for n in cluster.members)
    (cluster.records["GE"] / "extra-to-go.yaml").unlink()
    plan = cluster.nodes["GE"].publish(cluster.records["GE"], PASSPHRASE, prune=True)
    assert plan.deleted == [name]
    cluster.wait_converged()
    for n in cluster.members:
        assert cluster.nodes[n].store.record_row(name) is None, n
        last = cluster.nodes[n].store.envelopes("GE")[-1]
        assert last == cluster.nodes["GE"].store.envelopes("GE")[-1]


def test_a_push_starts_a_pull_long_before_anti_entropy(cluster: Cluster) -> None:
    cluster.sync_interval = 600.0  # only pushes can explain a fast propagation
    cluster.start_all(mesh(cluster.members))
    cluster.wait_converged()
    add_authority(cluster.records["PE"], "PE", "pushed", "Court announced by push")
    cluster.nodes["PE"].publish(cluster.records["PE"], PASSPHRASE)
    took = cluster.wait_converged(timeout=20)
    assert took < 20


def test_a_member_showing_two_histories_is_caught_when_nodes_talk(
    make_node: Callable[..., Node], sample_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    members = ["GE", "AZ", "KZ"]
    fork_a, fork_b = make_node("GE", members), make_node("GE", members)  # same key, two histories
    records_a = tmp_path / "fork-a"
    records_a.mkdir()
    (records_a / "records.yaml").write_text(GOOD_RECORDS, encoding="utf-8")
    fork_a.publish(records_a, PASSPHRASE)
    fork_b.publish(sample_dir("GE"), PASSPHRASE)
    az, kz = make_node("AZ", members), make_node("KZ", members)
    servers = [NodeServer(n, "127.0.0.1:0", access_log=False) for n in (fork_a, fork_b, az, kz)]
    for s in servers:
        s.start()
    a_addr, b_addr, az_addr, kz_addr = (s.address for s in servers)
    try:
        assert Syncer(az).sync_peer(a_addr).pulled == {"GE": 5}
        assert Syncer(kz).sync_peer(b_addr).pulled == {"GE": fork_b.store.log_size("GE")}
        assert az.store.checkpoint("GE") == fork_a.store.checkpoint("GE")
        assert kz.store.checkpoint("GE") == fork_b.store.checkpoint("GE")
        before_az, before_kz = stored_state(az), stored_state(kz)

        # AZ holds the shorter history; KZ offers the longer one: caught by the fork check
        report = Syncer(az).sync_peer(kz_addr)
        assert report.equivocations == ["GE"]
        # KZ holds the longer one; AZ offers a smaller tree whose root KZ's leaves contradict
        report = Syncer(kz).sync_peer(az_addr)
        assert report.equivocations == ["GE"]

        assert stored_state(az) == before_az and stored_state(kz) == before_kz  # first history kept
        for node, other in ((az, fork_b), (kz, fork_a)):
            evidence = node.store.evidence()
            assert [e.member for e in evidence] == ["GE"]
            assert evidence[0].offered_checkpoint == other.store.checkpoint("GE")
        result = CliRunner().invoke(node_cli, ["status", "--data-dir", str(az.config.data_dir), "--format", "json"])
        assert result.exit_code == 0, result.output
        ge = next(m for m in json.loads(result.stdout)["members"] if m["member"] == "GE")
        assert len(ge["equivocations"]) == 1 and ge["equivocations"][0]["peer"] == kz_addr
        # seen again: the same evidence is not stored twice
        Syncer(az).sync_peer(kz_addr)
        assert len(az.store.evidence()) == 1
    finally:
        for s in servers:
            s.stop(grace=0)
