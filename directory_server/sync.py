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

``SyncEngine`` runs in a bounded number of threads whatever the number of peers: one event
loop follows every peer's ``WatchCheckpoints`` stream and keeps the timers, and a small pool
runs the jobs, one per peer at a time (a slow or hostile peer holds up one worker, not the
others). Each peer gets a whole pass on start and on an anti-entropy timer with jitter; a
push is a hint that pulls only the member it names (``Syncer.sync_pushed``), and only when
its checkpoint is newer than the one held; a peer that fails is backed off exponentially.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from counterpart.v1 import log_pb2
from counterpart.v1 import replication_service_pb2 as rs
from counterpart.v1 import replication_service_pb2_grpc as rs_grpc
from counterpart_core import federation as fed
from counterpart_core import log, merkle, signing
from counterpart_core import replication as rep
from counterpart_core.errors import ConflictError, CounterpartError, VerificationError
from counterpart_core.timeutil import from_timestamp
from directory_server import security
from directory_server.node import Node
from directory_server.security import TlsIdentity
from directory_server.storage.store import stage_id

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
# A stage older than this is one a killed process left: no pull streams for so long (its
# deadline grows by 2 ms an entry: 34 min for a million).
STAGE_MAX_AGE = 24 * 3600.0
ROOTS_AT_CACHED = 1024  # roots of held logs at sizes peers that lag offered (32 bytes each)
FILL_MAX_ENTRIES = 1000  # withheld positions one pass asks one peer for, in all
FILL_MAX_RUNS = 16  # GetEntries calls one pass makes to one peer to fill withheld positions
VERIFIED_KEEP = 4096  # offered checkpoints whose verification is remembered
NOTE_EVERY = 300.0  # seconds: how stale a (peer, member)'s last success time may be at rest


def _size_of(envelope: bytes) -> int:
    """The size a checkpoint claims, parsed, not verified: only for one this node holds
    byte for byte, whose signature was checked when it was stored."""
    cp = log_pb2.Checkpoint()
    cp.ParseFromString(signing.parse_envelope(envelope, signing.CHECKPOINT_TYPE).payload)
    return int(cp.size)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Tree:
    """What a checkpoint says of its log, enough to tell whether another one is newer."""

    size: int
    root_hash: bytes
    issue_time: datetime

    def newer_than(self, held: _Tree | None) -> bool:
        """A larger log, or the same tree signed again later (a heartbeat), or another tree
        of the same size (an equivocation, for ``decide`` to see). A smaller one is left to
        anti-entropy."""
        if held is None:
            return True
        if self.size != held.size:
            return self.size > held.size
        return self.root_hash != held.root_hash or self.issue_time > held.issue_time


