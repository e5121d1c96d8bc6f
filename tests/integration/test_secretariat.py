"""The federation secretariat at work (DESIGN §4), end to end: the secretariat edits the
document with `counterpart-node federation …` (each edit the next draft version, printed as
a diff), the root key holders sign, one running node installs it, sync carries it to the
others, and it takes effect on every node: a rotated key signs what every node accepts, a
withdrawn or suspended key's later checkpoint and a removed member's are refused everywhere,
new endpoints are followed and shown, and a change of root keys or threshold needs the old
threshold and then the new one. Errors are one line, exit 1, and leave the file as it was."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import PASSPHRASE  # type: ignore[import-not-found, unused-ignore]
from hostile_peer import HostilePeer
from tests_support_cluster import many_authorities, stored_state, wait_for

from counterpart_core import federation as fed
from counterpart_core import log, signing
from directory_client import cli as client_cli
from directory_server import cli as node_cli
from directory_server import security
from directory_server.config import load_config
from directory_server.node import Node
from directory_server.service.server import NodeServer

ENV = {"COUNTERPART_KEY_PASSPHRASE": PASSPHRASE.decode(), "COLUMNS": "200"}
MEMBERS = ["AZ", "GE", "KZ"]


def node_cmd(*args: object) -> Result:
    return CliRunner().invoke(node_cli.main, [str(a) for a in args], env=ENV)


def ok(*args: object) -> str:
    result = node_cmd(*args)
    assert result.exit_code == 0, result.output
    return result.output


def refused(*args: object) -> str:
    """The command fails with exit code 1 and a one-line message; returns that line."""
    result = node_cmd(*args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def key_id(public_file: Path) -> str:
    return signing.key_id(signing.read_public_key_file(public_file))


@dataclass
class Secretariat:
    """The secretariat's working directory: root keys, the document it edits, and what it sends out."""

    root: Path
    doc: Path
    versions: dict[int, Path] = field(default_factory=dict)

    def edit(self, *args: object) -> str:
        return ok("federation", args[0], self.doc, *args[1:])

    def sign(self, *roots: int) -> None:
        for i in roots:
            ok("federation", "sign", self.doc, "--key", self.root / f"root-{i}.key")

    def release(self) -> Path:
        """Keep a copy of the signed version as it is sent to the members."""
        version = fed.signature_status(fed.read_file(self.doc))[0].version
        path = self.root / f"v{version}.json"
        shutil.copyfile(self.doc, path)
        self.versions[version] = path
        return path

    def keygen(self, name: str) -> Path:
        ok("federation", "keygen", "--out", self.root / f"{name}.key")
        return self.root / f"{name}.pub"


@dataclass
class Site:
    """Three member nodes created with `counterpart-node init`, serving TLS on loopback,
    each syncing from the endpoints the federation document lists for the others."""

    secretariat: Secretariat
    data: dict[str, Path]
    nodes: dict[str, Node] = field(default_factory=dict)
    servers: dict[str, NodeServer] = field(default_factory=dict)
    published: dict[str, int] = field(default_factory=dict)

    def serve(self, code: str, listen: str | None = None, peer_listen: str | None = None) -> NodeServer:
        node = self.nodes.get(code) or Node(load_config(self.data[code]))
        self.nodes[code] = node
        c = node.config
        server = NodeServer(
            node, listen or c.listen, access_log=False, peers=[], sync_interval=1.0,
            tls_identity=security.load_tls_identity(c, PASSPHRASE), peer_address=peer_listen or c.peer_listen,
        )
        server.start()
        self.servers[code] = server
        return server

    def publish(self, code: str) -> None:
        """The member publishes one more authority, signed with its configured key."""
        self.published[code] = self.published.get(code, 0) + 1
        records = many_authorities(self.data[code].parent / f"records-{code}", code, self.published[code])
        self.nodes[code].publish(records, PASSPHRASE)

    def use_key(self, code: str, key_file: Path) -> None:
        """The member points key_file at another key (its node.toml and the running node)."""
        node = self.nodes[code]
        toml = node.config.data_dir / "node.toml"
        toml.write_text(toml.read_text().replace(node.config.key_file, str(key_file)), encoding="utf-8")
        node.config = replace(node.config, key_file=str(key_file))

    def versions(self, on: list[str] | None = None) -> dict[str, int]:
        return {m: self.nodes[m].store.federation_version() for m in on or self.servers}

    def wait_version(self, version: int, on: list[str] | None = None) -> None:
        wait_for(lambda: set(self.versions(on).values()) == {version}, 20, f"version {version} on every node")

    def converged(self, on: list[str] | None = None) -> bool:
        members = on or list(self.servers)
        want = {m: self.nodes[m].store.checkpoint(m) for m in members}
        return all(self.nodes[n].store.checkpoint(m) == cp for n in members for m, cp in want.items())

    def wait_converged(self, on: list[str] | None = None) -> None:
        wait_for(lambda: self.converged(on), 20, "every node to hold every member's latest checkpoint")

    def last_signer(self, on: str, member: str) -> str:
        return signing.parse_envelope(self.nodes[on].store.envelopes(member)[-1][1]).signatures[0].key_id

    def refused_everywhere(self, offered: bytes, source: str, reason: str, on: list[str]) -> None:
        """A peer offers a checkpoint to every running node in ``on``: each refuses it for
        ``reason`` and stores nothing."""
        peer = HostilePeer(self.nodes[source], source).start()
        peer.checkpoints = [offered]
        before = {m: stored_state(self.nodes[m]) for m in on}

        def refused_by(node: Node) -> bool:
            return any(r.peer == peer.address and r.reason == reason for r in node.store.rejections())

        try:
            for m in on:
                self.servers[m].set_peers([peer.address])
            for m in on:
                wait_for(lambda m=m: refused_by(self.nodes[m]), 15, f"{m} to refuse it ({reason})")
                assert stored_state(self.nodes[m]) == before[m]
        finally:
            for m in on:
                self.servers[m].set_peers([])
            peer.stop()

    def close(self) -> None:
        for server in self.servers.values():
            server.stop(grace=0)
        for node in self.nodes.values():
            node.close()


