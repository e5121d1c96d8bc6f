"""A member's append-only log of signed entries and its checkpoints (DESIGN §3).

Pure functions: they build, sign and verify envelopes; storage keeps the exact bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from counterpart.v1 import log_pb2
from counterpart_core import merkle, signing
from counterpart_core.errors import SignatureError, VerificationError
from counterpart_core.federation import Federation, key_valid_at
from counterpart_core.records import Record, record_kind
from counterpart_core.state import StateRoots
from counterpart_core.timeutil import from_timestamp, to_timestamp

DEFAULT_CHECKPOINT_VALIDITY = timedelta(days=7)
WITHHELD = "withheld"
"""The kind of an entry this node holds only the leaf hash of: a members-only entry a peer
did not give it (DESIGN §8). It has no envelope, name or publish time; the checkpoint's
root covers its hash, so the log still verifies."""


@dataclass(frozen=True)
class LogEntry:
    """An entry whose envelope signature, member and position have been checked."""

    member: str
    seq: int
    name: str
    kind: str  # authority | contact | rule | treaty | deletion | withheld
    envelope: bytes  # exactly as signed: the Merkle leaf data (b"" when withheld)
    leaf_hash: bytes
    entry: log_pb2.Entry

    @property
    def withheld(self) -> bool:
        """Only the leaf hash is known (see ``WITHHELD``)."""
        return self.kind == WITHHELD

    @property
    def record(self) -> Record | None:
        body = self.entry.WhichOneof("body")
        if body is None or body == "deletion":
            return None
        rec: Record = getattr(self.entry, body)
        return rec

    @property
    def publish_time(self) -> datetime:
        return from_timestamp(self.entry.publish_time)


@dataclass(frozen=True)
class LogCheckpoint:
    """A checkpoint whose signature has been checked."""

    member: str
    size: int
    root_hash: bytes
    issue_time: datetime
    expire_time: datetime
    envelope: bytes
    # the roots of the member's state trees it signs (None: signed before they existed)
    state: StateRoots | None = None

    def stale(self, now: datetime) -> bool:
        return now > self.expire_time


def build_entry(
    member: str, seq: int, name: str, record: Record | None, now: datetime, key: signing.SigningKey,
    deletion_reason: str = "",
) -> LogEntry:
    """Create and sign one entry (``record`` None: a tombstone for ``name``)."""
    entry = log_pb2.Entry(member=member, seq=seq, name=name)
    entry.publish_time.CopyFrom(to_timestamp(now))
    if record is None:
        entry.deletion.reason = deletion_reason
        kind = "deletion"
    else:
        kind = record_kind(record)
        getattr(entry, kind).CopyFrom(record)
    envelope = signing.sign_envelope(entry.SerializeToString(deterministic=True), signing.ENTRY_TYPE, [key])
    return LogEntry(member, seq, name, kind, envelope, merkle.leaf_hash(envelope), entry)


def withheld_entry(member: str, seq: int, leaf_hash: bytes) -> LogEntry:
    """The position ``seq`` of a member's log, known by its leaf hash alone. The caller has
    checked the hash is 32 bytes; only a root check against a signed checkpoint makes it
    trustworthy."""
    if len(leaf_hash) != merkle.HASH_SIZE:
        raise VerificationError(
            f"{member} seq {seq}: a withheld entry's leaf hash has {len(leaf_hash)} bytes, not {merkle.HASH_SIZE}",
            reason="MALFORMED_WITHHELD",
        )
    return LogEntry(member, seq, "", WITHHELD, b"", bytes(leaf_hash), log_pb2.Entry(member=member, seq=seq))


def build_checkpoint(
    member: str, size: int, root_hash: bytes, now: datetime, key: signing.SigningKey,
    valid_for: timedelta = DEFAULT_CHECKPOINT_VALIDITY, state: StateRoots | None = None,
) -> LogCheckpoint:
    """Sign a checkpoint; with ``state``, it also signs the roots of the member's state
    trees (``counterpart_core.state``), so answers can prove a record is the latest."""
    cp = log_pb2.Checkpoint(member=member, size=size, root_hash=root_hash)
    if state is not None:
        cp.state_root, cp.state_size = state.root, state.size
        cp.public_state_root, cp.public_state_size = state.public_root, state.public_size
    cp.issue_time.CopyFrom(to_timestamp(now))
    cp.expire_time.CopyFrom(to_timestamp(now + valid_for))
    envelope = signing.sign_envelope(cp.SerializeToString(deterministic=True), signing.CHECKPOINT_TYPE, [key])
    return LogCheckpoint(
        member, size, root_hash, from_timestamp(cp.issue_time), from_timestamp(cp.expire_time), envelope, state
    )


def verify_entry(envelope: bytes, member: str, seq: int, federation: Federation) -> LogEntry:
    """Check an entry's envelope: signed by a key of ``member`` valid when it was published,
    and claiming exactly this member and position."""
    env = signing.parse_envelope(envelope, signing.ENTRY_TYPE)
    key = federation.verify_member_envelope(env, member)
    entry = _parse_entry(env.payload, member, seq)
    if not key_valid_at(key, from_timestamp(entry.publish_time)):
        raise SignatureError(
            f"{member} seq {seq}: signed by {key.key_id} outside its validity window", reason="KEY_NOT_VALID"
        )
    return _checked_body(envelope, entry, member, seq)


def read_entry(envelope: bytes, member: str, seq: int) -> LogEntry:
    """What ``verify_entry`` checks but the signature and its key's validity window: the
    envelope's shape, the member and position the entry claims, its body. For a range whose
    signatures are verified elsewhere (in parallel) before anything of it is used; an entry
    only read is never stored or served on its own."""
    env = signing.parse_envelope(envelope, signing.ENTRY_TYPE)
    return _checked_body(envelope, _parse_entry(env.payload, member, seq), member, seq)


def _parse_entry(payload: bytes, member: str, seq: int) -> log_pb2.Entry:
    entry = log_pb2.Entry()
    try:
        entry.ParseFromString(payload)
    except Exception as e:
        raise VerificationError(f"{member} seq {seq}: entry payload is not valid", reason="MALFORMED_ENTRY") from e
    if entry.member != member or entry.seq != seq:
        raise VerificationError(
            f"{member} seq {seq}: entry claims member {entry.member!r} seq {entry.seq}",
            reason="ENTRY_POSITION_MISMATCH",
        )
    return entry


def _checked_body(envelope: bytes, entry: log_pb2.Entry, member: str, seq: int) -> LogEntry:
    body = entry.WhichOneof("body")
    if body is None:
        raise VerificationError(f"{member} seq {seq}: entry has no body", reason="MALFORMED_ENTRY")
    return LogEntry(member, seq, entry.name, body, envelope, merkle.leaf_hash(envelope), entry)


def verify_checkpoint(envelope: bytes, member: str, federation: Federation, *, check_window: bool = True) -> LogCheckpoint:
    """Check a checkpoint's envelope: signed by a key of ``member``, valid when it was issued.

    ``check_window=False`` is for a checkpoint accepted earlier and re-read from disk: its
    key may since have been withdrawn from that point on, which refuses new checkpoints,
    not the tree this node verified while the key was good.
    """
    env = signing.parse_envelope(envelope, signing.CHECKPOINT_TYPE)
    key = federation.verify_member_envelope(env, member)
    cp = log_pb2.Checkpoint()
    try:
        cp.ParseFromString(env.payload)
    except Exception as e:
        raise VerificationError(f"{member}: checkpoint payload is not valid", reason="MALFORMED_CHECKPOINT") from e
    if cp.member != member:
        raise VerificationError(f"checkpoint claims member {cp.member!r}, expected {member}", reason="CHECKPOINT_MEMBER_MISMATCH")
    if len(cp.root_hash) != merkle.HASH_SIZE:
        raise VerificationError(f"{member}: checkpoint root has {len(cp.root_hash)} bytes", reason="MALFORMED_CHECKPOINT")
    issued = from_timestamp(cp.issue_time)
    if check_window and not key_valid_at(key, issued):
        raise SignatureError(f"{member}: checkpoint signed by {key.key_id} outside its validity window", reason="KEY_NOT_VALID")
    return LogCheckpoint(
        member, int(cp.size), bytes(cp.root_hash), issued, from_timestamp(cp.expire_time), envelope,
        checkpoint_state(cp),
    )


def checkpoint_state(cp: log_pb2.Checkpoint) -> StateRoots | None:
    """The state roots a parsed checkpoint signs, None for one signed before they existed.

    Both roots or neither: a checkpoint with one alone, or a root that is not a SHA-256
    digest, is malformed (``MALFORMED_CHECKPOINT``).
    """
    if not cp.state_root and not cp.public_state_root:
        if cp.state_size or cp.public_state_size:
            raise VerificationError(f"{cp.member}: checkpoint has state sizes but no state roots", reason="MALFORMED_CHECKPOINT")
        return None
    for what, root in (("state_root", cp.state_root), ("public_state_root", cp.public_state_root)):
        if len(root) != merkle.HASH_SIZE:
            raise VerificationError(f"{cp.member}: checkpoint {what} has {len(root)} bytes", reason="MALFORMED_CHECKPOINT")
    if cp.public_state_size > cp.state_size:
        raise VerificationError(
            f"{cp.member}: checkpoint's public state is larger than its whole state", reason="MALFORMED_CHECKPOINT"
        )
    return StateRoots(bytes(cp.state_root), int(cp.state_size), bytes(cp.public_state_root), int(cp.public_state_size))


def check_root(member: str, checkpoint: LogCheckpoint, leaf_hashes: Sequence[bytes]) -> None:
    """The checkpoint's root must equal the root recomputed over the given leaves."""
    if checkpoint.size != len(leaf_hashes):
        raise VerificationError(
            f"{member}: checkpoint covers {checkpoint.size} entries, the log holds {len(leaf_hashes)}",
            reason="CHECKPOINT_SIZE_MISMATCH",
        )
    if merkle.root_hash(leaf_hashes) != checkpoint.root_hash:
        raise VerificationError(f"{member}: recomputed root differs from the signed checkpoint", reason="ROOT_MISMATCH")