def _claimed_tree(envelope: bytes) -> tuple[str, _Tree] | None:
    """The member and tree a checkpoint claims, parsed, NOT verified (None if unparseable):
    only to drop a push that could not be newer than what is held without verifying it."""
    try:
        cp = log_pb2.Checkpoint()
        cp.ParseFromString(signing.parse_envelope(envelope, signing.CHECKPOINT_TYPE).payload)
        return cp.member, _Tree(int(cp.size), bytes(cp.root_hash), from_timestamp(cp.issue_time))
    except (VerificationError, DecodeError, ValueError, OverflowError):
        return None


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
        self._whole: dict[str, int] = {}  # member -> a size up to which it holds no entry withheld
        self._noted: dict[tuple[str, str], float] = {}  # (peer, member) -> when its sync was last written down
        self._unnoted: dict[tuple[str, str], int] = {}  # (peer, member) -> size synced by a push, not yet written
        self._verified: dict[tuple[int, bytes], log.LogCheckpoint] = {}  # (federation version, envelope), oldest first
        self._stored_sizes: dict[str, dict[str, int]] = {}  # peer -> member -> the size stored for it
        self._held: dict[bytes, tuple[str, int]] | None = None  # held checkpoints by their bytes; None: read again
        self._held_gen = 0
        node.store.watch_commits(self._checkpoint_committed)
        self._channels: dict[str, tuple[tuple[int, int], grpc.Channel]] = {}
        self._stubs: dict[str, tuple[grpc.Channel, rs_grpc.ReplicationServiceStub]] = {}
        self._lock = threading.Lock()
        self._inflight: dict[str, _Claim] = {}  # member -> the pull under way
        self._ever: tuple[int, set[str]] = (0, set())  # (chain length, members any version listed)
        self._roots_at: OrderedDict[tuple[str, int], bytes] = OrderedDict()  # (member, size) -> root
        # worker processes that check the signatures of long ranges, started on the first one
        self.signatures = rep.SignaturePool()
        # stages a node killed mid-sync left: all of them when this process is the node's
        # only puller; with several serving processes over one database, only those older than
        # any pull can be (another process's pull under way keeps its stage)
        several = node.config.several_processes
        node.store.drop_stages(started_before=time.time() - STAGE_MAX_AGE if several else None)

    def close(self) -> None:
        with self._lock:
            for _, channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()
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

    def channel_args(self, peer: str) -> tuple[str, grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
        """Where and how to call the peer (address, TLS credentials or None for plaintext
        on loopback, channel options): the federation's message limit, enforced by gRPC
        before parsing; over TLS, only the certificates the current federation document
        lists for the member at that endpoint are trusted."""
        federation = self.node.federation()
        limit = int(federation.limits.max_message_bytes)
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.enable_retries", 0),
        ]
        address = peer.removeprefix(security.TLS_SCHEME)
        if peer.startswith(security.TLS_SCHEME) or not security.is_loopback(peer):
            creds, names = security.channel_credentials(federation, peer, self.tls_identity)
            return address, creds, options + names
        return address, None, options

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
            address, creds, options = self.channel_args(peer)
            if creds is not None:
                channel = grpc.secure_channel(address, creds, options=options)
            else:
                channel = grpc.insecure_channel(address, options=options)
            self._channels[peer] = (key, channel)
            return channel

    def _stub(self, peer: str) -> rs_grpc.ReplicationServiceStub:
        """The peer's stub on its current channel: built once per channel, not per job (a
        stub builds a callable per method)."""
        channel = self.channel(peer)
        with self._lock:
            cached = self._stubs.get(peer)
            if cached is not None and cached[0] is channel:
                return cached[1]
            stub = rs_grpc.ReplicationServiceStub(channel)
            self._stubs[peer] = (channel, stub)
            return stub

    # --- one pass ------------------------------------------------------------------------

    def sync_peer(self, peer: str) -> PeerReport:
        report = PeerReport(peer)
        stub = self._stub(peer)
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
        peer_sizes = self._peer_sizes(peer)
        held = self._held_envelopes()
        synced: dict[str, int] = {}
        fillable: dict[str, int] = {}  # member -> the size of the peer's verified checkpoint
        held_of = {member: envelope for envelope, (member, _) in held.items()}  # read once a pass, not per member
        for envelope in offered_list:
            same = held.get(envelope)
            if same is not None:
                # exactly a checkpoint this node holds, whose signature was checked when it
                # was stored: nothing to decide, verify or pull (anti-entropy at rest is a
                # lookup of the bytes per member)
                synced[same[0]] = fillable[same[0]] = same[1]
                continue
            self._offer(stub, report, envelope, peer_sizes, synced, fillable, held_of=held_of)
        self._note(peer, synced)
        if not report.withheld and not report.error:  # a peer that withheld entries this pass would again
            self._fill(stub, report, fillable)
        return report

    def sync_pushed(self, peer: str, envelopes: Iterable[bytes]) -> PeerReport:
        """What a push from the peer asks for: each checkpoint it pushed (only a hint) is
        verified and, only if it is newer than the one this node holds for its member, that
        member alone is pulled from the peer, as a pass would. An older or the same
        checkpoint costs a signature check and nothing else; a push never starts a pass over
        every member."""
        report = PeerReport(peer)
        stub = self._stub(peer)
        synced: dict[str, int] = {}
        fillable: dict[str, int] = {}
        peer_sizes: dict[str, int] | None = None
        for envelope in envelopes:
            try:
                offered = self._verify_offered(envelope)
            except VerificationError as e:
                self._reject(report, rep.claimed_member(envelope, self.node.federation()), e)
                continue
            row = self.node.store.checkpoint_row(offered.member)
            held = _Tree(row.size, row.root_hash, row.issue_time) if row is not None else None
            if not _Tree(offered.size, offered.root_hash, offered.issue_time).newer_than(held):
                continue  # not newer than what this node holds: nothing to do
            if peer_sizes is None:
                peer_sizes = self._peer_sizes(peer)
            self._offer(stub, report, envelope, peer_sizes, synced, fillable, offered)
        with self._lock:  # written down with the peer's next pass, not one transaction per push
            for m, n in synced.items():
                self._unnoted[(peer, m)] = max(n, self._unnoted.get((peer, m), 0))
        return report

    def _peer_sizes(self, peer: str) -> dict[str, int]:
        """The largest size the peer has shown per member: stored (read once, then kept up to
        date here: only this node's sync of the peer writes them), and shown since by pushes."""
        with self._lock:
            stored = self._stored_sizes.get(peer)
        if stored is None:
            stored = self.node.store.peer_sizes(peer)
            with self._lock:
                self._stored_sizes[peer] = stored
        with self._lock:
            sizes = dict(stored)
            for (p, m), n in self._unnoted.items():
                if p == peer:
                    sizes[m] = max(n, sizes.get(m, 0))
        return sizes

    def _held_envelopes(self) -> dict[bytes, tuple[str, int]]:
        """Every checkpoint this node holds, by its bytes: (member, size). Read again only
        after a checkpoint was committed (``Store.watch_commits``)."""
        with self._lock:
            if self._held is not None:
                return self._held
            self._held_gen += 1
            gen = self._held_gen
        held = {envelope: (member, _size_of(envelope)) for member, envelope in self.node.store.checkpoints().items()}
        with self._lock:
            if gen == self._held_gen:  # no commit since it was read
                self._held = held
        return held

    def _checkpoint_committed(self) -> None:
        with self._lock:
            self._held = None
            self._held_gen += 1

    def _verify_offered(self, envelope: bytes) -> log.LogCheckpoint:
        """``rep.verify_offered_checkpoint``, once per envelope and federation version: the
        same bytes pushed or offered again by other peers are not verified again (what it
        checks, the member's keys as of the issue time, changes only with the document)."""
        federation = self.node.federation()
        key = (federation.version, envelope)
        with self._lock:
            cached = self._verified.get(key)
        if cached is not None:
            return cached
        offered = rep.verify_offered_checkpoint(envelope, federation)
        with self._lock:
            self._verified[key] = offered
            while len(self._verified) > VERIFIED_KEEP:
                self._verified.pop(next(iter(self._verified)))
        return offered

    def _offer(
        self, stub: rs_grpc.ReplicationServiceStub, report: PeerReport, envelope: bytes, peer_sizes: dict[str, int],
        synced: dict[str, int], fillable: dict[str, int], offered: log.LogCheckpoint | None = None,
        held_of: dict[str, bytes] | None = None,
    ) -> None:
        """Verify one checkpoint the peer offers and bring its member up to it (``held_of``:
        the envelopes of the checkpoints held, by member, as read at the start of the pass;
        a pull that another thread's commit overtakes is found out by the append)."""
        if offered is None:
            try:
                offered = self._verify_offered(envelope)
            except VerificationError as e:
                self._reject(report, rep.claimed_member(envelope, self.node.federation()), e)
                return
        try:
            held = None if held_of is None else held_of.get(offered.member)
            if self._sync_member(stub, report, offered, peer_sizes.get(offered.member), held, held_of is not None):
                synced[offered.member] = offered.size
                fillable[offered.member] = offered.size
        except VerificationError as e:
            self._reject(report, offered.member, e)
        except ConflictError:
            # another peer's pull changed the member's log meanwhile; the next pass looks again
            fillable[offered.member] = offered.size
        except grpc.RpcError as e:
            self._rpc_failed(report, offered.member, e)

    def _note(self, peer: str, synced: dict[str, int]) -> None:
        """Remember what the peer showed: at once when a size changed, else at most every
        NOTE_EVERY seconds per (peer, member) (the time of the last successful sync that
        `counterpart-node status` shows is that fresh; a federation at rest writes nothing
        each pass). What pushes synced since the last pass is written here too: a push
        costs no bookkeeping transaction of its own."""
        now = time.monotonic()
        with self._lock:
            unnoted = {m: n for (p, m), n in self._unnoted.items() if p == peer}
            for m in unnoted:
                del self._unnoted[(peer, m)]
            stored = dict(self._stored_sizes.get(peer) or {})
        due = {
            m: n for m, n in synced.items()
            if stored.get(m) != n or now - self._noted.get((peer, m), -NOTE_EVERY) >= NOTE_EVERY
        }
        for m, n in unnoted.items():
            due[m] = max(n, due.get(m, 0))
        self.node.store.note_peer_checkpoints(peer, due, self.node.clock())
        with self._lock:
            kept = self._stored_sizes.setdefault(peer, {})
            for m, n in due.items():
                kept[m] = max(n, kept.get(m, 0))
        for m in due:
            self._noted[(peer, m)] = now

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
        peer_last_size: int | None, held_envelope: bytes | None = None, held_read: bool = False,
    ) -> bool:
        """Bring one member up to the peer's checkpoint; True when this node now holds at
        least what the peer showed (a successful sync of the member from the peer).
        ``held_read``: ``held_envelope`` is the member's held checkpoint as read by the caller
        (None: none held)."""
        member = offered.member
        store = self.node.store
        if member == self.node.member:
            # read now, not as the pass read it: `counterpart-node publish` commits from a
            # process of its own, and a peer may offer its checkpoint before this process
            # has heard of the commit; that is no log signed elsewhere
            held = self.node.held_checkpoint(member)
        elif held_read and held_envelope is None:
            held = None
        else:
            held = self.node.held_checkpoint(member, held_envelope)
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
        stage = stage_id(time.time())
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
            if self._whole.get(member, 0) >= sizes[member]:
                continue  # nothing withheld up to there: filling only ever removes withheld entries
            held = self.node.store.withheld_hashes(member, upto=sizes[member])
            if not held:
                size = self.node.store.checkpoint_size(member)  # entries up to its size are all there
                self._whole[member] = min(sizes[member], size or 0)
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

    def pulling(self, member: str, size: int) -> bool:
        """Whether a pull of at least ``size`` entries of the member is under way and moving
        (``_claim`` would refuse that range to another peer)."""
        with self._lock:
            current = self._inflight.get(member)
            return current is not None and current.size >= size and not current.stalled()

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


