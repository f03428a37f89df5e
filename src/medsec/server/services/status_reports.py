"""Security status reports on request (RA-6): gather, log, sign, store, list, download.

A hospital user (responsible person, admin or auditor of that hospital) asks for its own hospital; a
manufacturer user may ask for any hospital. The figures are read through the same scoped services the
portal and the API use, as the hospital itself would see them, so the report and the pages agree.

One transaction does everything: read the figures, append ``report.status_generated`` with the hash of
the content, sign a checkpoint that covers it, render HTML, PDF and JSON with the inclusion proof, sign
the statement about the three files, append ``report.status_signed`` with their hashes, and store the
row. A crash anywhere rolls all of it back, so there is never a logged report that cannot be downloaded
or a stored one that was not logged.

Another hospital's report looks exactly like a missing one (``unknown_report``), and so does another
hospital (``unknown_organization``).
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medsec.crypto.canonical import canonical_json
from medsec.crypto.envelope import key_id
from medsec.crypto.keys import SigningKey
from medsec.errors import InvalidRequest, NotFound
from medsec.reports import status as report_model
from medsec.reports.document import LANGUAGES
from medsec.reports.html import render_html
from medsec.reports.pdf import render_pdf
from medsec.reports.signing import AuditInclusion, ensure_report_key, sha256_hex, sign_statement, statement
from medsec.server.audit import ServerAuditLog
from medsec.server.models import AuditCheckpoint, AuditEntry, Organization, OrgKind, Role
from medsec.server.models_reports import StatusReport
from medsec.server.principal import Principal
from medsec.server.services import (
    advisory_publishing,
    devices,
    findings,
    lifecycle_plans,
    remote_sessions,
    update_hospital,
)

logger = logging.getLogger(__name__)

GENERATED_EVENT = "report.status_generated"
SIGNED_EVENT = "report.status_signed"
CHECKPOINTS_SHOWN = 5
REPORTS_LISTED = 100
DOWNLOAD_KINDS = {
    "pdf": ("application/pdf", "pdf"),
    "html": ("text/html; charset=utf-8", "html"),
    "json": ("application/json", "json"),
    "sig": ("application/vnd.medsec.status-report+json", "envelope"),
}
_HOSPITAL_REPORT_ROLES = (Role.HOSPITAL_RESPONSIBLE, Role.HOSPITAL_ADMIN, Role.AUDITOR)


@dataclass(frozen=True)
class Signer:
    """What signing and logging a report needs besides the database."""

    audit: ServerAuditLog
    key: SigningKey


# -- who may ask for which hospital ----------------------------------------------------------------------


def _hospital(session: Session, actor: Principal, slug: str) -> Organization:
    """The hospital ``slug`` if ``actor`` may have its report; anything else is a missing hospital."""
    org = session.scalar(select(Organization).where(Organization.slug == slug))
    allowed = org is not None and org.kind == OrgKind.HOSPITAL.value and actor.can_see_org(org.id)
    if not allowed or not (actor.is_manufacturer or actor.has_role(*_HOSPITAL_REPORT_ROLES)):
        raise NotFound("unknown_organization", "no such hospital is visible to you")
    assert org is not None
    return org


def hospital_view(org: Organization, actor: Principal) -> Principal:
    """A read-only principal that sees exactly what the hospital's own users see."""
    return Principal(
        user_id=actor.user_id,
        username=actor.username,
        organization_id=org.id,
        org_kind=OrgKind.HOSPITAL,
        roles=frozenset({Role.AUDITOR}),
        mfa_verified=False,
    )


# -- the figures -----------------------------------------------------------------------------------------


def _devices(session: Session, view: Principal) -> tuple[report_model.DeviceLine, ...]:
    return tuple(
        report_model.DeviceLine(
            serial=d.serial,
            model=d.model.name,
            site=d.site.name if d.site else None,
            status=d.status,
            version=d.installed_version,
            last_seen=d.last_seen_at,
        )
        for d in devices.list_devices(session, view)
    )


def _updates(session: Session, view: Principal) -> tuple[report_model.UpdateLine, ...]:
    watched = (
        report_model.PENDING_UPDATE_STATES | report_model.FAILED_UPDATE_STATES | report_model.ROLLED_BACK_UPDATE_STATES
    )
    return tuple(
        report_model.UpdateLine(u.serial, u.release or "", u.campaign, u.state, u.reason, u.updated_at)
        for u in update_hospital.device_updates(session, view)
        if u.campaign is not None and u.state in watched
    )


def _findings(session: Session, view: Principal) -> tuple[report_model.FindingLine, ...]:
    out = []
    for f in findings.list_findings(session, view, active=True):
        s = findings.finding_summary(f)
        component = " ".join(x for x in (f.component_name, f.component_version) if x)
        out.append(
            report_model.FindingLine(
                vulnerability=f.alias_group,
                advisory_id=f.advisory_id,
                component=component,
                release=f"{f.release.product} {f.release.version}",
                priority=f.priority_tier,
                triage_status=f.triage_status,
                sla=s["sla"]["state"],
            )
        )
    return tuple(out)


