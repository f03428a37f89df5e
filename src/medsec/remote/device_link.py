"""Framing on the channels the gateway opens to a device over the device's outbound connection.

Each channel is a stream of frames ``type (1 byte) | length (4 bytes, big endian) | payload``.
The gateway's first frame is a header (JSON); the device answers accept or refuse.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Protocol

from medsec.remote.errors import GatewayTransportError

HEADER = b"H"  # gateway -> device: JSON {"kind": ..., ...}
ACCEPT = b"A"  # device -> gateway: {}
REFUSE = b"R"  # device -> gateway: {"code": ..., "message": ...}
DATA = b"D"  # both ways: stdin / stdout / forwarded bytes
STDERR = b"E"  # device -> gateway
EOF = b"F"  # gateway -> device: no more stdin
EXIT = b"X"  # device -> gateway: {"status": n}
MARK = b"M"  # device -> gateway: a recording marker (file transfer hashes)

LISTEN_HOST = "medsec-maintenance"
LISTEN_PORT = 1
MAX_FRAME = 1 << 20
_HEAD = struct.Struct(">cI")


class FrameReader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEAD.pack(kind, len(payload)) + payload


def json_frame(kind: bytes, value: Any) -> bytes:
    return frame(kind, json.dumps(value, separators=(",", ":")).encode("utf-8"))


async def read_frame(reader: FrameReader) -> tuple[bytes, bytes]:
    """The next frame; raises EOFError at a clean end of stream."""
    try:
        head = await reader.readexactly(_HEAD.size)
    except Exception as e:  # asyncio.IncompleteReadError and transport errors alike
        raise EOFError from e
    kind, size = _HEAD.unpack(head)
    if size > MAX_FRAME:
        raise GatewayTransportError("frame_too_large", f"frame of {size} bytes")
    try:
        payload = await reader.readexactly(size) if size else b""
    except Exception as e:
        raise EOFError from e
    return kind, payload


def parse_json(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError as e:
        raise GatewayTransportError("malformed_frame", "frame is not JSON") from e
    if not isinstance(value, dict):
        raise GatewayTransportError("malformed_frame", "frame is not a JSON object")
    return value
