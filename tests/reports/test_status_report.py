"""Signed security status reports (RA-6) on the real server: figures match the API, the signature and the
audit-log proof verify offline, a tampered file and another hospital are refused."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from medsec.cli.main import app as cli
from medsec.crypto.keys import VerifyKey
from medsec.reports.signing import ReportFileMismatch, ReportVerificationError, check_audit_inclusion, verify_report
from medsec.server.models import Device, Organization, Release, User
from medsec.server.models_remote import RemoteSession
from medsec.server.models_updates import Campaign, CampaignDevice
from medsec.server.seed_vulns import PRODUCT, VERSION, seed_vulns

pytestmark = pytest.mark.req("RA-6")

needs_pdftotext = pytest.mark.skipif(
    shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) is not installed; .ci/run installs it"
)
NOW = dt.datetime.now(dt.UTC)


def _device(s: Any, serial: str) -> Device:
    return s.scalar(select(Device).where(Device.serial == serial))


def _hospital_a_story(ctx: Any) -> None:
    """Hospital A: two pumps on 1.0.0, one with a failed and one with a rolled-back update, a remote session
    reported but not yet confirmed, and blocked executions on IC300-0001. Hospital B: one pump, nothing else."""
    seed_vulns(ctx, today=NOW.date())
    with ctx.tx() as s:
        maker = s.scalar(select(User).where(User.username == "maker-release"))
        release = s.scalar(select(Release).where(Release.product == PRODUCT, Release.version == VERSION))
        one, two, three = (_device(s, f"IC300-000{i}") for i in (1, 2, 3))
        for d in (one, two):
            d.installed_version, d.last_seen_at, d.status = VERSION, NOW - dt.timedelta(minutes=5), "active"
        campaign = Campaign(
            name="1.0.0 rollout", release_id=release.id, status="running", success_threshold=90,
            error_threshold=50, created_by=maker.id,
        )  # fmt: skip
        s.add(campaign)
        s.flush()
        s.add(CampaignDevice(campaign_id=campaign.id, device_id=one.id, group_index=0, state="failed", reason="hash"))
        s.add(CampaignDevice(campaign_id=campaign.id, device_id=two.id, group_index=0, state="rolled_back"))
        s.add(CampaignDevice(campaign_id=campaign.id, device_id=three.id, group_index=0, state="waiting_for_window"))
        s.add(
            RemoteSession(
                id="ms-report-test", device_id=one.id, hospital_id=one.hospital_id, engineer="maker-service",
                purpose="log review", planned_work="read logs", expected_impact="none", expected_downtime_minutes=0,
                rollback="none", capabilities={"shell": True, "file_transfer": False, "ports": []},
                window_start=NOW - dt.timedelta(hours=2), window_end=NOW - dt.timedelta(hours=1),
                approvals_required=1, escalate_after_minutes=1440, state="reported", work_done="read logs",
                results="ok", verification="pump restarted and checked",
            )
        )  # fmt: skip
        _blocked_executions(s, one, count=3)


def _blocked_executions(s: Any, device: Device, count: int) -> None:
    from medsec.server.models_protect import ProtectionEventRow

    for i in range(count):
        s.add(
            ProtectionEventRow(
                device_id=device.id, organization_id=device.hospital_id, seq=1, index=i, category="exec",
                action="deny", mode="enforce", rule="not_in_trustdb", subject_exe="/usr/bin/sh",
                object_path=f"/tmp/x{i}", detail="", event_time=NOW - dt.timedelta(hours=1), received_at=NOW,
            )
        )  # fmt: skip


@pytest.fixture
def story(live_server: Any) -> Any:
    _hospital_a_story(live_server.ctx)
    return live_server


def _api(server: Any, user: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {server.seed.tokens[user]}"}, timeout=60
    )


def _request(client: httpx.Client, hospital: str, lang: str) -> dict[str, Any]:
    r = client.post("/api/v1/reports/status", json={"hospital": hospital, "lang": lang})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _pdf_text(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "report.pdf"
    path.write_bytes(data)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout


def _figure(text: str, label: str) -> int:
    match = re.search(re.escape(label) + r"\s+(\d+)\b", text)
    assert match, f"{label!r} not in the PDF text"
    return int(match.group(1))


def _api_figures(client: httpx.Client) -> dict[str, int]:
    """The same figures, counted from the API the hospital already has."""
    devices = client.get("/api/v1/devices").json()
    updates = client.get("/api/v1/device-updates").json()
    findings = client.get("/api/v1/vulns/findings").json()
    advisories = client.get("/api/v1/vulns/advisories").json()
    fleet = client.get("/api/v1/protection/fleet").json()
    sessions = client.get("/api/v1/remote/sessions").json()
    states = [u["state"] for u in updates]
    return {
        "devices": len(devices),
        "pending": sum(s in ("pending", "offered", "downloading", "waiting_for_window", "installing") for s in states),
        "failed": states.count("failed"),
        "rolled_back": states.count("rolled_back"),
        "findings": len(findings),
        "advisories": len(advisories),
        "blocked": sum(row["blocked"] for row in fleet),
        "sessions": len(sessions),
    }


@needs_pdftotext
@pytest.mark.parametrize(
    ("lang", "labels"),
    [
        ("en", ("Devices", "Failed updates", "Rolled-back updates", "Open vulnerabilities (findings)",
                "Advisories concerning the hospital", "Blocked executions", "Remote maintenance sessions",
                "Pending updates", "Sessions not yet confirmed")),
        ("ja", ("機器数", "失敗した更新", "ロールバックされた更新", "未解決の脆弱性(検出)", "関係するアドバイザリ",
                "実行をブロックした件数", "遠隔保守セッション", "適用待ちの更新", "終了確認待ちセッション")),
    ],
)  # fmt: skip
def test_pdf_figures_match_the_api(story: Any, tmp_path: Path, lang: str, labels: tuple[str, ...]) -> None:
    with _api(story, "a-responsible") as a:
        report = _request(a, "hospital-a", lang)
        pdf = a.get(report["downloads"]["pdf"])
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")
        api = _api_figures(a)
    text = _pdf_text(tmp_path, pdf.content)
    devices, failed, rolled, findings, advisories, blocked, sessions, pending, unconfirmed = (
        _figure(text, label) for label in labels
    )
    assert (devices, failed, rolled, pending) == (api["devices"], api["failed"], api["rolled_back"], api["pending"])
    assert (findings, advisories, blocked, sessions) == (
        api["findings"], api["advisories"], api["blocked"], api["sessions"],
    )  # fmt: skip
    # The seeded story, so equal-but-wrong counts on both sides would still fail.
    assert (devices, failed, rolled, pending, blocked, sessions, unconfirmed) == (2, 1, 1, 0, 3, 1, 1)
    assert findings == 5 and advisories == 2
    assert "IC300-0003" not in text  # hospital B's pump
    assert "ms-report-test" in text and report["id"] in text


def test_report_signature_and_audit_proof_verify_offline(story: Any, tmp_path: Path) -> None:
    with _api(story, "a-auditor") as a:
        report = _request(a, "hospital-a", "en")
        key = a.get("/api/v1/reports/key").json()
        files = {kind: a.get(report["downloads"][kind]).content for kind in ("pdf", "html", "json", "sig")}
    for kind in ("pdf", "html", "json"):
        path = tmp_path / f"r.{kind}"
        path.write_bytes(files[kind])
        (tmp_path / "r.sig").write_bytes(files["sig"])
        result = CliRunner().invoke(
            cli,
            ["report", "verify", str(path), "--signature", str(tmp_path / "r.sig"), "--key", key["key"],
             "--log-key", key["log_key"], "--json"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert f'"report_id": "{report["id"]}"' in result.output and '"inclusion_proof_checked": true' in result.output
    statement = verify_report(files["pdf"], "pdf", files["sig"], VerifyKey.from_base64(key["key"]))
    assert statement["hospital"] == {"slug": "hospital-a", "name": "Sakura General Hospital"}
    assert statement["generated_by"] == "a-auditor"
    assert check_audit_inclusion(statement, key["log_key"]) == report["audit_index"]
    # The stored audit entry records the same content hash and the signed-files entry the same PDF hash.
    with story.ctx.tx() as s:
        from medsec.server.models import AuditEntry

        bodies = [e.body.decode() for e in s.scalars(select(AuditEntry).where(AuditEntry.event_type.like("report.%")))]
    assert any(statement["content_sha256"] in b and "report.status_generated" in b for b in bodies)
    assert any(statement["files"]["pdf"]["sha256"] in b and "report.status_signed" in b for b in bodies)


def test_tampered_pdf_fails_verification(story: Any, tmp_path: Path) -> None:
    with _api(story, "a-responsible") as a:
        report = _request(a, "hospital-a", "en")
        key = a.get("/api/v1/reports/key").json()["key"]
        pdf, sig = (a.get(report["downloads"][k]).content for k in ("pdf", "sig"))
    # One changed byte in the page content (the streams are compressed, so no plain text to edit).
    middle = len(pdf) // 2
    tampered = pdf[:middle] + bytes([pdf[middle] ^ 0x01]) + pdf[middle + 1 :]
    with pytest.raises(ReportFileMismatch, match="does not match the signed report"):
        verify_report(tampered, "pdf", sig, VerifyKey.from_base64(key))
    (tmp_path / "t.pdf").write_bytes(tampered)
    (tmp_path / "t.sig").write_bytes(sig)
    result = CliRunner().invoke(
        cli, ["report", "verify", str(tmp_path / "t.pdf"), "--signature", str(tmp_path / "t.sig"), "--key", key]
    )
    assert result.exit_code == 1 and "does not match the signed report" in result.output
    # A signature made by another key is refused too, before any file is compared.
    other = VerifyKey(bytes(32 * [7]))
    with pytest.raises(Exception, match="valid signature"):
        verify_report(pdf, "pdf", sig, other)


def test_forged_statement_audit_part_is_refused(story: Any) -> None:
    with _api(story, "a-responsible") as a:
        report = _request(a, "hospital-a", "en")
        key = a.get("/api/v1/reports/key").json()
        sig = a.get(report["downloads"]["sig"]).content
    statement = verify_report(
        a_pdf := httpx.get(story.url + report["downloads"]["pdf"], headers=_auth(story, "a-responsible")).content,
        "pdf",
        sig,
        VerifyKey.from_base64(key["key"]),
    )
    assert a_pdf
    moved = {**statement, "audit": {**statement["audit"], "index": statement["audit"]["index"] - 1}}
    with pytest.raises(ReportVerificationError, match="not in the log"):
        check_audit_inclusion(moved, key["log_key"])


def _auth(server: Any, user: str) -> dict[str, str]:
    return {"authorization": f"Bearer {server.seed.tokens[user]}"}


def test_another_hospitals_report_looks_missing(story: Any) -> None:
    with _api(story, "a-responsible") as a:
        report = _request(a, "hospital-a", "en")
    with _api(story, "b-responsible") as b:
        for kind in ("pdf", "sig", "json", "html"):
            theirs = b.get(f"/api/v1/reports/status/{report['id']}.{kind}")
            missing = b.get(f"/api/v1/reports/status/sr-00000000000000000000.{kind}")
            assert theirs.status_code == missing.status_code == 404
            assert theirs.json() == missing.json() == {"error": "unknown_report", "detail": theirs.json()["detail"]}
        asked = b.post("/api/v1/reports/status", json={"hospital": "hospital-a", "lang": "en"})
        nowhere = b.post("/api/v1/reports/status", json={"hospital": "no-such-hospital", "lang": "en"})
        assert asked.status_code == nowhere.status_code == 404 and asked.json() == nowhere.json()
        assert b.get("/api/v1/reports/status").json() == []
        # Its own report holds only its own pump.
        own = _request(b, "hospital-b", "en")
        body = b.get(own["downloads"]["json"]).text
        assert "IC300-0003" in body and "IC300-0001" not in body
    with _api(story, "maker-admin") as m:
        listed = {r["id"] for r in m.get("/api/v1/reports/status").json()}
        assert {report["id"], own["id"]} <= listed
        assert m.get(report["downloads"]["pdf"]).status_code == 200


def test_unknown_language_is_refused_with_the_field_named(story: Any) -> None:
    with _api(story, "a-responsible") as a:
        r = a.post("/api/v1/reports/status", json={"hospital": "hospital-a", "lang": "de"})
    assert r.status_code == 422 and "lang" in r.text


def test_cli_writes_a_report_and_its_signature(story: Any, tmp_path: Path) -> None:
    settings = story.ctx.settings
    out = tmp_path / "status.html"
    args = ["--data-dir", str(settings.data_dir), "--database-url", settings.effective_database_url()]
    result = CliRunner().invoke(
        cli,
        ["report", "status", "--hospital", "hospital-b", "--lang", "ja", "--format", "html", "-o", str(out),
         "--as", "maker-admin", "--json", *args],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "セキュリティ管理状況報告書" in out.read_text()
    key = CliRunner().invoke(cli, ["report", "key", "--data-dir", str(settings.data_dir)]).output.strip()
    ok = CliRunner().invoke(cli, ["report", "verify", str(out), "--signature", str(out) + ".sig", "--key", key])
    assert ok.exit_code == 0 and "OK" in ok.output
    with story.ctx.tx() as s:
        org = s.scalar(select(Organization).where(Organization.slug == "hospital-b"))
        assert org is not None
