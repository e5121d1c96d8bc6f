"""Loading and validating a member's records from YAML files and spreadsheets (DESIGN §2, §7).

Everything here is pure apart from reading the given files: it turns files into
validated protobuf records or raises ValidationError naming the file, the record
and the field. Nothing is stored until every record of every file is valid.
Spreadsheets (CSV and XLSX, one sheet per kind of record) are read by
``counterpart_core.spreadsheets`` into the same mappings a YAML file gives.
"""

from __future__ import annotations

import difflib
import re
import zoneinfo
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import email_validator
import langcodes
import phonenumbers
import pycountry
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from counterpart.v1 import records_pb2
from counterpart_core import effective
from counterpart_core.errors import InvalidArgumentError, ValidationError, quote
from counterpart_core.names import (
    ID_RE,
    LANGUAGE_TAG_RE,
    MEMBER_RE,
    SUBDIVISION_RE,
    RecordName,
    parse_record_name,
)
from counterpart_core.vocab import Vocabulary

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
REFERENCES: dict[type[Message], dict[str, str]] = {
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

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_PARTIAL_DATE_RE = re.compile(r"^\d{4}(?:-\d{2}(?:-\d{2})?)?$")


@dataclass(frozen=True)
class SourcedRecord:
    """A validated record and where it came from (for error messages and diffs)."""

    name: str
    record: Record
    file: str
    where: str = ""  # within the file, for a spreadsheet: "sheet rules, row 4"

    @property
    def source(self) -> str:
        return f"{self.file}, {self.where}" if self.where else self.file


def record_kind(record: Message) -> str:
    return {
        records_pb2.Authority: "authority",
        records_pb2.Contact: "contact",
        records_pb2.Rule: "rule",
        records_pb2.Treaty: "treaty",
        records_pb2.Place: "place",
    }[type(record)]


# --- reading files -------------------------------------------------------------------------

# libyaml's safe loader where PyYAML was built with it: ten times faster on thousands of records
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
YAML_SUFFIXES = (".yaml", ".yml")
CSV_SUFFIXES = (".csv", ".tsv")
XLSX_SUFFIXES = (".xlsx",)
RECORD_SUFFIXES = YAML_SUFFIXES + CSV_SUFFIXES + XLSX_SUFFIXES
# Files an administrator may expect to be read but which are not: refused, never skipped
# (a skipped file would silently leave its records out, and --prune would delete them).
_REFUSED_SUFFIXES = {
    ".xls": "an Excel 97-2003 workbook: save it as .xlsx (Excel Workbook) or .csv",
    ".xlsm": "a macro-enabled workbook: save it as .xlsx (Excel Workbook) or .csv",
    ".xlsb": "a binary workbook: save it as .xlsx (Excel Workbook) or .csv",
    ".ods": "an OpenDocument spreadsheet: save it as .xlsx or .csv",
    ".numbers": "a Numbers spreadsheet: export it as .xlsx or .csv",
    ".json": "JSON is not a records format here: use YAML (a superset of JSON) with a .yaml name",
}


@dataclass
class LoadedFiles:
    """What a file or folder of records holds, each record checked alone."""

    records: list[SourcedRecord] = field(default_factory=list)
    collections: set[str] = field(default_factory=set)  # kinds the input holds (a YAML section, a
    # sheet, a CSV file of that kind), even when empty: the kinds `publish --prune` may delete from
    notices: list[str] = field(default_factory=list)  # how files were read (encoding, delimiter), skipped files
    files: list[Path] = field(default_factory=list)


def unsupported_suffix(path: Path) -> str:
    """Why a file with this name cannot be read as records."""
    why = _REFUSED_SUFFIXES.get(path.suffix.lower())
    if why:
        return f"{path.name} is {why}"
    return (
        f"{path.name}: unknown kind of file ({path.suffix or 'no extension'}); records are read from "
        ".yaml / .yml, .csv / .tsv and .xlsx files"
    )


def iter_record_files(path: Path, notices: list[str] | None = None) -> list[Path]:
    """One file, or every records file below a folder, in a stable order.

    A file given by name must have a known extension. In a folder, spreadsheets of other
    formats (.xls, .ods, ...) are refused, hidden files and Office lock files (~$book.xlsx)
    are skipped, and any other file is skipped with a notice.
    """
    if not path.exists():
        raise InvalidArgumentError(f"{path} does not exist", reason="PATH_NOT_FOUND")
    if path.is_file():
        if path.suffix.lower() not in RECORD_SUFFIXES:
            raise ValidationError(unsupported_suffix(path), reason="UNSUPPORTED_FILE_TYPE", file=str(path))
        return [path]
    files: list[Path] = []
    for p in sorted(path.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(path).parts):
            continue
        if p.name.startswith("~$"):
            continue
        suffix = p.suffix.lower()
        if suffix in RECORD_SUFFIXES:
            files.append(p)
        elif suffix in _REFUSED_SUFFIXES:
            raise ValidationError(unsupported_suffix(p), reason="UNSUPPORTED_FILE_TYPE", file=str(p))
        elif notices is not None:
            notices.append(f"skipped {p} (not a records file)")
    if not files:
        raise InvalidArgumentError(
            f"{path} holds no .yaml, .yml, .csv, .tsv or .xlsx files", reason="NO_RECORD_FILES"
        )
    return files


def load_record_files(path: Path, member: str, vocab: Vocabulary) -> LoadedFiles:
    """Load and check every record under path for member; raise on the first problem.

    Checks each record alone (schema, codes, registries, sizes) and that no name is defined
    twice. References are checked by the caller, against what the publish will leave
    (``check_references``): a file may refer to a record published earlier from another file.
    """
    # imported here: spreadsheets builds its records with build_record from this module
    from counterpart_core import spreadsheets

    loaded = LoadedFiles()
    loaded.files = iter_record_files(path, loaded.notices)
    for f in loaded.files:
        suffix = f.suffix.lower()
        if suffix in CSV_SUFFIXES:
            spreadsheets.load_csv(f, member, vocab, loaded)
        elif suffix in XLSX_SUFFIXES:
            spreadsheets.load_xlsx(f, member, vocab, loaded)
        else:
            records, sections = _load_yaml(f, member, vocab)
            loaded.records.extend(records)
            loaded.collections.update(SECTIONS[s][0] for s in sections)
    check_duplicates(loaded.records)
    return loaded


def load_records(path: Path, member: str, vocab: Vocabulary) -> list[SourcedRecord]:
    """Load and validate every record under path as a complete set: each record alone, no
    name twice, and every reference to a record of the set."""
    records = load_record_files(path, member, vocab).records
    check_record_set(records)
    return records


def _load_yaml(path: Path, member: str, vocab: Vocabulary) -> tuple[list[SourcedRecord], list[str]]:
    file = str(path)
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ValidationError(f"broken YAML{where}: {problem}", reason="BROKEN_YAML", file=file) from e
    except UnicodeDecodeError as e:
        raise ValidationError(
            f"not UTF-8 text (byte {e.start}): save the YAML file as UTF-8", reason="UNREADABLE_FILE", file=file
        ) from e
    except OSError as e:
        raise ValidationError(f"cannot read file: {e.strerror or e}", reason="UNREADABLE_FILE", file=file) from e
    if doc is None:
        return [], []
    if not isinstance(doc, dict):
        raise ValidationError(
            "the file must be a mapping with 'member' and record lists "
            f"({', '.join(SECTIONS)})",
            reason="BAD_FILE_SHAPE",
            file=file,
        )
    _check_file_member(doc.get("member"), member, file)
    unknown = sorted(map(str, set(doc) - set(SECTIONS) - {"member"}))
    if unknown:
        raise ValidationError(
            f"unknown section(s) {', '.join(map(repr, unknown))}; expected {', '.join(SECTIONS)}",
            reason="UNKNOWN_SECTION",
            file=file,
        )
    out: list[SourcedRecord] = []
    sections: list[str] = []
    for section, (collection, cls, id_key) in SECTIONS.items():
        items = doc.get(section)
        if items is None:
            continue
        if not isinstance(items, list):
            raise ValidationError(
                f"section '{section}' must be a list of records", reason="WRONG_TYPE", file=file, field=section
            )
        sections.append(section)
        for index, raw in enumerate(items):
            label = f"{section}[{index}]"
            if not isinstance(raw, dict):
                raise ValidationError(
                    "a record must be a mapping of fields", reason="WRONG_TYPE", file=file, record=label
                )
            out.append(build_record(dict(raw), member, collection, cls, id_key, vocab, file, label))
    return out, sections


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


def expand_references(raw: dict[str, Any], member: str, cls: type[Message]) -> None:
    """A reference given as a short id (``pgo``) becomes the record's name."""
    for fld, target in REFERENCES[cls].items():
        value = raw.get(fld)
        if isinstance(value, str) and value and "/" not in value:
            raw[fld] = f"members/{member}/{target}/{value}"


def short_reference(value: str, member: str, collection: str) -> str:
    """The short id of a reference to a record of the same member (the inverse of expand_references)."""
    prefix = f"members/{member}/{collection}/"
    return value.removeprefix(prefix)


def build_record(
    raw: dict[str, Any],
    member: str,
    collection: str,
    cls: type[Message],
    id_key: str,
    vocab: Vocabulary,
    file: str,
    label: str,
    where: str = "",
) -> SourcedRecord:
    """Turn one mapping from a file into a validated record (phone numbers normalized to E.164)."""
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
            f"record id {quote(record_id)} is malformed: lower-case letters, digits, '-' and '.', "
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
    expand_references(raw, member, cls)
    effective_to_wire(raw, file, name)
    raw["name"] = name
    record = cls()
    try:
        json_format.ParseDict(raw, record)
    except json_format.ParseError as e:
        raise ValidationError(
            _describe_parse_error(str(e)), reason="SCHEMA_VIOLATION", file=file, record=name,
            field=_field_of_parse_error(str(e)),
        ) from e
    normalize_phones(record, parsed, file)  # type: ignore[arg-type]
    validate_record(record, parsed, vocab, file=file)  # type: ignore[arg-type]
    check_registries(record, parsed, file)  # type: ignore[arg-type]
    return SourcedRecord(name, record, file, where)  # type: ignore[arg-type]


def effective_to_wire(raw: dict[str, Any], file: str, label: str) -> None:
    """``effective: {from: 2027-01-01, until: ...}`` (dates mean 00:00 UTC, or RFC 3339
    times) becomes the record's EffectivePeriod in its JSON form."""
    value = raw.get("effective")
    if value is None:
        return
    if not isinstance(value, dict):
        raise ValidationError(
            "'effective' must be a mapping such as {from: 2027-01-01, until: 2028-01-01}",
            reason="WRONG_TYPE", file=file, record=label, field="effective",
        )
    unknown = sorted(set(value) - {"from", "until"})
    if unknown:
        raise ValidationError(
            f"'effective' takes only 'from' and 'until', not {', '.join(map(repr, unknown))}",
            reason="SCHEMA_VIOLATION", file=file, record=label, field=f"effective.{unknown[0]}",
        )
    wire: dict[str, str] = {}
    for key, target in (("from", "startTime"), ("until", "endTime")):
        if value.get(key) in (None, ""):
            continue
        try:
            instant = effective.parse_instant(value[key])
        except ValueError as e:
            raise ValidationError(str(e), reason="INVALID_DATE", file=file, record=label, field=f"effective.{key}") from e
        wire[target] = instant.strftime("%Y-%m-%dT%H:%M:%SZ")
    raw["effective"] = wire


def _field_of_parse_error(text: str) -> str:
    fields = re.findall(r'(?:Failed to parse|no field named) "?(\w+)"?', text)
    return ".".join(fields)


def _describe_parse_error(text: str) -> str:
    text = text.replace('Message type "counterpart.v1.', 'record type "')
    if "has no field named" in text:
        return re.sub(r'\s+at\s+"[^"]*"\.?.*$', "", text).replace(" Available Fields(except extensions):", "") + " (unknown field)"
    return "wrong type or value: " + text


# --- real-world registries: E.164, ISO 3166, BCP 47, e-mail syntax ------------------------

_PHONE_CHARS_RE = re.compile(r"^\+?[0-9 ().\-/]*[0-9][0-9 ().\-/]*$")
_PHONE_CHANNELS = ("phone", "fax")


def country_of(member: str) -> Any | None:
    """The ISO 3166-1 country a member code names; None for an international body."""
    if len(member) != 2:
        return None
    return pycountry.countries.get(alpha_2=member)


def normalize_phone(value: str, member: str) -> str:
    """A phone number in E.164 (``+995322405000``); spaces, dashes, dots and brackets accepted,
    and a number without ``+`` read as a national number of the member's country.

    Raises ValueError saying what is wrong.
    """
    text = value.strip()
    if not _PHONE_CHARS_RE.match(text):
        raise ValueError("only digits, a leading '+', spaces, '-', '.', '/' and brackets may be used")
    country = country_of(member)
    region = country.alpha_2 if country is not None and not text.startswith("+") else None
    if region is None and not text.startswith("+"):
        raise ValueError("give it in international form, starting with '+' and the country code")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as e:
        raise ValueError(str(e).split(") ", 1)[-1]) from e
    if not phonenumbers.is_valid_number(number):
        where = phonenumbers.region_code_for_number(number) or f"country code +{number.country_code}"
        raise ValueError(f"not a valid number for {where} (check the digits and the country code)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_phones(record: Record, name: RecordName, file: str = "") -> None:
    """Rewrite every phone number of the record in E.164, or refuse it naming the field."""

    def fix(holder: Message, attr: str, path: str) -> None:
        value = getattr(holder, attr)
        if not value:
            return
        try:
            setattr(holder, attr, normalize_phone(value, name.member))
        except ValueError as e:
            raise ValidationError(
                f"{quote(value)} is not a phone number: {e} (e.g. '+995 32 240 50 00')",
                reason="INVALID_PHONE", file=file, record=str(name), field=path,
            ) from e

    if isinstance(record, records_pb2.Authority):
        if record.HasField("urgent_contact"):
            fix(record.urgent_contact, "phone", "urgent_contact.phone")
        for i, ch in enumerate(record.channels):
            if ch.kind in _PHONE_CHANNELS:
                fix(ch, "address", f"channels[{i}].address")
    elif isinstance(record, records_pb2.Contact):
        fix(record, "phone", "phone")


def _languages(msg: Message, prefix: str) -> Iterator[tuple[str, str]]:
    """(path, tag) of every language tag in a record: LocalizedText.language and the lists of tags."""
    for fd, value in msg.ListFields():
        path = f"{prefix}{fd.name}"
        if fd.message_type is not None:
            items = value if fd.is_repeated else [value]
            for i, item in enumerate(items):
                sub = f"{path}[{i}]." if fd.is_repeated else f"{path}."
                if item.DESCRIPTOR.full_name == "counterpart.v1.LocalizedText":
                    yield f"{sub}language", item.language
                else:
                    yield from _languages(item, sub)
        elif fd.name in ("languages", "declared_languages"):
            for i, tag in enumerate(value):
                yield f"{path}[{i}]", tag


def _subdivisions(record: Record) -> Iterator[tuple[str, str]]:
    """(path, code) of every ISO 3166-2 code in a record."""
    if isinstance(record, records_pb2.Authority):
        for i, s in enumerate(record.coverage.subdivisions):
            yield f"coverage.subdivisions[{i}]", s
        for i, mun in enumerate(record.coverage.municipalities):
            if mun.subdivision:
                yield f"coverage.municipalities[{i}].subdivision", mun.subdivision
        if record.address.subdivision:
            yield "address.subdivision", record.address.subdivision
    elif isinstance(record, records_pb2.Rule):
        for i, by in enumerate(record.executing_by_subdivision):
            for j, s in enumerate(by.subdivisions):
                yield f"executing_by_subdivision[{i}].subdivisions[{j}]", s
    elif isinstance(record, records_pb2.Place):
        yield "subdivision", record.subdivision
        if record.parent_subdivision:
            yield "parent_subdivision", record.parent_subdivision


def _emails(record: Record) -> Iterator[tuple[str, str]]:
    if isinstance(record, records_pb2.Authority):
        for i, ch in enumerate(record.channels):
            if ch.kind == "email":
                yield f"channels[{i}].address", ch.address
        yield "urgent_contact.email", record.urgent_contact.email
    elif isinstance(record, records_pb2.Contact):
        yield "email", record.email


def check_registries(record: Record, name: RecordName, file: str = "") -> None:
    """Check codes and addresses against the registries they come from: language tags are
    valid BCP 47 (langcodes), subdivision codes exist in ISO 3166-2 and country codes in
    ISO 3166-1 (pycountry; a member that is not a country, an international body, skips the
    subdivision check), e-mail addresses are well-formed (email-validator, no DNS look-up)."""

    def fail(path: str, message: str, reason: str) -> None:
        raise ValidationError(message, reason=reason, file=file, record=str(name), field=path)

    for path, tag in _languages(record, ""):
        if tag and not langcodes.tag_is_valid(tag):
            fail(path, f"{quote(tag)} is not a valid BCP 47 language tag (e.g. 'ka', 'ru', 'sr-Latn')", "INVALID_LANGUAGE")
    country = country_of(name.member)
    if country is not None:
        for path, code in _subdivisions(record):
            if code.startswith(f"{country.alpha_2}-") and not _subdivision_exists(code):
                fail(path, _unknown_subdivision(code, country), "UNKNOWN_SUBDIVISION")
    country_code = ""
    if isinstance(record, records_pb2.Authority):
        country_code = record.address.country
    if country_code and pycountry.countries.get(alpha_2=country_code) is None:
        fail("address.country", f"{quote(country_code)} is not an ISO 3166-1 alpha-2 country code", "INVALID_COUNTRY")
    for path, address in _emails(record):
        if not address:
            continue
        try:
            email_validator.validate_email(address, check_deliverability=False)
        except email_validator.EmailNotValidError as e:
            fail(path, f"{quote(address)} is not an e-mail address: {e}", "INVALID_EMAIL")


def _subdivision_exists(code: str) -> bool:
    return pycountry.subdivisions.get(code=code) is not None  # type: ignore[no-untyped-call]


def _unknown_subdivision(code: str, country: Any) -> str:
    found = pycountry.subdivisions.get(country_code=country.alpha_2)  # type: ignore[no-untyped-call]
    known = sorted(str(s.code) for s in found or [])
    close = difflib.get_close_matches(code, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    listing = f" (known: {', '.join(known)})" if 0 < len(known) <= 40 else ""
    return f"{quote(code)} is not a subdivision of {country.name} in ISO 3166-2{hint}{listing}"


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
        if not LANGUAGE_TAG_RE.match(tag):
            self.fail(field, f"{tag!r} is not a BCP 47 language tag (e.g. 'ka', 'sr-Latn')", "INVALID_LANGUAGE")

    def subdivision(self, field: str, code: str) -> None:
        m = SUBDIVISION_RE.match(code)
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
    start, end = effective.period_of(record)
    if start is not None and end is not None and end <= start:
        c.fail(
            "effective.until",
            f"the period ends ({effective.format_instant(end)}) before or when it starts "
            f"({effective.format_instant(start)}): 'until' must be later than 'from'",
            "INVALID_PERIOD",
        )
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


def collection_of(name: str) -> str:
    """``authorities`` of ``members/GE/authorities/pgo``."""
    parts = name.split("/")
    return parts[2] if len(parts) == 4 else ""


def references_of(record: Record) -> Iterator[tuple[str, str]]:
    """(field, name) of every reference a record makes to another record of its member."""
    for fld in REFERENCES[type(record)]:
        value = getattr(record, fld)
        if value:
            yield fld, value


def check_duplicates(records: list[SourcedRecord]) -> None:
    """No name twice."""
    seen: dict[str, SourcedRecord] = {}
    for r in records:
        if r.name in seen:
            raise ValidationError(
                f"defined twice (also in {seen[r.name].source})", reason="DUPLICATE_NAME", file=r.source, record=r.name
            )
        seen[r.name] = r


def check_references(records: list[SourcedRecord], known: Container[str], deleted: Container[str] = ()) -> None:
    """Every reference of these records points at a known record (of the set, or already
    published and not being deleted)."""
    for r in records:
        for fld, value in references_of(r.record):
            if value in known:
                continue
            why = (
                "which --prune would delete (it is not in these files)" if value in deleted
                else "which is neither among these records nor already published"
            )
            raise ValidationError(
                f"refers to {value}, {why}", reason="DANGLING_REFERENCE", file=r.source, record=r.name, field=fld,
            )


def check_record_set(records: list[SourcedRecord]) -> None:
    """No name twice; every reference points at a record of the set."""
    check_duplicates(records)
    check_references(records, {r.name for r in records})
