"""Resolving the place a prosecutor names to a place of the member's gazetteer (DESIGN §2).

Pure: no I/O. The lookup reads the member's place names (its signed gazetteer, and the
municipalities its authorities' coverage names) and asks ``resolve``. A query is folded the
way search folds it (case, accents, script: ``Аджария``, ``აჭარა`` and ``Adjara`` meet), then
matched exactly; failing that, with typo tolerance (RapidFuzz's Levenshtein ratio), and
read as the closest place only when that place is clearly the closest. Anything else is an
error that names the closest known places.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from rapidfuzz import fuzz, process

from counterpart_core.errors import InvalidArgumentError, NotFoundError, quote
from counterpart_core.index import (
    PLACE_FROM_COVERAGE,
    PLACE_MUNICIPALITY,
    PLACE_SUBDIVISION,
    fold,
)
from counterpart_core.names import SUBDIVISION_RE

POSTAL_RE = re.compile(r"^[0-9][0-9A-Z\- ]{1,9}$")

# A typo is read as the closest place when it is at least this similar (0-100, Levenshtein
# ratio: "batumy"/"batumi" 83, "zugdidy"/"zugdidi" 86) and this much closer than any other
# place; "atlantis" is 57 from "astana" and is refused.
APPROXIMATE_MIN = 80.0
APPROXIMATE_LEAD = 8.0
SUGGESTIONS = 5


@dataclass(frozen=True, slots=True)
class PlaceName:
    """One name of one place of a member (a row of the place index)."""

    folded: str
    display: str
    record: str  # the gazetteer record (members/XX/places/…), or the authority whose coverage names it
    subdivision: str
    kind: int  # index.PLACE_*

    @property
    def gazetteer(self) -> bool:
        return self.kind != PLACE_FROM_COVERAGE


@dataclass(frozen=True)
class Resolution:
    """Where a query leads."""

    level: str  # "national", "subdivision", "municipality" or "postal_code"
    subdivision: str = ""
    record: str = ""  # the gazetteer record resolved to ("" for none)
    matched: str = ""  # the name that matched, as published
    folded_names: frozenset[str] = field(default_factory=frozenset)  # every folded name of the place
    postal_code: str = ""
    approximate: bool = False


def _label(rows: Sequence[PlaceName], query: str = "") -> str:
    """'Batumi (GE-AJ)' for a city, 'GE-AJ Ajara' for a subdivision: its first published name
    in the query's script (Latin or not), and its subdivision."""
    first = rows[0]
    name = next((r.display for r in rows if r.display.isascii() == query.isascii()), first.display)
    if first.kind == PLACE_SUBDIVISION:
        return first.subdivision if name == first.subdivision else f"{first.subdivision} {name}"
    return f"{name} ({first.subdivision})" if first.subdivision else name


def _places(names: Sequence[PlaceName]) -> dict[str, list[PlaceName]]:
    """Names grouped by place: a gazetteer record, or a municipality an authority's coverage
    names that the gazetteer does not (the same name in the same subdivision is the same
    place, whoever names it)."""
    out: dict[str, list[PlaceName]] = {}
    published = {(n.folded, n.subdivision) for n in names if n.gazetteer}
    published_names = {n.folded for n in names if n.gazetteer}
    for n in names:
        if n.gazetteer:
            out.setdefault(n.record, []).append(n)
        elif (n.folded, n.subdivision) not in published and not (not n.subdivision and n.folded in published_names):
            out.setdefault(f"coverage:{n.folded}:{n.subdivision}", []).append(n)
    return out


def _resolution(key: str, rows: Sequence[PlaceName], matched: str, approximate: bool) -> Resolution:
    first = rows[0]
    level = "subdivision" if first.kind == PLACE_SUBDIVISION else "municipality"
    return Resolution(
        level, first.subdivision, first.record if first.gazetteer else "", matched,
        frozenset(r.folded for r in rows if r.kind in (PLACE_MUNICIPALITY, PLACE_FROM_COVERAGE)), "", approximate,
    )


def _most_specific(keys: list[str], places: dict[str, list[PlaceName]]) -> str | None:
    """Of several places sharing a name, the one to take: a city that lies in the subdivision
    of the same name (Tbilisi in GE-TB) is the same place, more precisely; anything else is
    ambiguous (None)."""
    gazetteer = [k for k in keys if places[k][0].gazetteer] or keys
    if len(gazetteer) == 1:
        return gazetteer[0]
    municipalities = [k for k in gazetteer if places[k][0].kind != PLACE_SUBDIVISION]
    subdivisions = {places[k][0].subdivision for k in gazetteer if places[k][0].kind == PLACE_SUBDIVISION}
    if len(municipalities) == 1 and {places[municipalities[0]][0].subdivision} >= subdivisions:
        return municipalities[0]
    return None


def closest(query: str, names: Sequence[PlaceName], limit: int = SUGGESTIONS) -> list[tuple[str, float]]:
    """(place label, similarity) of the places whose names are closest to ``query``."""
    places = _places(names)
    best: dict[str, float] = {}
    choices = {r.folded for rows in places.values() for r in rows}
    for folded, score, _ in process.extract(fold(query), choices, scorer=fuzz.ratio, limit=40):
        for key, rows in places.items():
            if any(r.folded == folded for r in rows):
                best[key] = max(best.get(key, 0.0), float(score))
    ranked = sorted(best.items(), key=lambda kv: (-kv[1], _label(places[kv[0]], query)))[:limit]
    return [(_label(places[k], query), s) for k, s in ranked]


