"""Incremental work is O(change), not O(log) (issue 11, item 3).

A pull of one new entry and a publish of one changed record run the same SQL statements
whatever the length of the member's log, and never read the log whole: the log tree is
extended from its stored frontier, the state roots from state trees kept by name, the
publish diff from the derived records of the names in the files. ``verify`` stays the
full check, and it checks the stored frontiers too. A consistency proof is served from the
stored frontier nearest below its first size and the leaves after it. Counted, not timed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import PASSPHRASE  # type: ignore[import-not-found, unused-ignore]
from sqlalchemy import delete, event, update
from tests_support_cluster import many_authorities

from counterpart.v1 import replication_service_pb2 as rs
from counterpart.v1 import replication_service_pb2_grpc as rs_grpc
from counterpart_core import merkle, state
from counterpart_core.errors import ConflictError
from directory_server import sync as sync_module
from directory_server.node import Node
from directory_server.service.server import NodeServer
from directory_server.storage import store as store_module
from directory_server.storage.models import CheckpointRow, LogFrontierRow, StateSnapshotRow
from directory_server.storage.store import Store
from directory_server.sync import Syncer

RECORDS = 6
WHOLE_LOG_READERS = ("leaf_hashes", "log_rows", "envelopes", "current_entries")


def grow(node: Node, folder: Path, versions: int, first: int = 0) -> None:
    """Publish RECORDS authorities ``versions`` times, each time under other names (from
    version ``first`` on): RECORDS x versions more entries over RECORDS current records."""
    for v in range(first, first + versions):
        many_authorities(folder, node.member, RECORDS, label=f"Court v{v}")
        node.publish(folder, PASSPHRASE)


@contextmanager
def counted(node: Node) -> Iterator[dict[str, Any]]:
    """Statements the node's store runs meanwhile in this thread, and calls of the readers of
    a whole log."""
    seen: dict[str, Any] = {"statements": 0, "whole_log_reads": []}

    caller = threading.get_ident()

    def on_execute(*_args: Any) -> None:
        if threading.get_ident() == caller:  # not the serving node's own threads
            seen["statements"] += 1

    store = node.store
    originals = {name: getattr(store, name) for name in WHOLE_LOG_READERS}

    def spy(name: str) -> Callable[..., Any]:
        def reader(*args: Any, **kwargs: Any) -> Any:
            seen["whole_log_reads"].append(name)
            return originals[name](*args, **kwargs)
        return reader

    for name in WHOLE_LOG_READERS:
        setattr(store, name, spy(name))
    event.listen(store.engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", on_execute)
        for name in WHOLE_LOG_READERS:
            setattr(store, name, originals[name])


def one_change(
    make_node: Callable[..., Node], tmp_path: Path, versions: int, fresh: bool = False
) -> dict[str, dict[str, Any]]:
    """A source whose log holds RECORDS x ``versions`` entries and a target that pulled it
    all; then the source publishes one changed record and the target pulls that entry (with
    ``fresh``, each in a new Node over the same database, as a new process would: nothing in
    memory). What each of the two steps ran."""
    source = make_node("GE", ["GE", "AZ"])
    target = make_node("AZ", ["GE", "AZ"])
    folder = tmp_path / f"records-{versions}"
    grow(source, folder, versions)
    server = NodeServer(source, "127.0.0.1:0", access_log=False)
    server.start()
    syncer = Syncer(target)
    try:
        assert syncer.sync_peer(server.address).pulled == {"GE": RECORDS * versions}
        if fresh:
            syncer.close()
            source, target = Node(source.config, clock=source.clock), Node(target.config, clock=target.clock)
            syncer = Syncer(target)
        many_authorities(folder, "GE", RECORDS, label=f"Court v{versions - 1}")
        text = (folder / "authorities.yaml").read_text(encoding="utf-8")
        changed = text.replace(f'"Court v{versions - 1} 0"', '"Changed court"')
        assert changed != text
        (folder / "authorities.yaml").write_text(changed, encoding="utf-8")
        with counted(source) as published:
            plan = source.publish(folder, PASSPHRASE)
        assert plan.appended == 1 and len(plan.changed) == 1
        with counted(target) as pulled:
            assert syncer.sync_peer(server.address).pulled == {"GE": 1}
    finally:
        syncer.close()
        server.stop(0)
    assert target.verify()[1] == [] and source.verify()[1] == []
    if fresh:
        source.close()
        target.close()
    return {"publish": published, "pull": pulled}


@pytest.fixture
def records_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The members whose current records a store reads whole (to build state trees); state
    snapshots kept whatever the number of records."""
    monkeypatch.setattr(store_module, "SNAPSHOT_MIN_RECORDS", 0)
    read_all: list[str] = []
    current = Store._current

    def spy(s: Any, member: str) -> Any:
        read_all.append(member)
        return current(s, member)

    monkeypatch.setattr(Store, "_current", staticmethod(spy))
    return read_all


