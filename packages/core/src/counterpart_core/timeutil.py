"""Conversions between aware datetimes and protobuf Timestamps; all times are UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2


def utcnow() -> datetime:
    return datetime.now(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_timestamp(dt: datetime) -> timestamp_pb2.Timestamp:
    """The instant as a Timestamp; a naive datetime is local time (``datetime.astimezone``).
    Exact to the microsecond, as ``Timestamp.FromDatetime``, with datetime arithmetic only
    (every answer states one: FromDatetime went through a time tuple)."""
    delta = (dt if dt.tzinfo is not None else dt.astimezone(UTC)) - _EPOCH
    return timestamp_pb2.Timestamp(seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000)


def from_timestamp(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def to_duration(td: timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(td)
    return d


def parse_duration(text: str) -> timedelta:
    """'90s', '15m', '12h', '7d' -> timedelta."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 12h or 7d")
    return timedelta(seconds=int(text[:-1]) * units[text[-1]])
