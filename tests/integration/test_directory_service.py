"""DirectoryService over real gRPC on loopback, answering from the GE sample data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from tests_support_records import GOOD_RECORDS

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import directory_service_pb2_grpc as ds_grpc
from counterpart.v1 import records_pb2
from counterpart_core import merkle
from directory_server.node import Node
from directory_server.service.server import NodeServer

Served = tuple[NodeServer, grpc.Channel]


@pytest.fixture
def stub(served: Served) -> ds_grpc.DirectoryServiceStub:
    return ds_grpc.DirectoryServiceStub(served[1])


def error_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, str]:
    """Run a call that must fail; return (code, ErrorInfo.reason, message)."""
    with pytest.raises(grpc.RpcError) as e:
        call()
    status = rpc_status.from_call(e.value)  # type: ignore[arg-type]
    assert status is not None, "error without google.rpc.Status details"
    info = error_details_pb2.ErrorInfo()
    assert status.details and status.details[0].Unpack(info)
    # beside the ErrorInfo, only the proof that a name asked for does not exist
    assert all(d.Is(ds.AbsenceProof.DESCRIPTOR) for d in status.details[1:])
    assert len(status.details) == 1 or info.reason == "RECORD_NOT_FOUND"
    assert info.domain == "counterpart.v1"
    return e.value.code(), info.reason, status.message  # type: ignore[attr-defined]


def snapshot(server: NodeServer) -> tuple[object, ...]:
    store = server.node.store
    return (store.envelopes("GE"), store.checkpoint("GE"), store.federation_envelope())


# --- Get / List / Search ---------------------------------------------------------------------


def test_get_authority_with_a_proof_that_verifies(stub: ds_grpc.DirectoryServiceStub, served: Served) -> None:
    resp = stub.GetAuthority(ds.GetAuthorityRequest(name="members/GE/authorities/ajara-po"))
    assert resp.authority.display_names[0].text == "აჭარის ავტონომიური რესპუბლიკის პროკურატურა"
    assert resp.proof.name == resp.authority.name
    assert resp.provenance.member == "GE" and not resp.provenance.stale
    assert resp.proof.tree_size == resp.provenance.checkpoint_size == served[0].node.store.log_size("GE")
    root = served[0].node.store.checkpoint_row("GE")
    assert root is not None
    merkle.verify_inclusion(
        merkle.leaf_hash(resp.proof.signed_entry), resp.proof.leaf_index, resp.proof.tree_size,
        list(resp.proof.inclusion_path), root.root_hash,
    )


def test_list_pages_through_everything_in_name_order(stub: ds_grpc.DirectoryServiceStub) -> None:
    seen: list[str] = []
    token = ""
    for _ in range(20):
        resp = stub.ListAuthorities(ds.ListAuthoritiesRequest(parent="members/GE", page_size=3, page_token=token))
        assert len(resp.authorities) == len(resp.proofs) <= 3
        assert [p.name for p in resp.proofs] == [a.name for a in resp.authorities]
        seen += [a.name for a in resp.authorities]
        token = resp.next_page_token
        if not token:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 12  # the sample reorganization adds an office dated 2027
    everyone = stub.ListAuthorities(ds.ListAuthoritiesRequest(parent="members/-", page_size=500))
    assert [a.name for a in everyone.authorities] == seen


def test_list_filters(stub: ds_grpc.DirectoryServiceStub) -> None:
    resp = stub.ListAuthorities(ds.ListAuthoritiesRequest(parent="members/GE", filter='kind = "interpol-ncb"'))
    assert [a.name for a in resp.authorities] == ["members/GE/authorities/interpol-ncb"]
    resp = stub.ListAuthorities(
        ds.ListAuthoritiesRequest(parent="members/GE", filter='parent = "members/GE/authorities/pgo" AND kind != "ministry"')
    )
    assert resp.authorities and all(a.parent == "members/GE/authorities/pgo" for a in resp.authorities)
    rules = stub.ListRules(ds.ListRulesRequest(parent="members/GE", filter="request_type = extradition"))
    assert [r.name for r in rules.rules] == ["members/GE/rules/extradition"]
    treaties = stub.ListTreaties(ds.ListTreatiesRequest(parent="members/GE", filter='status = "TREATY_STATUS_SIGNED"'))
    assert treaties.treaties and all(t.status == records_pb2.TREATY_STATUS_SIGNED for t in treaties.treaties)


def test_members_only_contacts_are_not_served(stub: ds_grpc.DirectoryServiceStub) -> None:
    contacts = stub.ListContacts(ds.ListContactsRequest(parent="members/GE", page_size=100)).contacts
    assert contacts and all(c.visibility == records_pb2.VISIBILITY_PUBLIC for c in contacts)
    code, reason, _ = error_of(lambda: stub.GetContact(ds.GetContactRequest(name="members/GE/contacts/24-7-point")))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RECORD_NOT_FOUND")
    with pytest.raises(grpc.RpcError) as e:
        stub.GetContact(ds.GetContactRequest(name="members/GE/contacts/24-7-point"))
    status = rpc_status.from_call(e.value)  # type: ignore[arg-type]
    assert status is not None
    proof = ds.AbsenceProof()
    assert status.details[1].Unpack(proof)
    # proven absent from the public records: the neighbours are public, never members-only
    assert proof.state.scope == ds.STATE_SCOPE_PUBLIC and proof.state.leaves
    assert all(leaf.name in {c.name for c in contacts} or "/contacts/" not in leaf.name for leaf in proof.state.leaves)
    assert all(b"24-7-point" not in leaf.SerializeToString() for leaf in proof.state.leaves)


@pytest.mark.parametrize("query", ["Batumi", "ბათუმი", "БАТУМИ", "batumi"])
def test_search_folds_case_accents_and_script(stub: ds_grpc.DirectoryServiceStub, query: str) -> None:
    resp = stub.SearchAuthorities(ds.SearchAuthoritiesRequest(query=query))
    assert resp.authorities[0].name == "members/GE/authorities/ajara-po"


def test_search_by_transliterated_name(stub: ds_grpc.DirectoryServiceStub) -> None:
    resp = stub.SearchAuthorities(ds.SearchAuthoritiesRequest(query="sakartvelos prokuratura", member="GE"))
    assert "members/GE/authorities/pgo" in [a.name for a in resp.authorities]


def test_members(stub: ds_grpc.DirectoryServiceStub) -> None:
    resp = stub.ListMembers(ds.ListMembersRequest())
    assert [m.code for m in resp.members] == ["AM", "AZ", "GE"] and resp.federation_version == 1
    ge = stub.GetMember(ds.GetMemberRequest(name="members/GE")).member
    assert ge.authority_count == 12 and ge.rule_count >= 6 and ge.log_size > 0
    assert ge.provenance.checkpoint_size == ge.log_size


# --- FindCounterpart -------------------------------------------------------------------------


def find(stub: ds_grpc.DirectoryServiceStub, **kw: object) -> ds.FindCounterpartResponse:
    return stub.FindCounterpart(ds.FindCounterpartRequest(**kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("place", ["Batumi", "ბათუმი", "Батуми", "GE-AJ", "ge-aj"])
def test_witness_in_batumi(stub: ds_grpc.DirectoryServiceStub, place: str) -> None:
    resp = find(stub, requested_member="GE", request_type="mla.hearing.witness", place=place, requesting_member="AZ")
    names = [c.authority.name for c in resp.candidates]
    assert names[0] == "members/GE/authorities/ajara-po"
    assert "members/GE/authorities/pgo" in names
    assert "members/GE/authorities/tbilisi-po" not in names  # covers another subdivision
    first = resp.candidates[0]
    assert records_pb2.COMPETENCE_ROLE_EXECUTES in first.roles
    assert first.coverage_level in (ds.COVERAGE_LEVEL_MUNICIPALITY, ds.COVERAGE_LEVEL_SUBDIVISION)
    assert resp.place.subdivision == "GE-AJ"
    assert resp.rule.name == "members/GE/rules/mla.hearing.witness"
    assert resp.route == records_pb2.TRANSMISSION_ROUTE_CENTRAL_AUTHORITY
    assert resp.legal_bases and resp.legal_bases[0].scope == 2  # regional (ETS 30) before universal
    assert {b.instrument for b in resp.legal_bases} >= {"coe-ets-030", "untoc"}
    assert any("no records of AZ" in w for w in resp.warnings)
    assert {p.name for p in resp.proofs} >= set(names) | {resp.rule.name}
    assert [p.member for p in resp.provenances] == ["GE"]


def test_legal_bases_follow_the_offence(stub: ds_grpc.DirectoryServiceStub) -> None:
    any_offence = find(stub, requested_member="GE", request_type="mla.hearing.witness")
    uncac = next(b for b in any_offence.legal_bases if b.instrument == "uncac")
    assert list(uncac.offence_categories) == ["corruption", "money-laundering"]
    assert "only for offences of: corruption, money-laundering" in uncac.explanation
    fraud = find(stub, requested_member="GE", request_type="mla.hearing.witness", offence_category="fraud")
    assert {b.instrument for b in fraud.legal_bases} == {b.instrument for b in any_offence.legal_bases} - {"uncac", "un-1988-drugs"}
    drugs = find(stub, requested_member="GE", request_type="mla.hearing.witness", offence_category="drug-trafficking")
    assert "un-1988-drugs" in {b.instrument for b in drugs.legal_bases}
    assert "uncac" not in {b.instrument for b in drugs.legal_bases}


def test_place_resolution_levels(stub: ds_grpc.DirectoryServiceStub) -> None:
    national = find(stub, requested_member="GE", request_type="extradition")
    assert national.place.level == ds.COVERAGE_LEVEL_NATIONAL
    assert all(c.coverage_level == ds.COVERAGE_LEVEL_NATIONAL for c in national.candidates)
    with pytest.raises(grpc.RpcError) as e:  # never a silent fall-back to the national office
        find(stub, requested_member="GE", request_type="mla.hearing.witness", place="Atlantis")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Atlantis" in e.value.details() and "closest" in e.value.details()


def test_urgency_and_languages(stub: ds_grpc.DirectoryServiceStub) -> None:
    resp = find(stub, requested_member="GE", request_type="mla.hearing.witness", place="Batumi",
                urgent=True, preferred_languages=["en"])
    assert resp.languages
    pgo = next(c for c in resp.candidates if c.authority.name.endswith("/pgo"))
    assert ("en" in pgo.matching_languages) == ("en" in pgo.authority.languages)


def test_postal_codes_and_offence_filters(make_node: Callable[..., Node], tmp_path: Path) -> None:
    records = GOOD_RECORDS.replace(
        "      subdivisions: [GE-AJ]",
        "      subdivisions: [GE-AJ]\n      postal_code_ranges: [{first: '6000', last: '6099'}]",
    ).replace(
        "      - request_types: [mla.hearing.witness]\n        roles: [COMPETENCE_ROLE_EXECUTES]",
        "      - request_types: [mla.hearing.witness]\n        roles: [COMPETENCE_ROLE_EXECUTES]\n"
        "        offence_categories: [drug-trafficking]",
    )
    folder = tmp_path / "rec"
    folder.mkdir()
    (folder / "r.yaml").write_text(records, encoding="utf-8")
    node = make_node("GE")
    node.publish(folder, b"test-passphrase")
    server = NodeServer(node, "127.0.0.1:0", access_log=False)
    server.start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            s = ds_grpc.DirectoryServiceStub(ch)
            drugs = find(s, requested_member="GE", request_type="mla.hearing.witness", place="6010", offence_category="drug-trafficking")
            assert drugs.place.level == ds.COVERAGE_LEVEL_POSTAL_CODE
            assert drugs.candidates[0].authority.name == "members/GE/authorities/ajara"
            assert drugs.candidates[0].coverage_level == ds.COVERAGE_LEVEL_POSTAL_CODE
            fraud = find(s, requested_member="GE", request_type="mla.hearing.witness", place="6010", offence_category="fraud")
            # the Ajara office is competent for drug cases only; the rule still names it
            assert fraud.candidates[0].authority.name in ("members/GE/authorities/ajara", "members/GE/authorities/pgo")
            outside = find(s, requested_member="GE", request_type="mla.hearing.witness", place="0105")
            assert "members/GE/authorities/ajara" not in [c.authority.name for c in outside.candidates if c.coverage_level == ds.COVERAGE_LEVEL_POSTAL_CODE]
    finally:
        server.stop(0)


# --- bad arguments: a stable reason, nothing stored changes -----------------------------------

BAD_CALLS: dict[str, tuple[Callable[[ds_grpc.DirectoryServiceStub], object], grpc.StatusCode, str, str]] = {
    "malformed name": (lambda s: s.GetAuthority(ds.GetAuthorityRequest(name="GE/pgo")), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME", "not a record name"),
    "wrong collection": (lambda s: s.GetRule(ds.GetRuleRequest(name="members/GE/authorities/pgo")), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME", "not in rules"),
    "malformed member in name": (lambda s: s.GetAuthority(ds.GetAuthorityRequest(name="members/georgia/authorities/pgo")), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MEMBER_CODE", "'georgia'"),
    "unknown name": (lambda s: s.GetAuthority(ds.GetAuthorityRequest(name="members/GE/authorities/nowhere")), grpc.StatusCode.NOT_FOUND, "RECORD_NOT_FOUND", "members/GE/authorities/nowhere"),
    "unknown member": (lambda s: s.GetMember(ds.GetMemberRequest(name="members/ZZ")), grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND", "members/ZZ"),
    "bad parent": (lambda s: s.ListAuthorities(ds.ListAuthoritiesRequest(parent="GE")), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME", "members/{member}"),
    "bad filter syntax": (lambda s: s.ListAuthorities(ds.ListAuthoritiesRequest(parent="members/GE", filter="kind ~ x")), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FILTER", "kind ~ x"),
    "bad filter field": (lambda s: s.ListAuthorities(ds.ListAuthoritiesRequest(parent="members/GE", filter='colour = "red"')), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FILTER", "'colour'"),
    "negative page size": (lambda s: s.ListRules(ds.ListRulesRequest(parent="members/GE", page_size=-1)), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_SIZE", "-1"),
    "forged page token": (lambda s: s.ListRules(ds.ListRulesRequest(parent="members/GE", page_token="not-a-token")), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", "page_token"),
    "short query": (lambda s: s.SearchAuthorities(ds.SearchAuthoritiesRequest(query="b")), grpc.StatusCode.INVALID_ARGUMENT, "QUERY_TOO_SHORT", "'b'"),
    "no requested member": (lambda s: find(s, request_type="extradition"), grpc.StatusCode.INVALID_ARGUMENT, "MISSING_ARGUMENT", "requested_member"),
    "malformed requested member": (lambda s: find(s, requested_member="Georgia", request_type="extradition"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MEMBER_CODE", "'Georgia'"),
    "malformed requesting member": (lambda s: find(s, requested_member="GE", requesting_member="az", request_type="extradition"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MEMBER_CODE", "requesting_member"),
    "unknown request type": (lambda s: find(s, requested_member="GE", request_type="mla.hearing.witnes"), grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_REQUEST_TYPE", "'mla.hearing.witnes' (did you mean 'mla.hearing.witness'?)"),
    "unknown offence": (lambda s: find(s, requested_member="GE", request_type="extradition", offence_category="piracy"), grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_OFFENCE_CATEGORY", "'piracy'"),
    "place of another member": (lambda s: find(s, requested_member="GE", request_type="extradition", place="AZ-BA"), grpc.StatusCode.INVALID_ARGUMENT, "PLACE_OUTSIDE_MEMBER", "AZ-BA"),
    "bad language tag": (lambda s: find(s, requested_member="GE", request_type="extradition", preferred_languages=["english!"]), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_LANGUAGE", "'english!'"),
    "member without data": (lambda s: find(s, requested_member="PE", request_type="extradition"), grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND", "PE"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_arguments_get_a_stable_reason(case: str, stub: ds_grpc.DirectoryServiceStub, served: Served) -> None:
    call, code, reason, fragment = BAD_CALLS[case]
    before = snapshot(served[0])
    got_code, got_reason, message = error_of(lambda: call(stub))
    assert (got_code, got_reason) == (code, reason)
    assert fragment in message
    assert snapshot(served[0]) == before


def test_page_token_of_another_request_is_refused(stub: ds_grpc.DirectoryServiceStub) -> None:
    token = stub.ListRules(ds.ListRulesRequest(parent="members/GE", page_size=1)).next_page_token
    assert token
    code, reason, _ = error_of(lambda: stub.ListRules(ds.ListRulesRequest(parent="members/GE", page_size=1, page_token=token, filter="request_type = extradition")))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


# --- health, reflection, shutdown ------------------------------------------------------------


def test_health_and_reflection(served: Served) -> None:
    health = health_pb2_grpc.HealthStub(served[1])
    for service in ("", "counterpart.v1.DirectoryService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(served[1])
    answer = next(iter(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))))
    services = {s.name for s in answer.list_services_response.service}
    assert {"counterpart.v1.DirectoryService", "grpc.health.v1.Health"} <= services


def test_graceful_shutdown_reports_not_serving(make_node: Callable[..., Node]) -> None:
    server = NodeServer(make_node("GE"), "127.0.0.1:0", access_log=False)
    server.start()
    health = server.health
    server.stop(grace=0.1)
    resp = health.Check(health_pb2.HealthCheckRequest(service=""), None)  # type: ignore[arg-type]
    assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_the_access_log_names_each_call_with_its_method_and_code(
    make_node: Callable[..., Node], sample_dir: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The access log's wrapped handler is kept per method: every call is still logged with
    its own method and status code, while the log's level is on."""
    node = make_node("GE", ["GE", "AZ"])
    node.publish(sample_dir("GE"), b"test-passphrase")
    server = NodeServer(node, "127.0.0.1:0", access_log=True)
    server.start()
    channel = grpc.insecure_channel(server.address)
    try:
        stub = ds_grpc.DirectoryServiceStub(channel)
        with caplog.at_level("INFO", logger="counterpart.node"):
            for _ in range(2):
                stub.ListMembers(ds.ListMembersRequest())
                error_of(lambda: stub.GetAuthority(ds.GetAuthorityRequest(name="members/GE/authorities/none")))
        calls = [(r.method, r.code) for r in caplog.records if r.getMessage() == "rpc"]  # type: ignore[attr-defined]
        assert calls == [
            ("/counterpart.v1.DirectoryService/ListMembers", "OK"),
            ("/counterpart.v1.DirectoryService/GetAuthority", "NOT_FOUND"),
        ] * 2
    finally:
        channel.close()
        server.stop(grace=0)
