"""A whole node on PostgreSQL: publish, verify, rebuild and answer, through the same code as SQLite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests_support_records import GOOD_RECORDS

from counterpart.v1 import directory_service_pb2 as ds
from directory_server.lookup import Directory
from directory_server.node import Node


def test_node_publishes_verifies_and_answers_on_postgres(
    make_node: Callable[..., Node], postgres_schema_url: str, tmp_path: Path
) -> None:
    node = make_node("GE", database_url=postgres_schema_url)
    assert node.store.engine.dialect.name == "postgresql"
    folder = tmp_path / "rec"
    folder.mkdir()
    (folder / "r.yaml").write_text(GOOD_RECORDS, encoding="utf-8")
    plan = node.publish(folder, b"test-passphrase")
    assert plan.appended == 5
    assert node.publish(folder, b"test-passphrase").appended == 0
    assert node.verify() == (5, [])
    assert node.rebuild() == 5
    answer = Directory(node.store, node.federation, node.clock).find_counterpart(
        ds.FindCounterpartRequest(requested_member="GE", request_type="mla.hearing.witness", place="ბათუმი")
    )
    assert answer.candidates[0].authority.name == "members/GE/authorities/ajara"
