"""A member's records in spreadsheets: CSV and XLSX, one sheet (or CSV file) per kind.

Kinds: ``authorities``, ``contacts``, ``rules``, ``treaties``, ``places`` (an XLSX sheet is
named after its kind; a CSV file's name contains it: ``authorities.csv``, ``ge-rules.csv``).
One row per record. The columns are the record's fields (the same names as in YAML), in the
order the export writes them; any subset may be given, in any order, except the two that
are required: ``member`` and the record's key (``id``; ``request_type`` for rules,
``instrument`` for treaties).

- A field inside another is named by its path: ``address.locality``, ``coverage.national``,
  ``urgent_contact.phone``, ``extradition.provisional_arrest_days``.
- Yes/no fields: ``yes`` or ``no`` (``true``/``false``, ``1``/``0`` too). Codes of a fixed
  list (``possible``, ``routes``, ``status``, ``visibility``, roles...): the full name
  (``POSSIBILITY_YES``) or its end (``yes``), in any case.
- A list of codes or words: the items separated by ``;`` in one cell (``ka; en``).
- Texts in several languages (``display_names``, ``names``, ``notes``...): one per line of
  the cell, ``language: text`` (``en: Ministry of Justice``).
- ``channels``: one per line, ``kind: address`` (``email: mla@moj.ge.example``).
- ``postal_code_ranges``: ``first..last`` items separated by ``;`` (``0100..0199; 6000``).
- The fields that do not flatten (``competences``, ``coverage.municipalities``,
  ``executing_by_subdivision``, ``transmission_keys``) hold a JSON list of objects with the
  YAML field names; any list cell may hold a JSON list instead of the forms above, and the
  export writes one where a value would not survive them (a text spanning lines, a ``;``
  inside an item).
- ``effective.from`` / ``effective.until``: a date (00:00 UTC) or an RFC 3339 time.
- References to a record of the same member: its id (``pgo``) or its full name.
- Cells are trimmed, empty cells and empty rows are ignored, and every row must have as many
  cells as the header has columns.

CSV files may be UTF-8 (with or without BOM), UTF-16 with BOM, Windows-1252/Latin-1 or
Windows-1251 (detected with charset-normalizer), separated by ``,``, ``;`` or tabs (detected
from the header). Exporting the current records and publishing the export changes nothing.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from functools import cache
from pathlib import Path
from typing import Any

import charset_normalizer
import openpyxl  # type: ignore[import-untyped]
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from counterpart.v1 import records_pb2
from counterpart_core.diff import diff_records
from counterpart_core.errors import ValidationError, quote
from counterpart_core.names import SUBDIVISION_RE
from counterpart_core.records import (
    REFERENCES,
    SECTIONS,
    LoadedFiles,
    Record,
    build_record,
    effective_to_wire,
    expand_references,
    short_reference,
)
from counterpart_core.timeutil import from_timestamp
from counterpart_core.vocab import Vocabulary

KINDS = tuple(SECTIONS)  # authorities, contacts, rules, treaties, places: sheet and CSV file names
_SINGULAR = {"authority": "authorities", "contact": "contacts", "rule": "rules", "treaty": "treaties", "place": "places"}
LIST_SEPARATOR = ";"
CSV_DELIMITERS = ",;\t"
CSV_ENCODINGS = ("cp1252", "cp1251", "latin_1")  # tried, after UTF-8, by charset-normalizer
_TRUE = {"yes", "y", "true", "1"}
_FALSE = {"no", "n", "false", "0"}

# the forms a column's cells take
SCALAR, BOOL, NUMBER, ENUM, LIST, TEXTS, CHANNELS, RANGES, COMPETENCES, MUNICIPALITIES, JSON = (
    "scalar", "bool", "number", "enum", "list", "texts", "channels", "ranges", "competences", "municipalities", "json",
)
INSTANT = "instant"  # effective.from / effective.until: a date (00:00 UTC) or an RFC 3339 time
_PERIOD_COLUMNS = (("from", "start_time"), ("until", "end_time"))
_LINE_FORMS = {
    "counterpart.v1.LocalizedText": TEXTS, "counterpart.v1.Channel": CHANNELS,
    "counterpart.v1.PostalCodeRange": RANGES, "counterpart.v1.Competence": COMPETENCES,
    "counterpart.v1.Municipality": MUNICIPALITIES,
}
_LANG_LINE_RE = re.compile(r"^([A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*)\s*:[ \t]?(.*)$", re.DOTALL)
_CHANNEL_LINE_RE = re.compile(r"^([a-z0-9][a-z0-9.-]*)\s*:[ \t]?(.*)$", re.DOTALL)
_RANGE_RE = re.compile(r"^(.*?)\s*\.\.\s*(.*)$")
_JSON_EXAMPLES = {
    "executing_by_subdivision": '[{"subdivisions": ["GE-AJ"], "authority": "members/GE/authorities/ajara-po"}]',
    "transmission_keys": '[{"kind": "openpgp", "fingerprint": "…", "uri": "https://…"}]',
}


class SheetError(ValidationError):
    """A spreadsheet problem, located by file, sheet, row and column."""

    def __init__(
        self, message: str, *, reason: str, file: str, sheet: str = "", row: int = 0, column: str = "",
        record: str = "", detail: str = "",
    ) -> None:
        super().__init__(message, reason=reason, file=file, record=record, field=column)
        parts = [f"file {file}"]
        if sheet:
            parts.append(f"sheet {sheet}")
        if row:
            parts.append(f"row {row}" + (f" ({record})" if record else ""))
        elif record:
            parts.append(f"record {record}")
        if column:
            parts.append(f"column {column}" + (f" ({detail})" if detail and detail != column else ""))
        self.message = f"{', '.join(parts)}: {message}"
        self.args = (self.message,)
        self.metadata.update({k: v for k, v in (("sheet", sheet), ("row", str(row) if row else ""),
                                                ("column", column)) if v})


class ExportError(ValidationError):
    """A record that a spreadsheet cannot hold exactly."""


# --- the layout ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str  # the header: a field path such as "coverage.subdivisions"
    fields: tuple[Any, ...]  # FieldDescriptors, from the record down to the value; () for member and id
    form: str

    @property
    def nested(self) -> bool:
        return len(self.fields) > 1


@cache
def columns(kind: str) -> tuple[Column, ...]:
    """Every column of a kind's sheet, in the order the export writes them."""
    _, cls, id_key = SECTIONS[kind]
    desc: Any = cls.DESCRIPTOR
    out = [Column("member", (), "member")]
    out.append(Column("id", (), "id") if id_key == "id" else Column(id_key, (desc.fields_by_name[id_key],), SCALAR))
    _walk(desc, (), "", out, skip={"name", id_key})
    return tuple(out)


