"""Sync decisions: what to do with a checkpoint a peer offers, and how a pulled range of a
member's log is verified before anything of it is stored (DESIGN §5).

Pure: no I/O. The sync engine fetches, these functions decide; a decision to reject
carries a stable reason that the engine counts per peer.

Ingest order, as DESIGN §5 gives it: the checkpoint's signature by a key valid for the
member; consistency with the checkpoint already held (or with the tree recomputed from the
leaves held); each entry's limit, signature, member and seq; the recomputed root equals
the checkpoint's root. Only then does the caller commit, in one transaction.

A members-only entry may come withheld (DESIGN §8): an empty item whose leaf hash the batch
carries. It enters the tree by that hash, which the root check authenticates; the
``FillVerifier`` later takes the entry whole from a peer that gives it, only with exactly
that hash. Before any signature is verified, the framing of every batch is checked, and an
envelope's signatures are bounded (``signing.MAX_SIGNATURES``).
"""

from __future__ import annotations

import hmac
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from counterpart.v1 import federation_pb2, log_pb2
from counterpart_core import log, merkle, signing
from counterpart_core.errors import VerificationError
from counterpart_core.federation import Federation, parse_document
from counterpart_core.index import Shaped
from counterpart_core.workers import WorkerPool


class Action(Enum):
    IGNORE = "ignore"  # nothing new: the peer is behind or shows what we hold
    REFRESH = "refresh"  # same tree, newer signature (a heartbeat): store the checkpoint
    PULL = "pull"  # the peer's tree is larger: pull the missing range
    EQUIVOCATION = "equivocation"  # the member signed two trees that cannot both be true


@dataclass(frozen=True)
class Decision:
    action: Action
    start: int = 0  # first seq to pull
    end: int = 0  # last seq to pull


class Rejected(VerificationError):
    """What a peer sent failed verification; counted per peer with ``reason``."""


def check_size(data: bytes, limit: int, what: str) -> None:
    """Limits are enforced before anything is parsed."""
    if len(data) > limit:
        raise Rejected(f"{what} is {len(data)} bytes; the federation allows {limit}", reason="ENTRY_TOO_LARGE")


def verify_offered_checkpoint(envelope: bytes, federation: Federation) -> log.LogCheckpoint:
    """A checkpoint as a peer offers it: bounded before it is parsed, and signed by a key
    of the member it names, valid when it was issued."""
    limits = federation.limits
    check_size(envelope, limits.max_entry_bytes, "a checkpoint")
    env = signing.parse_envelope(envelope, signing.CHECKPOINT_TYPE)
    cp = log.verify_checkpoint(envelope, _claimed_member(env.payload), federation)
    if cp.size > limits.max_entries_per_member:
        raise Rejected(
            f"{cp.member}: checkpoint claims {cp.size} entries; the federation allows {limits.max_entries_per_member}",
            reason="LOG_TOO_LARGE",
        )
    return cp


def claimed_member(envelope: bytes, federation: Federation) -> str:
    """The member a checkpoint says it is about, if it is one of the federation's, else "":
    only a label for counting a rejection, never trusted for anything else."""
    try:
        code = _claimed_member(signing.parse_envelope(envelope, signing.CHECKPOINT_TYPE).payload)
    except VerificationError:
        return ""
    return code if federation.member(code) is not None else ""


def claimed_code(envelope: bytes) -> str:
    """The member code a checkpoint names, parsed but not verified ("" if unparseable): only to
    set aside checkpoints of removed members, never trusted for anything else."""
    try:
        return _claimed_member(signing.parse_envelope(envelope, signing.CHECKPOINT_TYPE).payload)
    except VerificationError:
        return ""


def _claimed_member(payload: bytes) -> str:
    cp = log_pb2.Checkpoint()
    try:
        cp.ParseFromString(payload)
    except Exception as e:  # protobuf's DecodeError
        raise Rejected("checkpoint payload is not valid", reason="MALFORMED_CHECKPOINT") from e
    return cp.member


