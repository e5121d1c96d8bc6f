"""Tables: raw envelopes (the source of truth) and derived, indexed lookup state.

Alembic owns the schema (storage/migrations); these models describe it for queries.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class FederationDocumentRow(Base):
    """Every accepted version of the federation document, exactly as signed."""

    __tablename__ = "federation_documents"
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    accepted_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EntryRow(Base):
    """One log entry of one member, exactly as the origin signed it."""

    __tablename__ = "entries"
    member: Mapped[str] = mapped_column(String(16), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    # None for a withheld entry (kind "withheld"): only its leaf hash is known here
    publish_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # members-only (DESIGN §8): served whole only to member nodes
    restricted: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (Index("ix_entries_name", "name"), Index("ix_entries_withheld", "member", "kind"))


class StagedEntryRow(Base):
    """An entry of a long range being pulled, once its batch is framed and read, before the
    range is verified whole (every signature, the root against the signed checkpoint).
    Never served: ``Store.append_staged`` moves a verified range into ``entries`` in the
    transaction that commits its derived state and checkpoint; a stage left by a node killed
    mid-sync is deleted when the store opens. Keeps a pull's memory bounded whatever the
    range's length."""

    __tablename__ = "staged_entries"
    stage: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    member: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    publish_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # the entry's restricted flag unless it is a deletion (record_members_only; True when withheld)
    members_only: Mapped[bool] = mapped_column(Boolean)


class CheckpointRow(Base):
    """The latest verified checkpoint of each member (the per-member cursor is its size)."""

    __tablename__ = "checkpoints"
    member: Mapped[str] = mapped_column(String(16), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    issue_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expire_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    # the right frontier of the log's Merkle tree at ``size`` (merkle.CompactRange.frontier):
    # one hash per set bit of the size, so a pull or a publish extends the tree and checks its
    # root without reading the log; None until the first append after the upgrade to 0005
    # (then computed once from the leaf hashes). ``verify`` recomputes it from the envelopes.
    frontier: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class LogFrontierRow(Base):
    """The right frontier of a member's log tree at every multiple of ``FRONTIER_STEP``
    leaves (``merkle.CompactRange.frontier``), so a consistency proof from any size ``m``
    starts from the nearest one below ``m`` and reads fewer than ``FRONTIER_STEP`` leaves
    before it, plus the leaves after it: O(log n + change), not O(n). Written by ``append``
    as the tree passes each multiple; those a staged range or a database older than 0006
    lacks are computed once, when a proof first needs them. ``verify`` recomputes each."""

    __tablename__ = "log_frontiers"
    member: Mapped[str] = mapped_column(String(16), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    frontier: Mapped[bytes] = mapped_column(LargeBinary)


class StateSnapshotRow(Base):
    """A member's two state trees (``state.SortedLeafTree.to_bytes``) as its derived records
    made them at the checkpoint of ``size`` leaves: a process that has not read them yet
    starts from here and follows the names of the entries appended since (O(change), where
    reading every current record took 1.2 s at 100,000 records), and uses them only when
    their roots are those its held checkpoint signs. Kept for members of at least
    ``SNAPSHOT_MIN_RECORDS`` current records, written in the transaction of an append that read
    the trees from the records or that is ``SNAPSHOT_EVERY`` entries past this one; ``fill``
    and ``rebuild`` delete it."""

    __tablename__ = "state_snapshots"
    member: Mapped[str] = mapped_column(String(16), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    everything: Mapped[bytes] = mapped_column(LargeBinary)
    public: Mapped[bytes] = mapped_column(LargeBinary)


SNAPSHOT_EVERY = 1024
"""Entries appended after a state snapshot before an append writes the next."""

SNAPSHOT_MIN_RECORDS = 1000
"""Current records below which a member gets no state snapshot: reading them is cheaper than
keeping one (about 260 bytes a record for both trees)."""

FRONTIER_STEP = 256
"""Leaves between two stored frontiers of a log (``LogFrontierRow``)."""


class RecordRow(Base):
    """Derived: the current record of each name (its latest entry, unless a deletion)."""

    __tablename__ = "records"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    member: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    seq: Mapped[int] = mapped_column(BigInteger)
    public: Mapped[bool] = mapped_column(Boolean)
    label: Mapped[str] = mapped_column(String(2000))

    __table_args__ = (
        Index("ix_records_kind_member_name", "kind", "member", "name"),
        # a member's current records, without reading the other members' (state trees, publish)
        Index("ix_records_member_name", "member", "name"),
    )


class RecordAttrRow(Base):
    """Derived: simple attributes of a record that filters compare against."""

    __tablename__ = "record_attrs"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    attr: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))

    __table_args__ = (Index("ix_record_attrs_attr_value", "attr", "value"),)


class SearchTermRow(Base):
    """Derived: folded names and places of a record, for search in any script."""

    __tablename__ = "search_terms"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    term: Mapped[str] = mapped_column(String(2000), primary_key=True)
    member: Mapped[str] = mapped_column(String(16))
    weight: Mapped[int] = mapped_column(Integer)  # 0: a name of the record; 1: a place

    __table_args__ = (Index("ix_search_terms_member", "member"),)


class CoverageIndexRow(Base):
    """Derived: where an authority is competent."""

    __tablename__ = "coverage"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    member: Mapped[str] = mapped_column(String(16))
    level: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(2000))
    last: Mapped[str] = mapped_column(String(64))
    subdivision: Mapped[str] = mapped_column(String(16))

    __table_args__ = (
        Index("ix_coverage_name", "name"),
        Index("ix_coverage_member_level_key", "member", "level", "key"),
    )