def _walk(desc: Any, parents: tuple[Any, ...], prefix: str, out: list[Column], skip: set[str]) -> None:
    for fd in desc.fields:
        if not parents and fd.name in skip:
            continue
        path, chain = f"{prefix}{fd.name}", (*parents, fd)
        if fd.is_repeated:
            if fd.message_type is None:
                out.append(Column(path, chain, LIST))
            else:
                out.append(Column(path, chain, _LINE_FORMS.get(fd.message_type.full_name, JSON)))
        elif fd.message_type is not None and fd.message_type.full_name == "counterpart.v1.EffectivePeriod":
            for column, field_name in _PERIOD_COLUMNS:  # the words of member files, not the wire's
                out.append(Column(f"{path}.{column}", (*chain, fd.message_type.fields_by_name[field_name]), INSTANT))
        elif fd.message_type is not None:
            _walk(fd.message_type, chain, f"{path}.", out, skip)
        elif fd.type == FieldDescriptor.TYPE_BOOL:
            out.append(Column(path, chain, BOOL))
        elif fd.type == FieldDescriptor.TYPE_ENUM:
            out.append(Column(path, chain, ENUM))
        elif fd.cpp_type in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64,
                             FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64):
            out.append(Column(path, chain, NUMBER))
        else:
            out.append(Column(path, chain, SCALAR))


def layout() -> dict[str, list[str]]:
    """Per kind, its column names (for documentation and `export`)."""
    return {kind: [c.name for c in columns(kind)] for kind in KINDS}


def kind_of_record(record: Message) -> str:
    for kind, (_, cls, _) in SECTIONS.items():
        if isinstance(record, cls):
            return kind
    raise TypeError(type(record).__name__)


# --- cells to values ---------------------------------------------------------------------------


def _enum_prefix(enum: Any) -> str:
    unspecified = [v.name for v in enum.values if v.number == 0]
    return unspecified[0][: -len("UNSPECIFIED")] if unspecified and unspecified[0].endswith("UNSPECIFIED") else ""


