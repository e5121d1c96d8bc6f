"""Loading and validating a member's records from YAML and CSV files (DESIGN §2, §7).

Everything here is pure apart from reading the given files: it turns files into
validated protobuf records or raises ValidationError naming the file, the record
and the field. Nothing is stored until every record of every file is valid.
"""

from __future__ import annotations

import csv
import io
import re
import zoneinfo
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from counterpart.v1 import records_pb2
from directory_server.domain.errors import InvalidArgumentError, ValidationError
from directory_server.domain.names import ID_RE, MEMBER_RE, RecordName, parse_record_name
from directory_server.domain.vocab import Vocabulary

Record = records_pb2.Authority | records_pb2.Contact | records_pb2.Rule | records_pb2.Treaty | records_pb2.Place

MAX_TEXT = 2000  # characters in any one string value
MAX_ITEMS = 500  # items in any one list

SECTIONS: dict[str, tuple[str, type[Message], str]] = {
    # section -> (collection, message class, key that gives the record id)
    "authorities": ("authorities", records_pb2.Authority, "id"),
    "contacts": ("contacts", records_pb2.Contact, "id"),
    "rules": ("rules", records_pb2.Rule, "request_type"),
    "treaties": ("treaties", records_pb2.Treaty, "instrument"),
    "places": ("places", records_pb2.Place, "id"),
}

# Reference fields that accept a short id of a record of the same member.
_REFERENCES: dict[type[Message], dict[str, str]] = {
    records_pb2.Authority: {"parent": "authorities"},
    records_pb2.Contact: {"authority": "authorities"},
    records_pb2.Rule: {
        "receiving_authority": "authorities",
        "executing_authority": "authorities",
        "consultation_contact": "contacts",
    },
    records_pb2.Treaty: {"central_authority": "authorities"},
    records_pb2.Place: {},
}

_LANG_RE = re.compile(r"^[a-zA-Z]{2,3}(?:-[a-zA-Z0-9]{1,8})*$")
_SUBDIVISION_RE = re.compile(r"^([A-Z]{2})-[A-Z0-9]{1,3}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_PARTIAL_DATE_RE = re.compile(r"^\d{4}(?:-\d{2}(?:-\d{2})?)?$")


@dataclass(frozen=True)
class SourcedRecord:
    """A validated record and where it came from (for error messages and diffs)."""

    name: str
    record: Record
    file: str


def record_kind(record: Message) -> str:
    return {
        records_pb2.Authority: "authority",
        records_pb2.Contact: "contact",
        records_pb2.Rule: "rule",
        records_pb2.Treaty: "treaty",
        records_pb2.Place: "place",
    }[type(record)]


# --- reading files -------------------------------------------------------------------------


def iter_record_files(path: Path) -> list[Path]:
    """One file, or every *.yaml / *.yml / *.csv below a folder, in a stable order."""
    if not path.exists():
        raise InvalidArgumentError(f"{path} does not exist", reason="PATH_NOT_FOUND")
    if path.is_file():
        return [path]
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".yaml", ".yml", ".csv")
    )
    if not files:
        raise InvalidArgumentError(
            f"{path} holds no .yaml, .yml or .csv files", reason="NO_RECORD_FILES"
        )
    return files


def load_records(path: Path, member: str, vocab: Vocabulary) -> list[SourcedRecord]:
    """Load and validate every record under path for member; raise on the first problem.

    Checks each record alone (schema, codes, sizes), then the set as a whole
    (duplicate names, references to records that do not exist).
    """
    out: list[SourcedRecord] = []
    for f in iter_record_files(path):
        if f.suffix.lower() == ".csv":
            out.extend(_load_csv(f, member, vocab))
        else:
            out.extend(_load_yaml(f, member, vocab))
    check_record_set(out)
    return out


