"""The trust root in motion (DESIGN §4): new federation documents travel between nodes and
are accepted only as version N+1 signed by the thresholds of N's and their own root keys;
a member's key rotates end to end; what is signed with a withdrawn key after its
withdrawal is refused everywhere, while what it signed before still verifies."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import PASSPHRASE, Federation  # type: ignore[import-not-found, unused-ignore]
from hostile_peer import HostilePeer
from tests_support_cluster import Cluster, line, mesh, stored_state, wait_for

from counterpart.v1 import federation_pb2
from counterpart_core import federation as fed
from counterpart_core import log, merkle, signing
from counterpart_core.timeutil import to_timestamp
from directory_server.sync import Syncer

MEMBERS = ["AZ", "GE", "KZ"]


@pytest.fixture
def federation() -> Federation:
    """Two root keys, both needed."""
    return Federation([signing.SigningKey.generate(), signing.SigningKey.generate()], threshold=2)


@pytest.fixture
def cluster(tmp_path: Path, federation: Federation) -> Iterator[Cluster]:
    c = Cluster(tmp_path, federation, list(MEMBERS), sync_interval=1.0)
    c.create(datetime.now(UTC))
    yield c
    c.close()


def next_document(
    previous: bytes, signers: list[signing.SigningKey], change: Callable[[federation_pb2.FederationDocument], None],
    version: int | None = None,
) -> bytes:
    _, doc = fed.parse_document(previous)
    doc.version = version if version is not None else doc.version + 1
    change(doc)
    fed.stamp(doc, datetime.now(UTC), timedelta(days=365))
    return signing.sign_envelope(doc.SerializeToString(deterministic=True), signing.FEDERATION_TYPE, signers)


def member_of(doc: federation_pb2.FederationDocument, code: str) -> federation_pb2.Member:
    return next(m for m in doc.members if m.code == code)


def versions(cluster: Cluster) -> dict[str, int]:
    return {m: cluster.nodes[m].store.federation_version() for m in cluster.members}


def test_a_valid_new_version_reaches_every_node_through_relays(cluster: Cluster, federation: Federation) -> None:
    cluster.start_all(line(cluster.members))  # AZ - GE - KZ: AZ never talks to KZ
    v2 = next_document(cluster.document, federation.root_keys, lambda d: None)
    cluster.nodes["KZ"].install_federation(v2)
    wait_for(lambda: set(versions(cluster).values()) == {2}, 30, "version 2 on every node")
    assert all(cluster.nodes[m].store.federation_chain()[-1] == v2 for m in cluster.members)


@pytest.mark.parametrize(
    ("case", "reason"),
    [("skips a version", "VERSION_NOT_NEXT"), ("lacks the threshold", "THRESHOLD_NOT_MET")],
)
def test_an_invalid_new_version_is_refused_everywhere(
    cluster: Cluster, federation: Federation, case: str, reason: str
) -> None:
    if case == "skips a version":
        bad = next_document(cluster.document, federation.root_keys, lambda d: None, version=3)
    else:
        bad = next_document(cluster.document, federation.root_keys[:1], lambda d: None)
    peer = HostilePeer(cluster.nodes["GE"], "GE").start()
    peer.checkpoints, peer.documents = [], [bad]
    peer.federation_version = 3 if case == "skips a version" else 2
    address = peer.address
    try:
        for m in cluster.members:
            node = cluster.nodes[m]
            before = stored_state(node)
            report = Syncer(node).sync_peer(address)
            assert [r[1] for r in report.rejected] == [reason], report
            assert stored_state(node) == before
            assert node.federation().version == 1
            assert [(r.peer, r.reason, r.count) for r in node.store.rejections()] == [(address, reason, 1)]
    finally:
        peer.stop()


def test_key_rotation_and_withdrawal_end_to_end(cluster: Cluster, federation: Federation, tmp_path: Path) -> None:
    cluster.start_all(mesh(cluster.members))
    cluster.wait_converged()
    old_key, new_key = federation.key("GE"), signing.SigningKey.generate()

    # 1. the new key is published in version 2 before it is used
    v2 = next_document(
        cluster.document, federation.root_keys,
        lambda d: member_of(d, "GE").keys.append(fed.public_key(new_key.public_bytes)),
    )
    cluster.nodes["GE"].install_federation(v2)
    wait_for(lambda: set(versions(cluster).values()) == {2}, 30, "version 2 on every node")

    # 2. GE signs with the new key; every node accepts the new entries
    ge_config = replace(cluster.nodes["GE"].config, key_file=str(tmp_path / "ge-new-key.pem"))
    signing.write_key_file(ge_config.key_path, new_key, PASSPHRASE)
    cluster.nodes["GE"].config = ge_config
    (cluster.records["GE"] / "extra.yaml").write_text(
        'member: GE\nauthorities:\n  - id: rotated\n    display_names: [{language: en, text: "Court after rotation"}]\n'
        "    kind: court\n    coverage: {national: true}\n",
        encoding="utf-8",
    )
    cluster.nodes["GE"].publish(cluster.records["GE"], PASSPHRASE)
    cluster.wait_converged()
    for m in cluster.members:
        last = signing.parse_envelope(cluster.nodes[m].store.envelopes("GE")[-1][1])
        assert [s.key_id for s in last.signatures] == [new_key.key_id]
        assert cluster.nodes[m].store.record_row("members/GE/authorities/rotated") is not None

    # 3. the old key is withdrawn as of now (say it was stolen); version 3 says so
    withdrawn_at = datetime.now(UTC)
    time.sleep(0.01)

    def withdraw(d: federation_pb2.FederationDocument) -> None:
        k = next(k for k in member_of(d, "GE").keys if k.key_id == old_key.key_id)
        k.not_after_time.CopyFrom(to_timestamp(withdrawn_at))

    v3 = next_document(v2, federation.root_keys, withdraw)
    cluster.nodes["AZ"].install_federation(v3)
    wait_for(lambda: set(versions(cluster).values()) == {3}, 30, "version 3 on every node")
    for m in cluster.members:  # what the old key signed before its withdrawal still verifies
        assert cluster.nodes[m].verify()[1] == []

    # 4. whoever holds the old key signs an entry and a checkpoint after the withdrawal
    ge = cluster.nodes["GE"]
    honest = [e for _, e in ge.store.envelopes("GE")]
    forged = log.build_entry("GE", len(honest) + 1, "members/GE/authorities/forged", None, datetime.now(UTC), old_key)
    leaves = [merkle.leaf_hash(e) for e in honest] + [forged.leaf_hash]
    cp = log.build_checkpoint("GE", len(leaves), merkle.root_hash(leaves), datetime.now(UTC), old_key)
    peer = HostilePeer(ge, "GE").start()
    peer.checkpoints = [cp.envelope]
    peer.serve_log([*honest, forged.envelope])
    address = peer.address
    try:
        for m in ("AZ", "KZ"):
            node = cluster.nodes[m]
            before = stored_state(node)
            report = Syncer(node).sync_peer(address)
            assert [(r[0], r[1]) for r in report.rejected] == [("GE", "KEY_NOT_VALID")], report
            assert stored_state(node) == before
        # and an entry signed after the withdrawal under a checkpoint by the new key is refused too
        cp_new = log.build_checkpoint("GE", len(leaves), merkle.root_hash(leaves), datetime.now(UTC), new_key)
        peer.checkpoints = [cp_new.envelope]
        node = cluster.nodes["KZ"]
        before = stored_state(node)
        report = Syncer(node).sync_peer(address)
        assert [(r[0], r[1]) for r in report.rejected] == [("GE", "KEY_NOT_VALID")], report
        assert stored_state(node) == before
    finally:
        peer.stop()
