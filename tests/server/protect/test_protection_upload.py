"""Device uploads of signed protection batches to a real server, with every attack it must refuse."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from protection_support import blocked_exec, enroll, integrity_event, sample_metrics, usb_drift
from sqlalchemy import func, select

from medsec.agent.client import ServerClient, make_http_client
from medsec.crypto.canonical import canonical_json
from medsec.errors import CheckinRejected
from medsec.protect.wire import MAX_BATCH_BYTES, MAX_EVENTS
from medsec.server.models import AuditEntry
from medsec.server.models_protect import ProtectionBatch, ProtectionEventRow, ProtectionStatus

pytestmark = [pytest.mark.req("RL-3"), pytest.mark.req("RL-1")]

A_SERIAL = "IC300-0001"
A2_SERIAL = "IC300-0002"


def _audit(ctx, event_type: str) -> list[dict]:
    with ctx.tx() as s:
        rows = s.scalars(select(AuditEntry).where(AuditEntry.event_type == event_type).order_by(AuditEntry.idx))
        return [json.loads(r.body)["details"] for r in rows]


def _count(ctx, model) -> int:
    with ctx.tx() as s:
        return int(s.scalar(select(func.count()).select_from(model)))


def _refused(r: httpx.Response, status: int, code: str, ctx) -> dict:
    assert (r.status_code, r.json()["error"]) == (status, code), r.text
    refusals = _audit(ctx, "protection.events_refused")
    assert refusals and refusals[-1]["code"] == code
    return refusals[-1]


def test_accepted_batch_is_stored_and_audited(live_server):
    dev = enroll(live_server, A_SERIAL)
    events = [blocked_exec(), integrity_event("restored"), integrity_event("quarantined", "/opt/x"), usb_drift()]
    r = dev.send(events, metrics=sample_metrics())
    assert r.status_code == 200, r.text
    receipt = r.json()
    assert receipt["seq"] == 1 and receipt["events"] == 4 and receipt["serial"] == A_SERIAL
    ctx = live_server.ctx
    with ctx.tx() as s:
        rows = s.scalars(select(ProtectionEventRow).order_by(ProtectionEventRow.index)).all()
        assert [(e.category, e.action) for e in rows] == [
            ("exec", "deny"),
            ("integrity", "restored"),
            ("integrity", "quarantined"),
            ("usb", "drift"),
        ]
        first = rows[0]
        assert (first.subject_exe, first.subject_pid, first.object_path) == (
            "/usr/bin/bash",
            4242,
            "/opt/device/tmp/dropper",
        )
        assert first.organization_id == s.scalar(select(ProtectionBatch.organization_id))
        status = s.get(ProtectionStatus, first.device_id)
        assert (status.mode, status.policy_version, status.trustdb_version, status.last_seq) == (
            "enforce",
            "7",
            "2026.12.1",
            1,
        )
        assert status.metrics["decisions"] == {"trustdb_hash": 5, "not_in_trustdb": 1}
    [entry] = _audit(ctx, "protection.events")
    assert entry["serial"] == A_SERIAL and entry["seq"] == 1 and entry["events"] == 4
    assert entry["actions"] == {"deny": 1, "drift": 1, "quarantined": 1, "restored": 1}
    assert entry["sha256"] == receipt["sha256"]


def test_retry_of_the_same_batch_is_answered_the_same_and_stored_once(live_server):
    dev = enroll(live_server, A_SERIAL)
    body, sig = dev.batch([blocked_exec()]).sign(dev.key)
    first = dev.post(body, sig)
    again = dev.post(body, sig)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert _count(live_server.ctx, ProtectionEventRow) == 1
    assert _count(live_server.ctx, ProtectionBatch) == 1
    assert len(_audit(live_server.ctx, "protection.events")) == 1


def test_tampered_event_is_refused(live_server):
    dev = enroll(live_server, A_SERIAL)
    body, sig = dev.batch([blocked_exec()]).sign(dev.key)
    forged = body.replace(b'"deny"', b'"allow"')
    details = _refused(dev.post(forged, sig), 401, "bad_signature", live_server.ctx)
    assert details["serial"] == A_SERIAL
    assert _count(live_server.ctx, ProtectionEventRow) == 0


def test_missing_signature_is_refused(live_server):
    dev = enroll(live_server, A_SERIAL)
    body, _sig = dev.batch([blocked_exec()]).sign(dev.key)
    _refused(dev.post(body, None), 401, "bad_signature", live_server.ctx)


def test_other_devices_key_is_refused(live_server):
    victim = enroll(live_server, A_SERIAL)
    attacker = enroll(live_server, A2_SERIAL)
    # A batch naming the victim, signed by another enrolled device of the same hospital.
    body, sig = victim.batch([integrity_event()]).sign(attacker.key)
    _refused(victim.post(body, sig), 401, "bad_signature", live_server.ctx)
    # Or the attacker's own valid batch posted under the victim's serial.
    body, sig = attacker.batch([integrity_event()]).sign(attacker.key)
    _refused(attacker.post(body, sig, serial=A_SERIAL), 401, "bad_signature", live_server.ctx)
    assert _count(live_server.ctx, ProtectionEventRow) == 0


def test_replayed_batch_is_refused(live_server):
    dev = enroll(live_server, A_SERIAL)
    assert dev.send([blocked_exec()]).status_code == 200
    assert dev.send([blocked_exec()]).status_code == 200  # seq 2
    # Same seq, other contents.
    _refused(dev.send([usb_drift()], seq=2), 409, "replayed_batch", live_server.ctx)
    # An older seq never accepted with these contents.
    _refused(dev.send([usb_drift()], seq=1), 409, "replayed_batch", live_server.ctx)
    assert _count(live_server.ctx, ProtectionEventRow) == 2


def test_seq_below_last_accepted_is_refused(live_server):
    dev = enroll(live_server, A_SERIAL)
    assert dev.send([blocked_exec()], seq=10).status_code == 200
    details = _refused(dev.send([blocked_exec()], seq=5), 409, "replayed_batch", live_server.ctx)
    assert details["seq"] == 5


@pytest.mark.parametrize("offset", [-330, 400, -86400])
def test_stale_batch_is_refused(live_server, offset):
    dev = enroll(live_server, A_SERIAL)
    r = dev.send([blocked_exec()], sent=int(time.time()) + offset)
    _refused(r, 409, "stale_batch", live_server.ctx)
    # The device re-signs the same seq with its clock fixed, and that is accepted.
    assert dev.send([blocked_exec()], seq=dev.seq).status_code == 200


def test_unknown_device_is_refused(live_server):
    dev = enroll(live_server, A_SERIAL)
    body, sig = dev.batch([blocked_exec()]).sign(dev.key)
    details = _refused(dev.post(body, sig, serial="IC300-9999"), 404, "unknown_device", live_server.ctx)
    assert details["serial"] == "IC300-9999"


def test_device_that_has_not_enrolled_is_refused(live_server):
    dev = enroll(live_server, A_SERIAL)
    body, sig = dev.batch([blocked_exec()]).sign(dev.key)
    _refused(dev.post(body, sig, serial=A2_SERIAL), 409, "device_not_enrolled", live_server.ctx)


def test_batch_with_too_many_events_is_refused(live_server):
    dev = enroll(live_server, A_SERIAL)
    doc = json.loads(dev.batch([blocked_exec()] * MAX_EVENTS).encode())
    doc["events"].append(doc["events"][0])  # a device that ignores the limit
    body = canonical_json(doc)
    sig = _sign(dev, body)
    details = _refused(dev.post(body, sig), 413, "batch_too_large", live_server.ctx)
    assert details["field"] == "events"


def test_oversize_batch_is_refused(live_server):
    dev = enroll(live_server, A_SERIAL)
    body = b"{" + b" " * MAX_BATCH_BYTES + b"}"
    _refused(dev.post(body, _sign(dev, body)), 413, "batch_too_large", live_server.ctx)


def test_malformed_event_field_is_refused_with_index_and_field(live_server):
    dev = enroll(live_server, A_SERIAL)
    doc = json.loads(dev.batch([blocked_exec(), integrity_event()]).encode())
    doc["events"][1]["object"]["sha256"] = "NOT-HEX"
    body = canonical_json(doc)
    r = dev.post(body, _sign(dev, body))
    details = _refused(r, 422, "bad_event", live_server.ctx)
    assert "events[1]" in r.json()["detail"] and "object.sha256" in r.json()["detail"]
    assert details["field"] == "events[1]"
    assert _count(live_server.ctx, ProtectionEventRow) == 0


def test_agent_client_uploads_and_translates_refusals(live_server):
    dev = enroll(live_server, A_SERIAL)
    body, sig = dev.batch([blocked_exec()], metrics=sample_metrics()).sign(dev.key)
    with make_http_client() as http:
        client = ServerClient(live_server.url, http)
        receipt = client.send_protection_events(A_SERIAL, body, sig)
        assert (receipt.seq, receipt.events) == (1, 1)
        assert client.send_protection_events(A_SERIAL, body, sig) == receipt
        stale_body, stale_sig = dev.batch([blocked_exec()], seq=1, sent=1).sign(dev.key)
        with pytest.raises(CheckinRejected) as e:
            client.send_protection_events(A_SERIAL, stale_body, stale_sig)
        assert e.value.code == "replayed_batch"


def _sign(dev, body: bytes) -> str:
    import base64

    from medsec.protect.wire import signed_message

    return base64.b64encode(dev.key.sign(signed_message(body))).decode()
