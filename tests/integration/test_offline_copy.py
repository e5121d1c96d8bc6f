"""The offline copy (`counterpart mirror`, `counterpart --offline …`): pulled from a real node
on loopback, answered with no network at all (a network namespace without interfaces),
verified like a node's answers so that a changed byte in the file is caught, brought forward
incrementally, refused from an endpoint whose log forks from the copy, carried by export and
import to a machine that never had network, and holding members-only contacts only when
pulled signed in, shown only to a signed-in user."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import PASSPHRASE, SAMPLE_DATA, Clock, Federation  # type: ignore[import-not-found, unused-ignore]
from hostile_peer import HostilePeer

from counterpart_core import access
from counterpart_core import federation as fed
from directory_client.cli import main as client_main
from directory_server.node import Node
from directory_server.service.server import NodeServer
from directory_server.storage.store import StoredEntry

FIND = ["find", "--in", "GE", "--type", "mla.hearing.witness", "--place", "Batumi"]
AUTHORITY = "members/GE/authorities/pgo"
RULE = "members/GE/rules/mla.general"
MEMBERS_ONLY = "members/GE/contacts/"  # the sample's members-only contacts live here


@dataclass
class World:
    node: Node
    server: NodeServer
    tmp: Path
    env: dict[str, str]  # a client home with the federation document pinned, --server the node

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(client_main, list(args), env=env or self.env)

    @property
    def copy(self) -> Path:
        return Path(self.env["COUNTERPART_HOME"]) / "mirror.db"

    def stop(self) -> None:
        self.server.stop(grace=0)


def _home(tmp: Path, name: str, server: str, envelope: bytes | None) -> dict[str, str]:
    home = tmp / name
    home.mkdir()
    env = {"COUNTERPART_HOME": str(home), "COLUMNS": "80", "COUNTERPART_SERVER": server, "COUNTERPART_TOKEN": "",
           "COUNTERPART_MIRROR": "", "COUNTERPART_OFFLINE": ""}
    if envelope is not None:
        fed.write_file(tmp / f"{name}-federation.json", envelope)
        pinned = CliRunner().invoke(client_main, ["trust", str(tmp / f"{name}-federation.json")], env=env)
        assert pinned.exit_code == 0, pinned.output
    return env


@pytest.fixture
def world(make_node: Callable[..., Node], sample_dir: Callable[[str], Path], tmp_path: Path) -> Iterator[World]:
    node = make_node("GE", ["GE", "AZ", "AM"])
    node.publish(sample_dir("GE"), PASSPHRASE)
    server = NodeServer(node, "127.0.0.1:0", access_log=False)
    server.start()
    envelope = node.store.federation_envelope()
    assert envelope is not None
    w = World(node, server, tmp_path, _home(tmp_path, "home", server.address, envelope))
    yield w
    server.stop(grace=0)


def _json(result: Result) -> dict[str, object]:
    assert result.exit_code == 0, result.output
    doc: dict[str, object] = json.loads(result.stdout)
    return doc


def _table_digest(path: Path, *tables: str) -> str:
    h = hashlib.sha256()
    with sqlite3.connect(path) as conn:
        for t in tables:
            for row in conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2"):
                h.update(repr(row).encode())
    return h.hexdigest()


def test_mirror_then_answer_offline_with_the_node_stopped(world: World) -> None:
    pulled = world.run("mirror")
    assert pulled.exit_code == 0, pulled.output
    assert "new copy" in pulled.output and "GE" in pulled.output and "withheld" in pulled.output
    assert all(len(line) <= 80 for line in pulled.output.splitlines())
    assert world.copy.stat().st_mode & 0o777 == 0o600
    world.stop()  # from here on nothing answers at the node's address
    assert world.run(*FIND).exit_code == 1  # online: refused, the node is gone
    published = world.node.clock().strftime("%Y-%m-%dT%H:%M:%SZ")  # the sample's publication
    for args in (FIND, ["show", AUTHORITY], ["show", "GE"], ["search", "Batumi"], ["history", RULE],
                 ["members"], [*FIND, "--as-of", published], [*FIND, "--as-of", published, "--published"],
                 ["show", AUTHORITY, "--as-of", published]):
        result = world.run("--offline", *args)
        assert result.exit_code == 0, f"{args}: {result.output}"
        assert ("--as-of" not in args) or any(x.startswith("as of ") for x in result.output.splitlines()), result.output
        assert "Offline copy of " in result.output and " old); no checkpoint has expired" in result.output, result.output
        assert "verified" in result.output, result.output
        assert all(len(line) <= 80 for line in result.output.splitlines()), result.output
    doc = _json(world.run("--offline", "--format", "json", *FIND))
    session = doc["session"]
    assert isinstance(session, dict) and session["offline"]["expired_checkpoints"] == []
    assert session["offline"]["age_seconds"] < 600
    # COUNTERPART_OFFLINE=1 does the same as --offline
    assert world.run(*FIND, env={**world.env, "COUNTERPART_OFFLINE": "1"}).exit_code == 0
    # anonymous copy: the members-only contacts are not in it, whole
    with sqlite3.connect(world.copy) as conn:
        held = conn.execute("SELECT count(*) FROM entries WHERE kind = 'contact' AND restricted").fetchone()[0]
    assert held == 0
    checked = world.run("mirror", "--verify")
    assert checked.exit_code == 0 and "verified:" in checked.output, checked.output


def test_offline_answers_with_no_network_at_all(world: World) -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False).returncode:
        pytest.skip("unshare -rn (a user and network namespace) is not available here: cannot cut the network")
    assert world.run("mirror").exit_code == 0
    env = {**os.environ, **world.env, "COUNTERPART_SERVER": world.server.address}
    cmd = [sys.executable, "-m", "directory_client.cli"]
    # the namespace has no interface but a loopback that is down: connecting anywhere fails
    online = subprocess.run(["unshare", "-rn", *cmd, *FIND], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert online.returncode == 1 and "cannot be reached" in online.stderr, online.stderr
    offline = subprocess.run(["unshare", "-rn", *cmd, "--offline", *FIND], env=env, capture_output=True, text=True, check=False,
                             timeout=60)
    assert offline.returncode == 0, offline.stderr
    assert "Offline copy of " in offline.stdout and "verified" in offline.stdout


@pytest.mark.parametrize("where", ["envelope", "record"])
def test_a_tampered_copy_fails_verification(world: World, where: str) -> None:
    assert world.run("mirror").exit_code == 0
    with sqlite3.connect(world.copy) as conn:
        if where == "envelope":  # one byte of the signed entry of the authority
            seq, envelope = conn.execute(
                "SELECT seq, envelope FROM entries WHERE name = ? ORDER BY seq DESC LIMIT 1", (AUTHORITY,)
            ).fetchone()
            at = bytes(envelope).index(b"pgo")
            changed = bytes(envelope[:at]) + b"pgX" + bytes(envelope[at + 3:])
            conn.execute("UPDATE entries SET envelope = ? WHERE member = 'GE' AND seq = ?", (changed, seq))
        else:  # the derived row says another entry is the authority's current version
            conn.execute("UPDATE records SET seq = seq - 1 WHERE name = ?", (AUTHORITY,))
    result = world.run("--offline", "show", AUTHORITY)
    assert result.exit_code == 1, result.output
    assert "offline copy" in result.output and "failed verification" in result.output, result.output
    assert AUTHORITY in result.output  # names the record
    if where == "envelope":
        full = world.run("mirror", "--verify")
        assert full.exit_code == 1 and "GE entry" in full.output, full.output


def _publish_changed(node: Node, tmp: Path, name: str) -> Path:
    """Publish the GE sample with one authority's website changed: one new entry."""
    records = tmp / name
    shutil.copytree(SAMPLE_DATA / "GE", records)
    authorities = records / "authorities.yaml"
    text = authorities.read_text(encoding="utf-8")
    changed = text.replace("website: https://", "website: https://new.", 1)
    assert changed != text, "the sample's authorities have no website: pick another field"
    authorities.write_text(changed, encoding="utf-8")
    plan = node.publish(records, PASSPHRASE)
    assert plan.appended == 1, plan
    return records


