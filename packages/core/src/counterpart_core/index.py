"""Derived lookup rows of a record: what storage indexes so lookups need no scans.

Derived state is a pure function of the latest entry of each name, so it can
always be rebuilt from the stored envelopes (`counterpart-node rebuild`).
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from anyascii import anyascii

from counterpart.v1 import records_pb2
from counterpart_core.log import LogEntry, read_entry

_MARKS = str.maketrans("", "", "'`\"")

NAME = 0  # search-term weights
PLACE = 1

LEVEL_NATIONAL = 1
LEVEL_SUBDIVISION = 2
LEVEL_MUNICIPALITY = 3
LEVEL_POSTAL_CODE = 4


def fold(text: str) -> str:
    """Fold case, accents and script: 'ბათუმი', 'Батуми' and 'BATUMI' all become 'batumi'."""
    ascii_text = anyascii(unicodedata.normalize("NFKC", text)).lower()
    # Transliteration marks ejectives and soft signs with apostrophes (p'rok'urat'ura):
    # they are part of the word, not a break, and people type the word without them.
    ascii_text = ascii_text.translate(_MARKS)
    kept = "".join(ch if ch.isalnum() else " " for ch in ascii_text)
    return " ".join(kept.split())


@dataclass(frozen=True)
class CoverageRow:
    level: int
    key: str  # subdivision code, folded municipality name, or first postal code
    last: str = ""  # last postal code of a range
    subdivision: str = ""  # subdivision a municipality lies in


@dataclass(frozen=True)
class CompetenceRow:
    request_type: str
    role: int
    offence: str  # "" = every category
    stage: int  # 0 = every stage


PLACE_FROM_COVERAGE = 0  # PlaceRow kinds
PLACE_SUBDIVISION = 1
PLACE_MUNICIPALITY = 2


@dataclass(frozen=True)
class PlaceRow:
    """A place name of the member, for place resolution: from its gazetteer, or a
    municipality an authority's coverage names."""

    folded: str
    display: str
    subdivision: str
    kind: int = PLACE_FROM_COVERAGE


@dataclass
class Derived:
    """Everything indexed for one current record."""

    name: str
    member: str
    kind: str
    seq: int
    public: bool
    label: str  # a display name for listings
    # folded term -> weight: 0 for a name of the record, 1 for a place it is in or covers
    search_terms: dict[str, int] = field(default_factory=dict)
    coverage: list[CoverageRow] = field(default_factory=list)
    competences: list[CompetenceRow] = field(default_factory=list)
    places: list[PlaceRow] = field(default_factory=list)
    attrs: dict[str, str] = field(default_factory=dict)  # for simple filters


_fold = functools.lru_cache(maxsize=16384)(fold)
"""``fold`` remembered: a member's records name the same places again and again (a sync
derives every current record of a log)."""


