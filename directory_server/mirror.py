"""The offline copy: a node store without keys, on a laptop (README, "The offline copy").

A mirror is one SQLite file holding the verified logs, checkpoints and federation chain
exactly as a node stores them. ``pull`` fills it with the node's own sync code (``Syncer``:
checkpoint signatures, consistency proofs, entry signatures and roots, one commit per
batch) from one endpoint, through a channel the caller built (the client's TLS, pinning
and token); the mirror signs nothing and belongs to no member (``NodeConfig.member`` is
empty, so no log is its own). ``OfflineServer`` answers from the file with the node's real
DirectoryService, read-only, on a Unix socket in a private directory, so the client checks
every answer exactly as it checks a remote node's. ``export``/``import_copy`` carry the
file to a machine that never had network; an import is fully checked before it replaces
anything.

What the file holds: public entries whole and members-only ones withheld (their leaf hash)
when pulled anonymously; members-only entries whole when pulled signed in. It is written
readable by its owner only (mode 0600) either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text

from counterpart.v1 import directory_service_pb2_grpc
from counterpart_core import federation as fed
from counterpart_core.errors import ConfigurationError, CounterpartError, VerificationError
from counterpart_core.timeutil import utcnow
from directory_server.config import NodeConfig
from directory_server.lookup import Directory
from directory_server.node import Node, Problem
from directory_server.service.directory import DirectoryServicer
from directory_server.service.guard import RequestGuard
from directory_server.service.identity import Authenticator
from directory_server.storage.store import Store
from directory_server.sync import PeerReport, Syncer

_INFO = "mirror_info"  # key/value rows the node schema has no place for: when the last pull succeeded


class MirrorError(CounterpartError):
    """Something about the offline copy itself: missing, damaged, or not from the pinned federation."""


def fingerprint(envelope: bytes) -> str:
    """The SHA-256 of a federation document's signed envelope, hex: what an import is checked against."""
    return hashlib.sha256(envelope).hexdigest()


def _url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def _private(path: Path) -> None:
    """Owner only: a signed-in copy holds members-only contacts."""
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(p, 0o600)


class _ReadOnlyStore(Store):
    """The node's Store over a mirror, refusing every write (``PRAGMA query_only``): the
    schema must be current (no migration runs), and reading members-only records is not
    audited (the file is the reader's own copy; the node that served them audited the pull)."""

    def migrate(self) -> None:
        event.listen(self.engine, "connect", _query_only)
        with self.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        script = ScriptDirectory.from_config(_alembic_config())
        if current != script.get_current_head():
            raise MirrorError(
                f"the offline copy's schema is {current or 'missing'}, not {script.get_current_head()}: "
                "run `counterpart mirror` again (with network) to bring it up to date",
                reason="MIRROR_SCHEMA",
            )

    def audit(self, caller: str, method: str, records: Any, now: datetime) -> None:
        return None


def _alembic_config() -> Config:
    """The node's migrations, as ``Store.migrate`` finds them."""
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("directory_server.storage") / "migrations"))
    return cfg


