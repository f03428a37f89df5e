"""Simulated devices that enroll and upload signed protection-event batches to a live server."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from medsec.crypto.keys import SigningKey
from medsec.protect.events import Metrics, Object, ProtectionEvent, Subject
from medsec.protect.wire import SIGNATURE_HEADER, EngineState, ProtectionBatch, build_batch
from medsec.protocol import EnrollmentRequest

SHA_A = "a" * 64
SHA_B = "b" * 64


def blocked_exec(exe: str = "/opt/device/tmp/dropper", *, mode: str = "enforce") -> ProtectionEvent:
    return ProtectionEvent(
        category="exec",
        action="deny" if mode == "enforce" else "would_deny",
        rule="not_in_trustdb",
        mode=mode,
        subject=Subject(pid=4242, exe="/usr/bin/bash", sha256=SHA_A),
        object=Object(path=exe, sha256=SHA_B),
        detail="execution refused: not in the trust database",
    )


def integrity_event(action: str = "restored", path: str = "/opt/device/bin/pump-control") -> ProtectionEvent:
    return ProtectionEvent(
        category="integrity",
        action=action,
        rule="baseline_mismatch",
        object=Object(path=path, sha256=SHA_A),
        detail=f"{path} differed from the baseline",
    )


def usb_drift() -> ProtectionEvent:
    return ProtectionEvent(category="usb", action="drift", rule="usb_default_deny", detail="usb 1-1 authorized")


def sample_metrics() -> dict[str, Any]:
    m = Metrics()
    for latency, hit in ((3, True), (40, False), (40, True), (700, True), (200000, False)):
        m.record("trustdb_hash", latency, cache_hit=hit, queue_depth=2)
    m.record("not_in_trustdb", 120, cache_hit=False, queue_depth=5)
    return m.snapshot()


@dataclass
class ProtectedDevice:
    """An enrolled device that numbers and signs its batches like the agent does."""

    base_url: str
    serial: str
    key: SigningKey
    seq: int = 0
    engine: EngineState = field(default_factory=lambda: EngineState("enforce", "7", "2026.12.1"))

    def batch(
        self, events: list[ProtectionEvent], *, seq: int | None = None, sent: int | None = None, metrics: Any = None
    ) -> ProtectionBatch:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return build_batch(self.serial, seq, int(time.time()) if sent is None else sent, events, self.engine, metrics)

    def post(self, body: bytes, signature: str | None, serial: str | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        return httpx.post(
            f"{self.base_url}/api/v1/devices/{serial or self.serial}/protection-events",
            content=body,
            headers=headers,
            timeout=30,
        )

    def send(self, events: list[ProtectionEvent], **kwargs: Any) -> httpx.Response:
        body, signature = self.batch(events, **kwargs).sign(self.key)
        return self.post(body, signature)


def enroll(live_server: Any, serial: str) -> ProtectedDevice:
    d = next(d for d in live_server.seed.devices if d.serial == serial)
    key = SigningKey.generate()
    req = EnrollmentRequest(
        token=d.enrollment_token, serial=serial, hardware_id=d.hardware_id, public_key=key.verify_key.to_base64()
    )
    r = httpx.post(f"{live_server.url}/api/v1/enroll", json=req.sign(key), timeout=30)
    assert r.status_code == 200, r.text
    return ProtectedDevice(live_server.url, serial, key)
