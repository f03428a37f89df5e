"""The optional ``update`` section of agent.json: validated, with errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from medsec.agent.config import AgentConfig
from medsec.errors import ConfigError
from medsec.updates.window import CommandProbe, FlagFileProbe, NeverInUse

BASE = {"server_url": "http://127.0.0.1:8000", "serial": "IC300-0001", "hardware_id": "ic300-rev-b"}


def _load(tmp_path: Path, update: Any) -> AgentConfig:
    return AgentConfig.from_mapping(tmp_path, {**BASE, "update": update})


def test_without_update_section_there_is_no_updater(tmp_path: Path) -> None:
    assert AgentConfig.from_mapping(tmp_path, BASE).update is None


def test_update_section_defaults_and_values(tmp_path: Path) -> None:
    cfg = _load(tmp_path, {"product": "infusion-pump"}).update
    assert cfg is not None
    assert cfg.product == "infusion-pump"
    assert cfg.health.checks == ()
    assert cfg.maintenance.always
    assert isinstance(cfg.clinical_use, NeverInUse)
    assert (cfg.max_attempts, cfg.poll_seconds, cfg.retry_seconds) == (3, 3600, 60)
    cfg = _load(
        tmp_path,
        {
            "product": "infusion-pump",
            "health_checks": [{"type": "command", "argv": ["bin/selftest"], "timeout_seconds": 5}],
            "maintenance": {"timezone": "Asia/Tokyo", "weekly": []},
            "clinical_use": {"flag_file": "run/in-use"},
            "max_attempts": 2,
        },
    ).update
    assert cfg is not None
    assert len(cfg.health.checks) == 1
    assert not cfg.maintenance.always
    assert cfg.clinical_use == FlagFileProbe(tmp_path.absolute() / "run/in-use")
    assert cfg.max_attempts == 2
    probe = _load(tmp_path, {"product": "infusion-pump", "clinical_use": {"command": ["/bin/true"]}}).update
    assert probe is not None and isinstance(probe.clinical_use, CommandProbe)


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ("yes", "'update'"),
        ({}, "'update.product'"),
        ({"product": "Infusion Pump"}, "'update.product'"),
        ({"product": "p", "colour": 1}, "'update.colour'"),
        ({"product": "p", "health_checks": [{"type": "smoke"}]}, "'update.health_checks'"),
        ({"product": "p", "maintenance": {"weekly": "always"}}, "'update.maintenance'"),
        ({"product": "p", "clinical_use": {"flag_file": ""}}, "'update.clinical_use.flag_file'"),
        ({"product": "p", "clinical_use": {"command": []}}, "'update.clinical_use.command'"),
        ({"product": "p", "clinical_use": {"sensor": 1}}, "'update.clinical_use'"),
        ({"product": "p", "max_attempts": 0}, "'update.max_attempts'"),
        ({"product": "p", "poll_seconds": True}, "'update.poll_seconds'"),
    ],
)
def test_bad_update_section_names_the_field(tmp_path: Path, update: Any, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        _load(tmp_path, update)