def test_mirror_again_transfers_only_what_changed(world: World) -> None:
    first = _json(world.run("mirror", "--format", "json"))
    size = first["log_sizes"]["GE"]  # type: ignore[index]
    assert first["pulled"] == {"GE": size}
    before = world.node.store.log_size("GE")
    _publish_changed(world.node, world.tmp, "changed")
    # the node's side: count the log rows its replication service reads to serve the pull
    served: list[int] = []
    read = world.node.store.log_rows

    def counted(member: str, start: int = 1, end: int | None = None) -> list[StoredEntry]:
        rows = read(member, start, end)
        served.append(len(rows))
        return rows

    world.node.store.log_rows = counted  # type: ignore[method-assign]
    second = _json(world.run("mirror", "--format", "json"))
    world.node.store.log_rows = read  # type: ignore[method-assign]
    assert sum(served) == 1, served
    assert second["pulled"] == {"GE": 1}, second
    assert second["log_sizes"] == {"GE": before + 1}
    with sqlite3.connect(world.copy) as conn:
        assert conn.execute("SELECT count(*) FROM entries WHERE member = 'GE'").fetchone()[0] == before + 1
    third = world.run("mirror")
    assert third.exit_code == 0 and "nothing new" in third.output, third.output
    offline = world.run("--offline", "show", AUTHORITY)
    assert offline.exit_code == 0


