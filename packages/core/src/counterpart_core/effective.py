"""Which version of a record answers at an instant ("as of"), by effective dates and publication.

A record may carry an effective period (``effective``: takes effect from ``start_time``, no
longer in effect from ``end_time``; either may be unset). An office that takes over a region
on 1 January can so be published in December without changing December's answers.

The rule, for one name, over its versions v (log entries, deletions included):
start(v) is v's explicit start_time, or its publish_time when it has none (a deletion's start
is its publish_time). At instant T, knowing the versions published by P, the version that
answers is the greatest by (start(v), seq) among those with publish_time <= P and
start(v) <= T; the record exists at T when that version is not a deletion and its end_time
is unset or later than T.

Two readings: IN_EFFECT ("in effect then", today's knowledge: P = now, so a retroactive
correction counts) and PUBLISHED ("published by then", what the directory said at T: P = T).
Pure functions, shared by the node (which answers) and the client (which checks).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from google.protobuf.message import Message

from counterpart_core.timeutil import from_timestamp

IN_EFFECT = "in_effect"
PUBLISHED = "published"

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_LOCAL_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")


@dataclass(frozen=True)
class Version:
    """What the rule needs of one log entry of a name."""

    seq: int
    publish_time: datetime
    start_time: datetime | None = None  # explicit start; None: from its publication
    end_time: datetime | None = None
    deleted: bool = False

    @property
    def start(self) -> datetime:
        return self.publish_time if self.deleted or self.start_time is None else self.start_time


def period_of(record: Message | None) -> tuple[datetime | None, datetime | None]:
    """(start, end) of a record's effective period; None where unset (or no record)."""
    if record is None or not hasattr(record, "effective") or not record.HasField("effective"):
        return None, None
    eff = record.effective
    start = from_timestamp(eff.start_time) if eff.HasField("start_time") else None
    end = from_timestamp(eff.end_time) if eff.HasField("end_time") else None
    return start, end


def version_of(seq: int, publish_time: datetime, record: Message | None) -> Version:
    """The Version of an entry (``record`` None: a deletion)."""
    start, end = period_of(record)
    return Version(seq, publish_time, start, end, deleted=record is None)


def known_by(at: datetime, reading: str, now: datetime) -> datetime:
    """P of the rule: today for IN_EFFECT, the instant itself for PUBLISHED."""
    return at if reading == PUBLISHED else now


def select(versions: Iterable[Version], at: datetime, known: datetime) -> Version | None:
    """The version that answers at ``at`` knowing what was published by ``known``, or None
    when the record does not exist then (not yet in effect, deleted, or its period ended)."""
    candidates = [v for v in versions if v.publish_time <= known and v.start <= at]
    if not candidates:
        return None
    chosen = max(candidates, key=lambda v: (v.start, v.seq))
    if chosen.deleted or (chosen.end_time is not None and chosen.end_time <= at):
        return None
    return chosen


def pending(versions: Sequence[Version], now: datetime) -> Version | None:
    """The latest published version of a name when it does not take effect yet (scheduled):
    the answer shows it next to the version in effect, so the reader sees the change coming."""
    if not versions:
        return None
    latest = max(versions, key=lambda v: v.seq)
    return latest if latest.start > now else None


def boundaries(versions: Iterable[Version]) -> list[datetime]:
    """Every instant at which some answer over these versions may change (sorted, unique):
    the rule compares T only with these, so two instants between the same boundaries get
    the same answer (what keys a cached as-of view)."""
    out: set[datetime] = set()
    for v in versions:
        out.add(v.publish_time)
        out.add(v.start)
        if v.end_time is not None:
            out.add(v.end_time)
    return sorted(out)


def holds_at(version: Version, at: datetime, reading: str) -> str:
    """Why a version shown as answering at ``at`` may not (empty when it may): the check a
    client makes of each record of an as-of answer, from its signed entry alone."""
    if version.deleted:
        return "it is a deletion"
    if version.start > at:
        return f"it takes effect only from {format_instant(version.start)}"
    if version.end_time is not None and version.end_time <= at:
        return f"it is no longer in effect from {format_instant(version.end_time)}"
    if reading == PUBLISHED and version.publish_time > at:
        return f"it was published only at {format_instant(version.publish_time)}"
    return ""


def parse_instant(value: object) -> datetime:
    """A date or time from a member file or the command line, as an aware UTC datetime.

    A date alone (2027-01-01) means 00:00 UTC that day; a time without an offset
    (2026-03-01T14:00) is read as UTC; RFC 3339 with an offset is converted to UTC.
    Raises ValueError with a message a person can act on."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if not isinstance(value, str):
        # ValueError, not TypeError: callers report every unreadable value the same way
        raise ValueError(f"expected a date such as 2027-01-01, got {type(value).__name__}")  # noqa: TRY004
    text = value.strip()
    try:
        if _DATE_RE.match(text):
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        if _LOCAL_TIME_RE.match(text):
            return datetime.fromisoformat(text.replace(" ", "T")).replace(tzinfo=UTC)
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ValueError(
            f"{text!r} is not a date or time: give 2027-01-01, 2027-01-01T14:00 (UTC) or RFC 3339"
        )
    return parsed.astimezone(UTC)


def format_instant(at: datetime) -> str:
    """'2027-01-01 00:00 UTC' (seconds only when there are any)."""
    at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S UTC" if at.second or at.microsecond else "%Y-%m-%d %H:%M UTC")


def format_period(record: Message | None) -> str:
    """'in effect from 2027-01-01 00:00 UTC until …', or '' when the record has no period."""
    start, end = period_of(record)
    parts = []
    if start is not None:
        parts.append(f"from {format_instant(start)}")
    if end is not None:
        parts.append(f"until {format_instant(end)}")
    return ("in effect " + " ".join(parts)) if parts else ""