@pytest.fixture
def secretariat(tmp_path: Path) -> Secretariat:
    s = Secretariat(tmp_path, tmp_path / "federation.json")
    for i in (1, 2):
        s.keygen(f"root-{i}")
    ok("federation", "init", "--id", "casc", "--root-key", tmp_path / "root-1.pub", "--root-key", tmp_path / "root-2.pub",
       "--threshold", "2", "--valid-for", "30d", "--out", s.doc)
    return s


@pytest.fixture
def site(tmp_path: Path, secretariat: Secretariat) -> Iterator[Site]:
    data = {code: tmp_path / code for code in MEMBERS}
    for code, path in data.items():
        listen, peer = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        ok("init", "--member", code, "--data-dir", path, "--listen", listen, "--peer-listen", peer)
        secretariat.edit("add-member", "--code", code, "--display-name", f"Member {code}",
                         "--key", path / "keys" / "node-key.pub", "--tls-cert", path / "keys" / "tls-cert.pem",
                         "--endpoint", listen, "--peer-endpoint", peer)
    secretariat.sign(1, 2)
    v1 = secretariat.release()
    s = Site(secretariat, data)
    try:
        for code in MEMBERS:
            ok("federation", "install", v1, "--data-dir", data[code])
            s.serve(code)
            s.publish(code)
        s.wait_converged()
        yield s
    finally:
        s.close()


def install(version: Path, site: Site, on: str) -> None:
    assert "now follows casc" in ok("federation", "install", version, "--data-dir", site.data[on])


