"""Running a node for real: one process per data directory and per port unless several are
asked for on purpose, no serving on an expired trust root, a node.toml that round-trips any
value, and Prometheus metrics scraped over HTTP from a real node (DESIGN §9)."""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
import threading
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from conftest import PASSPHRASE, Federation  # type: ignore[import-not-found, unused-ignore]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hostile_peer import HostilePeer, forge_signature  # type: ignore[import-not-found, unused-ignore]
from prometheus_client.parser import text_string_to_metric_families
from tests_support_cluster import wait_for
from tests_support_records import GOOD_RECORDS

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import directory_service_pb2_grpc as ds_grpc
from counterpart_core import signing
from counterpart_core.timeutil import from_timestamp
from directory_server.cli import main
from directory_server.config import CONFIG_NAME, NodeConfig, load_config
from directory_server.node import Node
from directory_server.service.server import NodeServer

ENV = {"COUNTERPART_KEY_PASSPHRASE": PASSPHRASE.decode()}


def counterpart_node() -> str:
    return str(Path(sys.executable).parent / "counterpart-node")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """`counterpart-node serve` in a process of its own; its stderr collected line by line."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [counterpart_node(), "serve", "--data-dir", str(data_dir), "--no-heartbeat", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return " ".join("".join(self.lines).split())  # rich wraps long messages: compare unwrapped

    def serving(self) -> dict[str, object] | None:
        """The "serving" log line, once the node logged it."""
        for line in list(self.lines):
            if line.startswith("{") and json.loads(line).get("message") == "serving":
                return dict(json.loads(line))
        return None

    def wait_serving(self, timeout: float = 30.0) -> dict[str, object]:
        wait_for(lambda: self.serving() is not None or self.proc.poll() is not None, timeout, "the node to serve")
        line = self.serving()
        assert line is not None, f"exited {self.proc.returncode} without serving: {self.stderr}"
        return line

    def wait_exit(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.wait_exit(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait_exit(5)


@pytest.fixture
def serves() -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(data_dir: Path, *args: str) -> Serve:
        s = Serve(data_dir, *args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def node_dir(make_node: Callable[..., Node]) -> Path:
    """A GE node's data directory (federation installed, plaintext loopback), not open."""
    node = make_node("GE", ["GE", "AZ"])
    config = replace(node.config, listen=f"127.0.0.1:{free_port()}")
    (config.data_dir / CONFIG_NAME).write_text(config.to_toml(), encoding="utf-8")
    node.close()
    return config.data_dir


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status)


# --- one process per port ----------------------------------------------------------------


@pytest.mark.parametrize("reuseport", [True, False], ids=["held-with-SO_REUSEPORT", "held-plainly"])
def test_serve_on_a_port_in_use_fails_and_says_so(node_dir: Path, serves: Callable[..., Serve], reuseport: bool) -> None:
    """A port held by another socket (with SO_REUSEPORT, as another gRPC server holds it, the
    kernel would have split the traffic between the two) is refused with a clear message."""
    with socket.socket() as holder:
        if reuseport:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        serve = serves(node_dir, "--listen", f"127.0.0.1:{port}")
        assert serve.wait_exit() == 1
    assert f"cannot listen on 127.0.0.1:{port}: address in use" in serve.stderr
    assert "Traceback" not in serve.stderr


# --- one process per data directory ------------------------------------------------------


def test_a_second_process_on_the_data_directory_names_the_holder(node_dir: Path, serves: Callable[..., Serve]) -> None:
    first = serves(node_dir, "--metrics-listen", "127.0.0.1:0")
    line = first.wait_serving()
    assert health(str(line["address"])) == health_pb2.HealthCheckResponse.SERVING
    # the flag reaches the real process: its metrics answer over HTTP
    body = urllib.request.urlopen(f"http://{line['metrics_address']}/metrics", timeout=10).read().decode()
    assert 'counterpart_member_log_entries{member="GE"}' in body

    second = serves(node_dir, "--listen", f"127.0.0.1:{free_port()}")
    assert second.wait_exit() == 1
    holder = f"`counterpart-node serve`, PID {first.pid} on host {socket.gethostname()}"
    assert f"another process holds the node in {node_dir}: {holder}" in second.stderr
    assert "--allow-several" in second.stderr and "Traceback" not in second.stderr
    # commands that would write beside it are refused too; `verify` only reads
    for command, why in (("rebuild", "rebuild rewrites what a serving node reads"),
                         ("heartbeat", "re-signs its checkpoint by itself")):
        r = CliRunner().invoke(main, [command, "--data-dir", str(node_dir)], env=ENV)
        assert r.exit_code == 1 and f"PID {first.pid}" in r.output and why in " ".join(r.output.split()), r.output
    assert CliRunner().invoke(main, ["verify", "--data-dir", str(node_dir)]).exit_code == 0
    assert first.proc.poll() is None and health(str(line["address"])) == health_pb2.HealthCheckResponse.SERVING

    assert first.stop() == 0
    r = CliRunner().invoke(main, ["rebuild", "--data-dir", str(node_dir)])  # the lock went with the process
    assert r.exit_code == 0, r.output


