"""docs/places.md must be what scripts/places_table.py generates from the sample gazetteers."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def _places_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("places_table", REPO / "scripts" / "places_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["places_table"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_docs_places_is_fresh() -> None:
    fresh = _places_table().render(REPO / "sample_data")
    committed = (REPO / "docs" / "places.md").read_text(encoding="utf-8")
    assert committed == fresh, "docs/places.md is stale; run `python scripts/places_table.py`"


def test_every_member_has_a_gazetteer_and_no_name_leads_to_two_places() -> None:
    table = _places_table()
    members = table.load(REPO / "sample_data")
    with_records = sorted(p.parent.name for p in (REPO / "sample_data").glob("*/authorities.yaml"))
    assert sorted(members) == with_records
    for code, (_, places) in members.items():
        assert places, f"{code} publishes no places"
        assert any(p.capital for p in places), f"{code} names no capital"
        assert table.ambiguities(places) == [], f"{code}: {table.ambiguities(places)}"


def test_scripts_are_told_apart() -> None:
    script_of = _places_table().script_of
    assert script_of("ბათუმი") == "Georgian"
    assert script_of("Батуми") == "Cyrillic"
    assert script_of("Oʻzbekiston") == "Latin"
    assert script_of("Երևան") == "Armenian"
    assert script_of("الادعاء العام") == "Arabic"
