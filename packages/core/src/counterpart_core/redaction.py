"""Members-only entries in a member's log, and what a node may hand to whom (DESIGN §8).

Pure: no I/O. Storage asks these functions for each entry's ``restricted`` flag as it
appends, fills or re-checks a log; the replication service asks ``serve_whole`` before it
sends an entry.

The rule: a contact whose visibility is not ``VISIBILITY_PUBLIC`` is members-only
(``VISIBILITY_MEMBERS``, and an unspecified visibility too: personal data defaults to
members-only, and derived state already treats it as not public); a deletion is
members-only when the entry it deletes (the previous entry of the same name) is, since a
tombstone names what it removes; nothing else is.

A node that holds some entries of a member withheld (their leaf hash only) may not see
which entry a deletion follows: the previous entry of the name it knows may be older than a
withheld one that is, unknown to it, of the same name. Such a deletion is *ambiguous*, and
the caller says what it should be (``Marker.mark``'s ``ambiguous``): see
``directory_server.sync`` for how a sync chooses, and ``Store.fill``, which settles the
question once the withheld entries arrive whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from counterpart.v1 import log_pb2, records_pb2
from counterpart_core import signing
from counterpart_core.log import WITHHELD, LogEntry
from counterpart_core.records import Record


def record_members_only(record: Record | None) -> bool:
    """Is this record for member nodes and signed-in users only?"""
    return isinstance(record, records_pb2.Contact) and record.visibility != records_pb2.VISIBILITY_PUBLIC


def envelope_members_only(envelope: bytes) -> bool:
    """``record_members_only`` of an envelope's entry, parsed but not verified: for flags of
    entries stored (and verified) before flags existed. Unparseable bytes count as
    members-only: when in doubt, withhold."""
    try:
        entry = log_pb2.Entry()
        entry.ParseFromString(signing.parse_envelope(envelope).payload)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError or a SignatureError: withhold
        return True
    return entry.WhichOneof("body") == "contact" and entry.contact.visibility != records_pb2.VISIBILITY_PUBLIC


def deletion_restricted(previous: bool | None, hidden: bool, ambiguous: bool) -> bool:
    """A deletion's flag. ``previous``: the flag of the latest entry of the name this node
    holds whole before it (None: there is none); ``hidden``: a withheld entry lies after
    that one (so it may be the name's true previous entry); ``ambiguous``: the flag to give
    when that leaves the answer open."""
    if previous:
        return True  # whatever is hidden after it, a members-only entry precedes it
    if not hidden:
        return False
    return ambiguous


@dataclass
class Marker:
    """Walks one member's log in order and gives each entry its ``restricted`` flag.

    ``history`` is, for names seen before the first entry given, (seq, flag) of the name's
    latest entry held whole; ``last_withheld`` the seq of the latest withheld entry before it.
    """

    history: dict[str, tuple[int, bool]] = field(default_factory=dict)
    last_withheld: int = 0

    def mark(self, seq: int, name: str, kind: str, members_only: bool, ambiguous: bool = True) -> bool:
        """The flag of the next entry. ``members_only`` is ``record_members_only`` of its
        record (ignored for deletions and withheld entries)."""
        if kind == WITHHELD:
            self.last_withheld = max(self.last_withheld, seq)
            return True  # only members-only entries are ever withheld; and never served whole
        if kind == "deletion":
            before = self.history.get(name)
            hidden = self.last_withheld > (before[0] if before else 0)
            flag = deletion_restricted(before[1] if before else None, hidden, ambiguous)
        else:
            flag = members_only
        self.history[name] = (seq, flag)
        return flag

    def mark_entry(self, entry: LogEntry, ambiguous: bool = True) -> bool:
        return self.mark(entry.seq, entry.name, entry.kind, record_members_only(entry.record), ambiguous)


def mark_log(entries: Iterable[LogEntry], stored: Mapping[int, bool] | None = None) -> dict[int, bool]:
    """Every flag of a whole log (seq 1 first), as ``rebuild`` and ``verify`` recompute them:
    an ambiguous deletion keeps the flag stored for it (the choice made when it was
    ingested), or is members-only when there is none."""
    marker = Marker()
    stored = stored or {}
    return {e.seq: marker.mark_entry(e, stored.get(e.seq, True)) for e in entries}


def serve_whole(restricted: bool, withheld: bool, member_node: bool) -> bool:
    """May a node send this entry whole to its caller? A withheld entry never (a node never
    relays more than it was given); a members-only one only to a caller who may see
    members-only records (``member_node``: a member node or a signed-in user of a member)."""
    if withheld:
        return False
    return not restricted or member_node