def test_several_processes_of_one_node_only_on_purpose(node_dir: Path, serves: Callable[..., Serve]) -> None:
    address = load_config(node_dir).listen
    one = serves(node_dir, "--allow-several")
    assert one.wait_serving()["address"] == address
    two = serves(node_dir, "--allow-several")
    assert two.wait_serving()["address"] == address  # the same port, shared on purpose
    for _ in range(4):
        assert health(address) == health_pb2.HealthCheckResponse.SERVING
    assert one.proc.poll() is None and two.proc.poll() is None
    # a process that expects to serve alone is refused while they run
    alone = serves(node_dir, "--listen", f"127.0.0.1:{free_port()}")
    assert alone.wait_exit() == 1
    assert "another process holds the node" in alone.stderr and "--allow-several" in alone.stderr
    assert one.stop() == 0 and two.stop() == 0


# --- the trust root ----------------------------------------------------------------------


def test_serve_refuses_an_expired_federation_document(
    tmp_path: Path, federation: Federation, serves: Callable[..., Serve]
) -> None:
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    data_dir = tmp_path / "ge"
    data_dir.mkdir()
    config = NodeConfig(data_dir=data_dir, member="GE", listen=f"127.0.0.1:{free_port()}")
    (data_dir / CONFIG_NAME).write_text(config.to_toml(), encoding="utf-8")
    signing.write_key_file(config.key_path, federation.key("GE"), PASSPHRASE)
    node = Node(config, clock=lambda: past)
    node.install_federation(federation.document(["GE"], past, valid_for=timedelta(days=1)))  # valid then
    node.close()

    serve = serves(data_dir)
    assert serve.wait_exit() == 1
    assert "the federation document (test version 1) expired at" in serve.stderr
    assert "Ask the federation secretariat for the next version" in serve.stderr
    assert "counterpart-node federation install FILE" in serve.stderr and "Traceback" not in serve.stderr
    assert serve.serving() is None


# --- node.toml -----------------------------------------------------------------------------


def test_init_writes_a_config_that_reads_back_whatever_it_holds(tmp_path: Path) -> None:
    """A database URL with a backslash, double and single quotes, a TOML comment sign and
    non-ASCII letters; before, init wrote it between quotes by hand and nothing could read it."""
    odd = tmp_path / 'base\\dir "quoted" it\'s #1 Тбилиси ბათუმი'
    odd.mkdir()
    url = f"sqlite:///{odd}/node.sqlite3"
    data = tmp_path / "ge"
    r = CliRunner().invoke(main, ["init", "--member", "GE", "--data-dir", str(data), "--database-url", url], env=ENV)
    assert r.exit_code == 0, r.output
    assert tomllib.loads((data / CONFIG_NAME).read_text(encoding="utf-8"))["database_url"] == url
    config = load_config(data)
    assert config.database_url == url and config.member == "GE"
    node = Node(config)  # the database init created, at that path
    node.close()
    assert (odd / "node.sqlite3").exists()


# --- progress ----------------------------------------------------------------------------