def _load_yaml(path: Path, member: str, vocab: Vocabulary) -> Iterator[SourcedRecord]:
    file = str(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ValidationError(f"broken YAML{where}: {problem}", reason="BROKEN_YAML", file=file) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ValidationError(f"cannot read file: {e}", reason="UNREADABLE_FILE", file=file) from e
    if doc is None:
        return
    if not isinstance(doc, dict):
        raise ValidationError(
            "the file must be a mapping with 'member' and record lists "
            f"({', '.join(SECTIONS)})",
            reason="BAD_FILE_SHAPE",
            file=file,
        )
    _check_file_member(doc.get("member"), member, file)
    unknown = sorted(set(doc) - set(SECTIONS) - {"member"})
    if unknown:
        raise ValidationError(
            f"unknown section(s) {', '.join(map(repr, unknown))}; expected {', '.join(SECTIONS)}",
            reason="UNKNOWN_SECTION",
            file=file,
        )
    for section, (collection, cls, id_key) in SECTIONS.items():
        items = doc.get(section)
        if items is None:
            continue
        if not isinstance(items, list):
            raise ValidationError(
                f"section '{section}' must be a list of records", reason="WRONG_TYPE", file=file, field=section
            )
        for index, raw in enumerate(items):
            label = f"{section}[{index}]"
            if not isinstance(raw, dict):
                raise ValidationError(
                    "a record must be a mapping of fields", reason="WRONG_TYPE", file=file, record=label
                )
            yield build_record(dict(raw), member, collection, cls, id_key, vocab, file, label)


def _check_file_member(value: Any, member: str, file: str) -> None:
    if value is None:
        raise ValidationError("missing required field 'member'", reason="MISSING_FIELD", file=file, field="member")
    if not isinstance(value, str) or not MEMBER_RE.match(value):
        raise ValidationError(
            f"member code {value!r} is malformed: expected an upper-case code such as 'GE'",
            reason="INVALID_MEMBER_CODE",
            file=file,
            field="member",
        )
    if value != member:
        raise ValidationError(
            f"records of member {value} cannot be published by the node of {member}",
            reason="WRONG_MEMBER",
            file=file,
            field="member",
        )


def build_record(
    raw: dict[str, Any],
    member: str,
    collection: str,
    cls: type[Message],
    id_key: str,
    vocab: Vocabulary,
    file: str,
    label: str,
) -> SourcedRecord:
    """Turn one mapping from a file into a validated record."""
    record_id = raw.pop("id", None) if id_key == "id" else raw.get(id_key)
    given_name = raw.pop("name", None)
    if record_id is None and given_name is None:
        raise ValidationError(
            f"missing required field '{id_key}'", reason="MISSING_FIELD", file=file, record=label, field=id_key
        )
    if record_id is not None and not isinstance(record_id, str):
        raise ValidationError(
            f"'{id_key}' must be a string, got {type(record_id).__name__}",
            reason="WRONG_TYPE",
            file=file,
            record=label,
            field=id_key,
        )
    if record_id is not None and not ID_RE.match(record_id):
        raise ValidationError(
            f"record id {record_id!r} is malformed: lower-case letters, digits, '-' and '.', "
            "at most 63 characters",
            reason="INVALID_NAME",
            file=file,
            record=label,
            field=id_key,
        )
    name = f"members/{member}/{collection}/{record_id}" if record_id is not None else str(given_name)
    if given_name is not None and str(given_name) != name:
        raise ValidationError(
            f"name {given_name!r} does not match {id_key} {record_id!r}",
            reason="INVALID_NAME",
            file=file,
            record=label,
            field="name",
        )
    try:
        parsed = parse_record_name(name, collection)
    except InvalidArgumentError as e:
        raise ValidationError(e.message, reason="INVALID_NAME", file=file, record=label, field="name") from e
    if parsed.member != member:
        raise ValidationError(
            f"{name} belongs to member {parsed.member}, not {member}",
            reason="WRONG_MEMBER",
            file=file,
            record=name,
            field="name",
        )
    for fld, target in _REFERENCES[cls].items():
        value = raw.get(fld)
        if isinstance(value, str) and value and "/" not in value:
            raw[fld] = f"members/{member}/{target}/{value}"
    raw["name"] = name
    record = cls()
    try:
        json_format.ParseDict(raw, record)
    except json_format.ParseError as e:
        raise ValidationError(
            _describe_parse_error(str(e)), reason="SCHEMA_VIOLATION", file=file, record=name,
            field=_field_of_parse_error(str(e)),
        ) from e
    validate_record(record, parsed, vocab, file=file)  # type: ignore[arg-type]
    return SourcedRecord(name, record, file)  # type: ignore[arg-type]


def _field_of_parse_error(text: str) -> str:
    fields = re.findall(r'(?:Failed to parse|no field named) "?(\w+)"?', text)
    return ".".join(fields)


def _describe_parse_error(text: str) -> str:
    text = text.replace('Message type "counterpart.v1.', 'record type "')
    if "has no field named" in text:
        return re.sub(r'\s+at\s+"[^"]*"\.?.*$', "", text).replace(" Available Fields(except extensions):", "") + " (unknown field)"
    return "wrong type or value: " + text


# --- CSV -----------------------------------------------------------------------------------

CSV_LIST_SEPARATOR = ";"
CSV_COLUMNS = {
    "member", "id", "kind", "parent", "locality", "subdivision", "postal_code", "national",
    "subdivisions", "request_types", "roles", "offence_categories", "languages", "email",
    "website", "review_date", "note",
}


def _load_csv(path: Path, member: str, vocab: Vocabulary) -> Iterator[SourcedRecord]:
    """Authorities from the spreadsheet layout national administrators keep.

    One row per authority. Names go in columns ``name:<language>`` (``name:ka``, ``name:en``);
    lists are separated by ';'; ``national`` is yes/no; ``roles`` are receives/executes/issues.
    """
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ValidationError(f"cannot read file: {e}", reason="UNREADABLE_FILE", file=file) from e
    reader = csv.DictReader(io.StringIO(text))
    headers = reader.fieldnames or []
    unknown = [h for h in headers if h not in CSV_COLUMNS and not h.startswith("name:")]
    if unknown:
        raise ValidationError(
            f"unknown column(s) {', '.join(map(repr, unknown))}", reason="UNKNOWN_COLUMN", file=file
        )
    for field_name in ("member", "id", "kind"):
        if field_name not in headers:
            raise ValidationError(
                f"missing required column '{field_name}'", reason="MISSING_FIELD", file=file, field=field_name
            )
    for row_number, row in enumerate(reader, start=2):
        label = f"row {row_number}"
        _check_file_member(row.get("member") or None, member, file)

        def split(col: str, row: dict[str, str | None] = row) -> list[str]:
            return [v.strip() for v in (row.get(col) or "").split(CSV_LIST_SEPARATOR) if v.strip()]

        national = (row.get("national") or "").strip().lower()
        if national not in ("", "yes", "no", "true", "false"):
            raise ValidationError(
                f"'national' must be yes or no, got {national!r}", reason="WRONG_TYPE", file=file,
                record=label, field="national",
            )
        raw: dict[str, Any] = {
            "id": (row.get("id") or "").strip(),
            "display_names": [
                {"language": h.split(":", 1)[1], "text": v.strip()}
                for h, v in row.items()
                if h and h.startswith("name:") and v and v.strip()
            ],
            "kind": (row.get("kind") or "").strip(),
            "coverage": {"national": national in ("yes", "true"), "subdivisions": split("subdivisions")},
            "languages": split("languages"),
        }
        roles = [f"COMPETENCE_ROLE_{r.upper()}" for r in split("roles")]
        if split("request_types") or roles:
            raw["competences"] = [
                {"request_types": split("request_types"), "roles": roles,
                 "offence_categories": split("offence_categories")}
            ]
        address = {k: (row.get(k) or "").strip() for k in ("locality", "subdivision", "postal_code")}
        if any(address.values()):
            raw["address"] = {**address, "country": member if len(member) == 2 else ""}
        for col in ("parent", "website", "review_date"):
            if (row.get(col) or "").strip():
                raw[col] = row[col].strip()
        if (row.get("email") or "").strip():
            raw["channels"] = [{"kind": "email", "address": row["email"].strip()}]
        if (row.get("note") or "").strip():
            raw["notes"] = [{"language": "en", "text": row["note"].strip()}]
        yield build_record(raw, member, "authorities", records_pb2.Authority, "id", vocab, file, label)


# --- validation of one record --------------------------------------------------------------


class _Checker:
    def __init__(self, name: RecordName, vocab: Vocabulary, file: str) -> None:
        self.name = name
        self.vocab = vocab
        self.file = file

    def fail(self, field: str, message: str, reason: str) -> None:
        raise ValidationError(message, reason=reason, file=self.file, record=str(self.name), field=field)

    def required(self, field: str, present: bool) -> None:
        if not present:
            self.fail(field, f"missing required field '{field}'", "MISSING_FIELD")

    def code(self, field: str, value: str, vocabulary: str) -> None:
        allowed: frozenset[str] | dict[str, Any] = getattr(self.vocab, vocabulary)
        if value not in allowed:
            self.fail(
                field,
                f"unknown {vocabulary.replace('_', ' ').rstrip('s')} code {value!r} "
                f"(not in the federation's vocabulary){self.vocab.hint(vocabulary, value)}",
                "UNKNOWN_CODE",
            )

    def language(self, field: str, tag: str) -> None:
        if not _LANG_RE.match(tag):
            self.fail(field, f"{tag!r} is not a BCP 47 language tag (e.g. 'ka', 'sr-Latn')", "INVALID_LANGUAGE")

    def subdivision(self, field: str, code: str) -> None:
        m = _SUBDIVISION_RE.match(code)
        if not m:
            self.fail(field, f"{code!r} is not an ISO 3166-2 code (e.g. 'GE-AJ')", "INVALID_SUBDIVISION")
        elif len(self.name.member) == 2 and m.group(1) != self.name.member:
            self.fail(field, f"subdivision {code} is not in {self.name.member}", "INVALID_SUBDIVISION")

    def postal_range(self, field: str, first: str, last: str) -> None:
        if not first or len(first) != len(last) or first > last:
            self.fail(field, f"range {first!r}..{last!r} must have first <= last and equal lengths", "INVALID_POSTAL_RANGE")

    def reference(self, field: str, value: str, collection: str) -> None:
        if not value:
            return
        try:
            ref = parse_record_name(value, collection)
        except InvalidArgumentError as e:
            self.fail(field, e.message, "INVALID_REFERENCE")
            return
        if ref.member != self.name.member:
            self.fail(field, f"{value} belongs to another member", "INVALID_REFERENCE")

    def iso_date(self, field: str, value: str, partial: bool = False) -> None:
        if not value:
            return
        ok = bool(_PARTIAL_DATE_RE.match(value)) if partial else len(value) == 10
        if ok:
            parts = value.split("-")
            try:
                date(int(parts[0]), int(parts[1]) if len(parts) > 1 else 1, int(parts[2]) if len(parts) > 2 else 1)
            except ValueError:
                ok = False
        if not ok:
            form = "YYYY, YYYY-MM or YYYY-MM-DD" if partial else "YYYY-MM-DD"
            self.fail(field, f"{value!r} is not a date of the form {form}", "INVALID_DATE")

    def email(self, field: str, value: str) -> None:
        if value and not _EMAIL_RE.match(value):
            self.fail(field, f"{value!r} is not an e-mail address", "INVALID_EMAIL")

    def phone(self, field: str, value: str) -> None:
        if value and not _PHONE_RE.match(value):
            self.fail(field, f"{value!r} is not a phone number in E.164 form (+995...)", "INVALID_PHONE")

    def localized(self, field: str, texts: Iterable[records_pb2.LocalizedText]) -> None:
        for i, t in enumerate(texts):
            self.language(f"{field}[{i}].language", t.language)
            if not t.text.strip():
                self.fail(f"{field}[{i}].text", "text is empty", "MISSING_FIELD")


def _walk_sizes(msg: Message, prefix: str, fail: Any) -> None:
    """Refuse oversized strings and lists anywhere in a record."""
    for fd, value in msg.ListFields():
        path = f"{prefix}{fd.name}"
        if fd.is_repeated:
            if len(value) > MAX_ITEMS:
                fail(path, f"has {len(value)} items; at most {MAX_ITEMS} are allowed", "VALUE_TOO_LARGE")
            for i, item in enumerate(value):
                if isinstance(item, Message):
                    _walk_sizes(item, f"{path}[{i}].", fail)
                elif isinstance(item, str) and len(item) > MAX_TEXT:
                    fail(f"{path}[{i}]", f"is {len(item)} characters long; at most {MAX_TEXT} are allowed", "VALUE_TOO_LARGE")
        elif isinstance(value, Message):
            _walk_sizes(value, f"{path}.", fail)
        elif isinstance(value, str) and len(value) > MAX_TEXT:
            fail(path, f"is {len(value)} characters long; at most {MAX_TEXT} are allowed", "VALUE_TOO_LARGE")


def validate_record(record: Record, name: RecordName, vocab: Vocabulary, file: str = "") -> None:
    """Check one record against the schema rules and the vocabularies."""
    c = _Checker(name, vocab, file)
    _walk_sizes(record, "", c.fail)
    if isinstance(record, records_pb2.Authority):
        c.required("display_names", len(record.display_names) > 0)
        c.localized("display_names", record.display_names)
        c.required("kind", bool(record.kind))
        c.code("kind", record.kind, "authority_kinds")
        c.reference("parent", record.parent, "authorities")
        if record.parent == str(name):
            c.fail("parent", "an authority cannot be its own parent", "INVALID_REFERENCE")
        cov = record.coverage
        c.required(
            "coverage",
            cov.national or bool(cov.subdivisions) or bool(cov.municipalities) or bool(cov.postal_code_ranges),
        )
        for i, s in enumerate(cov.subdivisions):
            c.subdivision(f"coverage.subdivisions[{i}]", s)
        for i, mun in enumerate(cov.municipalities):
            c.required(f"coverage.municipalities[{i}].names", len(mun.names) > 0)
            c.localized(f"coverage.municipalities[{i}].names", mun.names)
            if mun.subdivision:
                c.subdivision(f"coverage.municipalities[{i}].subdivision", mun.subdivision)
        for i, r in enumerate(cov.postal_code_ranges):
            c.postal_range(f"coverage.postal_code_ranges[{i}]", r.first, r.last)
        for i, comp in enumerate(record.competences):
            c.required(f"competences[{i}].request_types", len(comp.request_types) > 0)
            c.required(f"competences[{i}].roles", len(comp.roles) > 0)
            for j, rt in enumerate(comp.request_types):
                c.code(f"competences[{i}].request_types[{j}]", rt, "request_types")
            for j, oc in enumerate(comp.offence_categories):
                c.code(f"competences[{i}].offence_categories[{j}]", oc, "offence_categories")
            if records_pb2.COMPETENCE_ROLE_UNSPECIFIED in comp.roles:
                c.fail(f"competences[{i}].roles", "a role must be RECEIVES, EXECUTES or ISSUES", "MISSING_FIELD")
        if record.address.subdivision:
            c.subdivision("address.subdivision", record.address.subdivision)
        for i, lang in enumerate(record.languages):
            c.language(f"languages[{i}]", lang)
        for i, ch in enumerate(record.channels):
            c.required(f"channels[{i}].kind", bool(ch.kind))
            c.code(f"channels[{i}].kind", ch.kind, "channels")
            if ch.kind == "email":
                c.email(f"channels[{i}].address", ch.address)
            c.localized(f"channels[{i}].notes", ch.notes)
        if record.office_hours.time_zone:
            try:
                zoneinfo.ZoneInfo(record.office_hours.time_zone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                c.fail("office_hours.time_zone", f"{record.office_hours.time_zone!r} is not an IANA time zone", "INVALID_TIME_ZONE")
        c.email("urgent_contact.email", record.urgent_contact.email)
        c.phone("urgent_contact.phone", record.urgent_contact.phone)
        c.iso_date("review_date", record.review_date)
        c.localized("notes", record.notes)
    elif isinstance(record, records_pb2.Contact):
        c.required("display_names", len(record.display_names) > 0)
        c.localized("display_names", record.display_names)
        c.required("role", bool(record.role))
        c.code("role", record.role, "contact_roles")
        c.required("authority", bool(record.authority))
        c.reference("authority", record.authority, "authorities")
        for i, lang in enumerate(record.languages):
            c.language(f"languages[{i}]", lang)
        c.email("email", record.email)
        c.phone("phone", record.phone)
        c.iso_date("review_date", record.review_date)
        c.localized("notes", record.notes)
    elif isinstance(record, records_pb2.Rule):
        c.required("request_type", bool(record.request_type))
        c.code("request_type", record.request_type, "request_types")
        if name.record_id != record.request_type:
            c.fail("request_type", f"a rule's id must be its request type ({record.request_type})", "INVALID_NAME")
        c.required("possible", record.possible != records_pb2.POSSIBILITY_UNSPECIFIED)
        for i, code in enumerate(record.legal_frameworks):
            c.code(f"legal_frameworks[{i}]", code, "instruments")
        c.reference("receiving_authority", record.receiving_authority, "authorities")
        c.reference("executing_authority", record.executing_authority, "authorities")
        c.reference("consultation_contact", record.consultation_contact, "contacts")
        if record.territorial_execution and record.executing_authority:
            c.fail(
                "territorial_execution",
                "name either executing_authority or territorial_execution: the territorially competent "
                "authority is derived from coverage",
                "CONFLICTING_FIELDS",
            )
        for i, by in enumerate(record.executing_by_subdivision):
            c.required(f"executing_by_subdivision[{i}].authority", bool(by.authority))
            c.reference(f"executing_by_subdivision[{i}].authority", by.authority, "authorities")
            c.required(f"executing_by_subdivision[{i}].subdivisions", bool(by.subdivisions))
            for j, code in enumerate(by.subdivisions):
                c.subdivision(f"executing_by_subdivision[{i}].subdivisions[{j}]", code)
        for i, lang in enumerate(record.languages):
            c.language(f"languages[{i}]", lang)
        for fld in ("alternatives", "form_and_documents", "evidence_use_limits", "execution_deadline",
                    "urgent_procedure", "notes"):
            c.localized(fld, getattr(record, fld))
        c.iso_date("review_date", record.review_date)
    elif isinstance(record, records_pb2.Place):
        c.required("kind", record.kind != records_pb2.PLACE_KIND_UNSPECIFIED)
        c.required("subdivision", bool(record.subdivision))
        c.subdivision("subdivision", record.subdivision)
        if record.parent_subdivision:
            c.subdivision("parent_subdivision", record.parent_subdivision)
        c.required("names", bool(record.names))
        c.localized("names", record.names)
        for i, t in enumerate(record.names):
            c.required(f"names[{i}].text", bool(t.text.strip()))
        for i, r in enumerate(record.postal_code_ranges):
            c.postal_range(f"postal_code_ranges[{i}]", r.first, r.last)
        c.iso_date("review_date", record.review_date)
        c.localized("notes", record.notes)
    else:
        c.required("instrument", bool(record.instrument))
        c.code("instrument", record.instrument, "instruments")
        if name.record_id != record.instrument:
            c.fail("instrument", f"a treaty record's id must be its instrument ({record.instrument})", "INVALID_NAME")
        c.required("status", record.status != records_pb2.TREATY_STATUS_UNSPECIFIED)
        instrument = vocab.instruments.get(record.instrument)
        if instrument is not None and instrument.parties and name.member not in instrument.parties:
            c.fail("instrument", f"{record.instrument} is a treaty between {', '.join(instrument.parties)}", "NOT_A_PARTY")
        c.iso_date("in_force_date", record.in_force_date, partial=True)
        for i, lang in enumerate(record.declared_languages):
            c.language(f"declared_languages[{i}]", lang)
        c.reference("central_authority", record.central_authority, "authorities")
        c.localized("reservations", record.reservations)
        c.localized("notes", record.notes)


# --- validation of the whole set ----------------------------------------------------------


def check_record_set(records: list[SourcedRecord]) -> None:
    """No name twice; every reference points at a record of the set."""
    seen: dict[str, str] = {}
    for r in records:
        if r.name in seen:
            raise ValidationError(
                f"defined twice (also in {seen[r.name]})", reason="DUPLICATE_NAME", file=r.file, record=r.name
            )
        seen[r.name] = r.file
    for r in records:
        for fld in _REFERENCES[type(r.record)]:
            value = getattr(r.record, fld)
            if value and value not in seen:
                raise ValidationError(
                    f"refers to {value}, which is not among the published records",
                    reason="DANGLING_REFERENCE",
                    file=r.file,
                    record=r.name,
                    field=fld,
                )