def decide(
    held: log.LogCheckpoint | None,
    offered: log.LogCheckpoint,
    held_root_at: Callable[[int], bytes],
    peer_last_size: int | None,
    now: datetime,
) -> Decision:
    """What to do with a verified checkpoint a peer offers for a member.

    ``held_root_at(n)`` is the root of the first ``n`` leaves this node holds of the member
    (only asked for ``n`` below the held size). ``peer_last_size`` is the largest size this
    peer showed before for the member: an honest node's verified tree never shrinks, so a
    peer that goes back is serving an old checkpoint (a rollback) and is refused.

    A checkpoint past its expiry is refused whenever it would change anything (TUF's
    freeze attack: a frozen copy must not pass for the current state); a peer that merely
    holds the same expired checkpoint as this node is not counted against it.
    """
    decision = _decide(held, offered, held_root_at, peer_last_size)
    if decision.action in (Action.PULL, Action.REFRESH) and now > offered.expire_time:
        raise Rejected(
            f"{offered.member}: checkpoint of size {offered.size} expired at {offered.expire_time.isoformat()}",
            reason="CHECKPOINT_EXPIRED",
        )
    return decision


def _decide(
    held: log.LogCheckpoint | None,
    offered: log.LogCheckpoint,
    held_root_at: Callable[[int], bytes],
    peer_last_size: int | None,
) -> Decision:
    if peer_last_size is not None and offered.size < peer_last_size:
        raise Rejected(
            f"{offered.member}: the peer showed size {peer_last_size} before and now offers size {offered.size}",
            reason="ROLLBACK",
        )
    if held is None:
        return Decision(Action.PULL, 1, offered.size) if offered.size else Decision(Action.REFRESH)
    if offered.size < held.size:
        if not hmac.compare_digest(held_root_at(offered.size), offered.root_hash):
            return Decision(Action.EQUIVOCATION)
        return Decision(Action.IGNORE)
    if offered.size == held.size:
        if not hmac.compare_digest(held.root_hash, offered.root_hash):
            return Decision(Action.EQUIVOCATION)
        if offered.issue_time > held.issue_time:
            return Decision(Action.REFRESH)
        return Decision(Action.IGNORE)
    return Decision(Action.PULL, held.size + 1, offered.size)


def own_log_offered(
    decision: Decision, offered: log.LogCheckpoint, own_member: str, restore_from_peers: bool
) -> None:
    """A peer offers this node's own member's log, validly signed with the member's key, and
    it is not what this node holds (more entries, a newer signature, or another history).
    Only this node signs for its member: someone else holds the key, or a second process
    publishes. Refused (``OWN_LOG_FROM_PEER``) unless the operator chose to restore the log
    from peers (after losing the database, say)."""
    if offered.member != own_member or decision.action is Action.IGNORE or restore_from_peers:
        return
    raise Rejected(
        f"{own_member}: a peer offers a log of this node's own member signed with its key "
        f"(size {offered.size}, root {offered.root_hash.hex()[:16]}…, issued {offered.issue_time.isoformat()}) "
        "that this node did not sign: someone else holds the key or another process publishes. "
        "Refused; serve with --restore-from-peers only to rebuild a lost log from peers",
        reason="OWN_LOG_FROM_PEER",
    )


def backoff(failures: int, base: float, cap: float) -> float:
    """Seconds to wait after ``failures`` failures in a row (1 or more): base, 2 base,
    4 base, ... up to cap."""
    return min(cap, base * (1 << min(max(failures, 1) - 1, 30)))


WITHHELD_ITEM_BYTES = merkle.HASH_SIZE + 24
"""What a withheld item costs a message besides its empty slot: the leaf hash and the map
entry that carries it (tags, lengths, a varint seq of up to 10 bytes)."""


@dataclass(frozen=True)
class Batch:
    """One ``GetEntriesResponse``: envelopes from ``start``, and the leaf hash of each
    withheld one (whose envelope is b"")."""

    start: int
    envelopes: list[bytes]
    withheld: dict[int, bytes] = field(default_factory=dict)