def run_on_terminal(*args: str) -> tuple[int, str, str]:
    """Run counterpart-node with stderr on a pseudo-terminal: (exit code, stdout, what the terminal got)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    master, slave = pty.openpty()
    proc = subprocess.Popen([counterpart_node(), *args], stdout=subprocess.PIPE, stderr=slave, env={**env, "TERM": "xterm"})
    os.close(slave)
    terminal = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process closed its side
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    return proc.wait(timeout=30), out, terminal.decode(errors="replace")


def test_verify_and_rebuild_show_progress_on_a_terminal_only(make_node: Callable[..., Node], tmp_path: Path) -> None:
    node = make_node("GE")
    records = tmp_path / "records"
    records.mkdir()
    (records / "r.yaml").write_text(GOOD_RECORDS, encoding="utf-8")
    node.publish(records, PASSPHRASE)
    size, data_dir = node.store.log_size("GE"), str(node.config.data_dir)
    node.close()
    for command, phase in (("verify", "checking signatures and roots"), ("rebuild", "verifying the signed entries")):
        code, out, terminal = run_on_terminal(command, "--data-dir", data_dir)
        assert code == 0, terminal
        assert phase in terminal and f"/{size}" in terminal and "━" in terminal, terminal  # of the entries
        assert phase not in out  # stdout keeps only the result, for scripts
        piped = subprocess.run(
            [counterpart_node(), command, "--data-dir", data_dir], capture_output=True, text=True, check=False
        )
        assert piped.returncode == 0 and phase not in piped.stderr and "━" not in piped.stderr + piped.stdout


# --- metrics ---------------------------------------------------------------------------------


def samples(address: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Scrape /metrics over HTTP: {(sample name, labels): value}."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


def value(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return scraped.get((name, frozenset(labels.items())))


def test_metrics_of_a_real_node_scraped_over_http(
    make_node: Callable[..., Node], sample_dir: Callable[[str], Path], clock: object
) -> None:
    members = ["GE", "AZ"]
    ge = make_node("GE", members)
    ge.publish(sample_dir("GE"), PASSPHRASE)
    az = make_node("AZ", members)
    origin = NodeServer(ge, "127.0.0.1:0", access_log=False)
    origin.start()
    liar = HostilePeer(ge, "GE").start()  # shows GE's checkpoint with a forged signature
    liar.checkpoints = [forge_signature(ge.store.checkpoint("GE") or b"")]
    server = NodeServer(
        az, "127.0.0.1:0", access_log=False, peers=[origin.address, liar.address], sync_interval=30,
        metrics_address="127.0.0.1:0",
    )
    server.start()
    channel = grpc.insecure_channel(server.address)
    try:
        assert server.sync is not None
        sync = server.sync
        wait_for(lambda: az.store.checkpoint("GE") == ge.store.checkpoint("GE"), 30, "AZ to sync GE")
        wait_for(lambda: liar.address in sync.last_reports and origin.address in sync.last_reports, 30, "both passes")
        stub = ds_grpc.DirectoryServiceStub(channel)
        for _ in range(3):
            stub.GetAuthority(ds.GetAuthorityRequest(name="members/GE/authorities/ajara-po"))
        with pytest.raises(grpc.RpcError):
            stub.GetAuthority(ds.GetAuthorityRequest(name="members/GE/authorities/nowhere"))
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        az.store.audit("GE:prosecutor.7", "Get contacts", ["members/GE/contacts/duty"], az.clock())

        m = samples(server.metrics_address)
        get = "counterpart.v1.DirectoryService/GetAuthority"
        assert value(m, "counterpart_rpc_requests_total", method=get, code="OK") == 3
        assert value(m, "counterpart_rpc_requests_total", method=get, code="NOT_FOUND") == 1
        assert value(m, "counterpart_rpc_requests_total", method="grpc.health.v1.Health/Check", code="OK") == 1
        assert value(m, "counterpart_rpc_duration_seconds_count", method=get, code="OK") == 3
        assert value(m, "counterpart_rpc_duration_seconds_bucket", method=get, code="OK", le="+Inf") == 3
        assert (value(m, "counterpart_rpc_duration_seconds_sum", method=get, code="OK") or 0) > 0

        size = ge.store.log_size("GE")
        assert (value(m, "counterpart_sync_passes_total", peer=origin.address, outcome="ok") or 0) >= 1
        assert (value(m, "counterpart_sync_passes_total", peer=liar.address, outcome="rejected") or 0) >= 1
        assert value(m, "counterpart_sync_entries_pulled_total", member="GE") == size
        assert (value(m, "counterpart_sync_rejections_total", reason="BAD_SIGNATURE", peer=liar.address) or 0) >= 1

        assert value(m, "counterpart_member_log_entries", member="GE") == size
        assert value(m, "counterpart_member_log_entries", member="AZ") == 0
        assert value(m, "counterpart_member_checkpoint_stale", member="GE") == 0
        age = value(m, "counterpart_member_checkpoint_age_seconds", member="GE")
        assert age is not None and age >= 0
        assert value(m, "counterpart_member_checkpoint_age_seconds", member="AZ") is None  # AZ has signed nothing
        assert value(m, "counterpart_member_equivocations", member="GE") == 0
        assert value(m, "counterpart_members_only_records_served_total") == 1
        doc = az.federation().document
        assert value(m, "counterpart_federation_version", federation="test") == 1
        assert value(m, "counterpart_federation_expiry_timestamp_seconds", federation="test") == (
            from_timestamp(doc.expire_time).timestamp()
        )
        assert value(m, "counterpart_store_up") == 1
        assert not any(name.endswith("_created") for name, _ in m)

        # the gauges follow the store: a checkpoint past its expiry shows as stale at the next scrape
        clock.advance(timedelta(days=8))  # type: ignore[attr-defined]
        assert value(samples(server.metrics_address), "counterpart_member_checkpoint_stale", member="GE") == 1
    finally:
        channel.close()
        server.stop(grace=0)
        origin.stop(grace=0)
        liar.stop()
    with pytest.raises(OSError):  # the metrics endpoint stops with the node
        urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=2)


def test_a_metrics_port_in_use_is_refused(make_node: Callable[..., Node]) -> None:
    node = make_node("GE")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(Exception) as e:
            NodeServer(node, "127.0.0.1:0", access_log=False, metrics_address=f"127.0.0.1:{port}")
    assert str(e.value).startswith(f"cannot listen on 127.0.0.1:{port} (metrics_listen): address in use")
    assert getattr(e.value, "reason", None) == "ADDRESS_IN_USE"
