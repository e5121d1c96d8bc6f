"""Publishing from files: the diff, idempotence, safe deletion, and every kind of bad input.

Each bad input must give one message naming the file, the record and the field,
exit code 1, and leave the log and its checkpoint exactly as they were. Nothing is deleted
unless --prune says so; the dry run names every changed field; publishing is refused under
an expired federation document or one that does not list the member.
"""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import Clock, Federation  # type: ignore[import-not-found, unused-ignore]
from rich.console import Console
from tests_support_records import GOOD_RECORDS

from counterpart.v1 import records_pb2
from counterpart_core import federation as fed
from counterpart_core import signing
from counterpart_core.diff import FieldChange, diff_records
from counterpart_core.errors import ConfigurationError
from directory_server import cli
from directory_server.cli import main
from directory_server.config import CONFIG_NAME, NodeConfig
from directory_server.node import Node

PASS_ENV = {"COUNTERPART_KEY_PASSPHRASE": "test-passphrase"}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


@pytest.fixture
def published(make_node: Callable[..., Node], tmp_path: Path) -> tuple[Node, Path]:
    node = make_node("GE")
    folder = tmp_path / "records"
    folder.mkdir()
    write(folder, "good.yaml", GOOD_RECORDS)
    result = CliRunner().invoke(main, ["publish", str(folder), "--data-dir", str(node.config.data_dir)], env=PASS_ENV)
    assert result.exit_code == 0, result.output
    return node, folder


def snapshot(node: Node) -> tuple[list[tuple[int, bytes]], bytes | None]:
    return node.store.envelopes("GE"), node.store.checkpoint("GE")


def test_publish_appends_then_is_idempotent(published: tuple[Node, Path]) -> None:
    node, folder = published
    before = snapshot(node)
    assert len(before[0]) == 5
    result = CliRunner().invoke(main, ["publish", str(folder), "--data-dir", str(node.config.data_dir)], env=PASS_ENV)
    assert result.exit_code == 0, result.output
    assert "nothing to publish" in result.output
    assert snapshot(node) == before


def test_dry_run_shows_diff_and_appends_nothing(published: tuple[Node, Path]) -> None:
    node, folder = published
    before = snapshot(node)
    text = (folder / "good.yaml").read_text().replace("Prosecutor's Office of Ajara", "Ajara Prosecutor's Office")
    (folder / "good.yaml").write_text(text)
    (folder / "extra.yaml").write_text("member: GE\ntreaties:\n  - {instrument: uncac, status: TREATY_STATUS_IN_FORCE}\n")
    result = CliRunner().invoke(main, ["publish", str(folder), "--dry-run", "--data-dir", str(node.config.data_dir)])
    assert result.exit_code == 0, result.output
    assert "~ members/GE/authorities/ajara" in result.output
    assert "+ members/GE/treaties/uncac" in result.output
    assert "dry run: 1 new, 1 changed, 0 deleted" in result.output
    assert snapshot(node) == before


def test_changes_append_entries_and_a_dropped_record_is_kept_without_prune(published: tuple[Node, Path]) -> None:
    node, folder = published
    text = (folder / "good.yaml").read_text()
    text = text.split("treaties:")[0] + "treaties: []\n"  # no treaty in the files any more
    (folder / "good.yaml").write_text(text.replace("Mo-Fr 09:00-18:00", "Mo-Fr 10:00-18:00"))
    result = CliRunner().invoke(main, ["publish", str(folder), "--data-dir", str(node.config.data_dir)], env=PASS_ENV)
    assert result.exit_code == 0, result.output
    assert "1 changed, 0 deleted" in result.output
    assert "1 record not in these files is kept; --prune deletes it" in result.output
    assert "kept: members/GE/treaties/untoc" in result.output
    assert node.store.log_size("GE") == 6
    assert node.store.record_row("members/GE/treaties/untoc") is not None

    result = CliRunner().invoke(
        main, ["publish", str(folder), "--prune", "--data-dir", str(node.config.data_dir)], env=PASS_ENV
    )
    assert result.exit_code == 0, result.output
    assert "0 changed, 1 deleted" in result.output and "- members/GE/treaties/untoc" in result.output
    assert node.store.log_size("GE") == 7
    assert node.store.record_row("members/GE/treaties/untoc") is None
    assert set(node.current_state("GE")) == {
        "members/GE/authorities/pgo", "members/GE/authorities/ajara", "members/GE/rules/mla.hearing.witness",
        "members/GE/contacts/mla-desk",
    }


