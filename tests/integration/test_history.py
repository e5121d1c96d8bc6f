"""Every version of a record (AIP-162 revisions), newest first, deletions included, each
proven; members-only versions only for those who may see them; a node that misstates a
version is caught by the client."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from conftest import PASSPHRASE, Clock  # type: ignore[import-not-found, unused-ignore]

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import directory_service_pb2_grpc as ds_grpc
from counterpart_core import federation as fed
from directory_client.cli import main as client_main
from directory_client.errors import VerificationFailed
from directory_client.verify import verify_response
from directory_server.node import Node
from directory_server.service.server import NodeServer

RULE = "members/GE/rules/mla.general"


def history_of(node: Node, tmp_path: Path, clock: Clock, sample_dir: Callable[[str], Path]) -> Path:
    """GE publishes its sample, then changes a rule, then deletes it (three versions)."""
    records = sample_dir("GE")
    node.publish(records, PASSPHRASE)
    rules = records / "rules.yaml"
    text = rules.read_text(encoding="utf-8")
    clock.advance(timedelta(days=30))
    start = text.index("- request_type: mla.general\n")
    end = text.index("- request_type:", start + 1)
    block = text[start:end].replace("possible: POSSIBILITY_YES", "possible: POSSIBILITY_PARTLY")
    assert block != text[start:end], "the sample rule changed shape: pick another field to change"
    rules.write_text(text[:start] + block + text[end:], encoding="utf-8")
    node.publish(records, PASSPHRASE)
    clock.advance(timedelta(days=30))
    start = text.index("- request_type: mla.general\n")
    end = text.index("- request_type:", start + 1)
    rules.write_text(text[:start] + text[end:], encoding="utf-8")
    node.publish(records, PASSPHRASE, prune=True)
    return records


def test_every_version_newest_first_with_the_deletion(
    make_node: Callable[..., Node], sample_dir: Callable[[str], Path], clock: Clock, tmp_path: Path,
) -> None:
    node = make_node("GE")
    history_of(node, tmp_path, clock, sample_dir)
    server = NodeServer(node, "127.0.0.1:0", access_log=False)
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            resp = ds_grpc.DirectoryServiceStub(channel).ListRecordRevisions(ds.ListRecordRevisionsRequest(name=RULE))
            assert [r.deleted for r in resp.revisions] == [True, False, False]
            seqs = [r.seq for r in resp.revisions]
            assert seqs == sorted(seqs, reverse=True)
            assert [r.revision_name for r in resp.revisions] == [f"{RULE}@{s}" for s in seqs]
            times = [r.publish_time.ToDatetime() for r in resp.revisions]
            assert times[0] > times[1] > times[2]
            verified = verify_response(node.federation(), resp, clock())
            assert verified.records_checked == 3
            # paging: older versions after the token
            first = ds_grpc.DirectoryServiceStub(channel).ListRecordRevisions(
                ds.ListRecordRevisionsRequest(name=RULE, page_size=1))
            rest = ds_grpc.DirectoryServiceStub(channel).ListRecordRevisions(
                ds.ListRecordRevisionsRequest(name=RULE, page_token=first.next_page_token))
            assert [r.seq for r in [*first.revisions, *rest.revisions]] == seqs
            # a lie about a version is caught: deletion, time, position
            for tamper in ("deleted", "time", "name"):
                forged = ds.ListRecordRevisionsResponse()
                forged.CopyFrom(resp)
                if tamper == "deleted":
                    forged.revisions[0].deleted = False
                elif tamper == "time":
                    forged.revisions[1].publish_time.seconds += 86400
                else:
                    forged.revisions[2].revision_name = f"{RULE}@{seqs[0]}"
                with pytest.raises(VerificationFailed):
                    verify_response(node.federation(), forged, clock())
            with pytest.raises(grpc.RpcError) as e:
                ds_grpc.DirectoryServiceStub(channel).ListRecordRevisions(
                    ds.ListRecordRevisionsRequest(name="members/GE/rules/no-such.type"))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop(grace=0)


def test_members_only_versions_are_for_members_only(served: tuple[NodeServer, grpc.Channel]) -> None:
    stub = ds_grpc.DirectoryServiceStub(served[1])
    with pytest.raises(grpc.RpcError) as e:
        stub.ListRecordRevisions(ds.ListRecordRevisionsRequest(name="members/GE/contacts/duty-24-7"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND  # as if it never existed


def test_counterpart_history_prints_each_version(
    make_node: Callable[..., Node], sample_dir: Callable[[str], Path], clock: Clock, tmp_path: Path,
) -> None:
    node = make_node("GE")
    history_of(node, tmp_path, clock, sample_dir)
    server = NodeServer(node, "127.0.0.1:0", access_log=False)
    server.start()
    try:
        envelope = node.store.federation_envelope()
        assert envelope is not None
        fed.write_file(tmp_path / "federation.json", envelope)
        env = {"COUNTERPART_HOME": str(tmp_path / "home"), "COLUMNS": "80", "COUNTERPART_SERVER": server.address}
        assert CliRunner().invoke(client_main, ["trust", str(tmp_path / "federation.json")], env=env).exit_code == 0
        result = CliRunner().invoke(client_main, ["history", RULE], env=env)
        assert result.exit_code == 0, result.output
        doc = json.loads(CliRunner().invoke(client_main, ["history", RULE, "--format", "json"], env=env).stdout)
        for r in doc["answer"]["revisions"]:
            assert any(line.strip() == r["revision_name"] for line in result.output.splitlines())
        assert "deleted" in result.output and "verified" in result.output
        assert all(len(line) <= 80 for line in result.output.splitlines())
    finally:
        server.stop(grace=0)