@dataclass
class _PeerState:
    """What the engine knows of one peer; touched only by the engine's event loop thread."""

    address: str
    failures: int = 0  # passes in a row the peer could not be reached
    refused: int = 0  # passes in a row where what it offered failed verification and nothing succeeded
    strict_until: float = 0.0  # time.monotonic() before which its pushes are ignored (it failed verification)
    full: bool = False  # a whole pass is due
    pushed: dict[str, bytes] = field(default_factory=dict)  # member -> the last checkpoint it pushed, not yet looked at
    seen: dict[str, bytes] = field(default_factory=dict)  # member -> the last checkpoint it pushed (repeats are dropped)
    # member -> (checkpoint, its claimed tree) pushed while another peer's pull of at least
    # that size was under way: looked at only if that pull ends without bringing it
    parked: dict[str, tuple[bytes, _Tree]] = field(default_factory=dict)
    busy: bool = False  # a job for it is queued or running in the pool
    timer: asyncio.TimerHandle | None = None  # the next anti-entropy pass
    watch: asyncio.Task[None] | None = None


class SyncEngine:
    """Background sync from every peer, in a bounded number of threads whatever the number
    of peers: one event loop thread follows every peer's ``WatchCheckpoints`` stream (grpc.aio)
    and keeps every timer; passes and pulls run on a pool of ``workers`` threads, at most one
    job per peer at a time (a slow or hostile peer holds up one worker, never the others'
    pushes).

    - On start, and then on an anti-entropy timer with jitter (``interval``), a whole pass
      against the peer (``Syncer.sync_peer``); a pass at rest compares each offered
      checkpoint with the held one byte for byte and verifies nothing.
    - A push carries a signed checkpoint: it is only a hint. The same bytes pushed again are
      dropped; otherwise ``Syncer.sync_pushed`` verifies it and pulls that member alone, from
      that peer, only if it is newer than what this node holds. Pushes that arrive while a
      job runs are coalesced (the last per member). A push of a newer federation version
      makes the next job a whole pass.
    - A peer that cannot be reached is retried after an exponential backoff; a peer whose
      pass (or pushes) failed verification, with nothing else succeeding, is backed off by
      2, 4, 8... intervals, and its pushes are ignored meanwhile (a hostile peer could push
      as often as it likes).
    """

    # Called with the report of every pass or push job, from a worker thread (metrics, progress).
    on_report: Callable[[PeerReport], None] | None = None

    def __init__(
        self, node: Node, peers: Callable[[], Iterable[str]], *, interval: float = 30.0,
        deadline: float = 10.0, backoff_max: float = 60.0, rng: random.Random | None = None,
        reject_backoff_max: float = 600.0, workers: int = 4,
    ) -> None:
        self.node = node
        self.reject_backoff_max = max(reject_backoff_max, interval)
        self.syncer = Syncer(node, deadline=deadline, retry_base=2 * interval, retry_max=self.reject_backoff_max)
        self._peers_fn = peers
        self.interval = interval
        self.backoff_max = backoff_max
        self._rng = rng or random.Random()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sync")
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._peers: dict[str, _PeerState] = {}
        self._channels: dict[str, tuple[tuple[int, int], grpc.aio.Channel]] = {}
        self._peers_changed: asyncio.Event | None = None
        self._stopped = False
        self.last_reports: dict[str, PeerReport] = {}
        # jobs run, by kind ("pass": a whole pass; "push": members a push named), for tests
        # and benchmarks that count the work a change causes
        self.jobs: dict[str, int] = {"pass": 0, "push": 0}
        self.pushes = 0  # pushes received from all peers
        self._watching: set[str] = set()  # peers whose WatchCheckpoints stream is open
        self._held: dict[str, _Tree | None] = {}
        self._held_stale = False
        self._parked: set[str] = set()  # members some peer's push is parked for
        node.store.watch_commits(self._checkpoint_committed)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sync-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            self._thread.join(10.0)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.syncer.close()

    def trigger(self, peer: str | None = None) -> None:
        """A whole pass now against one peer, or against all."""
        def due() -> None:
            for state in ([self._peers[peer]] if peer in self._peers else [] if peer else list(self._peers.values())):
                state.full = True
                self._kick(state)

        self._call(due)

    def idle(self) -> bool:
        """No job runs or waits for any peer (a snapshot; for tests and benchmarks)."""
        return all(not (p.busy or p.full or p.pushed) for p in list(self._peers.values()))

    def peers(self) -> list[str]:
        return sorted(self._peers)

    def watching(self) -> int:
        """How many peers' WatchCheckpoints streams are open."""
        return len(self._watching)

    def refresh_peers(self) -> None:
        self._call(lambda: self._peers_changed.set() if self._peers_changed is not None else None)

    def _call(self, fn: Callable[[], None]) -> None:
        if not self._stopped and self._loop.is_running():
            self._loop.call_soon_threadsafe(fn)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._supervise())
        finally:
            self._loop.close()

    async def _shutdown(self) -> None:
        self._stopped = True
        if self._peers_changed is not None:
            self._peers_changed.set()

    async def _supervise(self) -> None:
        """Follow the peer list (configuration, new federation documents) every few seconds
        or when told; a peer that disappears is dropped (its job, if one runs, finishes)."""
        self._peers_changed = asyncio.Event()
        try:
            while not self._stopped:
                self._peers_changed.clear()
                try:
                    wanted = set(self._peers_fn())
                except CounterpartError as e:
                    logger.warning("cannot list peers", extra={"reason": e.reason, "error": e.message})
                    wanted = set()
                for peer in sorted(wanted - set(self._peers)):
                    state = self._peers[peer] = _PeerState(peer, full=True)
                    state.watch = asyncio.create_task(self._watch(state), name=f"watch-{peer}")
                    self._kick(state)
                for peer in set(self._peers) - wanted:
                    self._drop(self._peers.pop(peer))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._peers_changed.wait(), min(self.interval, 5.0))
        finally:
            for state in list(self._peers.values()):
                self._drop(state)
            self._peers.clear()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for _, channel in self._channels.values():
                await channel.close(None)
            self._channels.clear()

    def _drop(self, state: _PeerState) -> None:
        if state.timer is not None:
            state.timer.cancel()
        if state.watch is not None:
            state.watch.cancel()
        self._channels.pop(state.address, None)  # closed with the loop; a re-added peer gets a new one

    def _jitter(self, seconds: float) -> float:
        return seconds * self._rng.uniform(0.8, 1.2)

    # --- jobs on the pool ------------------------------------------------------------------

    def _kick(self, state: _PeerState) -> None:
        """Start the peer's next job if it has work and none runs."""
        if state.busy or self._stopped or self._peers.get(state.address) is not state:
            return
        if state.full:
            state.full, state.pushed = False, {}
            self.jobs["pass"] += 1
            job: Callable[[], PeerReport] = lambda: self.syncer.sync_peer(state.address)
            whole = True
        elif state.pushed:
            envelopes, state.pushed = list(state.pushed.values()), {}
            self.jobs["push"] += 1
            job = lambda: self.syncer.sync_pushed(state.address, envelopes)
            whole = False
        else:
            return
        state.busy = True
        try:
            future = self._pool.submit(self._work, state.address, job)
        except RuntimeError:  # the pool is shut down: the engine stops
            state.busy = False
            return
        future.add_done_callback(lambda f: self._call(lambda: self._done(state, f.result(), whole)))

    def _work(self, peer: str, job: Callable[[], PeerReport]) -> PeerReport:
        try:
            report = job()
        except Exception:  # a bug must not stop the engine
            logger.exception("sync pass failed", extra={"peer": peer})
            report = PeerReport(peer, error="internal error")
        self.last_reports[peer] = report
        if self.on_report is not None:
            self.on_report(report)
        return report

    def _done(self, state: _PeerState, report: PeerReport, whole: bool) -> None:
        state.busy = False
        if report.error:
            state.failures += 1
            wait = min(self.backoff_max, 0.5 * 2 ** min(state.failures, 16))
            logger.info("peer unavailable; backing off", extra={
                "peer": state.address, "error": report.error, "seconds": round(wait, 2)})
            self._schedule(state, wait)
        elif (report.rejected or report.held_off) and not (report.pulled or report.refreshed or report.filled):
            # A peer that keeps failing verification is not pulled at full cost every
            # pass: 2, 4, 8... intervals, up to reject_backoff_max, and its pushes are
            # ignored meanwhile (a hostile peer could push as often as it likes).
            state.failures, state.refused = 0, state.refused + 1
            wait = self._jitter(rep.backoff(state.refused, 2 * self.interval, self.reject_backoff_max))
            state.strict_until = time.monotonic() + wait
            state.pushed = {}
            logger.info("peer failed verification; backing off", extra={
                "peer": state.address, "rejected": [r for _, r, _ in report.rejected], "seconds": round(wait, 2)})
            self._schedule(state, wait, jitter=False)
        elif whole:
            state.failures = state.refused = 0
            # a member left to another peer's pull: look again once that pull could have stalled
            self._schedule(state, min(self.interval, 1.5 * STALL) if report.deferred else self.interval)
        elif report.pulled or report.refreshed:
            state.failures = state.refused = 0
        self._kick(state)
        self._unpark()

    def _unpark(self) -> None:
        """After each job (and STALL seconds after a push is parked): pushes parked for a member whose pull is no longer under way become
        jobs if what they claim is still newer than what is held (that pull failed or fell
        short), else are dropped."""
        if not self._parked:
            return
        for member in list(self._parked):
            waiting = [st for st in self._peers.values() if member in st.parked]
            if any(self.syncer.pulling(member, st.parked[member][1].size) for st in waiting):
                continue
            self._parked.discard(member)
            held = self._held_tree(member)
            for st in waiting:
                envelope, tree = st.parked.pop(member)
                if tree.newer_than(held) and time.monotonic() >= st.strict_until:
                    st.pushed[member] = envelope
                    self._kick(st)

    def _schedule(self, state: _PeerState, seconds: float, *, jitter: bool = True) -> None:
        """The peer's next whole pass, ``seconds`` from now (replacing the one planned)."""
        if state.timer is not None:
            state.timer.cancel()

        def due() -> None:
            state.timer = None
            state.full = True
            self._kick(state)

        state.timer = self._loop.call_later(self._jitter(seconds) if jitter else seconds, due)

    # --- pushes ----------------------------------------------------------------------------

    def _channel(self, peer: str) -> grpc.aio.Channel:
        federation = self.node.federation()
        limit = int(federation.limits.max_message_bytes)
        key = (limit, federation.version)
        cached = self._channels.get(peer)
        if cached is not None and cached[0] == key:
            return cached[1]
        address, credentials, options = self.syncer.channel_args(peer)
        channel = (
            grpc.aio.secure_channel(address, credentials, options=options) if credentials is not None
            else grpc.aio.insecure_channel(address, options=options)
        )
        if cached is not None:
            asyncio.ensure_future(cached[1].close(None))
        self._channels[peer] = (key, channel)
        return channel

    async def _watch(self, state: _PeerState) -> None:
        """Follow the peer's pushes for as long as it is a peer; reconnect with backoff."""
        failures = 0
        while not self._stopped:
            try:
                stub = rs_grpc.ReplicationServiceStub(self._channel(state.address))
                call = stub.WatchCheckpoints(rs.WatchCheckpointsRequest())
                try:
                    await call.wait_for_connection()  # the peer accepted the watcher
                    self._watching.add(state.address)
                    async for push in call:
                        failures = 0
                        self._pushed(state, push)
                finally:
                    self._watching.discard(state.address)
                    call.cancel()
            except grpc.RpcError:
                pass
            except CounterpartError as e:  # no federation document yet, a certificate missing...
                logger.warning("cannot watch peer", extra={"peer": state.address, "reason": e.reason, "error": e.message})
            failures += 1
            await asyncio.sleep(self._jitter(min(self.backoff_max, 0.25 * 2 ** min(failures, 16))))

    def _pushed(self, state: _PeerState, push: rs.WatchCheckpointsResponse) -> None:
        """Note what a push asks for; the peer's next job does it. Costs O(1) and keeps at
        most one checkpoint per member of the federation, whatever the peer sends."""
        self.pushes += 1
        if time.monotonic() < state.strict_until:
            return  # backed off for failing verification: its pushes do not cut the wait short
        federation = self.node.federation()
        if push.federation_version > federation.version:
            state.full = True
        envelope = push.signed_checkpoint
        if envelope:
            claimed = _claimed_tree(envelope)
            if claimed is None or federation.member(claimed[0]) is None or state.seen.get(claimed[0]) == envelope:
                return  # unparseable, not a member, or exactly what it pushed last time
            member, tree = claimed
            state.seen[member] = envelope
            if tree.newer_than(self._held_tree(member)):
                if self.syncer.pulling(member, tree.size):
                    # another peer's pull already brings at least this much (the relays of a
                    # change reach a node while it pulls the change): no job unless that
                    # pull fails (``_unpark``)
                    state.parked[member] = (envelope, tree)
                    self._parked.add(member)
                    # looked at again once that pull could have stalled, even if no job ends by then
                    self._loop.call_later(STALL + 0.1, self._unpark)
                else:
                    # what it claims is newer: the job verifies it before anything else
                    state.pushed[member] = envelope
                    state.parked.pop(member, None)
            # else: even if genuine it could not be newer; a pushed relay of what this node
            # already holds costs a parse and nothing else
        self._kick(state)

    def _held_tree(self, member: str) -> _Tree | None:
        """The tree this node holds for the member, cached until the next commit of a
        checkpoint (``Store.watch_commits``)."""
        if self._held_stale:
            self._held_stale = False
            self._held.clear()
        if member not in self._held:
            row = self.node.store.checkpoint_row(member)
            self._held[member] = _Tree(row.size, row.root_hash, row.issue_time) if row is not None else None
        return self._held[member]

    def _checkpoint_committed(self) -> None:
        self._held_stale = True  # from any thread; the loop clears the cache when it next looks


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