def test_a_key_rotates_and_a_stolen_key_is_withdrawn(site: Site, secretariat: Secretariat) -> None:
    old_id = key_id(site.data["GE"] / "keys" / "node-key.pub")

    # version 2 publishes GE's next key before GE uses it
    new_pub = secretariat.keygen("ge-2")
    new_id = key_id(new_pub)
    shown = secretariat.edit("add-key", "--code", "GE", "--key", new_pub)
    assert "editing it as draft version 2" in shown
    assert f"  GE: + key {new_id} (valid, no start or end)" in shown.splitlines()
    secretariat.sign(1, 2)
    install(secretariat.release(), site, "AZ")
    site.wait_version(2)

    # GE signs with the new key; every node accepts what it publishes
    site.use_key("GE", secretariat.root / "ge-2.key")
    site.publish("GE")
    site.wait_converged()
    assert {site.last_signer(m, "GE") for m in MEMBERS} == {new_id}

    # version 3 retires the old key (from now): what it signed before still verifies everywhere
    shown = secretariat.edit("retire-key", "--code", "GE", "--key-id", old_id[8:20])
    assert f"  GE: ~ key {old_id}: valid, no start or end -> valid until " in shown
    secretariat.sign(1, 2)
    install(secretariat.release(), site, "KZ")
    site.wait_version(3)
    for m in MEMBERS:
        assert site.nodes[m].verify()[1] == []

    # ge-2 is stolen: version 4 publishes ge-3 and withdraws ge-2 as of a past instant
    stolen_at = datetime.now(UTC)
    time.sleep(0.01)
    thief = signing.read_key_file(secretariat.root / "ge-2.key", PASSPHRASE)
    honest = site.nodes["GE"].held_checkpoint("GE")
    assert honest is not None
    forged = log.build_checkpoint("GE", honest.size + 1, b"\x01" * 32, datetime.now(UTC), thief).envelope
    successor = secretariat.keygen("ge-3")
    secretariat.edit("add-key", "--code", "GE", "--key", successor)
    shown = secretariat.edit("withdraw-key", "--code", "GE", "--key-id", new_id, "--as-of", stolen_at.isoformat())
    assert "changing it in place" in shown and f"withdrew GE's key {new_id} as of " in shown
    secretariat.sign(1, 2)
    install(secretariat.release(), site, "GE")
    site.wait_version(4)
    site.refused_everywhere(forged, "GE", "KEY_NOT_VALID", MEMBERS)

    # GE republishes with its new key: accepted everywhere
    site.use_key("GE", secretariat.root / "ge-3.key")
    site.publish("GE")
    site.wait_converged()
    assert {site.last_signer(m, "GE") for m in MEMBERS} == {key_id(successor)}


def test_endpoints_move_a_member_is_suspended_resumed_and_removed(
    site: Site, secretariat: Secretariat, tmp_path: Path
) -> None:
    # GE's node moves to new ports; version 2 says so, and the others follow it there
    old_listen = site.nodes["GE"].config.listen
    site.servers.pop("GE").stop(grace=0)
    listen, peer = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    site.serve("GE", listen, peer)
    shown = secretariat.edit("set-endpoints", "--code", "GE", "--endpoint", listen, "--peer-endpoint", peer)
    assert f"  GE: endpoints {old_listen} -> {listen}" in shown.splitlines()
    secretariat.sign(1, 2)
    v2 = secretariat.release()
    install(v2, site, "AZ")
    site.wait_version(2)
    site.publish("GE")
    site.wait_converged()
    home = tmp_path / "prosecutor"
    env = {"COUNTERPART_HOME": str(home), "COLUMNS": "200", "COUNTERPART_SERVER": listen}
    assert CliRunner().invoke(client_cli.main, ["trust", str(v2)], env=env).exit_code == 0
    members = CliRunner().invoke(client_cli.main, ["members"], env=env)
    assert members.exit_code == 0, members.output
    assert listen in members.output and old_listen not in members.output
    answer = json.loads(CliRunner().invoke(client_cli.main, ["--format", "json", "members"], env=env).stdout)
    assert {m["code"]: m["endpoints"] for m in answer["answer"]["members"]}["GE"] == [listen]
    assert answer["session"]["tls"] and answer["session"]["server_member"] == "GE"

    # version 3 suspends KZ: a checkpoint it signs afterwards is refused everywhere
    kz_key = signing.read_key_file(site.nodes["KZ"].config.key_path, PASSPHRASE)
    shown = secretariat.edit("suspend", "--code", "KZ")
    assert "  KZ: suspended (no key valid after " in shown
    secretariat.sign(1, 2)
    install(secretariat.release(), site, "GE")
    site.wait_version(3)
    time.sleep(0.01)
    held = site.nodes["KZ"].held_checkpoint("KZ")
    assert held is not None
    during = log.build_checkpoint("KZ", held.size + 1, b"\x02" * 32, datetime.now(UTC), kz_key).envelope
    site.refused_everywhere(during, "KZ", "KEY_NOT_VALID", ["AZ", "GE"])
    with pytest.raises(Exception, match="not valid now"):
        site.publish("KZ")  # its own node refuses to sign too

    # version 4 resumes it: KZ publishes again, and every node accepts it
    assert "  KZ: resumed" in secretariat.edit("resume", "--code", "KZ")
    secretariat.sign(1, 2)
    install(secretariat.release(), site, "AZ")
    site.wait_version(4)
    site.publish("KZ")
    site.wait_converged()

    # version 5 removes KZ: its new checkpoints are refused everywhere
    shown = secretariat.edit("remove-member", "--code", "KZ")
    assert "  - member KZ (Member KZ): its keys, endpoints and certificates go" in shown
    secretariat.sign(1, 2)
    install(secretariat.release(), site, "GE")
    site.wait_version(5, on=["AZ", "GE"])  # KZ's node is no longer admitted to their peer listeners
    held = site.nodes["KZ"].held_checkpoint("KZ")
    assert held is not None
    after = log.build_checkpoint("KZ", held.size + 1, b"\x03" * 32, datetime.now(UTC), kz_key).envelope
    site.refused_everywhere(after, "KZ", "UNKNOWN_MEMBER", ["AZ", "GE"])


