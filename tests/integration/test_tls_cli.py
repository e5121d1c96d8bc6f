"""The two command lines over TLS: the operator creates TLS keys, admits and rotates node
certificates, issues and revokes tokens; the prosecutor pins the document, asks anonymously
(members-only contacts withheld), signs in and asks again. Plaintext beyond loopback is
refused on both sides."""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import PASSPHRASE, Clock  # type: ignore[import-not-found, unused-ignore]
from tests_support_tls import (  # type: ignore[import-not-found, unused-ignore]
    Member,
    TlsFederation,
    make_tls_node,
    members_only_sentinels,
    new_member,
    serve,
)

from counterpart_core import federation as fed
from counterpart_core import signing
from counterpart_core.errors import ConfigurationError
from directory_client import cli as client_cli
from directory_client.client import DirectoryClient
from directory_client.errors import ClientError
from directory_server import cli as node_cli
from directory_server.config import load_config
from directory_server.node import Node
from directory_server.service.server import NodeServer

ENV = {"COUNTERPART_KEY_PASSPHRASE": PASSPHRASE.decode()}
SENTINEL = members_only_sentinels("GE")[0].decode()


def node_cmd(*args: str) -> Result:
    return CliRunner().invoke(node_cli.main, list(args), env=ENV)


def test_init_creates_an_encrypted_tls_key_and_a_certificate(tmp_path: Path) -> None:
    data = tmp_path / "ge"
    result = node_cmd("init", "--member", "GE", "--data-dir", str(data), "--host", "node.ge.example")
    assert result.exit_code == 0, result.output
    config = load_config(data)
    assert config.tls_enabled
    key_file = config.tls_key_path
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key_file.read_bytes()
    assert "fingerprint" in result.output
    with pytest.raises(Exception, match="wrong passphrase"):
        signing.read_private_key(key_file, b"not-the-passphrase")


def test_serve_refuses_plaintext_beyond_loopback(tmp_path: Path, make_node: object) -> None:
    data = tmp_path / "ge"
    assert node_cmd("init", "--member", "GE", "--data-dir", str(data)).exit_code == 0
    toml = data / "node.toml"
    toml.write_text(toml.read_text().replace('tls = "on"', 'tls = "off"'))
    result = CliRunner().invoke(
        node_cli.main, ["serve", "--data-dir", str(data), "--listen", "0.0.0.0:7799", "--no-heartbeat"], env=ENV,
    )
    assert result.exit_code == 1
    assert "without TLS" in result.output and "tls = " in result.output


def test_server_refuses_plaintext_beyond_loopback_before_binding(make_node: object) -> None:
    node = make_node("GE")  # type: ignore[operator]
    with pytest.raises(ConfigurationError) as e:
        NodeServer(node, "0.0.0.0:0", access_log=False)
    assert e.value.reason == "TLS_REQUIRED"


def test_client_refuses_a_token_or_plaintext_beyond_loopback() -> None:
    # nothing is sent: the client refuses before it opens a connection
    with pytest.raises(ClientError, match="plaintext"):
        DirectoryClient("192.0.2.10:7700", federation=None, verify=False, tls=False, token="t")
    result = CliRunner().invoke(
        client_cli.main, ["--plaintext", "--no-verify", "--server", "192.0.2.10:7700", "members"],
        env={"COUNTERPART_TOKEN": "secret-token"},
    )
    assert result.exit_code == 1
    assert "refusing plaintext" in result.output and "secret-token" not in result.output


@dataclass
class Site:
    fed: TlsFederation
    ge: Member
    node: Node
    server: NodeServer
    pinned: Path
    home: Path

    def ask(self, *args: str, token: str | None = None) -> Result:
        env = {"COUNTERPART_HOME": str(self.home), "COLUMNS": "200", "COUNTERPART_SERVER": self.server.address,
               "COUNTERPART_TOKEN": token}
        return CliRunner().invoke(client_cli.main, list(args), env=env)


@pytest.fixture
def site(tmp_path: Path, clock: Clock) -> Iterator[Site]:
    federation = TlsFederation([signing.SigningKey.generate()])
    federation.members["GE"] = new_member("GE", clock())
    federation.members["AZ"] = new_member("AZ", clock())
    node = make_tls_node(tmp_path, federation.members["GE"], federation.document(["GE", "AZ"], clock()), publish="GE")
    server = serve(node, federation.members["GE"])
    # version 2 lists the node's endpoint, as the secretariat would once the node runs
    v2 = federation.document(["GE", "AZ"], clock(), version=2, endpoints={"GE": server.address})
    node.install_federation(v2)
    pinned = tmp_path / "federation.json"
    fed.write_file(pinned, v2)
    s = Site(federation, federation.members["GE"], node, server, pinned, tmp_path / "home")
    assert s.ask("trust", str(pinned)).exit_code == 0
    yield s
    server.stop(grace=0)
    node.close()


