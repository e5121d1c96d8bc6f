"""node.toml, overridden by COUNTERPART_* variables and then by flags."""

from __future__ import annotations

import tomllib
from dataclasses import fields, replace
from pathlib import Path

import pytest

from counterpart_core.errors import ConfigurationError
from directory_server.config import CONFIG_NAME, NodeConfig, load_config


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / CONFIG_NAME).write_text(text, encoding="utf-8")
    return tmp_path


def test_file_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write(tmp_path, NodeConfig(data_dir=tmp_path, member="GE", listen="127.0.0.1:7001").to_toml())
    assert load_config(data).listen == "127.0.0.1:7001"
    monkeypatch.setenv("COUNTERPART_LISTEN", "127.0.0.1:7002")
    monkeypatch.setenv("COUNTERPART_WORKERS", "8")
    config = load_config(data)
    assert (config.listen, config.workers_count) == ("127.0.0.1:7002", 8)
    assert load_config(data, {"listen": "127.0.0.1:7003"}).listen == "127.0.0.1:7003"
    assert config.db_url.startswith("sqlite:///") and config.db_url.endswith("node.sqlite3")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('member = "GE"\ncolour = "blue"\n', "unknown option(s) colour"),
        ('listen = "127.0.0.1:1"\n', "'member' is required"),
        ('member = "GE"\nlisten = \n', "node.toml"),
    ],
)
def test_bad_configuration_is_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as e:
        load_config(write(tmp_path, text))
    assert message in e.value.message


@pytest.mark.parametrize(("field", "value"), [("workers", "0"), ("workers", "many"), ("checkpoint_validity", "7 days")])
def test_bad_values_are_named(tmp_path: Path, field: str, value: str) -> None:
    config = load_config(write(tmp_path, f'member = "GE"\n{field} = "{value}"\n'))
    with pytest.raises(ConfigurationError) as e:
        _ = config.workers_count if field == "workers" else config.checkpoint_validity_td
    assert field in e.value.message


HOSTILE = [
    'C:\\Program Files\\counterpart\\key.pem',  # backslashes
    'postgresql+psycopg://u:pa"ss\'word@db/counterpart',  # both quotes
    'a = "b"\n[section]\nmember = "XX"',  # TOML injected into a value
    "# not a comment",
    "Тбилиси ბათუმი Երևան 東京 🙂",
    "tab\tcarriage\rnul\x00bell\x07",
    '"""\'\'\'',
    "",
]


def test_every_value_round_trips_through_node_toml(tmp_path: Path) -> None:
    """to_toml writes any value so that load_config reads back exactly it, in every field."""
    base = NodeConfig(data_dir=tmp_path, member="GE")
    for hostile in HOSTILE:
        config = replace(base, **{f.name: hostile for f in fields(NodeConfig) if f.name not in ("data_dir", "member")})
        text = config.to_toml()
        assert set(tomllib.loads(text)) == {f.name for f in fields(NodeConfig)} - {"data_dir"}  # nothing injected
        assert load_config(write(tmp_path, text)) == config, hostile


def test_processes_and_metrics_listen_are_checked(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'member = "GE"\n'))
    assert (config.several_processes, config.metrics_address) == (False, "")
    assert replace(config, processes="several").several_processes
    assert replace(config, metrics_listen="127.0.0.1:9700").metrics_address == "127.0.0.1:9700"
    with pytest.raises(ConfigurationError, match="processes"):
        _ = replace(config, processes="many").several_processes
    for bad in ("9700", "localhost", "host:port", "127.0.0.1:99999"):
        with pytest.raises(ConfigurationError, match="metrics_listen"):
            _ = replace(config, metrics_listen=bad).metrics_address