def _query_only(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA query_only=ON")
    cur.close()


def _node(path: Path, store: Store, clock: Callable[[], datetime]) -> Node:
    """A node with no member and no key over the mirror's store."""
    return Node(NodeConfig(data_dir=path.parent, member="", database_url=_url(path)), store=store, clock=clock)


def _set_info(store: Store, key: str, value: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {_INFO} (key TEXT PRIMARY KEY, value TEXT NOT NULL)"))
        conn.execute(text(f"INSERT OR REPLACE INTO {_INFO} (key, value) VALUES (:k, :v)"), {"k": key, "v": value})


def _get_info(store: Store, key: str) -> str | None:
    with store.engine.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM sqlite_master WHERE type='table' AND name=:n"), {"n": _INFO}).first()
        if exists is None:
            return None
        row = conn.execute(text(f"SELECT value FROM {_INFO} WHERE key=:k"), {"k": key}).first()
        return str(row[0]) if row else None


def _quick_check(path: Path) -> None:
    """SQLite's own structural check of the file (seconds, not minutes)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as e:
        raise MirrorError(f"{path} is not a readable offline copy: {e}", reason="MIRROR_DAMAGED") from e
    if rows != ["ok"]:
        raise MirrorError(f"{path} is damaged (SQLite quick_check: {'; '.join(rows[:3])})", reason="MIRROR_DAMAGED")


def _check_chain(chain: list[bytes], pinned: bytes) -> fed.Federation:
    """The copy's federation chain verifies and passes through the pinned document."""
    if pinned not in chain:
        raise MirrorError(
            "the offline copy's federation documents do not include the pinned federation document: it was made "
            "for another federation or version; run `counterpart mirror` again, or pin the right document",
            reason="MIRROR_OTHER_FEDERATION",
        )
    try:
        return fed.verify_chain(chain[chain.index(pinned):])
    except CounterpartError as e:
        raise MirrorError(f"the offline copy's federation chain does not verify: {e.message}", reason=e.reason) from e


# --- pulling ------------------------------------------------------------------------------


@dataclass
class PullReport:
    """What one ``pull`` did, per member, and the mirror as it stands afterwards."""

    endpoint: str
    created: bool
    pulled: dict[str, int] = field(default_factory=dict)  # member -> entries transferred and stored
    filled: dict[str, int] = field(default_factory=dict)  # member -> withheld entries now held whole
    withheld: dict[str, int] = field(default_factory=dict)  # member -> entries held withheld in all
    sizes: dict[str, int] = field(default_factory=dict)  # member -> log size held
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # (member, reason, message)
    equivocations: list[str] = field(default_factory=list)
    federation_versions: list[int] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and not self.rejected and not self.equivocations


class _MirrorSyncer(Syncer):
    """The node's syncer over one channel the caller built. A refusal is reported, not
    counted in the store, so a refused pull leaves the file as it was."""

    def __init__(self, node: Node, channel: grpc.Channel, signed_in: bool, deadline: float) -> None:
        super().__init__(node, deadline=deadline)
        self._given = channel
        self._signed_in = signed_in

    def channel(self, peer: str) -> grpc.Channel:
        return self._given

    def close(self) -> None:
        return None  # the caller's channel

    @property
    def _ambiguous_restricted(self) -> bool:
        # signed in, the endpoint may send members-only entries whole: a deletion that a
        # withheld entry may hide the target of stays members-only (fail closed)
        return self._signed_in

    def _reject(self, report: PeerReport, member: str, error: CounterpartError) -> None:
        report.rejected.append((member, error.reason, error.message))

    def _fill(self, stub: Any, report: PeerReport, sizes: dict[str, int]) -> None:
        # anonymous, the endpoint withholds members-only entries every time: not asked again
        if self._signed_in:
            super()._fill(stub, report, sizes)


def pull(
    path: Path, channel: grpc.Channel, endpoint: str, pinned: bytes, *, signed_in: bool, deadline: float = 30.0,
    clock: Callable[[], datetime] = utcnow,
) -> PullReport:
    """Bring the mirror at ``path`` forward from ``endpoint`` (created from the pinned
    document if absent); only what the mirror does not hold is transferred, and each
    member's new range must be consistent with what it holds."""
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    if created:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    else:
        _quick_check(path)
    store = Store(_url(path))
    try:
        _private(path)
        node = _node(path, store, clock)
        if created:
            node.install_federation(pinned)
        else:
            held = store.federation_chain()
            pinned_id = fed.parse_document(pinned)[1].federation_id
            if not held or fed.parse_document(held[0])[1].federation_id != pinned_id:
                raise MirrorError(
                    f"{path} holds another federation than the pinned one ({pinned_id!r}); choose another --file",
                    reason="MIRROR_OTHER_FEDERATION",
                )
        syncer = _MirrorSyncer(node, channel, signed_in, deadline)
        peer = syncer.sync_peer(endpoint)
        report = PullReport(
            endpoint, created, pulled=dict(peer.pulled), filled=dict(peer.filled), rejected=list(peer.rejected),
            equivocations=list(peer.equivocations), federation_versions=list(peer.federation_versions),
            error=peer.error,
        )
        if not report.error:
            _check_chain(store.federation_chain(), pinned)
        report.withheld = store.withheld_counts()
        report.sizes = {m: store.log_size(m) for m in store.members_with_logs()}
        if report.ok:
            _set_info(store, "last_pull", clock().isoformat())
            _set_info(store, "endpoint", endpoint)
        return report
    finally:
        store.close()
        _private(path)
        if created and not _holds_logs(path):  # a first pull that stored nothing leaves no empty copy behind
            for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                p.unlink(missing_ok=True)


def _holds_logs(path: Path) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return conn.execute("SELECT 1 FROM checkpoints LIMIT 1").fetchone() is not None
    except sqlite3.DatabaseError:
        return False


# --- checking -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MirrorState:
    """What the quick check found: when the copy was last brought forward, and whose
    checkpoints (each signature checked) have expired."""

    path: Path
    last_pull: datetime | None
    expired: list[str]
    members: dict[str, int]  # member -> checkpoint size held
    federation_fingerprint: str  # of the document the copy's chain starts from


def _state(path: Path, node: Node, now: datetime) -> MirrorState:
    expired: list[str] = []
    sizes: dict[str, int] = {}
    for member in sorted(node.store.checkpoints()):
        try:
            cp = node.held_checkpoint(member)
        except CounterpartError as e:
            raise VerificationError(f"{member}: the checkpoint in the offline copy does not verify: {e.message}",
                                    reason=e.reason) from e
        if cp is None:
            continue
        sizes[member] = cp.size
        if now > cp.expire_time:
            expired.append(member)
    last = _get_info(node.store, "last_pull")
    chain = node.store.federation_chain()
    return MirrorState(
        path, datetime.fromisoformat(last) if last else None, expired, sizes, fingerprint(chain[0]) if chain else "",
    )


def full_check(path: Path, pinned: bytes | None = None, clock: Callable[[], datetime] = utcnow) -> tuple[int, list[Problem], MirrorState]:
    """Every entry's signature, every root against its signed checkpoint, every flag (the
    node's ``verify``): (entries checked, problems, state)."""
    if not path.exists():
        raise MirrorError(f"there is no offline copy at {path}; make one with `counterpart mirror`", reason="NO_MIRROR")
    _quick_check(path)
    store = _ReadOnlyStore(_url(path))
    try:
        node = _node(path, store, clock)
        if pinned is not None:
            _check_chain(store.federation_chain(), pinned)
        report = node.verify_report()
        return report.checked, report.problems, _state(path, node, clock())
    finally:
        store.close()


# --- answering offline --------------------------------------------------------------------


class OfflineServer:
    """The node's DirectoryService over the mirror, read-only, on a Unix socket in a
    private temporary directory (mode 0700): no TCP port, no sync, no replication.

    Before it serves, the file passes SQLite's quick check, its federation chain must
    verify and pass through the pinned document, and every held checkpoint's signature is
    checked; the answers themselves are then verified by the client as any node's are."""

    def __init__(self, path: Path, pinned: bytes, clock: Callable[[], datetime] = utcnow) -> None:
        if not path.exists():
            raise MirrorError(
                f"there is no offline copy at {path}; make one with `counterpart mirror` while you have network, "
                "or import one with `counterpart mirror --import FILE`",
                reason="NO_MIRROR",
            )
        _quick_check(path)
        self.store = _ReadOnlyStore(_url(path))
        try:
            node = _node(path, self.store, clock)
            _check_chain(self.store.federation_chain(), pinned)
            self.state = _state(path, node, clock())
            directory = Directory(self.store, node.federation, clock)
            self._dir = tempfile.mkdtemp(prefix="counterpart-offline-")
            self.target = f"unix:{self._dir}/directory.sock"
            self.server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=2),
                interceptors=[RequestGuard(), Authenticator(node.federation, self.store.revoked, "", clock)],
            )
            directory_service_pb2_grpc.add_DirectoryServiceServicer_to_server(DirectoryServicer(directory), self.server)
            if not self.server.add_insecure_port(self.target):
                raise ConfigurationError(f"cannot listen on {self.target}", reason="LISTEN_FAILED")
            self.server.start()
        except BaseException:
            self.store.close()
            raise

    def close(self) -> None:
        self.server.stop(None).wait()
        self.store.close()
        shutil.rmtree(self._dir, ignore_errors=True)


