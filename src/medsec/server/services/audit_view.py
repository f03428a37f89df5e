"""Reading the server audit log with tenant scope: a hospital sees entries about itself only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medsec.auditlog.export import build_export
from medsec.auditlog.note import NoteVerifier, parse_note
from medsec.errors import AuditLogError, NotFound, PermissionDenied
from medsec.server.audit import ServerAuditLog, SqlNodeReader, VerifyReport
from medsec.server.models import AuditCheckpoint, AuditEntry, Role
from medsec.server.principal import Principal

MAX_EXPORT = 10_000


def list_entries(
    session: Session, organization_id: int | None, *, start: int = 0, limit: int = 100
) -> Sequence[AuditEntry]:
    """Entries from index ``start`` on, newest last; ``organization_id`` None means all."""
    stmt = select(AuditEntry).where(AuditEntry.idx >= start)
    if organization_id is not None:
        stmt = stmt.where(AuditEntry.organization_id == organization_id)
    return session.scalars(stmt.order_by(AuditEntry.idx).limit(limit)).all()


def latest_entries(session: Session, organization_id: int | None, limit: int = 50) -> Sequence[AuditEntry]:
    stmt = select(AuditEntry)
    if organization_id is not None:
        stmt = stmt.where(AuditEntry.organization_id == organization_id)
    rows = session.scalars(stmt.order_by(AuditEntry.idx.desc()).limit(limit)).all()
    return list(reversed(rows))


def latest_witnessed_checkpoint(session: Session, witness_vkeys: Sequence[str]) -> AuditCheckpoint | None:
    """The newest stored checkpoint that carries a cosignature from one of ``witness_vkeys``."""
    verifiers = [NoteVerifier.from_vkey(v) for v in witness_vkeys]
    rows = session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.size.desc()).limit(200))
    for row in rows:
        _text, sigs = parse_note(row.note)
        if any((s.name, s.key_id) == (v.name, v.key_id) for s in sigs for v in verifiers):
            return row
    return None


def export_entries(
    session: Session,
    audit: ServerAuditLog,
    organization_id: int | None,
    *,
    start: int = 0,
    end: int | None = None,
    witness_vkeys: Sequence[str] = (),
) -> dict[str, Any]:
    """An offline-verifiable export (checkpoint + per-entry inclusion proofs) of the visible entries.

    With ``witness_vkeys``, the export uses the newest checkpoint those witnesses cosigned,
    so the receiver can demand their cosignatures (``medsec audit verify --witness-key``).
    """
    cp = latest_witnessed_checkpoint(session, witness_vkeys) if witness_vkeys else None
    if witness_vkeys and cp is None:
        raise NotFound("no_witnessed_checkpoint", "no checkpoint has been cosigned by a configured witness yet")
    cp = cp or audit.checkpoint(session)
    stop = cp.size if end is None else min(end, cp.size)
    stop = min(stop, start + MAX_EXPORT)
    stmt = select(AuditEntry.idx, AuditEntry.body).where(AuditEntry.idx >= start, AuditEntry.idx < stop)
    if organization_id is not None:
        stmt = stmt.where(AuditEntry.organization_id == organization_id)
    rows = session.execute(stmt.order_by(AuditEntry.idx)).all()
    return build_export(
        origin=audit.origin,
        log_vkey=audit.vkey,
        checkpoint_note=cp.note,
        entries=[(idx, body) for idx, body in rows],
        reader=SqlNodeReader(session),
    )


# Who may run a full verification (it is also offered to hospitals: RA-2 evidence is theirs too).
VERIFY_ROLES = (Role.AUDITOR, Role.HOSPITAL_ADMIN, Role.HOSPITAL_RESPONSIBLE)


def may_verify(principal: Principal) -> bool:
    return principal.is_manufacturer or principal.has_role(*VERIFY_ROLES)


def verify_and_record(
    tx: Callable[[], AbstractContextManager[Session]], audit: ServerAuditLog, principal: Principal
) -> VerifyReport:
    """Verify the whole log and log who did it and the outcome; a failure is logged, then re-raised."""
    if not may_verify(principal):
        raise PermissionDenied("role_required", "verification needs an auditor or admin role")
    try:
        with tx() as session:
            report = audit.verify(session)
    except AuditLogError as e:
        with tx() as session:
            audit.append(
                session,
                "audit.verification_failed",
                actor=principal.username,
                organization_id=principal.organization_id,
                details={"problem": e.diagnostics()},
            )
        raise
    with tx() as session:
        audit.append(
            session,
            "audit.verified",
            actor=principal.username,
            organization_id=principal.organization_id,
            details={"size": report.size},
        )
    return report
