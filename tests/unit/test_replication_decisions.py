"""Sync decisions and range verification, without I/O (domain/replication.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from conftest import Federation  # type: ignore[import-not-found, unused-ignore]
from hypothesis import given, settings
from hypothesis import strategies as st

from counterpart.v1 import federation_pb2
from directory_server.domain import federation as fed
from directory_server.domain import log, merkle, signing
from directory_server.domain import replication as rep

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
def trust(federation: Federation) -> fed.Federation:
    return fed.verify_initial(federation.document(["GE", "AZ"], NOW - timedelta(days=1)), NOW)


def entries(federation: Federation, n: int, member: str = "GE", tag: str = "") -> list[log.LogEntry]:
    return [
        log.build_entry(member, i, f"members/{member}/authorities/a{i}{tag}", None, NOW, federation.key(member))
        for i in range(1, n + 1)
    ]


def checkpoint(federation: Federation, es: list[log.LogEntry], at: datetime = NOW, valid: timedelta = timedelta(days=7)) -> log.LogCheckpoint:
    return log.build_checkpoint("GE", len(es), merkle.root_hash([e.leaf_hash for e in es]), at, federation.key("GE"), valid)


def roots(es: list[log.LogEntry]) -> Callable[[int], bytes]:
    return lambda n: merkle.root_hash([e.leaf_hash for e in es[:n]])


def test_decisions(federation: Federation) -> None:
    log5, log8 = entries(federation, 5), entries(federation, 8)
    held = checkpoint(federation, log5)
    assert rep.decide(None, held, roots([]), None, NOW) == rep.Decision(rep.Action.PULL, 1, 5)
    assert rep.decide(held, checkpoint(federation, log8), roots(log5), None, NOW) == rep.Decision(rep.Action.PULL, 6, 8)
    assert rep.decide(held, checkpoint(federation, log5[:3]), roots(log5), None, NOW).action is rep.Action.IGNORE
    assert rep.decide(held, held, roots(log5), None, NOW).action is rep.Action.IGNORE
    newer = checkpoint(federation, log5, at=NOW + timedelta(minutes=1))
    assert rep.decide(held, newer, roots(log5), None, NOW).action is rep.Action.REFRESH
    assert rep.decide(newer, held, roots(log5), None, NOW).action is rep.Action.IGNORE  # never go back in time


def test_two_trees_of_one_member_that_cannot_both_be_true(federation: Federation) -> None:
    mine, theirs = entries(federation, 5), entries(federation, 5, tag="-fork")
    held = checkpoint(federation, mine)
    assert rep.decide(held, checkpoint(federation, theirs), roots(mine), None, NOW).action is rep.Action.EQUIVOCATION
    assert rep.decide(held, checkpoint(federation, theirs[:3]), roots(mine), None, NOW).action is rep.Action.EQUIVOCATION


def test_a_peer_that_goes_back_is_refused(federation: Federation) -> None:
    log5 = entries(federation, 5)
    with pytest.raises(rep.Rejected) as e:
        rep.decide(checkpoint(federation, log5), checkpoint(federation, log5[:3]), roots(log5), 5, NOW)
    assert e.value.reason == "ROLLBACK"


def test_an_expired_checkpoint_is_refused_only_when_it_would_change_something(federation: Federation) -> None:
    log5 = entries(federation, 5)
    expired = checkpoint(federation, log5, at=NOW - timedelta(days=8))
    with pytest.raises(rep.Rejected) as e:
        rep.decide(None, expired, roots([]), None, NOW)
    assert e.value.reason == "CHECKPOINT_EXPIRED"
    assert rep.decide(expired, expired, roots(log5), None, NOW).action is rep.Action.IGNORE


def verifier(trust: fed.Federation, start: int, end: int, base: list[log.LogEntry] | None = None) -> rep.RangeVerifier:
    leaves = [e.leaf_hash for e in base or []]
    return rep.RangeVerifier("GE", start, end, trust, merkle.CompactRange.from_leaf_hashes(leaves))


def test_a_valid_range_verifies_against_its_checkpoint(federation: Federation, trust: fed.Federation) -> None:
    log8 = entries(federation, 8)
    v = verifier(trust, 4, 8, log8[:3])
    v.add_batch(4, [e.envelope for e in log8[3:6]])
    v.add_batch(7, [e.envelope for e in log8[6:]])
    assert [e.seq for e in v.finish(checkpoint(federation, log8))] == [4, 5, 6, 7, 8]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_tampering_of_a_range_is_rejected(data: st.DataObject) -> None:
    federation = Federation([signing.SigningKey.generate()])
    trust = fed.verify_initial(federation.document(["GE", "AZ"], NOW - timedelta(days=1)), NOW)
    log6 = entries(federation, 6)
    envelopes = [e.envelope for e in log6]
    how = data.draw(st.sampled_from(["flip", "drop", "swap", "truncate", "other-key"]))
    if how == "flip":
        i = data.draw(st.integers(0, 5))
        pos = data.draw(st.integers(0, len(envelopes[i]) - 1))
        envelopes[i] = envelopes[i][:pos] + bytes([envelopes[i][pos] ^ 0x01]) + envelopes[i][pos + 1 :]
    elif how == "drop":
        del envelopes[data.draw(st.integers(0, 4))]
    elif how == "swap":
        i = data.draw(st.integers(0, 4))
        envelopes[i], envelopes[i + 1] = envelopes[i + 1], envelopes[i]
    elif how == "truncate":
        envelopes = envelopes[: data.draw(st.integers(0, 5))]
    else:
        envelopes[2] = log.build_entry("GE", 3, "members/GE/authorities/x", None, NOW, federation.key("AZ")).envelope
    v = verifier(trust, 1, 6)
    with pytest.raises(rep.Rejected):
        if envelopes:
            v.add_batch(1, envelopes)
        v.finish(checkpoint(federation, log6))


def test_limits_are_enforced_before_parsing(federation: Federation, trust: fed.Federation) -> None:
    limits = federation_pb2.Limits(max_entry_bytes=64, max_batch_entries=2)
    doc = federation_pb2.FederationDocument()
    doc.CopyFrom(trust.document)
    doc.limits.CopyFrom(limits)
    small = fed.Federation(doc, trust.envelope)
    v = rep.RangeVerifier("GE", 1, 3, small, merkle.CompactRange())
    with pytest.raises(rep.Rejected) as e:
        v.add_batch(1, [b"\xff" * 65])  # not an envelope at all: refused for its size, not parsed
    assert e.value.reason == "ENTRY_TOO_LARGE"
    with pytest.raises(rep.Rejected) as e:
        v.add_batch(1, [b"", b"", b""])
    assert e.value.reason == "BATCH_TOO_LARGE"
    with pytest.raises(rep.Rejected) as e:
        rep.verify_offered_checkpoint(b"\xff" * 65, small)
    assert e.value.reason == "ENTRY_TOO_LARGE"


@given(sizes=st.lists(st.integers(1, 300), max_size=60), max_bytes=st.integers(50, 1000), max_entries=st.integers(1, 10))
def test_batches_keep_order_and_limits(sizes: list[int], max_bytes: int, max_entries: int) -> None:
    entries = [(i + 7, bytes(n)) for i, n in enumerate(sizes)]
    out = list(rep.batches(entries, max_bytes, max_entries))
    assert [e for _, b in out for e in b] == [e for _, e in entries]
    seq = 7
    for start, batch in out:
        assert start == seq and 1 <= len(batch) <= max_entries
        assert len(batch) == 1 or sum(len(e) + 8 for e in batch) <= max_bytes  # only a lone entry may exceed
        seq += len(batch)
