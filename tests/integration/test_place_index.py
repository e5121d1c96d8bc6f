"""A place is resolved from the few rows of the places index the query needs
(``places.names_needed``), not from every name of the member: over the whole sample
federation, every answer and every error is byte for byte the one resolving over every
name gives, and an exact name reads no member's whole list of names. Real SQLite file,
real signatures; statements counted, nothing timed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import Clock, Federation  # type: ignore[import-not-found, unused-ignore]
from sqlalchemy import event
from tests_support_federation import MEMBERS, whole_federation  # type: ignore[import-not-found, unused-ignore]

from counterpart.v1 import directory_service_pb2 as ds
from counterpart_core import index, places, signing
from counterpart_core.errors import CounterpartError
from directory_server.lookup import Directory
from directory_server.storage.store import Store

WHOLE_LIST = "ORDER BY id"  # only the read of every name of a member orders by id without a condition on the name


def _queries(store: Store, member: str) -> list[str]:
    """Every name the member's places index holds, as written and in capitals; every
    subdivision code, one it lacks and one of another member; typos, postal codes, nothing."""
    rows = store.place_rows(member)
    names = sorted({display for _, display, _, _, _ in rows})
    codes = sorted({sub for _, _, _, sub, _ in rows if sub})
    other = next(m for m in MEMBERS if m != member)
    typos = [n[:-1] + "y" for n in names[::3] if len(n) > 4]
    return names + [n.upper() for n in names] + codes + [f"{member}-QQ", f"{other}-AA"] + typos + [
        "Atlantis", "0105", "  ", "",
    ]


def _outcome(directory: Directory, member: str, place: str) -> tuple[str, ...]:
    request = ds.FindCounterpartRequest(requested_member=member, request_type="extradition", place=place)
    try:
        return ("answer", directory.find_counterpart(request).SerializeToString(deterministic=True).hex())
    except CounterpartError as exc:
        return ("error", type(exc).__name__, exc.reason, str(exc), repr(sorted(exc.metadata.items())))


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Callable[[], Directory]]:
    root = tmp_path_factory.mktemp("places")
    clock = Clock(datetime(2026, 12, 1, 12, tzinfo=UTC))
    store, _directory, nodes = whole_federation(root, Federation([signing.SigningKey.generate()]), clock)
    return store, lambda: Directory(store, nodes[0].federation, clock)


def test_resolving_from_the_index_answers_as_resolving_over_every_name(
    federation: tuple[Store, Callable[[], Directory]], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, make = federation
    questions = [(m, q) for m in MEMBERS for q in _queries(store, m)]
    indexed = make()
    from_index = {question: _outcome(indexed, *question) for question in questions}
    monkeypatch.setattr(places, "names_needed", lambda query, member: None if not query.strip() else ("whole", ""))
    monkeypatch.setattr(Directory, "_place_part", lambda self, idx, needed: None)
    whole = make()
    over_every_name = {question: _outcome(whole, *question) for question in questions}
    differ = [q for q in questions if from_index[q] != over_every_name[q]]
    assert differ == []
    kinds = {o[0] if o[0] == "answer" else o[2] for o in from_index.values()}
    # the comparison covered answers, ambiguity-free typos and each kind of refusal
    assert {"answer", "PLACE_NOT_FOUND", "PLACE_OUTSIDE_MEMBER"} <= kinds, kinds
    assert len(questions) > 500


def _resolved(query: str, member: str, names: list[places.PlaceName]) -> object:
    try:
        return places.resolve(query, member, names)
    except CounterpartError as exc:
        return (exc.reason, str(exc))


def test_the_rows_a_query_needs_resolve_as_every_name(federation: tuple[Store, Callable[[], Directory]]) -> None:
    """Each place's every name (``folded_names``, which coverage is matched by) and the name
    shown come out the same from the part as from the whole list, whenever the part holds a
    match; and the part is empty exactly when it holds none."""
    store, _ = federation
    compared = 0
    for member in MEMBERS:
        every = [places.PlaceName(*r) for r in store.place_rows(member)]
        for query in _queries(store, member):
            needed = places.names_needed(query, member)
            if needed is None:
                assert _resolved(query, member, []) == _resolved(query, member, every)
                continue
            kind, value = needed
            if kind == "subdivision":
                rows = store.subdivision_rows(member, value)
                any_subdivision = store.has_subdivisions(member)
                assert any_subdivision == any(n.kind == index.PLACE_SUBDIVISION for n in every)
                if not rows and any_subdivision:
                    continue
            else:
                rows = store.folded_rows(member, value)
                if not rows:
                    assert not any(n.folded == value for n in every)
                    continue
            assert _resolved(query, member, [places.PlaceName(*r) for r in rows]) == _resolved(query, member, every)
            compared += 1
    assert compared > 300


def test_an_exact_name_or_code_reads_only_its_rows(federation: tuple[Store, Callable[[], Directory]]) -> None:
    store, make = federation
    whole_reads: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM places" in statement and statement.rstrip().endswith(WHOLE_LIST) and "name IN" not in statement:
            whole_reads.append(statement)

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        directory = make()
        for place in ("Batumi", "ბათუმი", "GE-AJ", "Adjara", "Tbilisi"):
            assert _outcome(directory, "GE", place)[0] == "answer"
        assert whole_reads == []
        assert _outcome(directory, "GE", "Batumy")[0] == "answer"  # a typo: every name, read once
        assert len(whole_reads) == 1
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)


def test_every_name_is_read_in_the_order_it_was_derived(federation: tuple[Store, Callable[[], Directory]]) -> None:
    """``resolve`` takes the first of equal names: the whole list and its parts keep one order."""
    store, _ = federation
    for member in MEMBERS:
        rows = store.place_rows(member)
        for folded in {f for f, _, _, _, _ in rows}:
            part = store.folded_rows(member, folded)
            assert part == [r for r in rows if r in part]