# --- safe publishing: nothing is deleted without --prune -------------------------------------------


def sample_published(make_node: Callable[..., Node], sample_dir: Callable[[str], Path]) -> tuple[Node, Path]:
    node = make_node("GE")
    folder = sample_dir("GE")
    node.publish(folder, PASS_ENV["COUNTERPART_KEY_PASSPHRASE"].encode())
    return node, folder


def run(node: Node, *args: object, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, ["publish", *map(str, args), "--data-dir", str(node.config.data_dir)], env=env or PASS_ENV
    )
    assert "Traceback" not in result.output
    return result.exit_code, " ".join(result.output.split())


def test_publishing_one_file_deletes_nothing(make_node: Callable[..., Node], sample_dir: Callable[[str], Path]) -> None:
    # on main, `publish authorities.yaml` deleted, signed and replicated, every contact, rule,
    # treaty and place of the member
    node, folder = sample_published(make_node, sample_dir)
    before = snapshot(node)
    authorities = len([n for n in node.current_state("GE") if "/authorities/" in n])
    others = len(node.current_state("GE")) - authorities
    for args in (["--dry-run"], []):
        code, out = run(node, folder / "authorities.yaml", *args)
        assert code == 0, out
        assert f"0 new, 0 changed, 0 deleted, {authorities} unchanged" in out
        assert f"{others} published records of other kinds are left as they are" in out
        assert " - members/" not in out and "kept" not in out
        assert snapshot(node) == before


def test_the_dry_run_says_what_prune_would_delete(make_node: Callable[..., Node], sample_dir: Callable[[str], Path]) -> None:
    node, folder = sample_published(make_node, sample_dir)
    before = snapshot(node)
    text = (folder / "treaties.yaml").read_text()
    head, _, rest = text.partition("- instrument: oas-1992-mla")
    (folder / "treaties.yaml").write_text(head + rest[rest.index("- instrument:"):])
    code, out = run(node, folder, "--dry-run")
    assert code == 0, out
    assert "dry run: 0 new, 0 changed, 0 deleted" in out
    assert "1 record not in these files is kept; --prune deletes it" in out
    assert "kept: members/GE/treaties/oas-1992-mla" in out
    code, out = run(node, folder, "--dry-run", "--prune")
    assert code == 0, out
    assert "- members/GE/treaties/oas-1992-mla (not in these files; --prune)" in out
    assert "dry run: 0 new, 0 changed, 1 deleted" in out and "kept" not in out
    assert snapshot(node) == before
    code, out = run(node, folder / "treaties.yaml", "--prune")
    assert code == 0, out
    assert "published: 0 new, 0 changed, 1 deleted" in out
    assert node.store.log_size("GE") == len(before[0]) + 1
    assert "members/GE/treaties/oas-1992-mla" not in node.current_state("GE")
    assert len(node.current_state("GE")) == len(before[0]) - 1  # no other kind touched


def test_prune_refuses_to_delete_a_record_a_kept_one_refers_to(
    make_node: Callable[..., Node], sample_dir: Callable[[str], Path]
) -> None:
    node, folder = sample_published(make_node, sample_dir)
    before = snapshot(node)
    only = folder.parent / "only-moj"
    only.mkdir()
    text = (folder / "authorities.yaml").read_text()
    moj = text[text.index("- id: moj"):text.index("- id: interpol-ncb")]
    (only / "authorities.yaml").write_text(f"member: GE\nauthorities:\n{moj}")
    code, out = run(node, only, "--prune")
    assert code == 1
    assert "--prune would delete members/GE/authorities/pgo, but members/GE/" in out
    assert "(published, not in these files) refers to it" in out
    assert snapshot(node) == before


def test_a_file_may_refer_to_records_published_from_other_files(published: tuple[Node, Path], tmp_path: Path) -> None:
    node, _ = published
    rules = write(tmp_path, "rules.yaml", """\
        member: GE
        rules:
          - request_type: mla.general
            possible: POSSIBILITY_YES
            receiving_authority: pgo
            consultation_contact: mla-desk
        """)
    code, out = run(node, rules)
    assert code == 0, out
    assert "published: 1 new" in out and "members/GE/rules/mla.general" in node.current_state("GE")


