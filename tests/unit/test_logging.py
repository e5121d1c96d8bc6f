"""Structured logs: one JSON object per line, with the fields passed as `extra`."""

from __future__ import annotations

import json
import logging

from directory_server.service.server import JsonFormatter


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
