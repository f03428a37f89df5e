from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medsec.agent.config import AgentConfig
from medsec.errors import ConfigError

GOOD: dict[str, Any] = {
    "server_url": "https://updates.example.com/",
    "serial": "SN-0001",
    "hardware_id": "hw-rev-b",
}


def write_config(root: Path, data: Any) -> None:
    path = root / "etc/medsec/agent.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_minimal_config_gets_defaults_and_paths_under_root(tmp_path: Path) -> None:
    write_config(tmp_path, GOOD)
    config = AgentConfig.load(tmp_path)
    assert config.server_url == "https://updates.example.com"
    assert config.checkin_interval_seconds == 60
    assert config.version_file == tmp_path / "etc/medsec/version"
    assert config.enrollment_token_file is None
    assert config.layout.key_file == tmp_path / "var/lib/medsec/device.key"
    assert config.layout.state_file == tmp_path / "var/lib/medsec/state.json"
    assert config.layout.access_log_dir == tmp_path / "var/log/medsec/access-log"
    assert config.log_origin == "medsec-device/SN-0001"


def test_relative_paths_resolve_under_the_device_root(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        {**GOOD, "enrollment_token_file": "etc/medsec/token", "version_file": "/opt/version", "ca_file": "ca.pem"},
    )
    config = AgentConfig.load(tmp_path)
    assert config.enrollment_token_file == tmp_path / "etc/medsec/token"
    assert config.version_file == Path("/opt/version")
    assert config.ca_file == tmp_path / "ca.pem"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"server_url": None}, "server_url"),
        ({"server_url": "ftp://example.com"}, "server_url"),
        ({"server_url": "https://"}, "server_url"),
        ({"server_url": "https://user:pw@example.com"}, "server_url"),
        ({"server_url": "https://example.com:99999"}, "server_url"),
        ({"serial": ""}, "serial"),
        ({"serial": "SN/../../etc"}, "serial"),
        ({"serial": 42}, "serial"),
        ({"hardware_id": "a\nb"}, "hardware_id"),
        ({"hardware_id": "x" * 300}, "hardware_id"),
        ({"checkin_interval_seconds": 0}, "checkin_interval_seconds"),
        ({"checkin_interval_seconds": "60"}, "checkin_interval_seconds"),
        ({"checkin_interval_seconds": True}, "checkin_interval_seconds"),
        ({"checkin_interval_seconds": 1.5}, "checkin_interval_seconds"),
        ({"enrollment_token_file": 7}, "enrollment_token_file"),
        ({"version_file": ""}, "version_file"),
        ({"retry_max_seconds": 0}, "retry_max_seconds"),
        ({"retry_initial_seconds": 10, "retry_max_seconds": 5}, "retry_max_seconds"),
        ({"chekin_interval_seconds": 60}, "chekin_interval_seconds"),
    ],
)
def test_invalid_field_is_named_in_the_error(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    data = {**GOOD, **change}
    data = {k: v for k, v in data.items() if v is not None}
    write_config(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        AgentConfig.load(tmp_path)
    assert repr(field) in str(info.value)
    assert "agent.json" in info.value.diagnostics()


def test_missing_config_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"agent\.json does not exist"):
        AgentConfig.load(tmp_path)


def test_config_that_is_not_json_or_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "etc/medsec/agent.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        AgentConfig.load(tmp_path)
    path.write_text("[]")
    with pytest.raises(ConfigError, match="JSON object"):
        AgentConfig.load(tmp_path)
