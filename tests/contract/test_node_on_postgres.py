"""A whole node on PostgreSQL: publish, verify, rebuild and answer, through the same code as SQLite."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import postgres_url
from test_storage_contract import _postgres_available
from tests_support_records import GOOD_RECORDS

from counterpart.v1 import directory_service_pb2 as ds
from directory_server.lookup import Directory
from directory_server.node import Node


@pytest.fixture
def pg_url() -> Iterator[str]:
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    schema = f"cp_node_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_url())
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in postgres_url() else "?"
    try:
        yield f"{postgres_url()}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_node_publishes_verifies_and_answers_on_postgres(
    make_node: Callable[..., Node], pg_url: str, tmp_path: Path
) -> None:
    node = make_node("GE", database_url=pg_url)
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
