"""Members-only entries never leave a node except to member nodes (DESIGN §8).

Real nodes on loopback, real signatures, real SQLite. GE publishes its sample records,
three of whose contacts are members-only. Every puller here is anonymous (no TLS yet), so
GE serves those entries withheld: an empty item and its leaf hash, which the signed root
covers. The tests show that:

- the node that pulls stores them withheld (no name, envelope, publish time or derived
  rows), verifies, rebuilds and relays them as such, never whole;
- a peer that gives them whole (as a member node gets them) fills them in, each checked
  like ingest plus against the withheld leaf hash; a wrong one is refused whole;
- a public record made members-only is first tombstoned, so anonymous copies drop it;
- a deletion of a members-only record is members-only too;
- a database from before revision 0003 gets its flags when it is upgraded; ``verify``
  names a wrong flag and ``rebuild`` repairs it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from alembic import command
from alembic.config import Config
from click.testing import CliRunner
from conftest import PASSPHRASE  # type: ignore[import-not-found, unused-ignore]
from hostile_peer import HostilePeer
from sqlalchemy import select, update
from tests_support_cluster import stored_state

from counterpart.v1 import replication_service_pb2 as rs
from counterpart.v1 import replication_service_pb2_grpc as rs_grpc
from counterpart_core import log
from directory_server import sync as sync_module
from directory_server.cli import main as node_cli
from directory_server.node import Node
from directory_server.service.server import NodeServer
from directory_server.storage import models
from directory_server.storage.store import Store
from directory_server.sync import Syncer

MEMBERS = ["GE", "AZ", "KZ"]
MEMBERS_ONLY = {
    "members/GE/contacts/duty-24-7", "members/GE/contacts/asset-recovery-focal-point",
    "members/GE/contacts/directory-admin",
}


def entry_rows(node: Node, member: str) -> list[tuple[Any, ...]]:
    with node.store.engine.connect() as c:
        return [tuple(r) for r in c.execute(
            select(
                models.EntryRow.seq, models.EntryRow.name, models.EntryRow.kind, models.EntryRow.envelope,
                models.EntryRow.leaf_hash, models.EntryRow.publish_time, models.EntryRow.restricted,
            ).where(models.EntryRow.member == member).order_by(models.EntryRow.seq)
        )]


def snapshot(node: Node) -> dict[str, Any]:
    """What sync may change, with every column of every entry (flags and withheld rows too)."""
    return {**stored_state(node), "rows": {m: entry_rows(node, m) for m in MEMBERS}}


def records(node: Node, member: str, public_only: bool = False) -> list[tuple[Any, ...]]:
    with node.store.engine.connect() as c:
        q = select(models.RecordRow.name, models.RecordRow.seq, models.RecordRow.public).where(
            models.RecordRow.member == member
        )
        if public_only:
            q = q.where(models.RecordRow.public.is_(True))
        return [tuple(r) for r in c.execute(q.order_by(models.RecordRow.name))]


def restricted_seqs(node: Node, member: str) -> set[int]:
    return {r.seq for r in node.store.log_rows(member) if r.restricted}


def fetch(address: str, member: str, start: int, end: int) -> list[rs.GetEntriesResponse]:
    """GetEntries as an anonymous caller."""
    with grpc.insecure_channel(address) as channel:
        stub = rs_grpc.ReplicationServiceStub(channel)
        return list(stub.GetEntries(rs.GetEntriesRequest(member=member, start_seq=start, end_seq=end), timeout=10))


def served_items(batches: list[rs.GetEntriesResponse]) -> dict[int, tuple[bytes, bytes]]:
    """seq -> (envelope, withheld leaf hash) as served."""
    out: dict[int, tuple[bytes, bytes]] = {}
    for b in batches:
        for i, env in enumerate(b.signed_entries):
            seq = b.start_seq + i
            out[seq] = (bytes(env), bytes(b.withheld_leaf_hashes.get(seq, b"")))
    return out


@dataclass
class Two:
    ge: Node
    az: Node
    server: NodeServer  # GE's
    records: Path  # GE's record folder

    @property
    def address(self) -> str:
        return self.server.address


@pytest.fixture(params=["in memory", "staged"])
def range_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every case twice: a range held in memory and appended, and a range checked on every
    core and staged in the store (Store.append_staged), as a long one is (sync.LONG_RANGE)."""
    if request.param == "staged":
        monkeypatch.setattr(sync_module, "LONG_RANGE", 1)
    return str(request.param)