def _enum_name(enum: Any, text: str) -> str:
    wanted = text.strip().upper().replace("-", "_").replace(" ", "_")
    prefix = _enum_prefix(enum)
    for candidate in (wanted, prefix + wanted):
        if candidate in enum.values_by_name:
            return candidate
    allowed = [v.name[len(prefix):].lower() for v in enum.values if v.number != 0]
    raise ValueError(f"{quote(text.strip())} is not one of: {', '.join(allowed)} (or the full name, e.g. {prefix}{allowed[0].upper()})")


def _json_list(text: str, what: str) -> list[Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"the cell starts with '[' but is not valid JSON ({e.msg} at character {e.pos + 1}); {what}") from e
    if not isinstance(value, list):
        raise ValueError(f"expected a JSON list; {what}")  # noqa: TRY004 - reported as a bad cell
    return value


def _split_items(text: str) -> list[str]:
    return [item.strip() for item in re.split(r"[;\n]", text) if item.strip()]


def _lines(text: str) -> list[str]:
    return [line for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if line.strip()]


def decode_cell(col: Column, cell: str) -> Any | None:
    """The value of one cell for ParseDict, None for an empty cell; ValueError says what is wrong."""
    text = cell.strip()
    if not text:
        return None
    fd = col.fields[-1] if col.fields else None
    if col.form in (SCALAR, "id", INSTANT):
        return text
    if col.form == BOOL:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{quote(text)} is not yes or no")
    if col.form == NUMBER:
        if not re.fullmatch(r"\d+", text):
            raise ValueError(f"{quote(text)} is not a whole number")
        return int(text)
    if col.form == ENUM:
        assert fd is not None and fd.enum_type is not None
        return _enum_name(fd.enum_type, text)
    if col.form == LIST:
        assert fd is not None
        items: list[Any] | None = None
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                parsed = None
            if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed):
                items = parsed
        if items is None:
            items = _split_items(text)
        if fd.enum_type is not None:
            return [_enum_name(fd.enum_type, x) for x in items]
        return items
    if text.startswith("["):
        example = _JSON_EXAMPLES.get(col.name, '[{"language": "en", "text": "…"}]')
        items = _json_list(text, f"e.g. {example}")
        if not all(isinstance(x, dict) for x in items):
            raise ValueError(f"every item of the JSON list must be an object, e.g. {example}")
        return items
    lines = _lines(cell)
    try:
        if col.form == TEXTS:
            return [_localized(line) for line in lines]
        if col.form == CHANNELS:
            return [_channel(line) for line in lines]
        if col.form == COMPETENCES:
            return [_competence(line) for line in lines]
        if col.form == MUNICIPALITIES:
            return [_municipality(line) for line in lines]
    except _LineProblem as p:
        number = lines.index(p.line) + 1
        raise ValueError(f"line {number} {quote(p.line.strip())}: {p}") from p
    if col.form == RANGES:
        out = []
        for item in _split_items(text):
            m = _RANGE_RE.match(item)
            first, last = (m.group(1), m.group(2)) if m else (item, item)
            out.append({"first": first, "last": last})
        return out
    raise ValueError(
        f"this column holds a JSON list, e.g. {_JSON_EXAMPLES.get(col.name, '[{...}]')}"
    )


class _LineProblem(ValueError):
    def __init__(self, line: str, message: str) -> None:
        super().__init__(message)
        self.line = line


def _localized(line: str, whole: str | None = None) -> dict[str, str]:
    m = _LANG_LINE_RE.match(line)
    if not m:
        raise _LineProblem(whole or line, "expected 'language: text' (e.g. 'en: Ministry of Justice')")
    return {"language": m.group(1), "text": m.group(2)}


def _channel(line: str) -> dict[str, str]:
    m = _CHANNEL_LINE_RE.match(line.strip())
    if not m:
        raise _LineProblem(line, "expected 'kind: address' (e.g. 'email: mla@moj.ge.example')")
    return {"kind": m.group(1), "address": m.group(2)}


