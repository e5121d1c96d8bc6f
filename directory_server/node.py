"""A national node: its storage, trust root and key, and the operations on them.

This is the application layer between the CLI / gRPC adapters and the pure domain:
it reads and writes through the Store and decides nothing that the domain decides.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from counterpart.v1 import log_pb2
from counterpart_core import federation as fed
from counterpart_core import log, merkle, redaction, signing, state
from counterpart_core.diff import FieldChange, diff_records
from counterpart_core.errors import (
    ConfigurationError,
    ConflictError,
    CounterpartError,
    SignatureError,
    ValidationError,
    VerificationError,
)
from counterpart_core.records import (
    Record,
    SourcedRecord,
    check_references,
    collection_of,
    load_record_files,
    references_of,
)
from counterpart_core.timeutil import from_timestamp, utcnow
from directory_server import wake
from directory_server.config import NodeConfig
from directory_server.storage.store import Store


@dataclass
class PublishPlan:
    """What a publish would append: the difference against the current state."""

    added: list[SourcedRecord] = field(default_factory=list)
    changed: list[SourcedRecord] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    # changed records whose current version is public and whose new one is members-only: a
    # tombstone of the public version goes first, so nodes that may not see the new version
    # drop the old one instead of serving it on
    withdrawn: list[str] = field(default_factory=list)
    appended: int = 0  # entries actually appended (0 on a dry run)
    checkpoint_size: int = 0
    # what changed in each changed record, field by field (domain.diff)
    changes: dict[str, list[FieldChange]] = field(default_factory=dict)
    prune: bool = False
    # published records of the kinds in the files that the files do not hold: deleted with
    # --prune (``deleted``), kept without it (``kept``)
    kept: list[str] = field(default_factory=list)
    collections: list[str] = field(default_factory=list)  # kinds the files hold (what --prune may delete from)
    untouched: int = 0  # published records of kinds the files do not hold: never deleted
    notices: list[str] = field(default_factory=list)  # how files were read (encodings, separators, skipped files)

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.deleted)


@dataclass(frozen=True)
class PeerSync:
    """One peer's view of one member, as this node last saw it."""

    peer: str
    last_size: int
    last_success: str | None  # ISO time of the last successful sync of the member from the peer


@dataclass(frozen=True)
class Rejection:
    peer: str
    reason: str
    count: int
    last_time: str
    last_message: str


@dataclass(frozen=True)
class Evidence:
    """Two checkpoints the member signed that cannot both be true."""

    peer: str
    held_size: int
    offered_size: int
    detected_time: str
    held_checkpoint: str  # base64 of the envelopes, exactly as signed
    offered_checkpoint: str


@dataclass(frozen=True)
class Alarm:
    """Something an operator must look at now (``counterpart-node status``)."""

    member: str
    reason: str
    peer: str
    count: int
    last_time: str
    message: str


@dataclass(frozen=True)
class MemberStatus:
    """What the node holds of one member, and how syncing it went."""

    member: str
    log_size: int
    checkpoint_size: int | None
    checkpoint_age_seconds: int | None
    stale: bool
    peers: list[PeerSync] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    equivocations: list[Evidence] = field(default_factory=list)
    withheld: int = 0  # entries held as their leaf hash only (members-only, not given to this node)


ALARM_REASONS = ("OWN_LOG_FROM_PEER",)

HELD_CHECKED_KEEP = 1024
"""Held checkpoints whose signature a Node keeps as checked (one per member and version)."""
"""Rejections that are alarms, not just a peer to distrust: a log of this node's own member,
signed with its key, that this node did not sign."""


@dataclass(frozen=True)
class VerifyReport:
    checked: int  # entries checked, withheld ones included
    problems: list[Problem]
    withheld: dict[str, int]  # per member: entries held withheld (their leaf hash checked against the root)


@dataclass(frozen=True)
class Problem:
    """Something wrong on disk, found by verify."""

    member: str
    seq: int  # 0: not about one entry
    reason: str
    message: str


