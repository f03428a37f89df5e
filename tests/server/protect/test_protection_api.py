"""Users' views of protection events: filters, status, fleet counts, and tenant isolation (RL-1, RL-3, PA-1)."""

from __future__ import annotations

import httpx
import pytest
from protection_support import blocked_exec, enroll, integrity_event, sample_metrics, usb_drift
from sqlalchemy import select, update

from medsec.server.models import Device, Organization

pytestmark = [pytest.mark.req("RL-3"), pytest.mark.req("RL-1")]

A_SERIAL, B_SERIAL = "IC300-0001", "IC300-0003"


def _get(live_server, user: str, path: str, **params) -> httpx.Response:
    token = live_server.seed.tokens[user]
    return httpx.get(
        f"{live_server.url}{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


@pytest.fixture
def reported(live_server):
    a = enroll(live_server, A_SERIAL)
    b = enroll(live_server, B_SERIAL)
    assert (
        a.send([blocked_exec("/opt/a/evil"), integrity_event(), usb_drift()], metrics=sample_metrics()).status_code
        == 200
    )
    assert b.send([blocked_exec("/opt/b/secret-malware")]).status_code == 200
    return a, b


def test_hospital_sees_its_events_with_filters(live_server, reported):
    r = _get(live_server, "a-responsible", f"/api/v1/devices/{A_SERIAL}/protection-events")
    assert r.status_code == 200, r.text
    assert [e["action"] for e in r.json()] and len(r.json()) == 3
    denies = _get(live_server, "a-responsible", f"/api/v1/devices/{A_SERIAL}/protection-events", action="deny")
    assert [e["object"]["path"] for e in denies.json()] == ["/opt/a/evil"]
    integrity = _get(
        live_server, "a-responsible", f"/api/v1/devices/{A_SERIAL}/protection-events", category="integrity"
    )
    assert [e["action"] for e in integrity.json()] == ["restored"]
    limited = _get(live_server, "a-responsible", f"/api/v1/devices/{A_SERIAL}/protection-events", limit=1)
    assert len(limited.json()) == 1
    bad = _get(live_server, "a-responsible", f"/api/v1/devices/{A_SERIAL}/protection-events", category="nope")
    assert (bad.status_code, bad.json()["error"]) == (422, "invalid_category")


def test_status_shows_latest_metrics(live_server, reported):
    r = _get(live_server, "a-auditor", f"/api/v1/devices/{A_SERIAL}/protection-status")
    body = r.json()
    assert body["reported"] is True and body["mode"] == "enforce" and body["last_seq"] == 1
    assert body["cache_hit_ratio"] == pytest.approx(3 / 6)
    assert body["metrics"]["max_queue_depth"] == 5
    quiet = _get(live_server, "a-auditor", "/api/v1/devices/IC300-0002/protection-status").json()
    assert quiet["reported"] is False and quiet["mode"] is None


def test_other_hospitals_device_looks_missing(live_server, reported):
    for path in ("protection-events", "protection-status"):
        theirs = _get(live_server, "a-responsible", f"/api/v1/devices/{B_SERIAL}/{path}")
        missing = _get(live_server, "a-responsible", f"/api/v1/devices/IC300-9999/{path}")
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json() == missing.json()
        assert "secret-malware" not in theirs.text


def test_fleet_counts_are_per_tenant(live_server, reported):
    maker = {r["serial"]: r for r in _get(live_server, "maker-admin", "/api/v1/protection/fleet").json()}
    assert maker[A_SERIAL]["blocked"] == 1 and maker[A_SERIAL]["integrity"] == 1 and maker[A_SERIAL]["drift"] == 1
    assert maker[B_SERIAL]["blocked"] == 1
    hospital_a = _get(live_server, "a-admin", "/api/v1/protection/fleet")
    assert {r["serial"] for r in hospital_a.json()} == {A_SERIAL, "IC300-0002"}
    assert "hospital-b" not in hospital_a.text


def test_moved_device_does_not_show_its_former_hospitals_events(live_server, reported):
    # A device resold or moved to hospital B keeps B from reading what happened at hospital A.
    with live_server.ctx.tx() as s:
        b_id = s.scalar(select(Organization.id).where(Organization.slug == "hospital-b"))
        s.execute(update(Device).where(Device.serial == A_SERIAL).values(hospital_id=b_id, site_id=None))
    r = _get(live_server, "b-responsible", f"/api/v1/devices/{A_SERIAL}/protection-events")
    assert r.status_code == 200 and r.json() == []
    status = _get(live_server, "b-responsible", f"/api/v1/devices/{A_SERIAL}/protection-status").json()
    assert status["reported"] is False
    fleet = {x["serial"]: x for x in _get(live_server, "b-responsible", "/api/v1/protection/fleet").json()}
    assert fleet[A_SERIAL]["blocked"] == 0 and fleet[A_SERIAL]["mode"] is None
    maker = _get(live_server, "maker-admin", f"/api/v1/devices/{A_SERIAL}/protection-events")
    assert len(maker.json()) == 3
