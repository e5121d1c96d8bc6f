"""The node's storage: one SQLAlchemy engine over SQLite (default) or PostgreSQL.

Guarantees (checked by tests/contract/test_storage_contract.py on both backends):
- ``append`` writes entries, their derived rows and the new checkpoint in one transaction,
  and only if the member's log still has the size the caller computed against; a failure
  leaves nothing of the batch behind.
- Envelopes are returned byte for byte as they were given.
- Derived rows of a name always reflect the latest entry of that name.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from counterpart.v1 import log_pb2
from counterpart_core import merkle, signing, state
from counterpart_core.errors import ConflictError, CounterpartError, VerificationError
from counterpart_core.index import (
    LEVEL_MUNICIPALITY,
    LEVEL_NATIONAL,
    LEVEL_POSTAL_CODE,
    LEVEL_SUBDIVISION,
    PLACE_FROM_COVERAGE,
    PLACE_SUBDIVISION,
    ROW_COLUMNS,
    Derived,
    Rows,
    Shaped,
    derive,
    derived_rows,
    shape_entries,
)
from counterpart_core.log import WITHHELD, LogCheckpoint, LogEntry
from counterpart_core.log import checkpoint_state as log_checkpoint_state
from counterpart_core.redaction import (
    Marker,
    deletion_restricted,
    envelope_members_only,
    record_members_only,
)
from directory_server.storage import pgnotify
from directory_server.storage.models import (
    DERIVED_TABLES,
    FRONTIER_STEP,
    SNAPSHOT_EVERY,
    SNAPSHOT_MIN_RECORDS,
    AccessGrantRow,
    AuditRow,
    Base,
    CheckpointRow,
    CompetenceIndexRow,
    CoverageIndexRow,
    EntryRow,
    EquivocationRow,
    FederationDocumentRow,
    LogFrontierRow,
    PeerMemberRow,
    PlaceIndexRow,
    RecordAttrRow,
    RecordRow,
    RejectionRow,
    SearchTermRow,
    StagedEntryRow,
    StateSnapshotRow,
)

_T = TypeVar("_T")

STATE_CACHE_MEMBERS = 16
"""Members whose state trees a Store keeps in memory (least recently used out): about
0.3 MB each at 5,000 records."""


@dataclass
class _StateCache:
    """A member's two state trees as its derived records make them at ``basis`` (the size
    and root of the checkpoint they were committed with)."""

    basis: tuple[int, bytes]
    everything: state.SortedLeafTree
    public: state.SortedLeafTree
    generation: tuple[int, int]  # (Store._epoch, Store._generations[member]) when read: stale after a fill or rebuild
    snapshot: int | None = None  # the size of the stored state snapshot they started from (None: read from the records)


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'node.sqlite3').resolve()}"


def _aware(dt: datetime) -> datetime:
    # SQLite returns naive datetimes; every stored time is UTC.
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _stored_time(value: datetime | str) -> datetime:
    """A time column read through the driver: SQLite gives the text SQLAlchemy stored
    (``2026-12-01 07:00:00.000000``, UTC), PostgreSQL a datetime."""
    return _aware(value if isinstance(value, datetime) else datetime.fromisoformat(value))


class HeldCheckpointRow(NamedTuple):
    """What ``Store.checkpoint_row`` reads of a member's row of ``checkpoints`` (the
    envelope is ``Store.checkpoint``'s)."""

    size: int
    root_hash: bytes
    issue_time: datetime
    expire_time: datetime
    frontier: bytes | None


def stage_id(started: float) -> str:
    """A new stage's name: the Unix time it starts at, as 10 hex digits (so names sort by it
    and ``drop_stages(started_before=...)`` can tell old stages from the ones under way),
    then 22 random ones; 32 characters, the column's width."""
    return _stage_prefix(started) + secrets.token_hex(11)


def _stage_prefix(started: float) -> str:
    return f"{max(0, int(started)):010x}"


_PUBLISHED = "counterpart.published"  # Session.info: a flush wrote a checkpoint or federation document


def _note_published(session: Session, _context: Any) -> None:
    if any(isinstance(o, (CheckpointRow, FederationDocumentRow)) for o in (*session.new, *session.dirty)):
        session.info[_PUBLISHED] = True


def _forget_published(session: Session) -> None:
    session.info.pop(_PUBLISHED, None)
    session.info.pop(_ANNOUNCED, None)


_ANNOUNCED = "counterpart.announced"  # Session.info: this transaction sent its NOTIFY (PostgreSQL)


