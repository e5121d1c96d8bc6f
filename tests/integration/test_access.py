"""Who may see what, over real TLS (DESIGN §8): every method of both services, called as an
outside client calls them (raw bytes), for every kind of caller. Members-only contacts must
reach signed-in users of a member and member nodes, and nobody else: every response's bytes
are scanned for their e-mail addresses and phone numbers."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from conftest import Clock  # type: ignore[import-not-found, unused-ignore]
from tests_support_tls import (  # type: ignore[import-not-found, unused-ignore]
    Member,
    TlsFederation,
    client_channel,
    error_info,
    make_tls_node,
    members_only_names,
    members_only_sentinels,
    new_member,
    serve,
)

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import replication_service_pb2 as rs
from counterpart_core import access, signing, tls
from directory_server.node import Node
from directory_server.service.server import NodeServer

RESTRICTED = members_only_names("GE")[0]
SENTINELS = members_only_sentinels("GE")


@dataclass(frozen=True)
class Method:
    path: str
    request: bytes
    stream: bool = False
    restricted: bool = False  # asks for a members-only record by name


def methods(log_size: int) -> list[Method]:
    d = "/counterpart.v1.DirectoryService/"
    r = "/counterpart.v1.ReplicationService/"
    return [
        Method(d + "GetAuthority", ds.GetAuthorityRequest(name="members/GE/authorities/pgo").SerializeToString()),
        Method(d + "ListAuthorities", ds.ListAuthoritiesRequest(parent="members/GE").SerializeToString()),
        Method(d + "SearchAuthorities", ds.SearchAuthoritiesRequest(query="prosecutor").SerializeToString()),
        Method(d + "GetContact", ds.GetContactRequest(name=RESTRICTED).SerializeToString(), restricted=True),
        Method(d + "ListContacts", ds.ListContactsRequest(parent="members/-").SerializeToString()),
        Method(d + "GetRule", ds.GetRuleRequest(name="members/GE/rules/mla.general").SerializeToString()),
        Method(d + "ListRules", ds.ListRulesRequest(parent="members/GE").SerializeToString()),
        Method(d + "GetTreaty", ds.GetTreatyRequest(name="members/GE/treaties/coe-ets-030").SerializeToString()),
        Method(d + "ListTreaties", ds.ListTreatiesRequest(parent="members/GE").SerializeToString()),
        Method(d + "GetMember", ds.GetMemberRequest(name="members/GE").SerializeToString()),
        Method(d + "ListMembers", ds.ListMembersRequest().SerializeToString()),
        Method(d + "FindCounterpart", ds.FindCounterpartRequest(
            requested_member="GE", request_type="mla.general", urgent=True).SerializeToString()),
        Method(r + "GetCheckpoints", rs.GetCheckpointsRequest().SerializeToString()),
        Method(r + "GetEntries", rs.GetEntriesRequest(member="GE", start_seq=1, end_seq=log_size).SerializeToString(),
               stream=True),
        Method(r + "GetConsistencyProof", rs.GetConsistencyProofRequest(
            member="GE", first_size=1, second_size=log_size).SerializeToString()),
        Method(r + "WatchCheckpoints", rs.WatchCheckpointsRequest().SerializeToString(), stream=True),
        Method(r + "GetFederation", rs.GetFederationRequest(from_version=1).SerializeToString()),
        Method(d + "ListRecordRevisions", ds.ListRecordRevisionsRequest(name=RESTRICTED).SerializeToString(),
               restricted=True),
        # as of now (after the sample was published): the as-of view keeps members-only records
        # exactly as the current state does
        Method(d + "GetContact", ds.GetContactRequest(name=RESTRICTED, as_of=_now()).SerializeToString(),
               restricted=True),
        Method(d + "ListContacts", ds.ListContactsRequest(parent="members/-", as_of=_now()).SerializeToString()),
        Method(d + "FindCounterpart", ds.FindCounterpartRequest(
            requested_member="GE", request_type="mla.general", urgent=True, as_of=_now()).SerializeToString()),
        Method(d + "SearchAuthorities", ds.SearchAuthoritiesRequest(
            query="prosecutor", as_of=_now(published=True)).SerializeToString()),
    ]


def _now(published: bool = False) -> ds.AsOf:
    as_of = ds.AsOf(reading=ds.AS_OF_READING_PUBLISHED if published else ds.AS_OF_READING_IN_EFFECT)
    as_of.time.GetCurrentTime()
    return as_of


@dataclass
class Outcome:
    code: grpc.StatusCode
    reason: str
    body: bytes  # every response message's bytes, concatenated
    caller: str  # the node's word on who called


def call(channel: grpc.Channel, m: Method, token: str | None = None) -> Outcome:
    metadata = [("authorization", f"Bearer {token}")] if token else []
    try:
        if m.stream:
            stream = channel.unary_stream(m.path)(m.request, metadata=metadata, timeout=1.0)
            body = b""
            try:
                for message in stream:
                    body += message
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # WatchCheckpoints never ends
                    raise
            caller = dict(stream.initial_metadata() or ()).get("counterpart-caller", "")
            return Outcome(grpc.StatusCode.OK, "", body, str(caller))
        body, c = channel.unary_unary(m.path).with_call(m.request, metadata=metadata, timeout=5.0)
        return Outcome(grpc.StatusCode.OK, "", body, str(dict(c.initial_metadata()).get("counterpart-caller", "")))
    except grpc.RpcError as e:
        info = error_info(e)
        return Outcome(e.code(), info.reason if info else "", b"", "")


def leaked(body: bytes) -> list[bytes]:
    return [s for s in SENTINELS if s in body]


@dataclass
class World:
    fed: TlsFederation
    ge: Member
    az: Member
    kz: Member
    node: Node
    server: NodeServer
    clock: Clock
    log_size: int

    def public(self, client: Member | None = None) -> grpc.Channel:
        return client_channel(self.server.address, self.node.federation().members(), "GE", client)

    def peer(self, client: Member) -> grpc.Channel:
        return client_channel(self.server.peer_address, self.node.federation().members(), "GE", client)

    def token(self, member: Member, *, subject: str = "prosecutor-1", at: timedelta = timedelta(0),
              valid_for: timedelta = timedelta(hours=8), federation: TlsFederation | None = None) -> str:
        fed_doc = self.node.federation()
        if federation is not None:
            from counterpart_core.federation import verify_initial
            fed_doc = verify_initial(federation.document([member.code], self.clock()), self.clock())
        issued = access.issue_token(member.key, fed_doc, member.code, subject, "prosecutor", self.clock() + at, valid_for)
        if member is self.ge:
            self.node.store.add_grant(issued.token_id, subject, "prosecutor", issued.issue_time, issued.expire_time)
        return issued.token


@pytest.fixture
def world(tmp_path: Path, clock: Clock) -> Iterator[World]:
    fed = TlsFederation([signing.SigningKey.generate()])
    for code in ("GE", "AZ", "KZ"):
        fed.members[code] = new_member(code, clock())
    node = make_tls_node(tmp_path, fed.members["GE"], fed.document(["GE", "AZ", "KZ"], clock()), publish="GE")
    server = serve(node, fed.members["GE"])
    w = World(fed, fed.members["GE"], fed.members["AZ"], fed.members["KZ"], node, server, clock,
              node.store.log_size("GE"))
    yield w
    server.stop(grace=0)
    node.close()


def expect_all(channel: grpc.Channel, world: World, code: grpc.StatusCode, reason: str, token: str | None = None) -> None:
    for m in methods(world.log_size):
        out = call(channel, m, token)
        assert (out.code, out.reason) == (code, reason), f"{m.path}: {out.code} {out.reason}"


def test_anonymous_over_tls_sees_public_records_and_no_members_only_byte(world: World) -> None:
    with world.public() as channel:
        for m in methods(world.log_size):
            out = call(channel, m)
            if m.restricted:
                assert (out.code, out.reason) == (grpc.StatusCode.NOT_FOUND, "RECORD_NOT_FOUND"), m.path
            else:
                assert out.code == grpc.StatusCode.OK, f"{m.path}: {out.code} {out.reason}"
                assert out.caller == "anonymous", m.path
            assert not leaked(out.body), f"{m.path} leaked {leaked(out.body)} to an anonymous caller"
        find = ds.FindCounterpartResponse.FromString(call(channel, methods(world.log_size)[11]).body)
        assert find.withheld_contacts >= 1
        assert any("withheld" in w and "counterpart login" in w for w in find.warnings)
        member = ds.GetMemberResponse.FromString(call(channel, methods(world.log_size)[9]).body).member
        assert member.withheld_contact_count == len(members_only_names("GE"))


@pytest.mark.parametrize("who", ["GE", "AZ"])
def test_signed_in_user_of_any_member_sees_members_only_contacts(world: World, who: str) -> None:
    token = world.token(world.fed.members[who])
    with world.public() as channel:
        seen: set[str] = set()
        for m in methods(world.log_size):
            out = call(channel, m, token)
            assert out.code == grpc.StatusCode.OK, f"{m.path}: {out.code} {out.reason}"
            assert out.caller == f"prosecutor-1 (prosecutor, {who})", m.path
            if leaked(out.body):
                seen.add(m.path.rsplit("/", 1)[1])
        # users see members-only records through lookups, and whole log entries too, for
        # their offline copy (`counterpart mirror`; README "Where the code differs")
        assert {"GetContact", "ListContacts", "FindCounterpart", "ListRecordRevisions", "GetEntries"} <= seen
    audit = world.node.store.audit_rows(1000)
    assert {r.record for r in audit} >= {RESTRICTED}
    assert all(r.caller == f"prosecutor-1 (prosecutor, {who})" for r in audit)


def test_member_node_certificate_gets_full_entries(world: World) -> None:
    with world.peer(world.az) as channel:
        seen = set()
        for m in methods(world.log_size):
            out = call(channel, m)
            assert out.code == grpc.StatusCode.OK, f"{m.path}: {out.code} {out.reason}"
            assert out.caller == "node of AZ"
            if leaked(out.body):
                seen.add(m.path.rsplit("/", 1)[1])
        assert {"GetEntries", "GetContact", "ListContacts"} <= seen
    with world.public() as channel:  # the same entries to an anonymous caller: withheld
        entries = call(channel, methods(world.log_size)[13])
        assert entries.code == grpc.StatusCode.OK
        assert not leaked(entries.body)


def test_bad_tokens_are_refused_on_every_method(world: World) -> None:
    good = world.token(world.ge)
    header, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "administrator"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    revoked = world.token(world.ge, subject="leaver")
    assert world.node.store.revoke_grants("leaver", world.clock()) != []
    cases = {
        "TOKEN_EXPIRED": world.token(world.ge, at=-timedelta(days=2), valid_for=timedelta(days=1)),
        "TOKEN_WRONG_FEDERATION": world.token(world.ge, federation=TlsFederation([signing.SigningKey.generate()], "other",
                                                                                   {"GE": world.ge})),
        "TOKEN_INVALID": f"{header}.{forged_payload}.{sig}",
        "TOKEN_REVOKED": revoked,
        "TOKEN_MALFORMED": "not-a-token",
        "TOKEN_UNKNOWN_KEY": access.issue_token(
            signing.SigningKey.generate(), world.node.federation(), "GE", "x", "prosecutor", world.clock(),
            timedelta(hours=1)).token,
    }
    with world.public() as channel:
        for reason, token in cases.items():
            expect_all(channel, world, grpc.StatusCode.UNAUTHENTICATED, reason, token)


def test_certificate_not_in_the_document_cannot_connect(world: World) -> None:
    stranger = new_member("XX", world.clock())
    with world.peer(stranger) as channel:
        out = call(channel, methods(world.log_size)[0])
        assert out.code == grpc.StatusCode.UNAVAILABLE  # the handshake fails: no call is made
    with client_channel(world.server.peer_address, world.node.federation().members(), "GE") as channel:
        assert call(channel, methods(world.log_size)[0]).code == grpc.StatusCode.UNAVAILABLE  # no certificate


def test_a_new_document_version_revokes_certificate_and_member_while_the_node_runs(world: World) -> None:
    kz_token = world.token(world.kz)
    az_channel = world.peer(world.az)
    assert call(az_channel, methods(world.log_size)[13]).caller == "node of AZ"
    with world.public() as channel:
        assert call(channel, methods(world.log_size)[0], kz_token).code == grpc.StatusCode.OK
    # version 2: KZ leaves the federation, AZ's certificate is withdrawn
    world.node.install_federation(world.fed.document(["GE", "AZ"], world.clock(), version=2, without_certificate=["AZ"]))
    world.server.directory.federation()  # the server reads the same node
    expect_all(az_channel, world, grpc.StatusCode.PERMISSION_DENIED, "CERTIFICATE_NOT_ADMITTED")
    az_channel.close()
    with world.peer(world.az) as fresh:  # a new connection does not get through the handshake
        assert call(fresh, methods(world.log_size)[0]).code == grpc.StatusCode.UNAVAILABLE
    with world.public() as channel:
        expect_all(channel, world, grpc.StatusCode.UNAUTHENTICATED, "TOKEN_UNKNOWN_MEMBER", kz_token)


def test_clients_and_nodes_verify_the_node_certificate(world: World) -> None:
    """A client that pins another member's certificate for this address refuses the node."""
    with client_channel(world.server.address, world.node.federation().members(), "AZ") as channel:
        assert call(channel, methods(world.log_size)[0]).code == grpc.StatusCode.UNAVAILABLE
    assert tls.member_of_certificate(world.node.federation().members(), world.ge.certificate) == "GE"


