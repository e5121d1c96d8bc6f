"""As-of answers: the directory as it stood at an instant (issue 10, item 2).

Current answers read the derived state of each name's latest version. An as-of answer reads
a VIEW instead: the same derived state, rebuilt (``index.derive``) from the versions the
rule of ``counterpart_core.effective`` picks at the instant, in an in-memory SQLite store
whose log methods (envelopes, leaf hashes, checkpoints, audit) are the node's own store. So
the unchanged ``lookup.Directory`` answers over it with the real inclusion proofs against
the current checkpoint, and the members-only rules of the current path apply unchanged
(a view row is public exactly when the current row of that version would be).

Views are cached, a few at a time, keyed by what they depend on: the log sizes held, the
reading, and where the instant falls among the boundary instants (publications, starts,
ends) of every version; two instants between the same boundaries get the same answer.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.pool import StaticPool

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import log_pb2
from counterpart_core import effective, signing, state
from counterpart_core.access import ANONYMOUS, Caller
from counterpart_core.errors import InvalidArgumentError
from counterpart_core.federation import Federation
from counterpart_core.index import derive
from counterpart_core.log import LogEntry
from counterpart_core.redaction import record_members_only
from counterpart_core.timeutil import from_timestamp, to_timestamp, utcnow
from directory_server.lookup import Directory, Loaded, Snapshot
from directory_server.storage.models import Base, EntryRow
from directory_server.storage.store import Generation, RecordKey, Store

MAX_VIEWS = 4  # each holds the derived rows of one instant; a handful covers a session's questions
MAX_LOGS = 4  # members whose whole parsed log is kept (a view reads every member's; 5,000 entries ~ 25 MB)
_READINGS = {
    ds.AS_OF_READING_UNSPECIFIED: effective.IN_EFFECT,
    ds.AS_OF_READING_IN_EFFECT: effective.IN_EFFECT,
    ds.AS_OF_READING_PUBLISHED: effective.PUBLISHED,
}
_WIRE = {effective.IN_EFFECT: ds.AS_OF_READING_IN_EFFECT, effective.PUBLISHED: ds.AS_OF_READING_PUBLISHED}


@dataclass(frozen=True)
class Instant:
    """What an answer is as of: the instant and the reading."""

    at: datetime
    reading: str

    def message(self) -> ds.AsOf:
        return ds.AsOf(time=to_timestamp(self.at), reading=_WIRE[self.reading])


def requested(as_of: ds.AsOf, now: datetime) -> Instant:
    """The instant a request asks for. A reading without a time, and a time in the future,
    are refused: the directory cannot say what will be in effect (only what is scheduled,
    which the current answer shows)."""
    if as_of.reading not in _READINGS:
        raise InvalidArgumentError(f"as_of.reading {as_of.reading} is not a known reading", reason="INVALID_AS_OF")
    if not as_of.HasField("time"):
        raise InvalidArgumentError(
            "as_of.time is required when as_of is given (e.g. 2026-03-01T00:00:00Z)", reason="AS_OF_TIME_MISSING"
        )
    try:
        at = from_timestamp(as_of.time)
    except (ValueError, OverflowError) as e:
        raise InvalidArgumentError(f"as_of.time is not a valid time: {e}", reason="INVALID_AS_OF") from e
    if at > now:
        raise InvalidArgumentError(
            f"as_of.time {effective.format_instant(at)} is in the future; ask for the current answer "
            "instead (it shows changes already scheduled)", reason="AS_OF_IN_FUTURE",
        )
    return Instant(at, _READINGS[as_of.reading])


class _ViewStore(Store):
    """Derived rows of one instant in memory; everything of the log is the node's store."""

    def __init__(self, real: Store) -> None:
        self.real = real
        super().__init__("sqlite://", engine_options={"poolclass": StaticPool})

    def migrate(self) -> None:
        tables = [t for t in Base.metadata.sorted_tables if t.name != EntryRow.__tablename__]
        Base.metadata.create_all(self.engine, tables=tables)

    def load(self, entries: Sequence[LogEntry]) -> None:
        with self.transaction() as s:
            self._replace_derived(s, [], [derive(e) for e in entries])

    # the log, checkpoints and audit: the node's own (proofs are the real ones)
    def leaf_hashes(self, member: str, upto: int | None = None) -> list[bytes]:
        return self.real.leaf_hashes(member, upto)

    def envelopes_at(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
        return self.real.envelopes_at(keys)

    def record_keys(
        self, names: Sequence[str], envelopes: dict[tuple[str, int], bytes] | None = None
    ) -> dict[str, RecordKey]:
        return super().record_keys(names)  # the entries are the real store's: read by envelopes_at

    def envelope(self, member: str, seq: int) -> bytes | None:
        return self.real.envelope(member, seq)

    def checkpoint(self, member: str) -> bytes | None:
        return self.real.checkpoint(member)

    def generations(self, members: Sequence[str] | None) -> dict[str, Generation]:
        return self.real.generations(members)

    def lookup_generations(self, members: Sequence[str]) -> dict[str, Generation]:
        return self.real.lookup_generations(members)

    def checkpoints(self) -> dict[str, bytes]:
        return self.real.checkpoints()

    def log_size(self, member: str) -> int:
        return self.real.log_size(member)

    def revisions(self, name: str, before: int | None, limit: int) -> list[EntryRow]:
        return self.real.revisions(name, before, limit)

    def audit(self, caller: str, method: str, records: Sequence[str], now: datetime) -> None:
        self.real.audit(caller, method, records, now)

    # the state roots are signed over today's records: proofs of the latest version come from
    # the node's own derived state, so an answer showing an older version lets the client see it
    def current_entries(self, member: str) -> list[state.CurrentEntry]:
        return self.real.current_entries(member)

    def holds_withheld(self, member: str) -> bool:
        return self.real.holds_withheld(member)


@dataclass
class _Log:
    """One member's parsed entries, by name, as of the (size, withheld count) they were read at:
    a peer's fill of withheld entries changes what is known without changing the size."""

    key: tuple[int, int]
    by_name: dict[str, list[tuple[effective.Version, LogEntry]]]
    dated: bool  # some version carries an effective period


class _View(Directory):
    """A Directory over one instant's in-memory store. Its SQLite connection is shared by the
    serving threads (StaticPool), so answers over one view are made one at a time; as-of
    questions are rare next to current ones, which never wait here."""

    def __init__(self, store: Store, federation: Callable[[], Federation], clock: Callable[[], datetime]) -> None:
        super().__init__(store, federation, clock)
        self._serial = threading.Lock()

    def get(self, name: str, collection: str, caller: Caller = ANONYMOUS) -> tuple[Loaded, ds.Provenance]:
        with self._serial:
            return super().get(name, collection, caller)

    def list_records(
        self, kind: str, parent: str, size: int, token: str, filter_text: str, caller: Caller = ANONYMOUS,
    ) -> tuple[list[Loaded], str, list[ds.Provenance]]:
        with self._serial:
            return super().list_records(kind, parent, size, token, filter_text, caller)

    def search(
        self, query: str, member: str, size: int, token: str, caller: Caller = ANONYMOUS
    ) -> tuple[list[Loaded], str, list[ds.Provenance]]:
        with self._serial:
            return super().search(query, member, size, token, caller)

    def find_counterpart(
        self, req: ds.FindCounterpartRequest, caller: Caller = ANONYMOUS,
        generations: Mapping[str, Generation | None] | None = None,
    ) -> ds.FindCounterpartResponse:
        with self._serial:
            return super().find_counterpart(req, caller, generations)


class AsOfViews:
    """Builds and caches as-of views of one node's store."""

    def __init__(self, store: Store, federation: Callable[[], Federation], clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self._federation = federation
        self.clock = clock
        self._logs: OrderedDict[str, _Log] = OrderedDict()
        self._dated: dict[str, tuple[tuple[int, int], bool]] = {}  # member -> (key, dated)
        self._views: OrderedDict[tuple[object, ...], Directory] = OrderedDict()
        self._marks: tuple[object, list[datetime]] = ((), [])  # boundary instants, for the logs held
        self._lock = threading.Lock()

    def _log(self, member: str, key: tuple[int, int]) -> _Log:
        """The member's log parsed, by name, kept for ``MAX_LOGS`` members."""
        size, withheld = key
        with self._lock:
            cached = self._logs.get(member)
        if cached is not None and cached.key == key:
            return cached
        start = 1
        by_name: dict[str, list[tuple[effective.Version, LogEntry]]] = {}
        dated = False
        if cached is not None and cached.key[1] == withheld and cached.key[0] < size:  # appended: read the rest
            start = cached.key[0] + 1
            by_name = {name: list(versions) for name, versions in cached.by_name.items()}
            dated = cached.dated
        for row in self.store.log_rows(member, start, size):
            if row.withheld or not row.envelope:
                continue  # only its leaf hash is known here: no version to answer with
            # the envelope was verified when it was stored; parse it, do not trust a re-encoding
            entry = log_pb2.Entry.FromString(signing.parse_envelope(row.envelope).payload)
            e = LogEntry(member, row.seq, row.name, row.kind, row.envelope, row.leaf_hash, entry)
            version = effective.version_of(row.seq, e.publish_time, e.record)
            dated = dated or version.start_time is not None or version.end_time is not None
            by_name.setdefault(row.name, []).append((version, e))
        log = _Log(key, by_name, dated)
        with self._lock:
            self._logs[member] = log
            self._logs.move_to_end(member)
            while len(self._logs) > MAX_LOGS:
                self._logs.popitem(last=False)
            self._dated[member] = (key, dated)
        return log

    def _keys(self) -> dict[str, tuple[int, int]]:
        """Per member held: (checkpoint size, entries held withheld). Read once per answer,
        in one query (``Store.generations``: a count per member on the withheld index, not
        a GROUP BY over every entry)."""
        return {m: (g.size, g.withheld) for m, g in self.store.generations(None).items()}

    def dated(self, member: str, keys: dict[str, tuple[int, int]] | None = None) -> bool:
        """Whether any version of the member's records carries an effective period (else a
        current answer is the latest version of each name, and the fast path answers)."""
        key = (self._keys() if keys is None else keys).get(member)
        if key is None:
            return False
        with self._lock:
            known = self._dated.get(member)
        if known is not None and known[0] == key:
            return known[1]
        # a member without dated records (the usual case) keeps no parsed log: 5,000 parsed
        # entries are ~25 MB, and the fast path needs only this answer. Each entry is parsed
        # and dropped; at the first dated one, the whole log is read for the views.
        size, _ = key
        for row in self.store.log_rows(member, 1, size):
            if row.withheld or not row.envelope:
                continue
            entry = log_pb2.Entry.FromString(signing.parse_envelope(row.envelope).payload)
            e = LogEntry(member, row.seq, row.name, row.kind, row.envelope, row.leaf_hash, entry)
            version = effective.version_of(row.seq, e.publish_time, e.record)
            if version.start_time is not None or version.end_time is not None:
                return self._log(member, key).dated
        with self._lock:
            self._dated[member] = (key, False)
        return False

    def versions(
        self, name: str, member: str, keys: dict[str, tuple[int, int]] | None = None
    ) -> list[tuple[effective.Version, LogEntry]]:
        key = (self._keys() if keys is None else keys).get(member)
        return [] if key is None else list(self._log(member, key).by_name.get(name, []))

    def view(self, instant: Instant, held: dict[str, tuple[int, int]] | None = None) -> Directory:
        """A Directory answering as of the instant (cached while nothing it depends on changes);
        ``held``: the keys of this answer, when the caller has read them already."""
        now = self.clock()
        known = effective.known_by(instant.at, instant.reading, now)
        keys = tuple(sorted((self._keys() if held is None else held).items()))
        logs = {m: self._log(m, k) for m, k in keys}
        with self._lock:
            marks = self._marks[1] if self._marks[0] == keys else None
        if marks is None:
            marks = sorted({b for log in logs.values() for vs in log.by_name.values()
                            for b in effective.boundaries(v for v, _ in vs)})
            with self._lock:
                self._marks = (keys, marks)
        position = (bisect.bisect_right(marks, instant.at), bisect.bisect_right(marks, known))
        key: tuple[object, ...] = (keys, instant.reading, position)
        with self._lock:
            cached = self._views.get(key)
            if cached is not None:
                self._views.move_to_end(key)
                return cached
        chosen: list[LogEntry] = []
        for log in logs.values():
            for versions in log.by_name.values():
                picked = effective.select((v for v, _ in versions), instant.at, known)
                if picked is not None:
                    chosen.append(next(e for v, e in versions if v.seq == picked.seq))
        store = _ViewStore(self.store)
        store.load(chosen)
        directory = _View(store, self._federation, self.clock)
        with self._lock:
            self._views[key] = directory
            while len(self._views) > MAX_VIEWS:
                # not closed here: an answer may still be reading it; memory goes with the last reference
                self._views.popitem(last=False)
        return directory

    def find_counterpart(
        self, current: Directory, req: ds.FindCounterpartRequest, caller: Caller = ANONYMOUS
    ) -> ds.FindCounterpartResponse:
        return ds.FindCounterpartResponse.FromString(self.find_counterpart_bytes(current, req, caller))

    def find_counterpart_bytes(
        self, current: Directory, req: ds.FindCounterpartRequest, caller: Caller = ANONYMOUS
    ) -> bytes:
        """FindCounterpart as of the request's instant, or now (in effect) without one; the
        answer always says which. A current answer over a member with dated records reads
        the view of now, and shows each scheduled version next to the one in effect."""
        now = self.clock()
        if req.HasField("as_of"):
            instant = requested(req.as_of, now)
            resp = self.view(instant).find_counterpart(req, caller)
            resp.as_of.CopyFrom(instant.message())
            return resp.SerializeToString()
        instant = Instant(now, effective.IN_EFFECT)
        # one query: what the answer and the decision below depend on (memberindex)
        asked = [m for m in (req.requested_member, req.requesting_member) if m]
        found = self.store.lookup_generations(asked)
        generations = {m: found.get(m) for m in asked}
        member = generations.get(req.requested_member)
        if member is not None and self.dated(req.requested_member, {req.requested_member: (member.size, member.withheld)}):
            keys = self._keys()
            view = self.view(instant, keys)
            resp = view.find_counterpart(req, caller)
            self._add_pending(view, resp, caller, now, keys)
            resp.as_of.CopyFrom(instant.message())
            return resp.SerializeToString()
        return current.find_counterpart_bytes(req, caller, generations, instant.message())

    def _add_pending(
        self, view: Directory, resp: ds.FindCounterpartResponse, caller: Caller, now: datetime,
        keys: dict[str, tuple[int, int]],
    ) -> None:
        """For each record shown whose latest version takes effect later, that version's proof
        (against the same checkpoint) and a warning saying when the answer changes."""
        sizes = {p.member: p.checkpoint_size for p in resp.provenances}
        pending_proofs = []
        for proof in list(resp.proofs):
            member = proof.name.split("/")[1]
            versions = self.versions(proof.name, member, keys)
            shown = next((v for v, _ in versions if v.seq == proof.leaf_index + 1), None)
            if shown is not None and shown.end_time is not None and shown.end_time > now:
                resp.warnings.append(
                    f"{proof.name} is no longer in effect from {effective.format_instant(shown.end_time)}"
                )
            later = effective.pending([v for v, _ in versions], now)
            if later is None or later.seq == proof.leaf_index + 1 or later.seq > sizes.get(member, 0):
                continue
            entry = next(e for v, e in versions if v.seq == later.seq)
            if entry.record is not None and record_members_only(entry.record) and not caller.sees_members_only:
                continue  # a members-only version stays invisible to this caller
            snap = Snapshot(view, caller)
            if snap.checkpoint(member) is None:
                continue
            _, tree = snap.tree(member)
            if tree.size != sizes.get(member):
                continue  # published meanwhile: the next answer shows it
            pending = ds.RecordProof(
                name=proof.name, signed_entry=entry.envelope, leaf_index=later.seq - 1, tree_size=tree.size,
                inclusion_path=tree.inclusion_path(later.seq - 1),
            )
            latest = snap.state_proof(proof.name, member)
            if latest is not None:  # the scheduled version is the latest: proven like any other
                pending.state.CopyFrom(latest)
            pending_proofs.append(pending)
            resp.warnings.append(
                f"{proof.name} changes on {effective.format_instant(later.start)} "
                f"(published version @{later.seq} takes effect then)"
            )
        resp.proofs.extend(pending_proofs)


__all__: Sequence[str] = ["MAX_VIEWS", "AsOfViews", "Instant", "requested"]