class CompetenceIndexRow(Base):
    """Derived: which request types an authority handles, in which role."""

    __tablename__ = "competences"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    member: Mapped[str] = mapped_column(String(16))
    request_type: Mapped[str] = mapped_column(String(64))
    role: Mapped[int] = mapped_column(Integer)
    offence: Mapped[str] = mapped_column(String(64))
    stage: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_competences_name", "name"),
        Index("ix_competences_member_type", "member", "request_type"),
    )


class PlaceIndexRow(Base):
    """Derived: place names of a member, folded: those of its gazetteer, and the municipalities
    its authorities' coverage names."""

    __tablename__ = "places"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    member: Mapped[str] = mapped_column(String(16))
    folded: Mapped[str] = mapped_column(String(2000))
    display: Mapped[str] = mapped_column(String(2000))
    subdivision: Mapped[str] = mapped_column(String(16))
    # 0: named by an authority's coverage; 1: a gazetteer subdivision; 2: a gazetteer municipality
    kind: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        Index("ix_places_name", "name"),
        Index("ix_places_member_folded", "member", "folded"),
        Index("ix_places_member_kind", "member", "kind"),
    )


DERIVED_TABLES = (RecordRow, RecordAttrRow, SearchTermRow, CoverageIndexRow, CompetenceIndexRow, PlaceIndexRow)


class PeerMemberRow(Base):
    """Sync bookkeeping: the largest checkpoint size a peer has shown for a member (an honest
    peer never goes back: a smaller one later is a rollback) and when a sync of that member
    from that peer last succeeded."""

    __tablename__ = "peer_members"
    peer: Mapped[str] = mapped_column(String(255), primary_key=True)
    member: Mapped[str] = mapped_column(String(16), primary_key=True)
    last_size: Mapped[int] = mapped_column(BigInteger)
    last_success_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RejectionRow(Base):
    """What a peer sent that failed verification, counted per peer, member and reason."""

    __tablename__ = "rejections"
    peer: Mapped[str] = mapped_column(String(255), primary_key=True)
    member: Mapped[str] = mapped_column(String(16), primary_key=True)  # "" : not about one member
    reason: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    last_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_message: Mapped[str] = mapped_column(String(2000))


class EquivocationRow(Base):
    """Evidence: two checkpoints signed by the same member that cannot both be true."""

    __tablename__ = "equivocations"
    member: Mapped[str] = mapped_column(String(16), primary_key=True)
    offered_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    peer: Mapped[str] = mapped_column(String(255))
    held_checkpoint: Mapped[bytes] = mapped_column(LargeBinary)
    offered_checkpoint: Mapped[bytes] = mapped_column(LargeBinary)
    detected_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


SYNC_TABLES = (PeerMemberRow, RejectionRow, EquivocationRow)


class AccessGrantRow(Base):
    """An access token this node issued to a user of its member (the token itself is not
    kept: only what identifies and revokes it)."""

    __tablename__ = "access_grants"
    token_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    issue_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expire_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoke_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditRow(Base):
    """One members-only record served: who, which record, when, through which method."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    caller: Mapped[str] = mapped_column(String(300))
    method: Mapped[str] = mapped_column(String(64))
    record: Mapped[str] = mapped_column(String(200))

    __table_args__ = (Index("ix_audit_log_time", "time"),)
