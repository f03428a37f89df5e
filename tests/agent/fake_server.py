"""A small real HTTP peer speaking the device side of medsec.protocol, for agent tests.

It implements only the contract in protocol.py (enroll, check-in, nonce) and
checks every signature with protocol.py and medsec.auditlog, so the agent is
tested against the same bytes the real server verifies. Knobs let a test lose
an answer, refuse, or hand back a wrong cosignature.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from medsec.auditlog.note import SIG_TYPE_ED25519, NoteSigner, NoteVerifier
from medsec.auditlog.witness import MemoryWitnessState, Witness
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import CheckpointError, ProofError, ProtocolError, SignatureError, WitnessError
from medsec.protocol import (
    CheckinResponse,
    EnrollmentRequest,
    EnrollmentResponse,
    VersionReport,
    b64decode_field,
)


@dataclass
class Device:
    serial: str
    hardware_id: str
    public_key: VerifyKey
    nonce: str
    counter: int = 0
    cosigned: str | None = None  # the last checkpoint our witness cosigned for this device


@dataclass
class FakeServer:
    tokens: set[str] = field(default_factory=set)
    interval: int = 60
    witness: Witness = field(
        default_factory=lambda: Witness("medsec-witness", SigningKey.generate(), MemoryWitnessState())
    )
    devices: dict[str, Device] = field(default_factory=dict)
    reports: list[VersionReport] = field(default_factory=list)  # accepted reports, in order
    refusals: list[str] = field(default_factory=list)
    lose_answers: int = 0  # process the next N check-ins, then drop the connection instead of answering
    down: bool = False  # drop every connection without processing anything
    nonce_with_checkpoint: bool = False  # the nonce answer also carries the last cosigned checkpoint
    received_counters: list[int] = field(default_factory=list)  # every counter that reached us
    wrong_witness: Witness | None = None  # cosign with this one instead (an impostor)
    on_checkin: Callable[[dict[str, Any]], None] | None = None  # called before processing a check-in
    www: Path | None = None  # serve GET requests from this folder (TUF repositories, release bundles)
    hold_after: int | None = None  # send this many bytes of a large file, then wait for ``release_hold``
    release_hold: threading.Event = field(default_factory=threading.Event)
    holding: threading.Event = field(default_factory=threading.Event)  # set while a download is held
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                answer = server.handle(self.path, body)
                if answer is None:
                    self.close_connection = True
                    return
                status, payload = answer
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the agent was killed while we worked: that answer is lost, as in real life

            def do_GET(self) -> None:
                server.serve_file(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._thread.join()
        self._httpd.server_close()

    def serve_file(self, handler: BaseHTTPRequestHandler) -> None:
        """A static file from ``www``; a file larger than ``hold_after`` stalls there until released."""
        path = handler.path.split("?", 1)[0].lstrip("/")
        file = (self.www / path).resolve() if self.www is not None else None
        if file is None or self.www is None or not file.is_relative_to(self.www.resolve()) or not file.is_file():
            handler.send_error(404)
            return
        data = file.read_bytes()
        hold = self.hold_after if self.hold_after is not None and len(data) > self.hold_after else None
        try:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            if hold is not None:
                handler.wfile.write(data[:hold])
                handler.wfile.flush()
                self.holding.set()
                self.release_hold.wait(60)
                self.holding.clear()
                data = data[hold:]
            handler.wfile.write(data)
        except OSError:
            handler.close_connection = True

    # -- the protocol -------------------------------------------------------------------------------

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        if self.down:
            return None
        if path == "/api/v1/enroll":
            with self._lock:
                return self._enroll(body)
        if path == "/api/v1/checkin":
            if self.on_checkin is not None:
                self.on_checkin(body)
            with self._lock:
                self.received_counters.append(body["report"]["counter"])
                answer = self._checkin(body)
                if answer[0] == 200 and self.lose_answers > 0:
                    self.lose_answers -= 1
                    return None
                return answer
        parts = path.strip("/").split("/")
        if len(parts) == 5 and parts[:3] == ["api", "v1", "devices"] and parts[4] == "nonce":
            with self._lock:
                device = self.devices.get(parts[3])
                if device is None:
                    return self._refuse("unknown_device", "no such device")
                current: dict[str, Any] = {"nonce": device.nonce}
                if self.nonce_with_checkpoint:
                    current["cosigned_checkpoint"] = device.cosigned
                return 200, current
        return 404, {"error": "not_found", "detail": path}

    def _refuse(self, code: str, detail: str) -> tuple[int, dict[str, Any]]:
        self.refusals.append(code)
        status = {"invalid_token": 403, "stale_nonce": 409, "counter_not_increasing": 409}.get(code, 400)
        return status, {"error": code, "detail": detail}

    def _enroll(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            req = EnrollmentRequest.verify(body["request"], body["signature"])
        except (KeyError, TypeError, SignatureError, ProtocolError) as e:
            return self._refuse("bad_signature", str(e))
        if req.token not in self.tokens:
            return self._refuse("invalid_token", "token unknown or already used")
        self.tokens.discard(req.token)
        device = Device(req.serial, req.hardware_id, VerifyKey.from_base64(req.public_key), secrets.token_hex(16))
        self.devices[req.serial] = device
        response = EnrollmentResponse(
            serial=req.serial,
            nonce=device.nonce,
            server_log_key=NoteSigner("medsec-server", SigningKey.generate()).vkey,
            witness_key=self.witness.vkey,
            checkin_interval_seconds=self.interval,
        )
        return 200, asdict(response)

    def _checkin(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        serial = body.get("report", {}).get("serial")
        device = self.devices.get(serial) if isinstance(serial, str) else None
        if device is None:
            return self._refuse("unknown_device", "no such device")
        try:
            report = VersionReport.verify(body["report"], body["signature"], device.public_key)
        except SignatureError as e:
            return self._refuse("bad_signature", str(e))
        except ProtocolError as e:
            return self._refuse("malformed_report", str(e))
        if report.nonce != device.nonce:
            return self._refuse("stale_nonce", "nonce does not match")
        if report.counter <= device.counter:
            return self._refuse("counter_not_increasing", f"{report.counter} <= {device.counter}")
        cosigned = None
        if report.log_checkpoint is not None:
            log_vkey = NoteVerifier(f"medsec-device/{report.serial}", SIG_TYPE_ED25519, device.public_key)
            proof = [b64decode_field(h, "proof") for h in report.log_consistency_proof]
            try:
                cosigned = self.witness.cosign(report.log_checkpoint, log_vkey, proof, int(time.time()))
            except (WitnessError, ProofError) as e:
                return self._refuse("log_fork_detected", str(e))
            except CheckpointError as e:
                return self._refuse("bad_log_checkpoint", str(e))
            device.cosigned = cosigned
            if self.wrong_witness is not None:
                cosigned = self.wrong_witness.cosign(report.log_checkpoint, log_vkey, proof, int(time.time()))
        device.counter = report.counter
        device.nonce = secrets.token_hex(16)
        self.reports.append(report)
        response = CheckinResponse(
            nonce=device.nonce, checkin_interval_seconds=self.interval, cosigned_checkpoint=cosigned
        )
        return 200, asdict(response)
