"""What lookups keep in memory (directory_server/memberindex.py) is right, private and bounded:
a kept answer never outlives the checkpoint it was made for, whichever Store or process
committed the new one; an anonymous caller never gets a piece made for a signed-in one; a
kept members-only answer is still audited; and every cache holds at most what its limit says.
Real SQLite files, real signatures, real publishes; SQL statements are counted, nothing timed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSPHRASE  # type: ignore[import-not-found, unused-ignore]
from sqlalchemy import event
from tests_support_records import GOOD_RECORDS  # type: ignore[import-not-found, unused-ignore]
from tests_support_tls import members_only_sentinels  # type: ignore[import-not-found, unused-ignore]

from counterpart.v1 import directory_service_pb2 as ds
from counterpart_core.access import ANONYMOUS, Caller
from counterpart_core.errors import ConflictError
from directory_server import memberindex
from directory_server.asof import AsOfViews
from directory_server.lookup import Directory
from directory_server.memberindex import Indexes, Kept
from directory_server.node import Node
from directory_server.storage.store import Store

PROSECUTOR = Caller("user", member="GE", subject="prosecutor.1", role="prosecutor", token_id="t-1")
URGENT = ds.FindCounterpartRequest(requested_member="GE", request_type="mla.general", urgent=True)
SENTINELS = members_only_sentinels("GE")
OLD_EMAIL = "international-cooperation@pgo.ge.example"
NEW_EMAIL = "new-desk@pgo.ge.example"


@pytest.fixture
def ge(make_node: Callable[..., Node], sample_dir: Callable[[str], Path]) -> tuple[Node, Path]:
    node = make_node("GE", ["GE", "AZ", "AM"])
    folder = sample_dir("GE")
    node.publish(folder, PASSPHRASE)
    return node, folder


def _edit(folder: Path) -> None:
    path = folder / "authorities.yaml"
    text = path.read_text(encoding="utf-8")
    assert OLD_EMAIL in text
    path.write_text(text.replace(OLD_EMAIL, NEW_EMAIL, 1), encoding="utf-8")


def _size(resp: ds.FindCounterpartResponse) -> int:
    return next(p.checkpoint_size for p in resp.provenances if p.member == "GE")


class Statements:
    """Counts the SQL statements a Store's engine runs."""

    def __init__(self, store: Store) -> None:
        self.count = 0
        event.listen(store.engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: Any) -> None:
        self.count += 1

    def during(self, call: Callable[[], Any]) -> int:
        before = self.count
        call()
        return self.count - before


@pytest.fixture
def other_store(ge: tuple[Node, Path]) -> Iterator[Store]:
    store = Store(ge[0].config.db_url)
    yield store
    store.close()


def test_a_kept_answer_costs_no_statement_and_equals_a_fresh_one(ge: tuple[Node, Path]) -> None:
    node, _ = ge
    directory = Directory(node.store, node.federation, node.clock)
    statements = Statements(node.store)
    first = directory.find_counterpart(URGENT)
    reads = node.store.generation_reader.reads
    # the generations come through the reader, which reads nothing while nothing was committed
    assert statements.during(lambda: directory.find_counterpart(URGENT)) == 0
    assert node.store.generation_reader.reads == reads
    again = directory.find_counterpart(URGENT)
    fresh = Directory(node.store, node.federation, node.clock).find_counterpart(URGENT)
    assert again == first == fresh


def test_a_new_checkpoint_invalidates_what_was_kept(ge: tuple[Node, Path]) -> None:
    node, folder = ge
    directory = Directory(node.store, node.federation, node.clock)
    before = directory.find_counterpart(URGENT)
    assert OLD_EMAIL.encode() in before.SerializeToString()
    _edit(folder)
    assert node.publish(folder, PASSPHRASE).appended == 1
    after = directory.find_counterpart(URGENT)
    assert NEW_EMAIL.encode() in after.SerializeToString() and OLD_EMAIL.encode() not in after.SerializeToString()
    assert _size(after) == _size(before) + 1
    assert {p.tree_size for p in after.proofs} == {_size(after)}  # every proof against the new checkpoint


def test_a_checkpoint_committed_through_another_store_invalidates(
    ge: tuple[Node, Path], other_store: Store
) -> None:
    node, folder = ge
    directory = Directory(other_store, node.federation, node.clock)  # reads the file through its own engine
    before = directory.find_counterpart(URGENT)
    _edit(folder)
    node.publish(folder, PASSPHRASE)  # the node's own Store commits
    after = directory.find_counterpart(URGENT)
    assert _size(after) == _size(before) + 1 and NEW_EMAIL.encode() in after.SerializeToString()