# --- export and import ----------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    path: Path
    sha256: str
    federation_fingerprint: str
    bytes: int


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(path: Path, target: Path) -> Exported:
    """One consistent file (``VACUUM INTO``, a snapshot even while a pull writes), mode 0600."""
    if not path.exists():
        raise MirrorError(f"there is no offline copy at {path}; make one with `counterpart mirror`", reason="NO_MIRROR")
    if target.exists():
        raise MirrorError(f"{target} exists; choose a new file name", reason="EXPORT_EXISTS")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            conn.execute("VACUUM INTO ?", (str(tmp),))
            chain = [bytes(r[0]) for r in conn.execute("SELECT envelope FROM federation_documents ORDER BY version")]
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if not chain:
        raise MirrorError(f"{path} holds no federation document", reason="MIRROR_DAMAGED")
    return Exported(target, _sha256_file(target), fingerprint(chain[0]), target.stat().st_size)


@dataclass(frozen=True)
class Imported:
    checked: int
    state: MirrorState
    pin: bytes | None  # the document to pin (no document was pinned), already checked against the fingerprint


def import_copy(
    source: Path, path: Path, *, pinned: bytes | None, expected_fingerprint: str | None,
    pin: Callable[[bytes], None], clock: Callable[[], datetime] = utcnow,
) -> Imported:
    """Replace the mirror at ``path`` with ``source`` once it passed the full check: its
    chain passes through the pinned document or, with none pinned, starts from the
    document of ``expected_fingerprint`` (then pinned with ``pin``). Atomic: a refused
    import leaves the old mirror and the pin as they were."""
    if pinned is None and not expected_fingerprint:
        raise MirrorError(
            "no federation document is pinned: pass --federation-fingerprint HEX, the fingerprint printed by "
            "`counterpart mirror --export`, or pin the federation document first (`counterpart trust FILE`)",
            reason="NOT_TRUSTED",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.import-", dir=path.parent)  # mode 0600
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            shutil.copyfile(source, tmp)
        except OSError as e:
            raise MirrorError(f"cannot read {source}: {e.strerror}", reason="PATH_NOT_FOUND") from e
        _quick_check(tmp)
        with contextlib.closing(sqlite3.connect(f"file:{tmp}?mode=ro", uri=True)) as conn:
            try:
                chain = [bytes(r[0]) for r in conn.execute("SELECT envelope FROM federation_documents ORDER BY version")]
            except sqlite3.DatabaseError as e:
                raise MirrorError(f"{source} is not an offline copy: {e}", reason="MIRROR_DAMAGED") from e
        if not chain:
            raise MirrorError(f"{source} holds no federation document", reason="MIRROR_DAMAGED")
        to_pin: bytes | None = None
        wanted = (expected_fingerprint or "").lower().replace(":", "").strip()
        if wanted and fingerprint(chain[0]) != wanted:
            raise MirrorError(
                f"{source} starts from federation document {fingerprint(chain[0])}, not {wanted}: "
                "it is not the copy you were given, or the fingerprint was mistyped; nothing was imported",
                reason="FINGERPRINT_MISMATCH",
            )
        if pinned is not None:
            _check_chain(chain, pinned)
        else:
            if fingerprint(chain[0]) != wanted:
                raise MirrorError(
                    f"{source} starts from federation document {fingerprint(chain[0])}, not {wanted}: "
                    "it is not the copy you were given, or the fingerprint was mistyped; nothing was imported",
                    reason="FINGERPRINT_MISMATCH",
                )
            to_pin = chain[0]
            _check_chain(chain, to_pin)
        checked, problems, state = full_check(tmp, None, clock)
        if problems:
            p = problems[0]
            where = f"{p.member} entry {p.seq}" if p.seq else p.member or "the copy"
            raise VerificationError(
                f"{source} failed the full check ({len(problems)} problem(s)); first: {where}: {p.message} [{p.reason}]; "
                "nothing was imported",
                reason="MIRROR_VERIFICATION_FAILED",
            )
        if to_pin is not None:
            pin(to_pin)
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        os.replace(tmp, path)
        _private(path)
        return Imported(checked, MirrorState(path, state.last_pull, state.expired, state.members, state.federation_fingerprint), to_pin)
    finally:
        tmp.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm"):
            tmp.with_name(tmp.name + suffix).unlink(missing_ok=True)
