"""The sync engine: pulls every member's verified log from every peer (DESIGN §5).

``Syncer.sync_peer`` is one pass against one peer: the federation chain first (so new
member keys are known), then each member's checkpoint, decided by
``domain.replication.decide``, the missing range pulled and verified by ``RangeVerifier``
and committed with ``Store.append`` (entries, derived rows and checkpoint in one
transaction; the cursor is the verified tree size). Every failure is counted per peer,
member and reason, and changes nothing stored.

Members-only entries (DESIGN §8): a peer that does not take this node for a member node
sends each of them withheld, as its leaf hash; the range still verifies against the signed
root and is stored with those positions withheld. Each pass then tries to fill the withheld
positions of every member it synced from the peer (``_fill``): each entry the peer sends
whole must pass what ingest checks and have exactly the withheld leaf hash, and all of a
member's are stored in one transaction (``Store.fill``); a peer that withholds them again
is not asked again this pass.

What a hostile peer can make the node do is bounded: an envelope with more signatures
than a member could have made is refused before any is verified; a (peer, member) whose
range failed verification is not pulled again before a retry time that doubles with each
failure (``_Penalty``); the fork check, which downloads a peer's whole log of a member to
tell a false consistency proof from an equivocation, runs at most once per (peer, member,
offered tree); and a peer whose passes keep failing verification is backed off by the
engine like an unreachable one, its pushes ignored meanwhile. A log of this node's own
member offered by a peer is refused (``OWN_LOG_FROM_PEER``) and raises an alarm, unless
the operator restores the log from peers (``restore_from_peers``).

``SyncEngine`` runs one thread per peer (a slow or hostile peer only ever holds up its own
thread) that pulls on start, on every push the peer sends through ``WatchCheckpoints``,
and on an anti-entropy timer with jitter, backing off exponentially while the peer fails.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from counterpart.v1 import replication_service_pb2 as rs
from counterpart.v1 import replication_service_pb2_grpc as rs_grpc
from counterpart_core import federation as fed
from counterpart_core import log, merkle
from counterpart_core import replication as rep
from counterpart_core.errors import ConflictError, CounterpartError, VerificationError
from directory_server import security
from directory_server.node import Node
from directory_server.security import TlsIdentity

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
    held_off: list[str] = field(default_factory=list)  # members not pulled: the peer failed them lately
    withheld: dict[str, int] = field(default_factory=dict)  # member -> entries the peer sent withheld
    filled: dict[str, int] = field(default_factory=dict)  # member -> withheld entries filled in
    federation_versions: list[int] = field(default_factory=list)
    error: str = ""  # the peer could not be reached or answered with an error

    @property
    def ok(self) -> bool:
        return not self.error and not self.rejected


STALL = 2.0  # seconds without a batch after which a peer's claim on a range lapses
# A range at least this long (a full sync, a node back after long) has its signatures checked
# on every core, and is staged in the store as it streams in (never served) rather than held in
# memory, then moved into the log in one transaction (Store.append_staged).
LONG_RANGE = 512
ROOTS_AT_CACHED = 1024  # roots of held logs at sizes peers that lag offered (32 bytes each)
FILL_MAX_ENTRIES = 1000  # withheld positions one pass asks one peer for, in all
FILL_MAX_RUNS = 16  # GetEntries calls one pass makes to one peer to fill withheld positions


@dataclass
class _Penalty:
    """A (peer, member) whose range failed verification: not pulled again before ``until``
    (time.monotonic()); each failure in a row doubles the wait."""

    strikes: int
    until: float
    reason: str


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

    def __init__(
        self, node: Node, *, deadline: float = 10.0, per_entry_deadline: float = 0.002,
        retry_base: float = 30.0, retry_max: float = 3600.0,
    ) -> None:
        self.node = node
        self.deadline = deadline
        self.per_entry_deadline = per_entry_deadline
        self.retry_base = retry_base  # first wait before a (peer, member) that failed verification is pulled again
        self.retry_max = retry_max
        self._penalties: dict[tuple[str, str], _Penalty] = {}  # (peer, member) -> its last failures
        # (peer, member) -> (offered size, root) of the one tree its whole log was fetched for,
        # and whether that showed an equivocation: the fork check runs once per tree
        self._fork_checks: dict[tuple[str, str], tuple[tuple[int, bytes], bool]] = {}
        self._fill_after: dict[tuple[str, str], int] = {}  # (peer, member) -> where the last fill stopped
        self._channels: dict[str, tuple[tuple[int, int], grpc.Channel]] = {}
        self._lock = threading.Lock()
        self._inflight: dict[str, _Claim] = {}  # member -> the pull under way
        self._ever: tuple[int, set[str]] = (0, set())  # (chain length, members any version listed)
        self._roots_at: OrderedDict[tuple[str, int], bytes] = OrderedDict()  # (member, size) -> root
        # worker processes that check the signatures of long ranges, started on the first one
        self.signatures = rep.SignaturePool()
        # stages a node killed mid-sync left (the engine's Syncer is the node's only puller)
        node.store.drop_stages()

    def close(self) -> None:
        with self._lock:
            for _, channel in self._channels.values():
                channel.close()
            self._channels.clear()
        self.signatures.close()

    def _range_verifier(
        self, member: str, start: int, end: int, base: merkle.CompactRange, mark_size: int = 0,
        sink: Callable[[list[log.LogEntry]], None] | None = None,
    ) -> rep.RangeVerifier:
        long = end - start + 1 >= LONG_RANGE
        return rep.RangeVerifier(
            member, start, end, self.node.federation(), base, mark_size=mark_size,
            pool=self.signatures if long else None, sink=sink if long else None,
        )

    # This node's TLS key and certificate, presented to peers over mutual TLS (set by the
    # server that runs the engine); None: no client certificate, so members-only entries
    # come withheld.
    tls_identity: TlsIdentity | None = None

    def channel(self, peer: str) -> grpc.Channel:
        """A channel whose message limit is the federation's, enforced by gRPC before parsing.

        ``tls://host:port`` peers (and any peer not on loopback) are called over TLS,
        trusting only the certificates the current federation document lists for the member
        at that endpoint; a new document version builds new channels."""
        federation = self.node.federation()
        limit = int(federation.limits.max_message_bytes)
        key = (limit, federation.version)
        with self._lock:
            cached = self._channels.get(peer)
            if cached is not None and cached[0] == key:
                return cached[1]
            if cached is not None:
                cached[1].close()
            options: list[tuple[str, Any]] = [
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.enable_retries", 0),
            ]
            address = peer.removeprefix(security.TLS_SCHEME)
            if peer.startswith(security.TLS_SCHEME) or not security.is_loopback(peer):
                creds, names = security.channel_credentials(federation, peer, self.tls_identity)
                channel = grpc.secure_channel(address, creds, options=options + names)
            else:
                channel = grpc.insecure_channel(address, options=options)
            self._channels[peer] = (key, channel)
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
        federation = self.node.federation()
        offered_list = list(vector.signed_checkpoints)
        counted = offered_list
        if vector.federation_version < federation.version:
            # a peer that has not yet followed a version that removed a member still offers
            # that member's checkpoint: the bound below does not count it (each is refused
            # below as UNKNOWN_MEMBER, as any checkpoint of a non-member is)
            removed = self._members_ever() - {m.code for m in federation.members()}
            counted = [e for e in offered_list if rep.claimed_code(e) not in removed]
        members = len(federation.members())
        if len(counted) > members:
            # one checkpoint per member at most: refuse the whole reply with one count, not
            # one database write per bogus checkpoint
            self._reject(report, "", rep.Rejected(
                f"the peer sent {len(counted)} checkpoints; the federation has {members} members",
                reason="TOO_MANY_CHECKPOINTS",
            ))
            return report
        peer_sizes = self.node.store.peer_sizes(peer)
        synced: dict[str, int] = {}
        fillable: dict[str, int] = {}  # member -> the size of the peer's verified checkpoint
        for envelope in offered_list:
            try:
                offered = rep.verify_offered_checkpoint(envelope, self.node.federation())
            except VerificationError as e:
                self._reject(report, rep.claimed_member(envelope, self.node.federation()), e)
                continue
            try:
                if self._sync_member(stub, report, offered, peer_sizes.get(offered.member)):
                    synced[offered.member] = offered.size
                    fillable[offered.member] = offered.size
            except VerificationError as e:
                self._reject(report, offered.member, e)
            except ConflictError:
                # another peer's pull changed the member's log meanwhile; the next pass looks again
                fillable[offered.member] = offered.size
            except grpc.RpcError as e:
                self._rpc_failed(report, offered.member, e)
        self.node.store.note_peer_checkpoints(peer, synced, self.node.clock())
        if not report.withheld and not report.error:  # a peer that withheld entries this pass would again
            self._fill(stub, report, fillable)
        return report

    @property
    def _ambiguous_restricted(self) -> bool:
        """What a deletion gets when a withheld entry may hide its previous one: while this
        node calls peers without a member identity (no client certificate), every entry a
        peer sends it whole is one the peer judged public, deletions included; once it
        presents one, a peer may send it members-only entries whole, so such a deletion
        stays members-only until fill-in settles it (fail closed)."""
        return self.tls_identity is not None

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
        decision = rep.decide(held, offered, lambda n: self._root_at(member, n), peer_last_size, now)
        if member == self.node.member:
            self._own_log(report, decision, offered)
        if decision.action is rep.Action.EQUIVOCATION:
            assert held is not None
            self._equivocation(report, held, offered)
            return False
        if decision.action is rep.Action.REFRESH:
            store.put_checkpoint(offered)
            report.refreshed.append(member)
        elif decision.action is rep.Action.PULL:
            key = (report.peer, member)
            penalty = self._penalties.get(key)
            if penalty is not None and time.monotonic() < penalty.until:
                report.held_off.append(member)  # it failed verification lately: not at full cost again yet
                return False
            claim = self._claim(member, offered.size)
            if claim is None:
                report.deferred.append(member)  # another peer's pull is under way and moving
                return False
            try:
                pulled = self._pull(stub, report, held, offered, decision, claim)
            except VerificationError as e:
                self._penalize(key, e.reason)
                raise
            finally:
                self._release(member, claim)
            self._penalties.pop(key, None)
            return pulled
        return True

    def _root_at(self, member: str, size: int) -> bytes:
        """The root of the first ``size`` leaves held of a member, to compare with a peer that
        is behind: read from the leaf hashes (O(size)) once per (member, size), since a
        peer that lags offers the same checkpoint pass after pass. A held log only grows,
        so a root once computed stays true."""
        key = (member, size)
        with self._lock:
            root = self._roots_at.get(key)
            if root is not None:
                self._roots_at.move_to_end(key)
                return root
        root = merkle.root_hash(self.node.store.leaf_hashes(member, upto=size))
        with self._lock:
            self._roots_at[key] = root
            while len(self._roots_at) > ROOTS_AT_CACHED:
                self._roots_at.popitem(last=False)
        return root

    def _own_log(self, report: PeerReport, decision: rep.Decision, offered: log.LogCheckpoint) -> None:
        """A peer offers this node's own log, validly signed, and not as this node holds it:
        refused with an alarm unless the operator restores the log from peers."""
        restore = self.node.config.restore_from_peers_enabled
        try:
            rep.own_log_offered(decision, offered, self.node.member, restore)
        except rep.Rejected as e:
            logger.error(
                "ALARM: a peer offers this node's own log, signed with its key, that this node did not sign",
                extra={"peer": report.peer, "member": offered.member, "reason": e.reason, "size": offered.size,
                       "error": e.message},
            )
            raise
        if decision.action is not rep.Action.IGNORE:
            logger.warning(
                "restoring this node's own log from a peer (restore_from_peers)",
                extra={"peer": report.peer, "member": offered.member, "size": offered.size},
            )

    def _penalize(self, key: tuple[str, str], reason: str) -> None:
        previous = self._penalties.get(key)
        strikes = previous.strikes + 1 if previous else 1
        wait = rep.backoff(strikes, self.retry_base, self.retry_max)
        self._penalties[key] = _Penalty(strikes, time.monotonic() + wait, reason)

    def _pull(
        self, stub: rs_grpc.ReplicationServiceStub, report: PeerReport, held: log.LogCheckpoint | None,
        offered: log.LogCheckpoint, decision: rep.Decision, claim: _Claim,
    ) -> bool:
        member = offered.member
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
        # the tree as decided on, from its stored frontier (no leaf is read): if another pull
        # has committed since, this one is given up as concurrent, not blamed on the peer
        base = self.node.store.frontier(member)
        if base.size != held_size:
            raise ConflictError(f"{member}: the log moved to {base.size} during the pull", reason="CONCURRENT_APPEND")
        stage = secrets.token_hex(16)
        verifier = self._range_verifier(
            member, decision.start, decision.end, base, sink=lambda part: self.node.store.stage(stage, part)
        )
        try:
            self._stream(stub, verifier, claim)
            entries = verifier.finish(offered)
            if verifier.withheld_count:
                report.withheld[member] = verifier.withheld_count
            claim.committing = True  # a long commit is not a stall
            # a peer that withheld anything of the range took this node for no member node:
            # what it sent whole, it judged public
            ambiguous = self._ambiguous_restricted and not verifier.withheld_count
            try:
                if verifier.sink is not None:
                    self.node.store.append_staged(
                        stage, member, held_size, verifier.latest, verifier.base, offered,
                        ambiguous_restricted=ambiguous, derive_many=self.signatures.derive,
                    )
                else:
                    self.node.store.append(member, held_size, entries, offered, ambiguous_restricted=ambiguous)
            except ConflictError:
                return False  # another peer's thread committed first; the next pass sees it
        finally:
            verifier.abandon()
            if verifier.sink is not None:
                self.node.store.drop_stages(stage)
        report.pulled[member] = verifier.received
        logger.info(
            "ingested", extra={"peer": report.peer, "member": member, "entries": len(entries), "size": offered.size}
        )
        return True

    def _stream(
        self, stub: rs_grpc.ReplicationServiceStub, verifier: rep.RangeVerifier | rep.FillVerifier,
        claim: _Claim | None = None,
    ) -> None:
        count = verifier.end - verifier.start + 1
        call = stub.GetEntries(
            rs.GetEntriesRequest(member=verifier.member, start_seq=verifier.start, end_seq=verifier.end),
            timeout=self.deadline + self.per_entry_deadline * count,
        )
        try:
            for batch in call:
                if not batch.signed_entries:
                    raise rep.Rejected(f"{verifier.member}: the peer sent an empty batch", reason="EMPTY_BATCH")
                withheld = dict(batch.withheld_leaf_hashes) if batch.withheld_leaf_hashes else None
                verifier.add_batch(batch.start_seq, batch.signed_entries, withheld)
                if claim is not None:
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
        peer's proof was false.

        That costs a download and a verification of the peer's whole log of the member, and
        a peer can send a garbage proof for the price of a few bytes. So the check runs at
        most once per (peer, member, offered tree): asked again about the same tree, the
        node repeats the verdict it reached (an equivocation stays one; otherwise the proof
        is refused at once). A new tree needs a new checkpoint signed by the member, so a
        lying peer gets at most one download per tree the member signs; heartbeats, which
        re-sign the same tree, do not count. The peer is then also held off the member
        (``_Penalty``) and, if nothing else it offers succeeds, backed off by the engine.
        """
        key = (report.peer, offered.member)
        tree = (offered.size, offered.root_hash)
        done = self._fork_checks.get(key)
        if done is not None and done[0] == tree:
            if done[1]:
                self._equivocation(report, held, offered)
                return
            raise rep.Rejected(
                f"{offered.member}: the peer's consistency proof from {held.size} to {offered.size} does not verify "
                "(its whole log of this tree was fetched once already, and agreed with this node's)",
                reason="CONSISTENCY_PROOF_INVALID",
            )
        self._fork_checks[key] = (tree, False)  # whatever happens below: once
        # only the roots matter here: the entries are dropped as they are read
        verifier = self._range_verifier(
            offered.member, 1, offered.size, merkle.CompactRange(), mark_size=held.size, sink=lambda _part: None
        )
        try:
            self._stream(stub, verifier, claim)
            verifier.finish(offered)
        finally:
            verifier.abandon()
        if verifier.marked_root != held.root_hash:
            self._fork_checks[key] = (tree, True)
            self._equivocation(report, held, offered)
            return
        raise rep.Rejected(
            f"{offered.member}: the peer's consistency proof from {held.size} to {offered.size} does not verify",
            reason="CONSISTENCY_PROOF_INVALID",
        )

    def _fill(self, stub: rs_grpc.ReplicationServiceStub, report: PeerReport, sizes: dict[str, int]) -> None:
        """Ask the peer for entries this node holds withheld, among those its verified
        checkpoint covers: contiguous runs, at most FILL_MAX_RUNS calls and FILL_MAX_ENTRIES
        positions a pass, starting where the last fill from the peer stopped. A member's
        entries are all verified, then stored in one transaction; a failure is refused
        whole and counted, changes nothing, and ends filling from the peer for this pass, as
        does a peer that withholds them again."""
        budget, calls = FILL_MAX_ENTRIES, FILL_MAX_RUNS
        restore = self.node.config.restore_from_peers_enabled
        federation = self.node.federation()
        for member in sorted(sizes):
            if budget <= 0 or calls <= 0:
                return
            if member == self.node.member and not restore:
                continue
            held = self.node.store.withheld_hashes(member, upto=sizes[member])
            if not held:
                continue
            key = (report.peer, member)
            penalty = self._penalties.get(key)
            if penalty is not None and time.monotonic() < penalty.until:
                continue  # it failed verification lately
            runs = rep.withheld_runs(held, self._fill_after.get(key, 0), budget, federation.limits.max_batch_entries)
            entries: list[log.LogEntry] = []
            withheld_again = False
            try:
                for first, last in runs[:calls]:
                    calls -= 1
                    budget -= last - first + 1
                    verifier = rep.FillVerifier(member, first, last, held, federation)
                    self._stream(stub, verifier)
                    verifier.finish()
                    entries += verifier.entries
                    self._fill_after[key] = last
                    if verifier.withheld_again:
                        withheld_again = True
                        break
            except VerificationError as e:
                self._reject(report, member, e)
                self._penalize(key, e.reason)
                return
            except grpc.RpcError as e:
                self._rpc_failed(report, member, e)
                return
            if entries:
                try:
                    report.filled[member] = self.node.store.fill(
                        member, entries, ambiguous_restricted=self._ambiguous_restricted
                    )
                except ConflictError:
                    pass  # another peer's fill came first; the next pass looks again
                else:
                    logger.info(
                        "filled in withheld entries", extra={"peer": report.peer, "member": member, "entries": len(entries)}
                    )
            if withheld_again:
                return  # the peer withholds them from this node too: not asked again this pass

    def _equivocation(self, report: PeerReport, held: log.LogCheckpoint, offered: log.LogCheckpoint) -> None:
        report.equivocations.append(offered.member)
        if self.node.store.add_evidence(offered.member, report.peer, held.envelope, offered.envelope, self.node.clock()):
            logger.error(
                "equivocation: the member signed two inconsistent checkpoints; keeping the history verified first",
                extra={"peer": report.peer, "member": offered.member, "held_size": held.size, "offered_size": offered.size},
            )

    def _members_ever(self) -> set[str]:
        """Every member any accepted version of the federation document listed."""
        chain = self.node.store.federation_chain()
        with self._lock:
            if self._ever[0] != len(chain):
                codes: set[str] = set()
                for envelope in chain:
                    codes |= {m.code for m in fed.parse_document(envelope)[1].members}
                self._ever = (len(chain), codes)
            return set(self._ever[1])

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

    # Called with the report of every pass, from the peer's thread (metrics, progress).
    on_report: Callable[[PeerReport], None] | None = None

    def __init__(
        self, node: Node, peers: Callable[[], Iterable[str]], *, interval: float = 30.0,
        deadline: float = 10.0, backoff_max: float = 60.0, rng: random.Random | None = None,
        reject_backoff_max: float = 600.0,
    ) -> None:
        self.node = node
        self.reject_backoff_max = max(reject_backoff_max, interval)
        self.syncer = Syncer(node, deadline=deadline, retry_base=2 * interval, retry_max=self.reject_backoff_max)
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
        failures = 0  # passes in a row the peer could not be reached
        refused = 0  # passes in a row where what the peer offered failed verification and nothing succeeded
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
            if self.on_report is not None:
                self.on_report(report)
            strict = False
            if report.error:
                failures += 1
                wait = min(self.backoff_max, 0.5 * 2 ** min(failures, 16))
                logger.info("peer unavailable; backing off", extra={"peer": peer, "error": report.error, "seconds": round(wait, 2)})
            elif (report.rejected or report.held_off) and not (report.pulled or report.refreshed or report.filled):
                # A peer that keeps failing verification is not pulled at full cost every
                # pass: 2, 4, 8... intervals, up to reject_backoff_max, and its pushes do not
                # cut the wait short (a hostile peer could push as often as it likes).
                failures, refused = 0, refused + 1
                wait = rep.backoff(refused, 2 * self.interval, self.reject_backoff_max)
                strict = True
                logger.info(
                    "peer failed verification; backing off",
                    extra={"peer": peer, "rejected": [r for _, r, _ in report.rejected], "seconds": round(wait, 2)},
                )
            else:
                failures = refused = 0
                # a member left to another peer's pull: look again once that pull could have stalled
                wait = min(self.interval, 1.5 * STALL) if report.deferred else self.interval
            self._sleep(peer, wake, self._jitter(wait), ignore_pushes=strict)

    def _sleep(self, peer: str, wake: threading.Event, seconds: float, *, ignore_pushes: bool) -> None:
        """Wait ``seconds`` or until woken (a push, a trigger); with ``ignore_pushes``, only
        the node stopping or the peer going away end the wait early."""
        if not ignore_pushes:
            wake.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        while self._active(peer):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            wake.wait(remaining)
            wake.clear()

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
    """Configured peers plus the other members' endpoints from the federation document; never
    the node itself. A member's peer endpoints (mutual TLS, so its members-only entries come
    whole) are preferred to its public ones; both are called over TLS (``tls://``) when the
    document lists the member's certificate."""
    federation = node.federation()
    me = federation.member(node.member)
    own = {*me.endpoints, *me.peer_endpoints} if me is not None else set()
    # a member whose entry lists no certificate cannot be authenticated: its endpoints are
    # called in plaintext, which Syncer.channel allows on loopback only (development)
    listed = [
        (security.TLS_SCHEME if m.tls_certificates else "") + e
        for m in federation.members() if m.code != node.member
        for e in (m.peer_endpoints or m.endpoints)
    ]
    found = list(dict.fromkeys([*configured, *listed]))
    return [p for p in found if p and p.removeprefix(security.TLS_SCHEME) not in own and p != own_address]