def derive(entry: LogEntry) -> Derived | None:
    """Index rows for an entry's record; None for a tombstone."""
    rec = entry.record
    if rec is None:
        return None
    if isinstance(rec, records_pb2.Contact):
        public = rec.visibility == records_pb2.VISIBILITY_PUBLIC
    else:
        public = True
    label = entry.name.rsplit("/", 1)[-1]
    names = getattr(rec, "display_names", None) or getattr(rec, "names", None)
    if names:
        label = next((t.text for t in names if t.language == "en"), names[0].text)
    d = Derived(entry.name, entry.member, entry.kind, entry.seq, public, label)
    if isinstance(rec, records_pb2.Authority):
        d.attrs = {"kind": rec.kind, "parent": rec.parent}
        for t in rec.display_names:
            d.search_terms[_fold(t.text)] = NAME
        if rec.address.locality:
            d.search_terms.setdefault(_fold(rec.address.locality), PLACE)
        cov = rec.coverage
        if cov.national:
            d.coverage.append(CoverageRow(LEVEL_NATIONAL, entry.member))
        for s in cov.subdivisions:
            d.coverage.append(CoverageRow(LEVEL_SUBDIVISION, s))
        placed: set[str] = set()  # the folded names of d.places (a set: an authority may cover hundreds)
        for mun in cov.municipalities:
            for t in mun.names:
                folded = _fold(t.text)
                if not folded or folded in placed:
                    continue  # "Batumi" in English and in Russian fold alike: one row
                placed.add(folded)
                d.search_terms.setdefault(folded, PLACE)
                d.coverage.append(CoverageRow(LEVEL_MUNICIPALITY, folded, subdivision=mun.subdivision))
                d.places.append(PlaceRow(folded, t.text, mun.subdivision))
        for r in cov.postal_code_ranges:
            d.coverage.append(CoverageRow(LEVEL_POSTAL_CODE, r.first, r.last))
        seen: set[CompetenceRow] = set()
        for comp in rec.competences:
            for rt in comp.request_types:
                for role in comp.roles:
                    for offence in comp.offence_categories or [""]:
                        for stage in comp.stages or [0]:
                            seen.add(CompetenceRow(rt, int(role), offence, int(stage)))
        d.competences = sorted(seen, key=lambda c: (c.request_type, c.role, c.offence, c.stage))
    elif isinstance(rec, records_pb2.Contact):
        d.attrs = {"role": rec.role, "authority": rec.authority}
        for t in rec.display_names:
            d.search_terms[_fold(t.text)] = NAME
    elif isinstance(rec, records_pb2.Rule):
        d.attrs = {"request_type": rec.request_type}
    elif isinstance(rec, records_pb2.Place):
        kind = PLACE_SUBDIVISION if rec.kind == records_pb2.PLACE_KIND_SUBDIVISION else PLACE_MUNICIPALITY
        d.attrs = {"kind": records_pb2.PlaceKind.Name(rec.kind), "subdivision": rec.subdivision}
        for t in rec.names:  # every spelling kept: the answer shows the one in the query's script
            folded = _fold(t.text)
            if folded and not any((p.folded, p.display) == (folded, t.text) for p in d.places):
                d.places.append(PlaceRow(folded, t.text, rec.subdivision, kind))
        code = rec.subdivision.lower()
        if kind == PLACE_SUBDIVISION and not any(p.folded == _fold(code) for p in d.places):
            d.places.append(PlaceRow(_fold(code), rec.subdivision, rec.subdivision, kind))  # "ge aj"
    elif isinstance(rec, records_pb2.Treaty):
        d.attrs = {"instrument": rec.instrument, "status": records_pb2.TreatyStatus.Name(rec.status)}
    d.attrs["member"] = entry.member
    d.search_terms.pop("", None)
    return d


Row = tuple[str | int | bool, ...]
Rows = tuple[list[Row], list[Row], list[Row], list[Row], list[Row], list[Row]]
Shaped = tuple[bool, Rows]
"""A derived record as it is stored: whether it is public, and its rows (``derived_rows``)."""


def derived_rows(d: Derived) -> Rows:
    """The rows a record's index is stored as, one list per index, each row in the column
    order of ``ROW_COLUMNS`` (text cut to the columns' widths): records, attributes, search
    terms, coverage, competences, places. Plain tuples, which cost little to send between
    processes and go to the database driver as they are."""
    return (
        [(d.name, d.member, d.kind, d.seq, d.public, d.label[:2000])],
        [(d.name, k, v[:200]) for k, v in d.attrs.items()],
        [(d.name, t[:2000], d.member, w) for t, w in d.search_terms.items()],
        [(d.name, d.member, c.level, c.key[:2000], c.last, c.subdivision) for c in d.coverage],
        [(d.name, d.member, c.request_type, c.role, c.offence, c.stage) for c in d.competences],
        [(d.name, d.member, p.folded[:2000], p.display[:2000], p.subdivision, p.kind) for p in d.places],
    )


ROW_COLUMNS: tuple[tuple[str, ...], ...] = (
    ("name", "member", "kind", "seq", "public", "label"),
    ("name", "attr", "value"),
    ("name", "term", "member", "weight"),
    ("name", "member", "level", "key", "last", "subdivision"),
    ("name", "member", "request_type", "role", "offence", "stage"),
    ("name", "member", "folded", "display", "subdivision", "kind"),
)
"""The columns of each list ``derived_rows`` gives, in its order."""


def shape_entries(member: str, items: Sequence[tuple[int, bytes]]) -> list[Shaped | None]:
    """The derived records of verified entries (seq, envelope) of a member, as stored
    (None for a tombstone)."""
    out: list[Shaped | None] = []
    for seq, envelope in items:
        d = derive(read_entry(envelope, member, seq))
        out.append(None if d is None else (d.public, derived_rows(d)))
    return out