def batches(entries: Iterable[tuple[int, bytes, bytes]], max_bytes: int, max_entries: int) -> Iterator[Batch]:
    """Cut consecutive (seq, envelope, withheld leaf hash) into batches that stay within a
    message's byte budget (8 bytes of framing counted per entry, and ``WITHHELD_ITEM_BYTES``
    more for a withheld one) and the batch limit. An entry is withheld when its leaf hash
    is given; its envelope is then not sent."""
    batch = Batch(0, [])
    size = 0
    for seq, envelope, withheld_hash in entries:
        cost = (WITHHELD_ITEM_BYTES + 8) if withheld_hash else len(envelope) + 8
        if batch.envelopes and (size + cost > max_bytes or len(batch.envelopes) >= max_entries):
            yield batch
            batch, size = Batch(0, []), 0
        if not batch.envelopes:
            batch = Batch(seq, [])
        if withheld_hash:
            batch.envelopes.append(b"")
            batch.withheld[seq] = withheld_hash
        else:
            batch.envelopes.append(envelope)
        size += cost
    if batch.envelopes:
        yield batch


class _Stream(ABC):
    """What both verifiers check of the framing of a streamed range, before any signature:
    batch size, withheld items well formed, positions in order, nothing past the end."""

    member: str
    end: int
    limits: federation_pb2.Limits

    @property
    @abstractmethod
    def next_seq(self) -> int:
        """The seq the next item must have."""

    def _frame(self, start_seq: int, envelopes: Sequence[bytes], withheld: Mapping[int, bytes]) -> None:
        if len(envelopes) > self.limits.max_batch_entries:
            raise Rejected(
                f"{self.member}: a batch of {len(envelopes)} entries; the federation allows "
                f"{self.limits.max_batch_entries}",
                reason="BATCH_TOO_LARGE",
            )
        if start_seq != self.next_seq:
            self._position(start_seq, "batch starts at")
        if self.next_seq + len(envelopes) - 1 > self.end:
            raise Rejected(
                f"{self.member}: the peer sent entries past the requested end {self.end}", reason="STREAM_OVERRUN"
            )
        if len(withheld) > len(envelopes):
            raise Rejected(
                f"{self.member}: a batch of {len(envelopes)} entries carries {len(withheld)} withheld leaf hashes",
                reason="MALFORMED_WITHHELD",
            )
        for seq, leaf in withheld.items():
            i = seq - start_seq
            if not 0 <= i < len(envelopes) or envelopes[i]:
                raise Rejected(
                    f"{self.member}: a withheld leaf hash for seq {seq}, which is not a withheld entry of the batch "
                    f"starting at {start_seq}",
                    reason="MALFORMED_WITHHELD",
                )
            if len(leaf) != merkle.HASH_SIZE:
                raise Rejected(
                    f"{self.member}: the withheld leaf hash of seq {seq} has {len(leaf)} bytes, not {merkle.HASH_SIZE}",
                    reason="MALFORMED_WITHHELD",
                )
        for i, envelope in enumerate(envelopes):
            if not envelope and start_seq + i not in withheld:
                raise Rejected(
                    f"{self.member}: seq {start_seq + i} is empty and has no withheld leaf hash",
                    reason="MALFORMED_WITHHELD",
                )

    def _verify(
        self, batch: Sequence[bytes], i: int, seq: int, federation: Federation, *, signed: bool = True
    ) -> log.LogEntry:
        """The size, signature, member and seq of the entry ``batch[i]``; the envelopes after
        it in its batch tell a displaced entry from a missing one (sliced only then: a slice
        per entry cost O(batch²)). ``signed=False``: all but the signature, which the caller
        has checked elsewhere before the entry is used."""
        envelope = batch[i]
        check_size(envelope, self.limits.max_entry_bytes, f"{self.member} seq {seq}")
        try:
            if not signed:
                return log.read_entry(envelope, self.member, seq)
            return log.verify_entry(envelope, self.member, seq, federation)
        except VerificationError as e:
            if e.reason == "ENTRY_POSITION_MISMATCH":
                self._position(_claimed_seq(envelope), "entry claims", batch[i + 1 :])
            raise Rejected(e.message, reason=e.reason) from e

    def _position(self, claimed: int, what: str, rest: Sequence[bytes] = ()) -> None:
        """Another seq than the next one. Earlier: a replay or a reordering; later: a gap,
        unless the expected entry comes further on in the same batch (all of which has
        arrived), which is a reordering too. A later batch is not waited for."""
        expected = self.next_seq
        if claimed > expected:
            if any(_claimed_seq_or_zero(e) == expected for e in rest):
                raise Rejected(
                    f"{self.member}: {what} seq {claimed}, expected {expected}: delivered out of order "
                    f"(seq {expected} comes after it)",
                    reason="ENTRY_OUT_OF_ORDER",
                )
            raise Rejected(f"{self.member}: {what} seq {claimed}, expected {expected}: a gap", reason="ENTRY_GAP")
        raise Rejected(
            f"{self.member}: {what} seq {claimed}, expected {expected}: reordered or replayed",
            reason="ENTRY_OUT_OF_ORDER",
        )


