"""counterpart-node: init, the federation document's life cycle, heartbeats and staleness."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from tests_support_records import GOOD_RECORDS

from counterpart.v1 import directory_service_pb2 as ds
from counterpart_core import federation as fed
from counterpart_core import signing
from directory_server.cli import main
from directory_server.lookup import Directory
from directory_server.node import Node

ENV = {"COUNTERPART_KEY_PASSPHRASE": "test-passphrase"}


def cli(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], env=env if env is not None else ENV)


def test_init_writes_an_encrypted_key_with_mode_600(tmp_path: Path) -> None:
    data = tmp_path / "ge"
    result = cli("init", "--member", "GE", "--data-dir", data)
    assert result.exit_code == 0, result.output
    key = data / "keys" / "node-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    assert (data / "keys" / "node-key.pub").exists() and (data / "node.toml").exists()
    before = key.read_bytes()
    again = cli("init", "--member", "GE", "--data-dir", data)
    assert again.exit_code == 1 and "already holds a node" in again.output
    assert key.read_bytes() == before  # the existing key is not replaced


@pytest.mark.parametrize(("member", "message"), [("Georgia", "malformed"), ("ge", "malformed")])
def test_init_refuses_malformed_member_codes(tmp_path: Path, member: str, message: str) -> None:
    result = cli("init", "--member", member, "--data-dir", tmp_path / "x")
    assert result.exit_code == 1 and message in result.output
    assert not (tmp_path / "x").exists()


def test_init_needs_a_passphrase(tmp_path: Path) -> None:
    result = cli("init", "--member", "GE", "--data-dir", tmp_path / "x", env={"COUNTERPART_KEY_PASSPHRASE": ""})
    assert result.exit_code == 1 and "COUNTERPART_KEY_PASSPHRASE" in result.output
    assert not (tmp_path / "x" / "keys").exists()


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    signing.write_key_file(path, signing.SigningKey.generate(), b"pw")
    path.chmod(0o644)
    with pytest.raises(Exception, match="must be 600"):
        signing.read_key_file(path, b"pw")


@pytest.fixture
def secretariat(tmp_path: Path) -> Path:
    """Two root keys, a node for GE, and an unsigned version 1 that admits GE."""
    for i in (1, 2):
        assert cli("federation", "keygen", "--out", tmp_path / f"root-{i}.key").exit_code == 0
    assert cli("init", "--member", "GE", "--data-dir", tmp_path / "ge").exit_code == 0
    doc = tmp_path / "federation.json"
    r = cli("federation", "init", "--id", "casc", "--root-key", tmp_path / "root-1.pub", "--root-key", tmp_path / "root-2.pub",
            "--threshold", "2", "--out", doc)
    assert r.exit_code == 0, r.output
    r = cli("federation", "add-member", doc, "--code", "GE", "--display-name", "Georgia",
            "--key", tmp_path / "ge" / "keys" / "node-key.pub", "--endpoint", "127.0.0.1:7701")
    assert r.exit_code == 0, r.output
    return tmp_path


def test_federation_life_cycle(secretariat: Path) -> None:
    doc, ge = secretariat / "federation.json", secretariat / "ge"
    # under-signed: verify and install both refuse
    assert cli("federation", "sign", doc, "--key", secretariat / "root-1.key").exit_code == 0
    r = cli("federation", "verify", doc)
    assert r.exit_code == 1 and "signed by 1 of its own root keys; 2 are required" in " ".join(r.output.split())
    r = cli("federation", "install", doc, "--data-dir", ge)
    assert r.exit_code == 1 and "2 are required" in " ".join(r.output.split())
    assert stored_versions(ge) == []
    # the same key twice does not count twice
    r = cli("federation", "sign", doc, "--key", secretariat / "root-1.key")
    assert r.exit_code == 1 and "already signed" in r.output
    assert cli("federation", "sign", doc, "--key", secretariat / "root-2.key").exit_code == 0
    assert cli("federation", "verify", doc).exit_code == 0
    assert cli("federation", "install", doc, "--data-dir", ge).exit_code == 0
    shown = json.loads(cli("federation", "show", doc, "--format", "json").output)
    assert shown["valid_signatures"] == 2 and shown["document"]["members"][0]["code"] == "GE"

    v1 = (secretariat / "v1.json")
    v1.write_bytes(doc.read_bytes())
    # version 2 admits AZ; editing a signed document makes it the next version's draft
    assert cli("init", "--member", "AZ", "--data-dir", secretariat / "az").exit_code == 0
    r = cli("federation", "add-member", doc, "--code", "AZ", "--display-name", "Azerbaijan", "--key", secretariat / "az" / "keys" / "node-key.pub")
    assert r.exit_code == 0 and "draft version 2" in r.output
    assert cli("federation", "sign", doc, "--key", secretariat / "root-1.key").exit_code == 0
    assert cli("federation", "sign", doc, "--key", secretariat / "root-2.key").exit_code == 0
    assert cli("federation", "verify", doc, "--previous", v1).exit_code == 0
    v2 = secretariat / "v2.json"
    v2.write_bytes(doc.read_bytes())
    # another member's key is refused, and the document is left as it was
    before = doc.read_bytes()
    r = cli("federation", "add-member", doc, "--code", "KZ", "--display-name", "Kazakhstan", "--key", secretariat / "az" / "keys" / "node-key.pub")
    assert r.exit_code == 1 and "already belongs to member AZ" in r.output
    assert doc.read_bytes() == before
    # version 3 made from v2, but the node is still at 1: skipping a version is refused
    assert cli("init", "--member", "KZ", "--data-dir", secretariat / "kz").exit_code == 0
    r = cli("federation", "add-member", doc, "--code", "KZ", "--display-name", "Kazakhstan", "--key", secretariat / "kz" / "keys" / "node-key.pub")
    assert r.exit_code == 0
    for k in (1, 2):
        assert cli("federation", "sign", doc, "--key", secretariat / f"root-{k}.key").exit_code == 0
    r = cli("federation", "install", doc, "--data-dir", ge)
    assert r.exit_code == 1 and "does not follow the current version 1" in r.output
    assert stored_versions(ge) == [1]
    assert cli("federation", "install", v2, "--data-dir", ge).exit_code == 0
    # the same version again is refused too
    r = cli("federation", "install", v2, "--data-dir", ge)
    assert r.exit_code == 1 and "version 2 does not follow the current version 2" in r.output
    assert cli("federation", "install", doc, "--data-dir", ge).exit_code == 0
    assert stored_versions(ge) == [1, 2, 3]
    status = json.loads(cli("status", "--data-dir", ge, "--format", "json").output)
    assert status["federation_version"] == 3 and [m["member"] for m in status["members"]] == ["AZ", "GE", "KZ"]


def stored_versions(data_dir: Path) -> list[int]:
    from directory_server.config import load_config

    node = Node(load_config(data_dir))
    try:
        return [fed.parse_document(e)[1].version for e in node.store.federation_chain()]
    finally:
        node.close()


def test_expired_document_is_refused_at_install(secretariat: Path) -> None:
    doc = secretariat / "short.json"
    r = cli("federation", "init", "--id", "casc", "--root-key", secretariat / "root-1.pub", "--valid-for", "0s", "--out", doc)
    assert r.exit_code == 0
    assert cli("federation", "sign", doc, "--key", secretariat / "root-1.key").exit_code == 0
    r = cli("federation", "install", doc, "--data-dir", secretariat / "ge")
    assert r.exit_code == 1 and "expired" in r.output
    assert stored_versions(secretariat / "ge") == []


def test_publish_without_federation_says_what_to_do(secretariat: Path) -> None:
    folder = secretariat / "rec"
    folder.mkdir()
    (folder / "r.yaml").write_text(GOOD_RECORDS)
    r = cli("publish", folder, "--data-dir", secretariat / "ge")
    assert r.exit_code == 1 and "federation install" in r.output


def test_commands_on_a_missing_node_say_how_to_create_it(tmp_path: Path) -> None:
    r = cli("status", "--data-dir", tmp_path / "nowhere")
    assert r.exit_code == 1 and "counterpart-node init" in r.output


def test_heartbeat_and_staleness(make_node: Callable[..., Node], tmp_path: Path, clock: object) -> None:
    node = make_node("GE")
    folder = tmp_path / "rec"
    folder.mkdir()
    (folder / "r.yaml").write_text(GOOD_RECORDS)
    node.publish(folder, b"test-passphrase")
    key = node.signing_key(b"test-passphrase")
    first = node.store.checkpoint("GE")
    assert node.heartbeat(key) is None  # still fresh
    directory = Directory(node.store, node.federation, node.clock)
    assert not directory.provenance("GE").stale
    clock.advance(timedelta(days=4))  # type: ignore[attr-defined]
    cp = node.heartbeat(key)  # past half of the 7-day validity: re-signed, same tree
    assert cp is not None and cp.size == 5 and node.store.checkpoint("GE") != first
    clock.advance(timedelta(days=8))  # type: ignore[attr-defined]
    prov = directory.provenance("GE")
    assert prov.stale and prov.checkpoint_age.seconds >= 0
    resp = directory.find_counterpart(ds.FindCounterpartRequest(requested_member="GE", request_type="mla.hearing.witness"))
    assert any("stale" in w for w in resp.warnings)
