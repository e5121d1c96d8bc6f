"""The as-of selection rule (counterpart_core.effective): which version answers at an instant."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from counterpart.v1 import records_pb2
from counterpart_core import effective
from counterpart_core.effective import IN_EFFECT, PUBLISHED, Version, known_by, select
from counterpart_core.timeutil import to_timestamp


def t(text: str) -> datetime:
    return effective.parse_instant(text)


NOW = t("2027-06-01")


def answer(versions: list[Version], at: str, reading: str) -> int | None:
    chosen = select(versions, t(at), known_by(t(at), reading, NOW))
    return None if chosen is None else chosen.seq


def test_scheduled_version_keeps_the_old_one_in_december_and_answers_from_january() -> None:
    old = Version(1, t("2026-03-01"))
    new = Version(2, t("2026-12-10"), start_time=t("2027-01-01"))
    for reading in (IN_EFFECT, PUBLISHED):
        assert answer([old, new], "2026-12-15", reading) == 1
        assert answer([old, new], "2026-12-31T23:59:59Z", reading) == 1
        assert answer([old, new], "2027-01-01", reading) == 2  # the start instant belongs to it
        assert answer([old, new], "2027-03-01", reading) == 2
    assert answer([old, new], "2026-02-01", IN_EFFECT) is None  # before anything took effect


def test_retroactive_correction_counts_in_effect_but_not_for_what_was_published_then() -> None:
    old = Version(1, t("2026-01-10"))
    correction = Version(2, t("2026-03-05"), start_time=t("2026-02-01"))
    assert answer([old, correction], "2026-02-15", IN_EFFECT) == 2  # today's knowledge
    assert answer([old, correction], "2026-02-15", PUBLISHED) == 1  # what the directory said then
    assert answer([old, correction], "2026-01-20", IN_EFFECT) == 1
    assert answer([old, correction], "2026-03-10", PUBLISHED) == 2


def test_end_of_period_and_deletions() -> None:
    closing = Version(1, t("2026-01-01"), end_time=t("2027-01-01"))
    assert answer([closing], "2026-12-31T23:59:59Z", IN_EFFECT) == 1
    assert answer([closing], "2027-01-01", IN_EFFECT) is None  # end: no longer in effect from
    deleted = [Version(1, t("2026-01-01")), Version(2, t("2026-05-01"), deleted=True)]
    assert answer(deleted, "2026-04-30", IN_EFFECT) == 1
    assert answer(deleted, "2026-05-01", IN_EFFECT) is None
    # a deletion's start is its publication, even if the record it deletes was dated
    dated_delete = [Version(1, t("2026-01-01")), Version(2, t("2026-05-01"), start_time=t("2026-02-01"), deleted=True)]
    assert answer(dated_delete, "2026-03-01", IN_EFFECT) == 1


def test_ties_on_start_go_to_the_later_entry() -> None:
    a = Version(3, t("2026-01-01"), start_time=t("2026-06-01"))
    b = Version(5, t("2026-02-01"), start_time=t("2026-06-01"))
    assert answer([a, b], "2026-07-01", IN_EFFECT) == 5
    assert answer([b, a], "2026-07-01", IN_EFFECT) == 5


def test_pending_is_the_latest_version_when_it_starts_later() -> None:
    old = Version(1, t("2026-03-01"))
    new = Version(2, t("2026-12-10"), start_time=t("2027-01-01"))
    pending = effective.pending([old, new], t("2026-12-15"))
    assert pending is not None and pending.seq == 2
    assert effective.pending([old, new], t("2027-01-02")) is None
    assert effective.pending([old], t("2026-12-15")) is None


def test_holds_at_names_what_is_wrong() -> None:
    v = Version(2, t("2026-12-10"), start_time=t("2027-01-01"), end_time=t("2028-01-01"))
    assert "takes effect only from 2027-01-01 00:00 UTC" in effective.holds_at(v, t("2026-12-20"), IN_EFFECT)
    assert effective.holds_at(v, t("2027-02-01"), IN_EFFECT) == ""
    assert "no longer in effect" in effective.holds_at(v, t("2028-01-01"), IN_EFFECT)
    retro = Version(3, t("2026-03-05"), start_time=t("2026-02-01"))
    assert effective.holds_at(retro, t("2026-02-15"), IN_EFFECT) == ""
    assert "published only at" in effective.holds_at(retro, t("2026-02-15"), PUBLISHED)


def test_version_of_reads_the_record_period() -> None:
    rec = records_pb2.Authority(name="members/GE/authorities/x")
    rec.effective.start_time.CopyFrom(to_timestamp(t("2027-01-01")))
    v = effective.version_of(4, t("2026-12-01"), rec)
    assert (v.start_time, v.end_time, v.deleted, v.start) == (t("2027-01-01"), None, False, t("2027-01-01"))
    assert effective.version_of(5, t("2026-12-02"), None).deleted
    assert effective.format_period(rec) == "in effect from 2027-01-01 00:00 UTC"


@pytest.mark.parametrize(("text", "expected"), [
    ("2027-01-01", datetime(2027, 1, 1, tzinfo=UTC)),
    ("2026-03-01T14:00", datetime(2026, 3, 1, 14, 0, tzinfo=UTC)),
    ("2026-03-01T14:00:00Z", datetime(2026, 3, 1, 14, 0, tzinfo=UTC)),
    ("2026-03-01T16:00:00+02:00", datetime(2026, 3, 1, 14, 0, tzinfo=UTC)),
])
def test_parse_instant(text: str, expected: datetime) -> None:
    assert effective.parse_instant(text) == expected


@pytest.mark.parametrize("text", ["2026-13-01", "yesterday", "2026-03-01T25:00", ""])
def test_parse_instant_refuses_what_is_not_a_time(text: str) -> None:
    with pytest.raises(ValueError, match="is not a date or time"):
        effective.parse_instant(text)
