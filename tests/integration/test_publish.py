"""Publishing from files: the diff, idempotence, and every kind of bad input.

Each bad input must give one message naming the file, the record and the field,
exit code 1, and leave the log and its checkpoint exactly as they were.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests_support_records import GOOD_RECORDS

from directory_server.cli import main
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


def test_changes_and_deletions_append_entries(published: tuple[Node, Path]) -> None:
    node, folder = published
    text = (folder / "good.yaml").read_text()
    text = text.split("treaties:")[0]  # drop the treaty: it must become a tombstone
    (folder / "good.yaml").write_text(text.replace("Mo-Fr 09:00-18:00", "Mo-Fr 10:00-18:00"))
    result = CliRunner().invoke(main, ["publish", str(folder), "--data-dir", str(node.config.data_dir)], env=PASS_ENV)
    assert result.exit_code == 0, result.output
    assert "1 changed, 1 deleted" in result.output
    assert node.store.log_size("GE") == 7
    assert node.store.record_row("members/GE/treaties/untoc") is None
    assert set(node.current_state("GE")) == {
        "members/GE/authorities/pgo", "members/GE/authorities/ajara", "members/GE/rules/mla.hearing.witness",
        "members/GE/contacts/mla-desk",
    }


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
    write(folder, "extra.csv", "member,id,kind,name:en,national,request_types,roles\nGE,kutaisi,prosecution-office,Kutaisi Office,perhaps,mla.general,executes\n")
    result = CliRunner().invoke(main, ["publish", str(folder), "--data-dir", str(node.config.data_dir)], env=PASS_ENV)
    assert result.exit_code == 1
    assert "extra.csv" in result.output and "row 2" in result.output and "national" in result.output
    assert snapshot(node) == before


def test_csv_authorities_publish(published: tuple[Node, Path]) -> None:
    node, folder = published
    write(
        folder, "extra.csv",
        "member,id,kind,parent,name:ka,name:en,locality,national,subdivisions,request_types,roles,languages,email\n"
        "GE,imereti,prosecution-office,pgo,იმერეთის პროკურატურა,Imereti Regional Prosecutor's Office,Kutaisi,no,GE-IM,"
        "mla.general;mla.hearing.witness,executes,ka,imereti@pgo.ge.example\n",
    )
    result = CliRunner().invoke(main, ["publish", str(folder), "--data-dir", str(node.config.data_dir)], env=PASS_ENV)
    assert result.exit_code == 0, result.output
    state = node.current_state("GE")
    rec = state["members/GE/authorities/imereti"].record
    assert rec is not None and rec.coverage.subdivisions == ["GE-IM"]  # type: ignore[union-attr]
    assert [t.text for t in rec.display_names] == ["იმერეთის პროკურატურა", "Imereti Regional Prosecutor's Office"]  # type: ignore[union-attr]


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