def test_an_endpoint_inconsistent_with_the_copy_is_refused(
    world: World, make_node: Callable[..., Node], clock: Clock,
) -> None:
    assert world.run("mirror").exit_code == 0
    kept = _table_digest(world.copy, "entries", "checkpoints", "records")
    # another GE node, same key, whose log is a different history (signed later): a fork
    clock.advance(timedelta(minutes=5))
    fork = make_node("GE", ["GE", "AZ", "AM"])
    shutil.copytree(SAMPLE_DATA / "GE", world.tmp / "fork")
    fork.publish(world.tmp / "fork", PASSPHRASE)
    other = NodeServer(fork, "127.0.0.1:0", access_log=False)
    other.start()
    try:
        refused = world.run("mirror", "--server", other.address)
    finally:
        other.stop(grace=0)
    assert refused.exit_code == 1, refused.output
    assert "GE" in refused.output and "as they were" in refused.output, refused.output
    assert _table_digest(world.copy, "entries", "checkpoints", "records") == kept
    world.stop()
    assert world.run("--offline", "show", AUTHORITY).exit_code == 0


def test_export_then_import_on_a_machine_without_network(world: World) -> None:
    assert world.run("mirror").exit_code == 0
    out = world.tmp / "carry" / "directory.db"
    exported = _json(world.run("mirror", "--export", str(out), "--format", "json"))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == exported["sha256"]
    assert out.stat().st_mode & 0o777 == 0o600
    fingerprint = str(exported["federation_fingerprint"])
    text = world.run("mirror", "--export", str(world.tmp / "again.db"))
    assert fingerprint in text.output and str(exported["sha256"])[:16] in text.output
    world.stop()
    # a fresh machine: no endpoint, nothing pinned
    fresh = _home(world.tmp, "laptop", "127.0.0.1:1", None)
    laptop = Path(fresh["COUNTERPART_HOME"])

    def imported(source: Path, fp: str) -> Result:
        return CliRunner().invoke(client_main, ["mirror", "--import", str(source), "--federation-fingerprint", fp],
                                  env=fresh)

    # a wrong fingerprint: refused, nothing pinned, no copy
    wrong = imported(out, "00" * 32)
    assert wrong.exit_code == 1 and "FINGERPRINT_MISMATCH" in wrong.output, wrong.output
    assert not (laptop / "mirror.db").exists() and not (laptop / "federation.json").exists()
    # a tampered export: refused by the full check, nothing pinned, no copy
    bad = world.tmp / "tampered.db"
    shutil.copyfile(out, bad)
    with sqlite3.connect(bad) as conn:
        seq, envelope = conn.execute(
            "SELECT seq, envelope FROM entries WHERE member = 'GE' AND kind = 'authority' LIMIT 1").fetchone()
        flipped = bytes(envelope[:-1]) + bytes([envelope[-1] ^ 1])
        conn.execute("UPDATE entries SET envelope = ? WHERE member = 'GE' AND seq = ?", (flipped, seq))
    refused = imported(bad, fingerprint)
    assert refused.exit_code == 1 and "failed the full check" in refused.output, refused.output
    assert not (laptop / "mirror.db").exists() and not (laptop / "federation.json").exists()
    # the right file and fingerprint: pinned, imported, answered offline
    good = imported(out, fingerprint)
    assert good.exit_code == 0, good.output
    assert (laptop / "federation.json").exists() and (laptop / "mirror.db").stat().st_mode & 0o777 == 0o600
    answer = CliRunner().invoke(client_main, ["--offline", *FIND], env=fresh)
    assert answer.exit_code == 0 and "Offline copy of " in answer.output, answer.output
    # a tampered import over a good copy leaves the good copy in place
    digest = hashlib.sha256((laptop / "mirror.db").read_bytes()).hexdigest()
    again = CliRunner().invoke(client_main, ["mirror", "--import", str(bad)], env=fresh)
    assert again.exit_code == 1
    assert hashlib.sha256((laptop / "mirror.db").read_bytes()).hexdigest() == digest


