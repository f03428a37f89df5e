"""Database schema of device protection reports: accepted batches, their events, the latest status.

Kept apart from ``models.py`` so protection migrates on its own branch (revisions 0006, 0010). Rows are
written only from a batch verified with the device's key (:mod:`medsec.protect.wire`).
``organization_id`` is the device's hospital when the batch arrived, so a device later moved to
another hospital never shows the new owner what happened at the old one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from medsec.server.db import Base
from medsec.server.models import UTCDateTime


class ProtectionBatch(Base):
    """One accepted upload: its sequence number and digest make retries idempotent and replays visible."""

    __tablename__ = "protection_batches"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_protection_batches_device_id_seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    event_count: Mapped[int] = mapped_column(Integer)


class ProtectionEventRow(Base):
    """One event as the device signed it (subject and object flattened into columns)."""

    __tablename__ = "protection_events"
    __table_args__ = (
        UniqueConstraint("device_id", "seq", "index", name="uq_protection_events_device_id_seq_index"),
        Index("ix_protection_events_device_id_event_time", "device_id", "event_time"),
        Index("ix_protection_events_organization_id_event_time", "organization_id", "event_time"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    index: Mapped[int] = mapped_column("index", Integer)
    category: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))
    mode: Mapped[str | None] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(String(64))
    subject_exe: Mapped[str | None] = mapped_column(Text)
    subject_sha256: Mapped[str | None] = mapped_column(String(64))
    subject_pid: Mapped[int | None] = mapped_column(BigInteger)
    object_path: Mapped[str | None] = mapped_column(Text)
    object_sha256: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")
    event_time: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ProtectionStatus(Base):
    """The latest engine state and counters a device reported (one row per device).

    ``mode`` is ``off`` when allowlisting was not running, with the device's ``off_reason``
    (revision 0010); otherwise ``off_reason`` is null.
    """

    __tablename__ = "protection_status"

    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    mode: Mapped[str] = mapped_column(String(16))
    off_reason: Mapped[str | None] = mapped_column(String(200))
    policy_version: Mapped[str] = mapped_column(String(64))
    trustdb_version: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
