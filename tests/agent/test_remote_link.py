"""The agent's remote link (RA-1, RA-4): off unless configured, attaches only while a session is pending."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from medsec.agent.remote_link import REMOTE_CONFIG_RELPATH, RemoteLink, RemoteLinkConfig
from medsec.crypto.keys import SigningKey
from medsec.errors import ConfigError
from medsec.protocol import DEVICE_SIGNATURE_HEADER, DEVICE_TIME_HEADER, director_request_bytes
from medsec.remote.device_side import DeviceLinkConfig
from medsec.remote.errors import GatewayTransportError

pytestmark = pytest.mark.req("RA-1")

SERIAL = "SN-0001"
NOW = 1_900_000_000
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk5aW1wbGVrZXlmb3J0ZXN0c29ubHkwMDAwMDAwMDA="


class RecordingLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def record(self, event: str, /, **fields: Any) -> int:
        self.events.append((event, fields))
        return len(self.events) - 1

    def checkpoint(self) -> str:
        return "checkpoint"


class SimEndpoint:
    """A device endpoint that only counts how it was used."""

    def __init__(self, config: DeviceLinkConfig, fail: bool = False) -> None:
        self.config = config
        self.fail = fail
        self.connected = False
        self.closed = False

    async def connect(self) -> None:
        if self.fail:
            raise GatewayTransportError("gateway_unreachable", "no route")
        self.connected = True

    async def close(self) -> None:
        self.closed = True


class Server:
    """The pending endpoint of the server, checking the device signature like the real one."""

    def __init__(self, device_key: SigningKey, approval_key: str) -> None:
        self.device_key = device_key
        self.approval_key = approval_key
        self.sessions: list[str] = []
        self.requests = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        path = request.url.path
        sent = int(request.headers[DEVICE_TIME_HEADER])
        signature = base64.b64decode(request.headers[DEVICE_SIGNATURE_HEADER])
        self.device_key.verify_key.verify(signature, director_request_bytes(SERIAL, path, sent))
        assert path == f"/api/v1/remote/devices/{SERIAL}/pending"
        return httpx.Response(200, json={"sessions": self.sessions, "approval_key": self.approval_key})


def _settings(approval: SigningKey, **extra: Any) -> RemoteLinkConfig:
    data = {
        "approval_key": approval.verify_key.to_base64(),
        "enabled": True,
        "gateway": {"host": "10.250.1.1", "port": 2222, "host_key": HOST_KEY},
        "source_address": "10.250.1.2",
        "interface": "svc0",
        **extra,
    }
    return RemoteLinkConfig.from_mapping(data)


def _link(tmp_path: Path, settings: RemoteLinkConfig, server: Server, fail: bool = False):  # type: ignore[no-untyped-def]
    made: list[SimEndpoint] = []

    def factory(config: DeviceLinkConfig) -> SimEndpoint:
        made.append(SimEndpoint(config, fail))
        return made[-1]

    log = RecordingLog()
    client = httpx.Client(base_url="http://server.test", transport=httpx.MockTransport(server.handler))
    link = RemoteLink(
        SERIAL,
        settings,
        server.device_key,
        log,
        client,
        "http://server.test",
        factory,
        tmp_path / "transfer",
        lambda: NOW,
    )
    return link, made, log


def test_remote_access_is_off_without_configuration(tmp_path: Path) -> None:
    assert RemoteLinkConfig.load(tmp_path) is None
    (tmp_path / REMOTE_CONFIG_RELPATH).parent.mkdir(parents=True)
    (tmp_path / REMOTE_CONFIG_RELPATH).write_text(
        json.dumps({"approval_key": SigningKey.generate().verify_key.to_base64()})
    )
    settings = RemoteLinkConfig.load(tmp_path)
    assert settings is not None and settings.enabled is False


def test_enabled_link_needs_a_pinned_gateway_host_key() -> None:
    with pytest.raises(ConfigError):
        RemoteLinkConfig.from_mapping({"approval_key": SigningKey.generate().verify_key.to_base64(), "enabled": True})


def test_disabled_link_never_asks_the_server(tmp_path: Path) -> None:
    approval = SigningKey.generate()
    server = Server(SigningKey.generate(), approval.verify_key.to_base64())
    server.sessions = ["ms-1"]
    link, made, _ = _link(tmp_path, _settings(approval, enabled=False), server)
    asyncio.run(link.step())
    assert server.requests == 0 and made == []


def test_link_opens_while_a_session_is_pending_and_closes_after(tmp_path: Path) -> None:
    approval = SigningKey.generate()
    server = Server(SigningKey.generate(), approval.verify_key.to_base64())
    link, made, log = _link(tmp_path, _settings(approval), server)

    async def scenario() -> None:
        await link.step()
        assert made == []
        server.sessions = ["ms-1"]
        await link.step()
        await link.step()
        assert len(made) == 1 and made[0].connected
        config = made[0].config
        assert (config.source_address, config.interface, config.gateway_host) == ("10.250.1.2", "svc0", "10.250.1.1")
        assert config.approval_key == approval.verify_key
        server.sessions = []
        await link.step()
        assert made[0].closed and link.endpoint is None

    asyncio.run(scenario())
    assert [e for e, _ in log.events] == ["remote.link_down"]


def test_server_naming_another_approval_key_is_refused_and_logged(tmp_path: Path) -> None:
    approval = SigningKey.generate()
    server = Server(SigningKey.generate(), SigningKey.generate().verify_key.to_base64())
    server.sessions = ["ms-1"]
    link, made, log = _link(tmp_path, _settings(approval), server)
    asyncio.run(link.step())
    assert made == []
    assert log.events[0][0] == "remote.refused" and log.events[0][1]["code"] == "approval_key_mismatch"


def test_unreachable_gateway_is_logged_and_retried(tmp_path: Path) -> None:
    approval = SigningKey.generate()
    server = Server(SigningKey.generate(), approval.verify_key.to_base64())
    server.sessions = ["ms-1"]
    link, made, log = _link(tmp_path, _settings(approval), server, fail=True)
    asyncio.run(link.step())
    asyncio.run(link.step())
    assert len(made) == 2 and link.endpoint is None
    assert [e for e, _ in log.events] == ["remote.link_failed", "remote.link_failed"]
