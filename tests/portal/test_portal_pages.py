"""Device, audit and account pages: tenant scope (PA-1), the audit log and its verification (RA-2)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from sqlalchemy import select, update

from conftest import csrf_of, sign_in
from medsec.server.models import AuditEntry

HOSPITAL_A_SERIALS = ("IC300-0001", "IC300-0002")
HOSPITAL_B_SERIALS = ("IC300-0003",)


@pytest.mark.req("PA-1")
def test_hospital_user_sees_only_its_own_devices(
    client_factory: Any, live_server: Any, totp: Any, checked_in: Any
) -> None:
    c = client_factory()
    page = sign_in(c, live_server.seed.users["a-responsible"], totp)
    assert page.status_code == 200
    for serial in HOSPITAL_A_SERIALS:
        assert serial in page.text
    for serial in HOSPITAL_B_SERIALS:
        assert serial not in page.text
    assert "Minato University Hospital" not in page.text
    assert "2.4.1" in page.text and "running" in page.text  # the check-in of IC300-0001
    assert re.search(r"\d+ (second|minute)s? ago", page.text)
    assert "<caption>" in page.text and '<th scope="col">' in page.text and '<th scope="row">' in page.text


@pytest.mark.req("PA-1")
def test_hospital_user_gets_404_for_another_hospitals_device(
    client_factory: Any, live_server: Any, totp: Any, checked_in: Any
) -> None:
    c = client_factory()
    sign_in(c, live_server.seed.users["a-responsible"], totp)
    own = c.get("/devices/IC300-0001")
    assert own.status_code == 200
    assert "Signed check-ins" in own.text and "2.4.1" in own.text
    other = c.get("/devices/IC300-0003")
    assert other.status_code == 404
    assert "IC300-0003" not in other.text.replace("/devices/IC300-0003", "")
    assert "no such device" in other.text
    unknown = c.get("/devices/NO-SUCH-DEVICE")
    assert unknown.status_code == 404
    # the hospital filter is the manufacturer's; a hospital asking for another one learns nothing
    assert c.get("/devices", params={"hospital": "hospital-b"}).status_code == 404


@pytest.mark.req("PA-1")
def test_manufacturer_sees_every_hospital_and_can_filter(
    client_factory: Any, live_server: Any, totp: Any, checked_in: Any
) -> None:
    c = client_factory()
    page = sign_in(c, live_server.seed.users["maker-admin"], totp)
    for serial in HOSPITAL_A_SERIALS + HOSPITAL_B_SERIALS:
        assert serial in page.text
    assert "Sakura General Hospital" in page.text and "Minato University Hospital" in page.text
    assert '<label for="hospital">' in page.text
    only_b = c.get("/devices", params={"hospital": "hospital-b"})
    assert "IC300-0003" in only_b.text and "IC300-0001" not in only_b.text
    detail = c.get("/devices/IC300-0003")
    assert detail.status_code == 200
    assert "Access log checkpoints" in detail.text
    assert "medsec-device/IC300-0003" in detail.text  # the cosigned note of the device's access log


@pytest.mark.req("RA-2")
def test_audit_page_is_scoped_to_the_hospital(
    client_factory: Any, live_server: Any, totp: Any, checked_in: Any
) -> None:
    c = client_factory()
    sign_in(c, live_server.seed.users["a-responsible"], totp)
    page = c.get("/audit")
    assert page.status_code == 200
    assert "<pre" in page.text and "test.medsec.local/audit" in page.text  # the signed checkpoint note
    assert live_server.ctx.audit.vkey in page.text
    for serial in HOSPITAL_B_SERIALS:
        assert serial not in page.text
    assert "Minato University Hospital" not in page.text
    assert "IC300-0001" in page.text
    export = c.get("/audit/export.json")
    assert export.status_code == 200
    assert "attachment" in export.headers["content-disposition"]
    assert "IC300-0003" not in export.text and "hospital-b" not in export.text
    assert json.loads(export.text)
    with live_server.ctx.tx() as session:  # there is something to hide: hospital-b's device is in the log
        assert any(b"IC300-0003" in body for body in session.scalars(select(AuditEntry.body)))


@pytest.mark.req("RA-2")
def test_verify_button_checks_the_log_and_is_audited(client_factory: Any, live_server: Any, totp: Any) -> None:
    c = client_factory()
    sign_in(c, live_server.seed.users["a-auditor"], totp)
    page = c.get("/audit")
    r = c.post("/audit/verify", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 200
    assert "The audit log verified." in r.text
    assert re.search(r'<code class="hash">[0-9a-f]{64}</code>', r.text)
    with live_server.ctx.tx() as session:
        last = session.scalar(select(AuditEntry).order_by(AuditEntry.idx.desc()).limit(1))
        assert last.event_type == "audit.verified" and last.actor == "a-auditor"


@pytest.mark.req("RA-2")
def test_verify_reports_a_tampered_log(client_factory: Any, live_server: Any, totp: Any) -> None:
    c = client_factory()
    sign_in(c, live_server.seed.users["maker-auditor"], totp)
    page = c.get("/audit")
    with live_server.ctx.tx() as session:
        session.execute(update(AuditEntry).where(AuditEntry.idx == 1).values(body=b'{"forged":true}'))
    r = c.post("/audit/verify", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 200
    assert "The audit log did not verify." in r.text and 'role="alert"' in r.text
    assert "entry 1" in r.text
    with live_server.ctx.tx() as session:
        types = list(session.scalars(select(AuditEntry.event_type).order_by(AuditEntry.idx.desc()).limit(1)))
    assert types == ["audit.verification_failed"]


@pytest.mark.req("PA-1")
def test_account_page_creates_shows_once_and_revokes_tokens(client_factory: Any, live_server: Any, totp: Any) -> None:
    c = client_factory()
    sign_in(c, live_server.seed.users["a-responsible"], totp)
    page = c.get("/account")
    assert page.status_code == 200
    assert "Hospital responsible person" in page.text
    created = c.post(
        "/account/tokens", data={"name": "ci-script", "expires_days": "30", "csrf_token": csrf_of(page.text)}
    )
    assert created.status_code == 201
    secret = re.search(r'value="(msk_[^"]+)"', created.text)
    assert secret
    api = client_factory(headers={"authorization": f"Bearer {secret.group(1)}"})
    assert api.get("/api/v1/devices").status_code == 200
    again = c.get("/account")
    assert secret.group(1) not in again.text and "ci-script" in again.text
    token_id = re.findall(r'action="/account/tokens/(\d+)/revoke"', again.text)[-1]
    r = c.post(f"/account/tokens/{token_id}/revoke", data={"csrf_token": csrf_of(again.text)})
    assert r.status_code == 303
    assert api.get("/api/v1/devices").status_code == 401
    bad = c.post("/account/tokens", data={"name": "", "expires_days": "30", "csrf_token": csrf_of(again.text)})
    assert bad.status_code == 422 and "1 to 100 characters" in bad.text


@pytest.mark.req("PA-1")
def test_account_language_preference_is_saved(client_factory: Any, live_server: Any, totp: Any) -> None:
    c = client_factory(lang=None)
    page = sign_in(c, live_server.seed.users["a-auditor"], totp)
    assert '<html lang="ja">' in page.text  # seeded hospital users prefer Japanese
    r = c.post("/account", data={"locale": "en", "csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    assert '<html lang="en">' in c.get("/devices").text
    fresh = client_factory(lang=None, headers={"accept-language": "ja"})
    assert '<html lang="en">' in sign_in(fresh, live_server.seed.users["a-auditor"], totp).text