def test_the_remaining_members_still_replicate_after_a_removal(site: Site, secretariat: Secretariat) -> None:
    secretariat.edit("remove-member", "--code", "KZ")
    secretariat.sign(1, 2)
    install(secretariat.release(), site, "GE")
    site.wait_version(2, on=["AZ", "GE"])
    site.servers.pop("KZ").stop(grace=0)
    site.publish("GE")
    site.publish("AZ")
    try:
        wait_for(lambda: site.converged(on=["AZ", "GE"]), 5, "AZ and GE to hold each other's latest checkpoint")
    finally:
        reasons = {r.reason for m in ("AZ", "GE") for r in site.nodes[m].store.rejections()}
    assert "TOO_MANY_CHECKPOINTS" not in reasons


def test_root_keys_and_threshold_change_under_the_old_threshold_then_the_new(
    site: Site, secretariat: Secretariat
) -> None:
    r1, r2 = key_id(secretariat.root / "root-1.pub"), key_id(secretariat.root / "root-2.pub")
    r3 = key_id(secretariat.keygen("root-3"))

    # version 2 replaces root-1 by root-3 (threshold 2): 2 of {1, 2} and 2 of {2, 3} must sign
    shown = secretariat.edit("root-keys", "--add", secretariat.root / "root-3.pub", "--remove", r1[8:24])
    assert f"  root keys: + {r3}" in shown and f"  root keys: - {r1}" in shown
    assert (f"version 2 must be signed by 2 of version 1's root keys ({r1}, {r2}) AND by 2 of its own root keys "
            f"({r2}, {r3})") in " ".join(shown.split())
    secretariat.sign(2, 3)
    line = refused("federation", "install", secretariat.doc, "--data-dir", site.data["AZ"])
    assert "signed by 1 of version 1's root keys; 2 are required" in line
    assert site.versions() == {m: 1 for m in MEMBERS}
    secretariat.sign(1)
    ok("federation", "verify", secretariat.doc, "--previous", secretariat.versions[1])
    install(secretariat.release(), site, "AZ")
    site.wait_version(2)

    # version 3 lowers the threshold to 1: still 2 of version 2's keys, then 1 of its own
    shown = secretariat.edit("threshold", "1")
    assert "  threshold 2 -> 1 (of 2 root keys)" in shown
    assert f"version 3 must be signed by 2 of version 2's root keys ({r2}, {r3}) AND by 1 of its own" in " ".join(shown.split())
    secretariat.sign(3)
    assert "2 are required" in refused("federation", "install", secretariat.doc, "--data-dir", site.data["GE"])
    secretariat.sign(2)
    install(secretariat.release(), site, "GE")
    site.wait_version(3)

    # from now on one root key is enough, and the removed root-1 is none of them
    secretariat.edit("renew")
    secretariat.sign(1)
    assert "signed by 0 of version 3's root keys" in refused(
        "federation", "install", secretariat.doc, "--data-dir", site.data["KZ"])
    shutil.copyfile(secretariat.versions[3], secretariat.doc)
    secretariat.edit("renew")
    secretariat.sign(3)
    install(secretariat.release(), site, "KZ")
    site.wait_version(4)


# --- the commands alone: the document file, its diff and its errors ------------------------


