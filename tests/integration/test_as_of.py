"""As of (issue 10, item 2): the sample reorganization of Mtskheta-Mtianeti answered before and
after its date, in effect then and as published then, over real gRPC, each answer verified; a
node that shows a version not in effect at the instant is caught; bad instants are refused."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from conftest import PASSPHRASE, Clock  # type: ignore[import-not-found, unused-ignore]

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import directory_service_pb2_grpc as ds_grpc
from counterpart.v1 import records_pb2
from counterpart_core import effective, log, merkle, signing
from counterpart_core import federation as fed
from directory_client.cli import main as client_main
from directory_client.client import DirectoryClient
from directory_client.errors import ServerError, VerificationFailed
from directory_client.verify import verify_response
from directory_server.node import Node
from directory_server.service.server import NodeServer
from directory_server.storage.store import Store, sqlite_url

OLD = "members/GE/authorities/mtskheta-po"
NEW = "members/GE/authorities/mtskheta-mtianeti-po"
PGO = "members/GE/authorities/pgo"
QUESTION = {"requested_member": "GE", "request_type": "mla.hearing.witness", "place": "Mtskheta"}


def at(text: str) -> datetime:
    return effective.parse_instant(text)


@dataclass
class World:
    node: Node
    server: NodeServer
    clock: Clock

    def client(self, address: str = "") -> DirectoryClient:
        return DirectoryClient(address or self.server.address, federation=self.node.federation(), clock=self.clock)


def _replace_block(path: Path, record_id: str, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    start = text.index(f"- id: {record_id}\n")
    end = text.find("\n- id: ", start + 1)
    end = len(text) if end < 0 else end
    block = text[start:end]
    assert old in block, f"the sample {record_id} changed shape: {old!r} is gone"
    path.write_text(text[:start] + block.replace(old, new, 1) + text[end:], encoding="utf-8")


@pytest.fixture
def world(make_node: Callable[..., Node], sample_dir: Callable[[str], Path], clock: Clock) -> Iterator[World]:
    """GE publishes its sample on 1 June 2026 (the reorganization dated 1 January 2027 in it);
    on 1 September 2026 a retroactive correction of the Mtskheta office, in effect from 1 July
    (it also accepts English); the node then answers on 1 February 2027."""
    clock.now = at("2026-06-01T09:00:00Z")
    node = make_node("GE", ["GE", "AZ", "AM"])
    records = sample_dir("GE")
    node.publish(records, PASSPHRASE)
    clock.now = at("2026-09-01T09:00:00Z")
    _replace_block(records / "authorities.yaml", "mtskheta-po", "  languages: [ka]\n", "  languages: [ka, en]\n")
    _replace_block(records / "authorities.yaml", "mtskheta-po", "effective: {until: 2027-01-01}",
                   "effective: {from: 2026-07-01, until: 2027-01-01}")
    plan = node.publish(records, PASSPHRASE)
    assert plan.appended == 1
    clock.now = at("2027-02-01T09:00:00Z")
    node.heartbeat(signing.read_key_file(node.config.key_path, PASSPHRASE), force=True)
    server = NodeServer(node, "127.0.0.1:0", access_log=False)
    server.start()
    yield World(node, server, clock)
    server.stop(grace=0)


def executor(resp: ds.FindCounterpartResponse) -> str:
    return next(c.authority.name for c in resp.candidates if records_pb2.COMPETENCE_ROLE_EXECUTES in c.roles
                and c.authority.name != PGO)


def candidate(resp: ds.FindCounterpartResponse, name: str) -> records_pb2.Authority:
    return next(c.authority for c in resp.candidates if c.authority.name == name)


def test_the_reorganization_before_and_after_its_date(world: World) -> None:
    with world.client() as client:
        for reading in (effective.IN_EFFECT, effective.PUBLISHED):
            before, verified = client.find_counterpart(**QUESTION, as_of=at("2026-12-15"), reading=reading)
            assert verified is not None and verified.records_checked > 0
            assert executor(before) == OLD
            assert NEW not in {c.authority.name for c in before.candidates}
            assert before.as_of.time.ToDatetime(UTC) == at("2026-12-15")
            assert before.as_of.reading == (
                ds.AS_OF_READING_PUBLISHED if reading == effective.PUBLISHED else ds.AS_OF_READING_IN_EFFECT)
            after, _ = client.find_counterpart(**QUESTION, as_of=at("2027-01-15"), reading=reading)
            assert executor(after) == NEW
            assert OLD not in {c.authority.name for c in after.candidates}
        current, _ = client.find_counterpart(**QUESTION)  # 1 February 2027: in effect now
        assert executor(current) == NEW
        assert current.as_of.reading == ds.AS_OF_READING_IN_EFFECT
        assert current.as_of.time.ToDatetime(UTC) == world.clock()


def test_a_retroactive_correction_is_in_effect_then_but_was_not_published_then(world: World) -> None:
    with world.client() as client:
        in_effect, _ = client.find_counterpart(**QUESTION, as_of=at("2026-08-01"))
        published, _ = client.find_counterpart(**QUESTION, as_of=at("2026-08-01"), reading=effective.PUBLISHED)
        before_correction, _ = client.find_counterpart(**QUESTION, as_of=at("2026-06-15"))
    assert list(candidate(in_effect, OLD).languages) == ["ka", "en"]  # today's knowledge
    assert list(candidate(published, OLD).languages) == ["ka"]  # what the directory said on 1 August
    assert list(candidate(before_correction, OLD).languages) == ["ka"]  # the correction starts 1 July


def test_get_and_list_as_of(world: World) -> None:
    with world.client() as client:
        with pytest.raises(ServerError) as e:
            client.get(NEW, as_of=at("2026-12-15"))
        assert e.value.reason == "RECORD_NOT_FOUND"
        got, verified = client.get(NEW, as_of=at("2027-01-15"))
        assert isinstance(got, ds.GetAuthorityResponse) and got.authority.name == NEW
        assert verified is not None and got.as_of.time.ToDatetime(UTC) == at("2027-01-15")
        with pytest.raises(ServerError):
            client.get(OLD, as_of=at("2027-01-15"))
        old, _ = client.get(OLD, as_of=at("2026-08-01"), reading=effective.PUBLISHED)
        assert isinstance(old, ds.GetAuthorityResponse) and list(old.authority.languages) == ["ka"]
        for when, present, absent in (("2026-12-15", OLD, NEW), ("2027-01-15", NEW, OLD)):
            page, _ = client.list("authorities", "members/GE", page_size=500, as_of=at(when))
            assert isinstance(page, ds.ListAuthoritiesResponse)
            shown = {a.name for a in page.authorities}
            assert present in shown and absent not in shown and PGO in shown
        # before the sample was published nothing was in effect, and nothing was published
        for reading in (effective.IN_EFFECT, effective.PUBLISHED):
            page, _ = client.list("authorities", "members/GE", as_of=at("2026-05-01"), reading=reading)
            assert isinstance(page, ds.ListAuthoritiesResponse) and not page.authorities
        # without as_of, Get and List answer the latest version of each name, dates visible
        latest, _ = client.get(OLD)
        assert isinstance(latest, ds.GetAuthorityResponse) and not latest.HasField("as_of")
        assert effective.format_period(latest.authority) == "in effect from 2026-07-01 00:00 UTC until 2027-01-01 00:00 UTC"


def test_a_scheduled_version_is_shown_beside_the_one_in_effect(
    make_node: Callable[..., Node], sample_dir: Callable[[str], Path], clock: Clock,
) -> None:
    """In December, the Mtskheta office is in effect and says when it stops; a new version of
    it published in December to take effect on 1 January is proven beside it, with a warning."""
    clock.now = at("2026-12-01T09:00:00Z")
    node = make_node("GE", ["GE", "AZ", "AM"])
    records = sample_dir("GE")
    node.publish(records, PASSPHRASE)
    clock.now = at("2026-12-10T09:00:00Z")
    _replace_block(records / "authorities.yaml", "mtskheta-po", "effective: {until: 2027-01-01}",
                   "effective: {from: 2027-01-01, until: 2027-02-01}")
    node.publish(records, PASSPHRASE)
    seq = node.store.log_size("GE")
    server = NodeServer(node, "127.0.0.1:0", access_log=False)
    server.start()
    try:
        with DirectoryClient(server.address, federation=node.federation(), clock=clock) as client:
            resp, verified = client.find_counterpart(**QUESTION)
        assert verified is not None
        assert executor(resp) == OLD
        shown = candidate(resp, OLD)
        assert effective.format_period(shown) == "in effect until 2027-01-01 00:00 UTC"  # the first version
        proven = [p.leaf_index + 1 for p in resp.proofs if p.name == OLD]
        assert len(proven) == 2 and max(proven) == seq  # the version in effect and the scheduled one
        assert f"{OLD} changes on 2027-01-01 00:00 UTC (published version @{seq} takes effect then)" in resp.warnings
        assert f"{OLD} is no longer in effect from 2027-01-01 00:00 UTC" in resp.warnings
        # the scheduled version shown as the one in effect is caught
        forged = ds.FindCounterpartResponse()
        forged.CopyFrom(resp)
        pending = next(p for p in resp.proofs if p.name == OLD and p.leaf_index + 1 == seq)
        entry = log.verify_entry(bytes(pending.signed_entry), "GE", seq, node.federation())
        for cand in forged.candidates:
            if cand.authority.name == OLD:
                cand.authority.CopyFrom(entry.entry.authority)
        with pytest.raises(VerificationFailed, match="takes effect only from 2027-01-01"):
            verify_response(node.federation(), forged, clock(), ds.FindCounterpartRequest(**QUESTION))
        forged.ClearField("as_of")  # not saying the instant does not help: checked now, by the client's clock
        with pytest.raises(VerificationFailed, match="takes effect only from 2027-01-01"):
            verify_response(node.federation(), forged, clock(), ds.FindCounterpartRequest(**QUESTION))
        resp.ClearField("as_of")  # the honest answer of a node that predates as_of still verifies
        assert verify_response(node.federation(), resp, clock(), ds.FindCounterpartRequest(**QUESTION))
        backdated = ds.FindCounterpartResponse()
        backdated.CopyFrom(resp)
        backdated.as_of.time.FromDatetime(at("2026-11-01"))  # a current answer claimed for a past instant
        with pytest.raises(VerificationFailed, match="before the checkpoints it rests on were signed"):
            verify_response(node.federation(), backdated, clock(), ds.FindCounterpartRequest(**QUESTION))
    finally:
        server.stop(grace=0)


class _Backdating(ds_grpc.DirectoryServiceServicer):
    """A hostile node: asked as of an instant, it answers with today's records and claims they
    are the answer of that instant (the instant and reading copied from the request)."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = ds_grpc.DirectoryServiceStub(self.channel)

    def FindCounterpart(
        self, request: ds.FindCounterpartRequest, context: grpc.ServicerContext,
    ) -> ds.FindCounterpartResponse:
        honest = ds.FindCounterpartRequest()
        honest.CopyFrom(request)
        honest.ClearField("as_of")
        resp: ds.FindCounterpartResponse = self.stub.FindCounterpart(honest)
        resp.as_of.CopyFrom(request.as_of)
        if not resp.as_of.reading:
            resp.as_of.reading = ds.AS_OF_READING_IN_EFFECT
        return resp

    def GetAuthority(
        self, request: ds.GetAuthorityRequest, context: grpc.ServicerContext,
    ) -> ds.GetAuthorityResponse:
        resp: ds.GetAuthorityResponse = self.stub.GetAuthority(ds.GetAuthorityRequest(name=request.name))
        resp.as_of.CopyFrom(request.as_of)
        return resp


