"""Tests of directory_client.verify against a real node's answers.

Every answer comes from the real DirectoryService over gRPC (the ``served`` GE node,
real signatures, real Merkle proofs). The tests accept the honest answer, then alter one
thing at a time in a copy of it, as a lying or broken node would, and require
VerificationFailed naming what failed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import directory_service_pb2_grpc as ds_grpc
from counterpart_core import federation as fed
from counterpart_core import signing
from counterpart_core.timeutil import from_timestamp
from directory_client.errors import ClientError, VerificationFailed
from directory_client.verify import records_in, verify_answer, verify_response
from directory_server.service.server import NodeServer

Served = tuple[NodeServer, grpc.Channel]
WITNESS = ds.FindCounterpartRequest(
    requested_member="GE", request_type="mla.hearing.witness", place="Batumi", urgent=True
)
AJARA = "members/GE/authorities/ajara-po"


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def stub(served: Served) -> ds_grpc.DirectoryServiceStub:
    return ds_grpc.DirectoryServiceStub(served[1])


@pytest.fixture
def pinned(served: Served) -> fed.Federation:
    """The federation document the node follows, verified as a client pins it."""
    envelope = served[0].node.store.federation_envelope()
    assert envelope is not None
    return fed.verify_initial(envelope, now())


@pytest.fixture
def answer(stub: ds_grpc.DirectoryServiceStub) -> ds.FindCounterpartResponse:
    """A fresh honest FindCounterpart answer (each test mutates its own copy)."""
    response = stub.FindCounterpart(WITNESS)
    assert response.candidates and response.proofs and response.provenances
    return response


def check(federation: fed.Federation, response: Any, at: datetime | None = None) -> Any:
    """verify_answer over a List/Search/Find response's own evidence and records."""
    return verify_answer(
        federation, response.proofs, response.provenances, records_in(response), at or now()
    )


def rejects(federation: fed.Federation, response: Any, *words: str) -> str:
    """Require VerificationFailed whose message holds every word; return the message."""
    with pytest.raises(VerificationFailed) as info:
        check(federation, response)
    message = str(info.value)
    for w in words:
        assert w in message, message
    assert isinstance(info.value, ClientError)
    return message


def proof_of(response: ds.FindCounterpartResponse, name: str) -> ds.RecordProof:
    return next(p for p in response.proofs if p.name == name)


# --- honest answers ----------------------------------------------------------------------


def test_accepts_an_honest_find_answer(pinned: fed.Federation, answer: ds.FindCounterpartResponse) -> None:
    result = check(pinned, answer)
    assert result.records_checked == len(answer.proofs)
    assert [m.member for m in result.members] == ["GE"]
    status = result.members[0]
    assert status.checkpoint_size == answer.provenances[0].checkpoint_size
    assert status.issue_time == from_timestamp(answer.provenances[0].checkpoint_issue_time)
    assert not status.stale and status.age >= timedelta(0)
    assert answer.candidates[0].authority.name == AJARA
    # The records the answer shows: every candidate, the rule and the contacts.
    shown = {r.name for r in records_in(answer)}
    assert {c.authority.name for c in answer.candidates} <= shown
    assert answer.rule.name in shown and all(c.name in shown for c in answer.contacts)


def test_verify_response_checks_derived_find_fields(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse
) -> None:
    result = verify_response(pinned, answer, now(), WITNESS)
    assert result.records_checked == len(answer.proofs)
    assert answer.urgent_contacts and answer.legal_bases  # both checks had work to do


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.ListAuthorities(ds.ListAuthoritiesRequest(parent="members/GE")),
        lambda s: s.ListContacts(ds.ListContactsRequest(parent="members/-")),
        lambda s: s.ListRules(ds.ListRulesRequest(parent="members/GE")),
        lambda s: s.ListTreaties(ds.ListTreatiesRequest(parent="members/GE")),
        lambda s: s.SearchAuthorities(ds.SearchAuthoritiesRequest(query="Batumi")),
        lambda s: s.GetAuthority(ds.GetAuthorityRequest(name=AJARA)),
        lambda s: s.GetRule(ds.GetRuleRequest(name="members/GE/rules/mla.hearing.witness")),
        lambda s: s.ListMembers(ds.ListMembersRequest()),
        lambda s: s.GetMember(ds.GetMemberRequest(name="members/GE")),
    ],
    ids=["authorities", "contacts", "rules", "treaties", "search", "get-authority", "get-rule",
         "members", "member"],
)
def test_accepts_every_kind_of_honest_answer(
    pinned: fed.Federation, stub: ds_grpc.DirectoryServiceStub, call: Callable[[Any], Any]
) -> None:
    response = call(stub)
    result = verify_response(pinned, response, now())
    assert [m.member for m in result.members] == ["GE"]
    assert result.records_checked == len(records_in(response))