@pytest.fixture
def drafted(secretariat: Secretariat) -> Secretariat:
    """Version 1 admitting GE (one key), signed; the next edit makes version 2."""
    ge = secretariat.keygen("ge-1")
    secretariat.keygen("ge-2")
    secretariat.edit("add-member", "--code", "GE", "--display-name", "Georgia", "--key", ge, "--endpoint", "ge.example:7700")
    secretariat.sign(1, 2)
    return secretariat


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add-key", "--code", "XX", "--key", "{root}/ge-2.pub"], "XX is not a member of casc"),
        (["add-key", "--code", "GE", "--key", "{root}/ge-1.pub"], "already belongs to member GE"),
        (["add-key", "--code", "GE", "--key", "{root}/missing.pub"], "cannot read public key"),
        (["retire-key", "--code", "GE", "--key-id", "ed25519:00000000"], "no key of GE matches 'ed25519:00000000'"),
        (["retire-key", "--code", "GE", "--key-id", "{ge1}"], "is GE's last valid key: publish its successor first"),
        (["withdraw-key", "--code", "GE", "--key-id", "{ge1}", "--as-of", "2020-01-01"], "is GE's last valid key"),
        (["withdraw-key", "--code", "GE", "--key-id", "{ge1}", "--as-of", "2999-01-01T00:00:00Z"], "is in the future"),
        (["withdraw-key", "--code", "GE", "--key-id", "{ge1}", "--as-of", "yesterday"], "not an ISO 8601 instant"),
        (["retire-key", "--code", "GE", "--key-id", "{ge1}", "--not-after", "2020-01-01"], "use withdraw-key --as-of"),
        (["set-endpoints", "--code", "GE", "--endpoint", "ge.example"], "endpoint 'ge.example' is not host:port"),
        (["set-endpoints", "--code", "GE", "--peer-endpoint", "ge.example:99999"], "is not host:port"),
        (["set-endpoints", "--code", "GE", "--endpoint", "ge.example:7700"], "nothing changes"),
        (["set-endpoints", "--code", "GE"], "give --endpoint and/or --peer-endpoint"),
        (["add-member", "--code", "AZ", "--display-name", "A", "--key", "{root}/ge-2.pub", "--endpoint", "az:x"], "not host:port"),
        (["remove-member", "--code", "AZ"], "AZ is not a member of casc"),
        (["resume", "--code", "GE"], "GE is not suspended"),
        (["threshold", "3"], "threshold 3 must be between 1 and the number of root keys (2)"),
        (["threshold", "0"], "must be between 1"),
        (["root-keys", "--remove", "{r1}"], "threshold 2 (the current one; give --threshold) must be between 1"),
        (["root-keys", "--remove", "ed25519:ffffffff"], "no key of the root matches"),
        (["root-keys", "--add", "{root}/root-1.pub"], "is already a root key"),
        (["root-keys"], "give --add, --remove and/or --threshold"),
        (["tls-cert", "--code", "GE", "--remove", "00000000"], "0 of GE's certificates match"),
        (["renew", "--valid-for", "30 days"], "is not a duration"),
    ],
)
def test_errors_are_one_line_and_leave_the_file_as_it_was(drafted: Secretariat, args: list[str], message: str) -> None:
    values = {"root": str(drafted.root), "ge1": key_id(drafted.root / "ge-1.pub"), "r1": key_id(drafted.root / "root-1.pub")}
    before = drafted.doc.read_bytes()
    line = refused("federation", args[0], drafted.doc, *[a.format(**values) for a in args[1:]])
    assert message in line
    assert drafted.doc.read_bytes() == before
    assert sorted(p.name for p in drafted.root.iterdir() if p.name.startswith(".")) == []  # no temporary file left


def test_an_edit_keeps_the_validity_unless_told(secretariat: Secretariat) -> None:
    def validity() -> timedelta:
        return fed.validity(fed.signature_status(fed.read_file(secretariat.doc))[0])

    ge = secretariat.keygen("ge-1")
    shown = secretariat.edit("add-member", "--code", "GE", "--display-name", "Georgia", "--key", ge)
    assert validity() == timedelta(days=30) and "(30 days after its issue)" in shown
    secretariat.sign(1, 2)
    shown = secretariat.edit("set-endpoints", "--code", "GE", "--endpoint", "ge.example:7700", "--valid-for", "7d")
    assert validity() == timedelta(days=7) and "  version 1 -> 2" in shown and "(7 days after its issue)" in shown
    secretariat.edit("suspend", "--code", "GE")
    assert validity() == timedelta(days=7)


def test_tls_certificate_changes_print_the_diff(drafted: Secretariat, tmp_path: Path) -> None:
    ok("init", "--member", "GE", "--data-dir", tmp_path / "ge")
    pem = tmp_path / "ge" / "keys" / "tls-cert.pem"
    fingerprint = security.load_tls_identity(load_config(tmp_path / "ge"), PASSPHRASE).fingerprint
    shown = drafted.edit("tls-cert", "--code", "GE", "--add", pem)
    assert f"  GE: + TLS certificate sha256:{fingerprint}" in shown.splitlines()
    shown = drafted.edit("tls-cert", "--code", "GE", "--remove", fingerprint[:12])
    assert f"  GE: - TLS certificate sha256:{fingerprint}" in shown.splitlines()
