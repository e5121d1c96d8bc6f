"""End-to-end tests of the `counterpart` command line against a real GE node.

The node is the ``served`` fixture (sample data, real keys and signatures); the CLI runs
in-process through click's CliRunner with its home directory in tmp_path, so the pinned
federation document is the test's own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result
from conftest import PASSPHRASE  # type: ignore[import-not-found, unused-ignore]

from counterpart_core import federation as fed
from counterpart_core import signing
from directory_client.cli import main
from directory_server.service.server import NodeServer

Served = tuple[NodeServer, grpc.Channel]
Run = Callable[..., Result]
AJARA_EN = "Prosecutor's Office of the Autonomous Republic of Ajara"
AJARA_KA = "აჭარის ავტონომიური რესპუბლიკის პროკურატურა"
PGO_EN = "Office of the Prosecutor General of Georgia"
FIND_BATUMI = ["find", "--in", "GE", "--type", "mla.hearing.witness", "--place", "Batumi"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "client-home"


@pytest.fixture
def fed_file(served: Served, tmp_path: Path) -> Path:
    """The node's federation document as the secretariat hands it out (DSSE JSON)."""
    envelope = served[0].node.store.federation_envelope()
    assert envelope is not None
    path = tmp_path / "federation.json"
    fed.write_file(path, envelope)
    return path


@pytest.fixture
def run(served: Served, home: Path) -> Run:
    """Run `counterpart --server NODE ARGS...` with the test's home directory."""

    def invoke(*args: str, server: str | None = None) -> Result:
        env = {"COUNTERPART_HOME": str(home), "COLUMNS": "200", "COUNTERPART_SERVER": None}
        return CliRunner().invoke(
            main, ["--server", server or served[0].address, *args], env=env
        )

    return invoke


@pytest.fixture
def trusted(run: Run, fed_file: Path, home: Path) -> Path:
    result = run("trust", str(fed_file))
    assert result.exit_code == 0, result.output
    assert (home / "federation.json").exists()
    return home / "federation.json"