def test_staleness_is_recomputed_not_taken_from_the_node(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse
) -> None:
    expires = from_timestamp(answer.provenances[0].checkpoint_expire_time)
    answer.provenances[0].stale = True  # the node's flag is ignored either way
    assert not check(pinned, answer, expires - timedelta(seconds=1)).members[0].stale
    answer.provenances[0].stale = False
    late = check(pinned, answer, expires + timedelta(seconds=1))
    assert late.members[0].stale and late.stale


# --- altered answers ---------------------------------------------------------------------


def test_rejects_an_altered_byte_of_a_signed_entry(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse
) -> None:
    proof = proof_of(answer, AJARA)
    assert b"Batumi" in proof.signed_entry
    proof.signed_entry = proof.signed_entry.replace(b"Batumi", b"Batumy")  # same length
    rejects(pinned, answer, AJARA, "does not verify", "BAD_SIGNATURE")


def test_rejects_an_altered_inclusion_path_element(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse
) -> None:
    proof = proof_of(answer, AJARA)
    assert proof.inclusion_path
    element = bytearray(proof.inclusion_path[0])
    element[0] ^= 0x01
    proof.inclusion_path[0] = bytes(element)
    rejects(pinned, answer, AJARA, "INCLUSION_PROOF_INVALID")


def test_rejects_a_record_that_differs_from_its_signed_entry(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse
) -> None:
    english = next(t for t in answer.candidates[0].authority.display_names if t.language == "en")
    english.text = "Prosecutor's Office of Somewhere Else"
    rejects(pinned, answer, f"authority {AJARA}", "differs from the entry GE signed")


def test_rejects_a_contact_that_differs_from_its_signed_entry(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse
) -> None:
    answer.contacts[0].email = "attacker@example.org"
    rejects(pinned, answer, answer.contacts[0].name, "differs")


def test_rejects_a_record_without_a_proof(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse
) -> None:
    kept = [p for p in answer.proofs if p.name != AJARA]
    del answer.proofs[:]
    answer.proofs.extend(kept)
    rejects(pinned, answer, AJARA, "no proof")


def test_rejects_a_record_the_node_made_up(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse
) -> None:
    fake = answer.candidates.add()
    fake.CopyFrom(answer.candidates[0])
    fake.authority.name = "members/GE/authorities/made-up"
    rejects(pinned, answer, "members/GE/authorities/made-up", "no proof")


def test_rejects_a_proof_whose_entry_is_another_record(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse
) -> None:
    other = next(p for p in answer.proofs if p.name != AJARA)
    proof = proof_of(answer, AJARA)
    name = proof.name
    proof.CopyFrom(other)
    proof.name = name  # a valid entry and path, but of another record
    rejects(pinned, answer, AJARA, f"is about {other.name!r}")


def test_rejects_an_entry_at_another_position(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse
) -> None:
    proof = proof_of(answer, AJARA)
    proof.leaf_index = (proof.leaf_index + 1) % proof.tree_size
    rejects(pinned, answer, AJARA, "ENTRY_POSITION_MISMATCH")


def test_rejects_a_tree_size_other_than_the_checkpoint(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse
) -> None:
    proof_of(answer, AJARA).tree_size += 1
    rejects(pinned, answer, AJARA, "checkpoint covers")


def test_rejects_provenance_that_misstates_the_checkpoint(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse
) -> None:
    answer.provenances[0].checkpoint_size += 1
    rejects(pinned, answer, "checkpoint of GE", "claims size")


def test_rejects_an_answer_without_the_members_checkpoint(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse
) -> None:
    del answer.provenances[:]
    rejects(pinned, answer, "no signed checkpoint of GE")


def test_rejects_a_checkpoint_signed_by_another_members_key(
    federation: Any, served: Served, answer: ds.FindCounterpartResponse
) -> None:
    # Pin a federation where AZ is a member too, so AZ's key is a known member key.
    both = fed.verify_initial(federation.document(["GE", "AZ"], now()), now())
    assert check(both, answer).members[0].member == "GE"
    env = signing.parse_envelope(answer.provenances[0].signed_checkpoint)
    answer.provenances[0].signed_checkpoint = signing.sign_envelope(
        env.payload, env.payload_type, [federation.key("AZ")]
    )
    rejects(both, answer, "checkpoint of GE", "UNKNOWN_KEY")


@pytest.mark.parametrize("signer", ["root", "stranger"])
def test_rejects_a_checkpoint_not_signed_by_a_member_key(
    federation: Any, pinned: fed.Federation, answer: ds.FindCounterpartResponse, signer: str
) -> None:
    key = federation.root_keys[0] if signer == "root" else signing.SigningKey.generate()
    env = signing.parse_envelope(answer.provenances[0].signed_checkpoint)
    answer.provenances[0].signed_checkpoint = signing.sign_envelope(
        env.payload, env.payload_type, [key]
    )
    rejects(pinned, answer, "checkpoint of GE", "UNKNOWN_KEY")