def test_a_third_node_syncs_anonymously_then_is_admitted_and_fills_in(tmp_path: Path, clock: Clock) -> None:
    """AZ's node is in the federation but its certificate is not admitted yet: it syncs GE's
    log through GE's public listener (no client certificate), holds members-only entries as
    leaf hashes, verifies the whole log and answers public lookups. Once a new document
    version lists its certificate, it syncs from GE's peer listener over mutual TLS and fills
    in every withheld entry, each checked against its leaf hash."""
    from tests_support_cluster import wait_for  # type: ignore[import-not-found, unused-ignore]

    from counterpart.v1 import directory_service_pb2 as ds_
    from directory_server.lookup import Directory

    fed = TlsFederation([signing.SigningKey.generate()])
    for code in ("GE", "AZ"):
        fed.members[code] = new_member(code, clock())
    v1 = fed.document(["GE", "AZ"], clock(), without_certificate=["AZ"])
    ge_node = make_tls_node(tmp_path, fed.members["GE"], v1, publish="GE")
    az_node = make_tls_node(tmp_path, fed.members["AZ"], v1)
    ge = serve(ge_node, fed.members["GE"], peers=[])
    az = serve(az_node, fed.members["AZ"], peers=[f"tls://{ge.address}"], sync_interval=0.5)
    try:
        origin = ge_node.store.checkpoint("GE")
        wait_for(lambda: az_node.store.checkpoint("GE") == origin, 20, "AZ to hold GE's checkpoint")
        report = az_node.verify_report()
        assert report.problems == [] and report.withheld == {"GE": len(members_only_names("GE"))}
        with az_node.store.engine.connect() as c:
            stored = b"".join(bytes(r[0]) for r in c.exec_driver_sql("SELECT envelope FROM entries"))
        assert not leaked(stored)
        public = Directory(az_node.store, az_node.federation, az_node.clock).find_counterpart(
            ds_.FindCounterpartRequest(requested_member="GE", request_type="mla.general")
        )
        assert public.candidates and not leaked(public.SerializeToString())
        # the anonymous copy relays what it was given and no more
        with client_channel(az.address, az_node.federation().members(), "AZ") as channel:
            assert not leaked(call(channel, methods(ge_node.store.log_size("GE"))[13]).body)

        v2 = fed.document(["GE", "AZ"], clock(), version=2)  # AZ's certificate admitted
        ge_node.install_federation(v2)
        wait_for(lambda: az_node.federation().version == 2, 20, "AZ to follow version 2")
        az.set_peers([f"tls://{ge.peer_address}"])
        wait_for(lambda: az_node.verify_report().withheld == {}, 20, "AZ to fill in GE's withheld entries")
        assert az_node.verify_report().problems == []
        with az_node.store.engine.connect() as c:
            stored = b"".join(bytes(r[0]) for r in c.exec_driver_sql("SELECT envelope FROM entries"))
        assert set(leaked(stored)) == set(SENTINELS)
        assert [e for e in ge_node.store.audit_rows(1000) if e.caller == "node of AZ" and e.method == "GetEntries"]
    finally:
        az.stop(grace=0)
        ge.stop(grace=0)
        az_node.close()
        ge_node.close()


def test_both_listeners_speak_tls_1_3_with_the_listed_certificate(world: World, tmp_path: Path) -> None:
    """An outside TLS client (Python's ssl, not gRPC) that trusts only GE's listed certificate."""
    import socket
    import ssl

    ca = tmp_path / "ge.pem"
    ca.write_bytes(tls.pem(world.ge.certificate))
    for address, client in ((world.server.address, None), (world.server.peer_address, world.az)):
        context = ssl.create_default_context(cafile=str(ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.set_alpn_protocols(["h2"])
        if client is not None:  # the peer listener insists on a member node's certificate
            (tmp_path / "az.pem").write_bytes(client.identity.certificate_pem + client.identity.key_pem)
            context.load_cert_chain(str(tmp_path / "az.pem"))
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=tls.member_name("GE")) as conn:
            assert conn.version() == "TLSv1.3"
            assert conn.getpeercert(binary_form=True) == world.ge.certificate
