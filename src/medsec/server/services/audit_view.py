"""Reading the server audit log with tenant scope: a hospital sees entries about itself only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medsec.auditlog.export import build_export
from medsec.server.audit import ServerAuditLog, SqlNodeReader
from medsec.server.models import AuditEntry

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


def export_entries(
    session: Session, audit: ServerAuditLog, organization_id: int | None, *, start: int = 0, end: int | None = None
) -> dict[str, Any]:
    """An offline-verifiable export (checkpoint + per-entry inclusion proofs) of the visible entries."""
    cp = audit.checkpoint(session)
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