def test_a_node_that_backdates_todays_records_is_caught(world: World) -> None:
    hostile = _Backdating(world.server.address)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ds_grpc.add_DirectoryServiceServicer_to_server(hostile, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with world.client(f"127.0.0.1:{port}") as client:
            with pytest.raises(VerificationFailed, match=f"{NEW}.*takes effect only from 2027-01-01"):
                client.find_counterpart(**QUESTION, as_of=at("2026-12-15"))
            with pytest.raises(VerificationFailed, match=f"{NEW}.*takes effect only from 2027-01-01"):
                client.get(NEW, as_of=at("2026-12-15"))
            # the retroactive correction, shown for what the directory said before it was published
            with pytest.raises(VerificationFailed, match="published only at 2026-09-01"):
                client.get(OLD, as_of=at("2026-08-01"), reading=effective.PUBLISHED)
            # honest where today's answer is the answer of then
            resp, verified = client.find_counterpart(**QUESTION, as_of=at("2027-01-20"))
            assert verified is not None and executor(resp) == NEW
    finally:
        server.stop(grace=0)
        hostile.channel.close()


def test_bad_instants_are_refused(world: World) -> None:
    from tests_support_tls import error_info  # type: ignore[import-not-found, unused-ignore]

    future = ds.AsOf()
    future.time.FromDatetime(world.clock() + timedelta(days=1))
    cases = [
        (ds.FindCounterpartRequest(**QUESTION, as_of=future), "FindCounterpart", "AS_OF_IN_FUTURE"),
        (ds.GetAuthorityRequest(name=NEW, as_of=ds.AsOf(reading=ds.AS_OF_READING_PUBLISHED)), "GetAuthority",
         "AS_OF_TIME_MISSING"),
        (ds.ListAuthoritiesRequest(parent="members/GE", as_of=future), "ListAuthorities", "AS_OF_IN_FUTURE"),
    ]
    with grpc.insecure_channel(world.server.address) as channel:
        stub = ds_grpc.DirectoryServiceStub(channel)
        for request, method, reason in cases:
            with pytest.raises(grpc.RpcError) as e:
                getattr(stub, method)(request)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            info = error_info(e.value)
            assert info is not None and info.reason == reason, method
    with world.client() as client, pytest.raises(ServerError) as err:
        client.find_counterpart(**QUESTION, as_of=world.clock() + timedelta(hours=1))
    assert err.value.reason == "AS_OF_IN_FUTURE" and "is in the future" in str(err.value)


def test_members_only_versions_stay_hidden_as_of(served: tuple[NodeServer, grpc.Channel]) -> None:
    from tests_support_tls import members_only_names, members_only_sentinels  # type: ignore[import-not-found, unused-ignore]

    stub = ds_grpc.DirectoryServiceStub(served[1])
    now = ds.AsOf()
    now.time.FromDatetime(served[0].node.clock())  # the node's (test) clock: the sample's publication
    restricted = members_only_names("GE")[0]
    with pytest.raises(grpc.RpcError) as e:
        stub.GetContact(ds.GetContactRequest(name=restricted, as_of=now))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    body = b"".join(
        r.SerializeToString() for r in (
            stub.ListContacts(ds.ListContactsRequest(parent="members/GE", as_of=now)),
            stub.FindCounterpart(ds.FindCounterpartRequest(requested_member="GE", request_type="mla.general",
                                                          urgent=True, as_of=now)),
            stub.FindCounterpart(ds.FindCounterpartRequest(requested_member="GE", request_type="mla.general",
                                                          urgent=True)),
        )
    )
    assert not [s for s in members_only_sentinels("GE") if s in body]
    assert restricted.encode() not in body


# --- the command line -------------------------------------------------------------------------


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(served: tuple[NodeServer, grpc.Channel], tmp_path: Path) -> Run:
    server = served[0]
    envelope = server.node.store.federation_envelope()
    assert envelope is not None
    fed.write_file(tmp_path / "federation.json", envelope)
    env = {"COUNTERPART_HOME": str(tmp_path / "home"), "COLUMNS": "80", "COUNTERPART_SERVER": server.address}
    assert CliRunner().invoke(client_main, ["trust", str(tmp_path / "federation.json")], env=env).exit_code == 0

    def run(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(client_main, list(args), env=env)
        return result.exit_code, result.stdout, result.stderr

    run.node = server.node  # type: ignore[attr-defined]
    return run


def test_counterpart_find_as_of_says_which_reading(cli: Run) -> None:
    when = cli.node.clock().strftime("%Y-%m-%dT%H:%M:%SZ")  # type: ignore[attr-defined]  # the sample's publication
    find = ("find", "--in", "GE", "--type", "mla.hearing.witness", "--place", "Batumi")
    code, out, err = cli(*find, "--as-of", when)
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("as of "))
    assert line.startswith(f"as of {when[:10]} {when[11:16]}") and line.endswith(": in effect then (today's knowledge)")
    assert "members/GE/authorities/ajara-po" in out and "verified" in out
    assert all(len(line) <= 80 for line in out.splitlines())
    code, out, err = cli(*find, "--as-of", when, "--published")
    assert code == 0, err
    assert ": as published then (what the directory said)" in out
    code, out, _ = cli(*find, "--as-of", when, "--format", "json")
    assert code == 0 and json.loads(out)["answer"]["as_of"]["reading"] == "AS_OF_READING_IN_EFFECT"
    code, out, _ = cli("show", NEW)  # the current version, its dates shown
    assert code == 0 and "from 2027-01-01 00:00 UTC" in out
    code, out, _ = cli("show", PGO, "--as-of", when)
    assert code == 0 and "as of " in out


@pytest.mark.parametrize(("args", "message"), [
    (["--as-of", "2999-01-01"], "is in the future"),
    (["--as-of", "next tuesday"], "is not a date or time"),
    (["--published"], "--published needs --as-of"),
])
def test_counterpart_refuses_bad_instants(cli: Run, args: list[str], message: str) -> None:
    code, out, err = cli("find", "--in", "GE", "--type", "mla.general", *args)
    assert code == 2
    assert message in err and out == ""
    assert "Traceback" not in err


def test_views_are_cached_by_what_they_depend_on(world: World) -> None:
    from directory_server.asof import MAX_VIEWS, AsOfViews, Instant

    views = AsOfViews(world.node.store, world.node.federation, world.clock)
    december = views.view(Instant(at("2026-12-15"), effective.IN_EFFECT))
    assert views.view(Instant(at("2026-12-20"), effective.IN_EFFECT)) is december  # no boundary between
    assert views.view(Instant(at("2026-12-15"), effective.PUBLISHED)) is not december
    assert views.view(Instant(at("2027-01-15"), effective.IN_EFFECT)) is not december
    for month in range(1, 10):  # many instants: a few views kept, the oldest dropped
        views.view(Instant(at(f"2026-0{month}-02"), effective.PUBLISHED))
    assert len(views._views) <= MAX_VIEWS
    # a publication changes what every view depends on (the log size is part of the key)
    before = views.view(Instant(at("2026-12-15"), effective.IN_EFFECT))
    records = world.node.config.data_dir.parent / "sample-GE"
    _replace_block(records / "authorities.yaml", "pgo", "  languages: [ka]\n", "  languages: [ka, en]\n")
    world.node.publish(records, PASSPHRASE)
    after = views.view(Instant(at("2026-12-15"), effective.IN_EFFECT))
    assert after is not before
    # the sizes parsed from the checkpoints follow the new checkpoint (a current answer reads them once)
    assert views._keys()["GE"] == (world.node.store.log_size("GE"), 0)
    assert views.dated("GE", views._keys())
    pgo = after.get(PGO, "authorities")[0].record
    assert isinstance(pgo, records_pb2.Authority) and list(pgo.languages) == ["ka"]  # published 2027: not then


def no_federation() -> fed.Federation:
    raise AssertionError("the keys and versions of the as-of views need no federation document")


def test_a_fill_of_withheld_entries_changes_what_views_depend_on(tmp_path: Path) -> None:
    """A peer's fill makes an entry known without a new checkpoint: the key of the answers
    (and the versions they read) follow it, though the checkpoints parsed for it did not change."""
    from directory_server.asof import AsOfViews

    key, now = signing.SigningKey.generate(), at("2026-06-01T09:00:00Z")
    desk, hidden = (
        records_pb2.Contact(name=f"members/GE/contacts/{ident}", authority=PGO, role="desk", visibility=visibility)
        for ident, visibility in (("desk", records_pb2.VISIBILITY_PUBLIC), ("hidden", records_pb2.VISIBILITY_MEMBERS))
    )
    first = log.build_entry("GE", 1, desk.name, desk, now, key)
    second = log.build_entry("GE", 2, hidden.name, hidden, now, key)
    store = Store(sqlite_url(tmp_path))
    try:
        root = merkle.root_hash([first.leaf_hash, second.leaf_hash])
        store.append("GE", 0, [first, log.withheld_entry("GE", 2, second.leaf_hash)],
                     log.build_checkpoint("GE", 2, root, now, key))
        views = AsOfViews(store, no_federation, lambda: now)
        assert views._keys() == {"GE": (2, 1)} and views.versions(hidden.name, "GE") == []
        checkpoint = store.checkpoint("GE")
        assert store.fill("GE", [second]) == 1
        assert store.checkpoint("GE") == checkpoint  # the same checkpoint: only the count tells
        assert views._keys() == {"GE": (2, 0)}
        assert [v.seq for v, _ in views.versions(hidden.name, "GE")] == [2]
    finally:
        store.close()