class Node:
    def __init__(self, config: NodeConfig, store: Store | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.config = config
        self.store = store or Store(config.db_url)
        self.clock = clock
        # every checkpoint or federation document committed wakes the node's serving
        # processes, which push it to their peers (directory_server.wake)
        self.store.watch_commits(self._wake_servers)
        self._federation: fed.Federation | None = None
        self._held_checked: dict[tuple[int, str, bytes], log.LogCheckpoint] = {}
        self._held_lock = threading.Lock()

    def _wake_servers(self) -> None:
        wake.poke(self.config.data_dir)

    @property
    def member(self) -> str:
        return self.config.member

    def close(self) -> None:
        self.store.close()

    # --- trust root ----------------------------------------------------------------------

    def federation(self) -> fed.Federation:
        """The current federation document, re-verified from disk once per process."""
        if self._federation is None:
            chain = self.store.federation_chain()
            if not chain:
                raise ConfigurationError(
                    "this node has no federation document; install one with "
                    "`counterpart-node federation install FILE`",
                    reason="NO_FEDERATION",
                )
            self._federation = fed.verify_chain(chain)
        return self._federation

    def install_federation(self, envelope: bytes, require_member: bool = False) -> fed.Federation:
        """Accept a first document, or exactly the next version of the current one.

        require_member (the operator's `federation install`): refuse a document that does not
        list this node's member (a version that dropped it still arrives by sync)."""
        now = self.clock()
        if not self.store.federation_chain():
            accepted = fed.verify_initial(envelope, now)
        else:
            accepted = fed.verify_next(self.federation(), envelope, now)
        if require_member and accepted.member(self.member) is None:
            raise ConfigurationError(
                f"federation document {accepted.document.federation_id} version {accepted.version} does not list "
                f"{self.member} as a member: this node could not publish under it; ask the secretariat for the "
                "version that admits it",
                reason="NOT_A_MEMBER",
            )
        self.store.put_federation(accepted.version, envelope, now)
        self._federation = accepted
        return accepted

    # --- keys ----------------------------------------------------------------------------

    def signing_key(self, passphrase: bytes) -> signing.SigningKey:
        """The node's key, checked against the member's keys in the federation document."""
        key = signing.read_key_file(self.config.key_path, passphrase)
        member = self.federation().member(self.member)
        if member is None:
            raise ConfigurationError(
                f"{self.member} is not a member of federation {self.federation().document.federation_id}",
                reason="NOT_A_MEMBER",
            )
        match = [k for k in member.keys if k.key_id == key.key_id]
        if not match:
            raise ConfigurationError(
                f"the node key {key.key_id} is not among {self.member}'s keys in the federation document",
                reason="KEY_NOT_IN_FEDERATION",
            )
        if not fed.key_valid_at(match[0], self.clock()):
            raise ConfigurationError(f"the node key {key.key_id} is not valid now", reason="KEY_NOT_VALID")
        return key

    def refresh_federation(self) -> bool:
        """Pick up a document another process installed; True when the version changed."""
        latest = self.store.federation_version()
        if self._federation is not None and latest == self._federation.version:
            return False
        self._federation = None
        self.federation()
        return True

    # --- reading logs --------------------------------------------------------------------

    def held_checkpoint(self, member: str, envelope: bytes | None = None) -> log.LogCheckpoint | None:
        """The member's checkpoint this node holds, its signature re-checked (disk is not
        trusted); ``envelope``: its bytes, if the caller read them from the store."""
        if envelope is None:
            envelope = self.store.checkpoint(member)
        if envelope is None:
            return None
        federation = self.federation()
        # the same bytes under the same federation document verify the same way: checked
        # once (a pass reads each held checkpoint again; a pull's offered one is held next)
        key = (federation.version, member, envelope)
        with self._held_lock:
            checked = self._held_checked.get(key)
        if checked is not None:
            return checked
        checked = log.verify_checkpoint(envelope, member, federation, check_window=False)
        with self._held_lock:
            self._held_checked[key] = checked
            while len(self._held_checked) > HELD_CHECKED_KEEP:
                self._held_checked.pop(next(iter(self._held_checked)))
        return checked

    def verified_entries(self, member: str) -> list[log.LogEntry]:
        """Every entry of a member's log, each signature re-checked (verify before trusting
        disk); a withheld one as its leaf hash alone (``log.withheld_entry``)."""
        federation = self.federation()
        return [
            log.withheld_entry(member, row.seq, row.leaf_hash) if row.withheld
            else log.verify_entry(row.envelope, member, row.seq, federation)
            for row in self.store.log_rows(member)
        ]

    def current_state(self, member: str) -> dict[str, log.LogEntry]:
        """Each name's latest entry, unless a deletion, of the entries this node holds whole
        (a withheld entry has no name: what it may change is not known here)."""
        latest: dict[str, log.LogEntry] = {}
        for e in self.verified_entries(member):
            if not e.withheld:
                latest[e.name] = e
        return {n: e for n, e in latest.items() if e.kind != "deletion"}

    # --- publishing ----------------------------------------------------------------------

    def check_may_publish(self) -> fed.Federation:
        """The current federation document, if this node may sign entries under it now: not
        expired, and listing the node's member."""
        federation = self.federation()
        doc = federation.document
        which = f"federation document {doc.federation_id} version {doc.version}"
        if federation.expired(self.clock()):
            raise ConfigurationError(
                f"the {which} expired at {from_timestamp(doc.expire_time).isoformat()}: nothing is published under an "
                "expired document; install the next version first (`counterpart-node federation install FILE`)",
                reason="FEDERATION_EXPIRED",
            )
        if federation.member(self.member) is None:
            raise ConfigurationError(
                f"the {which} does not list {self.member} as a member: other nodes would refuse what this node "
                "signs; ask the federation secretariat to admit it, then install that version",
                reason="NOT_A_MEMBER",
            )
        return federation

    def own_state(self) -> dict[str, log.LogEntry]:
        """The member's own current records; refused while some of its entries are withheld here."""
        self._check_own_log_whole()
        return self.current_state(self.member)

    def _check_own_log_whole(self) -> None:
        if not self.store.holds_withheld(self.member):
            return
        withheld = self.store.withheld_counts().get(self.member, 0)
        raise ConfigurationError(
            f"this node holds {withheld} entries of {self.member}'s own log withheld (restored from peers that "
            "were not member nodes): the current state is not known, so nothing can be published until they "
            "are filled in from a member node",
            reason="OWN_LOG_INCOMPLETE",
        )

    def _own_record_count(self) -> int:
        """The own member's current records: the state size its held checkpoint signs (its
        log is whole here, ``_check_own_log_whole``), counted only when it signs none."""
        held = self.held_checkpoint(self.member)
        if held is not None and held.state is not None:
            return held.state.size
        return self.store.current_count(self.member)

    def _own_current(self, names: Sequence[str]) -> dict[str, log.LogEntry]:
        """The own member's current entries of ``names`` (those that are current), found
        through the derived records and each signature re-checked: O(names), not O(log)."""
        seqs = self.store.current_seqs(self.member, names)
        envelopes = self.store.envelopes_at([(self.member, seq) for seq in seqs.values()])
        federation = self.federation()
        return {
            name: log.verify_entry(envelopes[(self.member, seq)], self.member, seq, federation)
            for name, seq in seqs.items()
        }

    def current_records(self) -> list[Record]:
        """The member's own current records, in the order they were first published (for export)."""
        return [e.record for e in self.own_state().values() if e.record is not None]

    def plan(self, path: Path, prune: bool = False) -> PublishPlan:
        """Validate the files and compute the difference against the current state.

        Without prune nothing is deleted: published records of the kinds in the files that the
        files do not hold are ``kept``. With prune they are ``deleted`` (records of other kinds
        never are). References must hold in the state the publish leaves: to a record of the
        files or one already published and not deleted; and no kept record may refer to a
        deleted one.
        """
        federation = self.check_may_publish()
        loaded = load_record_files(path, self.member, federation.vocabulary)
        self._check_own_log_whole()
        # From the derived records: the entries of the names the files hold, the current names
        # of the kinds they hold, and those the files refer to. The diff needs no more, so a
        # publish costs O(files + records of those kinds + change), not O(log).
        current = self._own_current([r.name for r in loaded.records])
        plan = PublishPlan(prune=prune, collections=sorted(loaded.collections), notices=list(loaded.notices))
        wanted = {r.name for r in loaded.records}
        for r in loaded.records:
            old = current.get(r.name)
            if old is None:
                plan.added.append(r)
            elif old.record is None or old.record.SerializeToString(deterministic=True) != r.record.SerializeToString(deterministic=True):
                plan.changed.append(r)
                plan.changes[r.name] = diff_records(old.record, r.record)
                if not redaction.record_members_only(old.record) and redaction.record_members_only(r.record):
                    plan.withdrawn.append(r.name)
            else:
                plan.unchanged += 1
        of_kinds = [n for n in self.store.current_names(self.member, sorted(loaded.collections))
                     if collection_of(n) in loaded.collections]
        candidates = sorted(n for n in of_kinds if n not in wanted)
        plan.untouched = self._own_record_count() - len(of_kinds)  # every kind the files hold none of
        if prune:
            plan.deleted = candidates
        else:
            plan.kept = candidates
        deleted = set(plan.deleted)
        referenced = sorted({target for r in loaded.records for _, target in references_of(r.record)} - wanted)
        remaining = wanted | (set(self.store.current_seqs(self.member, referenced)) - deleted)
        check_references(loaded.records, remaining, deleted)
        if deleted:  # no record left may refer to a deleted one: the records of every kind are read
            names = set(self.store.current_seqs(self.member))
            kept = self._own_current(sorted(n for n in names if n not in wanted and n not in deleted))
        else:
            kept = {}
        for name, entry in kept.items():
            if entry.record is None:
                continue
            for fld, target in references_of(entry.record):
                if target in deleted:
                    raise ValidationError(
                        f"--prune would delete {target}, but {name} (published, not in these files) refers to it in "
                        f"field {fld}: publish {name} without the reference, or keep {target} in the files",
                        reason="REFERENCED_BY_KEPT_RECORD", record=target,
                    )
        return plan

    def publish(
        self, path: Path, passphrase: bytes | None, dry_run: bool = False, prune: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> PublishPlan:
        """Append the difference as signed entries and sign a checkpoint over the new log.

        Publishing the same files twice appends nothing; records not in the files are deleted
        only with prune (see ``plan``). On any error nothing is appended. ``progress`` is told
        (phase, done, total) while entries are signed and stored.
        """
        plan = self.plan(path, prune=prune)
        tree = self.store.frontier(self.member)  # the log's tree, extended below without reading it
        held = self.held_checkpoint(self.member)
        if tree.root() != (held.root_hash if held is not None else merkle.root_hash([])):
            raise ConflictError(
                f"{self.member}: the stored log tree is not the one the held checkpoint signs; nothing is "
                "published (`counterpart-node verify`)", reason="FRONTIER_MISMATCH",
            )
        size = tree.size
        plan.checkpoint_size = size
        if dry_run or plan.empty:
            return plan
        if passphrase is None:
            raise ConfigurationError("a key passphrase is needed to publish", reason="NO_PASSPHRASE")
        key = self.signing_key(passphrase)
        limits = self.federation().limits
        now = self.clock()
        entries: list[log.LogEntry] = []
        withdrawn = set(plan.withdrawn)
        total = len(plan.added) + len(plan.changed) + len(plan.deleted) + len(withdrawn)

        def tick() -> None:
            if progress is not None:
                progress("signing", len(entries), total)

        for r in [*plan.added, *plan.changed]:
            if r.name in withdrawn:
                entries.append(log.build_entry(
                    self.member, size + len(entries) + 1, r.name, None, now, key,
                    "the public version is withdrawn: the record is now members-only",
                ))
            e = log.build_entry(self.member, size + len(entries) + 1, r.name, r.record, now, key)
            if len(e.envelope) > limits.max_entry_bytes:
                raise ValidationError(
                    f"the signed entry is {len(e.envelope)} bytes; the federation allows {limits.max_entry_bytes}",
                    reason="ENTRY_TOO_LARGE", file=r.source, record=r.name,
                )
            entries.append(e)
            tick()
        for name in plan.deleted:
            entries.append(log.build_entry(
                self.member, size + len(entries) + 1, name, None, now, key, "not in the published files (--prune)",
            ))
            tick()
        if size + len(entries) > limits.max_entries_per_member:
            raise ValidationError(
                f"the log would hold {size + len(entries)} entries; the federation allows {limits.max_entries_per_member}",
                reason="LOG_TOO_LARGE",
            )
        if progress is not None:
            progress("storing", 0, 1)
        for e in entries:
            tree.append(e.leaf_hash)
        checkpoint = log.build_checkpoint(
            self.member, tree.size, tree.root(), now, key, self.config.checkpoint_validity_td,
            state=self._state_after(entries),
        )
        self.store.append(self.member, size, entries, checkpoint)
        if progress is not None:
            progress("storing", 1, 1)
        plan.appended = len(entries)
        plan.checkpoint_size = checkpoint.size
        return plan

    def heartbeat(self, key: signing.SigningKey, force: bool = False) -> log.LogCheckpoint | None:
        """Re-sign the own checkpoint when half its validity has passed (or when forced),
        so readers can tell a live origin from a frozen copy (DESIGN §3)."""
        now = self.clock()
        row = self.store.checkpoint_row(self.member)
        if row is not None and not force:
            half = (row.expire_time - row.issue_time) / 2
            if now < row.issue_time + half:
                return None
        tree = self.store.frontier(self.member)
        cp = log.build_checkpoint(
            self.member, tree.size, tree.root(), now, key, self.config.checkpoint_validity_td,
            state=self._heartbeat_state(tree.size),
        )
        self.store.put_checkpoint(cp)
        return cp

    def _heartbeat_state(self, size: int) -> state.StateRoots | None:
        """The state roots a heartbeat signs: those the checkpoint of the same log signed
        (nothing changed), else recomputed; none while some own entries are held withheld
        (restored from peers that were not member nodes: the state is not known here)."""
        held = self.held_checkpoint(self.member)
        if held is not None and held.size == size and held.state is not None:
            return held.state
        if self.store.holds_withheld(self.member):
            return None
        return self._state_after([])

    def _state_after(self, entries: Sequence[log.LogEntry]) -> state.StateRoots:
        """The roots of the own member's state trees once ``entries`` are appended (DESIGN
        §3 state_root): the stored current records, overlaid with the new entries."""
        latest = {e.name: e for e in entries}
        return self.store.state_roots_after(self.member, [
            state.CurrentEntry(e.name, e.seq, e.leaf_hash, e.kind == "deletion", redaction.record_members_only(e.record))
            for e in latest.values()
        ])

    def member_statuses(self) -> list[MemberStatus]:
        """Per member of the federation (and any other the node holds data of): log size and
        checkpoint age, for `counterpart-node status`."""
        now = self.clock()
        peers: dict[str, list[PeerSync]] = {}
        for p in self.store.peer_rows():
            success = p.last_success_time.isoformat() if p.last_success_time else None
            peers.setdefault(p.member, []).append(PeerSync(p.peer, p.last_size, success))
        rejections: dict[str, list[Rejection]] = {}
        for r in self.store.rejections():
            rejections.setdefault(r.member, []).append(
                Rejection(r.peer, r.reason, r.count, r.last_time.isoformat(), r.last_message)
            )
        evidence: dict[str, list[Evidence]] = {}
        for e in self.store.evidence():
            evidence.setdefault(e.member, []).append(
                Evidence(
                    e.peer, _checkpoint_size(e.held_checkpoint), _checkpoint_size(e.offered_checkpoint),
                    e.detected_time.isoformat(), base64.b64encode(e.held_checkpoint).decode(),
                    base64.b64encode(e.offered_checkpoint).decode(),
                )
            )
        codes = {m.code for m in self.federation().members()} | set(self.store.checkpoints()) | set(rejections)
        withheld = self.store.withheld_counts()
        out = []
        for code in sorted(codes):
            cp = self.store.checkpoint_row(code) if code else None
            out.append(
                MemberStatus(
                    member=code,
                    log_size=self.store.log_size(code) if code else 0,
                    checkpoint_size=cp.size if cp else None,
                    checkpoint_age_seconds=int((now - cp.issue_time).total_seconds()) if cp else None,
                    stale=bool(cp and now > cp.expire_time),
                    peers=peers.get(code, []),
                    rejections=rejections.get(code, []),
                    equivocations=evidence.get(code, []),
                    withheld=withheld.get(code, 0),
                )
            )
        return out

    def alarms(self) -> list[Alarm]:
        """Rejections an operator must act on (``ALARM_REASONS``), most recent first."""
        rows = [r for r in self.store.rejections() if r.reason in ALARM_REASONS]
        return [
            Alarm(r.member, r.reason, r.peer, r.count, r.last_time.isoformat(), r.last_message)
            for r in sorted(rows, key=lambda r: r.last_time, reverse=True)
        ]

    # --- integrity -----------------------------------------------------------------------

    def verify(self) -> tuple[int, list[Problem]]:
        """Re-check every signature and root on disk; return (entries checked, problems)."""
        report = self.verify_report()
        return report.checked, report.problems

    def verify_report(self) -> VerifyReport:
        """``verify``, also saying how many entries of each member are held withheld: only
        their leaf hash is here, checked as part of the signed root like every other leaf
        (not a problem). Each entry's ``restricted`` flag is checked too: a members-only
        entry flagged public would be served to anyone."""
        problems: list[Problem] = []
        checked = 0
        withheld: dict[str, int] = {}
        try:
            federation = self.federation()
        except CounterpartError as e:
            return VerifyReport(0, [Problem("", 0, e.reason, f"federation document: {e.message}")], {})
        members = sorted(set(self.store.members_with_logs()) | set(self.store.checkpoints()))
        for member in members:
            hashes: list[bytes] = []
            entries: list[log.LogEntry] = []
            stored_flags: dict[int, bool] = {}
            for row in self.store.log_rows(member):
                checked += 1
                stored_flags[row.seq] = row.restricted
                if row.withheld:
                    withheld[member] = withheld.get(member, 0) + 1
                    hashes.append(row.leaf_hash)
                    try:
                        if row.envelope:
                            raise VerificationError("a withheld entry holds an envelope", reason="MALFORMED_WITHHELD")
                        entries.append(log.withheld_entry(member, row.seq, row.leaf_hash))
                    except VerificationError as e:
                        problems.append(Problem(member, row.seq, e.reason, e.message))
                    continue
                leaf = merkle.leaf_hash(row.envelope)
                hashes.append(leaf)
                if leaf != row.leaf_hash:
                    problems.append(Problem(member, row.seq, "LEAF_HASH_MISMATCH", "stored leaf hash differs from the envelope's hash"))
                try:
                    entries.append(log.verify_entry(row.envelope, member, row.seq, federation))
                except CounterpartError as e:
                    problems.append(Problem(member, row.seq, e.reason, e.message))
            if len(entries) == len(stored_flags):  # flags follow from entries: only once they all verify
                for seq, flag in redaction.mark_log(entries, stored_flags).items():
                    if flag != stored_flags[seq]:
                        problems.append(Problem(
                            member, seq, "RESTRICTED_FLAG_MISMATCH",
                            "stored as public but members-only: it would be served to anyone"
                            if flag else "stored as members-only but public",
                        ))
            cp_env = self.store.checkpoint(member)
            if cp_env is None:
                problems.append(Problem(member, 0, "NO_CHECKPOINT", "the log has no checkpoint"))
                continue
            try:
                cp = log.verify_checkpoint(cp_env, member, federation)
                log.check_root(member, cp, hashes)
                cp_row = self.store.checkpoint_row(member)
                stored = cp_row.frontier if cp_row is not None else None
                if stored is not None and bytes(stored) != merkle.CompactRange.from_leaf_hashes(hashes).frontier:
                    # what every pull and publish extends: a wrong one would make them refuse honest
                    # checkpoints (or, on a publish, sign a wrong root, which append refuses)
                    problems.append(Problem(
                        member, 0, "FRONTIER_MISMATCH",
                        "the stored frontier of the log tree is not that of the entries on disk "
                        "(`counterpart-node rebuild` recomputes it)",
                    ))
                steps = self.store.log_frontiers(member)
                tree = merkle.CompactRange()
                for h in hashes:
                    tree.append(h)
                    if steps.get(tree.size, tree.frontier) != tree.frontier:
                        break  # what consistency proofs start from: a wrong one makes peers refuse them
                if tree.size < len(hashes) or max(steps, default=0) > len(hashes):
                    problems.append(Problem(
                        member, 0, "FRONTIER_MISMATCH",
                        f"the stored frontier of the log tree at {tree.size} entries is not that of the entries "
                        "on disk (`counterpart-node rebuild` recomputes it)",
                    ))
                if cp.state is not None and len(entries) == len(stored_flags):
                    latest = {e.name: e for e in entries if not e.withheld}
                    state.check_roots(member, cp.state, [
                        state.CurrentEntry(e.name, e.seq, e.leaf_hash, e.kind == "deletion",
                                           redaction.record_members_only(e.record))
                        for e in latest.values()
                    ], whole_log=not withheld.get(member))
            except (VerificationError, SignatureError) as e:
                problems.append(Problem(member, 0, e.reason, f"checkpoint: {e.message}"))
        return VerifyReport(checked, problems, withheld)

    def rebuild(self) -> int:
        """Re-derive every lookup index, and every entry's ``restricted`` flag, from the
        verified envelopes (an ambiguous deletion keeps the flag it was given at ingest).
        The upgrade of a database to revision 0003 flags the entries it holds by itself
        (``Store.migrate``); ``rebuild`` repairs flags that ``verify`` finds wrong."""
        members = self.store.members_with_logs()
        verified: dict[str, Sequence[log.LogEntry]] = {m: self.verified_entries(m) for m in members}
        for member, entries in verified.items():
            self.store.set_restricted(member, redaction.mark_log(entries, self.store.restricted_flags(member)))
            self.store.put_frontier(member, merkle.CompactRange.from_leaf_hashes(e.leaf_hash for e in entries))
            self.store.replace_log_frontiers(member, [e.leaf_hash for e in entries])
        return self.store.rebuild_derived(verified)


def _checkpoint_size(envelope: bytes) -> int:
    """The size a stored checkpoint claims (its signature was checked when it was stored)."""
    cp = log_pb2.Checkpoint()
    cp.ParseFromString(signing.parse_envelope(envelope).payload)
    return int(cp.size)


def open_node(config: NodeConfig, clock: Callable[[], datetime] = utcnow) -> Node:
    return Node(config, clock=clock)


__all__: Sequence[str] = ["Alarm", "Node", "Problem", "PublishPlan", "VerifyReport", "open_node"]
