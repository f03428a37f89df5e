"""The device's maintenance connection leaves from the configured service address only (RA-4).

These run without root on loopback (127.0.0.0/8 is all local on Linux); the network-namespace
test in tests/integration/test_service_lan.py proves the same across two LANs as root.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from medsec.crypto.keys import SigningKey
from medsec.remote.device_side import DeviceLinkConfig, open_service_socket
from medsec.remote.errors import GatewayTransportError

pytestmark = pytest.mark.req("RA-4")


def _config(tmp_path: Path, port: int, source: str | None) -> DeviceLinkConfig:
    return DeviceLinkConfig(
        serial="IC300-0001",
        gateway_host="127.0.0.1",
        gateway_port=port,
        gateway_host_key="ssh-ed25519 AAAA",
        approval_key=SigningKey.generate().verify_key,
        transfer_dir=tmp_path,
        source_address=source,
    )


def test_connection_leaves_from_the_service_address(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        async def dial() -> tuple[str, int]:
            sock = await open_service_socket(_config(tmp_path, port, "127.0.0.2"))
            with sock:
                host, port_ = sock.getsockname()[:2]
                return host, port_

        local = asyncio.run(dial())
        peer, addr = listener.accept()
        peer.close()
    assert local[0] == "127.0.0.2"
    assert addr[0] == "127.0.0.2"  # what the gateway sees: the service address, nothing else


def test_an_address_this_device_does_not_have_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface here: the link must not fall back to another address.
    with pytest.raises(GatewayTransportError, match="over the service LAN") as caught:
        asyncio.run(open_service_socket(_config(tmp_path, 9, "192.0.2.1")))
    assert caught.value.code == "gateway_unreachable"
