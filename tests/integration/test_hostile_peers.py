"""A hostile peer cannot get anything past a node's sync, and cannot stop honest peers.

A real gRPC peer on loopback serves the origin's (GE's) real signed log with one tampering
per test: a forged signature, an altered byte, a reordered range, a gap, a truncated range,
an old checkpoint (rollback), a validly signed checkpoint with a wrong root, a message over
the federation's limit, an endless stream, an entry signed by another member's key, a
checkpoint past its expiry, and a false consistency proof. Each test shows that the node
under test (AZ, holding its own records):

1. rejects the pass with the stable reason (in the ``PeerReport`` and counted once in the
   store's rejections, per peer, member and reason);
2. stores nothing of it: entries, checkpoints, derived rows, evidence and federation
   documents are exactly as before;
3. then ingests GE's log from an honest peer (the origin's own server) as if nothing had
   happened.

One test runs the real sync engine with the hostile peer and the honest one both configured,
and shows the node converging on the honest data.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import PASSPHRASE, SAMPLE_DATA, Clock, Federation  # type: ignore[import-not-found, unused-ignore]
from hostile_peer import HostilePeer, flip_payload_byte, forge_signature
from sqlalchemy import select
from tests_support_cluster import wait_for

from counterpart.v1 import log_pb2
from counterpart.v1 import replication_service_pb2 as rs
from directory_server.domain import log, merkle, signing
from directory_server.domain.errors import SignatureError
from directory_server.node import Node
from directory_server.service.server import NodeServer
from directory_server.storage import models
from directory_server.storage.store import Store
from directory_server.sync import STALL, PeerReport, Syncer

ORIGIN = "GE"
TARGET = "AZ"
MEMBERS = [ORIGIN, TARGET]
# GE's sample records published in three steps, so there are older, smaller checkpoints
STAGES = (["authorities.yaml"], ["treaties.yaml"], ["rules.yaml", "contacts.yaml"])
DERIVED = (
    models.RecordRow, models.RecordAttrRow, models.SearchTermRow, models.CoverageIndexRow,
    models.CompetenceIndexRow, models.PlaceIndexRow,
)


# --- what a node stores -------------------------------------------------------------------


def stored(store: Store) -> dict[str, Any]:
    """Everything sync could change except its own bookkeeping (peer sizes, rejections):
    entries, checkpoints, every derived table, equivocation evidence, federation documents."""
    with store.engine.connect() as c:
        state: dict[str, Any] = {
            "entries": c.execute(
                select(models.EntryRow.member, models.EntryRow.seq, models.EntryRow.envelope)
                .order_by(models.EntryRow.member, models.EntryRow.seq)
            ).all(),
            "checkpoints": {
                m: bytes(e) for m, e in c.execute(select(models.CheckpointRow.member, models.CheckpointRow.envelope))
            },
            "evidence": c.execute(
                select(models.EquivocationRow.member, models.EquivocationRow.offered_sha256)
            ).all(),
            "federation": c.execute(
                select(models.FederationDocumentRow.version, models.FederationDocumentRow.envelope)
                .order_by(models.FederationDocumentRow.version)
            ).all(),
        }
        for model in DERIVED:
            columns = [col for col in model.__table__.columns if col.name != "id"]  # id: autoincrement
            state[model.__tablename__] = sorted(tuple(r) for r in c.execute(select(*columns)))
    return state


def records_of(store: Store, member: str) -> list[tuple[Any, ...]]:
    with store.engine.connect() as c:
        return [tuple(r) for r in c.execute(
            select(models.RecordRow.name, models.RecordRow.kind, models.RecordRow.seq, models.RecordRow.label)
            .where(models.RecordRow.member == member).order_by(models.RecordRow.name)
        )]


# --- the federation: origin, honest peer, hostile peer, node under test ------------------------


@dataclass
class World:
    federation: Federation
    clock: Clock
    origin: Node
    target: Node
    honest: NodeServer
    hostile: HostilePeer
    syncer: Syncer
    work: Path  # the origin's record folder, filled stage by stage
    checkpoints: list[log.LogCheckpoint] = field(default_factory=list)  # the origin's, one per stage

    def publish_next_stage(self) -> log.LogCheckpoint:
        for name in STAGES[len(self.checkpoints)]:
            shutil.copy(SAMPLE_DATA / ORIGIN / name, self.work / name)
        self.clock.advance(timedelta(minutes=1))
        assert self.origin.publish(self.work, PASSPHRASE).appended > 0
        cp = self.origin.held_checkpoint(ORIGIN)
        assert cp is not None
        self.checkpoints.append(cp)
        return cp

    @property
    def current(self) -> log.LogCheckpoint:
        return self.checkpoints[-1]

    def key(self, member: str) -> signing.SigningKey:
        return self.federation.key(member)


@pytest.fixture
def make_world(
    make_node: Callable[..., Node], federation: Federation, clock: Clock, tmp_path: Path
) -> Iterator[Callable[[int], World]]:
    worlds: list[World] = []

    def build(stages: int = len(STAGES)) -> World:
        origin = make_node(ORIGIN, MEMBERS)
        target = make_node(TARGET, MEMBERS)
        target.publish(SAMPLE_DATA / TARGET, PASSPHRASE)  # the node under test holds records of its own
        honest = NodeServer(origin, "127.0.0.1:0", access_log=False)
        honest.start()
        hostile = HostilePeer(origin, ORIGIN).start()
        work = tmp_path / "origin-records"
        work.mkdir()
        world = World(federation, clock, origin, target, honest, hostile, Syncer(target, deadline=5.0), work)
        worlds.append(world)
        for _ in range(stages):
            world.publish_next_stage()
        return world

    yield build
    for w in worlds:
        w.syncer.close()
        w.hostile.stop()
        w.honest.stop(grace=0)


@pytest.fixture
def world(make_world: Callable[[int], World]) -> World:
    """GE has published all its sample records (35 entries); AZ holds nothing of GE yet."""
    return make_world(len(STAGES))


# --- the three things every test checks --------------------------------------------------------


def hostile_pass(w: World) -> tuple[PeerReport, dict[str, Any], dict[str, Any]]:
    """One sync pass against the hostile peer: (report, stored before, stored after)."""
    before = stored(w.target.store)
    report = w.syncer.sync_peer(w.hostile.address)
    return report, before, stored(w.target.store)


def assert_rejected(w: World, report: PeerReport, reason: str, member: str = ORIGIN) -> str:
    """The pass was rejected for ``reason`` alone, and counted once; returns the message."""
    assert report.error == "", report.error
    assert [(m, r) for m, r, _ in report.rejected] == [(member, reason)], report.rejected
    assert report.pulled == {} and report.refreshed == [] and report.equivocations == []
    counted = [
        (r.count, r.last_message) for r in w.target.store.rejections()
        if (r.peer, r.member, r.reason) == (w.hostile.address, member, reason)
    ]
    assert len(counted) == 1 and counted[0][0] == 1, w.target.store.rejections()
    assert counted[0][1] == report.rejected[0][2]
    return counted[0][1]


def assert_honest_gets_through(w: World) -> None:
    """The honest peer's pass ingests the rest of GE's log; AZ then holds exactly what GE signed."""
    held = w.target.store.log_size(ORIGIN)
    own_before = records_of(w.target.store, TARGET)
    report = w.syncer.sync_peer(w.honest.address)
    assert report.ok, (report.error, report.rejected)
    assert report.pulled == {ORIGIN: w.current.size - held}
    assert w.target.store.checkpoint(ORIGIN) == w.origin.store.checkpoint(ORIGIN) == w.current.envelope
    assert w.target.store.envelopes(ORIGIN) == w.origin.store.envelopes(ORIGIN)
    assert records_of(w.target.store, ORIGIN) == records_of(w.origin.store, ORIGIN) != []
    assert records_of(w.target.store, TARGET) == own_before
    # the honest peer is not blamed for anything the hostile one did
    assert [r for r in w.target.store.rejections() if r.peer == w.honest.address] == []


def entry_at(w: World, seq: int) -> log.LogEntry:
    return log.verify_entry(w.hostile.envelopes()[seq - 1], ORIGIN, seq, w.origin.federation())


# --- the cases -------------------------------------------------------------------------------------


def test_forged_signature_is_rejected(world: World) -> None:
    envelopes = world.hostile.envelopes()
    envelopes[4] = forge_signature(envelopes[4])  # seq 5 still names GE's key, the signature is junk
    world.hostile.serve_batches([(1, envelopes)])

    report, before, after = hostile_pass(world)

    assert world.hostile.asked("GetEntries") == [(1, world.current.size)]
    message = assert_rejected(world, report, "BAD_SIGNATURE")
    assert world.key(ORIGIN).key_id in message
    assert after == before
    assert_honest_gets_through(world)


def test_altered_byte_is_rejected(world: World) -> None:
    envelopes = world.hostile.envelopes()
    altered = flip_payload_byte(envelopes[9])
    assert len(altered) == len(envelopes[9]) and altered != envelopes[9]
    envelopes[9] = altered
    world.hostile.serve_batches([(1, envelopes)])

    report, before, after = hostile_pass(world)

    assert_rejected(world, report, "BAD_SIGNATURE")
    assert after == before
    assert_honest_gets_through(world)


def test_reordered_range_is_rejected(world: World) -> None:
    envelopes = world.hostile.envelopes()
    envelopes[2], envelopes[3] = envelopes[3], envelopes[2]  # seq 4 where seq 3 belongs, and back
    world.hostile.serve_batches([(1, envelopes)])

    report, before, after = hostile_pass(world)

    # Streaming, the verifier first meets seq 4 where it expects 3: the first displaced entry
    # of any reordering claims a later seq, so it is counted as a gap (ENTRY_OUT_OF_ORDER is
    # for a seq that went backwards: a replay, below).
    message = assert_rejected(world, report, "ENTRY_GAP")
    assert "claims seq 4, expected 3" in message
    assert after == before
    assert_honest_gets_through(world)


def test_replayed_entry_is_rejected(world: World) -> None:
    envelopes = world.hostile.envelopes()
    envelopes[6] = envelopes[5]  # seq 6 again where seq 7 belongs
    world.hostile.serve_batches([(1, envelopes)])

    report, before, after = hostile_pass(world)

    message = assert_rejected(world, report, "ENTRY_OUT_OF_ORDER")
    assert "claims seq 6, expected 7" in message
    assert after == before
    assert_honest_gets_through(world)


def test_gap_is_rejected(world: World) -> None:
    envelopes = world.hostile.envelopes()
    world.hostile.serve_batches([(1, envelopes[:3]), (5, envelopes[4:])])  # seq 4 left out

    report, before, after = hostile_pass(world)

    message = assert_rejected(world, report, "ENTRY_GAP")
    assert "batch starts at seq 5, expected 4" in message
    assert after == before
    assert_honest_gets_through(world)


def test_truncated_range_is_rejected(world: World) -> None:
    envelopes = world.hostile.envelopes()
    world.hostile.serve_batches([(1, envelopes[:-3])])  # the stream ends cleanly, three entries short

    report, before, after = hostile_pass(world)

    message = assert_rejected(world, report, "TRUNCATED_RANGE")
    assert f"ended at seq {world.current.size - 3}" in message
    assert after == before
    assert_honest_gets_through(world)


def test_rollback_to_an_older_checkpoint_is_rejected(world: World) -> None:
    first, second, _ = world.checkpoints
    assert first.size < second.size and first.issue_time < second.issue_time
    # the peer first behaves, showing GE at the second stage; AZ ingests that from it
    world.hostile.checkpoints = [second.envelope]
    shown = world.syncer.sync_peer(world.hostile.address)
    assert shown.ok and shown.pulled == {ORIGIN: second.size}
    assert world.target.store.peer_sizes(world.hostile.address) == {ORIGIN: second.size}
    # then it serves GE's older checkpoint, validly signed, of a smaller tree: a rollback
    world.hostile.checkpoints = [first.envelope]

    report, before, after = hostile_pass(world)

    message = assert_rejected(world, report, "ROLLBACK")
    assert f"showed size {second.size} before and now offers size {first.size}" in message
    assert after == before and after["checkpoints"][ORIGIN] == second.envelope
    assert world.target.store.peer_sizes(world.hostile.address) == {ORIGIN: second.size}
    assert_honest_gets_through(world)


def test_validly_signed_checkpoint_with_a_wrong_root_is_rejected(world: World) -> None:
    wrong = hashlib.sha256(b"not the root of GE's log").digest()
    forged = log.build_checkpoint(ORIGIN, world.current.size, wrong, world.clock(), world.key(ORIGIN))
    world.hostile.checkpoints = [forged.envelope]  # the entries it serves are GE's real ones

    report, before, after = hostile_pass(world)

    assert world.hostile.asked("GetEntries") == [(1, world.current.size)]
    assert_rejected(world, report, "ROOT_MISMATCH")
    assert after == before
    assert_honest_gets_through(world)


def test_huge_entries_message_is_refused_before_parsing(world: World) -> None:
    limit = world.target.federation().limits.max_message_bytes
    blob = b"\x00" * (limit + 1024 * 1024)
    world.hostile.serve_batches([(1, [blob])])

    report, before, after = hostile_pass(world)

    message = assert_rejected(world, report, "MESSAGE_TOO_LARGE")
    assert str(limit) in message
    assert after == before
    assert_honest_gets_through(world)


def test_huge_checkpoint_vector_is_refused_before_parsing(world: World) -> None:
    limit = world.target.federation().limits.max_message_bytes
    world.hostile.checkpoints = [world.current.envelope, b"\x00" * (limit + 1024)]

    report, before, after = hostile_pass(world)

    assert_rejected(world, report, "MESSAGE_TOO_LARGE", member="")  # no checkpoint was read: no member
    assert world.hostile.asked("GetEntries") == []
    assert after == before
    assert_honest_gets_through(world)


def test_endless_stream_is_cut_off(world: World) -> None:
    envelopes = world.hostile.envelopes()
    size = len(envelopes)
    width = next(b for b in range(2, size) if size % b)  # batches that straddle the end of the range
    sent: list[int] = []
    stopped: list[bool] = []

    def endless(request: rs.GetEntriesRequest, context: grpc.ServicerContext) -> Iterator[rs.GetEntriesResponse]:
        seq = int(request.start_seq)
        try:
            while context.is_active():  # it would go on forever: only the receiver can end it
                batch = [envelopes[(s - 1) % size] for s in range(seq, seq + width)]
                sent.append(seq)
                yield rs.GetEntriesResponse(start_seq=seq, signed_entries=batch)
                seq += width
        finally:
            stopped.append(True)

    world.hostile.entries = endless

    started = time.monotonic()
    report, before, after = hostile_pass(world)
    elapsed = time.monotonic() - started

    message = assert_rejected(world, report, "STREAM_OVERRUN")
    assert f"past the requested end {size}" in message
    assert elapsed < 4.0  # cut off at once, not at the deadline
    deadline = time.monotonic() + 5.0
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stopped, "the receiver never cancelled the endless stream"
    assert len(sent) < 1000
    assert after == before
    assert_honest_gets_through(world)


def test_endless_stream_after_the_whole_range_is_not_read(world: World) -> None:
    """The complement of the case above: a stream that first delivers the whole range in
    whole batches and then goes on forever. What was asked for is verified and kept; nothing
    after it is read, and the stream is cancelled."""
    envelopes = world.hostile.envelopes()
    size = len(envelopes)
    sent: list[int] = []
    stopped: list[bool] = []

    def endless(request: rs.GetEntriesRequest, context: grpc.ServicerContext) -> Iterator[rs.GetEntriesResponse]:
        try:
            yield rs.GetEntriesResponse(start_seq=1, signed_entries=envelopes)
            seq = size + 1
            while context.is_active():
                sent.append(seq)
                yield rs.GetEntriesResponse(start_seq=seq, signed_entries=envelopes[:5])
                seq += 5
        finally:
            stopped.append(True)

    world.hostile.entries = endless

    report = world.syncer.sync_peer(world.hostile.address)

    assert report.ok and report.pulled == {ORIGIN: size}, (report.error, report.rejected)
    assert world.target.store.envelopes(ORIGIN) == world.origin.store.envelopes(ORIGIN)
    assert world.target.store.checkpoint(ORIGIN) == world.current.envelope
    assert world.target.store.rejections() == []
    deadline = time.monotonic() + 5.0
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stopped, "the receiver never cancelled the endless stream"
    assert len(sent) < 1000
    # the honest peer has nothing more to give and is not blamed either
    again = world.syncer.sync_peer(world.honest.address)
    assert again.ok and again.pulled == {}


def test_entry_signed_by_another_members_key_is_rejected(world: World) -> None:
    real = entry_at(world, 7)
    # AZ's key is in the federation document, but as AZ's, not GE's
    impostor = log.build_entry(ORIGIN, 7, real.name, real.record, real.publish_time, world.key(TARGET))
    assert impostor.entry == real.entry and impostor.envelope != real.envelope
    envelopes = world.hostile.envelopes()
    envelopes[6] = impostor.envelope
    world.hostile.serve_batches([(1, envelopes)])

    report, before, after = hostile_pass(world)

    message = assert_rejected(world, report, "UNKNOWN_KEY")
    assert world.key(TARGET).key_id in message
    assert after == before
    assert_honest_gets_through(world)


def test_checkpoint_past_its_expiry_is_rejected(world: World) -> None:
    issued = world.clock() - timedelta(days=10)
    expired = log.build_checkpoint(
        ORIGIN, world.current.size, world.current.root_hash, issued, world.key(ORIGIN), valid_for=timedelta(days=7)
    )
    assert expired.expire_time < world.clock()
    world.hostile.checkpoints = [expired.envelope]  # GE really signed this tree, but long ago

    report, before, after = hostile_pass(world)

    assert_rejected(world, report, "CHECKPOINT_EXPIRED")
    assert world.hostile.asked("GetEntries") == []  # refused before anything is pulled
    assert after == before
    assert_honest_gets_through(world)


def test_false_consistency_proof_is_rejected(make_world: Callable[[int], World]) -> None:
    w = make_world(2)
    first = w.syncer.sync_peer(w.honest.address)  # AZ holds GE's log as of the second stage
    assert first.ok and first.pulled == {ORIGIN: w.current.size}
    held = w.current
    w.publish_next_stage()  # GE publishes more; the hostile peer offers the new checkpoint

    def lie(request: rs.GetConsistencyProofRequest) -> list[bytes]:
        honest = merkle.consistency_proof(w.origin.store.leaf_hashes(ORIGIN, upto=request.second_size), request.first_size)
        return [honest[0][:-1] + bytes([honest[0][-1] ^ 0xFF]), *honest[1:]]

    w.hostile.proof = lie

    report, before, after = hostile_pass(w)

    assert w.hostile.asked("GetConsistencyProof") == [(held.size, w.current.size)]
    # it could have been GE signing two histories: the node fetched the peer's whole log to
    # tell; it ends in the offered root and agrees with what AZ holds, so the proof lied
    assert w.hostile.asked("GetEntries") == [(1, w.current.size)]
    message = assert_rejected(w, report, "CONSISTENCY_PROOF_INVALID")
    assert f"from {held.size} to {w.current.size}" in message
    assert after == before and after["checkpoints"][ORIGIN] == held.envelope and after["evidence"] == []
    assert w.target.store.evidence() == []
    assert_honest_gets_through(w)


# --- the real sync engine, with both peers configured -------------------------------------------


def test_sync_engine_converges_with_a_hostile_peer_configured(world: World) -> None:
    # every pass against the hostile peer fails, whoever gets in first: its checkpoint of GE
    # carries a forged signature (and so do the entries behind it)
    world.hostile.checkpoints = [forge_signature(world.current.envelope)]
    envelopes = world.hostile.envelopes()
    world.hostile.serve_batches([(1, [forge_signature(e) for e in envelopes])])
    node = NodeServer(
        world.target, "127.0.0.1:0", access_log=False,
        peers=[world.hostile.address, world.honest.address], sync_interval=0.5, sync_deadline=5.0,
    )
    blamed = {(world.hostile.address, ORIGIN, "BAD_SIGNATURE")}  # counted under the member it claims
    node.start()
    try:
        assert node.sync is not None
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            converged = world.target.store.checkpoint(ORIGIN) == world.current.envelope
            counted = {(r.peer, r.member, r.reason) for r in world.target.store.rejections()} == blamed
            if converged and counted:
                break
            time.sleep(0.05)
        assert world.target.store.checkpoint(ORIGIN) == world.current.envelope, "never converged"
        assert world.target.store.envelopes(ORIGIN) == world.origin.store.envelopes(ORIGIN)
        assert records_of(world.target.store, ORIGIN) == records_of(world.origin.store, ORIGIN)
        # the hostile peer was asked and refused every time; only it is blamed
        assert world.hostile.asked("GetCheckpoints") and not world.hostile.asked("GetEntries")
        assert {(r.peer, r.member, r.reason) for r in world.target.store.rejections()} == blamed
        # it keeps being refused on every pass, and that changes nothing stored
        settled = stored(world.target.store)
        count = sum(r.count for r in world.target.store.rejections())
        time.sleep(1.5)
        assert stored(world.target.store) == settled
        assert sum(r.count for r in world.target.store.rejections()) > count
        report = node.sync.last_reports[world.hostile.address]
        assert [(m, r) for m, r, _ in report.rejected] == [(ORIGIN, "BAD_SIGNATURE")] and report.pulled == {}
    finally:
        node.stop(grace=0)


def test_tampered_envelopes_still_parse_as_envelopes(world: World) -> None:
    """The tamperings above reach the signature check: they are not mere parse failures."""
    original = world.hostile.envelopes()[4]
    for tampered in (forge_signature(original), flip_payload_byte(original)):
        env = log_pb2.Envelope()
        env.ParseFromString(tampered)
        assert env.payload_type == signing.ENTRY_TYPE
        assert [s.key_id for s in env.signatures] == [world.key(ORIGIN).key_id]
        with pytest.raises(SignatureError, match="does not verify"):
            log.verify_entry(tampered, ORIGIN, 5, world.origin.federation())


def test_a_flood_of_checkpoints_is_refused_with_one_count(world: World) -> None:
    """More checkpoints than the federation has members: one rejection, not one write each."""
    world.hostile.checkpoints = [b"\x00" * 64] * 20_000
    report, before, after = hostile_pass(world)
    assert_rejected(world, report, "TOO_MANY_CHECKPOINTS", member="")
    assert after == before
    assert world.hostile.asked("GetEntries") == []
    assert_honest_gets_through(world)


def test_a_stalled_pull_does_not_hold_up_honest_peers(world: World) -> None:
    """A hostile peer relays GE's real checkpoint, then stalls its GetEntries: after STALL
    seconds without a batch its claim on the range lapses and the honest peer pulls it."""
    release = threading.Event()

    def stall(request: rs.GetEntriesRequest, context: grpc.ServicerContext) -> Iterator[rs.GetEntriesResponse]:
        release.wait(30)
        return iter(())

    world.hostile.entries = stall
    reports: list[PeerReport] = []
    stalled = threading.Thread(target=lambda: reports.append(world.syncer.sync_peer(world.hostile.address)))
    stalled.start()
    try:
        wait_for(lambda: world.hostile.asked("GetEntries") != [], 10, "the hostile peer to be asked for entries")
        early = world.syncer.sync_peer(world.honest.address)
        assert early.deferred == [ORIGIN] and early.pulled == {}  # the hostile pull has just begun
        time.sleep(STALL + 0.3)
        assert_honest_gets_through(world)
    finally:
        release.set()
        stalled.join(timeout=30)
    assert reports and reports[0].pulled == {}


def test_a_pull_overtaken_by_another_peer_is_not_blamed_on_its_peer(make_world: Callable[[int], World]) -> None:
    """A slow but honest peer's pull lapses (no progress for STALL seconds) and another peer
    commits the range first: the slow pull must end quietly, not count a rejection against
    its peer because the node's tree grew under it."""
    w = make_world(2)
    assert w.syncer.sync_peer(w.honest.address).pulled == {ORIGIN: w.current.size}
    w.publish_next_stage()
    release = threading.Event()

    def slow_proof(request: rs.GetConsistencyProofRequest) -> list[bytes]:
        release.wait(30)
        return merkle.consistency_proof(w.origin.store.leaf_hashes(ORIGIN, upto=request.second_size), request.first_size)

    w.hostile.proof = slow_proof
    reports: list[PeerReport] = []
    slow = threading.Thread(target=lambda: reports.append(w.syncer.sync_peer(w.hostile.address)))
    slow.start()
    try:
        wait_for(lambda: w.hostile.asked("GetConsistencyProof") != [], 10, "the slow peer to be asked for a proof")
        time.sleep(STALL + 0.3)
        assert_honest_gets_through(w)
    finally:
        release.set()
        slow.join(timeout=30)
    assert reports and reports[0].rejected == [] and reports[0].pulled == {}
    assert w.target.store.rejections() == []
    assert w.target.store.checkpoint(ORIGIN) == w.current.envelope
