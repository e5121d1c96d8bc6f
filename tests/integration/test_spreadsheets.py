"""Records in spreadsheets: export and import of every kind in CSV and XLSX.

Exporting the current records and publishing the export changes nothing, for every kind of
record and both formats; CSV files are read whatever their separator (',' ';' tab) and
encoding (UTF-8 with or without BOM, Windows-1251, Latin-1); every bad file or cell gives one
message naming the file, the row and the column, exit code 1, and leaves the log and its
checkpoint as they were.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import openpyxl  # type: ignore[import-untyped, unused-ignore]
import pytest
from click.testing import CliRunner
from conftest import SAMPLE_DATA  # type: ignore[import-not-found, unused-ignore]

from counterpart_core import spreadsheets
from directory_server.cli import main
from directory_server.node import Node

PASS_ENV = {"COUNTERPART_KEY_PASSPHRASE": "test-passphrase"}
KINDS = ("authorities", "contacts", "rules", "treaties", "places")


def cli(node: Node, *args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*map(str, args), "--data-dir", str(node.config.data_dir)], env=PASS_ENV)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, " ".join(result.output.split())


def snapshot(node: Node) -> tuple[list[tuple[int, bytes]], bytes | None]:
    return node.store.envelopes("GE"), node.store.checkpoint("GE")


def state(node: Node) -> dict[str, bytes]:
    return {n: e.record.SerializeToString(deterministic=True) for n, e in node.current_state("GE").items() if e.record}


def per_kind(node: Node) -> dict[str, int]:
    counts = dict.fromkeys(KINDS, 0)
    for name in node.current_state("GE"):
        counts[name.split("/")[2]] += 1
    return counts


@pytest.fixture
def ge(make_node: Callable[..., Node], sample_dir: Callable[[str], Path]) -> Node:
    """A GE node holding the GE sample data (every kind of record), published from YAML."""
    node = make_node("GE")
    node.publish(sample_dir("GE"), PASS_ENV["COUNTERPART_KEY_PASSPHRASE"].encode())
    assert all(n > 0 for n in per_kind(node).values()), per_kind(node)
    return node


# --- export, then import: nothing to do ----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_export_then_publish_is_a_no_op_for_every_kind(ge: Node, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "export"
    code, text = cli(ge, "export", "--format", fmt, "--out", out)
    assert code == 0, text
    counts = per_kind(ge)
    total = sum(counts.values())
    assert f"exported {total} records of GE ({counts['authorities']} authorities, {counts['contacts']} contacts" in text
    before = snapshot(ge)
    code, text = cli(ge, "publish", out, "--dry-run", "--prune")
    assert code == 0, text
    assert f"dry run: 0 new, 0 changed, 0 deleted, {total} unchanged; nothing appended" in text
    assert "kept" not in text
    if fmt == "csv":
        assert sorted(p.name for p in out.iterdir()) == sorted(f"{k}.csv" for k in KINDS)
        for kind in KINDS:  # each kind alone, too: its file and nothing else
            code, text = cli(ge, "publish", out / f"{kind}.csv", "--dry-run", "--prune")
            assert code == 0, text
            assert f"dry run: 0 new, 0 changed, 0 deleted, {counts[kind]} unchanged" in text, (kind, text)
    else:
        wb = openpyxl.load_workbook(out / "GE-records.xlsx", read_only=True)
        assert wb.sheetnames == list(KINDS)
        assert {k: wb[k].max_row - 1 for k in KINDS} == counts
        wb.close()
    code, text = cli(ge, "publish", out, "--prune")
    assert code == 0 and "nothing to publish" in text, text
    assert snapshot(ge) == before


def test_an_export_published_into_a_fresh_node_gives_the_same_records(
    ge: Node, make_node: Callable[..., Node], tmp_path: Path
) -> None:
    assert cli(ge, "export", "--format", "csv", "--out", tmp_path / "csv")[0] == 0
    assert cli(ge, "export", "--format", "xlsx", "--out", tmp_path / "book.xlsx")[0] == 0
    for source in (tmp_path / "csv", tmp_path / "book.xlsx"):
        fresh = make_node("GE")
        code, text = cli(fresh, "publish", source)
        assert code == 0, text
        assert state(fresh) == state(ge), source
    # and the export of what was imported is the same bytes
    again = make_node("GE")
    assert cli(again, "publish", tmp_path / "csv")[0] == 0
    assert cli(again, "export", "--format", "csv", "--out", tmp_path / "csv-2")[0] == 0
    for kind in KINDS:
        assert (tmp_path / "csv-2" / f"{kind}.csv").read_bytes() == (tmp_path / "csv" / f"{kind}.csv").read_bytes()


def test_a_folder_mixing_yaml_csv_and_xlsx(ge: Node, make_node: Callable[..., Node], tmp_path: Path) -> None:
    assert cli(ge, "export", "--format", "csv", "--out", tmp_path / "csv")[0] == 0
    assert cli(ge, "export", "--format", "xlsx", "--out", tmp_path / "book.xlsx")[0] == 0
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "authorities.yaml").write_bytes((SAMPLE_DATA / "GE" / "authorities.yaml").read_bytes())
    for kind in ("contacts", "places"):
        (mixed / f"ge-{kind}.csv").write_bytes((tmp_path / "csv" / f"{kind}.csv").read_bytes())
    wb = openpyxl.load_workbook(tmp_path / "book.xlsx")
    for kind in ("authorities", "contacts", "places"):
        wb.remove(wb[kind])
    wb.save(mixed / "rules-and-treaties.xlsx")
    fresh = make_node("GE")
    code, text = cli(fresh, "publish", mixed)
    assert code == 0, text
    assert state(fresh) == state(ge)


def test_an_edited_cell_shows_in_the_diff(ge: Node, tmp_path: Path) -> None:
    out = tmp_path / "csv"
    assert cli(ge, "export", "--format", "csv", "--out", out)[0] == 0
    path = out / "contacts.csv"
    path.write_text(
        path.read_text(encoding="utf-8-sig").replace("mla-desk@pgo.ge.example", "desk@pgo.ge.example"),
        encoding="utf-8-sig",
    )
    book = tmp_path / "book.xlsx"
    assert cli(ge, "export", "--format", "xlsx", "--out", book)[0] == 0
    wb = openpyxl.load_workbook(book)
    rules = wb["rules"]
    header = [c.value for c in rules[1]]
    rules.cell(row=2, column=header.index("languages") + 1, value="ka; en")
    wb.save(book)
    code, text = cli(ge, "publish", out / "contacts.csv", "--dry-run")
    assert code == 0, text
    assert "~ members/GE/contacts/mla-desk" in text and "row 2" in text
    assert 'email: "mla-desk@pgo.ge.example" → "desk@pgo.ge.example"' in text
    code, text = cli(ge, "publish", book, "--dry-run")
    assert code == 0, text
    assert 'languages: + "en"' in text and "dry run: 0 new, 1 changed" in text


# --- what CSV files look like in practice ---------------------------------------------------------


def csv_bytes(rows: list[list[str]], delimiter: str, encoding: str) -> bytes:
    buf = io.StringIO(newline="")
    csv.writer(buf, delimiter=delimiter).writerows(rows)
    return buf.getvalue().encode(encoding)


AUTHORITY_HEADER = ["member", "id", "kind", "parent", "display_names", "coverage.subdivisions", "competences", "languages"]


@pytest.mark.parametrize(
    ("delimiter", "encoding", "text", "note"),
    [
        (",", "utf-8", "ru: Прокуратура Имерети", ""),
        (";", "utf-8-sig", "ru: Прокуратура Имерети", "';'-separated"),
        ("\t", "utf-8", "ru: Прокуратура Имерети", "tab-separated"),
        (";", "cp1251", "ru: Прокуратура Имеретинского края", "as Windows-1251, ';'-separated"),
        (",", "latin-1", "es: Fiscalía Regional de Imeretia, Señoría", "as Windows-1252, ','-separated"),
    ],
)
def test_delimiters_and_encodings_are_detected(
    ge: Node, tmp_path: Path, delimiter: str, encoding: str, text: str, note: str
) -> None:
    # main refused ';'-separated files (one unknown column) and Latin-1/Windows-1251 files (a codec error)
    rows = [AUTHORITY_HEADER,
            ["GE", "imereti-po", "prosecution-office", "pgo", f"{text}\nen: Imereti Prosecutor's Office", "GE-IM",
             "executes: mla.general; mla.hearing.witness", "ka"]]
    path = tmp_path / "authorities.csv"
    path.write_bytes(csv_bytes(rows, delimiter, encoding))
    code, out = cli(ge, "publish", path)
    assert code == 0, out
    if note:
        assert f"note: read {path} {note}" in out or f"{note}" in out, out
    record = ge.current_state("GE")["members/GE/authorities/imereti-po"].record
    assert [t.text for t in record.display_names] == [text.split(": ", 1)[1], "Imereti Prosecutor's Office"]  # type: ignore[union-attr]


def test_phone_numbers_in_a_spreadsheet_are_stored_in_e164(ge: Node, tmp_path: Path) -> None:
    path = tmp_path / "contacts.csv"
    path.write_text(
        "member,id,display_names,authority,role,phone,visibility\n"
        "GE,night-desk,en: Night desk,pgo,central-authority-desk,+995 32 240-50-00,public\n", encoding="utf-8",
    )
    code, out = cli(ge, "publish", path)
    assert code == 0, out
    assert ge.current_state("GE")["members/GE/contacts/night-desk"].record.phone == "+995322405000"  # type: ignore[union-attr]
    assert cli(ge, "export", "--format", "csv", "--out", tmp_path / "out")[0] == 0
    assert ",+995322405000," in (tmp_path / "out" / "contacts.csv").read_text(encoding="utf-8-sig")
    code, out = cli(ge, "publish", tmp_path / "out", "--dry-run", "--prune")
    assert code == 0 and "0 new, 0 changed, 0 deleted" in out, out


def test_cells_excel_typed_are_read_as_text(ge: Node, tmp_path: Path) -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Rules"
    ws.append(["member", "request_type", "possible", "receiving_authority", "interpol_for_urgent",
               "extradition.provisional_arrest_days", "review_date"])
    ws.append(["GE", "extradition", "yes", "pgo", True, 40, datetime(2026, 12, 1)])
    path = tmp_path / "rules.xlsx"
    wb.save(path)
    code, out = cli(ge, "publish", path)
    assert code == 0, out
    rule = ge.current_state("GE")["members/GE/rules/extradition"].record
    assert rule.review_date == "2026-12-01" and rule.extradition.provisional_arrest_days == 40  # type: ignore[union-attr]
    assert rule.interpol_for_urgent and rule.receiving_authority == "members/GE/authorities/pgo"  # type: ignore[union-attr]
    assert "members/GE/rules/mla.general" in ge.current_state("GE")  # one rule in the sheet: the others are kept


def test_export_does_not_overwrite_without_force(ge: Node, tmp_path: Path) -> None:
    book = tmp_path / "book.xlsx"
    assert cli(ge, "export", "--format", "xlsx", "--out", book)[0] == 0
    code, out = cli(ge, "export", "--format", "xlsx", "--out", book)
    assert code == 1 and "refusing to overwrite (--force overwrites)" in out
    assert cli(ge, "export", "--format", "xlsx", "--out", book, "--force")[0] == 0
    code, out = cli(ge, "export", "--format", "csv", "--out", tmp_path / "one.csv")
    assert code == 1 and "--format csv writes one file per kind of record into a folder" in out


def test_the_layout_names_every_field_once() -> None:
    layout = spreadsheets.layout()
    assert list(layout) == list(KINDS)
    assert layout["authorities"][:5] == ["member", "id", "display_names", "kind", "parent"]
    assert "coverage.subdivisions" in layout["authorities"] and "urgent_contact.phone" in layout["authorities"]
    assert layout["rules"][:3] == ["member", "request_type", "possible"]
    assert "extradition.provisional_arrest_days" in layout["rules"]
    assert layout["treaties"][:2] == ["member", "instrument"]
    for columns in layout.values():
        assert len(columns) == len(set(columns)) and "name" not in columns


# --- bad spreadsheets: file, row and column named; nothing stored changes -------------------------


def _xlsx(sheets: dict[str, list[list[object]]]) -> bytes:
    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for title, rows in sheets.items():
        ws = wb.create_sheet(title)
        for row in rows:
            ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


RULE_ROW = ["GE", "extradition", "POSSIBILITY_YES", "pgo"]
BAD_SHEETS: dict[str, tuple[str, bytes, list[str]]] = {
    # case: (file name, content, substrings the message must contain)
    "extra_cell": (  # main accepted it silently
        "authorities.csv",
        (b"member,id,kind,display_names,coverage.national\n"
         b"GE,kutaisi-po,prosecution-office,en: Kutaisi Office,yes\n"
         b"GE,zestafoni-po,prosecution-office,en: Zestafoni Office,yes,yes\n"),
        ["authorities.csv", "row 3", "a cell too many: the row has 6 cells, the header 5 columns"],
    ),
    "missing_cell": (
        "authorities.csv",
        b"member,id,kind,display_names,coverage.national\nGE,kutaisi-po,prosecution-office,en: Kutaisi Office\n",
        ["authorities.csv", "row 2", "a cell missing: the row has 4 cells, the header 5 columns"],
    ),
    "unknown_column": (
        "authorities.csv",
        b"member,id,kind,display_names,colour\nGE,kutaisi-po,prosecution-office,en: Kutaisi Office,blue\n",
        ["authorities.csv", "row 1", "column 'colour'", "unknown column for authorities"],
    ),
    "misspelt_column": (
        "contacts.csv",
        b"member,id,display_names,authority,role,emial\nGE,desk,en: Desk,pgo,central-authority-desk,a@b.ge\n",
        ["contacts.csv", "column 'emial'", "did you mean 'email'?"],
    ),
    "missing_key_column": (
        "contacts.csv", b"member,display_names\nGE,en: Desk\n",
        ["contacts.csv", "row 1", "missing required column 'id'"],
    ),
    "bad_code_of_a_fixed_list": (
        "rules.csv", b"member,request_type,possible\nGE,extradition,maybe\n",
        ["rules.csv", "row 2", "column possible", "'maybe' is not one of: yes, no, partly"],
    ),
    "bad_yes_no": (
        "rules.csv", b"member,request_type,possible,interpol_for_urgent\nGE,extradition,yes,sometimes\n",
        ["rules.csv", "row 2", "column interpol_for_urgent", "'sometimes' is not yes or no"],
    ),
    "bad_json": (
        "rules.csv", b'member,request_type,possible,executing_by_subdivision\nGE,extradition,yes,"[{""subdivisions"": "\n',
        ["rules.csv", "row 2", "column executing_by_subdivision", "not valid JSON"],
    ),
    "bad_text_line": (
        "authorities.csv",
        b"member,id,kind,display_names,coverage.national\nGE,kutaisi-po,prosecution-office,Kutaisi Office,yes\n",
        ["authorities.csv", "row 2", "column display_names", "line 1 'Kutaisi Office'", "expected 'language: text'"],
    ),
    "bad_competence_line": (
        "authorities.csv",
        (b"member,id,kind,display_names,coverage.national,competences\n"
         b"GE,kutaisi-po,prosecution-office,en: Kutaisi Office,yes,listens: mla.general\n"),
        ["authorities.csv", "row 2", "column competences", "'listens' is not one of: receives, executes, issues"],
    ),
    "unparseable_phone": (
        "contacts.csv",
        b"member,id,display_names,authority,role,phone\nGE,desk,en: Desk,pgo,central-authority-desk,+995 32 24\n",
        ["contacts.csv", "row 2 (members/GE/contacts/desk)", "column phone", "'+995 32 24' is not a phone number"],
    ),
    "unknown_subdivision": (
        "authorities.csv",
        b"member,id,kind,display_names,coverage.subdivisions\nGE,kutaisi-po,prosecution-office,en: Kutaisi Office,GE-IM; GE-XX\n",
        ["authorities.csv", "row 2 (members/GE/authorities/kutaisi-po)",
         "column coverage.subdivisions (coverage.subdivisions[1])", "'GE-XX' is not a subdivision of Georgia"],
    ),
    "unknown_code": (
        "authorities.csv",
        b"member,id,kind,display_names,coverage.national\nGE,kutaisi-po,prosecutors-office,en: Kutaisi Office,yes\n",
        ["authorities.csv", "row 2 (members/GE/authorities/kutaisi-po)", "column kind",
         "unknown authority kind code 'prosecutors-office'"],
    ),
    "other_member": (
        "authorities.csv",
        b"member,id,kind,display_names,coverage.national\nAZ,kutaisi-po,prosecution-office,en: Kutaisi Office,yes\n",
        ["authorities.csv", "row 2", "column member", "records of member AZ cannot be published by the node of GE"],
    ),
    "dangling_reference": (
        "contacts.csv", b"member,id,display_names,authority,role\nGE,desk,en: Desk,nowhere,central-authority-desk\n",
        ["contacts.csv, row 2", "members/GE/contacts/desk", "field authority", "refers to members/GE/authorities/nowhere"],
    ),
    "broken_quotes": (
        "authorities.csv", b'member,id,kind,display_names\nGE,kutaisi-po,prosecution-office,"en: Kutaisi\n',
        ["authorities.csv", "row 2", "broken CSV"],
    ),
    "kind_not_told": (
        "records.csv", b"member,id\nGE,x\n",
        ["records.csv", "cannot tell which kind of records this file holds: name it after its kind (authorities.csv"],
    ),
    "layout_of_earlier_versions": (
        "extra.csv",
        b"member,id,kind,name:en,national\nGE,kutaisi,prosecution-office,Kutaisi Office,yes\n",
        ["extra.csv", "column 'name:en'", "names are one column now, display_names"],
    ),
    "xlsx_named_csv": (
        "authorities.csv", _xlsx({"authorities": [["member", "id"]]}),
        ["authorities.csv", "this is an .xlsx workbook (a zip file), not CSV text: name it .xlsx"],
    ),
    "xlsx_unknown_sheet": (
        "book.xlsx", _xlsx({"rules": [["member", "request_type", "possible"]], "Sheet1": [["notes"]]}),
        ["book.xlsx", "sheet 'Sheet1'", "a sheet must be named after the kind of records it holds"],
    ),
    "xlsx_value_beyond_header": (
        "book.xlsx", _xlsx({"rules": [["member", "request_type", "possible", "receiving_authority"], [*RULE_ROW, "stray"]]}),
        ["book.xlsx", "sheet rules", "row 2", "column E", "a value beyond the last column of the header (4 columns)"],
    ),
    "xlsx_bad_cell": (
        "book.xlsx", _xlsx({"rules": [["member", "request_type", "possible", "receiving_authority"],
                                      RULE_ROW, ["GE", "mla.general", "perhaps", "pgo"]]}),
        ["book.xlsx", "sheet rules", "row 3", "column possible (C)", "'perhaps' is not one of"],
    ),
    "xlsx_defined_twice": (
        "book.xlsx", _xlsx({"rules": [["member", "request_type", "possible", "receiving_authority"], RULE_ROW, RULE_ROW]}),
        ["book.xlsx, sheet rules, row 3", "members/GE/rules/extradition", "defined twice (also in", "row 2"],
    ),
    "not_a_workbook": (
        "book.xlsx", b"member: GE\n", ["book.xlsx", "not a readable .xlsx workbook"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SHEETS))
def test_a_bad_spreadsheet_is_refused_and_nothing_changes(ge: Node, tmp_path: Path, case: str) -> None:
    name, content, expected = BAD_SHEETS[case]
    folder = tmp_path / "records"
    folder.mkdir()
    (folder / name).write_bytes(content)
    before = snapshot(ge)
    for target in (folder, folder / name):
        for args in (["--dry-run"], []):
            code, out = cli(ge, "publish", target, *args)
            assert code == 1, out
            for part in expected:
                assert part in out, f"{part!r} not in {out!r}"
            assert snapshot(ge) == before