def test_a_checkpoint_committed_by_another_process_invalidates(ge: tuple[Node, Path], other_store: Store) -> None:
    node, folder = ge
    directory = Directory(other_store, node.federation, node.clock)
    views = AsOfViews(other_store, node.federation, node.clock)  # the servicer's path
    before = views.find_counterpart(directory, URGENT)
    _edit(folder)
    _publish_elsewhere(node, folder)
    after = views.find_counterpart(directory, URGENT)
    assert _size(after) == _size(before) + 1 and NEW_EMAIL.encode() in after.SerializeToString()


@pytest.mark.parametrize("path", ["current", "servicer"])
@pytest.mark.parametrize("first", [PROSECUTOR, ANONYMOUS], ids=["signed-in-first", "anonymous-first"])
def test_anonymous_answers_never_hold_members_only_data(ge: tuple[Node, Path], first: Caller, path: str) -> None:
    """``current``: the Directory's own path; ``servicer``: through the as-of views, which
    answer over GE's dated sample records with a view of now (a Directory of its own)."""
    node, _ = ge
    directory = Directory(node.store, node.federation, node.clock)
    views = AsOfViews(node.store, node.federation, node.clock)
    for caller in (first, PROSECUTOR if first is ANONYMOUS else ANONYMOUS, PROSECUTOR, ANONYMOUS):
        for _ in range(2):  # the second one from what was kept
            if path == "current":
                resp = directory.find_counterpart(URGENT, caller)
            else:
                resp = views.find_counterpart(directory, URGENT, caller)
            raw = resp.SerializeToString()
            if caller.sees_members_only:
                assert any(s in raw for s in SENTINELS), "the test needs an answer that shows members-only contacts"
                assert resp.withheld_contacts == 0
            else:
                assert not [s for s in SENTINELS if s in raw]
                assert resp.withheld_contacts > 0
                assert all(p.state.scope == ds.STATE_SCOPE_PUBLIC for p in resp.proofs if p.HasField("state"))
    if path == "current":
        assert directory.indexes.stats()["answers"] == 2  # one per visibility


def test_members_only_records_from_a_kept_answer_are_still_audited(ge: tuple[Node, Path]) -> None:
    node, _ = ge
    directory = Directory(node.store, node.federation, node.clock)
    start = node.store.audit_count()
    directory.find_counterpart(URGENT, PROSECUTOR)
    served = node.store.audit_count() - start
    assert served > 0
    directory.find_counterpart(URGENT, PROSECUTOR)
    assert node.store.audit_count() - start == 2 * served
    directory.find_counterpart(URGENT)  # anonymous: nothing members-only served, nothing audited
    assert node.store.audit_count() - start == 2 * served


QUESTIONS = [
    ds.FindCounterpartRequest(requested_member="GE", request_type=t, place=p)
    for t in ("mla.general", "mla.hearing.witness", "extradition")
    for p in ("", "Batumi", "GE-AJ", "Kutaisi")
]


