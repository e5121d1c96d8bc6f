"""node.toml, overridden by COUNTERPART_* variables and then by flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from directory_server.config import CONFIG_NAME, NodeConfig, load_config
from directory_server.domain.errors import ConfigurationError


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
