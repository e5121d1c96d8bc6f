"""The sync engine: pulls every member's verified log from every peer (DESIGN §5).

``Syncer.sync_peer`` is one pass against one peer: the federation chain first (so new
member keys are known), then each member's checkpoint, decided by
``domain.replication.decide``, the missing range pulled and verified by ``RangeVerifier``
and committed with ``Store.append`` (entries, derived rows and checkpoint in one
transaction; the cursor is the verified tree size). Every failure is counted per peer,
member and reason, and changes nothing stored.

``SyncEngine`` runs one thread per peer (a slow or hostile peer only ever holds up its own
thread) that pulls on start, on every push the peer sends through ``WatchCheckpoints``,
and on an anti-entropy timer with jitter, backing off exponentially while the peer fails.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from counterpart.v1 import replication_service_pb2 as rs
from counterpart.v1 import replication_service_pb2_grpc as rs_grpc
from directory_server.domain import log, merkle
from directory_server.domain import replication as rep
from directory_server.domain.errors import ConflictError, CounterpartError, VerificationError
from directory_server.node import Node

logger = logging.getLogger("counterpart.sync")


@dataclass
class PeerReport:
    """What one pass against one peer did."""

    peer: str
    pulled: dict[str, int] = field(default_factory=dict)  # member -> entries ingested
    refreshed: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # (member, reason, message)
    equivocations: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # members another peer's pull was fetching
    federation_versions: list[int] = field(default_factory=list)
    error: str = ""  # the peer could not be reached or answered with an error

    @property
    def ok(self) -> bool:
        return not self.error and not self.rejected


STALL = 2.0  # seconds without a batch after which a peer's claim on a range lapses


class _Claim:
    """A pull under way: up to which size, and when it last made progress."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.last = time.monotonic()
        self.committing = False

    def progress(self) -> None:
        self.last = time.monotonic()

    def stalled(self) -> bool:
        return not self.committing and time.monotonic() - self.last > STALL


