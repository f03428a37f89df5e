from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medsec.agent.access_log import AccessLog
from medsec.agent.config import AgentConfig
from medsec.crypto.keys import SigningKey

from .fake_server import FakeServer

SERIAL = "SN-0001"
HARDWARE_ID = "hw-rev-b"
TOKEN = "enroll-token-1"


def make_device_root(
    root: Path, server_url: str, *, token: str | None = TOKEN, version: str = "1.0.0", **extra: Any
) -> AgentConfig:
    """Lay out a simulated device root the way provisioning would, and load its config."""
    etc = root / "etc/medsec"
    etc.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "server_url": server_url,
        "serial": SERIAL,
        "hardware_id": HARDWARE_ID,
        "retry_initial_seconds": 1,
        "retry_max_seconds": 8,
        **extra,
    }
    if token is not None:
        (etc / "enrollment-token").write_text(token + "\n")
        config["enrollment_token_file"] = "etc/medsec/enrollment-token"
    (etc / "agent.json").write_text(json.dumps(config))
    (etc / "version").write_text(version + "\n")
    return AgentConfig.load(root)


def read_access_log(config: AgentConfig) -> list[dict[str, Any]]:
    """The entries of a device's access log, read after its agent has stopped."""
    key = SigningKey.load(config.layout.key_file)
    log = AccessLog(config.layout.access_log_dir, config.serial, key)
    try:
        log.verify()
        return log.entries()
    finally:
        log.close()


def events(entries: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in entries]


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer(tokens={TOKEN}) as s:
        yield s
