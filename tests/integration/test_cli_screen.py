"""The `counterpart` text output on an 80-column terminal, against a real GE node.

What a prosecutor copies from the screen (resource names, e-mail addresses, phone numbers,
addresses, URIs, fingerprints) must stand whole on one line: never cut, folded or shortened.
The values are taken from each command's own JSON answer, not from the sample data, so the
checks hold whatever the data holds. Also: no line is wider than the terminal, the default
`find` fits about one screen, and the global options work after the subcommand too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import PASSPHRASE  # type: ignore[import-not-found, unused-ignore]
from rich.cells import cell_len

from counterpart_core import federation as fed
from directory_client import cli
from directory_client.cli import main
from directory_client.client import DirectoryClient
from directory_client.errors import ServerError
from directory_server.node import Node
from directory_server.service.server import NodeServer

Served = tuple[NodeServer, grpc.Channel]
Run = Callable[..., Result]

WIDTH = 80
SCREEN = 30  # lines: the default `find` answer fits about one 24-line screen
FIND_BATUMI = ["find", "--in", "GE", "--type", "mla.hearing.witness", "--place", "Batumi",
               "--from", "AZ", "--lang", "en"]
RESOURCE = re.compile(r"members/[A-Z][A-Z0-9]{1,15}(?:/[a-z]+/[A-Za-z0-9.-]+)?")
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "client-home"


def runner(address: str, home: Path) -> Run:
    def invoke(*args: str, server: bool = True, env: dict[str, str | None] | None = None) -> Result:
        environment: dict[str, str | None] = {
            "COUNTERPART_HOME": str(home), "COLUMNS": str(WIDTH), "COUNTERPART_SERVER": None,
            "COUNTERPART_TOKEN": None, **(env or {}),
        }
        where = ["--server", address] if server else []
        return CliRunner().invoke(main, [*where, *args], env=environment)

    return invoke


def pin(run: Run, server: NodeServer, tmp_path: Path) -> None:
    envelope = server.node.store.federation_envelope()
    assert envelope is not None
    fed.write_file(tmp_path / "federation.json", envelope)
    result = run("trust", str(tmp_path / "federation.json"))
    assert result.exit_code == 0, result.output


@pytest.fixture
def run(served: Served, home: Path) -> Run:
    """Run `counterpart --server NODE ARGS...` as on an 80-column terminal."""
    return runner(served[0].address, home)


@pytest.fixture
def trusted(run: Run, served: Served, tmp_path: Path) -> None:
    pin(run, served[0], tmp_path)


def answer(run: Run, *args: str) -> dict[str, Any]:
    result = run("--format", "json", *args)
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def text(run: Run, *args: str) -> str:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


# --- what a reader copies ----------------------------------------------------------------


def _walk(value: Any, key: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(key, value, the dict holding it) for every value in a JSON document."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, v, value
            yield from _walk(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, key)


def copyable(document: Any) -> set[str]:
    """Every resource name, e-mail, phone, address, URI and fingerprint in a JSON answer."""
    found: set[str] = set()
    for key, value, holder in _walk(document):
        if isinstance(value, str):
            found.update(m.group(0) for m in RESOURCE.finditer(value) if m.group(0) == value)
            found.update(EMAIL.findall(value))
            if key in ("phone", "email", "uri", "fingerprint", "website", "locality", "postal_code"):
                found.add(value)
            if key == "address" and "kind" in holder:  # a channel: e-mail, platform id, number...
                found.add(value)
        elif key == "lines" and isinstance(value, list) and "locality" in holder:  # postal address
            found.update(v for v in value if isinstance(v, str))
    return {v for v in found if v.strip()}


def lines_of(output: str) -> list[str]:
    return output.rstrip("\n").split("\n")


def assert_fits(output: str, document: Any, width: int = WIDTH) -> None:
    """No line is wider than the terminal, and nothing is shortened with an ellipsis (one the
    answer itself does not hold)."""
    for line in lines_of(output):
        assert cell_len(line) <= width, f"{cell_len(line)} columns: {line!r}"
    source = json.dumps(document, ensure_ascii=False)
    for ellipsis in ("…", "..."):
        assert output.count(ellipsis) <= source.count(ellipsis), f"{ellipsis!r} in\n{output}"


def assert_whole(values: set[str], output: str) -> None:
    """Each value stands whole on one line of the output."""
    lines = lines_of(output)
    missing = sorted(v for v in values if not any(v in line for line in lines))
    assert not missing, f"not whole on one line: {missing}\n{output}"


def assert_never_cut(values: set[str], output: str) -> None:
    """A value the output shows at all, it shows whole on one line: never folded across lines,
    whether the lines are joined with or without a space."""
    lines = [line.strip() for line in lines_of(output)]
    for joined in ("".join(lines), " ".join(lines)):
        for v in values:
            if v in joined:
                assert any(v in line for line in lines), f"{v!r} is split across lines\n{output}"


def words(output: str) -> str:
    """The output with its wrapping undone: paragraphs compared as one line."""
    return " ".join(output.split())


# --- find ---------------------------------------------------------------------------------


def test_find_default_fits_one_screen_with_the_essentials_whole(run: Run, trusted: None) -> None:
    doc = answer(run, *FIND_BATUMI)
    out = text(run, *FIND_BATUMI)
    a = doc["answer"]
    lines = lines_of(out)
    assert len(lines) <= SCREEN, f"{len(lines)} lines\n{out}"
    assert_fits(out, doc)
    values = copyable(a)
    assert_never_cut(values, out)

    # who receives and who executes, with what it takes to send to them
    by_name = {c["authority"]["name"]: c["authority"] for c in a["candidates"]}
    receiver = a["rule"].get("receiving_authority") or next(
        c["authority"]["name"] for c in a["candidates"] if "COMPETENCE_ROLE_RECEIVES" in c["roles"])
    executor = next(c["authority"]["name"] for c in a["candidates"] if "COMPETENCE_ROLE_EXECUTES" in c["roles"])
    for name in (receiver, executor):
        authority = by_name[name]
        essentials = {name, *(ch["address"] for ch in authority["channels"]), *authority["address"]["lines"]}
        if authority["address"].get("locality"):
            essentials.add(authority["address"]["locality"])
        assert_whole(essentials, out)
    if a["rule"].get("territorial_execution"):
        english = next(t["text"] for t in by_name[executor]["display_names"] if t["language"] == "en")
        assert f"executed by the authority territorially competent for the place: {english}" in words(out)

    assert "route: through the central authority" in out
    assert f"languages accepted: {', '.join(a['languages'])}" in out
    if not set(a["languages"]) & {"en"}:
        assert "! none of yours (en)" in out  # the caller's --lang is not accepted
    assert a["legal_bases"][0]["instrument"] in out  # the strongest legal basis
    if a["withheld_contacts"]:
        assert f"{a['withheld_contacts']} members-only contacts withheld" in out
    assert f"warnings: {len(a['warnings'])}" in out
    assert lines[-2] == "not signed in; plaintext (loopback)"
    assert lines[-1].startswith(f"verified: {doc['verification']['records_checked']} records signed by GE")


def test_find_long_shows_everything_whole(run: Run, trusted: None) -> None:
    doc = answer(run, *FIND_BATUMI)
    out = text(run, *FIND_BATUMI, "--long")
    a = doc["answer"]
    assert_fits(out, doc)
    assert_whole(copyable(a), out)  # every value of the answer, each whole on one line
    flat = words(out)
    for cand in a["candidates"]:
        assert "; ".join(cand["reasons"]) in flat
    for basis in a["legal_bases"]:
        assert f"[{basis['instrument']}]" in out
        assert ("direct transmission between judicial authorities allowed" if basis["direct_transmission"]
                else "no direct transmission") in flat
    for warning in a["warnings"]:
        assert words(warning) in flat
    for label in ("form and documents:", "dual criminality:", "evidence use limits:", "execution deadline:",
                  "urgent procedure:", "electronic transmission:", "informal consultation:",
                  "transmission keys:", "Provenance"):
        assert label in out
    assert "not stated" in out  # what the member did not publish says so, never a default
    place = a["place"].get("gazetteer_place")
    if place:
        assert place["name"] in out


def test_find_says_what_the_rule_does_not_state(run: Run, trusted: None, served: Served) -> None:
    """A question the member has published no rule for: the route is not stated, not a default."""
    federation = served[0].node.federation()
    for term in federation.document.vocabularies.request_types:
        args = ["find", "--in", "GE", "--type", term.code]
        doc = answer(run, *args)
        if "rule" not in doc["answer"]:
            break
    else:
        pytest.fail("GE publishes a rule for every request type: no question without a rule to ask")
    out = text(run, *args)
    assert_fits(out, doc)
    if doc["answer"]["route"] == "TRANSMISSION_ROUTE_UNSPECIFIED":
        assert "route: not stated (no rule published)" in out
    else:  # the node chose a route anyway: shown as the node gave it
        assert "route: through" in out or "route: directly" in out
    assert "warnings: " in out


def test_find_reads_a_misspelt_place_and_says_so(run: Run, trusted: None) -> None:
    args = ["find", "--in", "GE", "--type", "mla.hearing.witness", "--place", "Batumy"]
    place = answer(run, *args)["answer"]["place"]
    assert place["approximate"] is True
    out = text(run, *args)
    assert f"place: read 'Batumy' as {place['matched_name']} ({place['subdivision']})" in out


def test_an_unknown_place_exits_3_with_the_whole_message(run: Run, trusted: None, served: Served) -> None:
    args = ["find", "--in", "GE", "--type", "mla.hearing.witness", "--place", "Xyzzyville"]
    result = run(*args)
    assert result.exit_code == 3, result.output
    with DirectoryClient(served[0].address, federation=None, verify=False) as client, \
            pytest.raises(ServerError) as e:
        client.find_counterpart(requested_member="GE", request_type="mla.hearing.witness", place="Xyzzyville")
    assert e.value.reason == "PLACE_NOT_FOUND"
    assert result.stderr == f"error: {e.value}\n"  # one line, in full: the closest places included
    assert result.stdout == ""


def test_an_ambiguous_place_is_a_usage_error_with_the_whole_message(
    run: Run, trusted: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = ("place 'Mtskheta' names several places of GE: GE-MM მცხეთა-მთიანეთი (region), მცხეთა "
               "(GE-MM, municipality); give the subdivision code or a more precise name")

    def ambiguous(self: DirectoryClient, *args: Any, **kwargs: Any) -> Any:
        raise ServerError(grpc.StatusCode.INVALID_ARGUMENT, "PLACE_AMBIGUOUS", message)

    monkeypatch.setattr(DirectoryClient, "find_counterpart", ambiguous)
    result = run("find", "--in", "GE", "--type", "mla.hearing.witness", "--place", "Mtskheta")
    assert result.exit_code == 2
    assert result.stderr == f"error: {message} [PLACE_AMBIGUOUS]\n"
    assert "2  usage error" in CliRunner().invoke(main, ["--help"]).output


# --- show, search, members ------------------------------------------------------------------


def _place_name(run: Run) -> str:
    doc = answer(run, *FIND_BATUMI)
    name: str = doc["answer"]["place"]["gazetteer_place"]["name"]
    return name


@pytest.mark.parametrize("args", [
    ["show", "members/GE/authorities/pgo"],
    ["show", "members/GE/authorities/ajara-po"],
    ["show", "members/GE/rules/mla.hearing.witness"],
    ["show", "members/GE/contacts/mla-desk"],
    ["show", "members/GE"],
    ["search", "Batumi"],
    ["search", "prosecutor"],
    ["members"],
])
def test_every_copied_value_is_whole_at_80_columns(run: Run, trusted: None, args: list[str]) -> None:
    doc = answer(run, *args)
    out = text(run, *args)
    assert_fits(out, doc)
    assert_whole(copyable(doc["answer"]), out)
    assert lines_of(out)[-1].startswith("verified: ")


def test_show_a_place_groups_its_names_by_language(run: Run, trusted: None) -> None:
    name = _place_name(run)
    doc = answer(run, "show", name)
    out = text(run, "show", name)
    assert_fits(out, doc)
    place = doc["answer"]["place"]
    assert lines_of(out)[0] == f"{name} (place)"
    by_language: dict[str, list[str]] = {}
    for t in place["names"]:
        by_language.setdefault(t["language"], []).append(t["text"])
    for language, names in by_language.items():
        assert f"{language}: {', '.join(names)}" in words(out)
        assert_whole(set(names), out)
    assert f"subdivision: {place['subdivision']}" in out
    assert f"kind: {place['kind'].removeprefix('PLACE_KIND_').lower()}" in out
    assert lines_of(out)[-1].startswith("verified: 1 record signed by GE")


def test_members_shows_every_member_whole(run: Run, trusted: None) -> None:
    doc = answer(run, "members")
    out = text(run, "members")
    for m in doc["answer"]["members"]:
        assert any(line.startswith(f"{m['code']} ") and m["display_name"] in line for line in lines_of(out))


def test_the_screen_wraps_by_word_and_keeps_copied_values_whole() -> None:
    """The writer itself: words wrap, a value wider than the screen stays whole on its line."""
    from rich.console import Console

    console = Console(width=30, record=True, color_system=None)
    screen = cli.Screen(console)
    uri = "https://keys.example.org/very/long/path/to/the/key.asc"
    screen.field("note", "one two three four five six seven eight nine ten eleven", indent=2)
    screen.say("key at ", cli.Whole(uri), " and a phone ", cli.Whole("+995 32 240 51 11"), indent=2)
    out = console.export_text()
    assert_fits(out.replace(uri, ""), {}, width=30)
    assert_whole({uri, "+995 32 240 51 11"}, out)
    assert "eleven" in out and "elev\n" not in out


# --- global options after the subcommand -----------------------------------------------------


def test_every_subcommand_takes_the_global_options(run: Run) -> None:
    for name, command in main.commands.items():
        flags = {opt for p in command.params for opt in p.opts + p.secondary_opts}
        expected = {"--server", "--format", "--no-verify", "--timeout", "--tls", "--plaintext", "--server-member"}
        assert expected <= flags, f"{name} lacks {expected - flags}"
        if name != "login":  # login's --token-file names the token to keep
            assert "--token-file" in flags


def test_global_options_work_after_the_subcommand(
    run: Run, trusted: None, served: Served, tmp_path: Path
) -> None:
    address = served[0].address
    find = ["find", "--in", "GE", "--type", "mla.hearing.witness", "--place", "Batumi"]

    # --server and --format after: the subcommand's value wins over the group's and the environment's
    after = run(*find, "--format", "json", "--server", address, server=False,
                env={"COUNTERPART_SERVER": "127.0.0.1:1"})
    assert after.exit_code == 0, after.output
    doc = json.loads(after.stdout)
    assert doc["session"]["server"] == address
    wins = CliRunner().invoke(
        main, ["--server", "127.0.0.1:1", "--format", "json", *find, "--server", address, "--format", "table"],
        env={"COUNTERPART_HOME": str(tmp_path / "client-home"), "COLUMNS": "80"},
    )
    assert wins.exit_code == 0, wins.output
    assert wins.stdout.startswith("Hearing of a witness")
    before = run("--format", "json", *find)  # still works before the subcommand
    assert json.loads(before.stdout)["answer"]["candidates"] == doc["answer"]["candidates"]

    # --no-verify after
    unverified = run(*find, "--no-verify")
    assert unverified.exit_code == 0 and "NOT VERIFIED (--no-verify)" in unverified.stdout

    # --timeout after: parsed and checked by the subcommand
    assert run(*find, "--timeout", "5").exit_code == 0
    bad = run(*find, "--timeout", "0")
    assert bad.exit_code == 2 and "--timeout" in bad.output

    # --plaintext / --tls after
    plain = run(*find, "--plaintext", "--format", "json")
    assert plain.exit_code == 0 and json.loads(plain.stdout)["session"]["tls"] is False
    tls = run(*find, "--tls")
    assert tls.exit_code == 1  # the node speaks plaintext: TLS was really asked for

    # --server-member after: names the member whose certificate the node must show
    member = run(*find, "--tls", "--server-member", "az")
    assert member.exit_code == 1 and "member AZ" in member.stderr

    # --token-file after: the token is sent (this one is not a token, and the node says so)
    token = tmp_path / "token"
    token.write_text("not-a-token\n")
    refused = run(*find, "--token-file", str(token))
    assert refused.exit_code == 1 and "TOKEN_" in refused.stderr
    assert run(*find).exit_code == 0

    # every other subcommand too
    for args in (["search", "Batumi"], ["members"], ["show", "members/GE/authorities/pgo"]):
        result = run(*args, "--format", "json", "--server", address, server=False)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["session"]["server"] == address
    assert run("logout", "--format", "json").stdout.startswith("{")


# --- every kind of copied value, in data that has them all --------------------------------------

FINGERPRINT = "7F3A 9B2C 41D0 E5F6 A7B8  C9D0 E1F2 0314 2536 4758"
KEY_URI = "https://keys.pgo.ge.example/openpgp/ajara-international-cooperation.asc"
PLATFORM = "GE-AJARA-PO-INTERNATIONAL-COOPERATION-0001"
PHONE = "+995422271234"
URGENT_PHONE = "+995322405111"


@pytest.fixture
def rich_node(make_node: Callable[..., Node], sample_dir: Callable[[str], Path]) -> Iterator[NodeServer]:
    """A GE node whose sample data also has a phone, a secure platform, a transmission key, an
    urgent phone, procedural conditions and asset-recovery and extradition specifics."""
    data = sample_dir("GE")
    authorities = yaml.safe_load((data / "authorities.yaml").read_text(encoding="utf-8"))
    ajara = next(a for a in authorities["authorities"] if a["id"] == "ajara-po")
    ajara["channels"] = [*ajara.get("channels", []), {"kind": "phone", "address": PHONE},
                         {"kind": "e-codex", "address": PLATFORM}]
    ajara["transmission_keys"] = [{"kind": "openpgp", "fingerprint": FINGERPRINT, "uri": KEY_URI}]
    ajara["urgent_contact"] = {"description": "Duty prosecutor (sample)", "phone": URGENT_PHONE,
                               "always_available": True}
    (data / "authorities.yaml").write_text(yaml.safe_dump(authorities, allow_unicode=True), encoding="utf-8")
    rules = yaml.safe_load((data / "rules.yaml").read_text(encoding="utf-8"))
    by_type = {r["request_type"]: r for r in rules["rules"]}
    en = [{"language": "en", "text": "Sample condition, stated for the test."}]
    by_type["mla.hearing.witness"].update(
        form_and_documents=en, evidence_use_limits=en, execution_deadline=en, urgent_procedure=en,
        dual_criminality="POSSIBILITY_NO",
        electronic_transmission={"accepted": True, "signature_required": True},
    )
    by_type["extradition"]["extradition"] = {
        "extradites_nationals": "POSSIBILITY_NO", "provisional_arrest_days": 40, "simplified_procedure": True,
    }
    by_type["asset-recovery.freezing"]["asset_recovery"] = {
        "recognizes_foreign_confiscation": "POSSIBILITY_YES", "non_conviction_based": "POSSIBILITY_NO",
        "asset_sharing": en,
    }
    (data / "rules.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
    node = make_node("GE", ["GE", "AZ", "AM"])
    node.publish(data, PASSPHRASE)
    server = NodeServer(node, "127.0.0.1:0", access_log=False)
    server.start()
    yield server
    server.stop(grace=0)


def test_keys_phones_and_platforms_are_whole_at_80_columns(
    rich_node: NodeServer, home: Path, tmp_path: Path
) -> None:
    run = runner(rich_node.address, home)
    pin(run, rich_node, tmp_path)
    urgent = [*FIND_BATUMI, "--urgent"]
    doc = answer(run, *urgent)
    assert {FINGERPRINT, KEY_URI, PLATFORM, PHONE, URGENT_PHONE} <= copyable(doc["answer"])

    summary = text(run, *urgent)
    assert_fits(summary, doc)
    assert_never_cut(copyable(doc["answer"]), summary)
    assert_whole({PHONE, PLATFORM, URGENT_PHONE}, summary)  # how to reach the executing authority
    assert len(lines_of(summary)) <= SCREEN + 2, summary

    long = text(run, *urgent, "--long")
    assert_fits(long, doc)
    assert_whole(copyable(doc["answer"]), long)
    flat = words(long)
    for fact in ("form and documents: Sample condition", "evidence use limits: Sample condition",
                 "execution deadline: Sample condition", "urgent procedure: Sample condition",
                 "dual criminality: no", "electronic transmission: accepted (signature required)",
                 f"transmission key: openpgp fingerprint {words(FINGERPRINT)} URI {KEY_URI}"):
        assert fact in flat

    extradition = text(run, "find", "--in", "GE", "--type", "extradition", "--long")
    assert_fits(extradition, doc)
    flat = words(extradition)
    assert "extradites nationals: no" in flat and "provisional arrest: the request must follow within 40 days" in flat
    assert "simplified procedure (with consent): yes" in flat
    assets = text(run, "find", "--in", "GE", "--type", "asset-recovery.freezing", "--long")
    flat = words(assets)
    assert "recognizes foreign confiscation orders: yes" in flat
    assert "non-conviction-based confiscation: no" in flat and "asset sharing: Sample condition" in flat

    for args in (["show", "members/GE/authorities/ajara-po"], ["search", "Batumi"]):
        shown = answer(run, *args)
        out = text(run, *args)
        assert_fits(out, shown)
        assert_whole(copyable(shown["answer"]), out)