@pytest.fixture
def two(make_node: Callable[..., Node], sample_dir: Callable[[str], Path], range_path: str) -> Iterator[Two]:
    ge, az = make_node("GE", MEMBERS), make_node("AZ", MEMBERS)
    folder = sample_dir("GE")
    ge.publish(folder, PASSPHRASE)
    server = NodeServer(ge, "127.0.0.1:0", access_log=False)
    server.start()
    yield Two(ge, az, server, folder)
    server.stop(grace=0)


def pulled_anonymously(w: Two) -> Syncer:
    syncer = Syncer(w.az, deadline=5.0)
    report = syncer.sync_peer(w.address)
    assert report.ok and report.pulled == {"GE": w.ge.store.log_size("GE")}, (report.error, report.rejected)
    assert report.withheld == {"GE": len(MEMBERS_ONLY)}
    return syncer


# --- withheld on the wire, in storage, on relay --------------------------------------------------


def test_members_only_entries_reach_anonymous_callers_as_leaf_hashes_only(two: Two, make_node: Callable[..., Node]) -> None:
    ge_rows = {r.seq: r for r in two.ge.store.log_rows("GE")}
    secret = {seq for seq, r in ge_rows.items() if r.restricted}
    names = {log.verify_entry(r.envelope, "GE", seq, two.ge.federation()).name for seq, r in ge_rows.items() if seq in secret}
    assert names == MEMBERS_ONLY  # the origin flags exactly its members-only contacts

    items = served_items(fetch(two.address, "GE", 1, len(ge_rows)))
    for seq, row in ge_rows.items():
        assert items[seq] == ((b"", row.leaf_hash) if seq in secret else (row.envelope, b"")), seq

    pulled_anonymously(two)
    rows = {r[0]: r for r in entry_rows(two.az, "GE")}
    for seq in secret:  # the position, as its leaf hash alone
        assert rows[seq] == (seq, "", log.WITHHELD, b"", ge_rows[seq].leaf_hash, None, True)
    assert all(rows[s][3] == ge_rows[s].envelope for s in ge_rows if s not in secret)
    assert records(two.az, "GE") == records(two.ge, "GE", public_only=True) != records(two.ge, "GE")
    assert all(two.az.store.record_row(n) is None for n in MEMBERS_ONLY)

    # verify checks their hashes against the signed root and says how many there are
    report = two.az.verify_report()
    assert report.problems == [] and report.withheld == {"GE": len(secret)}
    assert report.checked == len(ge_rows) + two.az.store.log_size("AZ")
    result = CliRunner().invoke(node_cli, ["verify", "--data-dir", str(two.az.config.data_dir), "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["withheld"] == {"GE": len(secret)}, result.output
    result = CliRunner().invoke(node_cli, ["verify", "--data-dir", str(two.az.config.data_dir)])
    assert f"({len(secret)} withheld" in result.output
    status = CliRunner().invoke(node_cli, ["status", "--data-dir", str(two.az.config.data_dir), "--format", "json"])
    ge_status = next(m for m in json.loads(status.stdout)["members"] if m["member"] == "GE")
    assert ge_status["withheld"] == len(secret)
    # rebuild and current_state cope with them
    before = snapshot(two.az)
    two.az.rebuild()
    assert snapshot(two.az) == before
    assert set(two.az.current_state("GE")) == {n for n, _, _ in records(two.ge, "GE", public_only=True)}

    # AZ relays them as it holds them: withheld, never more than it was given
    relay = NodeServer(two.az, "127.0.0.1:0", access_log=False)
    relay.start()
    try:
        assert served_items(fetch(relay.address, "GE", 1, len(ge_rows))) == items
        kz = make_node("KZ", MEMBERS)
        report2 = Syncer(kz, deadline=5.0).sync_peer(relay.address)
        assert report2.ok and report2.withheld == {"GE": len(secret)}
        assert entry_rows(kz, "GE") == entry_rows(two.az, "GE")
    finally:
        relay.stop(grace=0)


# --- filling in ----------------------------------------------------------------------------------


def test_a_peer_that_gives_them_whole_fills_them_in(two: Two) -> None:
    syncer = pulled_anonymously(two)
    member_view = HostilePeer(two.ge, "GE").start()  # serves them whole, as GE's node does to a member node
    member_view.member_node = True
    try:
        report = syncer.sync_peer(member_view.address)
        assert report.ok and report.pulled == {} and report.filled == {"GE": len(MEMBERS_ONLY)}
        secret = sorted(restricted_seqs(two.ge, "GE"))
        assert member_view.asked("GetEntries") == [(secret[0], secret[-1])]  # one contiguous run
        # AZ now holds exactly what GE holds: entries, flags, derived rows (members-only ones not public)
        assert entry_rows(two.az, "GE") == entry_rows(two.ge, "GE")
        assert records(two.az, "GE") == records(two.ge, "GE")
        assert two.az.verify_report().withheld == {} and two.az.verify()[1] == []
        again = syncer.sync_peer(member_view.address)
        assert again.ok and again.filled == {} and len(member_view.asked("GetEntries")) == 1  # nothing left to fill
    finally:
        member_view.stop()
    # and AZ still gives them to anonymous callers withheld
    relay = NodeServer(two.az, "127.0.0.1:0", access_log=False)
    relay.start()
    try:
        items = served_items(fetch(relay.address, "GE", 1, two.ge.store.log_size("GE")))
        assert {seq for seq, (env, leaf) in items.items() if not env and leaf} == restricted_seqs(two.ge, "GE")
    finally:
        relay.stop(grace=0)


def test_a_fill_whose_leaf_hash_differs_is_rejected_whole(two: Two) -> None:
    syncer = pulled_anonymously(two)
    secret = sorted(restricted_seqs(two.ge, "GE"))
    whole = {r.seq: r.envelope for r in two.ge.store.log_rows("GE")}
    real = log.verify_entry(whole[secret[-1]], "GE", secret[-1], two.ge.federation())
    # GE's key, GE's member and seq: it verifies like any entry, but it is not the one GE's root covers
    other = log.build_entry("GE", real.seq, real.name, None, real.publish_time, two.ge.signing_key(PASSPHRASE), "forged")
    liar = HostilePeer(two.ge, "GE").start()
    liar.serve_batches([(secret[0], [whole[s] for s in secret[:-1]] + [other.envelope])])  # the first ones are genuine
    try:
        before = snapshot(two.az)
        report = syncer.sync_peer(liar.address)
        assert [(m, r) for m, r, _ in report.rejected] == [("GE", "LEAF_HASH_MISMATCH")], report.rejected
        assert report.filled == {}
        counted = [(r.count, r.last_message) for r in two.az.store.rejections() if r.peer == liar.address]
        assert counted == [(1, report.rejected[0][2])] and f"seq {secret[-1]}" in counted[0][1]
        assert snapshot(two.az) == before  # not even the genuine ones before it
    finally:
        liar.stop()
    honest = HostilePeer(two.ge, "GE").start()
    honest.member_node = True
    try:
        assert syncer.sync_peer(honest.address).filled == {"GE": len(secret)}
        assert entry_rows(two.az, "GE") == entry_rows(two.ge, "GE")
    finally:
        honest.stop()


def test_a_peer_that_withholds_them_again_is_asked_once_a_pass(two: Two) -> None:
    syncer = pulled_anonymously(two)
    anonymous_view = HostilePeer(two.ge, "GE").start()  # an honest node that takes AZ for no member node
    try:
        before = snapshot(two.az)
        for passes in (1, 2):
            report = syncer.sync_peer(anonymous_view.address)
            assert report.ok and report.filled == {} and report.pulled == {}
            assert len(anonymous_view.asked("GetEntries")) == passes  # one try a pass, then it is left alone
        assert snapshot(two.az) == before and two.az.store.rejections() == []
    finally:
        anonymous_view.stop()


# --- publishing: public to members-only, and deletions ------------------------------------------------


def set_visibility(folder: Path, ident: str, visibility: str) -> None:
    path = folder / "contacts.yaml"
    text = path.read_text(encoding="utf-8")
    head, rest = text.split(f"- id: {ident}\n", 1)
    body, sep, tail = rest.partition("\n- id: ")
    body = "\n".join(f"  visibility: {visibility}" if line.startswith("  visibility:") else line for line in body.split("\n"))
    path.write_text(f"{head}- id: {ident}\n{body}{sep}{tail}", encoding="utf-8")


def drop_contact(folder: Path, ident: str) -> None:
    path = folder / "contacts.yaml"
    head, rest = path.read_text(encoding="utf-8").split(f"- id: {ident}\n", 1)
    _, sep, tail = rest.partition("\n- id: ")
    path.write_text(head + (f"- id: {tail}" if sep else ""), encoding="utf-8")


def test_a_public_record_made_members_only_is_tombstoned_first(two: Two) -> None:
    syncer = pulled_anonymously(two)
    name = "members/GE/contacts/mla-desk"
    assert two.az.store.record_row(name) is not None  # public: AZ holds it
    set_visibility(two.records, "mla-desk", "VISIBILITY_MEMBERS")
    size = two.ge.store.log_size("GE")

    dry = two.ge.publish(two.records, None, dry_run=True)
    assert dry.changed and [r.name for r in dry.changed] == [name] and dry.withdrawn == [name]
    plan = two.ge.publish(two.records, PASSPHRASE)
    assert plan.withdrawn == [name] and plan.appended == 2
    tombstone, members_only = two.ge.verified_entries("GE")[size:]
    assert (tombstone.kind, tombstone.name, tombstone.seq) == ("deletion", name, size + 1)
    assert (members_only.kind, members_only.name) == ("contact", name)
    assert [r.restricted for r in two.ge.store.log_rows("GE", size + 1)] == [False, True]
    assert two.ge.store.record_row(name) is not None and not two.ge.store.record_row(name).public  # type: ignore[union-attr]

    report = syncer.sync_peer(two.address)
    assert report.pulled == {"GE": 2} and report.withheld == {"GE": 1}
    assert two.az.store.record_row(name) is None  # the anonymous copy dropped the public version
    assert [(r.kind, r.envelope) for r in two.az.store.log_rows("GE", size + 1)] == [
        ("deletion", tombstone.envelope), (log.WITHHELD, b""),
    ]
    # made public again: no tombstone needed, the new version replaces nothing secret
    set_visibility(two.records, "mla-desk", "VISIBILITY_PUBLIC")
    again = two.ge.publish(two.records, PASSPHRASE)
    assert again.withdrawn == [] and again.appended == 1
    assert syncer.sync_peer(two.address).pulled == {"GE": 1}
    assert two.az.store.record_row(name) is not None


def test_a_deletion_of_a_members_only_record_is_members_only(two: Two) -> None:
    extra = two.records / "extra-contact.yaml"
    extra.write_text(
        "member: GE\ncontacts:\n- id: front-desk\n  display_names: [{language: en, text: Front desk}]\n"
        "  authority: pgo\n  role: central-authority-desk\n  visibility: VISIBILITY_PUBLIC\n",
        encoding="utf-8",
    )
    two.ge.publish(two.records, PASSPHRASE)
    syncer = pulled_anonymously(two)
    size = two.ge.store.log_size("GE")
    drop_contact(two.records, "directory-admin")  # members-only
    extra.unlink()  # public
    plan = two.ge.publish(two.records, PASSPHRASE, prune=True)
    assert sorted(plan.deleted) == ["members/GE/contacts/directory-admin", "members/GE/contacts/front-desk"]
    new = zip(two.ge.verified_entries("GE")[size:], two.ge.store.log_rows("GE", size + 1), strict=True)
    assert {e.name: r.restricted for e, r in new} == {
        "members/GE/contacts/directory-admin": True, "members/GE/contacts/front-desk": False,
    }
    assert two.az.store.record_row("members/GE/contacts/front-desk") is not None
    report = syncer.sync_peer(two.address)
    assert report.pulled == {"GE": 2} and report.withheld == {"GE": 1}  # the name of what was deleted stays secret
    assert two.az.store.record_row("members/GE/contacts/front-desk") is None
    assert two.az.verify()[1] == []


# --- flags of databases from before 0003 ------------------------------------------------------------


def alembic_config(store: Store) -> Config:
    from importlib import resources

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("directory_server.storage") / "migrations"))
    return cfg