def test_every_cache_is_bounded(ge: tuple[Node, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    node, _ = ge
    monkeypatch.setattr(memberindex, "MAX_KEPT_PER_MEMBER", 3)
    monkeypatch.setattr(memberindex, "MAX_PIECES_PER_MEMBER", 2)
    directory = Directory(node.store, node.federation, node.clock)
    directory.indexes = Indexes(max_light=1, max_heavy=1, max_answers=1)
    answers = [directory.find_counterpart(q) for q in QUESTIONS]
    stats = directory.indexes.stats()
    assert stats["answers"] == 1  # the newest only: one answer already weighs more than the limit
    assert stats["members"] == 1 and stats["heavy_members"] == 1
    assert stats["kept"] <= 2 * 3 and stats["pieces"] <= 2
    # and nothing is lost but time: the same answers as with room for everything
    roomy = Directory(node.store, node.federation, node.clock)
    assert [roomy.find_counterpart(q) for q in QUESTIONS] == answers
    assert roomy.indexes.stats()["answers"] == len(QUESTIONS)


def test_kept_drops_the_least_recently_used_first() -> None:
    kept: Kept[str, int] = Kept(limit=3, max_weight=100)
    assert kept.keep("a", 1, 10) == 10
    kept.keep("b", 2, 10)
    kept.keep("c", 3, 10)
    assert kept.find("a") == (True, 1)  # now the most recently used
    assert kept.keep("d", 4, 10) == 0  # b goes
    assert list(kept) == ["c", "a", "d"]
    assert kept.keep("e", 5, 90) == 90 - 20  # c and a go: at most 3 items and 100 of weight
    assert list(kept) == ["d", "e"] and kept.weight == 100
    assert kept.find("b") == (False, None)


def test_scattered_eviction_keeps_most_of_a_cycle_longer_than_the_cache() -> None:
    """Asked in a cycle of 12 with room for 9, LRU keeps none at the time each is asked again;
    random eviction keeps most of them, and the bounds hold either way."""
    hits = {}
    for scattered in (False, True):
        kept: Kept[int, int] = Kept(limit=9, scattered=scattered)
        found = 0
        for i in range(1200):
            found += kept.find(i % 12)[0]
            if not kept.find(i % 12)[0]:
                kept.keep(i % 12, i, 1)
            assert len(kept) <= 9 and kept.weight == len(kept)
        hits[scattered] = found
    assert hits[False] == 0 and hits[True] > 600



def _publish_elsewhere(node: Node, folder: Path) -> None:
    """Publish ``folder`` as the node, from a process of its own."""
    script = (
        "import sys; from pathlib import Path; from directory_server.config import load_config; "
        "from directory_server.node import Node; "
        "n = Node(load_config(Path(sys.argv[1]))); print(n.publish(Path(sys.argv[2]), sys.argv[3].encode()).appended)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(node.config.data_dir), str(folder), PASSPHRASE.decode()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


@pytest.mark.parametrize("committer", ["same store", "another store", "another process"])
def test_lookup_generations_are_read_again_after_any_commit_and_only_then(
    ge: tuple[Node, Path], other_store: Store, committer: str
) -> None:
    """SQLite: the reader sends no query while nothing was committed (``PRAGMA data_version``),
    and after a commit by any connection, of this process or another, reads the new one."""
    node, folder = ge
    reading = node.store if committer == "same store" else other_store
    reader = reading.generation_reader
    before = reading.lookup_generations(["GE", "AZ"])
    assert before == node.store.generations(["GE", "AZ"]) and set(before) == {"GE"}  # AZ: nothing held
    reads = reader.reads
    for _ in range(3):
        assert reading.lookup_generations(["GE", "AZ"]) == before
    assert reader.reads == reads  # nothing committed: nothing read
    _edit(folder)
    if committer == "another process":
        _publish_elsewhere(node, folder)
    else:
        assert node.publish(folder, PASSPHRASE).appended == 1
    after = reading.lookup_generations(["GE"])
    assert after == node.store.generations(["GE"]) and after["GE"].size == before["GE"].size + 1
    assert reader.reads == reads + 1


def test_a_kept_answer_on_the_servicer_path_sends_no_query_until_a_commit(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """Over records without effective dates the servicer's path answers from the kept answer:
    no statement through the pool, no read of the generations; a publish is seen at once."""
    node = make_node("GE", ["GE", "AZ"])
    folder = tmp_path / "rec"
    folder.mkdir()
    (folder / "r.yaml").write_text(GOOD_RECORDS, encoding="utf-8")
    node.publish(folder, PASSPHRASE)
    directory = Directory(node.store, node.federation, node.clock)
    views = AsOfViews(node.store, node.federation, node.clock)
    question = ds.FindCounterpartRequest(requested_member="GE", requesting_member="AZ", request_type="mla.hearing.witness")
    first = views.find_counterpart(directory, question)
    statements = Statements(node.store)
    reads = node.store.generation_reader.reads
    assert statements.during(lambda: views.find_counterpart(directory, question)) == 0
    assert node.store.generation_reader.reads == reads
    (folder / "r.yaml").write_text(GOOD_RECORDS.replace("Ajara", "Adjara"), encoding="utf-8")
    assert node.publish(folder, PASSPHRASE).appended >= 1
    after = views.find_counterpart(directory, question)
    assert _size(after) > _size(first)
    assert {p.tree_size for p in after.proofs} == {_size(after)}


def test_a_kept_answer_states_its_provenance_as_of_each_call(make_node: Callable[..., Node], tmp_path: Path) -> None:
    """The provenance of a kept answer is made at each call: its checkpoint ages with the
    clock, and past the checkpoint's expiry the answer says the data is stale, as a fresh one."""
    node = make_node("GE", ["GE", "AZ"])
    folder = tmp_path / "rec"
    folder.mkdir()
    (folder / "r.yaml").write_text(GOOD_RECORDS, encoding="utf-8")
    node.publish(folder, PASSPHRASE)
    now = [node.clock()]

    def clock() -> datetime:
        return now[0]

    directory = Directory(node.store, node.federation, clock)
    views = AsOfViews(node.store, node.federation, clock)
    question = ds.FindCounterpartRequest(requested_member="GE", requesting_member="AZ", request_type="mla.hearing.witness")

    def fresh() -> ds.FindCounterpartResponse:
        return AsOfViews(node.store, node.federation, clock).find_counterpart(
            Directory(node.store, node.federation, clock), question
        )

    def ages(resp: ds.FindCounterpartResponse) -> dict[str, timedelta]:
        return {p.member: p.checkpoint_age.ToTimedelta() for p in resp.provenances}

    first = views.find_counterpart(directory, question)
    assert [p.member for p in first.provenances] == ["GE"] and not first.provenances[0].stale
    now[0] += timedelta(hours=1, microseconds=7)
    kept = views.find_counterpart(directory, question)
    assert directory.indexes.stats()["answers"] == 1  # answered from what was kept
    assert ages(kept)["GE"] - ages(first)["GE"] == timedelta(hours=1, microseconds=7)
    assert kept == fresh() and kept.as_of.time.ToDatetime(tzinfo=UTC) == now[0]
    now[0] = first.provenances[0].checkpoint_expire_time.ToDatetime(tzinfo=UTC) + timedelta(seconds=1)
    stale = views.find_counterpart(directory, question)
    assert directory.indexes.stats()["answers"] == 1
    assert stale.provenances[0].stale and "the data of GE is stale: its latest checkpoint expired" in stale.warnings
    assert stale == fresh()


def test_on_postgres_a_commit_through_another_store_is_seen_by_the_next_lookup(
    make_node: Callable[..., Node], postgres_schema_url: str, tmp_path: Path
) -> None:
    """Serving processes on several machines share one PostgreSQL database: every lookup
    reads the generations (one prepared query), so a commit anywhere is seen at once."""
    node = make_node("GE", ["GE", "AZ"], database_url=postgres_schema_url)
    folder = tmp_path / "rec"
    folder.mkdir()
    (folder / "r.yaml").write_text(GOOD_RECORDS, encoding="utf-8")
    node.publish(folder, PASSPHRASE)
    elsewhere = Store(postgres_schema_url)  # another machine's serving process
    try:
        directory = Directory(elsewhere, node.federation, node.clock)
        views = AsOfViews(elsewhere, node.federation, node.clock)
        question = ds.FindCounterpartRequest(requested_member="GE", request_type="mla.hearing.witness")
        first = views.find_counterpart(directory, question)
        reads = elsewhere.generation_reader.reads
        assert views.find_counterpart(directory, question) == first
        assert elsewhere.generation_reader.reads == reads + 1
        (folder / "r.yaml").write_text(GOOD_RECORDS.replace("Ajara", "Adjara"), encoding="utf-8")
        assert node.publish(folder, PASSPHRASE).appended >= 1
        after = views.find_counterpart(directory, question)
        assert _size(after) > _size(first)
        assert elsewhere.lookup_generations(["GE"]) == node.store.generations(["GE"])
    finally:
        elsewhere.close()


def test_a_publish_while_a_place_is_read_gives_retry_then_the_new_answer(
    ge: tuple[Node, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A place read from part of the places index (``Directory._place_part``) is checked
    against the generation the answer is made for: a checkpoint committed in between (a real
    publish, here right after the read) refuses the answer with RETRY before anything of the answer is
    loaded over the new rows, and the question asked again is answered from the new one."""
    node, folder = ge
    directory = Directory(node.store, node.federation, node.clock)
    question = ds.FindCounterpartRequest(requested_member="GE", request_type="mla.general", place="Batumi")
    before = _size(directory.find_counterpart(URGENT))
    read = node.store.folded_rows
    published: list[int] = []

    def read_then_publish(member: str, folded: str) -> list[tuple[str, str, str, str, int]]:
        rows = read(member, folded)
        if not published:
            _edit(folder)
            published.append(node.publish(folder, PASSPHRASE).appended)
        return rows

    keys = node.store.record_keys
    loaded_after: list[Sequence[str]] = []

    def record_keys(names: Sequence[str], envelopes: Any = None) -> Any:
        if published:
            loaded_after.append(names)
        return keys(names, envelopes)

    monkeypatch.setattr(node.store, "folded_rows", read_then_publish)
    monkeypatch.setattr(node.store, "record_keys", record_keys)
    with pytest.raises(ConflictError) as refused:
        directory.find_counterpart(question)
    # refused at the place's read: no record was loaded over the new checkpoint's rows
    assert refused.value.reason == "RETRY" and published == [1] and loaded_after == []
    again = directory.find_counterpart(question)
    assert _size(again) == before + 1 and NEW_EMAIL.encode() in again.SerializeToString()