class Syncer:
    """One sync pass at a time per peer; safe to use from several peer threads at once."""

    def __init__(self, node: Node, *, deadline: float = 10.0, per_entry_deadline: float = 0.002) -> None:
        self.node = node
        self.deadline = deadline
        self.per_entry_deadline = per_entry_deadline
        self._channels: dict[str, tuple[int, grpc.Channel]] = {}
        self._lock = threading.Lock()
        self._inflight: dict[str, _Claim] = {}  # member -> the pull under way

    def close(self) -> None:
        with self._lock:
            for _, channel in self._channels.values():
                channel.close()
            self._channels.clear()

    def channel(self, peer: str) -> grpc.Channel:
        """A channel whose message limit is the federation's, enforced by gRPC before parsing."""
        limit = int(self.node.federation().limits.max_message_bytes)
        with self._lock:
            cached = self._channels.get(peer)
            if cached is not None and cached[0] == limit:
                return cached[1]
            if cached is not None:
                cached[1].close()
            channel = grpc.insecure_channel(
                peer,
                options=[
                    ("grpc.max_receive_message_length", limit),
                    ("grpc.max_send_message_length", limit),
                    ("grpc.enable_retries", 0),
                ],
            )
            self._channels[peer] = (limit, channel)
            return channel

    # --- one pass ------------------------------------------------------------------------

    def sync_peer(self, peer: str) -> PeerReport:
        report = PeerReport(peer)
        stub = rs_grpc.ReplicationServiceStub(self.channel(peer))
        try:
            vector = stub.GetCheckpoints(rs.GetCheckpointsRequest(), timeout=self.deadline)
        except grpc.RpcError as e:
            self._rpc_failed(report, "", e)
            return report
        if vector.federation_version > self.node.federation().version:
            self._sync_federation(stub, report)
        members = len(self.node.federation().members())
        if len(vector.signed_checkpoints) > members:
            # one checkpoint per member at most: refuse the whole reply with one count, not
            # one database write per bogus checkpoint
            self._reject(report, "", rep.Rejected(
                f"the peer sent {len(vector.signed_checkpoints)} checkpoints; the federation has {members} members",
                reason="TOO_MANY_CHECKPOINTS",
            ))
            return report
        peer_sizes = self.node.store.peer_sizes(peer)
        synced: dict[str, int] = {}
        for envelope in vector.signed_checkpoints:
            try:
                offered = rep.verify_offered_checkpoint(envelope, self.node.federation())
            except VerificationError as e:
                self._reject(report, rep.claimed_member(envelope, self.node.federation()), e)
                continue
            try:
                if self._sync_member(stub, report, offered, peer_sizes.get(offered.member)):
                    synced[offered.member] = offered.size
            except VerificationError as e:
                self._reject(report, offered.member, e)
            except ConflictError:
                pass  # another peer's pull changed the member's log meanwhile; the next pass looks again
            except grpc.RpcError as e:
                self._rpc_failed(report, offered.member, e)
        self.node.store.note_peer_checkpoints(peer, synced, self.node.clock())
        return report

    def _sync_federation(self, stub: rs_grpc.ReplicationServiceStub, report: PeerReport) -> None:
        current = self.node.federation().version
        try:
            chain = stub.GetFederation(rs.GetFederationRequest(from_version=current + 1), timeout=self.deadline)
        except grpc.RpcError as e:
            self._rpc_failed(report, "", e)
            return
        for envelope in chain.signed_documents:
            try:
                accepted = self.node.install_federation(envelope)
            except CounterpartError as e:  # skipped version, missing threshold, other federation...
                self._reject(report, "", e)
                return
            report.federation_versions.append(accepted.version)
            logger.info("federation document accepted", extra={"peer": report.peer, "version": accepted.version})

    def _sync_member(
        self, stub: rs_grpc.ReplicationServiceStub, report: PeerReport, offered: log.LogCheckpoint,
        peer_last_size: int | None,
    ) -> bool:
        """Bring one member up to the peer's checkpoint; True when this node now holds at
        least what the peer showed (a successful sync of the member from the peer)."""
        member = offered.member
        store = self.node.store
        held = self.node.held_checkpoint(member)
        now = self.node.clock()
        decision = rep.decide(held, offered, lambda n: merkle.root_hash(store.leaf_hashes(member, upto=n)), peer_last_size, now)
        if decision.action is rep.Action.EQUIVOCATION:
            assert held is not None
            self._equivocation(report, held, offered)
            return False
        if decision.action is rep.Action.REFRESH:
            store.put_checkpoint(offered)
            report.refreshed.append(member)
        elif decision.action is rep.Action.PULL:
            claim = self._claim(member, offered.size)
            if claim is None:
                report.deferred.append(member)  # another peer's pull is under way and moving
                return False
            try:
                return self._pull(stub, report, held, offered, decision, claim)
            finally:
                self._release(member, claim)
        return True

    def _pull(
        self, stub: rs_grpc.ReplicationServiceStub, report: PeerReport, held: log.LogCheckpoint | None,
        offered: log.LogCheckpoint, decision: rep.Decision, claim: _Claim,
    ) -> bool:
        member = offered.member
        federation = self.node.federation()
        held_size = held.size if held else 0
        if held is not None and held.size > 0:
            try:
                proof = stub.GetConsistencyProof(
                    rs.GetConsistencyProofRequest(member=member, first_size=held.size, second_size=offered.size),
                    timeout=self.deadline,
                )
                merkle.verify_consistency(held.size, offered.size, held.root_hash, offered.root_hash, list(proof.hashes))
            except VerificationError:
                # Either the peer lies about the proof or the member signed two histories:
                # only the peer's whole log, verified, can tell which.
                self._check_fork(stub, report, held, offered, claim)
                return False
        verifier = rep.RangeVerifier(
            member, decision.start, decision.end, federation,
            # the tree as decided on: if another pull has committed since, append refuses
            # this one as concurrent instead of blaming the peer for a size mismatch
            merkle.CompactRange.from_leaf_hashes(self.node.store.leaf_hashes(member, upto=held_size)),
        )
        self._stream(stub, verifier, claim)
        entries = verifier.finish(offered)
        claim.committing = True  # a long commit is not a stall
        try:
            self.node.store.append(member, held_size, entries, offered)
        except ConflictError:
            return False  # another peer's thread committed first; the next pass sees it
        report.pulled[member] = len(entries)
        logger.info(
            "ingested", extra={"peer": report.peer, "member": member, "entries": len(entries), "size": offered.size}
        )
        return True

    def _stream(self, stub: rs_grpc.ReplicationServiceStub, verifier: rep.RangeVerifier, claim: _Claim) -> None:
        count = verifier.end - verifier.start + 1
        call = stub.GetEntries(
            rs.GetEntriesRequest(member=verifier.member, start_seq=verifier.start, end_seq=verifier.end),
            timeout=self.deadline + self.per_entry_deadline * count,
        )
        try:
            for batch in call:
                if not batch.signed_entries:
                    raise rep.Rejected(f"{verifier.member}: the peer sent an empty batch", reason="EMPTY_BATCH")
                verifier.add_batch(batch.start_seq, batch.signed_entries)
                claim.progress()
                if verifier.complete:
                    break  # anything more the peer would send is not read
        finally:
            call.cancel()

    def _check_fork(
        self, stub: rs_grpc.ReplicationServiceStub, report: PeerReport, held: log.LogCheckpoint,
        offered: log.LogCheckpoint, claim: _Claim,
    ) -> None:
        """The offered checkpoint is not consistent with the held one, by the peer's proof.
        If the peer can show a whole log, signed by the member, that ends in the offered
        root and differs from ours at the held size, the member equivocated; otherwise the
        peer's proof was false."""
        verifier = rep.RangeVerifier(
            offered.member, 1, offered.size, self.node.federation(), merkle.CompactRange(), mark_size=held.size
        )
        self._stream(stub, verifier, claim)
        verifier.finish(offered)
        if verifier.marked_root != held.root_hash:
            self._equivocation(report, held, offered)
            return
        raise rep.Rejected(
            f"{offered.member}: the peer's consistency proof from {held.size} to {offered.size} does not verify",
            reason="CONSISTENCY_PROOF_INVALID",
        )

    def _equivocation(self, report: PeerReport, held: log.LogCheckpoint, offered: log.LogCheckpoint) -> None:
        report.equivocations.append(offered.member)
        if self.node.store.add_evidence(offered.member, report.peer, held.envelope, offered.envelope, self.node.clock()):
            logger.error(
                "equivocation: the member signed two inconsistent checkpoints; keeping the history verified first",
                extra={"peer": report.peer, "member": offered.member, "held_size": held.size, "offered_size": offered.size},
            )

    # --- bookkeeping ---------------------------------------------------------------------

    def _claim(self, member: str, size: int) -> _Claim | None:
        """Pull a member's range from one peer at a time, unless that pull has stalled: a
        peer that claims a range and then sends nothing for STALL seconds loses it to the
        next peer (both may then pull; the first to commit wins, the other's append is
        refused as concurrent)."""
        with self._lock:
            current = self._inflight.get(member)
            if current is not None and current.size >= size and not current.stalled():
                return None
            claim = _Claim(size)
            self._inflight[member] = claim
            return claim

    def _release(self, member: str, claim: _Claim) -> None:
        with self._lock:
            if self._inflight.get(member) is claim:
                del self._inflight[member]

    def _reject(self, report: PeerReport, member: str, error: CounterpartError) -> None:
        report.rejected.append((member, error.reason, error.message))
        self.node.store.count_rejection(report.peer, member, error.reason, error.message, self.node.clock())
        logger.warning(
            "rejected", extra={"peer": report.peer, "member": member, "reason": error.reason, "error": error.message}
        )

    def _rpc_failed(self, report: PeerReport, member: str, error: grpc.RpcError) -> None:
        code = error.code() if isinstance(error, grpc.Call) else None
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            # gRPC refused a message over the federation's limit before parsing it
            self._reject(report, member, rep.Rejected(f"{member or 'peer'}: {details}", reason="MESSAGE_TOO_LARGE"))
            return
        report.error = f"{code.name if code else 'ERROR'}: {details}"