class Store:
    """All persistent state of a node."""

    def __init__(self, url: str, *, engine_options: dict[str, Any] | None = None) -> None:
        self.url = url
        options: dict[str, Any] = {"future": True}
        if make_url(url).get_backend_name() == "sqlite":
            options["connect_args"] = {"timeout": 30, "check_same_thread": False}
        options.update(engine_options or {})
        self.engine: Engine = create_engine(url, **options)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        # ``_driver``'s single statements: on PostgreSQL in autocommit, one round trip each
        # instead of BEGIN, the statement and the pool's ROLLBACK (0.07 ms of CPU less a
        # statement); on SQLite a connection's autocommit switch costs more than it saves
        self._reads: Engine = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.engine.dialect.name == "postgresql" else self.engine
        )
        self._commit_watchers: list[Callable[[], None]] = []
        event.listen(self._session, "after_flush", _note_published)
        event.listen(self._session, "after_commit", self._committed)
        event.listen(self._session, "after_rollback", _forget_published)
        # on PostgreSQL, such a commit is also told to processes on other machines (``pgnotify``)
        self._token = secrets.token_hex(8)
        if self.engine.dialect.name == "postgresql":
            event.listen(self._session, "after_flush", self._announce)
        # Each member's state trees, kept up to date by the names each append changes, so a
        # new checkpoint's state roots are checked in O(change) (``_check_state``). Valid for
        # the derived records committed with the checkpoint ``basis`` names: another process
        # that appends moves the checkpoint and the trees are read again; ``fill`` and
        # ``rebuild_derived`` (which change derived records without a new checkpoint) drop
        # them. A tree is taken out while an append uses it, so two threads never share one.
        self._states: OrderedDict[str, _StateCache] = OrderedDict()
        self._generations: dict[str, int] = {}  # per member: fills since this Store opened
        self._epoch = 0  # rebuilds since this Store opened
        self._states_lock = threading.Lock()
        self._generation_reader: GenerationReader | None = None
        self.migrate()

    def watch_commits(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every commit, by this Store, that wrote a checkpoint or a
        federation document (what a serving node pushes to its peers), once per commit and
        after it (never for a rolled back transaction). A commit by another process is not
        seen here: ``directory_server.wake`` carries those."""
        self._commit_watchers.append(callback)

    def _committed(self, session: Session) -> None:
        session.info.pop(_ANNOUNCED, None)
        if session.info.pop(_PUBLISHED, False):
            self._call_commit_watchers()

    def _call_commit_watchers(self) -> None:
        for callback in list(self._commit_watchers):
            callback()

    def _announce(self, session: Session, _context: Any) -> None:
        if session.info.get(_PUBLISHED) and not session.info.get(_ANNOUNCED):
            session.info[_ANNOUNCED] = True
            pgnotify.announce(session.connection(), self._token)

    def follow_other_processes(self) -> pgnotify.Listener | None:
        """On PostgreSQL, start calling the ``watch_commits`` callbacks also after commits
        that Stores of other processes (on any machine) make to this database and schema;
        None on SQLite, where ``directory_server.wake`` reaches every process of the node.
        The caller stops the returned listener."""
        if self.engine.dialect.name != "postgresql":
            return None
        listener = pgnotify.Listener(self.engine, self._token, self._call_commit_watchers)
        listener.start()
        return listener

    def close(self) -> None:
        if self._generation_reader is not None:
            self._generation_reader.close()
        self.engine.dispose()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        cfg = Config()
        cfg.set_main_option(
            "script_location", str(resources.files("directory_server.storage") / "migrations")
        )
        with self.engine.begin() as conn:
            before = MigrationContext.configure(conn).get_current_revision()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            if before is not None and before < "0003":
                _flag_members_only(conn)  # in the migration's transaction: no window with wrong flags

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._session() as s, s.begin():
            yield s

    # --- federation documents ----------------------------------------------------------

    def federation_envelope(self) -> bytes | None:
        with self._session() as s:
            row = s.scalars(select(FederationDocumentRow).order_by(FederationDocumentRow.version.desc()).limit(1)).first()
            return row.envelope if row else None

    def federation_version(self) -> int:
        """Read for every push and pull a node handles (``Node.refresh_federation``): through the driver."""
        rows = self._driver(f"SELECT max(version) FROM {FederationDocumentRow.__tablename__}", ())
        return int(rows[0][0] or 0)

    def federation_chain(self, from_version: int = 1) -> list[bytes]:
        with self._session() as s:
            rows = s.scalars(
                select(FederationDocumentRow)
                .where(FederationDocumentRow.version >= from_version)
                .order_by(FederationDocumentRow.version)
            )
            return [r.envelope for r in rows]

    def put_federation(self, version: int, envelope: bytes, now: datetime) -> None:
        try:
            with self.transaction() as s:
                current = s.scalar(select(func.max(FederationDocumentRow.version)))
                if (current or 0) + 1 != version:
                    raise ConflictError(
                        f"federation version {version} does not follow stored version {current or 0}",
                        reason="VERSION_NOT_NEXT",
                    )
                s.add(FederationDocumentRow(version=version, envelope=envelope, accepted_time=now))
        except IntegrityError as e:
            raise ConflictError(f"federation version {version} is already stored", reason="VERSION_NOT_NEXT") from e

    # --- logs ----------------------------------------------------------------------------

    def log_size(self, member: str) -> int:
        with self._session() as s:
            return _log_size(s, member)

    def frontier(self, member: str) -> merkle.CompactRange:
        """The member's log tree at its checkpoint's size, as its right frontier (O(log n)
        hashes, no leaf read once stored): what a pull or a publish extends."""
        with self._session() as s:
            return _frontier(s, member)

    def consistency_proof(self, member: str, first: int, second: int) -> list[bytes]:
        """RFC 9162 ``PROOF(first, D[second])`` of the member's stored log, from the stored
        frontier nearest below ``first`` (``LogFrontierRow``) and the leaves after it: fewer
        than ``FRONTIER_STEP`` leaves before ``first``, then those of ``(first, second]``.
        The frontiers a log lacks (a range appended staged, a log stored before revision
        0006) are computed from its leaves the first time, and stored for the next proof.
        The caller checks ``0 < first <= second <=`` the size a verified checkpoint covers."""
        if first >= second:
            return []
        with self._session() as s:  # through the driver: every pull of a change asks for one
            found = _driver_rows(
                s, f"SELECT size, frontier FROM {LogFrontierRow.__tablename__} WHERE member = ? AND size <= ? "
                "ORDER BY size DESC LIMIT 1", (member, first),
            )
            tree = merkle.CompactRange.from_frontier(int(found[0][0]), bytes(found[0][1])) if found else merkle.CompactRange()
            start = tree.size
            hashes = _leaf_range(s, member, start, second)
        before, after = hashes[: first - start], hashes[first - start :]
        if len(before) >= FRONTIER_STEP:
            # steps skipped (a range appended staged, a log older than 0006): those up to
            # ``first`` stored now, once, never on the path of a change appended one by one;
            # a concurrent writer of the same rows (the same bytes) wins
            steps = _steps(member, tree, before)
            with contextlib.suppress(IntegrityError), self.transaction() as s:
                s.execute(_table(LogFrontierRow).insert(), steps)
        else:
            for h in before:
                tree.append(h)
        return merkle.consistency_proof_from(tree, after)

    def log_frontiers(self, member: str) -> dict[int, bytes]:
        """size -> the stored frontier of the member's log tree at that size (``verify``)."""
        with self._session() as s:
            q = select(LogFrontierRow.size, LogFrontierRow.frontier).where(LogFrontierRow.member == member)
            return {int(size): bytes(frontier) for size, frontier in s.execute(q)}

    def replace_log_frontiers(self, member: str, leaf_hashes: Sequence[bytes]) -> None:
        """Store the member's frontiers anew from its whole log's leaf hashes (``rebuild``)."""
        steps = _steps(member, merkle.CompactRange(), leaf_hashes)
        with self.transaction() as s:
            s.execute(delete(LogFrontierRow).where(LogFrontierRow.member == member))
            if steps:
                s.execute(_table(LogFrontierRow).insert(), steps)

    def members_with_logs(self) -> list[str]:
        with self._session() as s:
            return list(s.scalars(select(EntryRow.member).distinct().order_by(EntryRow.member)))

    def leaf_hashes(self, member: str, upto: int | None = None) -> list[bytes]:
        with self._session() as s:
            q = select(EntryRow.leaf_hash).where(EntryRow.member == member)
            if upto is not None:
                q = q.where(EntryRow.seq <= upto)
            return [bytes(h) for h in s.scalars(q.order_by(EntryRow.seq))]

    def revisions(self, name: str, before: int | None, limit: int) -> list[EntryRow]:
        """The entries of one record name (every version, deletions included), newest first,
        below ``before`` (a seq) when given."""
        with self._session() as s:
            q = select(EntryRow).where(EntryRow.name == name)
            if before is not None:
                q = q.where(EntryRow.seq < before)
            rows = list(s.scalars(q.order_by(EntryRow.seq.desc()).limit(limit)))
        for r in rows:
            r.publish_time = _aware(r.publish_time) if r.publish_time else None
        return rows

    def log_rows(self, member: str, start: int = 1, end: int | None = None) -> list[StoredEntry]:
        """Every entry of a member's log in ``start..end`` as stored, withheld ones included."""
        # through the driver: every range a node serves (GetEntries) reads its rows here
        sql = f"SELECT seq, kind, envelope, leaf_hash, restricted, name FROM {_ENTRIES} WHERE member = ? AND seq >= ?"
        params: list[Any] = [member, start]
        if end is not None:
            sql += " AND seq <= ?"
            params.append(end)
        return [
            StoredEntry(int(seq), kind, bytes(env), bytes(leaf), bool(restricted), name)
            for seq, kind, env, leaf, restricted, name in self._driver(sql + " ORDER BY seq", params)
        ]

    def withheld_hashes(self, member: str, upto: int | None = None) -> dict[int, bytes]:
        """seq -> leaf hash of each entry of the member this node holds withheld, in order
        (through the driver: a sync pass asks this of each member it synced). ``seq + 0``
        keeps the planner on the (member, kind) index, as ``_unindexed``."""
        sql = f"SELECT seq, leaf_hash FROM {_ENTRIES} WHERE member = ? AND kind = ?"
        params: list[Any] = [member, WITHHELD]
        if upto is not None:
            sql += " AND seq + 0 <= ?"
            params.append(upto)
        rows = self._driver(sql + " ORDER BY seq + 0", params)
        return {int(seq): bytes(h) for seq, h in rows}

    def holds_withheld(self, member: str) -> bool:
        """Does this node hold some entry of the member withheld (its leaf hash only)?"""
        with self._session() as s:
            q = select(EntryRow.seq).where(EntryRow.member == member, EntryRow.kind == WITHHELD).limit(1)
            return s.scalar(q) is not None

    def withheld_counts(self) -> dict[str, int]:
        """Per member, how many of its entries this node holds withheld (members with none left out)."""
        with self._session() as s:
            rows = s.execute(
                select(EntryRow.member, func.count()).where(EntryRow.kind == WITHHELD).group_by(EntryRow.member)
            )
            return {m: int(n) for m, n in rows}

    def restricted_flags(self, member: str) -> dict[int, bool]:
        with self._session() as s:
            rows = s.execute(select(EntryRow.seq, EntryRow.restricted).where(EntryRow.member == member))
            return {int(seq): bool(flag) for seq, flag in rows}

    def set_restricted(self, member: str, flags: Mapping[int, bool]) -> int:
        """Give entries the flags ``flags`` (seq -> restricted); returns how many changed."""
        stored = self.restricted_flags(member)
        changed = {seq: flag for seq, flag in flags.items() if seq in stored and stored[seq] != flag}
        with self.transaction() as s:
            for flag in (True, False):
                seqs = [seq for seq, f in changed.items() if f is flag]
                for chunk in _chunks(seqs):
                    s.execute(
                        update(EntryRow).where(EntryRow.member == member, EntryRow.seq.in_(chunk)).values(restricted=flag)
                    )
        return len(changed)

    def envelopes(self, member: str, start: int = 1, end: int | None = None) -> list[tuple[int, bytes]]:
        """(seq, envelope) for start <= seq <= end, in order (b"" for a withheld entry)."""
        with self._session() as s:
            q = select(EntryRow.seq, EntryRow.envelope).where(EntryRow.member == member, EntryRow.seq >= start)
            if end is not None:
                q = q.where(EntryRow.seq <= end)
            return [(int(seq), bytes(env)) for seq, env in s.execute(q.order_by(EntryRow.seq))]

    def envelope(self, member: str, seq: int) -> bytes | None:
        with self._session() as s:
            env = s.scalar(select(EntryRow.envelope).where(EntryRow.member == member, EntryRow.seq == seq))
            return bytes(env) if env is not None else None

    def envelopes_at(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
        """Envelopes of the given (member, seq) positions, in one query."""
        if not keys:
            return {}
        out: dict[tuple[str, int], bytes] = {}
        # member = ? AND seq IN (...) per member: SQLite plans a row-value IN as a scan. Driver
        # SQL: every answer not kept runs it, and the expression layer cost ten times the query
        for chunk in _chunks(sorted(set(keys))):
            by_member: dict[str, list[int]] = {}
            for member, seq in chunk:
                by_member.setdefault(member, []).append(seq)
            where = " OR ".join(f"(member = ? AND seq IN ({_marks(seqs)}))" for seqs in by_member.values())
            params = [p for m, seqs in by_member.items() for p in (m, *seqs)]
            sql = f"SELECT member, seq, envelope FROM {EntryRow.__tablename__} WHERE {where}"
            out.update({(m, int(seq)): bytes(env) for m, seq, env in self._driver(sql, params)})
        return out

    def checkpoint(self, member: str) -> bytes | None:
        rows = self._driver(f"SELECT envelope FROM {_CHECKPOINTS} WHERE member = ?", (member,))
        return bytes(rows[0][0]) if rows else None

    def checkpoints(self) -> dict[str, bytes]:
        return {m: bytes(e) for m, e in self._driver(f"SELECT member, envelope FROM {_CHECKPOINTS}", ())}

    def checkpoint_size(self, member: str) -> int | None:
        """The size of the member's checkpoint this node holds (None: none held)."""
        rows = self._driver(f"SELECT size FROM {_CHECKPOINTS} WHERE member = ?", (member,))
        return int(rows[0][0]) if rows else None

    def append(
        self, member: str, expected_size: int, entries: Sequence[LogEntry], checkpoint: LogCheckpoint,
        *, ambiguous_restricted: bool = True,
    ) -> None:
        """Append verified entries and their checkpoint atomically.

        Each entry is stored with its ``restricted`` flag (``domain.redaction``), a withheld
        one as its leaf hash alone (kind "withheld", no name, envelope or publish time). A
        deletion whose previous entry a withheld entry may hide gets ``ambiguous_restricted``.

        Raises ConflictError, storing nothing, when the log is no longer ``expected_size``
        long, when the entries do not continue it without gaps, or when the checkpoint
        does not cover exactly the new size.
        """
        new_size = expected_size + len(entries)
        if checkpoint.size != new_size or checkpoint.member != member:
            raise ConflictError(
                f"{member}: checkpoint covers {checkpoint.size} entries, the batch ends at {new_size}",
                reason="CHECKPOINT_SIZE_MISMATCH",
            )
        for i, e in enumerate(entries):
            if e.member != member or e.seq != expected_size + 1 + i:
                raise ConflictError(f"{member}: entry seq {e.seq} does not continue the log", reason="SEQ_GAP")
        try:
            with self.transaction() as s:
                _check_log_size(s, member, expected_size)
                head = _checkpoint_head(s, member)
                tree = _frontier(s, member, head)
                if tree.size != expected_size:  # a checkpoint that does not cover the log: never written so
                    tree = merkle.CompactRange.from_leaf_hashes(_leaf_hashes(s, member, expected_size))
                steps = _steps(member, tree, [e.leaf_hash for e in entries])
                if tree.root() != checkpoint.root_hash:
                    raise ConflictError(
                        f"{member}: the checkpoint's root is not that of the stored tree extended by the batch "
                        "(a caller's bug, or a stored frontier `counterpart-node verify` reports)",
                        reason="FRONTIER_MISMATCH",
                    )
                trees = self._take_state(s, member, head)
                if entries:
                    marker = self._marker(s, member, {e.name for e in entries if not e.withheld}, expected_size)
                    s.execute(
                        _table(EntryRow).insert(),
                        [
                            {
                                "member": member, "seq": e.seq, "name": e.name, "kind": e.kind,
                                "envelope": e.envelope, "leaf_hash": e.leaf_hash,
                                "publish_time": None if e.withheld else e.publish_time,
                                "restricted": marker.mark_entry(e, ambiguous_restricted),
                            }
                            for e in entries
                        ],
                    )
                # only a name's last entry shapes its state; a withheld one has no name or state
                latest = {e.name: e for e in entries if not e.withheld}
                self._follow(s, trees, list(latest.values()))
                if steps:
                    # a step a proof already computed from the leaves (a log stored before
                    # 0006) is written again here: the same bytes, so the old row goes
                    s.execute(delete(LogFrontierRow).where(
                        LogFrontierRow.member == member, LogFrontierRow.size > expected_size
                    ))
                    s.execute(_table(LogFrontierRow).insert(), steps)
                self._seal(s, checkpoint, trees, tree.frontier, held=head is not None)
        except IntegrityError as e:
            raise ConflictError(f"{member}: a concurrent append won the race", reason="CONCURRENT_APPEND") from e
        trees.basis = (checkpoint.size, checkpoint.root_hash)
        self._give_state(member, trees)

    def _follow(
        self, s: Session, trees: _StateCache, last: Sequence[LogEntry], derived: Sequence[Derived | None] | None = None
    ) -> None:
        """Derived rows and state trees of the names of ``last``, each its name's last entry
        (``derived``: their derived records, if made already)."""
        derived = [derive(e) for e in last] if derived is None else derived
        self._replace_derived(s, [e.name for e in last], derived)
        for e, d in zip(last, derived, strict=True):
            _update_trees(trees, e, d)

    def _seal(
        self, s: Session, checkpoint: LogCheckpoint, trees: _StateCache, frontier: bytes, *, held: bool | None = None,
        snapshot: bool = True,
    ) -> None:
        """The end of an append's transaction: the state roots checked, the checkpoint stored
        (``held``: whether the member has a checkpoint row, if the caller read it), and the
        state snapshot when one is due, unless ``snapshot`` is False: then the next append
        writes it."""
        s.flush()
        self._check_state(s, checkpoint, trees)
        self._put_checkpoint(s, checkpoint, frontier, held)
        due = trees.snapshot is None or checkpoint.size - trees.snapshot >= SNAPSHOT_EVERY
        if snapshot and due and trees.everything.size >= SNAPSHOT_MIN_RECORDS:
            _put_snapshot(s, checkpoint.member, checkpoint.size, trees)
            trees.snapshot = checkpoint.size

    def _take_state(self, s: Session, member: str, head: _Head | None | bool = False) -> _StateCache:
        """The member's state trees as of the checkpoint stored now (read in ``s``, or given
        as ``head``, ``_checkpoint_head`` read in ``s``), taken out of the cache (read from
        the derived records when not there, or not of that checkpoint); ``_give_state`` puts
        them back once what changed them is committed."""
        row = _checkpoint_head(s, member) if head is False else head
        basis = (row.size, row.root_hash) if isinstance(row, _Head) else (0, b"")
        with self._states_lock:
            cached = self._states.pop(member, None)
            generation = (self._epoch, self._generations.get(member, 0))
        if cached is not None and cached.basis == basis:
            return cached
        snapshot = _from_snapshot(s, member, basis[0])
        if snapshot is not None:
            everything, public, since = snapshot
            return _StateCache(basis, everything, public, generation, since)
        everything, public = state.state_trees(self._current(s, member))
        return _StateCache(basis, everything, public, generation)

    def _give_state(self, member: str, trees: _StateCache) -> None:
        with self._states_lock:
            if trees.generation != (self._epoch, self._generations.get(member, 0)):
                return  # a fill or a rebuild changed the derived records meanwhile
            self._states[member] = trees
            self._states.move_to_end(member)
            while len(self._states) > STATE_CACHE_MEMBERS:
                self._states.popitem(last=False)

    def _drop_state(self, member: str | None = None) -> None:
        with self._states_lock:
            if member is None:
                self._states.clear()
                self._epoch += 1
            else:
                self._states.pop(member, None)
                self._generations[member] = self._generations.get(member, 0) + 1

    def state_roots_after(self, member: str, changes: Sequence[state.CurrentEntry]) -> state.StateRoots:
        """The roots of the member's state trees once ``changes`` (each name's new latest
        entry) are applied to its current records: O(change) with the trees cached."""
        everything: dict[bytes, bytes | None] = {}
        public: dict[bytes, bytes | None] = {}
        for c in changes:
            key = c.name.encode()
            leaf = None if c.deleted else state.StateLeaf(c.name, c.seq, c.entry_hash).hash()
            everything[key] = leaf
            public[key] = None if c.members_only else leaf
        with self._session() as s:
            trees = self._take_state(s, member)
        try:
            size, root = trees.everything.root_after(everything)
            public_size, public_root = trees.public.root_after(public)
        finally:
            self._give_state(member, trees)
        return state.StateRoots(root, size, public_root, public_size)

    # --- long ranges: staged, then moved into the log in one transaction --------------------

    def stage(self, stage: str, entries: Sequence[LogEntry]) -> None:
        """Keep entries of a range being pulled in the staging table (never served), so the
        pull holds none of them in memory; ``append_staged`` moves them into the log."""
        if not entries:
            return
        with self.transaction() as s:
            _driver_insert(s, StagedEntryRow, _STAGED_COLUMNS, [
                (stage, e.seq, e.member, e.name, e.kind, e.envelope, e.leaf_hash,
                 None if e.withheld else e.publish_time, e.withheld or record_members_only(e.record))
                for e in entries
            ])

    def drop_stages(self, stage: str | None = None, *, started_before: float | None = None) -> None:
        """Forget one stage; or every one started before ``started_before`` (a Unix time; the
        stages of a process killed mid-sync, while other serving processes of the node may be
        pulling); or every one (those of a node killed mid-sync, when the node is the only
        process over its store). The sync engine starts with this; a pull's cursor, the
        verified tree size, is where it resumes."""
        with self.transaction() as s:
            q = delete(StagedEntryRow)
            if stage is not None:
                q = q.where(StagedEntryRow.stage == stage)
            elif started_before is not None:
                q = q.where(StagedEntryRow.stage < _stage_prefix(started_before))
            s.execute(q)

    def append_staged(
        self, stage: str, member: str, expected_size: int, latest: Mapping[str, int], tree: merkle.CompactRange,
        checkpoint: LogCheckpoint, *, ambiguous_restricted: bool = True,
        derive_many: Callable[[str, Sequence[tuple[int, bytes]]], Callable[[], list[Shaped | None]]] | None = None,
    ) -> None:
        """``append`` for a range staged by ``stage`` (seq expected_size+1 .. checkpoint.size),
        verified whole by the caller: the tree it recomputed (``tree``, whose root the
        checkpoint signs) and each name's last entry in it (``latest``, withheld ones left
        out). In one transaction: the staged rows move into the log, each deletion gets its
        flag (``redaction.Marker`` over the names the range deletes), the derived rows and
        state trees of the names in ``latest`` follow their last entries (read back in
        chunks, so memory stays bounded), the state roots are checked, and the checkpoint is
        stored with the tree's frontier. Raises ConflictError, storing nothing, as ``append``."""
        new_size = checkpoint.size
        if checkpoint.member != member or tree.size != new_size or tree.root() != checkpoint.root_hash:
            raise ConflictError(
                f"{member}: the staged range's tree is not the checkpoint's", reason="CHECKPOINT_SIZE_MISMATCH"
            )
        staged = _table(StagedEntryRow)
        in_stage = (staged.c.stage == stage,)
        try:
            with self.transaction() as s:
                _check_log_size(s, member, expected_size)
                count, first, last = s.execute(
                    select(func.count(), func.min(staged.c.seq), func.max(staged.c.seq)).where(*in_stage)
                ).one()
                if count != new_size - expected_size or (count and (first, last) != (expected_size + 1, new_size)):
                    raise ConflictError(f"{member}: the stage does not hold the range", reason="SEQ_GAP")
                trees = self._take_state(s, member)
                entries = _table(EntryRow)
                s.execute(entries.insert().from_select(
                    ["member", "seq", "name", "kind", "envelope", "leaf_hash", "publish_time", "restricted"],
                    select(staged.c.member, staged.c.seq, staged.c.name, staged.c.kind, staged.c.envelope,
                           staged.c.leaf_hash, staged.c.publish_time, staged.c.members_only).where(*in_stage),
                ))
                self._mark_staged_deletions(s, stage, member, expected_size, ambiguous_restricted)
                # each name's last entry, in chunks (bounded memory), its derived rows made by
                # ``derive_many`` (worker processes) one chunk ahead of the rows written here
                def start(chunk: Sequence[str]) -> tuple[list[tuple[int, str, bytes]], Callable[[], list[Shaped | None]]]:
                    rows = s.execute(
                        select(staged.c.seq, staged.c.name, staged.c.leaf_hash, staged.c.envelope).where(
                            *in_stage, staged.c.seq.in_([latest[n] for n in chunk])
                        )
                    ).all()
                    items = [(int(seq), bytes(envelope)) for seq, _, _, envelope in rows]
                    if derive_many is not None:
                        shaped = derive_many(member, items)
                    else:
                        done = shape_entries(member, items)
                        shaped = lambda: done
                    return [(int(seq), name, bytes(leaf)) for seq, name, leaf, _ in rows], shaped

                chunks = _chunks(sorted(latest), 1000)
                ahead = start(chunks[0]) if chunks else None
                for i in range(len(chunks)):
                    assert ahead is not None
                    last, result = ahead
                    ahead = start(chunks[i + 1]) if i + 1 < len(chunks) else None
                    shaped = result()
                    _drop_derived(s, [name for _, name, _ in last])
                    _insert_derived(s, [rows for _, rows in filter(None, shaped)])
                    for (seq, name, leaf), got in zip(last, shaped, strict=True):
                        _update_tree(trees, name, seq, leaf, None if got is None else got[0])
                # no snapshot here: serializing the trees at the end of a long range added
                # ~75 MiB to the peak of a full sync (bench/README.md); the next append writes it
                self._seal(s, checkpoint, trees, tree.frontier, snapshot=False)
        except IntegrityError as e:
            raise ConflictError(f"{member}: a concurrent append won the race", reason="CONCURRENT_APPEND") from e
        trees.basis = (checkpoint.size, checkpoint.root_hash)
        self._give_state(member, trees)
        self.drop_stages(stage)

    def _mark_staged_deletions(self, s: Session, stage: str, member: str, upto: int, ambiguous: bool) -> None:
        """The flags of the deletions of a staged range, now in the log (stored as not
        members-only): a Marker walks, in order, the range's entries of the names it deletes
        and its withheld ones (all a deletion's flag depends on)."""
        staged = _table(StagedEntryRow)
        deleted = select(staged.c.name).where(staged.c.stage == stage, staged.c.kind == "deletion")
        names = set(s.scalars(deleted.distinct()))
        if not names:
            return
        marker = self._marker(s, member, names, upto)
        flagged: list[int] = []
        rows = s.execute(
            select(staged.c.seq, staged.c.name, staged.c.kind, staged.c.members_only)
            .where(staged.c.stage == stage, or_(staged.c.name.in_(deleted), staged.c.kind == WITHHELD))
            .order_by(staged.c.seq)
        )
        for seq, name, kind, members_only in rows:
            flag = marker.mark(int(seq), name, kind, bool(members_only), ambiguous)
            if kind == "deletion" and flag:
                flagged.append(int(seq))
        for chunk in _chunks(flagged):
            s.execute(update(EntryRow).where(EntryRow.member == member, EntryRow.seq.in_(chunk)).values(restricted=True))

    @staticmethod
    def _marker(s: Session, member: str, names: set[str], upto: int) -> Marker:
        """A Marker that continues the member's log after ``upto``, knowing the names given."""
        history: dict[str, tuple[int, bool]] = {}
        if upto == 0:
            return Marker(history)
        # through the driver, with the unindexed forms of ``_unindexed`` (``member || ''``,
        # ``seq + 0``): a one-entry pull runs these three
        for chunk in _chunks(sorted(names)):
            # each name's latest entry only (a record with many versions is one row read), found
            # through the name index, then read by its key
            marks = ", ".join("?" * len(chunk))
            last = [int(seq) for (seq,) in _driver_rows(
                s, f"SELECT max(seq) FROM {_ENTRIES} WHERE (member || '') = ? AND name IN ({marks}) AND seq <= ?"
                " GROUP BY name", (member, *chunk, upto),
            )]
            if not last:
                continue
            marks = ", ".join("?" * len(last))
            rows = _driver_rows(
                s, f"SELECT seq, name, restricted FROM {_ENTRIES} WHERE member = ? AND seq IN ({marks})", (member, *last)
            )
            for seq, name, flag in rows:
                if name not in history or seq > history[name][0]:
                    history[name] = (int(seq), bool(flag))
        last_withheld = _driver_rows(
            s, f"SELECT max(seq + 0) FROM {_ENTRIES} WHERE member = ? AND kind = ? AND seq + 0 <= ?", (member, WITHHELD, upto)
        )[0][0]
        return Marker(history, int(last_withheld or 0))

    def fill(self, member: str, entries: Sequence[LogEntry], *, ambiguous_restricted: bool = True) -> int:
        """Replace withheld entries by the same entries whole, in one transaction: each must
        be verified by the caller (signature, member, seq) and have exactly the leaf hash
        held, which is checked again here. Flags are recomputed for them and for every
        later deletion whose previous entry they may have been (``ambiguous_restricted`` for
        a filled deletion still ambiguous; any other keeps its flag when still ambiguous);
        derived state follows for each name whose latest entry a filled one now is.

        Raises ConflictError, changing nothing, when a position is no longer withheld here
        (another peer's fill came first) or holds another leaf hash.
        """
        ordered = sorted(entries, key=lambda e: e.seq)
        if not ordered:
            return 0
        with self.transaction() as s:
            rows: dict[int, EntryRow] = {}
            for seqs in _chunks([e.seq for e in ordered]):
                rows.update(
                    (int(r.seq), r)
                    for r in s.scalars(select(EntryRow).where(EntryRow.member == member, EntryRow.seq.in_(seqs)))
                )
            s.execute(delete(StateSnapshotRow).where(StateSnapshotRow.member == member))
            for e in ordered:
                row = rows.get(e.seq)
                if e.member != member or e.withheld or row is None or row.kind != WITHHELD or bytes(row.leaf_hash) != e.leaf_hash:
                    raise ConflictError(
                        f"{member} seq {e.seq}: not withheld here with that leaf hash (any more)", reason="FILL_CONFLICT"
                    )
                row.kind, row.name, row.envelope, row.publish_time = e.kind, e.name, e.envelope, e.publish_time
                row.restricted = record_members_only(e.record)
            s.flush()
            filled_deletions = {e.seq for e in ordered if e.kind == "deletion"}
            self._remark_deletions(s, member, ordered[0].seq, filled_deletions, ambiguous_restricted)
            latest: dict[str, int] = {}
            for chunk in _chunks(sorted({e.name for e in ordered})):
                for name, seq in s.execute(
                    select(EntryRow.name, func.max(EntryRow.seq))
                    .where(EntryRow.member == member, EntryRow.name.in_(chunk))
                    .group_by(EntryRow.name)
                ):
                    latest[name] = int(seq)
            current = {e.name: e for e in ordered if latest.get(e.name) == e.seq}
            self._replace_derived(s, list(current), [derive(e) for e in current.values()])
        self._drop_state(member)  # derived records changed under the same checkpoint
        return len(ordered)

    @staticmethod
    def _remark_deletions(s: Session, member: str, from_seq: int, filled: set[int], ambiguous: bool) -> None:
        """Recompute the flag of each deletion from ``from_seq`` on, now that entries before
        it may have become known (see ``fill``)."""
        deletions = s.execute(
            select(EntryRow.seq, EntryRow.name, EntryRow.restricted)
            .where(EntryRow.member == member, EntryRow.kind == "deletion", EntryRow.seq >= from_seq)
            .order_by(EntryRow.seq)
        ).all()
        if not deletions:
            return
        versions: dict[str, list[tuple[int, bool]]] = {}
        for chunk in _chunks(sorted({name for _, name, _ in deletions})):
            for seq, name, flag in s.execute(
                select(EntryRow.seq, EntryRow.name, EntryRow.restricted)
                .where(EntryRow.member == member, EntryRow.name.in_(chunk))
                .order_by(EntryRow.seq)
            ):
                versions.setdefault(name, []).append((int(seq), bool(flag)))
        withheld = [
            int(seq) for seq in s.scalars(
                select(EntryRow.seq).where(EntryRow.member == member, EntryRow.kind == WITHHELD)
                .order_by(_unindexed(EntryRow.seq))
            )
        ]
        flags: dict[int, bool] = {}
        for seq, name, stored in deletions:
            before = [v for v in versions[name] if v[0] < seq]
            prev_seq, prev_flag = (before[-1][0], flags.get(before[-1][0], before[-1][1])) if before else (0, None)
            hidden = bisect.bisect_left(withheld, seq) > bisect.bisect_right(withheld, prev_seq)
            flag = deletion_restricted(prev_flag, hidden, ambiguous if seq in filled else bool(stored))
            flags[seq] = flag
            if flag != bool(stored) or seq in filled:
                s.execute(update(EntryRow).where(EntryRow.member == member, EntryRow.seq == seq).values(restricted=flag))

    def put_checkpoint(self, checkpoint: LogCheckpoint) -> None:
        """Store a newer checkpoint of the same size (a heartbeat)."""
        with self.transaction() as s:
            size = _log_size(s, checkpoint.member)
            if size != checkpoint.size:
                raise ConflictError(
                    f"{checkpoint.member}: checkpoint covers {checkpoint.size} entries, the log holds {size}",
                    reason="CHECKPOINT_SIZE_MISMATCH",
                )
            head = _checkpoint_head(s, checkpoint.member)
            trees = self._take_state(s, checkpoint.member, head)
            self._check_state(s, checkpoint, trees)
            self._put_checkpoint(s, checkpoint, head.frontier if head else None, head is not None)
        trees.basis = (checkpoint.size, checkpoint.root_hash)
        self._give_state(checkpoint.member, trees)

    @staticmethod
    def _current(s: Session, member: str) -> list[state.CurrentEntry]:
        """The member's current records (derived state) with their entries' leaf hashes."""
        rows = s.execute(
            select(RecordRow.name, RecordRow.seq, RecordRow.public, EntryRow.leaf_hash)
            .join(EntryRow, and_(EntryRow.member == RecordRow.member, EntryRow.seq == RecordRow.seq))
            .where(RecordRow.member == member)
        )
        return [state.CurrentEntry(name, int(seq), bytes(leaf), False, not public) for name, seq, public, leaf in rows]

    def current_seqs(self, member: str, names: Sequence[str] | None = None) -> dict[str, int]:
        """name -> seq of the member's current records (derived state), all or those of ``names``."""
        with self._session() as s:
            q = select(RecordRow.name, RecordRow.seq).where(RecordRow.member == member)
            if names is None:
                return {name: int(seq) for name, seq in s.execute(q)}
            out: dict[str, int] = {}
            for chunk in _chunks(list(names)):
                out.update((name, int(seq)) for name, seq in s.execute(q.where(RecordRow.name.in_(chunk))))
            return out

    def current_names(self, member: str, collections: Sequence[str]) -> list[str]:
        """The member's current record names under ``members/<member>/<collection>/``, sorted,
        read as a range of the (member, name) index."""
        out: list[str] = []
        with self._session() as s:
            for c in collections:
                prefix = f"members/{member}/{c}/"
                out += s.scalars(
                    select(RecordRow.name)
                    .where(RecordRow.member == member, RecordRow.name >= prefix, RecordRow.name < prefix[:-1] + "0")
                    .order_by(RecordRow.name)
                )
        return sorted(out)

    def current_count(self, member: str) -> int:
        with self._session() as s:
            return int(s.scalar(select(func.count()).select_from(RecordRow).where(RecordRow.member == member)) or 0)

    def current_entries(self, member: str) -> list[state.CurrentEntry]:
        """Each current record of a member: name, seq, its entry's leaf hash, members-only or not."""
        with self._session() as s:
            return self._current(s, member)

    def put_frontier(self, member: str, tree: merkle.CompactRange) -> bool:
        """Store the frontier of the member's log tree, recomputed from its entries
        (``rebuild``), if the checkpoint held covers that tree; True when stored."""
        with self.transaction() as s:
            row = s.get(CheckpointRow, member)
            if row is None or row.size != tree.size or bytes(row.root_hash) != tree.root():
                return False
            row.frontier = tree.frontier
            return True

    def _check_state(self, s: Session, cp: LogCheckpoint, trees: _StateCache) -> None:
        """Refuse (VerificationError, rolling the transaction back) a checkpoint whose state
        roots differ from those of the derived state it would sit on: once per checkpoint,
        from the member's state trees, which follow the derived records name by name."""
        if cp.state is None:
            return
        withheld = _driver_rows(s, f"SELECT seq FROM {_ENTRIES} WHERE member = ? AND kind = ? LIMIT 1", (cp.member, WITHHELD))
        state.check_tree_roots(cp.member, cp.state, trees.everything, trees.public, whole_log=withheld is None)

    def _put_checkpoint(self, s: Session, cp: LogCheckpoint, frontier: bytes | None, held: bool | None = None) -> None:
        """Store the checkpoint (``held``: whether the member has a row, None: not known).
        An existing row is updated through the driver (the ORM read and update of it cost
        more than the rest of a one-entry pull's commit); the commit is then marked as one
        that published, as ``_note_published`` marks a flushed row."""
        values = {
            "size": cp.size, "root_hash": cp.root_hash, "issue_time": cp.issue_time,
            "expire_time": cp.expire_time, "envelope": cp.envelope, "frontier": frontier,
        }
        if held is None:
            held = _checkpoint_head(s, cp.member) is not None
        if not held:
            s.add(CheckpointRow(member=cp.member, **values))
            return
        conn = s.connection()
        table = _table(CheckpointRow)
        dialect = conn.dialect
        params = []
        for k, v in values.items():
            p = table.c[k].type.dialect_impl(dialect).bind_processor(dialect)
            params.append(p(v) if p is not None else v)
        assigned = ", ".join(f"{k} = ?" for k in values)
        _driver_rows(s, f"UPDATE {_CHECKPOINTS} SET {assigned} WHERE member = ?", (*params, cp.member), fetch=False)
        s.info[_PUBLISHED] = True
        if dialect.name == "postgresql":
            self._announce(s, None)

    # --- derived state -------------------------------------------------------------------

    @staticmethod
    def _replace_derived(s: Session, names: Sequence[str], derived: Sequence[Derived | None]) -> None:
        """Drop the derived rows of ``names`` (those that have any) and write ``derived``."""
        _drop_derived(s, names)
        _insert_derived(s, [derived_rows(d) for d in derived if d is not None])

    def rebuild_derived(self, entries_by_member: dict[str, Sequence[LogEntry]]) -> int:
        """Replace all derived rows by those of the latest entry of each name."""
        count = 0
        self._drop_state()
        with self.transaction() as s:
            for table in (*DERIVED_TABLES, StateSnapshotRow):
                s.execute(delete(table))
            for entries in entries_by_member.values():
                latest = {e.name: e for e in entries if not e.withheld}
                derived = [derive(e) for e in latest.values()]
                self._replace_derived(s, [], derived)
                count += sum(d is not None for d in derived)
        return count

    def record_row(self, name: str) -> RecordRow | None:
        with self._session() as s:
            return s.get(RecordRow, name)

    def record_keys(
        self, names: Sequence[str], envelopes: dict[tuple[str, int], bytes] | None = None
    ) -> dict[str, RecordKey]:
        """``record_rows`` as the plain values lookups read, through the driver (every answer
        not kept reads a few). Given ``envelopes``, the same statement also reads each
        record's entry into it, by (member, seq): a lookup that loads them next sends one
        statement instead of two."""
        out: dict[str, RecordKey] = {}
        for chunk in _chunks(sorted(set(names))):
            if envelopes is None:
                sql = f"SELECT name, member, kind, seq, public FROM {RecordRow.__tablename__} WHERE name IN ({_marks(chunk)})"
                rows = [(*row, None) for row in self._driver(sql, chunk)]
            else:
                sql = (
                    f"SELECT r.name, r.member, r.kind, r.seq, r.public, e.envelope FROM {RecordRow.__tablename__} r "
                    f"LEFT JOIN {_ENTRIES} e ON e.member = r.member AND e.seq = r.seq WHERE r.name IN ({_marks(chunk)})"
                )
                rows = self._driver(sql, chunk)
            for n, m, k, seq, pub, env in rows:
                out[n] = RecordKey(n, m, k, int(seq), bool(pub))
                if envelopes is not None and env is not None:
                    envelopes[(m, int(seq))] = bytes(env)
        return out

    def record_rows(self, names: Sequence[str]) -> dict[str, RecordRow]:
        if not names:
            return {}
        with self._session() as s:
            return {r.name: r for r in s.scalars(select(RecordRow).where(RecordRow.name.in_(list(names))))}

    def list_rows(
        self, kind: str, member: str | None, after: str, limit: int, public_only: bool,
        attrs: Sequence[tuple[str, str, str]] = (),
    ) -> list[RecordRow]:
        """Current records of a kind ordered by name, after a name, with attribute filters
        (attr, op, value) where op is '=' or '!='."""
        with self._session() as s:
            q = select(RecordRow).where(RecordRow.kind == kind, RecordRow.name > after)
            if member is not None:
                q = q.where(RecordRow.member == member)
            if public_only:
                q = q.where(RecordRow.public.is_(True))
            for attr, op, value in attrs:
                # correlated on the (name, attr) key: cheap per row, whatever the value's spread
                has = (
                    select(RecordAttrRow.name)
                    .where(RecordAttrRow.name == RecordRow.name, RecordAttrRow.attr == attr, RecordAttrRow.value == value)
                    .exists()
                )
                q = q.where(has if op == "=" else ~has)
            return list(s.scalars(q.order_by(RecordRow.name).limit(limit)))

    def count_records(self, member: str, public_only: bool = False) -> dict[str, int]:
        with self._session() as s:
            q = select(RecordRow.kind, func.count()).where(RecordRow.member == member)
            if public_only:
                q = q.where(RecordRow.public.is_(True))
            return {k: int(n) for k, n in s.execute(q.group_by(RecordRow.kind))}

    def search(self, folded: str, member: str | None, limit: int, offset: int) -> list[tuple[str, int]]:
        """Authorities whose folded terms contain ``folded``: (name, rank), best first.

        A match in a name ranks before a match in a place; within each, a term equal to
        the query before one that starts with it before one that contains it.
        """
        like = "%" + folded.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._session() as s:
            q = (
                select(SearchTermRow.name, SearchTermRow.term, SearchTermRow.weight)
                .join(RecordRow, RecordRow.name == SearchTermRow.name)
                .where(
                    SearchTermRow.term.like(like, escape="\\"),
                    RecordRow.kind == "authority",
                    RecordRow.public.is_(True),
                )
            )
            if member is not None:
                q = q.where(SearchTermRow.member == member)
            best: dict[str, int] = {}
            for name, term, weight in s.execute(q):
                rank = 3 * weight + (0 if term == folded else 1 if term.startswith(folded) else 2)
                best[name] = min(rank, best.get(name, 3))
        ordered = sorted(best.items(), key=lambda kv: (kv[1], kv[0]))
        return ordered[offset : offset + limit]

    def competences(self, member: str, request_type: str, names: Sequence[str] | None = None) -> list[CompetenceIndexRow]:
        """Competence rows of a member for a request type, optionally of some authorities only."""
        with self._session() as s:
            q = select(CompetenceIndexRow).where(
                CompetenceIndexRow.member == member, CompetenceIndexRow.request_type == request_type
            )
            if names is not None:
                q = q.where(CompetenceIndexRow.name.in_(list(names)))
            return list(s.scalars(q))

    def coverage(self, names: Sequence[str]) -> list[CoverageIndexRow]:
        if not names:
            return []
        with self._session() as s:
            return list(s.scalars(select(CoverageIndexRow).where(CoverageIndexRow.name.in_(list(names)))))

    def coverage_matches(
        self, member: str, subdivisions: Sequence[str] = (), municipalities: Sequence[str] = (),
        postal_code: str = "",
    ) -> list[CoverageIndexRow]:
        """Coverage rows of a member that include the place: national ones, and those of its
        subdivisions (the place's own and those it lies in), any of its (folded) municipality
        names, or its postal code."""
        conditions = [CoverageIndexRow.level == LEVEL_NATIONAL]
        if subdivisions:
            conditions.append(
                and_(CoverageIndexRow.level == LEVEL_SUBDIVISION, CoverageIndexRow.key.in_(list(subdivisions)))
            )
        if municipalities:
            conditions.append(
                and_(CoverageIndexRow.level == LEVEL_MUNICIPALITY, CoverageIndexRow.key.in_(list(municipalities)))
            )
        if postal_code:
            conditions.append(
                and_(
                    CoverageIndexRow.level == LEVEL_POSTAL_CODE,
                    func.length(CoverageIndexRow.key) == len(postal_code),
                    CoverageIndexRow.key <= postal_code,
                    CoverageIndexRow.last >= postal_code,
                )
            )
        with self._session() as s:
            return list(s.scalars(select(CoverageIndexRow).where(CoverageIndexRow.member == member, or_(*conditions))))

    def contacts_of(self, authorities: Sequence[str], public_only: bool = True) -> list[RecordRow]:
        """Current contacts that belong to any of the given authorities, ordered by name."""
        if not authorities:
            return []
        with self._session() as s:
            owned = select(RecordAttrRow.name).where(
                RecordAttrRow.attr == "authority", RecordAttrRow.value.in_(list(authorities))
            )
            q = select(RecordRow).where(RecordRow.kind == "contact", RecordRow.name.in_(owned))
            if public_only:
                q = q.where(RecordRow.public.is_(True))
            return list(s.scalars(q.order_by(RecordRow.name)))

    def places(self, member: str, folded: str) -> list[PlaceIndexRow]:
        with self._session() as s:
            return list(
                s.scalars(select(PlaceIndexRow).where(PlaceIndexRow.member == member, PlaceIndexRow.folded == folded))
            )

    def place_names(self, member: str) -> list[PlaceIndexRow]:
        """Every place name of a member (gazetteer and coverage), for typo-tolerant matching."""
        with self._session() as s:
            return list(s.scalars(select(PlaceIndexRow).where(PlaceIndexRow.member == member)))

    def place_rows_named(self, names: Sequence[str]) -> list[PlaceIndexRow]:
        """The name rows of the given gazetteer records."""
        if not names:
            return []
        with self._session() as s:
            return list(s.scalars(select(PlaceIndexRow).where(PlaceIndexRow.name.in_(list(names)))))

    def places_matching(self, folded: str, member: str | None) -> list[PlaceIndexRow]:
        """Gazetteer rows whose folded name equals ``folded`` (any member, or one)."""
        with self._session() as s:
            q = select(PlaceIndexRow).where(PlaceIndexRow.folded == folded, PlaceIndexRow.kind != 0)
            if member is not None:
                q = q.where(PlaceIndexRow.member == member)
            return list(s.scalars(q))

    # --- read-only queries of the lookup caches (directory_server/memberindex.py) ---------

    def generations(self, members: Sequence[str] | None) -> dict[str, Generation]:
        """Per member held, in one query: its checkpoint envelope and size, and how many of its
        entries this node holds withheld. Every commit that changes a member's derived state
        changes one of them (an append stores a new checkpoint; a fill lowers the withheld
        count), so caches keyed by it are invalidated by any commit, from any process.
        ``members`` None: every member held."""
        wanted = [] if members is None else sorted({m for m in members if m})
        if members is not None and not wanted:
            return {}
        sql, params = _generations_query(None if members is None else wanted)
        return _generations_of(self._driver(sql, params))

    def lookup_generations(self, members: Sequence[str]) -> dict[str, Generation]:
        """``generations(members)`` as of now, read the way every lookup reads them: without a
        query when the database says nothing was committed since the last read (SQLite), in
        one prepared round trip otherwise (``GenerationReader``)."""
        return self.generation_reader.read(members)

    @property
    def generation_reader(self) -> GenerationReader:
        """What ``lookup_generations`` reads through (made at its first use)."""
        with self._states_lock:
            if self._generation_reader is None:
                self._generation_reader = GenerationReader(self.engine)
            return self._generation_reader

    def _driver(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Rows of a read sent as is to the driver, ``?`` the placeholder. For the queries
        every lookup runs: building them through the expression language cost several
        times the query itself (bench/profile_find.py)."""
        if self.engine.dialect.paramstyle != "qmark":
            sql = sql.replace("?", "%s")
        with self._reads.connect() as conn:
            return list(conn.exec_driver_sql(sql, tuple(params)).fetchall())  # not row by row: half the time

    def coverage_rows(
        self, member: str, subdivisions: Sequence[str] = (), municipalities: Sequence[str] = (), postal_code: str = "",
    ) -> list[tuple[str, int, str, str]]:
        """``coverage_matches`` as (authority, level, key, last) tuples, through the driver."""
        conditions = [f"level = {LEVEL_NATIONAL}"]
        params: list[Any] = [member]
        for level, keys in ((LEVEL_SUBDIVISION, subdivisions), (LEVEL_MUNICIPALITY, municipalities)):
            if keys:
                conditions.append(f'(level = {level} AND "key" IN ({_marks(keys)}))')
                params += list(keys)
        if postal_code:
            conditions.append(f'(level = {LEVEL_POSTAL_CODE} AND length("key") = ? AND "key" <= ? AND "last" >= ?)')
            params += [len(postal_code), postal_code, postal_code]
        sql = (
            f'SELECT name, level, "key", "last" FROM {CoverageIndexRow.__tablename__} '
            f"WHERE member = ? AND ({' OR '.join(conditions)})"
        )
        return [(n, int(lv), k, last) for n, lv, k, last in self._driver(sql, params)]

    def competence_rows(self, member: str, request_type: str, names: Sequence[str]) -> list[tuple[str, int, str, int]]:
        """``competences`` of some authorities as (authority, role, offence, stage) tuples, through the driver."""
        out: list[tuple[str, int, str, int]] = []
        for chunk in _chunks(sorted(set(names))):
            sql = (
                f"SELECT name, role, offence, stage FROM {CompetenceIndexRow.__tablename__} "
                f"WHERE member = ? AND request_type = ? AND name IN ({_marks(chunk)})"
            )
            out += [(n, int(role), off, int(stage)) for n, role, off, stage in self._driver(sql, [member, request_type, *chunk])]
        return out

    def contact_keys(self, authorities: Sequence[str]) -> list[RecordKey]:
        """``contacts_of(..., public_only=False)`` through the driver, from the attribute index."""
        out: list[RecordKey] = []
        for chunk in _chunks(sorted(set(authorities))):
            sql = (
                f"SELECT r.name, r.member, r.kind, r.seq, r.public FROM {RecordAttrRow.__tablename__} a "
                f"JOIN {RecordRow.__tablename__} r ON r.name = a.name "
                f"WHERE a.attr = 'authority' AND a.value IN ({_marks(chunk)}) AND r.kind = 'contact'"
            )
            out += [RecordKey(n, m, k, int(seq), bool(pub)) for n, m, k, seq, pub in self._driver(sql, chunk)]
        return sorted(set(out))

    def treaties_in_force(self, member: str) -> list[RecordKey]:
        """The member's public treaties whose status is in force, through the driver."""
        sql = (
            f"SELECT r.name, r.member, r.kind, r.seq, r.public FROM {RecordRow.__tablename__} r "
            f"JOIN {RecordAttrRow.__tablename__} a ON a.name = r.name AND a.attr = 'status' "
            f"WHERE r.kind = 'treaty' AND r.member = ? AND r.public = ? AND a.value = 'TREATY_STATUS_IN_FORCE' "
            f"ORDER BY r.name"
        )
        return [RecordKey(n, m, k, int(seq), bool(pub)) for n, m, k, seq, pub in self._driver(sql, [member, True])]

    def search_page(self, folded: str, member: str | None, limit: int, offset: int) -> list[tuple[str, int]]:
        """``search``, ranked and cut to the page in the database: ``search`` reads every
        matching term into memory first (a common word over 1,000,000 entries took 170 MB for
        a moment, bench/README.md)."""
        if offset >= 2**31 or limit <= 0:  # a forged page token: past any result
            return []
        limit = min(limit, 2**31)
        like = "%" + folded.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rank = "3 * st.weight + CASE WHEN st.term = ? THEN 0 WHEN substr(st.term, 1, ?) = ? THEN 1 ELSE 2 END"
        sql = (
            f"SELECT st.name, MIN(CASE WHEN {rank} > 3 THEN 3 ELSE {rank} END) AS best "
            f"FROM {SearchTermRow.__tablename__} st JOIN {RecordRow.__tablename__} r ON r.name = st.name "
            "WHERE st.term LIKE ? ESCAPE '\\' AND r.kind = 'authority' AND r.public = ?"
            + (" AND st.member = ?" if member is not None else "")
            + " GROUP BY st.name ORDER BY best, st.name LIMIT ? OFFSET ?"
        )
        params: list[Any] = [folded, len(folded), folded] * 2 + [like, True]
        if member is not None:
            params.append(member)
        params += [limit, offset]
        return [(n, int(best)) for n, best in self._driver(sql, params)]

    def place_rows(self, member: str) -> list[tuple[str, str, str, str, int]]:
        """``place_names`` as (folded, display, record, subdivision, kind) tuples: no ORM objects
        for the thousands of names of a large member. In the order they were derived, as the
        two reads of a part of them below (``places.resolve`` takes the first of equals)."""
        sql = f"SELECT {_PLACE_COLUMNS} FROM {PlaceIndexRow.__tablename__} WHERE member = ? ORDER BY id"
        return _place_tuples(self._driver(sql, [member]))

    def folded_rows(self, member: str, folded: str) -> list[tuple[str, str, str, str, int]]:
        """Of ``place_rows``: the names folded to ``folded``, with every gazetteer name of the
        places among them (``places.names_needed``); one indexed statement."""
        t = PlaceIndexRow.__tablename__
        sql = (
            f"SELECT {_PLACE_COLUMNS} FROM {t} WHERE member = ? AND (folded = ? OR (kind <> ? AND name IN "
            f"(SELECT name FROM {t} WHERE member = ? AND folded = ? AND kind <> ?))) ORDER BY id"
        )
        params = [member, folded, PLACE_FROM_COVERAGE, member, folded, PLACE_FROM_COVERAGE]
        return _place_tuples(self._driver(sql, params))

    def subdivision_rows(self, member: str, code: str) -> list[tuple[str, str, str, str, int]]:
        """Of ``place_rows``: every gazetteer name of the member's subdivisions of that code
        (``places.names_needed``); one indexed statement."""
        t = PlaceIndexRow.__tablename__
        sql = (
            f"SELECT {_PLACE_COLUMNS} FROM {t} WHERE member = ? AND kind <> ? AND name IN "
            f"(SELECT name FROM {t} WHERE member = ? AND kind = ? AND subdivision = ?) ORDER BY id"
        )
        return _place_tuples(self._driver(sql, [member, PLACE_FROM_COVERAGE, member, PLACE_SUBDIVISION, code]))

    def has_subdivisions(self, member: str) -> bool:
        """Does the member's gazetteer name any subdivision (``places.names_needed``)?"""
        sql = f"SELECT 1 FROM {PlaceIndexRow.__tablename__} WHERE member = ? AND kind = ? LIMIT 1"
        return bool(self._driver(sql, [member, PLACE_SUBDIVISION]))

    # --- sync bookkeeping ----------------------------------------------------------------

    def peer_sizes(self, peer: str) -> dict[str, int]:
        """The largest checkpoint size the peer has shown, per member."""
        with self._session() as s:
            rows = s.execute(select(PeerMemberRow.member, PeerMemberRow.last_size).where(PeerMemberRow.peer == peer))
            return {m: int(n) for m, n in rows}

    def note_peer_checkpoints(self, peer: str, sizes: dict[str, int], success_time: datetime) -> None:
        """Remember, in one transaction per sync pass, the size a peer showed for each member
        and that syncing those members from it just succeeded. Only the peer's own sync
        thread writes its rows."""
        if not sizes:
            return
        with self.transaction() as s:
            conn = s.connection()
            dialect = conn.dialect
            bind = _table(PeerMemberRow).c.last_success_time.type.dialect_impl(dialect).bind_processor(dialect)
            when = bind(success_time) if bind is not None else success_time
            sql = (
                f"UPDATE {PeerMemberRow.__tablename__} SET last_size = CASE WHEN last_size < ? THEN ? ELSE last_size END,"
                " last_success_time = ? WHERE peer = ? AND member = ?"
            )
            if dialect.paramstyle != "qmark":
                sql = sql.replace("?", "%s")
            for member, size in sizes.items():
                # one statement per member a pass synced (the ORM read of the peer's rows and
                # its update cost more than the pull of one entry); a new pair is inserted
                if conn.exec_driver_sql(sql, (size, size, when, peer, member)).rowcount == 0:
                    s.add(PeerMemberRow(peer=peer, member=member, last_size=size, last_success_time=success_time))

    def peer_rows(self) -> list[PeerMemberRow]:
        with self._session() as s:
            rows = list(s.scalars(select(PeerMemberRow).order_by(PeerMemberRow.member, PeerMemberRow.peer)))
        for r in rows:
            r.last_success_time = _aware(r.last_success_time) if r.last_success_time else None
        return rows

    def count_rejection(self, peer: str, member: str, reason: str, message: str, now: datetime) -> None:
        with self.transaction() as s:
            row = s.get(RejectionRow, (peer, member, reason))
            if row is None:
                s.add(RejectionRow(peer=peer, member=member, reason=reason, count=1, last_time=now,
                                   last_message=message[:2000]))
            else:
                row.count += 1
                row.last_time = now
                row.last_message = message[:2000]

    def rejections(self) -> list[RejectionRow]:
        with self._session() as s:
            rows = list(s.scalars(select(RejectionRow).order_by(RejectionRow.member, RejectionRow.peer, RejectionRow.reason)))
        for r in rows:
            r.last_time = _aware(r.last_time)
        return rows

    def add_evidence(self, member: str, peer: str, held: bytes, offered: bytes, now: datetime) -> bool:
        """Keep two conflicting checkpoints of a member; False when already kept."""
        digest = hashlib.sha256(offered).hexdigest()
        try:
            with self.transaction() as s:
                if s.get(EquivocationRow, (member, digest)) is not None:
                    return False
                s.add(EquivocationRow(member=member, offered_sha256=digest, peer=peer, held_checkpoint=held,
                                      offered_checkpoint=offered, detected_time=now))
            return True
        except IntegrityError:  # another peer's thread stored the same evidence first
            return False

    def evidence(self) -> list[EquivocationRow]:
        with self._session() as s:
            rows = list(s.scalars(select(EquivocationRow).order_by(EquivocationRow.member, EquivocationRow.detected_time)))
        for r in rows:
            r.detected_time = _aware(r.detected_time)
        return rows

    def checkpoint_row(self, member: str) -> HeldCheckpointRow | None:
        """The member's checkpoint row, through the driver: every push a node receives and
        every proof or range it serves reads it (an ORM ``get`` cost about ten times the
        query, bench/README.md, propagation)."""
        rows = self._driver(
            f"SELECT size, root_hash, issue_time, expire_time, frontier FROM {_CHECKPOINTS} WHERE member = ?", (member,)
        )
        if not rows:
            return None
        size, root, issued, expires, frontier = rows[0]
        return HeldCheckpointRow(
            int(size), bytes(root), _stored_time(issued), _stored_time(expires), None if frontier is None else bytes(frontier)
        )

    # --- access: tokens this node issued, and the audit of members-only records served ----

    def add_grant(self, token_id: str, subject: str, role: str, issued: datetime, expires: datetime) -> None:
        with self.transaction() as s:
            s.add(AccessGrantRow(token_id=token_id, subject=subject, role=role, issue_time=issued, expire_time=expires))

    def grants(self) -> list[AccessGrantRow]:
        with self._session() as s:
            rows = list(s.scalars(select(AccessGrantRow).order_by(AccessGrantRow.issue_time, AccessGrantRow.token_id)))
        for r in rows:
            r.issue_time = _aware(r.issue_time)
            r.expire_time = _aware(r.expire_time)
            r.revoke_time = _aware(r.revoke_time) if r.revoke_time else None
        return rows

    def revoke_grants(self, selector: str, now: datetime) -> list[str]:
        """Revoke the unrevoked grants whose token id starts with ``selector`` (at least 8
        characters) or whose subject equals it; return the token ids revoked."""
        with self.transaction() as s:
            q = select(AccessGrantRow).where(AccessGrantRow.revoke_time.is_(None))
            rows = [
                r for r in s.scalars(q)
                if r.subject == selector or (len(selector) >= 8 and r.token_id.startswith(selector))
            ]
            for r in rows:
                r.revoke_time = now
            return [r.token_id for r in rows]

    def revoked(self, token_id: str) -> bool:
        with self._session() as s:
            return s.scalar(
                select(AccessGrantRow.token_id).where(
                    AccessGrantRow.token_id == token_id, AccessGrantRow.revoke_time.is_not(None)
                )
            ) is not None

    def audit(self, caller: str, method: str, records: Sequence[str], now: datetime) -> None:
        if not records:
            return
        with self.transaction() as s:
            s.execute(
                _table(AuditRow).insert(),
                [{"time": now, "caller": caller[:300], "method": method[:64], "record": r[:200]} for r in records],
            )

    def audit_rows(self, limit: int = 100) -> list[AuditRow]:
        with self._session() as s:
            rows = list(s.scalars(select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)))
        for r in rows:
            r.time = _aware(r.time)
        return rows

    def audit_count(self) -> int:
        with self._session() as s:
            return int(s.scalar(select(func.count()).select_from(AuditRow)) or 0)


class RecordKey(NamedTuple):
    """A current record's row as plain values (the fields of ``RecordRow`` lookups read)."""

    name: str
    member: str
    kind: str
    seq: int
    public: bool


@dataclass(frozen=True)
class Generation:
    """What a member's cached lookup state depends on (``Store.generations``)."""

    checkpoint: bytes
    size: int
    withheld: int


@dataclass(frozen=True)
class StoredEntry:
    """One entry of a log as stored: a withheld one has kind "withheld" and no envelope."""

    seq: int
    kind: str
    envelope: bytes
    leaf_hash: bytes
    restricted: bool
    name: str = ""  # "" for a withheld entry

    @property
    def withheld(self) -> bool:
        return self.kind == WITHHELD


def _flag_members_only(conn: Connection) -> None:
    """Data step of the upgrade to revision 0003: entries stored before it have no
    ``restricted`` flag; give members-only contacts, and deletions of them, theirs. Such a
    database holds no withheld entries, so nothing is ambiguous. Only contacts' envelopes
    need parsing (they were verified when stored)."""
    rows = conn.execute(
        select(EntryRow.member, EntryRow.seq, EntryRow.name, EntryRow.kind, EntryRow.envelope)
        .where(EntryRow.kind.in_(("contact", "deletion")))
        .order_by(EntryRow.member, EntryRow.seq)
    )
    flagged: dict[str, list[int]] = {}
    markers: dict[str, Marker] = {}
    for member, seq, name, kind, envelope in rows:
        marker = markers.setdefault(member, Marker())
        members_only = kind == "contact" and envelope_members_only(bytes(envelope))
        if marker.mark(int(seq), name, kind, members_only):
            flagged.setdefault(member, []).append(int(seq))
    for member, seqs in flagged.items():
        for chunk in _chunks(seqs):
            conn.execute(update(EntryRow).where(EntryRow.member == member, EntryRow.seq.in_(chunk)).values(restricted=True))


def _log_size(s: Session, member: str) -> int:
    """The size of a member's log: its last seq (seqs have no gaps; ``append`` sees to it),
    found through the primary key, where a count would read every row."""
    rows = _driver_rows(s, f"SELECT max(seq) FROM {_ENTRIES} WHERE member = ?", (member,))
    return int(rows[0][0] or 0)


_ENTRIES = EntryRow.__tablename__
_CHECKPOINTS = CheckpointRow.__tablename__


def _driver_rows(s: Session, sql: str, params: Sequence[Any], *, fetch: bool = True) -> list[Any]:
    """A small statement of the sync path sent as is to the driver in the session's
    transaction, ``?`` the placeholder (``Store._driver``, for one of its own): built through
    the expression language, each cost several times its execution (bench/README.md, pull2)."""
    conn = s.connection()
    if conn.dialect.paramstyle != "qmark":
        sql = sql.replace("?", "%s")
    result = conn.exec_driver_sql(sql, tuple(params))
    return list(result.fetchall()) if fetch else []


class _Head(NamedTuple):
    """What an append reads of the member's checkpoint row, once."""

    size: int
    frontier: bytes | None
    root_hash: bytes


def _checkpoint_head(s: Session, member: str) -> _Head | None:
    rows = _driver_rows(s, f"SELECT size, frontier, root_hash FROM {_CHECKPOINTS} WHERE member = ?", (member,))
    if not rows:
        return None
    size, frontier, root = rows[0]
    return _Head(int(size), None if frontier is None else bytes(frontier), bytes(root))


def _unindexed(column: Any) -> Any:
    """``column`` as an expression no index serves (``seq + 0``, ``member || ''``), so
    that SQLite, which keeps no statistics, looks a member's entries up by the selective
    index (name; member and kind) rather than walk the primary key over the member's whole
    log for a condition or an order on seq (0.1-0.2 s a query at 100,000 entries, measured)."""
    return column.op("+", precedence=100)(0) if column.type.python_type is int else column.concat("")


def _check_log_size(s: Session, member: str, expected: int) -> None:
    size = _log_size(s, member)
    if size != expected:
        raise ConflictError(f"{member}: log has {size} entries, expected {expected}", reason="CONCURRENT_APPEND")


def _leaf_hashes(s: Session, member: str, upto: int) -> list[bytes]:
    q = select(EntryRow.leaf_hash).where(EntryRow.member == member, EntryRow.seq <= upto)
    return [bytes(h) for h in s.scalars(q.order_by(EntryRow.seq))]


def _leaf_range(s: Session, member: str, after: int, upto: int) -> list[bytes]:
    """Leaf hashes of seqs ``after + 1 .. upto``, in order (a range of the primary key)."""
    sql = f"SELECT leaf_hash FROM {_ENTRIES} WHERE member = ? AND seq > ? AND seq <= ? ORDER BY seq"
    return [bytes(h) for (h,) in _driver_rows(s, sql, (member, after, upto))]


def _steps(member: str, tree: merkle.CompactRange, leaf_hashes: Iterable[bytes]) -> list[dict[str, Any]]:
    """Extend ``tree`` by ``leaf_hashes``: the ``LogFrontierRow`` values of each multiple of
    ``FRONTIER_STEP`` it passes."""
    steps: list[dict[str, Any]] = []
    for h in leaf_hashes:
        tree.append(h)
        if tree.size % FRONTIER_STEP == 0:
            steps.append({"member": member, "size": tree.size, "frontier": tree.frontier})
    return steps


def _frontier(s: Session, member: str, head: _Head | None | bool = False) -> merkle.CompactRange:
    """The member's log tree at its checkpoint's size (its row read in ``s``, or given as
    ``head``): from the stored frontier, or, for a checkpoint stored before revision 0005,
    from the leaf hashes (once: the next append stores it)."""
    row = _checkpoint_head(s, member) if head is False else head
    if not isinstance(row, _Head):
        return merkle.CompactRange()
    size, frontier, root = row
    if frontier is None:
        return merkle.CompactRange.from_leaf_hashes(_leaf_hashes(s, member, size))
    try:
        tree = merkle.CompactRange.from_frontier(size, bytes(frontier))
    except ValueError:
        tree = None
    if tree is None or tree.root() != root:
        # never extended: a publish would sign a root its entries do not make
        raise ConflictError(
            f"{member}: the stored frontier of the log tree is not that of its checkpoint's root; "
            "`counterpart-node verify` reports it and `counterpart-node rebuild` recomputes it",
            reason="FRONTIER_MISMATCH",
        )
    return tree


_STAGED_COLUMNS = ("stage", "seq", "member", "name", "kind", "envelope", "leaf_hash", "publish_time", "members_only")


def _drop_derived(s: Session, names: Sequence[str]) -> None:
    """Delete the derived rows of those of ``names`` that have any, through the driver (the
    expression language cost more than the deletes of a one-entry pull): derived rows are
    written and read as rows, never held as ORM objects across it."""
    existing: list[str] = []
    for chunk in _chunks(names):
        existing += [n for (n,) in _driver_rows(
            s, f"SELECT name FROM {RecordRow.__tablename__} WHERE name IN ({_marks(chunk)})", chunk
        )]
    for chunk in _chunks(existing):
        for table in DERIVED_TABLES:
            _driver_rows(s, f"DELETE FROM {table.__tablename__} WHERE name IN ({_marks(chunk)})", chunk, fetch=False)


def _insert_derived(s: Session, shaped: Sequence[Rows]) -> None:
    """Write derived records given as ``index.derived_rows`` shapes them."""
    for i, model in enumerate(DERIVED_TABLES):
        _driver_insert(s, model, ROW_COLUMNS[i], [row for rows in shaped for row in rows[i]])


def _driver_insert(s: Session, model: type[Base], columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Insert rows (tuples in the order of ``columns``) through the driver's executemany,
    each value through its column type's bind processor where it has one (times on SQLite):
    a bulk insert through SQLAlchemy costs several microseconds a row in Python, a sync
    writes about 17 rows an entry (bench/README.md)."""
    if not rows:
        return
    table = _table(model)
    conn = s.connection()
    dialect = conn.dialect
    processors = [
        (i, p) for i, c in enumerate(columns) if (p := table.c[c].type.dialect_impl(dialect).bind_processor(dialect)) is not None
    ]
    if processors:
        processed = []
        for row in rows:
            values = list(row)
            for i, p in processors:
                values[i] = p(values[i])
            processed.append(tuple(values))
        rows = processed
    quote = dialect.identifier_preparer.quote
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({', '.join([mark] * len(columns))})"
    )
    conn.exec_driver_sql(sql, list(rows))


def _update_trees(trees: _StateCache, e: LogEntry, d: Derived | None) -> None:
    """The state trees once ``e`` is its name's latest entry, ``d`` its derived record
    (None: a deletion), exactly as ``Store._current`` reads them back from the records."""
    _update_tree(trees, e.name, e.seq, e.leaf_hash, None if d is None else d.public)


def _update_tree(trees: _StateCache, name: str, seq: int, leaf_hash: bytes, public: bool | None) -> None:
    """``_update_trees`` for an entry given by its name, seq and leaf hash, and whether its
    record is public (None: a deletion)."""
    key = name.encode()
    if public is None:
        trees.everything.remove(key)
        trees.public.remove(key)
        return
    leaf = state.StateLeaf(name, seq, leaf_hash).hash()
    trees.everything.put(key, leaf)
    if public:
        trees.public.put(key, leaf)
    else:
        trees.public.remove(key)


SNAPSHOT_MMAP_BYTES = 1 << 30
"""How much of the SQLite file a state snapshot's read may map (SQLite's own limit applies)."""

SNAPSHOT_REPLAY_MAX = 4 * SNAPSHOT_EVERY
"""Entries after a state snapshot beyond which the trees are read from the records instead."""


def _put_snapshot(s: Session, member: str, size: int, trees: _StateCache) -> None:
    """Store the member's state trees as of the checkpoint of ``size`` being committed in ``s``."""
    s.execute(delete(StateSnapshotRow).where(StateSnapshotRow.member == member))
    s.execute(_table(StateSnapshotRow).insert(), [{
        "member": member, "size": size,
        "everything": trees.everything.to_bytes(), "public": trees.public.to_bytes(),
    }])


def _from_snapshot(
    s: Session, member: str, size: int
) -> tuple[state.SortedLeafTree, state.SortedLeafTree, int] | None:
    """The member's state trees at the held checkpoint of ``size`` leaves, from its stored
    snapshot and the names of the entries appended since (their current records read by
    name): O(change). Only when their roots are those the held checkpoint signs (the whole
    state's when the log is held whole), which the derived records matched when it was
    stored; else None, and the caller reads every current record."""
    query = select(StateSnapshotRow.size, StateSnapshotRow.everything, StateSnapshotRow.public).where(
        StateSnapshotRow.member == member
    )
    if s.get_bind().dialect.name == "sqlite":
        # Memory-mapped for this one read: the snapshot is about 200 bytes per record
        # (20 MB at 100,000), and reading its overflow pages a pread each took two thirds of
        # a new process's first publish (bench/README.md). The map ends with the read, so
        # serving processes' RSS holds no mapped database pages.
        connection = s.connection()
        connection.exec_driver_sql(f"PRAGMA mmap_size={SNAPSHOT_MMAP_BYTES}")
        try:
            row = connection.execute(query).first()
        finally:
            connection.exec_driver_sql("PRAGMA mmap_size=0")
    else:
        row = s.execute(query).first()
    if row is None or not 0 <= size - int(row[0]) <= SNAPSHOT_REPLAY_MAX:
        return None
    envelope = s.scalar(select(CheckpointRow.envelope).where(CheckpointRow.member == member))
    try:
        signed = _signed_state(bytes(envelope)) if envelope is not None else None
        everything, public = state.SortedLeafTree.from_bytes(bytes(row[1])), state.SortedLeafTree.from_bytes(bytes(row[2]))
    except (ValueError, CounterpartError):
        return None
    if signed is None:
        return None
    since = int(row[0])
    names = sorted(set(s.scalars(
        select(EntryRow.name).where(EntryRow.member == member, EntryRow.seq > since, EntryRow.seq <= size,
                                    EntryRow.kind != WITHHELD)
    )))
    current: dict[str, tuple[int, bool, bytes]] = {}
    for chunk in _chunks(names):
        current.update(
            (name, (int(seq), bool(public_), bytes(leaf))) for name, seq, public_, leaf in s.execute(
                select(RecordRow.name, RecordRow.seq, RecordRow.public, EntryRow.leaf_hash)
                .join(EntryRow, and_(EntryRow.member == RecordRow.member, EntryRow.seq == RecordRow.seq))
                .where(RecordRow.member == member, RecordRow.name.in_(chunk))
            )
        )
    for name in names:
        key = name.encode()
        found = current.get(name)
        if found is None:  # deleted: no current record
            everything.remove(key)
            public.remove(key)
            continue
        leaf = state.StateLeaf(name, found[0], found[2]).hash()
        everything.put(key, leaf)
        if found[1]:
            public.put(key, leaf)
        else:
            public.remove(key)
    whole = s.scalar(select(EntryRow.seq).where(EntryRow.member == member, EntryRow.kind == WITHHELD).limit(1)) is None
    try:
        state.check_tree_roots(member, signed, everything, public, whole_log=whole)
    except VerificationError:
        return None
    return everything, public, since


def _signed_state(envelope: bytes) -> state.StateRoots | None:
    """The state roots a stored checkpoint signs (its signature was checked as it was stored)."""
    cp = log_pb2.Checkpoint()
    cp.ParseFromString(signing.parse_envelope(envelope).payload)
    return log_checkpoint_state(cp)


def _table(model: type[Base]) -> Table:
    """A model's Core table: bulk inserts through it skip the ORM's bulk path, which costs a
    quarter more on a sync's 1.65 M derived rows per 100,000 entries (bench/README.md)."""
    return Base.metadata.tables[model.__tablename__]


def _generations_query(members: Sequence[str] | None) -> tuple[str, tuple[Any, ...]]:
    """``Store.generations``' driver SQL (``?`` placeholders) and parameters; every member
    held when ``members`` is None."""
    sql = (
        f"SELECT c.member, c.envelope, c.size, (SELECT count(*) FROM {EntryRow.__tablename__} e "
        f"WHERE e.member = c.member AND e.kind = ?) FROM {CheckpointRow.__tablename__} c"
    )
    if members is not None:
        sql += f" WHERE c.member IN ({_marks(members)})"
    return sql, (WITHHELD, *(members or ()))


def _generations_of(rows: Iterable[Sequence[Any]]) -> dict[str, Generation]:
    return {m: Generation(bytes(env), int(size), int(n)) for m, env, size, n in rows}


class GenerationReader:
    """Reads members' generations for lookups over connections of its own, outside the pool.

    A lookup reads the generations of one or two members on every call; through the pool
    and the expression layer that read cost more than everything else a kept answer does
    (bench/profile_find.py), and on PostgreSQL three round trips (BEGIN, SELECT, ROLLBACK).

    - **SQLite:** one connection that never writes. ``PRAGMA data_version`` on it changes
      whenever any other connection, of this process or another, commits to the database
      (sqlite.org/pragma.html#pragma_data_version), so the generations read after a given
      value stay valid while the value stays: most calls cost that one pragma. The pragma
      is read *before* the generations, so what is kept is never older than the value it is
      kept under.
    - **PostgreSQL:** serving processes may run on several machines, and no counter visible
      to a client says that nothing was committed; each call reads, in one round trip, with
      a prepared statement on an autocommit connection taken from a small free list.

    A connection that fails is closed and not used again; the error reaches the caller as
    the pool's would.
    """

    KEEP_IDLE = 16  # PostgreSQL connections kept between calls: as many as lookups run at once
    MAX_KEPT = 4096  # SQLite: generations kept (members asked about; at most 676 codes)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._lock = threading.Lock()
        self._idle: list[Any] = []  # PostgreSQL: free connections
        self._connection: Any = None  # SQLite: the one connection
        self._version: int | None = None
        self._kept: dict[str, Generation | None] = {}
        self.reads = 0  # queries sent (tests count them)

    def _connect(self) -> Any:
        fairy = self._engine.raw_connection()
        connection: Any = fairy.driver_connection
        fairy.detach()  # ours from now on: never returned to, or reset by, the pool
        if not self._sqlite:
            connection.autocommit = True  # one round trip per read: no BEGIN, no ROLLBACK
        return connection

    def read(self, members: Sequence[str]) -> dict[str, Generation]:
        wanted = sorted({m for m in members if m})
        if not wanted:
            return {}
        return self._read_sqlite(wanted) if self._sqlite else self._read_postgres(wanted)

    def _read_sqlite(self, wanted: list[str]) -> dict[str, Generation]:
        with self._lock:
            try:
                if self._connection is None:
                    self._connection = self._connect()
                version = self._connection.execute("PRAGMA data_version").fetchone()[0]
                if version != self._version or len(self._kept) > self.MAX_KEPT:
                    self._kept.clear()
                    self._version = version
                missing = [m for m in wanted if m not in self._kept]
                if missing:
                    sql, params = _generations_query(missing)
                    self.reads += 1
                    got = _generations_of(self._connection.execute(sql, params).fetchall())
                    for m in missing:
                        self._kept[m] = got.get(m)
            except Exception:
                self._drop_sqlite()
                raise
            return {m: g for m in wanted if (g := self._kept[m]) is not None}

    def _drop_sqlite(self) -> None:
        connection, self._connection, self._version = self._connection, None, None
        self._kept.clear()
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def _read_postgres(self, wanted: list[str]) -> dict[str, Generation]:
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._connect()
        sql, params = _generations_query(wanted)
        try:
            rows = connection.execute(sql.replace("?", "%s"), params, prepare=True).fetchall()
        except Exception:
            with contextlib.suppress(Exception):
                connection.close()
            raise
        with self._lock:
            self.reads += 1
            if len(self._idle) < self.KEEP_IDLE:
                self._idle.append(connection)
                connection = None
        if connection is not None:
            connection.close()
        return _generations_of(rows)

    def close(self) -> None:
        with self._lock:
            self._drop_sqlite()
            idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(Exception):
                connection.close()


_PLACE_COLUMNS = "folded, display, name, subdivision, kind"  # places.PlaceName's fields, in order


def _place_tuples(rows: Sequence[Any]) -> list[tuple[str, str, str, str, int]]:
    """Rows of ``_PLACE_COLUMNS`` as plain tuples (the kind an int on every database)."""
    return [(f, d, n, sub, int(k)) for f, d, n, sub, k in rows]


def _marks(items: Sequence[object]) -> str:
    """One ``?`` per item, for an IN (...) of driver SQL."""
    return ", ".join("?" * len(items))


def _chunks(items: Sequence[_T], size: int = 500) -> list[Sequence[_T]]:
    """Split a list of names so an IN (...) stays within every backend's parameter limit."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