def test_prosecutor_asks_anonymously_then_signs_in(site: Site, tmp_path: Path) -> None:
    find = ["find", "--in", "GE", "--type", "mla.general", "--urgent"]
    anonymous = site.ask(*find)
    assert anonymous.exit_code == 0, anonymous.output
    assert "withheld" in anonymous.output and SENTINEL not in anonymous.output
    assert "not signed in" in anonymous.output and "TLS, GE's node authenticated" in anonymous.output

    token_file = tmp_path / "token.jwt"
    granted = CliRunner().invoke(
        node_cli.main, ["access", "grant", "--subject", "prosecutor.7", "--data-dir", str(site.node.config.data_dir),
                        "--out", str(token_file)], env=ENV,
    )
    assert granted.exit_code == 0, granted.output
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    login = site.ask("login", "--token-file", str(token_file))
    assert login.exit_code == 0, login.output
    assert stat.S_IMODE((site.home / "token").stat().st_mode) == 0o600

    signed_in = site.ask(*find)
    assert signed_in.exit_code == 0, signed_in.output
    assert SENTINEL in signed_in.output
    assert "signed in as prosecutor.7 (prosecutor, GE)" in signed_in.output
    # members-only contacts too are proven the latest, in the member's whole state tree
    assert "latest: proven" in signed_in.output and "latest: proven" in anonymous.output
    doc = json.loads(site.ask("--format", "json", *find).stdout)
    assert doc["session"] == {"server": site.server.address, "tls": True, "server_member": "GE",
                              "signed_in": True, "caller": "prosecutor.7 (prosecutor, GE)"}

    listed = json.loads(CliRunner().invoke(
        node_cli.main, ["access", "list", "--format", "json", "--data-dir", str(site.node.config.data_dir)], env=ENV,
    ).stdout)
    token_id = listed["grants"][0]["token_id"]
    revoke = CliRunner().invoke(node_cli.main, ["access", "revoke", token_id[:12], "--data-dir",
                                                str(site.node.config.data_dir)], env=ENV)
    assert revoke.exit_code == 0, revoke.output
    refused = site.ask(*find)
    assert refused.exit_code == 1 and "revoked" in refused.output

    audit = json.loads(CliRunner().invoke(
        node_cli.main, ["access", "audit", "--format", "json", "--data-dir", str(site.node.config.data_dir)], env=ENV,
    ).stdout)
    assert audit["total"] >= 1
    assert {e["caller"] for e in audit["entries"]} == {"prosecutor.7 (prosecutor, GE)"}
    status = json.loads(CliRunner().invoke(
        node_cli.main, ["status", "--format", "json", "--data-dir", str(site.node.config.data_dir)], env=ENV,
    ).stdout)
    assert status["tls"]["enabled"] and status["tls"]["listed"]
    assert status["members_only_records_served"] == audit["total"]


def test_login_refuses_a_token_of_another_federation(site: Site, tmp_path: Path, clock: Clock) -> None:
    from counterpart_core import access

    other = TlsFederation([signing.SigningKey.generate()], "other", {"GE": site.ge})
    other_doc = fed.verify_initial(other.document(["GE"], clock()), clock())
    token = access.issue_token(site.ge.key, other_doc, "GE", "x", "prosecutor", clock(), access.TOKEN_MAX_LIFETIME)
    path = tmp_path / "t"
    path.write_text(token.token)
    result = site.ask("login", "--token-file", str(path))
    assert result.exit_code == 1 and "TOKEN_WRONG_FEDERATION" in result.output
    assert not (site.home / "token").exists()


def test_client_refuses_a_node_whose_certificate_is_not_the_members(site: Site, clock: Clock) -> None:
    """Pin a document that lists another certificate for GE: the real node is refused."""
    impostor = new_member("GE", clock(), key=site.ge.key)
    site.fed.members["GE"] = impostor
    v3 = site.fed.document(["GE", "AZ"], clock(), version=3, endpoints={"GE": site.server.address})
    pinned = site.pinned.with_name("v3.json")
    fed.write_file(pinned, v3)
    assert site.ask("trust", str(pinned)).exit_code == 0
    result = site.ask("members")
    assert result.exit_code == 1 and "cannot be reached" in result.output


def test_secretariat_admits_and_withdraws_a_node_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert node_cmd("federation", "keygen", "--out", "root.key").exit_code == 0
    assert node_cmd("federation", "init", "--id", "t", "--root-key", "root.pub", "--out", "f.json").exit_code == 0
    assert node_cmd("init", "--member", "GE", "--data-dir", "ge").exit_code == 0
    added = node_cmd("federation", "add-member", "f.json", "--code", "GE", "--display-name", "Georgia",
                     "--key", "ge/keys/node-key.pub", "--tls-cert", "ge/keys/tls-cert.pem",
                     "--endpoint", "node.ge.example:7700", "--peer-endpoint", "node.ge.example:7701")
    assert added.exit_code == 0, added.output
    doc = fed.signature_status(fed.read_file(Path("f.json")))[0]
    assert len(doc.members[0].tls_certificates) == 1 and list(doc.members[0].peer_endpoints) == ["node.ge.example:7701"]
    again = node_cmd("federation", "tls-cert", "f.json", "--code", "GE", "--add", "ge/keys/tls-cert.pem")
    assert again.exit_code == 1 and "already listed" in again.output
    bad = node_cmd("federation", "tls-cert", "f.json", "--code", "GE", "--remove", "00000000")
    assert bad.exit_code == 1 and "match" in bad.output
    fingerprint = hashlib.sha256(bytes(doc.members[0].tls_certificates[0])).hexdigest()
    removed = node_cmd("federation", "tls-cert", "f.json", "--code", "GE", "--remove", fingerprint[:12])
    assert removed.exit_code == 0, removed.output
    assert not fed.signature_status(fed.read_file(Path("f.json")))[0].members[0].tls_certificates
