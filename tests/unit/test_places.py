"""Place resolution (domain/places.py): exact in any script, typo-tolerant, never a silent
fall-back, and errors that name the closest places."""

from __future__ import annotations

import pytest

from counterpart_core import places
from counterpart_core.errors import InvalidArgumentError, NotFoundError
from counterpart_core.index import (
    PLACE_FROM_COVERAGE,
    PLACE_MUNICIPALITY,
    PLACE_SUBDIVISION,
    fold,
)


def names(record: str, kind: int, subdivision: str, *texts: str) -> list[places.PlaceName]:
    return [places.PlaceName(fold(t), t, record, subdivision, kind) for t in texts]


GE = [
    *names("members/GE/places/ge-aj", PLACE_SUBDIVISION, "GE-AJ", "Ajara", "Adjara", "Аджария", "აჭარა"),
    *names("members/GE/places/batumi", PLACE_MUNICIPALITY, "GE-AJ", "Batumi", "ბათუმი", "Батуми"),
    *names("members/GE/places/ge-tb", PLACE_SUBDIVISION, "GE-TB", "Tbilisi", "თბილისი"),
    *names("members/GE/places/tbilisi", PLACE_MUNICIPALITY, "GE-TB", "Tbilisi", "Tiflis", "Тбилиси"),
    *names("members/GE/places/ge-sz", PLACE_SUBDIVISION, "GE-SZ", "Samegrelo-Zemo Svaneti"),
    *names("members/GE/places/zugdidi", PLACE_MUNICIPALITY, "GE-SZ", "Zugdidi", "ზუგდიდი"),
    # an authority's coverage names Batumi too, and a place the gazetteer lacks
    *names("members/GE/authorities/ajara-po", PLACE_FROM_COVERAGE, "GE-AJ", "Batumi", "Kobuleti"),
]


@pytest.mark.parametrize("query", ["Ajara", "Adjara", "Аджария", "აჭარა", "ajara", "  ADJARA "])
def test_a_region_in_any_script(query: str) -> None:
    r = places.resolve(query, "GE", GE)
    assert (r.level, r.subdivision, r.record, r.approximate) == ("subdivision", "GE-AJ", "members/GE/places/ge-aj", False)


def test_a_city_resolves_with_every_name_for_coverage() -> None:
    r = places.resolve("ბათუმი", "GE", GE)
    assert (r.level, r.subdivision, r.record) == ("municipality", "GE-AJ", "members/GE/places/batumi")
    assert r.folded_names == {"batumi"}


def test_a_city_named_like_its_subdivision_is_the_city() -> None:
    r = places.resolve("Tbilisi", "GE", GE)
    assert (r.level, r.record) == ("municipality", "members/GE/places/tbilisi")
    assert places.resolve("Tiflis", "GE", GE).record == "members/GE/places/tbilisi"


@pytest.mark.parametrize(("query", "record"), [
    ("Batumy", "members/GE/places/batumi"), ("Батум", "members/GE/places/batumi"),
    ("Zugdidy", "members/GE/places/zugdidi"),
])
def test_typos_are_read_as_the_clearly_closest_place(query: str, record: str) -> None:
    r = places.resolve(query, "GE", GE)
    assert r.record == record and r.approximate
    assert r.matched.isascii() == query.isascii()  # shown in the script it was typed in


def test_an_unknown_place_is_an_error_naming_the_closest() -> None:
    with pytest.raises(NotFoundError) as e:
        places.resolve("Atlantis", "GE", GE)
    assert e.value.reason == "PLACE_NOT_FOUND"
    assert "Atlantis" in e.value.message and e.value.metadata["suggestions"]
    assert len(e.value.metadata["suggestions"].split(", ")) == places.SUGGESTIONS


def test_an_unknown_subdivision_code_is_refused_when_the_gazetteer_lists_codes() -> None:
    with pytest.raises(NotFoundError):
        places.resolve("GE-ZZ", "GE", GE)
    with pytest.raises(InvalidArgumentError) as e:
        places.resolve("AZ-BA", "GE", GE)
    assert e.value.reason == "PLACE_OUTSIDE_MEMBER"
    # a member without a gazetteer: codes are taken as given
    assert places.resolve("KZ-AST", "KZ", []).subdivision == "KZ-AST"


def test_two_places_of_one_name_are_ambiguous() -> None:
    twins = GE + names("members/GE/places/other-batumi", PLACE_MUNICIPALITY, "GE-SZ", "Batumi")
    with pytest.raises(InvalidArgumentError) as e:
        places.resolve("Batumi", "GE", twins)
    assert e.value.reason == "PLACE_AMBIGUOUS"
    assert "GE-AJ" in e.value.message and "GE-SZ" in e.value.message


def test_a_coverage_name_the_gazetteer_lacks_still_resolves() -> None:
    r = places.resolve("Kobuleti", "GE", GE)
    assert (r.level, r.subdivision, r.record) == ("municipality", "GE-AJ", "")


def test_a_typo_between_two_close_places_is_not_guessed() -> None:
    near = names("a", PLACE_MUNICIPALITY, "GE-AJ", "Karta") + names("b", PLACE_MUNICIPALITY, "GE-SZ", "Kartu")
    with pytest.raises(NotFoundError):
        places.resolve("Kartx", "GE", near)


def test_empty_and_postal() -> None:
    assert places.resolve("", "GE", GE).level == "national"
    r = places.resolve("6010", "GE", GE)
    assert (r.level, r.postal_code) == ("postal_code", "6010")


def test_a_typo_of_a_city_named_like_its_subdivision_is_the_city() -> None:
    r = places.resolve("Tbilis", "GE", GE)
    assert (r.record, r.approximate) == ("members/GE/places/tbilisi", True)
