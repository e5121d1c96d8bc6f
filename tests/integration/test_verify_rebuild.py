"""`counterpart-node verify` finds any change on disk; `rebuild` re-derives the indexes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, update
from tests_support_records import GOOD_RECORDS

from directory_server.cli import main
from directory_server.node import Node
from directory_server.storage.models import CheckpointRow, EntryRow, RecordRow

PASSPHRASE = b"test-passphrase"


@pytest.fixture
def node(make_node: Callable[..., Node], tmp_path: Path) -> Node:
    n = make_node("GE")
    folder = tmp_path / "records"
    folder.mkdir()
    (folder / "r.yaml").write_text(GOOD_RECORDS, encoding="utf-8")
    n.publish(folder, PASSPHRASE)
    return n


def overwrite_envelope(node: Node, member: str, seq: int, envelope: bytes) -> None:
    """Change a stored envelope behind the node's back, as a disk fault or an intruder would."""
    with node.store.transaction() as s:
        s.execute(update(EntryRow).where(EntryRow.member == member, EntryRow.seq == seq).values(envelope=envelope))


def run_verify(node: Node) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["verify", "--data-dir", str(node.config.data_dir)])
    return result.exit_code, " ".join(result.output.split())


def test_clean_store_verifies(node: Node) -> None:
    code, output = run_verify(node)
    assert code == 0, output
    assert "checked 5 entries: OK" in output


@pytest.mark.parametrize("seq", [1, 3, 5])
def test_every_single_byte_change_of_an_envelope_is_named(node: Node, seq: int) -> None:
    original = node.store.envelope("GE", seq)
    assert original is not None
    # flip one byte at several positions: in the payload, the type, and the signature
    for position in (2, len(original) // 2, len(original) - 3):
        altered = bytearray(original)
        altered[position] ^= 0x01
        overwrite_envelope(node, "GE", seq, bytes(altered))
        code, output = run_verify(node)
        assert code == 1, output
        assert f"GE seq {seq}" in output
        overwrite_envelope(node, "GE", seq, original)
    assert run_verify(node)[0] == 0


def test_dropped_entry_is_reported(node: Node) -> None:
    with node.store.transaction() as s:
        s.execute(delete(EntryRow).where(EntryRow.member == "GE", EntryRow.seq == 5))
    code, output = run_verify(node)
    assert code == 1
    assert "GE" in output and "CHECKPOINT_SIZE_MISMATCH" in output


def test_altered_checkpoint_root_is_reported(node: Node) -> None:
    with node.store.transaction() as s:
        s.execute(update(CheckpointRow).where(CheckpointRow.member == "GE").values(envelope=b"\x0a\x03abc"))
    code, output = run_verify(node)
    assert code == 1 and "checkpoint" in output


def test_rebuild_restores_lost_indexes(node: Node) -> None:
    with node.store.transaction() as s:
        s.execute(delete(RecordRow))
    assert node.store.record_row("members/GE/authorities/pgo") is None
    result = CliRunner().invoke(main, ["rebuild", "--data-dir", str(node.config.data_dir)])
    assert result.exit_code == 0, result.output
    assert "rebuilt indexes of 5 current records" in result.output
    row = node.store.record_row("members/GE/authorities/pgo")
    assert row is not None and row.seq == 1


def test_rebuild_refuses_a_tampered_store(node: Node) -> None:
    original = node.store.envelope("GE", 2)
    assert original is not None
    overwrite_envelope(node, "GE", 2, original[:-1] + bytes([original[-1] ^ 1]))
    result = CliRunner().invoke(main, ["rebuild", "--data-dir", str(node.config.data_dir)])
    assert result.exit_code == 1
    assert "signature" in result.output
    assert node.store.record_row("members/GE/authorities/pgo") is not None  # nothing was dropped
