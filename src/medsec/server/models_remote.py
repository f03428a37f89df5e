"""Database schema of remote maintenance: sessions, approvals, per-hospital policies, recordings,
and the device's own access-log entries of each session.

Kept apart from ``models.py`` so remote maintenance migrates on its own (revisions 0005, 0009).
The life cycle itself lives in :mod:`medsec.remote.session`; these rows only store its values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from medsec.server.db import Base
from medsec.server.models import Device, UTCDateTime, utcnow


class RemotePolicy(Base):
    """A hospital's rules for remote maintenance: N of its M responsible persons approve (RA-1)."""

    __tablename__ = "remote_policies"

    id: Mapped[int] = mapped_column(primary_key=True)
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), unique=True)
    approvals_required: Mapped[int] = mapped_column(Integer, default=1)
    max_window_minutes: Mapped[int] = mapped_column(Integer, default=240)
    escalate_after_minutes: Mapped[int] = mapped_column(Integer, default=24 * 60)
    emergency_allowed: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_by: Mapped[str | None] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RemoteSession(Base):
    """One maintenance session: the request (RA-5 before), its approvals, its life, the report and sign-off (RA-3)."""

    __tablename__ = "remote_sessions"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)  # ms-<hex>
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    engineer: Mapped[str] = mapped_column(String(128), index=True)
    purpose: Mapped[str] = mapped_column(Text)
    planned_work: Mapped[str] = mapped_column(Text)
    expected_impact: Mapped[str] = mapped_column(Text)
    expected_downtime_minutes: Mapped[int] = mapped_column(Integer)
    rollback: Mapped[str] = mapped_column(Text)
    capabilities: Mapped[dict[str, Any]] = mapped_column(JSON)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime())
    window_end: Mapped[datetime] = mapped_column(UTCDateTime())
    emergency: Mapped[bool] = mapped_column(Boolean, default=False)
    approvals_required: Mapped[int] = mapped_column(Integer)  # the policy when the request was made
    escalate_after_minutes: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    rejected_by: Mapped[str | None] = mapped_column(String(128))
    rejection_reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    end_reason: Mapped[str | None] = mapped_column(String(64))
    revoked_by: Mapped[str | None] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revocation_reason: Mapped[str | None] = mapped_column(Text)
    work_done: Mapped[str | None] = mapped_column(Text)
    results: Mapped[str | None] = mapped_column(Text)
    verification: Mapped[str | None] = mapped_column(Text)
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    confirmed_by: Mapped[str | None] = mapped_column(String(128))
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str | None] = mapped_column(String(20))
    confirmation_comment: Mapped[str | None] = mapped_column(Text)
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    emergency_overdue: Mapped[bool] = mapped_column(Boolean, default=False)

    device: Mapped[Device] = relationship(lazy="joined", innerjoin=True)
    approvals: Mapped[list[RemoteApproval]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="RemoteApproval.id"
    )
    recordings: Mapped[list[RemoteRecording]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="RemoteRecording.id"
    )
    device_uploads: Mapped[list[RemoteDeviceUpload]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="RemoteDeviceUpload.id"
    )


class RemoteApproval(Base):
    __tablename__ = "remote_approvals"
    __table_args__ = (UniqueConstraint("session_id", "approver", name="uq_remote_approvals_session_approver"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("remote_sessions.id", ondelete="CASCADE"), index=True)
    approver: Mapped[str] = mapped_column(String(128))
    approved_at: Mapped[datetime] = mapped_column(UTCDateTime())
    comment: Mapped[str] = mapped_column(Text, default="")


class RemoteRecording(Base):
    """A sealed asciicast recording; its SHA-256 is also in the audit log at ``audit_index``."""

    __tablename__ = "remote_recordings"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("remote_sessions.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(String(1000))
    sha256: Mapped[str] = mapped_column(String(64))
    audit_index: Mapped[int] = mapped_column(BigInteger)
    sealed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RemoteDeviceUpload(Base):
    """One accepted upload of device access-log entries, and the cosigned checkpoint they were proven against.

    The cosigned note is copied here, so the proof bundle stays complete even if the device's
    witness history is reset by a re-enrolment.
    """

    __tablename__ = "remote_device_uploads"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("remote_sessions.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    log_origin: Mapped[str] = mapped_column(String(200))
    log_key: Mapped[str] = mapped_column(String(300))  # C2SP verifier key of the device's log
    checkpoint_size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[str] = mapped_column(String(64))  # hex
    checkpoint_note: Mapped[str] = mapped_column(Text)  # device-signed, server-cosigned
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RemoteDeviceEntry(Base):
    """One entry of the device's access log that belongs to a session, with its inclusion proof (RA-2)."""

    __tablename__ = "remote_device_entries"
    __table_args__ = (UniqueConstraint("session_id", "log_index", name="uq_remote_device_entries_session_log_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("remote_sessions.id", ondelete="CASCADE"), index=True)
    upload_id: Mapped[int] = mapped_column(ForeignKey("remote_device_uploads.id", ondelete="CASCADE"), index=True)
    log_index: Mapped[int] = mapped_column(BigInteger)
    event: Mapped[str] = mapped_column(String(64))
    entry: Mapped[str] = mapped_column(Text)  # canonical JSON, exactly the leaf the device hashed
    inclusion_proof: Mapped[list[str]] = mapped_column(JSON)  # base64 hashes against the upload's checkpoint