def _competence(line: str) -> dict[str, Any]:
    """``receives, issues: mla.general; extradition | offences: corruption | stages: trial``"""
    first, *rest = line.split("|")
    roles, sep, types = first.partition(":")
    if not sep:
        raise _LineProblem(line, "expected 'roles: request types' (e.g. 'receives, executes: mla.general; extradition')")
    role_enum = records_pb2.Competence.DESCRIPTOR.fields_by_name["roles"].enum_type
    stage_enum = records_pb2.Competence.DESCRIPTOR.fields_by_name["stages"].enum_type
    try:
        out: dict[str, Any] = {
            "roles": [_enum_name(role_enum, r) for r in roles.split(",") if r.strip()],
            "request_types": _split_items(types),
        }
        for segment in rest:
            label, sep, items = segment.partition(":")
            label = label.strip().lower()
            if not sep or label not in ("offences", "offence_categories", "stages"):
                raise _LineProblem(line, f"after '|' comes 'offences: ...' or 'stages: ...', not {quote(segment.strip())}")
            if label == "stages":
                out["stages"] = [_enum_name(stage_enum, x) for x in _split_items(items)]
            else:
                out["offence_categories"] = _split_items(items)
    except _LineProblem:
        raise
    except ValueError as e:
        raise _LineProblem(line, str(e)) from e
    return out


def _municipality(line: str) -> dict[str, Any]:
    """``GE-AJ | ka: ბათუმი | en: Batumi`` (the subdivision first, if any)."""
    segments = [segment.strip() for segment in line.split("|")]
    out: dict[str, Any] = {}
    if segments and SUBDIVISION_RE.match(segments[0]):
        out["subdivision"] = segments.pop(0)
    out["names"] = [_localized(segment, line) for segment in segments if segment]
    return out