def test_a_signed_in_copy_holds_members_only_contacts_shown_only_with_the_token(
    world: World, clock: Clock, federation: Federation,
) -> None:
    token = access.issue_token(
        federation.key("GE"), world.node.federation(), "GE", "prosecutor-1", "prosecutor", clock(), timedelta(hours=1),
    ).token
    signed = {**world.env, "COUNTERPART_TOKEN": token}
    anonymous_copy = _json(world.run("mirror", "--format", "json"))
    withheld = anonymous_copy["withheld"]
    assert isinstance(withheld, dict) and withheld["GE"] >= 1
    pulled = world.run("mirror", env=signed)  # the same copy, signed in: the withheld entries are filled in
    assert pulled.exit_code == 0 and "(signed in)" in pulled.output and "withheld" not in pulled.output, pulled.output
    assert f"{withheld['GE']} members-only filled in" in pulled.output, pulled.output
    assert world.run("mirror", "--verify").exit_code == 0
    audited = [r for r in world.node.store.audit_rows(1000) if r.method == "GetEntries"]
    assert audited and all(r.caller == "prosecutor-1 (prosecutor, GE)" for r in audited)
    with sqlite3.connect(world.copy) as conn:
        secret = conn.execute(
            "SELECT name FROM entries WHERE kind = 'contact' AND restricted ORDER BY seq LIMIT 1").fetchone()
    assert secret is not None and secret[0].startswith(MEMBERS_ONLY)
    world.stop()
    shown = world.run("--offline", "show", secret[0], env=signed)
    assert shown.exit_code == 0 and "signed in as prosecutor-1" in shown.output, shown.output
    hidden = world.run("--offline", "show", secret[0])
    assert hidden.exit_code != 0 and secret[0] not in hidden.stdout, hidden.output
    anonymous = world.run("--offline", "--format", "json", *FIND)
    assert anonymous.exit_code == 0 and secret[0] not in anonymous.stdout


def test_refused_without_a_pinned_document_or_without_a_copy(world: World, tmp_path: Path) -> None:
    bare = _home(tmp_path, "bare", world.server.address, None)
    result = CliRunner().invoke(client_main, ["mirror"], env=bare)
    assert result.exit_code == 1 and "counterpart trust FILE" in result.output, result.output
    result = CliRunner().invoke(client_main, ["--offline", *FIND], env=bare)
    assert result.exit_code == 1 and "counterpart trust FILE" in result.output, result.output
    none = world.run("--offline", *FIND)  # pinned, but no copy yet
    assert none.exit_code == 1 and "counterpart mirror" in none.output, none.output
    unreachable = world.run("mirror", "--server", "127.0.0.1:1")  # nothing listens there
    assert unreachable.exit_code == 1 and "could not be mirrored" in unreachable.output, unreachable.output
    assert not world.copy.exists()  # no empty copy left behind
    assert world.run("--offline", "--no-verify", *FIND).exit_code == 2  # offline answers are always verified


def test_the_answer_names_the_members_whose_checkpoints_expired(
    make_node: Callable[..., Node], sample_dir: Callable[[str], Path], clock: Clock, tmp_path: Path,
) -> None:
    node = make_node("GE", ["GE", "AZ", "AM"])
    node.config = dataclasses.replace(node.config, checkpoint_validity="6s")  # expires while the test runs
    clock.now = datetime.now(UTC)
    node.publish(sample_dir("GE"), PASSPHRASE)
    expires = clock.now + timedelta(seconds=6)
    server = NodeServer(node, "127.0.0.1:0", access_log=False)
    server.start()
    try:
        envelope = node.store.federation_envelope()
        assert envelope is not None
        env = _home(tmp_path, "home", server.address, envelope)
        pulled = CliRunner().invoke(client_main, ["mirror"], env=env)
        assert pulled.exit_code == 0, pulled.output
    finally:
        server.stop(grace=0)
    fresh = CliRunner().invoke(client_main, ["--offline", "show", AUTHORITY], env=env)
    assert fresh.exit_code == 0 and "no checkpoint has expired" in fresh.output, fresh.output
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.5)
    result = CliRunner().invoke(client_main, ["--offline", "show", AUTHORITY], env=env)
    assert result.exit_code == 0, result.output
    assert "old); expired checkpoints: GE" in result.output, result.output
    assert "STALE" in result.output


def test_a_hostile_endpoint_with_a_false_consistency_proof_changes_nothing(world: World) -> None:
    assert world.run("mirror").exit_code == 0
    kept = _table_digest(world.copy, "entries", "checkpoints", "records")
    _publish_changed(world.node, world.tmp, "changed")  # the origin moves on: the copy is one entry behind
    peer = HostilePeer(world.node, "GE")
    peer.proof = lambda request: [b"\0" * 32]  # a proof that the new tree extends the copy's: false
    peer.start()
    try:
        refused = world.run("mirror", "--server", peer.address, "--format", "json")
    finally:
        peer.stop()
    assert refused.exit_code == 1, refused.output
    doc = json.loads(refused.stdout)
    assert doc["pulled"] == {} and [r["reason"] for r in doc["rejected"]] == ["CONSISTENCY_PROOF_INVALID"], doc
    assert _table_digest(world.copy, "entries", "checkpoints", "records") == kept
    honest = _json(world.run("mirror", "--format", "json"))  # the real node: the one new entry
    assert honest["pulled"] == {"GE": 1}
