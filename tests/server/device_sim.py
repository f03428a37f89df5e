"""A minimal simulated device speaking the check-in protocol, for server tests."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from medsec.crypto.keys import SigningKey
from medsec.protocol import EnrollmentRequest, VersionReport


@dataclass
class SimDevice:
    base_url: str
    serial: str
    hardware_id: str
    key: SigningKey = field(default_factory=SigningKey.generate)
    counter: int = 0
    nonce: str = ""
    version: str = "1.0.0"

    def enroll(self, token: str) -> httpx.Response:
        req = EnrollmentRequest(
            token=token, serial=self.serial, hardware_id=self.hardware_id, public_key=self.key.verify_key.to_base64()
        )
        r = httpx.post(f"{self.base_url}/api/v1/enroll", json=req.sign(self.key))
        if r.status_code == 200:
            self.nonce = r.json()["nonce"]
        return r

    def report(self, **overrides: Any) -> VersionReport:
        self.counter += 1
        fields: dict[str, Any] = {
            "serial": self.serial,
            "hardware_id": self.hardware_id,
            "installed_version": self.version,
            "agent_state": "running",
            "counter": self.counter,
            "nonce": self.nonce,
            "sent_at": int(time.time()),
        }
        fields.update(overrides)
        return VersionReport(**fields)

    def send(self, signed: dict[str, Any]) -> httpx.Response:
        r = httpx.post(f"{self.base_url}/api/v1/checkin", json=signed)
        if r.status_code == 200:
            self.nonce = r.json()["nonce"]
        return r

    def checkin(self, **overrides: Any) -> httpx.Response:
        return self.send(self.report(**overrides).sign(self.key))