def test_an_upgraded_database_gets_its_flags(two: Two) -> None:
    expected = restricted_seqs(two.ge, "GE")
    assert expected
    url = two.ge.store.url
    two.server.stop(grace=0)
    two.ge.store.close()
    old = Store(url)
    cfg = alembic_config(old)
    with old.engine.begin() as conn:  # back to the schema before flags existed
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    old.close()
    upgraded = Store(url)  # upgrading flags what is stored, in the migration's transaction
    try:
        assert {r.seq for r in upgraded.log_rows("GE") if r.restricted} == expected
    finally:
        upgraded.close()


def test_verify_names_a_wrong_flag_and_rebuild_repairs_it(two: Two) -> None:
    seq = min(restricted_seqs(two.ge, "GE"))
    with two.ge.store.engine.begin() as c:
        c.execute(update(models.EntryRow).where(models.EntryRow.member == "GE", models.EntryRow.seq == seq).values(restricted=False))
    problems = two.ge.verify()[1]
    assert [(p.member, p.seq, p.reason) for p in problems] == [("GE", seq, "RESTRICTED_FLAG_MISMATCH")]
    assert "served to anyone" in problems[0].message
    two.ge.rebuild()
    assert two.ge.verify()[1] == [] and seq in restricted_seqs(two.ge, "GE")