@pytest.mark.parametrize("fresh", [False, True], ids=["running", "new process"])
def test_one_change_costs_the_same_whatever_the_length_of_the_log(
    make_node: Callable[..., Node], tmp_path: Path, records_read: list[str], fresh: bool
) -> None:
    short = one_change(make_node, tmp_path / "short", 2, fresh)
    long = one_change(make_node, tmp_path / "long", 12, fresh)  # six times the log, the same records
    for step in ("publish", "pull"):
        assert short[step]["whole_log_reads"] == [] and long[step]["whole_log_reads"] == [], step
        assert short[step]["statements"] == long[step]["statements"], step
    # the pull's checkpoint row is read once per append, its small statements go through the
    # driver: at most this many (four more before, in bench_sync.py; bench/README.md, pull2);
    # a new process also maps the file for its snapshot read and unmaps it (two pragmas)
    assert long["pull"]["statements"] <= (33 if fresh else 25), long["pull"]["statements"]
    # only the first append of each node read every current record (and wrote the state
    # snapshot); a new process starts from that snapshot
    assert records_read == ["GE"] * 4


def _another_state(data: bytes) -> bytes:
    """A snapshot that holds a record no entry made (its digest right)."""
    tree = state.SortedLeafTree.from_bytes(data)
    tree.put(b"members/GE/authorities/nowhere", b"\x01" * 32)
    return tree.to_bytes()


def _a_damaged_byte(data: bytes) -> bytes:
    """One bit flipped in the hashes of the tree's levels, which the root does not cover."""
    at = len(data) - 32 - 100
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def _without_digest(data: bytes) -> bytes:
    """Bytes without the digest, as a snapshot stored before it was added."""
    return data[:-32]


@pytest.mark.parametrize("spoil", [_another_state, _a_damaged_byte, _without_digest],
                         ids=["another state", "a damaged byte", "no digest"])
def test_a_snapshot_that_is_not_of_the_signed_state_is_not_used(
    make_node: Callable[..., Node], tmp_path: Path, records_read: list[str], spoil: Callable[[bytes], bytes]
) -> None:
    node = make_node("GE")
    grow(node, tmp_path / "records", 2)
    with node.store.transaction() as s:
        snap = s.get(StateSnapshotRow, "GE")
        assert snap is not None and snap.size == RECORDS  # written by the first publish
        snap.everything = snap.public = spoil(bytes(snap.everything))
    records_read.clear()
    fresh = Node(node.config, clock=node.clock)
    try:
        grow(fresh, tmp_path / "records", 1, first=2)  # read from the records, and published right
        assert records_read == ["GE"] and fresh.verify()[1] == []
        with fresh.store.transaction() as s:
            snap = s.get(StateSnapshotRow, "GE")
            assert snap is not None and snap.size == 3 * RECORDS  # written anew
        fresh.rebuild()
        with fresh.store.transaction() as s:
            assert s.get(StateSnapshotRow, "GE") is None
    finally:
        fresh.close()