def check_signatures(
    federation_envelope: bytes, member: str, start: int, envelopes: Sequence[bytes]
) -> tuple[int, str, str] | None:
    """In a worker process: ``log.verify_entry`` (signature by a key of the member valid when
    the entry was published, and everything else it checks) of each envelope from seq
    ``start`` on, withheld ones (b"") skipped; the first failure as (seq, reason, message)."""
    federation = _worker_federation(federation_envelope)
    for i, envelope in enumerate(envelopes):
        if envelope:
            try:
                log.verify_entry(envelope, member, start + i, federation)
            except VerificationError as e:
                return start + i, e.reason, e.message
    return None


_WORKER_FEDERATION: list[Federation] = []


def _worker_federation(envelope: bytes) -> Federation:
    """The federation document whose chain the node verified, parsed once per worker from
    the same bytes (so the same keys)."""
    if not _WORKER_FEDERATION or _WORKER_FEDERATION[0].envelope != envelope:
        _WORKER_FEDERATION[:] = [Federation(parse_document(envelope)[1], envelope)]
    return _WORKER_FEDERATION[0]


class SignaturePool:
    """Worker processes that check entries' signatures while the caller hashes and frames
    the range: an Ed25519 verification costs about 120 µs and holds the GIL (threads gave
    1.1x on two cores, measured), hashing about 1 µs. They also derive the lookup indexes of
    a long range's last entries at its commit (about as costly per record as a signature).
    Bare interpreters (``workers.WorkerPool``), started on first use, then kept."""

    def __init__(self, workers: int | None = None) -> None:
        self._pool = WorkerPool(workers)
        self.workers = self._pool.workers

    def submit(
        self, federation: Federation, member: str, start: int, envelopes: Sequence[bytes]
    ) -> Future[tuple[int, str, str] | None]:
        return self._pool.submit("check_signatures", federation.envelope, member, start, list(envelopes))

    def derive(self, member: str, items: Sequence[tuple[int, bytes]]) -> Callable[[], list[Shaped | None]]:
        """Start deriving the records of verified entries (seq, envelope) on every core, as
        stored (``index.shape_entries``); the result, in order, when the returned function is
        called."""
        step = max(1, -(-len(items) // (2 * self.workers)))
        futures = [
            self._pool.submit("shape_entries", member, list(items[i : i + step])) for i in range(0, len(items), step)
        ]
        return lambda: [d for f in futures for d in f.result()]

    def pids(self) -> list[int]:
        return self._pool.pids()

    def close(self, wait: bool = False) -> None:
        self._pool.close(wait=wait)


@dataclass
class RangeVerifier(_Stream):
    """Verifies the entries of ``start..end`` of one member's log as they stream in.

    Holds the verified entries until ``finish``, which checks the recomputed root against
    the offered checkpoint: nothing of a range is usable before all of it is verified.

    A withheld item (an empty envelope, its leaf hash in the batch's ``withheld``) is
    appended to the tree by that hash as given: nothing about it can be checked but its
    length, and the root check against the signed checkpoint authenticates it like every
    other leaf. It comes out of ``finish`` as a ``log.withheld_entry``.

    With a ``pool``, each batch's signatures are checked in its worker processes while this
    thread reads the entries (``log.read_entry``: shape, member, seq, body), hashes them and
    extends the tree; ``finish`` waits for every batch's verdict before it compares roots,
    and a failed signature rejects the range whole, as it does without a pool. So nothing
    of a range is usable before each of its entries' signatures was checked.
    """

    member: str
    start: int
    end: int
    federation: Federation
    base: merkle.CompactRange  # the tree over the leaves held before ``start``
    mark_size: int = 0  # record the root when the tree reaches this size (fork checks)
    marked_root: bytes = b""
    entries: list[log.LogEntry] = field(default_factory=list)
    withheld_count: int = 0
    pool: SignaturePool | None = None
    # with a sink, entries go to it (a staging area that is not served) every SINK_ENTRIES
    # instead of piling up here, and ``latest`` keeps each name's last seq in the range
    sink: Callable[[list[log.LogEntry]], None] | None = None
    latest: dict[str, int] = field(default_factory=dict)
    received: int = 0
    _pending: deque[Future[tuple[int, str, str] | None]] = field(default_factory=deque)

    SINK_ENTRIES = 2000

    def __post_init__(self) -> None:
        self.limits = self.federation.limits

    @property
    def next_seq(self) -> int:
        return self.start + self.received

    @property
    def complete(self) -> bool:
        return self.next_seq > self.end

    def add_batch(self, start_seq: int, envelopes: Sequence[bytes], withheld: Mapping[int, bytes] | None = None) -> None:
        withheld = withheld or {}
        self._frame(start_seq, envelopes, withheld)
        for i, envelope in enumerate(envelopes):
            seq = self.next_seq
            if envelope:
                entry = self._verify(envelopes, i, seq, self.federation, signed=self.pool is None)
            else:
                entry = log.withheld_entry(self.member, seq, withheld[seq])
                self.withheld_count += 1
            self.entries.append(entry)
            self.received += 1
            if not entry.withheld:
                self.latest[entry.name] = seq
            self.base.append(entry.leaf_hash)
            if self.base.size == self.mark_size:
                self.marked_root = self.base.root()
        if self.sink is not None and len(self.entries) >= self.SINK_ENTRIES:
            self.sink(self.entries)
            self.entries = []
        if self.pool is not None:
            self._pending.append(self.pool.submit(self.federation, self.member, start_seq, envelopes))
            # a verdict that has come fails the range early; a bounded backlog bounds memory
            while self._pending and (self._pending[0].done() or len(self._pending) > 4 * self.pool.workers):
                self._verdict(self._pending.popleft())

    def _verdict(self, future: Future[tuple[int, str, str] | None]) -> None:
        failed = future.result()
        if failed is not None:
            self.abandon()
            raise Rejected(failed[2], reason=failed[1])

    def abandon(self) -> None:
        """Stop checking what is left (the range is refused, or given up)."""
        while self._pending:
            self._pending.popleft().cancel()

    def finish(self, checkpoint: log.LogCheckpoint) -> list[log.LogEntry]:
        while self._pending:  # every entry's signature checked before anything else is decided
            self._verdict(self._pending.popleft())
        if not self.complete:
            raise Rejected(
                f"{self.member}: the peer's range ended at seq {self.next_seq - 1}, before {self.end}",
                reason="TRUNCATED_RANGE",
            )
        if self.base.size != checkpoint.size:
            raise Rejected(
                f"{self.member}: the range ends at {self.base.size}, the checkpoint covers {checkpoint.size}",
                reason="CHECKPOINT_SIZE_MISMATCH",
            )
        if not hmac.compare_digest(self.base.root(), checkpoint.root_hash):
            raise Rejected(
                f"{self.member}: the root recomputed over entries 1..{checkpoint.size} differs from the "
                "signed checkpoint's root",
                reason="ROOT_MISMATCH",
            )
        if self.sink is not None and self.entries:
            self.sink(self.entries)
            self.entries = []
        return self.entries


def withheld_runs(held: Mapping[int, bytes], after: int, max_entries: int, max_run: int) -> list[tuple[int, int]]:
    """Contiguous runs (first, last) of the withheld positions ``held`` (seq -> leaf hash),
    from the first one after ``after`` on and wrapping round to the start, at most
    ``max_entries`` positions in all and ``max_run`` in one run: what one fill pass asks a
    peer for. Starting after where the last pass stopped, successive passes come round to
    every position, also when the first ones are withheld by every peer."""
    seqs = sorted(held)
    if not seqs:
        return []
    pivot = next((i for i, s in enumerate(seqs) if s > after), 0)
    ordered = seqs[pivot:] + seqs[:pivot]
    runs: list[tuple[int, int]] = []
    for seq in ordered[: max(max_entries, 0)]:
        if runs and seq == runs[-1][1] + 1 and runs[-1][1] - runs[-1][0] + 1 < max_run:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


@dataclass
class FillVerifier(_Stream):
    """Verifies what a peer sends for ``start..end``, positions this node holds withheld
    (``held``: seq -> the leaf hash the signed root covers). Each entry sent whole must pass
    what ingest checks (size, signature, member, seq) and have exactly the withheld leaf
    hash (``LEAF_HASH_MISMATCH`` otherwise); a position the peer withholds again must carry
    that same hash, and is skipped: ``withheld_again`` says the peer would not help."""

    member: str
    start: int
    end: int
    held: Mapping[int, bytes]
    federation: Federation
    entries: list[log.LogEntry] = field(default_factory=list)
    withheld_again: int = 0

    def __post_init__(self) -> None:
        self.limits = self.federation.limits
        self._next = self.start

    @property
    def next_seq(self) -> int:
        return self._next

    @property
    def complete(self) -> bool:
        return self._next > self.end

    def add_batch(self, start_seq: int, envelopes: Sequence[bytes], withheld: Mapping[int, bytes] | None = None) -> None:
        withheld = withheld or {}
        self._frame(start_seq, envelopes, withheld)
        for i, envelope in enumerate(envelopes):
            seq = self._next
            expected = self.held[seq]
            if envelope:
                entry = self._verify(envelopes, i, seq, self.federation)
                leaf = entry.leaf_hash
            else:
                entry, leaf = None, withheld[seq]
            if not hmac.compare_digest(leaf, expected):
                raise Rejected(
                    f"{self.member} seq {seq}: the entry's leaf hash {leaf.hex()[:16]}… is not the withheld "
                    f"hash {expected.hex()[:16]}… the signed root covers",
                    reason="LEAF_HASH_MISMATCH",
                )
            if entry is None:
                self.withheld_again += 1
            else:
                self.entries.append(entry)
            self._next += 1

    def finish(self) -> None:
        """The peer's checkpoint covers the run: an honest peer sends all of it."""
        if not self.complete:
            raise Rejected(
                f"{self.member}: the peer's answer ended at seq {self._next - 1}, before {self.end}",
                reason="TRUNCATED_RANGE",
            )


def _claimed_seq(envelope: bytes) -> int:
    entry = log_pb2.Entry()
    entry.ParseFromString(signing.parse_envelope(envelope).payload)  # verify_entry parsed it already
    return int(entry.seq)


def _claimed_seq_or_zero(envelope: bytes) -> int:
    """The seq an envelope claims, unverified, or 0 when it does not parse (or is withheld)."""
    if not envelope:
        return 0
    try:
        return _claimed_seq(envelope)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError or a SignatureError: no claim
        return 0