def test_dry_run_names_each_changed_field_with_old_and_new_values(published: tuple[Node, Path]) -> None:
    node, folder = published
    before = snapshot(node)
    text = (folder / "good.yaml").read_text()
    text = text.replace("Prosecutor's Office of Ajara", "Ajara Prosecutor's Office")
    text = text.replace("subdivisions: [GE-AJ]", "subdivisions: [GE-AJ, GE-GU]")
    text = text.replace("languages: [ka, en, ru]", "languages: [ka, en]")
    text = text.replace("Mo-Fr 09:00-18:00", "Mo-Fr 10:00-18:00")
    text = text.replace("roles: [COMPETENCE_ROLE_EXECUTES]", "roles: [COMPETENCE_ROLE_EXECUTES, COMPETENCE_ROLE_ISSUES]")
    (folder / "good.yaml").write_text(text)
    code, out = run(node, folder, "--dry-run")
    assert code == 0, out
    for line in (
        "~ members/GE/authorities/ajara",
        "display_names[1].text: \"Prosecutor's Office of Ajara\" → \"Ajara Prosecutor's Office\"",
        'coverage.subdivisions: + "GE-GU"',
        "competences[0].roles: + COMPETENCE_ROLE_ISSUES",
        "~ members/GE/authorities/pgo",
        'languages: - "ru"',
        'office_hours.opening_hours: "Mo-Fr 09:00-18:00" → "Mo-Fr 10:00-18:00"',
        "dry run: 0 new, 2 changed, 0 deleted",
    ):
        assert line in out, f"{line!r} not in {out!r}"
    result = CliRunner().invoke(main, ["publish", str(folder), "--dry-run", "--format", "json",
                                       "--data-dir", str(node.config.data_dir)])
    assert result.exit_code == 0, result.output
    changes = json.loads(result.stdout)["changes"]
    assert {"path": "coverage.subdivisions", "added": ["\"GE-GU\""]} in changes["members/GE/authorities/ajara"]
    assert snapshot(node) == before


def test_a_change_of_effective_dates_is_a_change(published: tuple[Node, Path]) -> None:
    node, folder = published
    text = (folder / "good.yaml").read_text()
    dated = text.replace("    kind: prosecution-office\n    parent: pgo",
                         "    kind: prosecution-office\n    effective: {from: 2027-01-01}\n    parent: pgo")
    (folder / "good.yaml").write_text(dated)
    code, out = run(node, folder)
    assert code == 0, out
    before = snapshot(node)
    (folder / "good.yaml").write_text(dated.replace("{from: 2027-01-01}", "{from: 2027-02-01, until: 2028-01-01}"))
    code, out = run(node, folder, "--dry-run")
    assert code == 0, out
    for line in (
        "~ members/GE/authorities/ajara",
        "effective.start_time: 2027-01-01T00:00:00Z → 2027-02-01T00:00:00Z",
        "effective.end_time: (not set) → 2028-01-01T00:00:00Z",
        "dry run: 0 new, 1 changed, 0 deleted",
    ):
        assert line in out, f"{line!r} not in {out!r}"
    assert snapshot(node) == before


def test_diff_records_compares_field_by_field() -> None:
    old = records_pb2.Authority(
        name="members/GE/authorities/x", kind="court",
        display_names=[records_pb2.LocalizedText(language="en", text="Court")],
        coverage=records_pb2.Coverage(subdivisions=["GE-AJ", "GE-TB"]),
        languages=["ka"],
    )
    new = records_pb2.Authority()
    new.CopyFrom(old)
    new.kind = "prosecution-office"
    new.coverage.subdivisions[:] = ["GE-TB", "GE-GU"]
    new.display_names.add(language="ka", text="სასამართლო")
    new.urgent_contact.always_available = True
    new.languages[:] = ["ka"]
    assert diff_records(old, new) == [
        FieldChange("display_names", added=('ka: "სასამართლო"',)),
        FieldChange("kind", '"court"', '"prosecution-office"'),
        FieldChange("coverage.subdivisions", added=('"GE-GU"',), removed=('"GE-AJ"',)),
        FieldChange("urgent_contact.always_available", "(not set)", "true"),
    ]
    assert diff_records(old, old) == []
    reordered = records_pb2.Authority()
    reordered.CopyFrom(old)
    reordered.coverage.subdivisions[:] = ["GE-TB", "GE-AJ"]
    assert diff_records(old, reordered) == [FieldChange("coverage.subdivisions", '["GE-AJ", "GE-TB"]', '["GE-TB", "GE-AJ"]')]
    present = records_pb2.Rule(name="members/GE/rules/extradition")
    present.electronic_transmission.SetInParent()
    assert diff_records(records_pb2.Rule(name="members/GE/rules/extradition"), present) == [
        FieldChange("electronic_transmission", "(not set)", "{}")
    ]