def _advisories(session: Session, view: Principal) -> tuple[report_model.AdvisoryLine, ...]:
    return tuple(
        report_model.AdvisoryLine(a.tracking_id, a.title, a.lang, a.published_at.date().isoformat())
        for a in advisory_publishing.advisories_about_my_devices(session, view)
    )


def _lifecycle(session: Session, view: Principal, today: dt.date, lang: str) -> tuple[report_model.LifecycleLine, ...]:
    return tuple(
        report_model.LifecycleLine(
            release=f"{r['product']} {r['version']}",
            eol=r["eol"],
            eos=r["eos"],
            devices=tuple(r["devices"]),
            legacy_plan=r["legacy_plan"],
            warnings=tuple([*r["notice_warnings"], *r["alerts"]]),
        )
        for r in lifecycle_plans.visible_lifecycle(session, view, today, lang)
        if r["devices"]
    )


def _protection(session: Session, view: Principal, now: dt.datetime) -> tuple[tuple[Any, ...] | None, int]:
    """Per-device protection counts from the protection service, when this server has it."""
    try:
        from medsec.server.services import protection
    except ImportError:
        return None, 0
    days = int(getattr(protection, "FLEET_DAYS", 7))
    rows = protection.fleet_summary(session, view, days=days, now=now)
    lines = tuple(
        report_model.ProtectionLine(r.serial, r.mode, int(r.blocked), int(r.integrity), int(r.drift)) for r in rows
    )
    return lines, days


def _sessions(session: Session, view: Principal) -> tuple[report_model.SessionLine, ...]:
    return tuple(
        report_model.SessionLine(
            id=row.id,
            serial=row.device.serial,
            engineer=row.engineer,
            state=row.state,
            window_start=row.window_start,
            window_end=row.window_end,
            confirmed_by=row.confirmed_by,
            outcome=row.outcome,
        )
        for row in remote_sessions.list_sessions(session, view)
    )


def _checkpoints(session: Session) -> tuple[report_model.CheckpointLine, ...]:
    rows = session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.size.desc()).limit(CHECKPOINTS_SHOWN))
    return tuple(report_model.CheckpointLine(r.size, r.created_at, r.root_hash.hex()) for r in rows)


def gather(
    session: Session, actor: Principal, org: Organization, lang: str, now: dt.datetime
) -> report_model.StatusData:
    """Every figure of the report, read now through the hospital's own view."""
    view = hospital_view(org, actor)
    protection, days = _protection(session, view, now)
    return report_model.StatusData(
        hospital_name=org.name,
        hospital_slug=org.slug,
        generated_at=now,
        generated_by=actor.username,
        devices=_devices(session, view),
        updates=_updates(session, view),
        findings=_findings(session, view),
        advisories=_advisories(session, view),
        lifecycle=_lifecycle(session, view, now.date(), lang),
        protection=protection,
        protection_days=days,
        sessions=_sessions(session, view),
        checkpoints=_checkpoints(session),
    )


# -- generating ------------------------------------------------------------------------------------------


def _check_lang(lang: str) -> None:
    if lang not in LANGUAGES:
        raise InvalidRequest("invalid_lang", f"lang must be one of {', '.join(LANGUAGES)}")


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate(
    session: Session,
    signer: Signer,
    actor: Principal,
    hospital: str,
    lang: str,
    *,
    now: dt.datetime | None = None,
) -> StatusReport:
    """Generate, log, sign and store the status report of ``hospital`` in ``lang``."""
    _check_lang(lang)
    org = _hospital(session, actor, hospital)
    now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    report_id = "sr-" + secrets.token_hex(10)
    data = gather(session, actor, org, lang, now)
    content = report_model.content_document(data, lang, report_id)
    content_hash = report_model.content_sha256(content)
    audit = signer.audit
    index = audit.append(
        session,
        GENERATED_EVENT,
        actor=actor.username,
        organization_id=org.id,
        details={
            "report_id": report_id,
            "hospital": org.slug,
            "lang": lang,
            "content_sha256": content_hash,
            "figures": data.figures(),
        },
        now=now,
        write_now=True,  # the report carries the entry's index and inclusion proof
    )
    checkpoint = audit.checkpoint(session)
    proof = tuple(audit.inclusion_proof(session, index, checkpoint.size))
    part = report_model.AuditPart(
        report_id=report_id,
        content_sha256=content_hash,
        log_origin=audit.origin,
        log_key=audit.vkey,
        entry_index=index,
        checkpoint_size=checkpoint.size,
        checkpoint_root=checkpoint.root_hash.hex(),
        proof=tuple(p.hex() for p in proof),
    )
    full = report_model.with_audit(content, data, part)
    files = {
        "pdf": render_pdf(full),
        "html": render_html(full).encode("utf-8"),
        "json": canonical_json(full.to_json()),
    }
    entry = session.get_one(AuditEntry, index)
    signed = statement(
        report_id=report_id,
        hospital={"slug": org.slug, "name": org.name},
        generated_by=actor.username,
        generated_at=_iso(now),
        lang=lang,
        files=files,
        content_sha256=content_hash,
        audit=AuditInclusion(audit.origin, index, entry.body, checkpoint.note, checkpoint.size, proof),
    )
    envelope = sign_statement(signed, signer.key)
    row = StatusReport(
        id=report_id,
        organization_id=org.id,
        lang=lang,
        generated_by=actor.username,
        generated_at=now,
        content_sha256=content_hash,
        pdf_sha256=sha256_hex(files["pdf"]),
        html_sha256=sha256_hex(files["html"]),
        json_sha256=sha256_hex(files["json"]),
        envelope_sha256=sha256_hex(envelope),
        key_id=key_id(signer.key.verify_key),
        audit_index=index,
        pdf=files["pdf"],
        html=files["html"],
        json=files["json"],
        envelope=envelope,
    )
    session.add(row)
    audit.append(
        session,
        SIGNED_EVENT,
        actor=actor.username,
        organization_id=org.id,
        details={
            "report_id": report_id,
            "pdf_sha256": row.pdf_sha256,
            "html_sha256": row.html_sha256,
            "json_sha256": row.json_sha256,
            "envelope_sha256": row.envelope_sha256,
            "key_id": row.key_id,
        },
        now=now,
    )
    session.flush()
    logger.info("status report %s generated for %s by %s", report_id, org.slug, actor.username)
    return row


