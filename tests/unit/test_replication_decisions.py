"""Sync decisions and range verification, without I/O (domain/replication.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from conftest import Federation  # type: ignore[import-not-found, unused-ignore]
from hypothesis import given, settings
from hypothesis import strategies as st

from counterpart.v1 import federation_pb2, log_pb2, records_pb2
from counterpart_core import federation as fed
from counterpart_core import log, merkle, redaction, signing
from counterpart_core import replication as rep
from counterpart_core.errors import SignatureError

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


@given(
    sizes=st.lists(st.integers(0, 300), max_size=60), max_bytes=st.integers(50, 1000), max_entries=st.integers(1, 10)
)
def test_batches_keep_order_and_limits(sizes: list[int], max_bytes: int, max_entries: int) -> None:
    # size 0 stands for a withheld entry: sent as an empty item and its 32-byte leaf hash
    items = [(i + 7, bytes(n) if n else b"", b"" if n else bytes([i]) * 32) for i, n in enumerate(sizes)]
    out = list(rep.batches(items, max_bytes, max_entries))
    assert [e for b in out for e in b.envelopes] == [env for _, env, _ in items]
    assert {seq: h for b in out for seq, h in b.withheld.items()} == {seq: h for seq, _, h in items if h}
    seq = 7
    for b in out:
        assert b.start == seq and 1 <= len(b.envelopes) <= max_entries
        assert set(b.withheld) <= set(range(b.start, b.start + len(b.envelopes)))
        cost = sum(len(e) + 8 + (rep.WITHHELD_ITEM_BYTES if (b.start + i) in b.withheld else 0) for i, e in enumerate(b.envelopes))
        assert len(b.envelopes) == 1 or cost <= max_bytes  # only a lone entry may exceed
        seq += len(b.envelopes)


def test_a_withheld_item_counts_against_the_message_budget() -> None:
    """300 withheld items are 300 leaf hashes on the wire: a budget that holds 100 of them
    does not get 300 (an empty envelope is not free)."""
    items = [(i, b"", bytes(32)) for i in range(1, 301)]
    out = list(rep.batches(items, 100 * (rep.WITHHELD_ITEM_BYTES + 8), 1000))
    assert [len(b.envelopes) for b in out] == [100, 100, 100]


# --- withheld entries in a pulled range ------------------------------------------------------------


def withheld(es: list[log.LogEntry], *seqs: int) -> tuple[list[bytes], dict[int, bytes]]:
    """The envelopes of ``es`` (seq 1 first) with ``seqs`` withheld, as a peer sends them to
    a caller that is not a member node."""
    return [b"" if e.seq in seqs else e.envelope for e in es], {e.seq: e.leaf_hash for e in es if e.seq in seqs}


def test_a_range_with_withheld_entries_verifies_against_its_checkpoint(federation: Federation, trust: fed.Federation) -> None:
    log6 = entries(federation, 6)
    envelopes, hashes = withheld(log6, 2, 5)
    v = verifier(trust, 1, 6)
    v.add_batch(1, envelopes[:3], {2: hashes[2]})
    v.add_batch(4, envelopes[3:], {5: hashes[5]})
    got = v.finish(checkpoint(federation, log6))
    assert [e.withheld for e in got] == [False, True, False, False, True, False]
    assert got[1] == log.withheld_entry("GE", 2, log6[1].leaf_hash) and got[1].envelope == b"" and got[1].name == ""
    assert v.withheld_count == 2


def test_a_wrong_withheld_hash_fails_the_root_check(federation: Federation, trust: fed.Federation) -> None:
    log6 = entries(federation, 6)
    envelopes, _ = withheld(log6, 3)
    v = verifier(trust, 1, 6)
    v.add_batch(1, envelopes, {3: bytes(32)})
    with pytest.raises(rep.Rejected) as e:
        v.finish(checkpoint(federation, log6))
    assert e.value.reason == "ROOT_MISMATCH"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty without hash", "seq 3 is empty and has no withheld leaf hash"),
        ("short hash", "has 31 bytes, not 32"),
        ("long hash", "has 33 bytes, not 32"),
        ("hash for a whole entry", "seq 2, which is not a withheld entry"),
        ("hash outside the batch", "seq 9, which is not a withheld entry"),
        ("more hashes than items", "carries 7 withheld leaf hashes"),
    ],
)
def test_malformed_withheld_items_are_refused_before_any_signature(
    federation: Federation, trust: fed.Federation, case: str, message: str
) -> None:
    log6 = entries(federation, 6)
    envelopes, hashes = withheld(log6, 3)
    if case == "empty without hash":
        hashes = {}
    elif case == "short hash":
        hashes = {3: bytes(31)}
    elif case == "long hash":
        hashes = {3: bytes(33)}
    elif case == "hash for a whole entry":
        hashes[2] = log6[1].leaf_hash
    elif case == "hash outside the batch":
        hashes[9] = bytes(32)
    else:
        hashes = {i: bytes(32) for i in range(10, 17)}
    v = verifier(trust, 1, 6)
    with pytest.raises(rep.Rejected) as e:
        v.add_batch(1, envelopes, hashes)
    assert e.value.reason == "MALFORMED_WITHHELD"
    assert message in e.value.message
    assert v.entries == []  # refused whole, before the first entry


def test_entries_delivered_in_the_wrong_order_are_out_of_order_not_a_gap(
    federation: Federation, trust: fed.Federation
) -> None:
    log6 = entries(federation, 6)
    envelopes = [e.envelope for e in log6]
    swapped = [envelopes[0], envelopes[2], envelopes[1], *envelopes[3:]]  # seq 3 before seq 2
    with pytest.raises(rep.Rejected) as e:
        verifier(trust, 1, 6).add_batch(1, swapped)
    assert e.value.reason == "ENTRY_OUT_OF_ORDER"
    assert "claims seq 3, expected 2: delivered out of order" in e.value.message
    missing = [envelopes[0], *envelopes[2:]]  # seq 2 is nowhere: a gap
    with pytest.raises(rep.Rejected) as e:
        verifier(trust, 1, 6).add_batch(1, missing)
    assert e.value.reason == "ENTRY_GAP"
    with_a_withheld_one = [envelopes[0], b"", envelopes[3], envelopes[2], *envelopes[4:]]  # 4 before 3, 2 withheld
    with pytest.raises(rep.Rejected) as e:
        verifier(trust, 1, 6).add_batch(1, with_a_withheld_one, {2: log6[1].leaf_hash})
    assert e.value.reason == "ENTRY_OUT_OF_ORDER"


# --- filling withheld positions ------------------------------------------------------------------


def test_withheld_runs_are_contiguous_bounded_and_come_round(federation: Federation) -> None:
    held = {s: bytes(32) for s in (2, 3, 4, 7, 9, 10, 11, 12)}
    assert rep.withheld_runs(held, 0, 100, 100) == [(2, 4), (7, 7), (9, 12)]
    assert rep.withheld_runs(held, 0, 5, 100) == [(2, 4), (7, 7), (9, 9)]  # 5 positions in all
    assert rep.withheld_runs(held, 0, 100, 2) == [(2, 3), (4, 4), (7, 7), (9, 10), (11, 12)]  # 2 a run
    assert rep.withheld_runs(held, 7, 5, 100) == [(9, 12), (2, 2)]  # after where the last pass stopped, wrapping
    assert rep.withheld_runs({}, 0, 100, 100) == []


def test_a_fill_takes_whole_entries_with_the_withheld_hash(federation: Federation, trust: fed.Federation) -> None:
    log6 = entries(federation, 6)
    held = {e.seq: e.leaf_hash for e in log6[1:4]}  # 2..4 withheld here
    v = rep.FillVerifier("GE", 2, 4, held, trust)
    v.add_batch(2, [log6[1].envelope, b"", log6[3].envelope], {3: log6[2].leaf_hash})  # the peer withholds 3 too
    v.finish()
    assert [e.seq for e in v.entries] == [2, 4] and v.withheld_again == 1


def test_a_fill_with_another_validly_signed_entry_is_a_leaf_hash_mismatch(
    federation: Federation, trust: fed.Federation
) -> None:
    log6 = entries(federation, 6)
    other = log.build_entry("GE", 3, "members/GE/authorities/other", None, NOW, federation.key("GE"))
    held = {e.seq: e.leaf_hash for e in log6[1:4]}
    v = rep.FillVerifier("GE", 2, 4, held, trust)
    with pytest.raises(rep.Rejected) as e:
        v.add_batch(2, [log6[1].envelope, other.envelope, log6[3].envelope])  # signed by GE, seq 3: another entry
    assert e.value.reason == "LEAF_HASH_MISMATCH"
    with pytest.raises(rep.Rejected) as e:  # withheld again, but with another hash than the root covers
        rep.FillVerifier("GE", 2, 4, held, trust).add_batch(2, [b"", b"", b""], {2: bytes(32), 3: bytes(32), 4: bytes(32)})
    assert e.value.reason == "LEAF_HASH_MISMATCH"
    short = rep.FillVerifier("GE", 2, 4, held, trust)
    short.add_batch(2, [log6[1].envelope])
    with pytest.raises(rep.Rejected) as e:
        short.finish()
    assert e.value.reason == "TRUNCATED_RANGE"


# --- a peer offering this node's own log; backoff ------------------------------------------------


def test_a_peer_offering_the_own_log_is_refused_unless_restoring(federation: Federation) -> None:
    log5, log8 = entries(federation, 5), entries(federation, 8)
    held, offered = checkpoint(federation, log5), checkpoint(federation, log8)
    pull = rep.decide(held, offered, roots(log5), None, NOW)
    with pytest.raises(rep.Rejected) as e:
        rep.own_log_offered(pull, offered, "GE", restore_from_peers=False)
    assert e.value.reason == "OWN_LOG_FROM_PEER"
    rep.own_log_offered(pull, offered, "GE", restore_from_peers=True)  # the operator restores from peers
    rep.own_log_offered(pull, offered, "AZ", restore_from_peers=False)  # another member's log: not this rule
    behind = rep.decide(held, checkpoint(federation, log5[:3]), roots(log5), None, NOW)
    rep.own_log_offered(behind, offered, "GE", restore_from_peers=False)  # a peer that is behind: nothing to refuse


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [rep.backoff(n, 2.0, 30.0) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert rep.backoff(10_000, 1.0, 600.0) == 600.0


# --- members-only flags (domain.redaction) ----------------------------------------------------------


def contact(federation: Federation, seq: int, ident: str, visibility: int) -> log.LogEntry:
    record = records_pb2.Contact(authority="members/GE/authorities/pgo", role="desk", visibility=visibility)
    record.display_names.add(language="en", text=ident)
    return log.build_entry("GE", seq, f"members/GE/contacts/{ident}", record, NOW, federation.key("GE"))


def deletion(federation: Federation, seq: int, name: str) -> log.LogEntry:
    return log.build_entry("GE", seq, name, None, NOW, federation.key("GE"), "gone")


def test_members_only_contacts_and_their_deletions_are_restricted(federation: Federation) -> None:
    members, public = records_pb2.VISIBILITY_MEMBERS, records_pb2.VISIBILITY_PUBLIC
    es = [
        contact(federation, 1, "desk", public),
        contact(federation, 2, "person", members),
        contact(federation, 3, "unsure", records_pb2.VISIBILITY_UNSPECIFIED),  # personal data defaults to members-only
        log.build_entry("GE", 4, "members/GE/authorities/a", None, NOW, federation.key("GE")),
        deletion(federation, 5, "members/GE/contacts/person"),  # deletes a members-only contact
        deletion(federation, 6, "members/GE/contacts/desk"),  # deletes a public one
        contact(federation, 7, "person", public),  # back, now public
        deletion(federation, 8, "members/GE/contacts/person"),
        deletion(federation, 9, "members/GE/contacts/never"),  # of a name never published
    ]
    assert redaction.mark_log(es) == {1: False, 2: True, 3: True, 4: False, 5: True, 6: False, 7: False, 8: False, 9: False}


def test_a_deletion_behind_a_withheld_entry_is_ambiguous() -> None:
    """Known: the name's latest entry held whole. Withheld after it: it may be the name's true
    previous entry, so the caller decides; a members-only previous entry settles it anyway."""
    m = redaction.Marker()
    assert m.mark(1, "n", "contact", False) is False
    assert m.mark(2, "", "withheld", False) is True
    assert m.mark(3, "n", "deletion", False, ambiguous=True) is True
    assert m.mark(4, "n", "deletion", False, ambiguous=False) is True  # seq 3 is restricted: settled
    m = redaction.Marker()
    assert m.mark(1, "n", "contact", True) is True
    assert m.mark(2, "", "withheld", False) is True
    assert m.mark(3, "n", "deletion", False, ambiguous=False) is True
    m = redaction.Marker()
    assert m.mark(1, "", "withheld", False) is True
    assert m.mark(2, "p", "contact", False) is False
    assert m.mark(3, "p", "deletion", False, ambiguous=True) is False  # nothing withheld after seq 2
    assert m.mark(4, "q", "deletion", False, ambiguous=False) is False
    assert m.mark(5, "r", "deletion", False, ambiguous=True) is True  # never seen whole, withheld before it


def test_who_gets_an_entry_whole() -> None:
    assert redaction.serve_whole(restricted=False, withheld=False, member_node=False)
    assert not redaction.serve_whole(restricted=True, withheld=False, member_node=False)
    assert redaction.serve_whole(restricted=True, withheld=False, member_node=True)
    assert not redaction.serve_whole(restricted=True, withheld=True, member_node=True)  # never more than it was given


# --- signatures per envelope ------------------------------------------------------------------------


def test_an_envelope_padded_with_signatures_is_refused_before_any_is_verified(federation: Federation) -> None:
    key = federation.key("GE")
    good = log.build_entry("GE", 1, "members/GE/authorities/a", None, NOW, key).envelope
    env = signing.parse_envelope(good)
    lookups: list[str] = []

    def lookup(kid: str) -> bytes | None:
        lookups.append(kid)
        return key.public_bytes if kid == key.key_id else None

    padded = log_pb2.Envelope()
    padded.CopyFrom(env)
    for i in range(400):
        padded.signatures.add(key_id=key.key_id, sig=bytes([i % 256]) * 64)  # claims the real key: each would cost a verification
    with pytest.raises(SignatureError) as e:
        signing.verify_one(padded, lookup)
    assert e.value.reason == "TOO_MANY_SIGNATURES" and lookups == []
    # within the bound, unknown key ids cost nothing and do not cancel the valid signature
    few = log_pb2.Envelope()
    few.CopyFrom(env)
    for i in range(signing.MAX_SIGNATURES - 1):
        few.signatures.add(key_id=f"ed25519:unknown{i}", sig=bytes(64))
    assert signing.verify_one(few, lookup) == key.key_id


def test_too_many_signatures_is_a_stable_reason_on_the_range(federation: Federation, trust: fed.Federation) -> None:
    log3 = entries(federation, 3)
    env = signing.parse_envelope(log3[1].envelope)
    for _ in range(signing.MAX_SIGNATURES):
        env.signatures.add(key_id=federation.key("GE").key_id, sig=bytes(64))
    padded = env.SerializeToString()
    with pytest.raises(rep.Rejected) as e:
        verifier(trust, 1, 3).add_batch(1, [log3[0].envelope, padded, log3[2].envelope])
    assert e.value.reason == "TOO_MANY_SIGNATURES"