def many_authorities(folder: Path, count: int) -> Path:
    lines = ["member: GE", "authorities:"]
    for i in range(count):
        lines += [
            f"- id: office-{i}", f"  display_names: [{{language: en, text: Office {i}}}]", "  kind: prosecution-office",
            "  coverage: {subdivisions: [GE-AJ]}", "  languages: [ka]",
        ]
    path = folder / "many.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_many_records_print_a_summary_not_a_line_each(make_node: Callable[..., Node], tmp_path: Path) -> None:
    # on main, publishing 3,000 records printed 3,000 lines
    node = make_node("GE")
    records = many_authorities(tmp_path, 3000)
    result = CliRunner().invoke(main, ["publish", str(records), "--dry-run", "--verbose",
                                       "--data-dir", str(node.config.data_dir)])
    assert result.exit_code == 0, result.output
    assert len([line for line in result.output.splitlines() if line.startswith("+ members/GE/")]) == 3000
    result = CliRunner().invoke(main, ["publish", str(records), "--data-dir", str(node.config.data_dir)], env=PASS_ENV)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) <= 25, result.output
    assert "… 2980 more lines (--verbose shows every record and field)" in result.output
    assert "published: 3000 new, 0 changed, 0 deleted, 0 unchanged; appended 3000 entries" in result.output
    assert node.store.log_size("GE") == 3000
    assert "signing entries" not in result.output  # not a terminal: no progress bar


