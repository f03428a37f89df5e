"""Enrollment and signed check-ins over a real server, with the attacks they must refuse."""

from __future__ import annotations

import httpx
import pytest
from device_sim import SimDevice
from sqlalchemy import select

from medsec.crypto.keys import SigningKey
from medsec.server.models import AuditEntry, Device

pytestmark = pytest.mark.req("SM-6")


def _device(live_server, index: int = 0) -> tuple[SimDevice, str]:
    d = live_server.seed.devices[index]
    return SimDevice(live_server.url, d.serial, d.hardware_id), d.enrollment_token


def _audit_types(ctx, serial: str | None = None) -> list[str]:
    with ctx.tx() as s:
        rows = s.scalars(select(AuditEntry).order_by(AuditEntry.idx)).all()
        return [r.event_type for r in rows if serial is None or serial.encode() in r.body]


def test_enroll_and_checkin_updates_device(live_server):
    dev, token = _device(live_server)
    r = dev.enroll(token)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["server_log_key"].startswith("test.medsec.local/audit+")
    r = dev.checkin()
    assert r.status_code == 200, r.text
    with live_server.ctx.tx() as s:
        row = s.scalar(select(Device).where(Device.serial == dev.serial))
        assert row.installed_version == "1.0.0"
        assert row.last_counter == 1
        assert row.last_seen_at is not None
    assert "device.enrolled" in _audit_types(live_server.ctx, dev.serial)


def test_reused_enrollment_token_is_refused(live_server):
    dev, token = _device(live_server)
    assert dev.enroll(token).status_code == 200
    thief = SimDevice(live_server.url, dev.serial, dev.hardware_id)
    r = thief.enroll(token)
    assert r.status_code == 409
    assert r.json()["error"] == "enrollment_token_used"
    assert "device.enroll_refused" in _audit_types(live_server.ctx, dev.serial)


def test_enrollment_with_unknown_token_is_refused(live_server):
    dev, _token = _device(live_server)
    r = dev.enroll("met_not-a-real-token")
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_enrollment_token"


def test_enrollment_for_another_serial_is_refused(live_server):
    dev, token = _device(live_server, 0)
    other = SimDevice(live_server.url, live_server.seed.devices[1].serial, dev.hardware_id)
    r = other.enroll(token)
    assert r.status_code == 422
    assert r.json()["error"] == "serial_mismatch"


def test_enrollment_proof_of_possession_is_checked(live_server):
    dev, token = _device(live_server)
    signed = dev.key and __import__("medsec.protocol", fromlist=["EnrollmentRequest"]).EnrollmentRequest(
        token=token,
        serial=dev.serial,
        hardware_id=dev.hardware_id,
        public_key=SigningKey.generate().verify_key.to_base64(),
    ).sign(dev.key)
    r = httpx.post(f"{live_server.url}/api/v1/enroll", json=signed)
    assert r.status_code == 401
    assert r.json()["error"] == "bad_signature"


def test_forged_checkin_is_refused_and_logged(live_server):
    dev, token = _device(live_server)
    dev.enroll(token)
    forged = dev.report().sign(SigningKey.generate())
    r = dev.send(forged)
    assert r.status_code == 401
    assert r.json()["error"] == "bad_signature"
    assert "device.checkin_refused" in _audit_types(live_server.ctx, dev.serial)


def test_tampered_report_is_refused(live_server):
    dev, token = _device(live_server)
    dev.enroll(token)
    signed = dev.report().sign(dev.key)
    signed["report"]["installed_version"] = "9.9.9"
    r = dev.send(signed)
    assert r.status_code == 401
    assert r.json()["error"] == "bad_signature"


def test_replayed_checkin_is_refused_and_logged(live_server):
    dev, token = _device(live_server)
    dev.enroll(token)
    signed = dev.report().sign(dev.key)
    assert dev.send(signed).status_code == 200
    r = httpx.post(f"{live_server.url}/api/v1/checkin", json=signed)
    assert r.status_code == 409
    assert r.json()["error"] == "replayed_report"
    assert _audit_types(live_server.ctx, dev.serial).count("device.checkin_refused") == 1


def test_out_of_order_checkin_is_refused(live_server):
    dev, token = _device(live_server)
    dev.enroll(token)
    assert dev.checkin().status_code == 200
    dev.counter = 0  # a device whose state was rolled back, or a clone of its key
    r = dev.checkin()
    assert r.status_code == 409
    assert r.json()["error"] == "counter_not_increasing"


def test_stale_nonce_is_refused_and_device_can_resync(live_server):
    dev, token = _device(live_server)
    dev.enroll(token)
    assert dev.checkin().status_code == 200
    dev.nonce = "an-old-nonce"
    r = dev.checkin()
    assert r.status_code == 409
    assert r.json()["error"] == "stale_nonce"
    dev.nonce = httpx.post(f"{live_server.url}/api/v1/devices/{dev.serial}/nonce").json()["nonce"]
    assert dev.checkin().status_code == 200


def test_wrong_hardware_id_is_refused(live_server):
    dev, token = _device(live_server)
    dev.enroll(token)
    r = dev.checkin(hardware_id="other-board")
    assert r.status_code == 422
    assert r.json()["error"] == "hardware_id_mismatch"


def test_unknown_device_is_refused(live_server):
    dev = SimDevice(live_server.url, "NO-SUCH-DEVICE", "ic300-rev-b", nonce="x")
    r = dev.checkin()
    assert r.status_code == 404
    assert r.json()["error"] == "unknown_device"


def test_checkin_before_enrollment_is_refused(live_server):
    dev, _token = _device(live_server)
    dev.nonce = "x"
    r = dev.checkin()
    assert r.status_code == 409
    assert r.json()["error"] == "device_not_enrolled"


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"report": {}, "signature": ""},
        {"report": {"serial": "IC300-0001"}, "signature": "AAAA"},
        {"report": "x" * 10, "signature": 5},
    ],
)
def test_malformed_checkin_gets_a_json_4xx(live_server, payload):
    r = httpx.post(f"{live_server.url}/api/v1/checkin", json=payload)
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_request"


def test_oversized_request_is_refused(live_server):
    r = httpx.post(
        f"{live_server.url}/api/v1/checkin",
        content=b'{"report": "' + b"x" * (1024 * 1024) + b'"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json()["error"] == "request_too_large"


def test_same_device_can_repeat_enrollment_after_a_lost_answer(live_server):
    dev, token = _device(live_server)
    first = dev.enroll(token)
    assert first.status_code == 200
    again = dev.enroll(token)  # same key, same token: the device never saw the first answer
    assert again.status_code == 200
    assert again.json()["nonce"] == first.json()["nonce"]
    assert dev.checkin().status_code == 200
