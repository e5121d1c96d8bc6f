"""The prosecutor's answer over the whole sample federation (each member's records signed by
its own key): every "Why" of the issue, asked as a prosecutor asks it, over real gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from conftest import Clock, Federation  # type: ignore[import-not-found, unused-ignore]
from tests_support_federation import whole_federation  # type: ignore[import-not-found, unused-ignore]
from tests_support_tls import error_info  # type: ignore[import-not-found, unused-ignore]

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import directory_service_pb2_grpc as ds_grpc
from counterpart.v1 import records_pb2
from counterpart_core import signing
from directory_server.service.directory import DirectoryServicer
from directory_server.service.identity import Authenticator


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ds_grpc.DirectoryServiceStub]:
    from datetime import UTC, datetime

    root = tmp_path_factory.mktemp("federation")
    clock = Clock(datetime.now(UTC).replace(microsecond=0))
    store, directory, nodes = whole_federation(root, Federation([signing.SigningKey.generate()]), clock)
    server = grpc.server(
        futures.ThreadPoolExecutor(4),
        interceptors=[Authenticator(nodes[0].federation, store.revoked, "GE", clock)],
    )
    ds_grpc.add_DirectoryServiceServicer_to_server(DirectoryServicer(directory), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield ds_grpc.DirectoryServiceStub(channel)
    server.stop(0)
    store.close()


def find(stub: ds_grpc.DirectoryServiceStub, **kw: object) -> ds.FindCounterpartResponse:
    response: ds.FindCounterpartResponse = stub.FindCounterpart(ds.FindCounterpartRequest(**kw), timeout=10)  # type: ignore[arg-type]
    return response


def executor(resp: ds.FindCounterpartResponse) -> str:
    """The candidate the answer says executes (the first with the EXECUTES role)."""
    return next(c.authority.name for c in resp.candidates if records_pb2.COMPETENCE_ROLE_EXECUTES in c.roles)


# --- places ----------------------------------------------------------------------------------

@pytest.mark.parametrize("place", ["Ajara", "Adjara", "Аджария", "აჭარა", "GE-AJ", "Batumi", "ბათუმი"])
def test_region_names_in_every_script_resolve(stub: ds_grpc.DirectoryServiceStub, place: str) -> None:
    resp = find(stub, requested_member="GE", request_type="mla.hearing.witness", place=place)
    assert resp.place.subdivision == "GE-AJ" and not resp.place.approximate
    assert resp.place.gazetteer_place.name.startswith("members/GE/places/")
    assert resp.place.gazetteer_place.name in {p.name for p in resp.proofs}  # signed, and proven
    assert executor(resp) == "members/GE/authorities/ajara-po"


@pytest.mark.parametrize(("member", "place"), [
    ("KZ", "Астана"), ("UZ", "Toshkent"), ("TJ", "Душанбе"), ("TM", "Aşgabat"), ("AM", "Երևան"), ("KG", "Бишкек"),
    ("AZ", "Bakı"), ("RS", "Београд"), ("PE", "Lima"), ("GE", "Tbilisi"),
])
def test_capitals_resolve(stub: ds_grpc.DirectoryServiceStub, member: str, place: str) -> None:
    resp = find(stub, requested_member=member, request_type="extradition", place=place)
    assert resp.place.level == ds.COVERAGE_LEVEL_MUNICIPALITY and resp.place.gazetteer_place.capital


@pytest.mark.parametrize(("place", "meant", "typo"), [
    ("Batumy", "batumi", True), ("Zugdidy", "zugdidi", True), ("Батум", "batumi", False),
    ("Tiflis", "tbilisi", False), ("Tbilis", "tbilisi", True),
])
def test_typos_and_old_names_are_read_and_said(
    stub: ds_grpc.DirectoryServiceStub, place: str, meant: str, typo: bool
) -> None:
    resp = find(stub, requested_member="GE", request_type="mla.hearing.witness", place=place)
    assert resp.place.gazetteer_place.name == f"members/GE/places/{meant}"
    assert resp.place.matched_name in {n.text for n in resp.place.gazetteer_place.names}
    assert resp.place.matched_name.isascii() == place.isascii()  # shown in the script it was typed in
    assert resp.place.approximate == typo
    assert any(f"{place!r} was read as" in w for w in resp.warnings) == typo


def test_an_unknown_place_is_not_found_with_the_closest(stub: ds_grpc.DirectoryServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as e:
        find(stub, requested_member="GE", request_type="mla.hearing.witness", place="Atlantis")
    info = error_info(e.value)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and info is not None and info.reason == "PLACE_NOT_FOUND"
    assert "closest" in e.value.details() and info.metadata["suggestions"]


# --- who executes ----------------------------------------------------------------------------

@pytest.mark.parametrize(("member", "place", "office"), [
    ("GE", "Tbilisi", "tbilisi-po"), ("GE", "Batumi", "ajara-po"), ("GE", "Zugdidi", "zugdidi-po"),
    ("GE", "Kutaisi", "pgo"), ("AZ", "Nakhchivan", "nakhchivan-po"), ("AZ", "Bakı", "baku-city-po"),
    ("AZ", "Ganja", "ganja-city-po"),
])
def test_the_office_that_really_executes(stub: ds_grpc.DirectoryServiceStub, member: str, place: str, office: str) -> None:
    resp = find(stub, requested_member=member, request_type="mla.hearing.witness", place=place)
    assert resp.rule.territorial_execution and not resp.rule.executing_authority  # the rule never contradicts
    assert executor(resp) == f"members/{member}/authorities/{office}"
    assert not any("coverage does not include" in w for w in resp.warnings)


# --- search in every script ---------------------------------------------------------------------

@pytest.mark.parametrize(("query", "same_as"), [("Երևան", "Yerevan"), ("აჭარა", "Ajara"), ("Bakı", "Baku")])
def test_search_folds_through_the_gazetteer(stub: ds_grpc.DirectoryServiceStub, query: str, same_as: str) -> None:
    found = stub.SearchAuthorities(ds.SearchAuthoritiesRequest(query=query), timeout=10)
    reference = stub.SearchAuthorities(ds.SearchAuthoritiesRequest(query=same_as), timeout=10)
    assert reference.authorities
    assert {a.name for a in found.authorities} >= {a.name for a in reference.authorities}


# --- what the answer holds ---------------------------------------------------------------------

def test_nothing_unpublished_is_filled_in(stub: ds_grpc.DirectoryServiceStub) -> None:
    from counterpart_core.vocab import Vocabulary, default_vocabularies

    published = {r.request_type for r in stub.ListRules(ds.ListRulesRequest(parent="members/GE", page_size=500)).rules}
    missing = next(t for t in sorted(Vocabulary(default_vocabularies()).request_types) if t not in published)
    resp = find(stub, requested_member="GE", request_type=missing)
    assert resp.route == records_pb2.TRANSMISSION_ROUTE_UNSPECIFIED
    assert any("route not stated" in w for w in resp.warnings)


def test_a_language_not_accepted_is_said(stub: ds_grpc.DirectoryServiceStub) -> None:
    resp = find(stub, requested_member="GE", request_type="mla.hearing.witness", place="Batumi", preferred_languages=["fr"])
    if "fr" not in resp.languages:
        assert any("none of your languages (fr) is accepted" in w for w in resp.warnings)


def test_requesting_member_is_validated_like_the_requested(stub: ds_grpc.DirectoryServiceStub) -> None:
    for field in ("requested_member", "requesting_member"):
        kw = {"requested_member": "GE", "request_type": "extradition", field: "A1"}
        with pytest.raises(grpc.RpcError) as e:
            find(stub, **kw)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, field


SPECIFICS = """member: GE
rules:
- request_type: asset-recovery.confiscation
  possible: POSSIBILITY_PARTLY
  routes: [TRANSMISSION_ROUTE_CENTRAL_AUTHORITY]
  languages: [ka, en]
  form_and_documents: [{language: en, text: "Certified copy of the confiscation order (test value)"}]
  execution_deadline: [{language: en, text: "No statutory deadline (test value)"}]
  electronic_transmission: {accepted: true, signature_required: true, encryption_required: true}
  asset_recovery:
    recognizes_foreign_confiscation: POSSIBILITY_YES
    non_conviction_based: POSSIBILITY_NO
    asset_sharing: [{language: en, text: "Case by case agreement (test value)"}]