# -- reading ---------------------------------------------------------------------------------------------


def _visible(actor: Principal) -> Any:
    stmt = select(StatusReport)
    if not actor.is_manufacturer:
        stmt = stmt.where(StatusReport.organization_id == actor.organization_id)
    return stmt


def list_reports(session: Session, actor: Principal, *, hospital: str | None = None) -> list[StatusReport]:
    """Reports the caller may download, newest first (a hospital sees its own only)."""
    stmt = _visible(actor)
    if hospital is not None:
        org = _hospital(session, actor, hospital)
        stmt = stmt.where(StatusReport.organization_id == org.id)
    stmt = stmt.order_by(StatusReport.generated_at.desc(), StatusReport.id.desc()).limit(REPORTS_LISTED)
    return list(session.scalars(stmt))


def get_report(session: Session, actor: Principal, report_id: str) -> StatusReport:
    """One report the caller may see; another hospital's looks like a missing one."""
    row: StatusReport | None = session.scalar(_visible(actor).where(StatusReport.id == report_id))
    if row is None:
        raise NotFound("unknown_report", "no such report is visible to you")
    return row


def report_file(row: StatusReport, kind: str) -> tuple[bytes, str, str]:
    """(bytes, media type, file name) of one of the report's downloads: pdf, html, json or sig."""
    if kind not in DOWNLOAD_KINDS:
        raise NotFound("unknown_document", "a report has pdf, html, json and sig downloads")
    media, attribute = DOWNLOAD_KINDS[kind]
    data: bytes = getattr(row, attribute)
    return data, media, f"{row.id}.{kind}"


def report_summary(row: StatusReport, hospital_slug: str | None = None) -> dict[str, Any]:
    return {
        "id": row.id,
        "hospital": hospital_slug,
        "lang": row.lang,
        "generated_by": row.generated_by,
        "generated_at": _iso(row.generated_at),
        "audit_index": row.audit_index,
        "key_id": row.key_id,
        "sha256": {
            "pdf": row.pdf_sha256,
            "html": row.html_sha256,
            "json": row.json_sha256,
            "sig": row.envelope_sha256,
            "content": row.content_sha256,
        },
        "downloads": {kind: f"/api/v1/reports/status/{row.id}.{kind}" for kind in DOWNLOAD_KINDS},
    }


def hospital_slugs(session: Session, rows: list[StatusReport]) -> dict[int, str]:
    ids = sorted({r.organization_id for r in rows}) or [-1]
    found = session.execute(select(Organization.id, Organization.slug).where(Organization.id.in_(ids)))
    return {org_id: slug for org_id, slug in found}


def report_hospitals(session: Session, actor: Principal) -> list[Organization]:
    """Hospitals the caller may request a report for."""
    stmt = select(Organization).where(Organization.kind == OrgKind.HOSPITAL.value).order_by(Organization.name)
    if not actor.is_manufacturer:
        if not actor.has_role(*_HOSPITAL_REPORT_ROLES):
            return []
        stmt = stmt.where(Organization.id == actor.organization_id)
    return list(session.scalars(stmt))


def signer_for(audit: ServerAuditLog, keys_dir: Path) -> Signer:
    """The server's audit log and its report-signing key (created beside the other keys on first use)."""
    return Signer(audit=audit, key=ensure_report_key(keys_dir))
