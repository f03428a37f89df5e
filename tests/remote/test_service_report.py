"""Recording playback and the service report with its proof bundle, on SQLite and PostgreSQL (RA-2, RA-3, RA-5)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from medsec.auditlog.export import verify_export
from medsec.errors import NotFound, ProofError
from medsec.remote.recording import AsciicastRecorder
from medsec.server.context import ServerContext
from medsec.server.models import AuditEntry
from medsec.server.principal import Principal
from medsec.server.seed import Seed
from medsec.server.services import remote_sessions as remote
from medsec.server.services.accounts import AuditedRefusal
from support.remote import approved_session
from support.remote import people as _people

SERIAL = "IC300-0001"
PLANNED = "read the pump status and firmware version"


def _record(path: Path) -> str:
    rec = AsciicastRecorder(path, title="status")
    rec.marker("approval a-responsible")
    rec.marker(f"start maker-service@{SERIAL}")
    for ch in "status\r":
        rec.input(ch)
    rec.output("medsec-maint$ status\r\npump: idle\r\nbattery: 98%\r\n")
    rec.file_transfer("put", "calib.bin", "ab" * 32, 1024)
    rec.marker("end completed")
    return rec.close()


def _closed_session(ctx: ServerContext, tmp_path: Path) -> tuple[str, dict[str, Principal], Path]:
    """A session that went the whole way: requested, approved, recorded, reported, confirmed."""
    people = _people(ctx)
    now = int(time.time())
    sid = approved_session(
        ctx,
        SERIAL,
        now,
        comment="go ahead",
        planned_work=PLANNED,
        expected_impact="none; the pump stays in clinical use",
        expected_downtime_minutes=7,
        rollback="nothing to roll back",
        file_transfer=True,
    )
    cast = tmp_path / f"{sid}.cast"
    sha = _record(cast)
    with ctx.tx() as db:
        remote.recording_sealed(db, ctx.audit, sid, cast, sha)
        row = remote.get_session(db, people["maker-admin"], sid)
        row.state = "active"
        row.started_at = row.requested_at
    with ctx.tx() as db:
        remote.submit_report(
            db,
            ctx.audit,
            people["maker-service"],
            sid,
            work_done="read status and version",
            results="all values normal",
            verification="status shows pump idle",
            now=now + 60,
        )
        remote.confirm_end(
            db, ctx.audit, people["a-responsible"], sid, outcome="accepted", comment="thank you", now=now + 120
        )
    return sid, people, cast


def _entries(ctx: ServerContext, event_type: str) -> list[dict[str, Any]]:
    with ctx.tx() as db:
        bodies = db.scalars(select(AuditEntry.body).where(AuditEntry.event_type == event_type).order_by(AuditEntry.idx))
        return [json.loads(b) for b in bodies]


@pytest.mark.req("RA-2")
def test_playback_reconstructs_the_session_and_is_logged(ctx: ServerContext, seeded: Seed, tmp_path: Path) -> None:
    sid, people, _cast = _closed_session(ctx, tmp_path)
    with ctx.tx() as db:
        rec_id = remote.get_session(db, people["a-responsible"], sid).recordings[0].id
        view = remote.view_recording(db, ctx.audit, people["a-responsible"], sid, rec_id, mode="playback")
    texts = [(line.kind, line.text) for line in view.playback.lines]
    assert ("input", "status") in texts
    assert ("output", "pump: idle") in texts
    assert ("marker", "file put calib.bin sha256=" + "ab" * 32 + " size=1024") in texts
    assert texts[0] == ("marker", "approval a-responsible") and texts[-1] == ("marker", "end completed")
    with ctx.tx() as db:
        remote.view_recording(db, ctx.audit, people["maker-service"], sid, rec_id, mode="download")
    viewed = _entries(ctx, "remote.recording_viewed")
    assert [(e["actor"], e["details"]["mode"], e["details"]["verified"]) for e in viewed] == [
        ("a-responsible", "playback", True),
        ("maker-service", "download", True),
    ]


@pytest.mark.req("RA-2")
def test_tampered_recording_is_refused_and_the_attempt_logged(ctx: ServerContext, seeded: Seed, tmp_path: Path) -> None:
    sid, people, cast = _closed_session(ctx, tmp_path)
    cast.write_bytes(cast.read_bytes().replace(b"pump: idle", b"pump: fine"))
    with ctx.tx() as db:
        rec_id = remote.get_session(db, people["a-responsible"], sid).recordings[0].id
    with pytest.raises(AuditedRefusal) as info, ctx.tx() as db:
        remote.view_recording(db, ctx.audit, people["a-responsible"], sid, rec_id, mode="playback")
    assert info.value.code == "recording_tampered" and info.value.status == 409
    assert info.value.event_type == "remote.recording_viewed"
    assert info.value.details["verified"] is False and info.value.details["problem"] == "recording_tampered"


@pytest.mark.req("RA-2")
def test_other_hospitals_recording_looks_like_a_missing_one(ctx: ServerContext, seeded: Seed, tmp_path: Path) -> None:
    sid, people, _cast = _closed_session(ctx, tmp_path)
    with ctx.tx() as db:
        rec_id = remote.get_session(db, people["a-responsible"], sid).recordings[0].id
    errors = []
    for who, session_id, recording in (("b-responsible", sid, rec_id), ("a-responsible", sid, rec_id + 999)):
        with pytest.raises(NotFound) as info, ctx.tx() as db:
            remote.view_recording(db, ctx.audit, people[who], session_id, recording, mode="playback")
        errors.append((info.value.code, str(info.value), info.value.status))
    assert errors[0] == errors[1] == ("unknown_recording", "no such recording is visible to you", 404)
    assert _entries(ctx, "remote.recording_viewed") == []


@pytest.mark.req("RA-5")
@pytest.mark.req("RA-3")
def test_service_report_pdf_holds_the_figures_in_both_languages(
    ctx: ServerContext, seeded: Seed, tmp_path: Path
) -> None:
    if shutil.which("pdftotext") is None:
        pytest.skip("needs pdftotext (poppler-utils)")
    sid, people, _cast = _closed_session(ctx, tmp_path)
    with ctx.tx() as db:
        sha = remote.get_session(db, people["a-responsible"], sid).recordings[0].sha256
    texts = {}
    for lang in ("ja", "en"):
        with ctx.tx() as db:
            report = remote.service_report(db, ctx.audit, people["a-responsible"], sid, fmt="pdf", lang=lang)
        data, media_type, name = remote.report_file(report, "pdf", lang)
        assert media_type == "application/pdf" and name.endswith(f".{lang}.pdf")
        pdf = tmp_path / f"r.{lang}.pdf"
        pdf.write_bytes(data)
        texts[lang] = subprocess.run(
            ["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True
        ).stdout
    squashed = {k: "".join(v.split()) for k, v in texts.items()}
    for lang, text in squashed.items():
        for figure in (sid, SERIAL, "maker-service", "a-responsible", "goahead", "allvaluesnormal", "thankyou"):
            assert figure in text, (lang, figure)
        assert sha[:40] in text, lang  # the recording hash (wrapped across lines in the table)
        assert "status" in text and "calib.bin" in text
    assert "作業報告書" in squashed["ja"] and "承認(作業完了)" in squashed["ja"] and "7分" in squashed["ja"]
    assert "Remotemaintenanceservicereport" in squashed["en"] and "7minutes" in squashed["en"]
    assert "accepted" in squashed["en"]


@pytest.mark.req("RA-5")
def test_proof_bundle_verifies_offline_and_a_tampered_one_fails(
    ctx: ServerContext, seeded: Seed, tmp_path: Path
) -> None:
    sid, people, _cast = _closed_session(ctx, tmp_path)
    with ctx.tx() as db:
        rec_id = remote.get_session(db, people["a-responsible"], sid).recordings[0].id
        remote.view_recording(db, ctx.audit, people["a-responsible"], sid, rec_id, mode="playback")
    with ctx.tx() as db:
        report = remote.service_report(db, ctx.audit, people["a-responsible"], sid, fmt="bundle", lang="ja")
    data, media_type, _name = remote.report_file(report, "bundle", "ja")
    assert media_type == "application/json"
    bundle = json.loads(data)
    summary = verify_export(bundle, ctx.audit.vkey)
    kinds = [json.loads(leaf)["type"] for _, leaf in summary.entries]
    assert kinds[0] == "remote.session.requested"
    for kind in (
        "remote.session.approved",
        "remote.recording_sealed",
        "remote.recording_viewed",
        "remote.session.reported",
        "remote.session.confirmed",
        "remote.report_downloaded",
    ):
        assert kind in kinds
    assert all(json.loads(leaf)["details"]["session"] == sid for _, leaf in summary.entries)
    assert bundle["service_report"]["recordings"][0]["sha256"] == report.facts.recordings[0].sha256

    good = tmp_path / "proof.json"
    good.write_bytes(data)
    cli = [sys.executable, "-m", "medsec", "audit", "verify", "--log-key", ctx.audit.vkey, "--json"]
    ok = subprocess.run([*cli, str(good)], check=False, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["entries_verified"] == len(kinds)

    tampered = copy.deepcopy(bundle)
    confirmed = next(e for e in tampered["entries"] if e["entry"]["type"] == "remote.session.confirmed")
    confirmed["entry"]["details"]["outcome"] = "rejected"
    with pytest.raises(ProofError, match=f"entry {confirmed['index']}: not included"):
        verify_export(tampered, ctx.audit.vkey)
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(tampered))
    refused = subprocess.run([*cli, str(bad)], check=False, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert f"entry {confirmed['index']}: not included" in refused.stdout + refused.stderr


@pytest.mark.req("RA-5")
def test_service_report_of_another_hospital_is_refused(ctx: ServerContext, seeded: Seed, tmp_path: Path) -> None:
    sid, people, _cast = _closed_session(ctx, tmp_path)
    for who in ("b-responsible",):
        with pytest.raises(NotFound) as info, ctx.tx() as db:
            remote.service_report(db, ctx.audit, people[who], sid, fmt="bundle", lang="en")
        assert info.value.code == "unknown_session"
    assert _entries(ctx, "remote.report_downloaded") == []
