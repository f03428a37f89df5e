"""The remote-maintenance portal pages over the real server (SQLite and PostgreSQL): the plan before the
work, approval, the work report and the confirmation of the end of work (RA-1, RA-3, RA-5)."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from sqlalchemy import select

from medsec.crypto.keys import SigningKey
from medsec.remote.maintenance_code import verify_code
from medsec.server.models import AuditEntry, Device, DeviceStatus, User
from medsec.server.principal import Principal
from medsec.server.remote_authority import load_remote_keys
from medsec.server.services import accounts
from medsec.server.services import remote_sessions as remote

pytestmark = pytest.mark.req("RA-3")

SERIAL_A = "IC300-0001"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
PLAN = {
    "device": SERIAL_A,
    "purpose": "replace the flow sensor calibration table",
    "planned_work": "upload calibration v7, restart the pump service",
    "expected_impact": "pump unavailable for 10 minutes",
    "expected_downtime_minutes": "10",
    "rollback": "restore calibration v6 from the backup slot",
    "shell": "1",
    "ports": "dicom=104",
    "window_minutes": "60",
}


def _client(live_server, username: str, lang: str = "en") -> tuple[httpx.Client, str]:
    with live_server.ctx.tx() as s:
        user = s.scalar(select(User).where(User.username == username))
        cookie, row = accounts.create_web_session(s, live_server.ctx.settings, user, mfa_verified=True)
        csrf = row.csrf_token
    client = httpx.Client(base_url=live_server.url, follow_redirects=False, timeout=30)
    client.cookies.set("medsec_session", cookie)
    client.cookies.set("medsec_lang", lang)
    return client, csrf


def _request(engineer: httpx.Client, csrf: str, **extra: str) -> str:
    r = engineer.post("/maintenance", data={**PLAN, **extra, "csrf_token": csrf})
    assert r.status_code == 303, r.text
    match = re.fullmatch(r"/maintenance/(ms-[0-9a-f]+)", r.headers["location"])
    assert match, r.headers["location"]
    return match.group(1)


def _events(live_server, prefix: str) -> list[str]:
    with live_server.ctx.tx() as s:
        return [e for e in s.scalars(select(AuditEntry.event_type).order_by(AuditEntry.idx)) if e.startswith(prefix)]


def test_request_approve_report_and_confirm_through_the_portal(live_server) -> None:
    engineer, e_csrf = _client(live_server, "maker-service")
    hospital, h_csrf = _client(live_server, "a-responsible")
    with engineer, hospital:
        assert engineer.get("/maintenance/new").status_code == 200
        sid = _request(engineer, e_csrf)
        # The engineer cannot approve its own request; the form is not even offered.
        own = engineer.get(f"/maintenance/{sid}")
        assert own.status_code == 200 and f"/maintenance/{sid}/approve" not in own.text
        refused = engineer.post(f"/maintenance/{sid}/approve", data={"csrf_token": e_csrf})
        assert refused.status_code == 403

        assert hospital.get("/maintenance/new").status_code == 403  # only engineers file requests
        listing = hospital.get("/maintenance")
        assert listing.status_code == 200 and sid in listing.text and "0 of 1" in listing.text
        page = hospital.get(f"/maintenance/{sid}")
        assert page.status_code == 200
        for shown in (PLAN["purpose"], PLAN["planned_work"], PLAN["expected_impact"], PLAN["rollback"], "dicom"):
            assert shown in page.text
        assert f"/maintenance/{sid}/approve" in page.text
        r = hospital.post(f"/maintenance/{sid}/approve", data={"csrf_token": h_csrf, "comment": "ok"})
        assert r.status_code == 303
        assert "1 of 1 approvals" in hospital.get(f"/maintenance/{sid}").text

        # The engineer connects through the gateway: the first ticket starts the session.
        approval_key = load_remote_keys(live_server.ctx.settings).approval_key
        with live_server.ctx.tx() as s:
            user = s.scalar(select(User).where(User.username == "maker-service"))
            remote.gateway_ticket(s, live_server.ctx.audit, approval_key, sid, int(time.time()))
            assert remote.get_session(s, Principal.of(user, mfa_verified=True), sid).state == "active"

        r = engineer.post(
            f"/maintenance/{sid}/report",
            data={
                "csrf_token": e_csrf,
                "work_done": "uploaded calibration v7",
                "results": "flow within 1 percent",
                "verification": "test infusion of 50 ml measured",
            },
        )
        assert r.status_code == 303, r.text
        page = hospital.get(f"/maintenance/{sid}")
        assert "uploaded calibration v7" in page.text and f"/maintenance/{sid}/confirm" in page.text
        r = hospital.post(
            f"/maintenance/{sid}/confirm", data={"csrf_token": h_csrf, "outcome": "follow_up_needed", "comment": "x"}
        )
        assert r.status_code == 303
        done = hospital.get(f"/maintenance/{sid}")
        assert "Follow-up needed, confirmed by a-responsible" in done.text
    assert _events(live_server, "remote.session.") == [
        "remote.session.requested",
        "remote.session.approved",
        "remote.session.started",
        "remote.session.ended",
        "remote.session.reported",
        "remote.session.confirmed",
    ]


def test_hospital_b_gets_404_on_hospital_a_sessions(live_server) -> None:
    engineer, e_csrf = _client(live_server, "maker-service")
    other, b_csrf = _client(live_server, "b-responsible")
    with engineer, other:
        sid = _request(engineer, e_csrf)
        assert sid not in other.get("/maintenance").text
        assert other.get(f"/maintenance/{sid}").status_code == 404
        assert other.get("/maintenance/ms-does-not-exist").status_code == 404
        for action in ("approve", "reject", "revoke", "confirm", "report"):
            r = other.post(
                f"/maintenance/{sid}/{action}", data={"csrf_token": b_csrf, "reason": "x", "outcome": "accepted"}
            )
            assert r.status_code == 404, action
            assert PLAN["purpose"] not in r.text


def test_post_without_csrf_token_is_refused_and_audited(live_server) -> None:
    engineer, e_csrf = _client(live_server, "maker-service")
    hospital, _ = _client(live_server, "a-responsible")
    with engineer, hospital:
        sid = _request(engineer, e_csrf)
        r = hospital.post(f"/maintenance/{sid}/approve", data={"csrf_token": "forged"})
        assert r.status_code == 403
        assert engineer.post("/maintenance", data=PLAN).status_code == 403
        assert "0 of 1 approvals" in hospital.get(f"/maintenance/{sid}").text
    assert _events(live_server, "auth.csrf_refused") == ["auth.csrf_refused", "auth.csrf_refused"]


def test_emergency_sessions_are_flagged_and_pages_render_in_japanese(live_server) -> None:
    engineer, e_csrf = _client(live_server, "maker-service", lang="ja")
    hospital, h_csrf = _client(live_server, "a-responsible", lang="ja")
    with engineer, hospital:
        sid = _request(engineer, e_csrf, emergency="1")
        listing = hospital.get("/maintenance")
        assert "緊急" in listing.text and "リモート保守" in listing.text
        page = hospital.get(f"/maintenance/{sid}")
        assert "緊急" in page.text and "作業前の説明" in page.text
        r = hospital.post(f"/maintenance/{sid}/revoke", data={"csrf_token": h_csrf, "reason": "not now"})
        assert r.status_code == 303
        assert "取り消し" in hospital.get(f"/maintenance/{sid}").text


@pytest.mark.req("PA-3")
def test_engineer_gets_a_local_maintenance_code_the_device_accepts(live_server) -> None:
    device_key = SigningKey.generate()
    with live_server.ctx.tx() as s:  # as enrollment leaves it
        device = s.scalar(select(Device).where(Device.serial == SERIAL_A))
        device.public_key = device_key.verify_key.to_base64()
        device.status = DeviceStatus.ACTIVE.value
    engineer, e_csrf = _client(live_server, "maker-service")
    hospital, h_csrf = _client(live_server, "a-responsible")
    with engineer, hospital:
        sid = _request(engineer, e_csrf)
        # Not before the hospital approved, and never for the hospital's own people.
        assert engineer.post(f"/maintenance/{sid}/local-code", data={"csrf_token": e_csrf}).status_code == 409
        hospital.post(f"/maintenance/{sid}/approve", data={"csrf_token": h_csrf})
        assert hospital.post(f"/maintenance/{sid}/local-code", data={"csrf_token": h_csrf}).status_code == 403
        page = engineer.post(f"/maintenance/{sid}/local-code", data={"csrf_token": e_csrf})
        assert page.status_code == 200
        match = re.search(r"<code>(\d{8})</code>", page.text)
        assert match, page.text
    approval = load_remote_keys(live_server.ctx.settings).approval_key.verify_key
    verify_code(device_key, approval, SERIAL_A, sid, match.group(1), int(time.time()))
    assert "remote.local_code_issued" in _events(live_server, "remote.local_code")
