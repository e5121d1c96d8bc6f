"""Structured logs: one JSON object per line, with the fields passed as `extra`."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

from directory_server.service.server import JsonFormatter, rfc3339


def test_log_lines_are_json_with_extra_fields() -> None:
    record = logging.LogRecord("counterpart.node", logging.INFO, __file__, 1, "rpc", None, None)
    record.method = "/counterpart.v1.DirectoryService/FindCounterpart"
    record.code = "OK"
    record.ms = 4.2
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "info" and data["message"] == "rpc" and data["logger"] == "counterpart.node"
    assert (data["method"], data["code"], data["ms"]) == ("/counterpart.v1.DirectoryService/FindCounterpart", "OK", 4.2)
    assert "args" not in data and "msg" not in data  # LogRecord internals stay out


def test_log_time_is_rfc3339_utc_with_milliseconds() -> None:
    record = logging.LogRecord("counterpart.node", logging.INFO, __file__, 1, "serving", None, None)
    record.created = datetime(2026, 11, 30, 20, 8, 42, 123999, tzinfo=UTC).timestamp()
    stamp = json.loads(JsonFormatter().format(record))["time"]
    assert stamp == "2026-11-30T20:08:42.123Z"  # milliseconds cut, not rounded up into the next second
    assert datetime.fromisoformat(stamp) == datetime(2026, 11, 30, 20, 8, 42, 123000, tzinfo=UTC)


def test_log_time_of_now_has_zone_and_milliseconds() -> None:
    record = logging.LogRecord("counterpart.node", logging.INFO, __file__, 1, "rpc", None, None)
    stamp = json.loads(JsonFormatter().format(record))["time"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp), stamp
    assert abs(datetime.fromisoformat(stamp).timestamp() - record.created) < 0.001
    assert rfc3339(0.9995) == "1970-01-01T00:00:00.999Z"