def group(names: Sequence[PlaceName]) -> dict[str, list[PlaceName]]:
    """The names grouped by place, as ``resolve`` reads them: a server that resolves many
    queries over the same names groups them once and passes the result."""
    return _places(names)


def names_needed(query: str, member: str) -> tuple[str, str] | None:
    """Which of the member's place names ``resolve`` reads for ``query``, so that a server
    with the names in an index reads only those:

    - ``("subdivision", code)``: the gazetteer's subdivisions of that code, with every name of
      those places (``subdivision_rows``);
    - ``("folded", f)``: the names folded to ``f``, with every gazetteer name of the places
      among them (``folded_rows``);
    - None: no names (no place, a postal code, a subdivision of another member).

    ``resolve`` over those rows (in the order of the whole list) answers as over every name
    whenever they hold a match. When they hold none (a typo, an unknown place, a subdivision
    code the gazetteer lacks while it has others), the answer is a guess or an error that
    names the closest places, and needs every name."""
    q = query.strip()
    code = q.upper()
    m = SUBDIVISION_RE.match(code)
    if not q or (m and "-" in q and m.group(1) != member):
        return None
    if m and "-" in q:
        return ("subdivision", code)
    if POSTAL_RE.match(code):
        return None
    return ("folded", fold(q))


def resolve(
    query: str, member: str, names: Sequence[PlaceName], grouped: dict[str, list[PlaceName]] | None = None
) -> Resolution:
    """The place ``query`` names in ``member``, given all the member's place names (and, if
    at hand, ``group(names)``)."""
    q = query.strip()
    if not q:
        return Resolution("national")
    places = _places(names) if grouped is None else grouped
    code = q.upper()
    m = SUBDIVISION_RE.match(code)
    if m and "-" in q:
        if m.group(1) != member:
            raise InvalidArgumentError(f"place {quote(q)} is not in {member}", reason="PLACE_OUTSIDE_MEMBER")
        published = {n.subdivision for n in names if n.kind == PLACE_SUBDIVISION}
        if published and code not in published:
            raise _not_found(q, member, names)
        key = next((k for k, rows in places.items() if rows[0].kind == PLACE_SUBDIVISION and rows[0].subdivision == code), "")
        if key:
            return _resolution(key, places[key], code, False)
        return Resolution("subdivision", code, matched=code)
    if POSTAL_RE.match(code):
        return Resolution("postal_code", postal_code=code, matched=code)
    folded = fold(q)
    exact = [k for k, rows in places.items() if any(r.folded == folded for r in rows)]
    if exact:
        specific = _most_specific(exact, places)
        if specific is None:
            options = ", ".join(sorted(_label(places[k], q) for k in exact))
            raise InvalidArgumentError(
                f"place {quote(q)} names several places of {member}: {options}; give the subdivision code "
                "or a more precise name",
                reason="PLACE_AMBIGUOUS", metadata={"candidates": options},
            )
        same = [r.display for r in places[specific] if r.folded == folded]
        matched = next((d for d in same if d == q), same[0])
        return _resolution(specific, places[specific], matched, False)
    if folded:
        ranked = _fuzzy(q, folded, places)
        if ranked and ranked[0][1] >= APPROXIMATE_MIN:
            best = ranked[0][1]
            close = [key for key, score, _ in ranked if best - score < APPROXIMATE_LEAD]
            # clearly the closest place, or a city and the subdivision of its name (Tbilis)
            guess = close[0] if len(close) == 1 else _most_specific(close, places)
            if guess is not None:
                # say it with the place's own first name in the query's script (Batumi, not
                # the historical Batum that happened to be closest to "Batumy")
                rows = places[guess]
                shown = next((r.display for r in rows if r.display.isascii() == q.isascii()), rows[0].display)
                return _resolution(guess, rows, shown, True)
    raise _not_found(q, member, names)


def _fuzzy(query: str, folded: str, places: dict[str, list[PlaceName]]) -> list[tuple[str, float, str]]:
    """(place, best similarity of any of its names, that name), best first; of equally close
    names, one in the query's script (Latin or not) is the one shown."""
    out = []
    for key, rows in places.items():
        scored = [(float(fuzz.ratio(folded, r.folded)), r.display.isascii() == query.isascii(), r.display) for r in rows]
        score, _, display = max(scored)
        out.append((key, score, display))
    return sorted(out, key=lambda t: -t[1])


def _not_found(query: str, member: str, names: Sequence[PlaceName]) -> NotFoundError:
    suggestions = [label for label, _ in closest(query, names)]
    hint = f"; the closest: {', '.join(suggestions)}" if suggestions else f"; {member} has published no places"
    return NotFoundError(
        f"no place {quote(query)} is known in {member}{hint}. Give a subdivision code (e.g. {member}-XX), a city or "
        "region name, or a postal code",
        reason="PLACE_NOT_FOUND", metadata={"suggestions": ", ".join(suggestions)},
    )
