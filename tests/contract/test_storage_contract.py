"""One contract, every backend: the guarantees documented in storage/store.py.

Runs on a SQLite file and, where it answers, on PostgreSQL (each test in its own
schema, dropped afterwards). Where PostgreSQL does not answer, its half is skipped
with the reason printed, and the run's summary says how many ran on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from counterpart.v1 import records_pb2
from counterpart_core import log, merkle, signing
from counterpart_core.errors import ConflictError
from counterpart_core.index import fold
from directory_server.storage.store import Store, sqlite_url, stage_id

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
KEY = signing.SigningKey.generate()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = sqlite_url(tmp_path) if request.param == "sqlite" else request.getfixturevalue("postgres_schema_url")
    s = Store(url)
    yield s
    s.close()


def authority(record_id: str, names: list[tuple[str, str]], *, national: bool = False, subdivisions: tuple[str, ...] = (),
              municipality: list[tuple[str, str]] | None = None, request_types: tuple[str, ...] = ("mla.general",),
              role: int = records_pb2.COMPETENCE_ROLE_EXECUTES) -> records_pb2.Authority:
    a = records_pb2.Authority(name=f"members/GE/authorities/{record_id}", kind="prosecution-office")
    for lang, text in names:
        a.display_names.add(language=lang, text=text)
    a.coverage.national = national
    a.coverage.subdivisions.extend(subdivisions)
    if municipality:
        m = a.coverage.municipalities.add(subdivision=subdivisions[0] if subdivisions else "")
        for lang, text in municipality:
            m.names.add(language=lang, text=text)
    a.competences.add(request_types=list(request_types), roles=[role])
    return a


def entries_for(records: list[records_pb2.Authority | records_pb2.Contact | None], start: int = 1,
                names: list[str] | None = None) -> list[log.LogEntry]:
    out = []
    for i, r in enumerate(records):
        name = r.name if r is not None else (names or [])[i]
        out.append(log.build_entry("GE", start + i, name, r, NOW, KEY))
    return out


def append(store: Store, entries: list[log.LogEntry], expected: int | None = None) -> log.LogCheckpoint:
    size = store.log_size("GE") if expected is None else expected
    hashes = store.leaf_hashes("GE") + [e.leaf_hash for e in entries]
    cp = log.build_checkpoint("GE", len(hashes), merkle.root_hash(hashes), NOW, KEY)
    store.append("GE", size, entries, cp)
    return cp


PGO = authority("pgo", [("ka", "საქართველოს პროკურატურა"), ("en", "Prosecutor's Office of Georgia")], national=True,
                role=records_pb2.COMPETENCE_ROLE_RECEIVES)
AJARA = authority("ajara", [("ka", "აჭარის პროკურატურა"), ("en", "Prosecutor's Office of Ajara")], subdivisions=("GE-AJ",),
                  municipality=[("ka", "ბათუმი"), ("en", "Batumi")], request_types=("mla.hearing.witness", "mla.general"))


class TestStorageContract:
    def test_empty_store(self, store: Store) -> None:
        assert store.log_size("GE") == 0
        assert store.checkpoint("GE") is None
        assert store.federation_envelope() is None
        assert store.envelopes("GE") == []

    def test_envelopes_come_back_byte_for_byte(self, store: Store) -> None:
        entries = entries_for([PGO, AJARA])
        cp = append(store, entries)
        assert store.envelopes("GE") == [(1, entries[0].envelope), (2, entries[1].envelope)]
        assert store.envelope("GE", 2) == entries[1].envelope
        assert store.leaf_hashes("GE") == [e.leaf_hash for e in entries]
        assert store.checkpoint("GE") == cp.envelope
        assert store.checkpoints() == {"GE": cp.envelope}
        assert store.members_with_logs() == ["GE"]

    def test_append_against_a_stale_size_stores_nothing(self, store: Store) -> None:
        append(store, entries_for([PGO]))
        before = (store.envelopes("GE"), store.checkpoint("GE"))
        late = entries_for([AJARA], start=1)  # computed against an empty log
        with pytest.raises(ConflictError):
            append(store, late, expected=0)
        assert (store.envelopes("GE"), store.checkpoint("GE")) == before
        assert store.record_row(AJARA.name) is None

    def test_gaps_and_wrong_checkpoints_are_refused(self, store: Store) -> None:
        with pytest.raises(ConflictError) as gap:
            append(store, entries_for([PGO], start=2), expected=0)
        assert gap.value.reason == "SEQ_GAP"
        entries = entries_for([PGO])
        wrong = log.build_checkpoint("GE", 5, merkle.root_hash([e.leaf_hash for e in entries]), NOW, KEY)
        with pytest.raises(ConflictError) as size:
            store.append("GE", 0, entries, wrong)
        assert size.value.reason == "CHECKPOINT_SIZE_MISMATCH"
        assert store.log_size("GE") == 0 and store.checkpoint("GE") is None

    def test_derived_state_follows_the_latest_entry(self, store: Store) -> None:
        append(store, entries_for([PGO, AJARA]))
        row = store.record_row(AJARA.name)
        assert row is not None and (row.seq, row.kind, row.member) == (2, "authority", "GE")
        renamed = records_pb2.Authority()
        renamed.CopyFrom(AJARA)
        renamed.display_names[1].text = "Ajara Regional Prosecutor"
        append(store, entries_for([renamed], start=3))
        row = store.record_row(AJARA.name)
        assert row is not None and row.seq == 3 and row.label == "Ajara Regional Prosecutor"
        append(store, entries_for([None], start=4, names=[AJARA.name]))
        assert store.record_row(AJARA.name) is None
        assert store.coverage([AJARA.name]) == []
        assert store.competences("GE", "mla.hearing.witness") == []
        assert store.log_size("GE") == 4  # history stays

    def test_search_in_any_script(self, store: Store) -> None:
        append(store, entries_for([PGO, AJARA]))
        assert [n for n, _ in store.search(fold("Batumi"), "GE", 10, 0)] == [AJARA.name]
        assert [n for n, _ in store.search(fold("ბათუმი"), None, 10, 0)] == [AJARA.name]
        assert [n for n, _ in store.search(fold("PROKURATURA"), "GE", 10, 0)] == [AJARA.name, PGO.name]
        assert store.search(fold("Lima"), None, 10, 0) == []
        assert store.search(fold("batumi"), "AZ", 10, 0) == []

    def test_a_match_in_a_name_ranks_before_a_match_in_a_place(self, store: Store) -> None:
        port = authority("port", [("en", "Batumi Port Police")], subdivisions=("GE-AJ",))
        append(store, entries_for([AJARA, port]))  # AJARA covers Batumi; "port" is named after it
        assert [n for n, _ in store.search(fold("batumi"), "GE", 10, 0)] == [port.name, AJARA.name]

    def test_lookup_indexes(self, store: Store) -> None:
        append(store, entries_for([PGO, AJARA]))
        comps = store.competences("GE", "mla.hearing.witness")
        assert [(c.name, c.role) for c in comps] == [(AJARA.name, records_pb2.COMPETENCE_ROLE_EXECUTES)]
        levels = sorted((c.name, c.level, c.key) for c in store.coverage([PGO.name, AJARA.name]))
        assert (PGO.name, 1, "GE") in levels and (AJARA.name, 2, "GE-AJ") in levels and (AJARA.name, 3, "batumi") in levels
        assert [p.subdivision for p in store.places("GE", "batumi")] == ["GE-AJ"]

    def test_listing_pages_and_filters(self, store: Store) -> None:
        contact = records_pb2.Contact(name="members/GE/contacts/desk", authority=PGO.name, role="24-7-point",
                                      visibility=records_pb2.VISIBILITY_MEMBERS)
        contact.display_names.add(language="en", text="24/7 point")
        append(store, entries_for([PGO, AJARA, contact]))
        first = store.list_rows("authority", "GE", "", 1, public_only=True)
        assert [r.name for r in first] == [AJARA.name]
        assert [r.name for r in store.list_rows("authority", "GE", first[-1].name, 1, public_only=True)] == [PGO.name]
        assert store.list_rows("contact", None, "", 10, public_only=True) == []
        assert [r.name for r in store.list_rows("contact", None, "", 10, public_only=False)] == [contact.name]
        assert [r.name for r in store.list_rows("authority", None, "", 10, True, [("kind", "=", "prosecution-office"), ("parent", "!=", "x")])] == [AJARA.name, PGO.name]
        assert store.list_rows("authority", None, "", 10, True, [("kind", "=", "court")]) == []
        assert store.count_records("GE") == {"authority": 2, "contact": 1}

    def test_heartbeat_checkpoint_replaces_only_at_the_same_size(self, store: Store) -> None:
        entries = entries_for([PGO])
        append(store, entries)
        later = log.build_checkpoint("GE", 1, merkle.root_hash([entries[0].leaf_hash]), NOW + timedelta(hours=1), KEY)
        store.put_checkpoint(later)
        assert store.checkpoint("GE") == later.envelope
        row = store.checkpoint_row("GE")
        assert row is not None and row.issue_time == NOW + timedelta(hours=1)
        with pytest.raises(ConflictError):
            store.put_checkpoint(log.build_checkpoint("GE", 2, b"\x00" * 32, NOW, KEY))
        assert store.checkpoint("GE") == later.envelope

    def test_federation_versions_only_move_forward(self, store: Store) -> None:
        store.put_federation(1, b"v1", NOW)
        store.put_federation(2, b"v2", NOW)
        for bad in (2, 4, 1):
            with pytest.raises(ConflictError):
                store.put_federation(bad, b"x", NOW)
        assert store.federation_envelope() == b"v2"
        assert store.federation_chain() == [b"v1", b"v2"]
        assert store.federation_chain(2) == [b"v2"]

    def test_rebuild_replaces_all_derived_rows(self, store: Store) -> None:
        entries = entries_for([PGO, AJARA])
        append(store, entries)
        assert store.rebuild_derived({"GE": entries[:1]}) == 1
        assert store.record_row(AJARA.name) is None
        assert store.rebuild_derived({"GE": entries}) == 2
        assert store.record_row(AJARA.name) is not None

    def test_withheld_entries_flags_and_fill(self, store: Store) -> None:
        """Members-only flags as entries are appended; a withheld position (its leaf hash
        only); a fill that replaces it in one transaction, or changes nothing."""
        members_only = contact("person", records_pb2.VISIBILITY_MEMBERS)
        hidden = log.build_entry("GE", 3, "members/GE/contacts/hidden", contact("hidden", records_pb2.VISIBILITY_MEMBERS), NOW, KEY)
        entries = [
            *entries_for([PGO, members_only]),  # 1 public, 2 members-only
            log.withheld_entry("GE", 3, hidden.leaf_hash),  # a peer withheld it
            *entries_for([None, None], start=4, names=[members_only.name, PGO.name]),  # 4 its deletion, 5 PGO's
        ]
        hashes = [e.leaf_hash for e in entries]
        store.append("GE", 0, entries, log.build_checkpoint("GE", 5, merkle.root_hash(hashes), NOW, KEY),
                     ambiguous_restricted=False)
        rows = store.log_rows("GE")
        assert [(r.kind, r.restricted) for r in rows] == [
            ("authority", False), ("contact", True), ("withheld", True), ("deletion", True), ("deletion", False),
        ]
        assert rows[2].envelope == b"" and rows[2].leaf_hash == hidden.leaf_hash and store.leaf_hashes("GE") == hashes
        assert store.withheld_hashes("GE") == {3: hidden.leaf_hash} and store.withheld_counts() == {"GE": 1}
        assert store.record_row(hidden.name) is None

        before = (store.log_rows("GE"), store.checkpoint("GE"))
        other = log.build_entry("GE", 3, "members/GE/contacts/other", None, NOW, KEY)
        for wrong in ([other], [hidden, log.build_entry("GE", 4, members_only.name, None, NOW, KEY)]):
            with pytest.raises(ConflictError) as e:  # another hash; a position that is not withheld
                store.fill("GE", wrong)
            assert e.value.reason == "FILL_CONFLICT"
            assert (store.log_rows("GE"), store.checkpoint("GE")) == before

        assert store.fill("GE", [hidden]) == 1
        rows = store.log_rows("GE")
        assert (rows[2].kind, rows[2].envelope, rows[2].restricted) == ("contact", hidden.envelope, True)
        assert [r.restricted for r in rows] == [False, True, True, True, False]
        row = store.record_row(hidden.name)
        assert row is not None and row.seq == 3 and not row.public
        assert store.withheld_hashes("GE") == {} and store.leaf_hashes("GE") == hashes

    def test_a_fill_settles_an_ambiguous_deletion(self, store: Store) -> None:
        """A deletion behind a withheld entry took the flag it was given; once that entry is
        filled, its flag follows from what it deletes."""
        public_desk = contact("desk", records_pb2.VISIBILITY_PUBLIC)
        hidden = log.build_entry("GE", 2, "members/GE/contacts/hidden", contact("hidden", records_pb2.VISIBILITY_MEMBERS), NOW, KEY)
        entries = [
            *entries_for([public_desk]), log.withheld_entry("GE", 2, hidden.leaf_hash),
            *entries_for([None], start=3, names=[public_desk.name]),
        ]
        hashes = [e.leaf_hash for e in entries]
        store.append("GE", 0, entries, log.build_checkpoint("GE", 3, merkle.root_hash(hashes), NOW, KEY))
        assert [r.restricted for r in store.log_rows("GE")] == [False, True, True]  # ambiguous: fail closed
        store.fill("GE", [hidden])
        assert [r.restricted for r in store.log_rows("GE")] == [False, True, False]  # it deleted a public record


def contact(ident: str, visibility: int) -> records_pb2.Contact:
    c = records_pb2.Contact(name=f"members/GE/contacts/{ident}", authority=PGO.name, role="desk", visibility=visibility)
    c.display_names.add(language="en", text=ident)
    return c


def test_a_staged_range_is_stored_as_append_stores_it_and_only_whole(store: Store, tmp_path: Path) -> None:
    """``append_staged`` (a long pull, staged as it streams) leaves what ``append`` leaves:
    the same entries, flags, derived rows and checkpoint; a stage missing an entry stores
    nothing, and a stage is never part of the log before it is appended."""
    first = entries_for([PGO, AJARA])
    append(store, first)
    more = entries_for([authority("x", [("en", "X")], national=True), None, AJARA], start=3,
                       names=["", "members/GE/authorities/pgo", ""])
    hashes = store.leaf_hashes("GE") + [e.leaf_hash for e in more]
    tree = merkle.CompactRange.from_leaf_hashes(hashes)
    cp = log.build_checkpoint("GE", len(hashes), tree.root(), NOW, KEY)
    latest = {e.name: e.seq for e in more}

    store.stage("s1", more[:2])  # one entry short
    with pytest.raises(ConflictError):
        store.append_staged("s1", "GE", 2, latest, tree, cp)
    assert store.log_size("GE") == 2 and store.checkpoint("GE") != cp.envelope
    store.stage("s1", more[2:])
    assert store.log_size("GE") == 2  # staged, not in the log
    store.append_staged("s1", "GE", 2, latest, tree, cp)

    (tmp_path / "reference").mkdir()
    reference = Store(sqlite_url(tmp_path / "reference"))  # the same range, appended from memory
    try:
        append(reference, first)
        reference.append("GE", 2, more, cp)
        assert store.log_rows("GE") == reference.log_rows("GE")
        assert store.checkpoint("GE") == reference.checkpoint("GE") == cp.envelope
        assert store.current_seqs("GE") == reference.current_seqs("GE") == {
            "members/GE/authorities/ajara": 5, "members/GE/authorities/x": 3}
        assert store.frontier("GE").frontier == reference.frontier("GE").frontier == tree.frontier
    finally:
        reference.close()
    store.drop_stages()


def test_only_old_stages_are_dropped_while_other_processes_may_be_pulling(store: Store) -> None:
    """With several serving processes over one database, a process that starts drops the
    stages killed processes left (older than any pull) and keeps the one another process is
    filling now: that pull still commits; the old stage no longer holds its range."""
    append(store, entries_for([PGO, AJARA]))
    more = entries_for([authority("x", [("en", "X")], national=True)], start=3)
    tree = merkle.CompactRange.from_leaf_hashes(store.leaf_hashes("GE") + [e.leaf_hash for e in more])
    cp = log.build_checkpoint("GE", 3, tree.root(), NOW, KEY)
    latest = {e.name: e.seq for e in more}
    now = time.time()
    old, fresh = stage_id(now - 2 * 24 * 3600), stage_id(now)
    assert len(old) == len(fresh) == 32 and old < fresh
    store.stage(old, more)
    store.stage(fresh, more)

    store.drop_stages(started_before=now - 3600)

    with pytest.raises(ConflictError):
        store.append_staged(old, "GE", 2, latest, tree, cp)
    assert store.log_size("GE") == 2
    store.append_staged(fresh, "GE", 2, latest, tree, cp)
    assert store.log_size("GE") == 3 and store.checkpoint("GE") == cp.envelope


def test_peer_sizes_only_grow_and_the_success_time_moves(store: Store) -> None:
    """``note_peer_checkpoints`` (driver SQL on both backends): a new pair is inserted, a known
    one keeps the largest size shown and the last success time."""
    first = datetime(2026, 1, 1, tzinfo=UTC)
    store.note_peer_checkpoints("peer-a", {"GE": 5, "AZ": 2}, first)
    store.note_peer_checkpoints("peer-a", {"GE": 3, "AZ": 7}, first + timedelta(minutes=1))
    store.note_peer_checkpoints("peer-b", {"GE": 1}, first)
    assert store.peer_sizes("peer-a") == {"GE": 5, "AZ": 7}
    assert store.peer_sizes("peer-b") == {"GE": 1}
    times = {
        (r.peer, r.member): t if (t := r.last_success_time).tzinfo else t.replace(tzinfo=UTC)  # SQLite: naive UTC
        for r in store.peer_rows()
    }
    assert times[("peer-a", "GE")] == first + timedelta(minutes=1)
    assert times[("peer-b", "GE")] == first