def test_verify_checks_the_stored_frontier_and_rebuild_repairs_it(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node("GE")
    grow(node, tmp_path / "records", 2)
    assert node.verify()[1] == []
    with node.store.transaction() as s:
        s.execute(update(CheckpointRow).where(CheckpointRow.member == "GE").values(frontier=b"\x00" * 64))
    assert [p.reason for p in node.verify()[1]] == ["FRONTIER_MISMATCH"]
    # the wrong frontier is never extended: the publish signs nothing the root check would refuse
    with pytest.raises(ConflictError) as refused:
        grow(node, tmp_path / "more", 1, first=2)
    assert refused.value.reason == "FRONTIER_MISMATCH"
    assert node.store.log_size("GE") == 2 * RECORDS
    node.rebuild()
    assert node.verify()[1] == []
    grow(node, tmp_path / "more", 1, first=2)
    assert node.store.log_size("GE") == 3 * RECORDS and node.verify()[1] == []


def test_a_log_stored_before_the_frontier_column_is_extended_from_its_leaves(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node("GE")
    grow(node, tmp_path / "records", 1)
    with node.store.transaction() as s:  # as revision 0005 leaves a checkpoint stored before it
        s.execute(update(CheckpointRow).where(CheckpointRow.member == "GE").values(frontier=None))
    assert node.verify()[1] == []
    grow(node, tmp_path / "more", 1, first=1)
    assert node.store.log_size("GE") == 2 * RECORDS
    row = node.store.checkpoint_row("GE")
    assert row is not None and row.frontier is not None
    assert node.verify()[1] == []


def serve_proof(node: Node, address: str, first: int, second: int) -> tuple[list[bytes], dict[str, Any]]:
    """GetConsistencyProof from the serving node over gRPC: the proof, the statements its
    store ran (in any thread) and the leaf hashes it read."""
    seen: dict[str, Any] = {"statements": 0, "leaves": 0}

    def on_execute(*_args: Any) -> None:
        seen["statements"] += 1

    original = store_module._leaf_range

    def leaf_range(*args: Any) -> list[bytes]:
        hashes = original(*args)
        seen["leaves"] += len(hashes)
        return hashes

    event.listen(node.store.engine, "before_cursor_execute", on_execute)
    store_module._leaf_range = leaf_range
    try:
        with grpc.insecure_channel(address) as channel:
            reply = rs_grpc.ReplicationServiceStub(channel).GetConsistencyProof(
                rs.GetConsistencyProofRequest(member=node.member, first_size=first, second_size=second)
            )
    finally:
        store_module._leaf_range = original
        event.remove(node.store.engine, "before_cursor_execute", on_execute)
    return list(reply.hashes), seen


def test_a_consistency_proof_is_served_from_stored_frontiers_whatever_the_length_of_the_log(
    make_node: Callable[..., Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "FRONTIER_STEP", 4)  # many steps in a short log
    served: dict[int, dict[str, Any]] = {}
    for versions in (3, 18):
        node = make_node("GE")
        grow(node, tmp_path / f"records-{versions}", versions)
        n = RECORDS * versions
        assert sorted(node.store.log_frontiers("GE")) == list(range(4, n + 1, 4))
        hashes = [bytes(h) for h in node.store.leaf_hashes("GE")]
        server = NodeServer(node, "127.0.0.1:0", access_log=False)
        server.start()
        try:
            for first in range(1, n + 1):  # from every size, against the full computation
                assert serve_proof(node, server.address, first, n)[0] == merkle.consistency_proof(hashes, first)
            proof, served[versions] = serve_proof(node, server.address, n - 1, n)  # one new entry
        finally:
            server.stop(0)
        assert proof == merkle.consistency_proof(hashes, n - 1)
        assert node.verify()[1] == []
    # the statements and the leaves read do not grow with the log: fewer than a step before
    # the first size, and the one new leaf
    assert served[3]["statements"] == served[18]["statements"]
    assert served[3]["leaves"] <= 4 and served[18]["leaves"] <= 4


def test_frontiers_a_log_lacks_are_computed_once_and_verify_checks_them(
    make_node: Callable[..., Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "FRONTIER_STEP", 4)
    node = make_node("GE")
    grow(node, tmp_path / "records", 6)
    n = 6 * RECORDS
    written = node.store.log_frontiers("GE")
    hashes = [bytes(h) for h in node.store.leaf_hashes("GE")]
    with node.store.transaction() as s:  # as a staged range or a log stored before 0006 leaves it
        s.execute(delete(LogFrontierRow))
    server = NodeServer(node, "127.0.0.1:0", access_log=False)
    server.start()
    try:
        proof, first_time = serve_proof(node, server.address, n - 2, n)
        assert proof == merkle.consistency_proof(hashes, n - 2) and first_time["leaves"] == n
        assert node.store.log_frontiers("GE") == {k: v for k, v in written.items() if k <= n - 2}
        proof, again = serve_proof(node, server.address, n - 1, n)
        assert proof == merkle.consistency_proof(hashes, n - 1) and again["leaves"] < 4 + 1
    finally:
        server.stop(0)
    assert node.verify()[1] == []
    with node.store.transaction() as s:
        s.execute(update(LogFrontierRow).where(LogFrontierRow.size == 8).values(frontier=b"\x00" * 32))
    assert [p.reason for p in node.verify()[1]] == ["FRONTIER_MISMATCH"]
    node.rebuild()
    assert node.verify()[1] == [] and node.store.log_frontiers("GE") == written


def test_a_long_range_is_committed_without_a_snapshot_and_the_next_append_writes_it(
    make_node: Callable[..., Node], tmp_path: Path, records_read: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serializing the state trees at the end of a long range added ~75 MiB to a full sync's
    peak (bench/README.md): the staged commit leaves the snapshot to the next append."""
    monkeypatch.setattr(sync_module, "LONG_RANGE", 4)  # this log's range takes the staged path
    staged: list[int] = []
    append_staged = Store.append_staged

    def counting(self: Store, *args: Any, **kwargs: Any) -> None:
        staged.append(1)
        append_staged(self, *args, **kwargs)

    monkeypatch.setattr(Store, "append_staged", counting)
    source = make_node("GE", ["GE", "AZ"])
    target = make_node("AZ", ["GE", "AZ"])
    folder = tmp_path / "records"
    grow(source, folder, 2)
    server = NodeServer(source, "127.0.0.1:0", access_log=False)
    server.start()
    syncer = Syncer(target)
    try:
        assert syncer.sync_peer(server.address).pulled == {"GE": RECORDS * 2}
        assert staged == [1]
        with target.store.transaction() as s:
            assert s.get(StateSnapshotRow, "GE") is None
        grow(source, folder, 1, first=2)  # one more append, a short range
        monkeypatch.setattr(sync_module, "LONG_RANGE", 512)
        assert syncer.sync_peer(server.address).pulled == {"GE": RECORDS}
        assert staged == [1]
        with target.store.transaction() as s:
            snap = s.get(StateSnapshotRow, "GE")
            assert snap is not None and snap.size == RECORDS * 3
    finally:
        syncer.close()
        server.stop(0)
    assert target.verify()[1] == []
