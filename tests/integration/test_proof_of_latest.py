"""Proof of latest and of absence over real gRPC (issue 10 item 3, DESIGN §3 state_root).

A real GE node publishes the sample data, then a new version of one rule. Its answers prove
that each record shown is the latest version and that a name asked for does not exist; the
client checks both by default. A hostile directory node (tests/hostile_directory.py, a real
gRPC server answering from the honest node's data, altered) that serves a superseded version
as current, denies an existing name (without proof, or with a forged one) or leaves a rule out
of FindCounterpart is caught by the client and by the CLI. A replication peer offering a
checkpoint whose state root its log does not make is refused, and nothing is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from conftest import PASSPHRASE  # type: ignore[import-not-found, unused-ignore]
from hostile_directory import HostileDirectoryServer
from sqlalchemy import update
from tests_support_tls import members_only_names, members_only_sentinels

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import directory_service_pb2_grpc as ds_grpc
from counterpart_core import federation as fed
from counterpart_core import log, merkle
from counterpart_core.errors import VerificationError
from counterpart_core.state import StateRoots
from directory_client.cli import main
from directory_client.client import DirectoryClient
from directory_client.errors import ServerError, VerificationFailed
from directory_server.node import Node
from directory_server.service.server import NodeServer
from directory_server.storage.models import CheckpointRow

RULE = "members/GE/rules/mla.general"


@dataclass
class World:
    node: Node
    server: NodeServer
    channel: grpc.Channel
    hostile: HostileDirectoryServer
    missing_type: str  # a request type GE published no rule for

    def client(self, hostile: bool = False) -> DirectoryClient:
        address = self.hostile.address if hostile else self.server.address
        return DirectoryClient(address, federation=self.node.federation())


@pytest.fixture
def world(make_node: Callable[..., Node], sample_dir: Callable[[str], Path]) -> Iterator[World]:
    node = make_node("GE", ["GE", "AZ", "AM"])
    data = sample_dir("GE")
    node.publish(data, PASSPHRASE)
    rules = data / "rules.yaml"
    text = rules.read_text(encoding="utf-8")
    rules.write_text(text.replace("  informal_consultation_recommended: true\n", "  informal_consultation_recommended: false\n", 1),
                     encoding="utf-8")
    assert node.publish(data, PASSPHRASE).appended == 1  # a second version of mla.general
    server = NodeServer(node, "127.0.0.1:0", access_log=False)
    server.start()
    channel = grpc.insecure_channel(server.address)
    hostile = HostileDirectoryServer(node, channel)
    published = {c.name.rsplit("/", 1)[1] for c in node.store.current_entries("GE") if "/rules/" in c.name}
    missing = min(set(node.federation().vocabulary.request_types) - published)
    yield World(node, server, channel, hostile, missing)
    hostile.stop()
    channel.close()
    server.stop(grace=0)


def test_checkpoints_sign_both_state_roots(world: World) -> None:
    cp = world.node.held_checkpoint("GE")
    assert cp is not None and cp.state is not None
    assert cp.state.size == len(world.node.store.current_entries("GE"))
    assert cp.state.public_size == cp.state.size - len(members_only_names("GE"))


def test_every_record_shown_is_proven_the_latest(world: World) -> None:
    with world.client() as c:
        answer, verified = c.get(RULE)
        assert isinstance(answer, ds.GetRuleResponse)
        assert verified is not None and verified.latest_proven == 1 and not verified.warnings
        assert answer.proof.state.leaves[0].seq == answer.proof.leaf_index + 1
        listed, verified = c.list("rules", "members/GE")
        assert verified is not None and verified.latest_proven == len(listed.rules) > 1  # type: ignore[attr-defined]
        found, verified = c.find_counterpart(requested_member="GE", request_type="mla.general", place="Batumi")
        assert verified is not None and verified.latest_proven == len(found.proofs)


def test_a_missing_name_and_a_missing_rule_are_proven_absent(world: World) -> None:
    with world.client() as c:
        with pytest.raises(ServerError) as e:
            c.get("members/GE/rules/no-such-rule")
        assert e.value.not_found and "absence proven" in e.value.message
        found, verified = c.find_counterpart(requested_member="GE", request_type=world.missing_type)
        assert verified is not None
        assert [a.name for a in found.absences] == [f"members/GE/rules/{world.missing_type}"]


def test_anonymous_proofs_hold_no_members_only_name(world: World) -> None:
    """Anonymous answers, absence proofs included, hold no members-only name or sentinel:
    the public state tree proves them, whose leaves are public records only."""
    stub = ds_grpc.DirectoryServiceStub(world.channel)
    sentinels = members_only_sentinels("GE")
    hidden = [n.encode() for n in members_only_names("GE")]
    contacts = stub.ListContacts(ds.ListContactsRequest(parent="members/GE", page_size=500))
    rules = stub.ListRules(ds.ListRulesRequest(parent="members/GE", page_size=500))
    found = stub.FindCounterpart(ds.FindCounterpartRequest(requested_member="GE", request_type=world.missing_type))
    answers = [contacts.SerializeToString(), rules.SerializeToString(), found.SerializeToString()]
    # the proofs name no members-only record (a public rule may name a contact point itself)
    proofs = [p.state.SerializeToString() for p in [*contacts.proofs, *rules.proofs, *found.proofs]]
    proofs += [a.SerializeToString() for a in found.absences]
    assert all(p.state.scope == ds.STATE_SCOPE_PUBLIC for p in [*contacts.proofs, *rules.proofs])
    for name in members_only_names("GE"):
        with pytest.raises(grpc.RpcError) as e:
            stub.GetContact(ds.GetContactRequest(name=name + "x"))  # its neighbour in the full tree
        trailers = dict(e.value.trailing_metadata())  # type: ignore[attr-defined]
        details = trailers["grpc-status-details-bin"]
        assert b"counterpart.v1.AbsenceProof" in details
        answers.append(details)
        proofs.append(details.replace((name + "x").encode(), b""))  # the name asked is echoed
    for raw in answers:
        assert not [s for s in sentinels if s in raw]
    for raw in proofs:
        assert not [n for n in hidden if n in raw]


def test_a_superseded_version_served_as_current_is_caught(world: World) -> None:
    world.hostile.servicer.mode = "superseded"
    with world.client(hostile=True) as c, pytest.raises(VerificationFailed) as e:
        c.get(RULE)
    assert "is not the latest version (latest: @" in e.value.message
    world.hostile.servicer.mode = "superseded-forged-state"
    with world.client(hostile=True) as c, pytest.raises(VerificationFailed) as e:
        c.get(RULE)
    assert "state proof" in e.value.message


def test_a_superseded_version_beside_its_latest_is_caught(world: World) -> None:
    """A current answer may prove an older version beside the latest only when the latest is
    scheduled (not yet in effect); an older version shown beside a latest one already in
    effect is caught, although every entry and every state proof in it is genuine."""
    world.hostile.servicer.mode = "superseded-beside-latest"
    with world.client(hostile=True) as c, pytest.raises(VerificationFailed) as e:
        c.find_counterpart(requested_member="GE", request_type="mla.general", place="Batumi")
    assert f"rule {RULE}" in e.value.message and "supersedes it" in e.value.message


@pytest.mark.parametrize("mode", ["deny", "deny-forged"])
def test_an_existing_name_denied_is_caught(world: World, mode: str) -> None:
    world.hostile.servicer.mode = mode
    with world.client(hostile=True) as c, pytest.raises(VerificationFailed) as e:
        c.get(RULE)
    assert ("denied that" in e.value.message) if mode == "deny" else ("absent" in e.value.message)


def test_a_rule_left_out_of_find_counterpart_is_caught(world: World) -> None:
    world.hostile.servicer.mode = "omit-rule"
    with world.client(hostile=True) as c, pytest.raises(VerificationFailed) as e:
        c.find_counterpart(requested_member="GE", request_type="mla.general", place="Batumi")
    assert f"omitted {RULE} without proof" in e.value.message


def _cli(world: World, tmp_path: Path, *args: str, hostile: bool = False) -> tuple[int, str, str]:
    home = tmp_path / "home"
    envelope = world.node.store.federation_envelope()
    assert envelope is not None
    fed_file = tmp_path / "federation.json"
    fed.write_file(fed_file, envelope)
    env = {"COUNTERPART_HOME": str(home), "COLUMNS": "80", "COUNTERPART_SERVER": None}
    runner = CliRunner()
    assert runner.invoke(main, ["trust", str(fed_file)], env=env).exit_code == 0
    server = world.hostile.address if hostile else world.server.address
    result = runner.invoke(main, ["--server", server, *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def test_the_cli_says_latest_proven_and_fails_on_a_hostile_node(world: World, tmp_path: Path) -> None:
    code, out, _ = _cli(world, tmp_path, "show", RULE)
    assert code == 0 and "latest: proven" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    for mode, args, words in [
        ("superseded", ["show", RULE], "is not the latest version"),
        ("deny", ["show", RULE], "denied that"),
        ("omit-rule", ["find", "--in", "GE", "--type", "mla.general", "--place", "Batumi"], "without proof"),
    ]:
        world.hostile.servicer.mode = mode
        code, out, err = _cli(world, tmp_path, *args, hostile=True)
        assert code == 1, (mode, out, err)
        assert err.startswith("error: ") and words in err, (mode, err)


def test_ingest_refuses_a_checkpoint_with_a_wrong_state_root(world: World, make_node: Callable[..., Node]) -> None:
    """A checkpoint validly signed by GE whose state root its log does not make is refused
    whole by a node ingesting it, and nothing is stored."""
    held = world.node.held_checkpoint("GE")
    assert held is not None and held.state is not None
    entries = world.node.verified_entries("GE")
    key = world.node.signing_key(PASSPHRASE)
    wrong = StateRoots(held.state.root, held.state.size, b"\x07" * 32, held.state.public_size)
    forged = log.build_checkpoint("GE", held.size, held.root_hash, world.node.clock(), key, state=wrong)
    other = make_node("AZ", ["GE", "AZ", "AM"])
    with pytest.raises(VerificationError) as e:
        other.store.append("GE", 0, entries, forged)
    assert e.value.reason == "STATE_ROOT_MISMATCH"
    assert other.store.log_size("GE") == 0 and other.store.checkpoint("GE") is None
    assert other.store.current_entries("GE") == []
    other.store.append("GE", 0, entries, held)  # the genuine one goes in
    assert other.store.checkpoint("GE") == held.envelope
    assert merkle.root_hash(other.store.leaf_hashes("GE")) == held.root_hash


def test_node_verify_finds_a_stored_checkpoint_whose_state_root_its_log_does_not_make(world: World) -> None:
    held = world.node.held_checkpoint("GE")
    assert held is not None and held.state is not None
    assert world.node.verify()[1] == []
    wrong = StateRoots(b"\x05" * 32, held.state.size, held.state.public_root, held.state.public_size)
    key = world.node.signing_key(PASSPHRASE)
    forged = log.build_checkpoint("GE", held.size, held.root_hash, world.node.clock(), key, state=wrong)
    with world.node.store.transaction() as s:  # as a damaged disk would hold it
        s.execute(update(CheckpointRow).where(CheckpointRow.member == "GE").values(envelope=forged.envelope))
    assert [p.reason for p in world.node.verify()[1]] == ["STATE_ROOT_MISMATCH"]


def test_a_checkpoint_without_state_roots_stays_valid_and_the_answer_says_not_proven(
    world: World, tmp_path: Path
) -> None:
    """A checkpoint signed before state roots existed: answers verify as before, with a
    warning that nothing proves the record is the latest, and a NOT_FOUND stays one."""
    held = world.node.held_checkpoint("GE")
    assert held is not None
    key = world.node.signing_key(PASSPHRASE)
    world.node.store.put_checkpoint(log.build_checkpoint("GE", held.size, held.root_hash, world.node.clock(), key))
    with world.client() as c:
        answer, verified = c.get(RULE)
        assert isinstance(answer, ds.GetRuleResponse) and not answer.proof.HasField("state")
        assert verified is not None and verified.latest_proven == 0
        assert verified.warnings == ["GE's checkpoint carries no state root: not proven to be the latest"]
        with pytest.raises(ServerError) as e:
            c.get("members/GE/rules/no-such-rule")
        assert e.value.not_found and "absence proven" not in e.value.message
        found, _ = c.find_counterpart(requested_member="GE", request_type=world.missing_type)
        assert not found.absences
    code, out, _ = _cli(world, tmp_path, "show", RULE)
    assert code == 0 and "latest: GE's checkpoint carries no state root: not proven to be" in out
    assert "latest: proven" not in out and max(len(line) for line in out.splitlines()) <= 80