class SyncEngine:
    """Background sync from every peer, each in its own thread."""

    def __init__(
        self, node: Node, peers: Callable[[], Iterable[str]], *, interval: float = 30.0,
        deadline: float = 10.0, backoff_max: float = 60.0, rng: random.Random | None = None,
    ) -> None:
        self.node = node
        self.syncer = Syncer(node, deadline=deadline)
        self._peers_fn = peers
        self.interval = interval
        self.backoff_max = backoff_max
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._peers_changed = threading.Event()
        self._wake: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.last_reports: dict[str, PeerReport] = {}

    def start(self) -> None:
        threading.Thread(target=self._supervise, name="sync-supervisor", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._peers_changed.set()
        with self._lock:
            for event in self._wake.values():
                event.set()
        self.syncer.close()

    def trigger(self, peer: str | None = None) -> None:
        """Pull now from one peer, or from all."""
        with self._lock:
            targets = [self._wake[peer]] if peer in self._wake else ([] if peer else list(self._wake.values()))
        for event in targets:
            event.set()

    def refresh_peers(self) -> None:
        self._peers_changed.set()

    def _supervise(self) -> None:
        """Start a thread pair for each peer as peers appear (configuration, new federation
        documents); a peer that disappears stops at its next wake-up."""
        while not self._stop.is_set():
            self._peers_changed.clear()
            try:
                wanted = set(self._peers_fn())
            except CounterpartError as e:
                logger.warning("cannot list peers", extra={"reason": e.reason, "error": e.message})
                wanted = set()
            with self._lock:
                for peer in sorted(wanted - set(self._wake)):
                    self._wake[peer] = threading.Event()
                    for target, name in ((self._pull_loop, "sync"), (self._watch_loop, "watch")):
                        t = threading.Thread(target=target, args=(peer,), name=f"{name}-{peer}", daemon=True)
                        self._threads.append(t)
                        t.start()
                for peer in set(self._wake) - wanted:
                    self._wake.pop(peer).set()
            self._peers_changed.wait(min(self.interval, 5.0))

    def _active(self, peer: str) -> bool:
        with self._lock:
            return not self._stop.is_set() and peer in self._wake

    def _jitter(self, seconds: float) -> float:
        return seconds * self._rng.uniform(0.8, 1.2)

    def _pull_loop(self, peer: str) -> None:
        failures = 0
        while self._active(peer):
            with self._lock:
                wake = self._wake.get(peer)
            if wake is None:
                return
            wake.clear()
            try:
                report = self.syncer.sync_peer(peer)
            except Exception:  # a bug must not kill the peer's thread for good
                logger.exception("sync pass failed", extra={"peer": peer})
                report = PeerReport(peer, error="internal error")
            self.last_reports[peer] = report
            if report.error:
                failures += 1
                wait = min(self.backoff_max, 0.5 * 2 ** min(failures, 16))
                logger.info("peer unavailable; backing off", extra={"peer": peer, "error": report.error, "seconds": round(wait, 2)})
            else:
                failures = 0
                # a member left to another peer's pull: look again once that pull could have stalled
                wait = min(self.interval, 1.5 * STALL) if report.deferred else self.interval
            wake.wait(self._jitter(wait))

    def _watch_loop(self, peer: str) -> None:
        """Follow the peer's pushes; each one wakes the peer's pull thread."""
        failures = 0
        while self._active(peer):
            stub = rs_grpc.ReplicationServiceStub(self.syncer.channel(peer))
            call = stub.WatchCheckpoints(rs.WatchCheckpointsRequest())
            stopper = threading.Thread(target=self._cancel_when_gone, args=(peer, call), daemon=True)
            stopper.start()
            try:
                for _push in call:
                    failures = 0
                    self.trigger(peer)
            except grpc.RpcError:
                pass
            failures += 1
            self._stop.wait(self._jitter(min(self.backoff_max, 0.25 * 2 ** min(failures, 16))))

    def _cancel_when_gone(self, peer: str, call: grpc.Future[Any]) -> None:
        while self._active(peer) and not call.done():
            self._stop.wait(0.5)
        call.cancel()


def peers_of(node: Node, configured: Iterable[str], own_address: str) -> list[str]:
    """Configured peers plus the endpoints the federation document lists for the other
    members; never the node itself."""
    federation = node.federation()
    me = federation.member(node.member)
    own = set(me.endpoints) if me is not None else set()
    found = list(dict.fromkeys([*configured, *(e for m in federation.members() if m.code != node.member for e in m.endpoints)]))
    return [p for p in found if p and p not in own and p != own_address]