def row_to_raw(cols: Sequence[Column], cells: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """The mapping a YAML record would give (without member), and the raw member cells.

    Raises (column, ValueError) pairs as _CellProblem."""
    raw: dict[str, Any] = {}
    members: list[str] = []
    for col, cell in zip(cols, cells, strict=True):
        if col.form == "member":
            members.append(cell.strip())
            continue
        try:
            value = decode_cell(col, cell)
        except ValueError as e:
            raise _CellProblem(col, str(e)) from e
        if value is None:
            continue
        if col.form == "id":
            raw["id"] = value
            continue
        target = raw
        for parent in col.fields[:-1]:
            target = target.setdefault(parent.name, {})
        target[col.name.rsplit(".", 1)[1] if col.form == INSTANT else col.fields[-1].name] = value
    return raw, members


class _CellProblem(Exception):
    def __init__(self, column: Column, message: str) -> None:
        super().__init__(message)
        self.column = column
        self.message = message


# --- values to cells -----------------------------------------------------------------------------


def _dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _json_cell(items: Iterable[Any]) -> str:
    return json.dumps(list(items), ensure_ascii=False)


def encode_cell(col: Column, record: Message, member: str) -> str:
    """One cell of a record's row (the inverse of decode_cell)."""
    holder = record
    for parent in col.fields[:-1]:
        if not holder.HasField(parent.name):
            return ""
        holder = getattr(holder, parent.name)
    fd = col.fields[-1]
    value = getattr(holder, fd.name)
    if col.form == INSTANT:
        if not holder.HasField(fd.name):
            return ""
        at = from_timestamp(value)
        return at.strftime("%Y-%m-%d" if at.time() == time(0) else "%Y-%m-%dT%H:%M:%SZ")
    if col.form == SCALAR:
        refs = REFERENCES[type(record)] if not col.nested else {}
        return short_reference(value, member, refs[fd.name]) if fd.name in refs else str(value)
    if col.form == BOOL:
        return "yes" if value else "no"
    if col.form == NUMBER:
        return str(value) if value or col.nested else ""
    if col.form == ENUM:
        return fd.enum_type.values_by_number[value].name if value or col.nested else ""
    items = list(value)
    if not items:
        return ""
    if col.form == LIST:
        names = [fd.enum_type.values_by_number[x].name for x in items] if fd.enum_type is not None else items
        simple = f"{LIST_SEPARATOR} ".join(names)
        return simple if decode_cell(col, simple) == names else _json_cell(names)
    lines = _simple_form(col.form, items)
    if lines is not None and _reads_back(col, lines, items):
        return lines
    return _json_cell(_dict(x) for x in items)


def _short(enum: Any, number: int) -> str:
    return str(enum.values_by_number[number].name)[len(_enum_prefix(enum)):].lower().replace("_", "-")


def _simple_form(form: str, items: list[Any]) -> str | None:
    """A list of messages in its line form (None: the column has none)."""
    if form == TEXTS:
        return "\n".join(f"{x.language}: {x.text}" for x in items)
    if form == CHANNELS:
        return "\n".join(f"{x.kind}: {x.address}" for x in items)
    if form == RANGES:
        return f"{LIST_SEPARATOR} ".join(f"{x.first}..{x.last}" for x in items)
    if form == COMPETENCES:
        roles = records_pb2.Competence.DESCRIPTOR.fields_by_name["roles"].enum_type
        stages = records_pb2.Competence.DESCRIPTOR.fields_by_name["stages"].enum_type
        lines = []
        for x in items:
            line = f"{', '.join(_short(roles, r) for r in x.roles)}: {'; '.join(x.request_types)}"
            if x.offence_categories:
                line += f" | offences: {'; '.join(x.offence_categories)}"
            if x.stages:
                line += f" | stages: {'; '.join(_short(stages, st) for st in x.stages)}"
            lines.append(line)
        return "\n".join(lines)
    if form == MUNICIPALITIES:
        return "\n".join(
            " | ".join(([x.subdivision] if x.subdivision else []) + [f"{n.language}: {n.text}" for n in x.names])
            for x in items
        )
    return None


def _reads_back(col: Column, cell: str, items: list[Any]) -> bool:
    """Whether a cell decodes to exactly these messages."""
    try:
        decoded = decode_cell(col, cell)
        if not isinstance(decoded, list) or len(decoded) != len(items):
            return False
        back = [json_format.ParseDict(d, type(x)()) for d, x in zip(decoded, items, strict=True)]
    except (ValueError, json_format.ParseError):
        return False
    return all(a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
               for a, b in zip(back, items, strict=True))


def record_row(record: Record, member: str) -> list[str]:
    kind = kind_of_record(record)
    record_id = record.name.rsplit("/", 1)[-1]
    row = []
    for col in columns(kind):
        if col.form == "member":
            row.append(member)
        elif col.form == "id":
            row.append(record_id)
        else:
            row.append(encode_cell(col, record, member))
    return row


def _check_round_trip(record: Record, row: list[str], member: str) -> None:
    """Refuse to export a record its row would not give back exactly."""
    kind = kind_of_record(record)
    collection, cls, id_key = SECTIONS[kind]
    raw, _ = row_to_raw(columns(kind), row)
    record_id = raw.pop("id", None) if id_key == "id" else raw.get(id_key)
    expand_references(raw, member, cls)
    raw["name"] = f"members/{member}/{collection}/{record_id}"
    effective_to_wire(raw, "", raw["name"])
    back = cls()
    json_format.ParseDict(raw, back)
    if back.SerializeToString(deterministic=True) != record.SerializeToString(deterministic=True):
        fields = ", ".join(c.path for c in diff_records(record, back)) or "presence of an empty field"
        raise ExportError(
            f"a spreadsheet row cannot hold this record exactly ({fields}); keep it in YAML",
            reason="NOT_REPRESENTABLE", record=record.name,
        )


def rows_by_kind(records: Iterable[Record], member: str) -> dict[str, list[list[str]]]:
    """Per kind (every kind, even without records), the rows of its records, each checked to
    read back as exactly the same record."""
    out: dict[str, list[list[str]]] = {kind: [] for kind in KINDS}
    for record in records:
        row = record_row(record, member)
        _check_round_trip(record, row, member)
        out[kind_of_record(record)].append(row)
    return out


def _refuse_existing(paths: Iterable[Path], overwrite: bool) -> None:
    if overwrite:
        return
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise ValidationError(
            f"{', '.join(existing)} exist(s); refusing to overwrite (--force overwrites)", reason="FILE_EXISTS",
        )


def write_csv(records: Iterable[Record], member: str, out_dir: Path, overwrite: bool = False) -> list[Path]:
    """One UTF-8 CSV file (with BOM, so Excel reads it right) per kind: authorities.csv, ..."""
    tables = rows_by_kind(records, member)
    paths = [out_dir / f"{kind}.csv" for kind in KINDS]
    _refuse_existing(paths, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind, path in zip(KINDS, paths, strict=True):
        buf = io.StringIO(newline="")
        writer = csv.writer(buf)
        writer.writerow([c.name for c in columns(kind)])
        writer.writerows(tables[kind])
        path.write_text(buf.getvalue(), encoding="utf-8-sig", newline="")
    return paths


def write_xlsx(records: Iterable[Record], member: str, path: Path, overwrite: bool = False) -> Path:
    """One workbook, a sheet per kind; every cell is text (no number or date conversion)."""
    tables = rows_by_kind(records, member)
    _refuse_existing([path], overwrite)
    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    bold = openpyxl.styles.Font(bold=True)
    wrap = openpyxl.styles.Alignment(wrap_text=True, vertical="top")
    for kind in KINDS:
        ws = wb.create_sheet(kind)
        cols = columns(kind)
        for c, col in enumerate(cols, start=1):
            cell = ws.cell(row=1, column=c, value=col.name)
            cell.font = bold
            width = max([len(col.name)] + [min(60, max((len(x) for x in row[c - 1].split("\n")), default=0))
                                           for row in tables[kind]])
            ws.column_dimensions[openpyxl.utils.get_column_letter(c)].width = min(60, width + 2)
        for r, row in enumerate(tables[kind], start=2):
            for c, value in enumerate(row, start=1):
                if not value:
                    continue
                try:
                    cell = ws.cell(row=r, column=c, value=value)
                except openpyxl.utils.exceptions.IllegalCharacterError as e:
                    raise ExportError(
                        f"column {cols[c - 1].name} holds a control character XLSX cannot store; export as CSV",
                        reason="NOT_REPRESENTABLE", record=f"members/{member}/{kind}/{row[1]}",
                    ) from e
                cell.data_type = "s"  # text, even when it starts with '=' (never a formula)
                if "\n" in value:
                    cell.alignment = wrap
        ws.freeze_panes = "C2"
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return path


# --- reading tables ----------------------------------------------------------------------------


@dataclass
class Table:
    """One sheet or CSV file: its kind, header and data rows (1-based row numbers)."""

    file: str
    sheet: str  # "" for a CSV file
    kind: str
    header: list[str]
    rows: list[tuple[int, list[str]]] = field(default_factory=list)
    letters: bool = False  # name columns by letter too (XLSX)


def _error(table: Table, message: str, reason: str, row: int = 0, column: str = "", record: str = "",
           detail: str = "", index: int | None = None) -> SheetError:
    if column and index is not None and table.letters:
        column = f"{column} ({openpyxl.utils.get_column_letter(index + 1)})"
    return SheetError(message, reason=reason, file=table.file, sheet=table.sheet, row=row, column=column,
                      record=record, detail=detail)


def _kind_from_name(name: str) -> str | None:
    low = name.strip().lower()
    found = {kind for word, kind in [*((k, k) for k in KINDS), *_SINGULAR.items()]
             if re.search(rf"(^|[^a-z]){re.escape(word)}([^a-z]|$)", low)}
    return found.pop() if len(found) == 1 else None


def _kind_from_header(header: list[str]) -> str | None:
    """The kind whose columns the header names best (with its key column); None when unclear."""
    names = {h.strip() for h in header if h.strip()}
    if any(n.startswith("name:") for n in names):
        return "authorities"  # the authorities-only layout of earlier versions: its columns get explained
    score = {k: len(names & {c.name for c in columns(k)}) for k in KINDS if columns(k)[1].name in names}
    best = sorted(score.items(), key=lambda kv: -kv[1])
    if not best or (len(best) > 1 and best[0][1] == best[1][1]):
        return None
    return best[0][0]


def _resolve_header(table: Table) -> list[Column]:
    by_name = {c.name: c for c in columns(table.kind)}
    cols: list[Column] = []
    seen: set[str] = set()
    for i, raw in enumerate(table.header):
        name = raw.strip()
        if not name:
            raise _error(table, f"column {i + 1} of the header has no name", "UNKNOWN_COLUMN", row=1)
        if name in seen:
            raise _error(table, "appears twice in the header", "DUPLICATE_COLUMN", row=1, column=name, index=i)
        seen.add(name)
        col = by_name.get(name)
        if col is None:
            close = difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            if name.startswith("name:"):
                hint = ("; names are one column now, display_names, one 'language: text' per line "
                        "(`counterpart-node export` writes the current layout)")
            raise _error(
                table, f"unknown column for {table.kind}{hint} (columns: {', '.join(by_name)})", "UNKNOWN_COLUMN",
                row=1, column=quote(name), index=i,
            )
        cols.append(col)
    for required in columns(table.kind)[:2]:
        if required.name not in seen:
            raise _error(table, f"missing required column {required.name!r}", "MISSING_COLUMN", row=1)
    return cols


def _map_field(kind: str, cols: Sequence[Column], path: str) -> tuple[str, int | None]:
    """The column (and its index) a field path of a validation error lies in."""
    if path in ("name", "id"):
        path = columns(kind)[1].name
    plain = re.sub(r"\[\d+\]", "", path)
    best: tuple[str, int | None] = ("", None)
    for i, c in enumerate(cols):
        if (plain == c.name or plain.startswith(c.name + ".")) and len(c.name) > len(best[0]):
            best = (c.name, i)
    return best


def _bare_message(e: ValidationError) -> str:
    where = ", ".join(p for p in (f"file {e.file}" if e.file else "", f"record {e.record}" if e.record else "",
                                  f"field {e.field}" if e.field else "") if p)
    prefix = f"{where}: " if where else ""
    return e.message.removeprefix(prefix)


def table_records(table: Table, member: str, vocab: Vocabulary, loaded: LoadedFiles) -> None:
    """Every row of a table as a validated record, added to loaded; raise on the first problem."""
    collection, cls, id_key = SECTIONS[table.kind]
    loaded.collections.add(collection)
    cols = _resolve_header(table)
    for number, cells in table.rows:
        try:
            raw, members = row_to_raw(cols, cells)
        except _CellProblem as p:
            raise _error(table, p.message, "INVALID_CELL", row=number, column=p.column.name,
                         index=cols.index(p.column)) from p
        for value in members:
            if value != member:
                why = (f"records of member {value} cannot be published by the node of {member}" if value
                       else "missing member code")
                raise _error(table, why, "WRONG_MEMBER" if value else "MISSING_FIELD", row=number, column="member",
                             index=[c.form for c in cols].index("member"))
        where = f"{'sheet ' + table.sheet + ', ' if table.sheet else ''}row {number}"
        try:
            record = build_record(raw, member, collection, cls, id_key, vocab, table.file, f"row {number}", where)
        except ValidationError as e:
            column, index = _map_field(table.kind, cols, e.field)
            name = e.record if e.record.startswith("members/") else ""
            raise _error(table, _bare_message(e), e.reason, row=number, column=column or e.field, record=name,
                         detail=e.field, index=index) from e
        loaded.records.append(record)


# --- CSV ---------------------------------------------------------------------------------------


def decode_text(data: bytes, file: str) -> tuple[str, str]:
    """The text of a CSV file and the encoding it was read with."""
    if data.startswith(b"PK\x03\x04"):
        raise SheetError("this is an .xlsx workbook (a zip file), not CSV text: name it .xlsx",
                         reason="UNREADABLE_FILE", file=file)
    if data.startswith(b"\xef\xbb\xbf"):
        try:
            return data.decode("utf-8-sig"), "UTF-8 (BOM)"
        except UnicodeDecodeError as e:
            raise SheetError(f"starts with a UTF-8 mark but byte {e.start} is not UTF-8", reason="UNREADABLE_FILE",
                             file=file) from e
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "UTF-16"
        except UnicodeDecodeError as e:
            raise SheetError("starts with a UTF-16 mark but is not UTF-16 text", reason="UNREADABLE_FILE",
                             file=file) from e
    if b"\x00" in data:
        raise SheetError("not a text file (it holds NUL bytes): save the sheet as CSV (UTF-8)",
                         reason="UNREADABLE_FILE", file=file)
    try:
        return data.decode("utf-8"), "UTF-8"
    except UnicodeDecodeError:
        pass
    best = charset_normalizer.from_bytes(data, cp_isolation=list(CSV_ENCODINGS)).best()
    if best is None:
        raise SheetError(
            "cannot tell the text encoding (tried UTF-8, Windows-1252/Latin-1, Windows-1251): save it as CSV UTF-8",
            reason="UNREADABLE_FILE", file=file,
        )
    return str(best), {"cp1252": "Windows-1252", "cp1251": "Windows-1251", "latin_1": "Latin-1"}.get(
        best.encoding, best.encoding)


def detect_delimiter(text: str, file: str) -> str:
    """',' ';' or tab, from the header line (column names never hold one)."""
    header = text.split("\n", 1)[0]
    try:
        delimiter = csv.Sniffer().sniff(header, delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:
        counts = {d: header.count(d) for d in CSV_DELIMITERS}
        delimiter = max(counts, key=lambda d: counts[d])
        if not counts[delimiter]:
            raise SheetError(
                "cannot find the column separator in the header (row 1): separate columns with ',', ';' or a tab",
                reason="BROKEN_CSV", file=file, row=1,
            ) from None
    return delimiter


def read_csv(path: Path, notices: list[str] | None = None) -> Table:
    file = str(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SheetError(f"cannot read file: {e.strerror or e}", reason="UNREADABLE_FILE", file=file) from e
    text, encoding = decode_text(data, file)
    if not text.strip():
        raise SheetError("the file is empty (a header row is needed)", reason="MISSING_COLUMN", file=file)
    delimiter = detect_delimiter(text, file)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[list[str]] = []
    try:
        rows.extend(reader)
    except csv.Error as e:
        raise SheetError(f"broken CSV: {e}", reason="BROKEN_CSV", file=file, row=len(rows) + 1) from e
    header = rows[0]
    kind = _kind_from_name(path.stem) or _kind_from_header(header)
    if kind is None:
        raise SheetError(
            f"cannot tell which kind of records this file holds: name it after its kind ({', '.join(f'{k}.csv' for k in KINDS)})",
            reason="UNKNOWN_SHEET", file=file,
        )
    if notices is not None and (encoding not in ("UTF-8", "UTF-8 (BOM)") or delimiter != ","):
        sep = {",": "','", ";": "';'", "\t": "tab"}[delimiter]
        notices.append(f"read {file} as {encoding}, {sep}-separated")
    table = Table(file, "", kind, header)
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            what = "a cell too many" if len(row) > len(header) else "a cell missing"
            hint = f" (a value holding an unquoted {('tab' if delimiter == chr(9) else repr(delimiter))}?)" if len(row) > len(header) else ""
            raise SheetError(
                f"{what}: the row has {len(row)} cells, the header {len(header)} columns{hint}",
                reason="ROW_LENGTH", file=file, row=number,
            )
        table.rows.append((number, row))
    return table


def load_csv(path: Path, member: str, vocab: Vocabulary, loaded: LoadedFiles) -> None:
    table_records(read_csv(path, loaded.notices), member, vocab, loaded)


# --- XLSX --------------------------------------------------------------------------------------


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time(0) else value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    return str(value)


def read_xlsx(path: Path) -> list[Table]:
    file = str(path)
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError,
            openpyxl.utils.exceptions.InvalidFileException) as e:
        raise SheetError(f"not a readable .xlsx workbook ({type(e).__name__}: {str(e)[:120]})",
                         reason="UNREADABLE_FILE", file=file) from e
    tables: list[Table] = []
    try:
        for ws in wb.worksheets:
            kind = ws.title.strip().lower()
            kind = _SINGULAR.get(kind, kind)
            if kind not in KINDS:
                raise SheetError(
                    f"a sheet must be named after the kind of records it holds ({', '.join(KINDS)})",
                    reason="UNKNOWN_SHEET", file=file, sheet=repr(ws.title),
                )
            rows = [[_cell_text(v) for v in row] for row in ws.iter_rows(values_only=True)]
            if not rows or not any(c.strip() for c in rows[0]):
                if any(any(c.strip() for c in row) for row in rows):
                    raise SheetError("row 1 must be the header (the column names)", reason="MISSING_COLUMN",
                                     file=file, sheet=ws.title, row=1)
                tables.append(Table(file, ws.title, kind, ["member", columns(kind)[1].name], letters=True))
                continue
            header = rows[0]
            while header and not header[-1].strip():
                header = header[:-1]
            table = Table(file, ws.title, kind, header, letters=True)
            for number, row in enumerate(rows[1:], start=2):
                extra = [i for i, c in enumerate(row) if i >= len(header) and c.strip()]
                if extra:
                    letter = openpyxl.utils.get_column_letter(extra[0] + 1)
                    raise SheetError(f"a value beyond the last column of the header ({len(header)} columns)",
                                     reason="ROW_LENGTH", file=file, sheet=ws.title, row=number, column=letter)
                cells = (row + [""] * len(header))[: len(header)]
                if any(c.strip() for c in cells):
                    table.rows.append((number, cells))
            tables.append(table)
    finally:
        wb.close()
    return tables


def load_xlsx(path: Path, member: str, vocab: Vocabulary, loaded: LoadedFiles) -> None:
    for table in read_xlsx(path):
        table_records(table, member, vocab, loaded)
