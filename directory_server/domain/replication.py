"""Sync decisions: what to do with a checkpoint a peer offers, and how a pulled range of a
member's log is verified before anything of it is stored (DESIGN §5).

Pure: no I/O. The sync engine fetches, these functions decide; a decision to reject
carries a stable reason that the engine counts per peer.

Ingest order, as DESIGN §5 gives it: the checkpoint's signature by a key valid for the
member; consistency with the checkpoint already held (or with the tree recomputed from the
leaves held); each entry's limit, signature, member and seq; the recomputed root equals
the checkpoint's root. Only then does the caller commit, in one transaction.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from counterpart.v1 import federation_pb2, log_pb2
from directory_server.domain import log, merkle, signing
from directory_server.domain.errors import VerificationError
from directory_server.domain.federation import Federation


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


def batches(
    entries: Iterable[tuple[int, bytes]], max_bytes: int, max_entries: int
) -> Iterator[tuple[int, list[bytes]]]:
    """Cut consecutive (seq, envelope) into (start_seq, envelopes) batches that stay within
    a message's byte budget (8 bytes of framing counted per entry) and the batch limit."""
    batch: list[bytes] = []
    size = 0
    start = 0
    for seq, envelope in entries:
        if batch and (size + len(envelope) + 8 > max_bytes or len(batch) >= max_entries):
            yield start, batch
            batch, size = [], 0
        if not batch:
            start = seq
        batch.append(envelope)
        size += len(envelope) + 8
    if batch:
        yield start, batch


@dataclass
class RangeVerifier:
    """Verifies the entries of ``start..end`` of one member's log as they stream in.

    Holds the verified entries until ``finish``, which checks the recomputed root against
    the offered checkpoint: nothing of a range is usable before all of it is verified.
    """

    member: str
    start: int
    end: int
    federation: Federation
    base: merkle.CompactRange  # the tree over the leaves held before ``start``
    mark_size: int = 0  # record the root when the tree reaches this size (fork checks)
    marked_root: bytes = b""
    entries: list[log.LogEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.limits: federation_pb2.Limits = self.federation.limits

    @property
    def next_seq(self) -> int:
        return self.start + len(self.entries)

    @property
    def complete(self) -> bool:
        return self.next_seq > self.end

    def add_batch(self, start_seq: int, envelopes: Sequence[bytes]) -> None:
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
        for envelope in envelopes:
            check_size(envelope, self.limits.max_entry_bytes, f"{self.member} seq {self.next_seq}")
            seq = self.next_seq
            try:
                entry = log.verify_entry(envelope, self.member, seq, self.federation)
            except VerificationError as e:
                if e.reason == "ENTRY_POSITION_MISMATCH":
                    self._position(_claimed_seq(envelope), "entry claims")
                raise Rejected(e.message, reason=e.reason) from e
            self.entries.append(entry)
            self.base.append(entry.leaf_hash)
            if self.base.size == self.mark_size:
                self.marked_root = self.base.root()

    def _position(self, claimed: int, what: str) -> None:
        expected = self.next_seq
        if claimed > expected:
            raise Rejected(f"{self.member}: {what} seq {claimed}, expected {expected}: a gap", reason="ENTRY_GAP")
        raise Rejected(
            f"{self.member}: {what} seq {claimed}, expected {expected}: reordered or replayed",
            reason="ENTRY_OUT_OF_ORDER",
        )

    def finish(self, checkpoint: log.LogCheckpoint) -> list[log.LogEntry]:
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
        return self.entries


def _claimed_seq(envelope: bytes) -> int:
    entry = log_pb2.Entry()
    entry.ParseFromString(signing.parse_envelope(envelope).payload)  # verify_entry parsed it already
    return int(entry.seq)