def one_error_line(result: Result) -> str:
    """The CLI's error: exactly one line "error: ..." on stderr, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


# --- trust -------------------------------------------------------------------------------


def test_trust_pins_the_document(run: Run, fed_file: Path, home: Path) -> None:
    result = run("trust", str(fed_file))
    assert result.exit_code == 0, result.output
    assert "pinned: federation 'test' version 1" in result.stdout
    assert (home / "federation.json").read_bytes() == fed_file.read_bytes()
    again = run("trust", str(fed_file))
    assert again.exit_code == 0 and "already pinned" in again.stdout


def test_trust_refuses_a_tampered_document(run: Run, fed_file: Path, home: Path) -> None:
    doc = json.loads(fed_file.read_text())
    doc["signatures"][0]["sig"] = doc["signatures"][1]["sig"] if len(doc["signatures"]) > 1 else (
        "A" * len(doc["signatures"][0]["sig"])
    )
    fed_file.write_text(json.dumps(doc))
    result = run("trust", str(fed_file))
    assert result.exit_code == 1
    assert "cannot be trusted" in one_error_line(result)
    assert not (home / "federation.json").exists()


def test_trust_refuses_another_federation_unless_replace(
    run: Run, trusted: Path, tmp_path: Path, clock: Any
) -> None:
    root = signing.SigningKey.generate()
    doc = fed.new_document("other", [root.public_bytes], 1, clock(), timedelta(days=30))
    other = tmp_path / "other.json"
    fed.write_file(other, signing.sign_envelope(
        doc.SerializeToString(deterministic=True), signing.FEDERATION_TYPE, [root]))
    before = trusted.read_bytes()
    refused = run("trust", str(other))
    assert refused.exit_code == 1
    assert "--replace" in one_error_line(refused)
    assert trusted.read_bytes() == before
    replaced = run("trust", "--replace", str(other))
    assert replaced.exit_code == 0, replaced.output
    assert "federation 'other'" in replaced.stdout


def test_trust_accepts_the_next_version_and_refuses_a_rollback(
    run: Run, trusted: Path, federation: Any, clock: Any, tmp_path: Path
) -> None:
    v2 = tmp_path / "v2.json"
    fed.write_file(v2, federation.document(["GE"], clock(), version=2))
    upgraded = run("trust", str(v2))
    assert upgraded.exit_code == 0, upgraded.output
    assert "version 2 (was version 1)" in upgraded.stdout
    v1 = tmp_path / "v1.json"
    fed.write_file(v1, federation.document(["GE"], clock(), version=1))
    rollback = run("trust", str(v1))
    assert rollback.exit_code == 1
    assert "rollback" in one_error_line(rollback)


def test_trust_update_follows_the_chain_the_node_serves(
    run: Run, trusted: Path, served: Served, federation: Any, clock: Any
) -> None:
    node = served[0].node
    same = run("trust", "--update")
    assert same.exit_code == 0 and "newest" in same.stdout
    v2 = federation.document(["GE"], clock(), version=2)
    node.install_federation(v2)
    node.install_federation(federation.document(["GE"], clock(), version=3))
    updated = run("trust", "--update")
    assert updated.exit_code == 0, updated.output
    assert "pinned version 3 (checked each step: 2, 3)" in updated.stdout
    assert fed.read_file(trusted) == node.store.federation_envelope()


def test_trust_update_refuses_a_step_that_lacks_the_threshold(
    run: Run, trusted: Path, served: Served, federation: Any, clock: Any
) -> None:
    node = served[0].node
    unsigned = federation.document(["GE"], clock(), version=2, signers=[])
    node.store.put_federation(2, unsigned, clock())  # a node serving what no honest node holds
    before = trusted.read_bytes()
    refused = run("trust", "--update")
    assert refused.exit_code == 1
    assert "THRESHOLD_NOT_MET" in one_error_line(refused) and "version 1 stays pinned" in refused.stderr
    assert trusted.read_bytes() == before
    neither = run("trust")
    assert neither.exit_code == 2 and "either FILE or --update" in neither.stderr


# --- find --------------------------------------------------------------------------------


def test_find_names_who_receives_and_who_executes_and_says_it_is_verified(
    run: Run, trusted: Path
) -> None:
    result = run(*FIND_BATUMI)
    assert result.exit_code == 0, result.output
    out = result.stdout
    flat = " ".join(out.split())  # paragraphs wrap by word; compare them as one line
    doc = json.loads(run("--format", "json", *FIND_BATUMI).stdout)
    assert "Witness" in out or "witness" in out
    place = doc["answer"]["place"]
    assert place["subdivision"] == "GE-AJ"
    assert f"place: Batumi -> municipality {place['municipality']}, subdivision GE-AJ" in out
    assert f"receives: {PGO_EN}" in flat
    how = (
        "executed by the authority territorially competent for the place:"
        if doc["answer"]["rule"].get("territorial_execution") else "executes:"
    )
    assert f"{how} {AJARA_EN} / {AJARA_KA} members/GE/authorities/ajara-po" in flat
    assert "route: through the central authority" in out
    assert "languages accepted: ka" in out
    assert "untoc" in out  # a legal basis
    assert f"warnings: {len(doc['answer']['warnings'])} (--long)" in out
    last = out.strip().splitlines()[-1]
    n = doc["verification"]["records_checked"]
    assert last.startswith(f"verified: {n} records signed by GE (checkpoint ")
    assert "old)" in last

    long = run(*FIND_BATUMI, "--long")
    assert long.exit_code == 0, long.output
    assert long.stdout.startswith(out[: out.index("\nnot signed in")])  # the summary, then details
    details = long.stdout[long.stdout.index("Candidates, best first"):]
    assert details.index(AJARA_EN) < details.index(PGO_EN)  # ranked first
    assert "Warnings" in details and "Uncertain" in details
    assert "dual criminality: " in details and "informal consultation: " in details
    assert "recommended before sending: Mutual legal assistance desk" in " ".join(details.split())
    assert long.stdout.strip().splitlines()[-1].startswith(f"verified: {n} records signed by GE")


def test_find_json_is_one_document_for_scripts(run: Run, trusted: Path) -> None:
    result = run("--format", "json", *FIND_BATUMI, "--urgent", "--lang", "en")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"answer", "verification", "session"}
    assert doc["session"]["signed_in"] is False and doc["session"]["caller"] == "anonymous"
    answer = doc["answer"]
    assert answer["candidates"][0]["authority"]["name"] == "members/GE/authorities/ajara-po"
    assert answer["route"] == "TRANSMISSION_ROUTE_CENTRAL_AUTHORITY"
    assert "proofs" not in answer
    assert answer["provenances"] and all(
        "signed_checkpoint" not in p for p in answer["provenances"]
    )
    verification = doc["verification"]
    assert verification["verified"] is True and verification["records_checked"] >= 3
    assert verification["members"][0]["member"] == "GE"
    assert verification["members"][0]["stale"] is False


def test_find_without_a_pinned_document_says_to_trust_one(run: Run) -> None:
    result = run(*FIND_BATUMI)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "no pinned federation document" in line and "counterpart trust FILE" in line
    assert result.stdout == ""


def test_find_no_verify_works_without_a_pinned_document(run: Run) -> None:
    result = run("--no-verify", *FIND_BATUMI)
    assert result.exit_code == 0, result.output
    assert AJARA_EN in result.stdout
    assert "NOT VERIFIED (--no-verify)" in result.stdout
    as_json = run("--no-verify", "--format", "json", *FIND_BATUMI)
    assert json.loads(as_json.stdout)["verification"] is None


def test_an_expired_pinned_document_is_not_used(
    run: Run, home: Path, federation: Any, clock: Any
) -> None:
    home.mkdir()
    expired = federation.document(["GE"], clock() - timedelta(days=10), valid_for=timedelta(days=1))
    fed.write_file(home / "federation.json", expired)
    result = run(*FIND_BATUMI)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "cannot be used" in line and "expired" in line


def test_bad_request_type_exits_1_with_the_reason(run: Run, trusted: Path) -> None:
    result = run("find", "--in", "GE", "--type", "x")
    assert result.exit_code == 1
    assert one_error_line(result) == "error: unknown request type 'x' [UNKNOWN_REQUEST_TYPE]"


def test_an_answer_that_fails_verification_exits_1(
    run: Run, home: Path, tmp_path: Path, clock: Any
) -> None:
    # Pin a federation in which GE has another key: the node's signatures do not verify.
    root = signing.SigningKey.generate()
    doc = fed.new_document("test", [root.public_bytes], 1, clock(), timedelta(days=30))
    fed.add_member(doc, "GE", "Georgia", [signing.SigningKey.generate().public_bytes], [])
    impostor = tmp_path / "impostor.json"
    fed.write_file(impostor, signing.sign_envelope(
        doc.SerializeToString(deterministic=True), signing.FEDERATION_TYPE, [root]))
    assert run("trust", str(impostor)).exit_code == 0
    result = run(*FIND_BATUMI)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "checkpoint of GE" in line and "UNKNOWN_KEY" in line
    assert result.stdout == ""  # nothing unverified is shown


def test_unreachable_server_exits_1_with_a_clear_message(run: Run, trusted: Path) -> None:
    result = run(*FIND_BATUMI, server="127.0.0.1:1")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "the node at 127.0.0.1:1 cannot be reached" in line


# --- search, show, members ---------------------------------------------------------------


@pytest.mark.parametrize("query", ["Batumi", "ბათუმი", "Батуми"])
def test_search_finds_the_authority_in_any_script(run: Run, trusted: Path, query: str) -> None:
    result = run("search", query)
    assert result.exit_code == 0, result.output
    assert "members/GE/authorities/ajara-po" in result.stdout
    assert AJARA_KA in result.stdout  # shown with its Georgian name
    assert result.stdout.strip().splitlines()[-1].startswith("verified: ")


def test_search_json_lists_authorities(run: Run, trusted: Path) -> None:
    result = run("--format", "json", "search", "Batumi", "--member", "GE")
    assert result.exit_code == 0, result.output
    names = [a["name"] for a in json.loads(result.stdout)["answer"]["authorities"]]
    assert "members/GE/authorities/ajara-po" in names


def test_show_a_record(run: Run, trusted: Path) -> None:
    result = run("show", "members/GE/authorities/ajara-po")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert AJARA_EN in out and AJARA_KA in out
    assert "coverage" in out and "Batumi" in out
    assert "executes" in out  # the competence role, readable
    assert out.strip().splitlines()[-1].startswith("verified: 1 record signed by GE")


def test_show_a_rule_and_a_member(run: Run, trusted: Path) -> None:
    rule = run("show", "members/GE/rules/mla.hearing.witness")
    assert rule.exit_code == 0, rule.output
    assert "routes accepted: through the central authority" in rule.stdout
    assert "dual criminality: " in rule.stdout  # every condition, "not stated" when not published
    for name in ("members/GE", "ge"):
        member = run("show", name)
        assert member.exit_code == 0, member.output
        assert "Member GE" in member.stdout and "log size" in member.stdout


def test_show_an_unknown_name_exits_3(run: Run, trusted: Path) -> None:
    result = run("show", "members/GE/authorities/no-such-office")
    assert result.exit_code == 3
    line = one_error_line(result)
    assert "members/GE/authorities/no-such-office does not exist" in line
    assert "[RECORD_NOT_FOUND]" in line
    member = run("show", "members/ZZ")
    assert member.exit_code == 3


def test_show_a_malformed_name_is_a_usage_error(run: Run, trusted: Path) -> None:
    result = run("show", "members/GE/offices/x")
    assert result.exit_code == 2
    assert "is not a record name" in one_error_line(result)


def test_members_lists_ge(run: Run, trusted: Path) -> None:
    result = run("members")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Federation 'test' version 1" in out
    lines = out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("GE") and "Member GE" in line)
    assert "not stale" in lines[row + 2]
    assert out.strip().splitlines()[-1].startswith("verified: checkpoints signed by GE")
    as_json = json.loads(run("--format", "json", "members").stdout)
    codes = [m["code"] for m in as_json["answer"]["members"]]
    assert "GE" in codes and codes == sorted(codes)  # every member of the pinned document
    assert [line.split()[0] for line in lines if line[:1].isalpha() and line.split()[0] in codes] == codes


def test_stale_data_is_flagged_from_the_clients_clock(
    make_node: Callable[..., Any], sample_dir: Callable[[str], Path], clock: Any,
    home: Path, tmp_path: Path,
) -> None:
    """A node whose clock is 30 days behind serves a checkpoint that expired 23 days ago.

    The node itself does not call it stale; the client recomputes from the signed expiry.
    """
    clock.advance(-timedelta(days=30))
    node = make_node("GE")
    node.publish(sample_dir("GE"), PASSPHRASE)
    server = NodeServer(node, "127.0.0.1:0", access_log=False)
    server.start()
    try:
        envelope = node.store.federation_envelope()
        assert envelope is not None
        fed.write_file(tmp_path / "fed.json", envelope)
        env = {"COUNTERPART_HOME": str(home), "COLUMNS": "200"}
        runner = CliRunner()
        assert runner.invoke(main, ["trust", str(tmp_path / "fed.json")], env=env).exit_code == 0
        result = runner.invoke(main, ["--server", server.address, *FIND_BATUMI], env=env)
        assert result.exit_code == 0, result.output
        last = result.stdout.strip().splitlines()[-1]
        assert "STALE, the checkpoint has expired" in last and "30 d old" in last
        as_json = runner.invoke(
            main, ["--server", server.address, "--format", "json", *FIND_BATUMI], env=env
        )
        doc = json.loads(as_json.stdout)
        assert doc["answer"]["provenances"][0].get("stale") is False  # the node's view
        assert doc["verification"]["stale"] is True  # the client's
    finally:
        server.stop(grace=0)


def test_help_documents_the_exit_codes() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for code in ("0  success", "1  error", "2  usage error", "3  not found"):
        assert code in result.output