"""


def test_asset_recovery_specifics_travel_with_the_answer(make_node: object, sample_dir: object) -> None:
    """What a member publishes of the procedural conditions and the asset-recovery specifics is
    in the answer's rule, whole and signed (the sample facts hold none: the test publishes them)."""
    folder = sample_dir("GE")  # type: ignore[operator]
    (folder / "specifics.yaml").write_text(SPECIFICS, encoding="utf-8")
    from conftest import PASSPHRASE  # type: ignore[import-not-found, unused-ignore]

    from directory_server.lookup import Directory

    node = make_node("GE")  # type: ignore[operator]
    node.publish(folder, PASSPHRASE)
    resp = Directory(node.store, node.federation, node.clock).find_counterpart(
        ds.FindCounterpartRequest(requested_member="GE", request_type="asset-recovery.confiscation")
    )
    ar = resp.rule.asset_recovery
    assert ar.recognizes_foreign_confiscation == records_pb2.POSSIBILITY_YES
    assert ar.non_conviction_based == records_pb2.POSSIBILITY_NO and ar.asset_sharing
    assert resp.rule.electronic_transmission.encryption_required and resp.rule.form_and_documents
    assert resp.route == records_pb2.TRANSMISSION_ROUTE_CENTRAL_AUTHORITY
    assert "members/GE/rules/asset-recovery.confiscation" in {p.name for p in resp.proofs}