def test_a_progress_bar_shows_on_a_terminal(
    make_node: Callable[..., Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = make_node("GE")
    screen = io.StringIO()
    monkeypatch.setattr(cli, "err", Console(file=screen, force_terminal=True, width=100))
    seen: list[tuple[str, int, int]] = []
    original = cli._PublishProgress.__call__

    def spy(self: cli._PublishProgress, phase: str, done: int, total: int) -> None:
        seen.append((phase, done, total))
        original(self, phase, done, total)

    monkeypatch.setattr(cli._PublishProgress, "__call__", spy)
    result = CliRunner().invoke(main, ["publish", str(many_authorities(tmp_path, 120)),
                                       "--data-dir", str(node.config.data_dir)], env=PASS_ENV)
    assert result.exit_code == 0, result.output
    assert "signing entries" in screen.getvalue() and "storing and indexing" in screen.getvalue()
    assert ("signing", 120, 120) in seen and seen[-1] == ("storing", 1, 1)


# --- publishing is refused under a document that does not let this node publish ---------------------


def test_publish_is_refused_when_the_federation_document_has_expired(
    make_node: Callable[..., Node], clock: Clock, tmp_path: Path
) -> None:
    clock.now -= timedelta(days=400)  # a document valid for 365 days, issued 400 days ago
    node = make_node("GE")
    write(tmp_path, "good.yaml", GOOD_RECORDS)
    for args in (["--dry-run"], []):
        code, out = run(node, tmp_path / "good.yaml", *args)
        assert code == 1
        assert "the federation document test version 1 expired at" in out
        assert "install the next version first" in out
        assert node.store.log_size("GE") == 0 and node.store.checkpoint("GE") is None


def test_publish_is_refused_when_the_document_does_not_list_the_member(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node("GE", ["AZ"])
    write(tmp_path, "good.yaml", GOOD_RECORDS)
    for args in (["--dry-run"], []):
        code, out = run(node, tmp_path / "good.yaml", *args)
        assert code == 1
        assert "the federation document test version 1 does not list GE as a member" in out
        assert node.store.log_size("GE") == 0 and node.store.checkpoint("GE") is None


def test_publish_is_refused_when_the_node_key_is_not_the_members(published: tuple[Node, Path]) -> None:
    node, folder = published
    before = snapshot(node)
    node.config.key_path.unlink()
    signing.write_key_file(node.config.key_path, signing.SigningKey.generate(), b"test-passphrase")
    (folder / "extra.yaml").write_text("member: GE\ntreaties:\n  - {instrument: uncac, status: TREATY_STATUS_IN_FORCE}\n")
    code, out = run(node, folder)
    assert code == 1
    assert "is not among GE's keys in the federation document" in out
    assert snapshot(node) == before


def test_federation_install_refuses_a_document_that_does_not_list_the_member(
    tmp_path: Path, federation: Federation, clock: Clock
) -> None:
    data_dir = tmp_path / "ge"
    data_dir.mkdir()
    config = NodeConfig(data_dir=data_dir, member="GE")
    (data_dir / CONFIG_NAME).write_text(config.to_toml(), encoding="utf-8")
    signing.write_key_file(config.key_path, federation.key("GE"), b"test-passphrase")
    doc = tmp_path / "federation.json"
    fed.write_file(doc, federation.document(["AZ"], clock()))
    result = CliRunner().invoke(main, ["federation", "install", str(doc), "--data-dir", str(data_dir)])
    assert result.exit_code == 1
    assert "does not list GE as a member" in " ".join(result.output.split())
    node = Node(config)
    try:
        assert node.store.federation_chain() == []
        with pytest.raises(ConfigurationError) as caught:
            node.install_federation(fed.read_file(doc), require_member=True)
        assert caught.value.reason == "NOT_A_MEMBER"
    finally:
        node.close()
    fed.write_file(doc, federation.document(["AZ", "GE"], clock()))
    result = CliRunner().invoke(main, ["federation", "install", str(doc), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output


# --- phone numbers are stored in E.164; files that are not records are refused ----------------------


def test_phone_numbers_with_spaces_and_dashes_are_stored_in_e164(published: tuple[Node, Path]) -> None:
    node, folder = published
    text = (folder / "good.yaml").read_text()
    text = text.replace('email: "mla-desk@pgo.ge.example"', 'email: "mla-desk@pgo.ge.example"\n    phone: "+995 32 240-50-00"')
    text = text.replace('always_available: true}', 'always_available: true, phone: "032 240 50 00"}')
    (folder / "good.yaml").write_text(text)
    code, out = run(node, folder)
    assert code == 0, out
    state = node.current_state("GE")
    assert state["members/GE/contacts/mla-desk"].record.phone == "+995322405000"  # type: ignore[union-attr]
    assert state["members/GE/authorities/pgo"].record.urgent_contact.phone == "+995322405000"  # type: ignore[union-attr]
    code, out = run(node, folder)
    assert code == 0 and "nothing to publish" in out  # the normalized number is the same record


def test_files_that_are_not_records_are_refused(published: tuple[Node, Path], tmp_path: Path) -> None:
    node, folder = published
    before = snapshot(node)
    yaml_named_xlsx = write(tmp_path, "records.xlsx", GOOD_RECORDS.replace("Prosecutor's Office of Ajara", "Renamed"))
    code, out = run(node, yaml_named_xlsx)  # main read it as YAML and published it
    assert code == 1 and "records.xlsx" in out and "not a readable .xlsx workbook" in out
    notes = write(tmp_path, "records.txt", GOOD_RECORDS)
    code, out = run(node, notes)
    assert code == 1 and "records.txt: unknown kind of file (.txt)" in out
    (folder / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0")
    code, out = run(node, folder)
    assert code == 1 and "old.xls is an Excel 97-2003 workbook: save it as .xlsx" in out
    assert snapshot(node) == before


BAD_INPUTS = {
    # case: (file content, substrings the message must contain)
    "unknown_code": (
        GOOD_RECORDS.replace("kind: prosecution-office\n    parent: pgo", "kind: prosecutors-office\n    parent: pgo"),
        ["bad.yaml", "members/GE/authorities/ajara", "field kind", "unknown authority kind code 'prosecutors-office'"],
    ),
    "unknown_request_type": (
        GOOD_RECORDS.replace("request_types: [mla.hearing.witness, mla.general]", "request_types: [mla.hearing.wittness]"),
        ["bad.yaml", "members/GE/authorities/pgo", "competences[0].request_types[0]", "'mla.hearing.wittness'",
         "did you mean 'mla.hearing.witness'?"],
    ),
    "malformed_member_code": (
        GOOD_RECORDS.replace("member: GE", "member: Georgia"),
        ["bad.yaml", "field member", "'Georgia' is malformed"],
    ),
    "other_member": (
        GOOD_RECORDS.replace("member: GE", "member: AZ"),
        ["bad.yaml", "field member", "records of member AZ cannot be published by the node of GE"],
    ),
    "malformed_name": (
        GOOD_RECORDS.replace("id: ajara", "id: Ajara Office"),
        ["bad.yaml", "authorities[1]", "field id", "'Ajara Office' is malformed"],
    ),
    "missing_required_field": (
        GOOD_RECORDS.replace("    kind: prosecution-office\n    parent: pgo\n", "    parent: pgo\n"),
        ["bad.yaml", "members/GE/authorities/ajara", "field kind", "missing required field 'kind'"],
    ),
    "wrong_type": (
        GOOD_RECORDS.replace("languages: [ka, en, ru]", "languages: {ka: yes}"),
        ["bad.yaml", "members/GE/authorities/pgo", "field languages", "wrong type or value"],
    ),
    "oversized_value": (
        GOOD_RECORDS.replace("text: Batumi}", "text: " + "B" * 2500 + "}"),
        ["bad.yaml", "members/GE/authorities/ajara", "coverage.municipalities[0].names[1].text", "2500 characters"],
    ),
    "broken_yaml": (
        GOOD_RECORDS.replace("  - id: ajara", "  - id: ajara\n   bad: [unclosed"),
        ["bad.yaml", "broken YAML at line"],
    ),
    "unknown_field": (
        GOOD_RECORDS.replace("    kind: prosecution-office\n    parent: pgo", "    kind: prosecution-office\n    colour: blue\n    parent: pgo"),
        ["bad.yaml", "members/GE/authorities/ajara", "colour", "unknown field"],
    ),
    "dangling_reference": (
        GOOD_RECORDS.replace("executing_authority: ajara", "executing_authority: kutaisi"),
        ["bad.yaml", "members/GE/rules/mla.hearing.witness", "field executing_authority", "members/GE/authorities/kutaisi"],
    ),
    "subdivision_of_other_member": (
        GOOD_RECORDS.replace("subdivisions: [GE-AJ]", "subdivisions: [AZ-BA]"),
        ["bad.yaml", "members/GE/authorities/ajara", "coverage.subdivisions[0]", "not in GE"],
    ),
    "bad_date": (
        GOOD_RECORDS.replace('review_date: "2026-11-01"', 'review_date: "2026-13-01"'),
        ["bad.yaml", "members/GE/authorities/pgo", "field review_date", "not a date"],
    ),
    "unknown_subdivision": (  # main accepted any code of the right shape
        GOOD_RECORDS.replace("subdivisions: [GE-AJ]", "subdivisions: [GE-XX]"),
        ["bad.yaml", "members/GE/authorities/ajara", "coverage.subdivisions[0]",
         "'GE-XX' is not a subdivision of Georgia in ISO 3166-2", "GE-AJ"],
    ),
    "invalid_language_tag": (
        GOOD_RECORDS.replace("languages: [ka, en, ru]", "languages: [ka, en, xx]"),
        ["bad.yaml", "members/GE/authorities/pgo", "languages[2]", "'xx' is not a valid BCP 47 language tag"],
    ),
    "invalid_email": (
        GOOD_RECORDS.replace("mla-desk@pgo.ge.example", "mla-desk@pgo..ge.example"),
        ["bad.yaml", "members/GE/contacts/mla-desk", "field email", "is not an e-mail address"],
    ),
    "invalid_phone": (
        GOOD_RECORDS.replace("always_available: true}", 'always_available: true, phone: "+995 32 24"}'),
        ["bad.yaml", "members/GE/authorities/pgo", "urgent_contact.phone", "'+995 32 24' is not a phone number",
         "not a valid number for GE"],
    ),
    "effective_until_before_from": (
        GOOD_RECORDS.replace("    kind: prosecution-office\n    parent: pgo", "    kind: prosecution-office\n"
                             "    effective: {from: 2027-01-01, until: 2026-06-01}\n    parent: pgo"),
        ["bad.yaml", "members/GE/authorities/ajara", "effective.until", "'until' must be later than 'from'"],
    ),
    "effective_not_a_date": (
        GOOD_RECORDS.replace("    kind: prosecution-office\n    parent: pgo", "    kind: prosecution-office\n"
                             "    effective: {from: next spring}\n    parent: pgo"),
        ["bad.yaml", "members/GE/authorities/ajara", "effective.from", "'next spring' is not a date or time"],
    ),
    "duplicate_name": (
        GOOD_RECORDS + "\n",  # the same file twice in the folder
        ["members/GE/authorities/pgo", "defined twice"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_and_nothing_changes(case: str, published: tuple[Node, Path]) -> None:
    node, folder = published
    before = snapshot(node)
    (folder / "good.yaml").unlink()
    content, expected = BAD_INPUTS[case]
    write(folder, "bad.yaml", content)
    if case == "duplicate_name":
        write(folder, "bad-copy.yaml", content)
    for args in (["--dry-run"], []):
        result = CliRunner().invoke(
            main, ["publish", str(folder), "--data-dir", str(node.config.data_dir), *args], env=PASS_ENV
        )
        assert result.exit_code == 1, result.output
        message = " ".join(result.output.split())
        for part in expected:
            assert part in message, f"{part!r} not in {message!r}"
        assert "Traceback" not in result.output
        assert snapshot(node) == before


def test_bad_csv_is_refused(published: tuple[Node, Path]) -> None:
    node, folder = published
    before = snapshot(node)
    write(folder, "authorities.csv", "member,id,kind,display_names,coverage.national\nGE,kutaisi,prosecution-office,en: Kutaisi Office,perhaps\n")
    result = CliRunner().invoke(main, ["publish", str(folder), "--data-dir", str(node.config.data_dir)], env=PASS_ENV)
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "authorities.csv" in message and "row 2" in message and "column coverage.national" in message
    assert "'perhaps' is not yes or no" in message
    assert snapshot(node) == before


def test_csv_authorities_publish(published: tuple[Node, Path]) -> None:
    node, folder = published
    write(
        folder, "authorities.csv",
        "member,id,kind,parent,display_names,address.locality,coverage.national,coverage.subdivisions,competences,languages,channels\n"
        'GE,imereti,prosecution-office,pgo,"ka: იმერეთის პროკურატურა\nen: Imereti Regional Prosecutor\'s Office",Kutaisi,no,GE-IM,'
        '"executes: mla.general; mla.hearing.witness",ka,email: imereti@pgo.ge.example\n',
    )
    result = CliRunner().invoke(main, ["publish", str(folder), "--data-dir", str(node.config.data_dir)], env=PASS_ENV)
    assert result.exit_code == 0, result.output
    state = node.current_state("GE")
    rec = state["members/GE/authorities/imereti"].record
    assert rec is not None and rec.coverage.subdivisions == ["GE-IM"]  # type: ignore[union-attr]
    assert [t.text for t in rec.display_names] == ["იმერეთის პროკურატურა", "Imereti Regional Prosecutor's Office"]  # type: ignore[union-attr]
    assert list(rec.competences[0].roles) == [records_pb2.COMPETENCE_ROLE_EXECUTES]  # type: ignore[union-attr]
    assert "members/GE/authorities/ajara" in state  # the CSV holds one authority: the others are kept


def test_wrong_passphrase_appends_nothing(published: tuple[Node, Path]) -> None:
    node, folder = published
    before = snapshot(node)
    (folder / "extra.yaml").write_text("member: GE\ntreaties:\n  - {instrument: uncac, status: TREATY_STATUS_IN_FORCE}\n")
    result = CliRunner().invoke(
        main, ["publish", str(folder), "--data-dir", str(node.config.data_dir)], env={"COUNTERPART_KEY_PASSPHRASE": "wrong"}
    )
    assert result.exit_code == 1
    assert "wrong passphrase" in result.output
    assert snapshot(node) == before