def test_rejects_an_entry_signed_by_another_members_key(
    federation: Any, answer: ds.FindCounterpartResponse
) -> None:
    both = fed.verify_initial(federation.document(["GE", "AZ"], now()), now())
    proof = proof_of(answer, AJARA)
    env = signing.parse_envelope(proof.signed_entry)
    proof.signed_entry = signing.sign_envelope(env.payload, env.payload_type, [federation.key("AZ")])
    rejects(both, answer, AJARA, "UNKNOWN_KEY")


def _federation_with_fresh_ge_key(roots: list[signing.SigningKey]) -> fed.Federation:
    """A valid federation "test" signed by ``roots`` in which GE has a key of its own."""
    at = now()
    doc = fed.new_document("test", [k.public_bytes for k in roots], 1, at, timedelta(days=30))
    fed.add_member(doc, "GE", "Georgia", [signing.SigningKey.generate().public_bytes], [])
    envelope = signing.sign_envelope(
        doc.SerializeToString(deterministic=True), signing.FEDERATION_TYPE, roots
    )
    return fed.verify_initial(envelope, at)


@pytest.mark.parametrize("variant", ["other-roots-and-members", "other-member-key"])
def test_rejects_answers_under_another_pinned_federation(
    federation: Any, answer: ds.FindCounterpartResponse, variant: str
) -> None:
    roots = federation.root_keys if variant == "other-member-key" else [signing.SigningKey.generate()]
    other = _federation_with_fresh_ge_key(roots)
    rejects(other, answer, "checkpoint of GE", "UNKNOWN_KEY")


def test_rejects_a_member_the_pinned_federation_does_not_know(
    federation: Any, answer: ds.FindCounterpartResponse
) -> None:
    only_az = fed.verify_initial(federation.document(["AZ"], now()), now())
    rejects(only_az, answer, "checkpoint of GE", "UNKNOWN_MEMBER")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_in_the_evidence_is_rejected(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse, data: st.DataObject
) -> None:
    mutated = ds.FindCounterpartResponse()
    mutated.CopyFrom(answer)
    proof = mutated.proofs[data.draw(st.integers(0, len(mutated.proofs) - 1), label="proof")]
    targets = ["signed_entry"] + (["inclusion_path"] if proof.inclusion_path else [])
    target = data.draw(st.sampled_from(targets), label="target")
    if target == "signed_entry":
        blob = bytearray(proof.signed_entry)
    else:
        which = data.draw(st.integers(0, len(proof.inclusion_path) - 1), label="element")
        blob = bytearray(proof.inclusion_path[which])
    at = data.draw(st.integers(0, len(blob) - 1), label="byte")
    blob[at] ^= data.draw(st.integers(1, 255), label="xor")
    if target == "signed_entry":
        proof.signed_entry = bytes(blob)
    else:
        proof.inclusion_path[which] = bytes(blob)
    with pytest.raises(VerificationFailed):
        check(pinned, mutated)


# --- what the node derives in FindCounterpart --------------------------------------------


def test_rejects_an_urgent_contact_no_authority_signed(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse
) -> None:
    answer.urgent_contacts[0].email = "attacker@example.org"
    with pytest.raises(VerificationFailed, match="not the urgent contact"):
        verify_response(pinned, answer, now(), WITNESS)


def test_rejects_a_legal_basis_without_a_treaty_in_force(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse
) -> None:
    answer.legal_bases.add(instrument="bilateral-made-up", requested_member_party=True)
    with pytest.raises(VerificationFailed, match="legal basis bilateral-made-up"):
        verify_response(pinned, answer, now(), WITNESS)


def test_rejects_records_of_a_member_not_asked_about(
    pinned: fed.Federation, answer: ds.FindCounterpartResponse
) -> None:
    asked = ds.FindCounterpartRequest()
    asked.CopyFrom(WITNESS)
    asked.requested_member = "AZ"
    with pytest.raises(VerificationFailed, match="not an authority of AZ"):
        verify_response(pinned, answer, now(), asked)


def test_rejects_a_rule_for_another_request_type(
    pinned: fed.Federation, stub: ds_grpc.DirectoryServiceStub, answer: ds.FindCounterpartResponse
) -> None:
    general = stub.GetRule(ds.GetRuleRequest(name="members/GE/rules/mla.general"))
    answer.rule.CopyFrom(general.rule)  # validly signed, but not what was asked
    answer.proofs.append(general.proof)
    check(pinned, answer)  # every record is proven...
    with pytest.raises(VerificationFailed, match="the question was about"):
        verify_response(pinned, answer, now(), WITNESS)  # ...but it answers another question


def test_rejects_a_get_answer_without_its_proof(
    pinned: fed.Federation, stub: ds_grpc.DirectoryServiceStub
) -> None:
    response = stub.GetAuthority(ds.GetAuthorityRequest(name=AJARA))
    response.ClearField("proof")
    with pytest.raises(VerificationFailed, match="no proof"):
        verify_response(pinned, response, now())
