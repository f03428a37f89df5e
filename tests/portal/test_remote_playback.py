"""Recording playback and the service report in the portal: over HTTP and in a real headless Chromium
(RA-2, RA-3, RA-5). Playback is checked against the sealed hash and logged; other tenants see nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conftest import sign_in, sign_in_browser
from medsec.remote.recording import AsciicastRecorder
from medsec.server.models import AuditEntry
from medsec.server.services import remote_sessions as remote
from support.remote import approved_session
from support.remote import people as _people

SERIAL = "IC300-0001"


def _session_with_recording(live_server: Any, tmp_path: Path) -> tuple[str, int, Path]:
    ctx = live_server.ctx
    people = _people(ctx)
    now = int(time.time())
    sid = approved_session(ctx, SERIAL, now)
    cast = tmp_path / f"{sid}.cast"
    rec = AsciicastRecorder(cast)
    rec.marker("approval a-responsible")
    for ch in "status\r":
        rec.input(ch)
    rec.output("medsec-maint$ status\r\npump: idle\r\n")
    rec.marker("end completed")
    sha = rec.close()
    with ctx.tx() as db:
        remote.recording_sealed(db, ctx.audit, sid, cast, sha)
        rec_id = remote.get_session(db, people["a-responsible"], sid).recordings[0].id
    return sid, rec_id, cast


def _viewed(live_server: Any) -> list[dict[str, Any]]:
    with live_server.ctx.tx() as db:
        rows = db.scalars(
            select(AuditEntry.body).where(AuditEntry.event_type == "remote.recording_viewed").order_by(AuditEntry.idx)
        )
        return [json.loads(b) for b in rows]


@pytest.mark.req("RA-2")
def test_playback_download_and_tampering_over_http(
    live_server: Any, client_factory: Any, totp: Any, tmp_path: Path
) -> None:
    sid, rec_id, cast = _session_with_recording(live_server, tmp_path)
    users = live_server.seed.users
    hospital = client_factory()
    sign_in(hospital, users["a-responsible"], totp, next_path="/maintenance")
    page = hospital.get(f"/maintenance/{sid}")
    assert f'href="/maintenance/{sid}/recordings/{rec_id}"' in page.text
    assert f'href="/maintenance/{sid}/report/proof.json"' in page.text

    played = hospital.get(f"/maintenance/{sid}/recordings/{rec_id}")
    assert played.status_code == 200
    assert "Verified: the recording matches" in played.text and "pump: idle" in played.text
    downloaded = hospital.get(f"/maintenance/{sid}/recordings/{rec_id}.cast")
    assert downloaded.status_code == 200 and downloaded.content == cast.read_bytes()
    assert [e["details"]["mode"] for e in _viewed(live_server)] == ["playback", "download"]

    # another hospital: exactly like a recording that does not exist
    other = client_factory()
    sign_in(other, users["b-responsible"], totp, next_path="/maintenance")
    foreign = other.get(f"/maintenance/{sid}/recordings/{rec_id}")
    missing = hospital.get(f"/maintenance/{sid}/recordings/{rec_id + 1000}")
    assert foreign.status_code == missing.status_code == 404
    assert "There is no such recording." in foreign.text and "There is no such recording." in missing.text
    assert other.get(f"/maintenance/{sid}/report/en.pdf").status_code == 404
    assert len(_viewed(live_server)) == 2

    cast.write_bytes(cast.read_bytes().replace(b"pump: idle", b"pump: busy"))
    tampered = hospital.get(f"/maintenance/{sid}/recordings/{rec_id}")
    assert tampered.status_code == 409
    assert "does not match the SHA-256 sealed in the audit log" in tampered.text
    assert "pump: busy" not in tampered.text
    assert hospital.get(f"/maintenance/{sid}/recordings/{rec_id}.cast").status_code == 409
    failed = [e["details"] for e in _viewed(live_server) if not e["details"]["verified"]]
    assert [(d["mode"], d["problem"]) for d in failed] == [
        ("playback", "recording_tampered"),
        ("download", "recording_tampered"),
    ]


@pytest.mark.req("RA-5")
def test_service_report_over_the_api_is_tenant_scoped(live_server: Any, tmp_path: Path) -> None:
    import httpx

    sid, _rec_id, _cast = _session_with_recording(live_server, tmp_path)
    admin = {"Authorization": f"Bearer {live_server.seed.admin_token}"}
    url = f"{live_server.url}/api/v1/remote/sessions/{sid}/report"
    r = httpx.get(url, params={"format": "bundle"}, headers=admin, timeout=60)
    assert r.status_code == 200 and r.json()["format"] == "medsec-auditlog-export/v1"
    assert r.json()["service_report"]["session"] == sid
    html = httpx.get(url, params={"format": "html", "lang": "en"}, headers=admin, timeout=60)
    assert html.status_code == 200 and "Remote maintenance service report" in html.text
    bad = httpx.get(url, params={"format": "docx"}, headers=admin, timeout=60)
    assert bad.status_code == 422


@pytest.mark.browser
@pytest.mark.req("RA-2")
@pytest.mark.req("RA-5")
def test_hospital_watches_the_recording_in_chromium(new_page: Any, live_server: Any, totp: Any, tmp_path: Path) -> None:
    sid, _rec_id, _cast = _session_with_recording(live_server, tmp_path)
    page = new_page("ja-JP")
    user = live_server.seed.users["a-responsible"]  # prefers Japanese
    page.goto(f"{live_server.url}/login?next=/maintenance/{sid}")
    sign_in_browser(page, live_server.url, user, totp, lang="ja")
    page.goto(f"{live_server.url}/maintenance/{sid}")
    page.get_by_role("link", name="記録 1 を再生").click()
    assert page.get_by_role("heading", name=f"セッション {sid} の記録").is_visible()
    assert "検証済み" in page.locator("#recording-check").inner_text()
    assert page.get_by_role("cell", name="pump: idle").is_visible()
    assert page.get_by_role("cell", name="approval a-responsible").is_visible()
    with page.expect_download() as download:
        page.get_by_role("link", name="asciicast v2 ファイル(.cast)").click()
    assert download.value.suggested_filename.endswith(".cast")
    page.get_by_role("link", name=sid).click()
    with page.expect_download() as report:
        page.get_by_role("link", name="報告書(日本語、PDF)").click()
    assert report.value.suggested_filename == f"service-report-{sid}.ja.pdf"
    assert [e["details"]["mode"] for e in _viewed(live_server)] == ["playback", "download"]
