"""The agent's side of the device API (see :mod:`medsec.protocol`), over httpx.

Errors leave this module translated into three kinds, which the daemon treats
differently::

    ProtocolError            the server answered something we cannot use (bad JSON, wrong fields, too large)
    ├── CheckinRejected      the server refused us (HTTP 4xx); ``code`` is its reason
    └── ServerUnavailable    no usable answer: network error, timeout or HTTP 5xx -> retry later
"""

from __future__ import annotations

import json
import logging
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from medsec.errors import CheckinRejected, ProtocolError
from medsec.protect.wire import SIGNATURE_HEADER as PROTECTION_SIGNATURE_HEADER
from medsec.protect.wire import BatchReceipt
from medsec.protocol import MAX_FIELD, CheckinResponse, EnrollmentResponse

logger = logging.getLogger(__name__)

# Answers are a few hundred bytes; a cosigned checkpoint is the largest part.
MAX_RESPONSE_BYTES = 64 * 1024
MAX_NOTE_BYTES = 16 * 1024
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
MAX_DETAIL = 500


class ServerUnavailable(ProtocolError):
    """The server could not be reached or failed (network, timeout, HTTP 5xx); try again later."""


def make_http_client(ca_file: Path | None = None, timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> httpx.Client:
    """An httpx client with bounded timeouts; ``ca_file`` adds a private trust anchor for https."""
    verify: Any = True
    if ca_file is not None:
        try:
            verify = ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as e:
            raise ProtocolError(f"cannot load CA file {ca_file}: {e}") from e
    # Redirects are refused: the device only ever talks to the one configured server.
    return httpx.Client(timeout=timeout, verify=verify, follow_redirects=False, trust_env=False)


class ServerClient:
    def __init__(self, server_url: str, http: httpx.Client) -> None:
        self._base = server_url.rstrip("/")
        self._http = http

    def enroll(self, signed_request: dict[str, Any]) -> EnrollmentResponse:
        body = self._post("/api/v1/enroll", signed_request)
        return EnrollmentResponse(
            serial=_str(body, "serial"),
            nonce=_str(body, "nonce"),
            server_log_key=_str(body, "server_log_key"),
            witness_key=_str(body, "witness_key"),
            checkin_interval_seconds=_int(body, "checkin_interval_seconds"),
        )

    def checkin(self, signed_report: dict[str, Any]) -> CheckinResponse:
        body = self._post("/api/v1/checkin", signed_report)
        return CheckinResponse(
            nonce=_str(body, "nonce"),
            checkin_interval_seconds=_int(body, "checkin_interval_seconds"),
            cosigned_checkpoint=_note(body),
        )

    def current_nonce(self, serial: str) -> tuple[str, str | None]:
        """The server's current nonce, and its latest cosigned checkpoint of our log if it sends one."""
        body = self._post(f"/api/v1/devices/{quote(serial, safe='')}/nonce", {})
        return _str(body, "nonce"), _note(body)

    def send_protection_events(self, serial: str, batch: bytes, signature: str) -> BatchReceipt:
        """Upload one signed protection-event batch (:mod:`medsec.protect.wire`); refusals as for check-ins.

        A retry of the same bytes after a lost answer gets the same receipt; nothing is stored twice.
        """
        body = self._post(
            f"/api/v1/devices/{quote(serial, safe='')}/protection-events",
            None,
            content=batch,
            headers={"Content-Type": "application/json", PROTECTION_SIGNATURE_HEADER: signature},
        )
        return BatchReceipt.from_json(body)

    def _post(
        self,
        path: str,
        payload: dict[str, Any] | None,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        url = self._base + path
        # identity encoding keeps the size limit meaningful (no decompression bombs).
        send: dict[str, Any] = {"headers": {"Accept-Encoding": "identity", **(headers or {})}}
        send.update({"content": content} if content is not None else {"json": payload})
        try:
            with self._http.stream("POST", url, **send) as resp:
                raw = _read_bounded(resp)
                status = resp.status_code
        except httpx.HTTPError as e:
            raise ServerUnavailable(f"POST {url} failed: {e.__class__.__name__}: {e}") from e
        if status >= 500:
            raise ServerUnavailable(f"POST {url}: HTTP {status}")
        if 400 <= status < 500:
            code, detail = _refusal(raw, status)
            raise CheckinRejected(code, detail)
        if status != 200:
            raise ProtocolError(f"POST {url}: unexpected HTTP {status}")
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ProtocolError(f"POST {url}: answer is not JSON") from e
        if not isinstance(body, dict):
            raise ProtocolError(f"POST {url}: answer is not a JSON object")
        return body


def _read_bounded(resp: httpx.Response) -> bytes:
    declared = resp.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise ProtocolError(f"server answer of {declared} bytes exceeds {MAX_RESPONSE_BYTES}")
    data = bytearray()
    for chunk in resp.iter_bytes():
        data += chunk
        if len(data) > MAX_RESPONSE_BYTES:
            raise ProtocolError(f"server answer exceeds {MAX_RESPONSE_BYTES} bytes")
    return bytes(data)


def _refusal(raw: bytes, status: int) -> tuple[str, str]:
    """The ``{"error": code, "detail": text}`` of a 4xx answer, tolerating other bodies."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str) and 0 < len(body["error"]) <= 64:
        detail = body.get("detail")
        text = detail[:MAX_DETAIL] if isinstance(detail, str) else f"HTTP {status}"
        return body["error"], text
    return f"http_{status}", f"HTTP {status}"


def _str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_FIELD:
        raise ProtocolError(f"server answer field {name!r} must be a non-empty string of at most {MAX_FIELD}")
    return value


def _int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ProtocolError(f"server answer field {name!r} must be a positive integer")
    return value


def _note(body: dict[str, Any]) -> str | None:
    note = body.get("cosigned_checkpoint")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE_BYTES):
        raise ProtocolError("server answer field 'cosigned_checkpoint' must be a string of at most 16 KiB")
    return note
