"""Database schema of signed updates: director state, campaigns, hospital windows and decisions, outbox.

Kept apart from ``models.py`` so the update feature migrates on its own (revision 0003).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from medsec.server.db import Base
from medsec.server.models import Device, Release, UTCDateTime, utcnow


class CampaignStatus(enum.StrEnum):
    DRAFT = "draft"  # waiting for the second person's approval
    APPROVED = "approved"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    STOPPED = "stopped"  # the error threshold stopped it
    CANCELLED = "cancelled"


ACTIVE_CAMPAIGN = frozenset({CampaignStatus.RUNNING, CampaignStatus.PAUSED})
FINISHED_CAMPAIGN = frozenset({CampaignStatus.COMPLETED, CampaignStatus.STOPPED, CampaignStatus.CANCELLED})


class DeviceUpdateState(enum.StrEnum):
    PENDING = "pending"  # selected, not offered yet
    OFFERED = "offered"  # the director assigned the release (the server's own act)
    DOWNLOADING = "downloading"
    WAITING_FOR_WINDOW = "waiting_for_window"
    INSTALLING = "installing"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    SKIPPED = "skipped"  # never offered: the campaign ended first


TERMINAL_DEVICE_STATES = frozenset(
    {DeviceUpdateState.COMMITTED, DeviceUpdateState.ROLLED_BACK, DeviceUpdateState.FAILED, DeviceUpdateState.SKIPPED}
)
ERROR_DEVICE_STATES = frozenset({DeviceUpdateState.ROLLED_BACK, DeviceUpdateState.FAILED})


class DirectorDeviceMetadata(Base):
    """The current per-device director metadata: one version, its exact bytes (same version, same bytes)."""

    __tablename__ = "director_device_metadata"

    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    assignment_digest: Mapped[str] = mapped_column(String(64))
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="SET NULL"))
    timestamp_expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    timestamp_json: Mapped[bytes] = mapped_column(LargeBinary)
    snapshot_json: Mapped[bytes] = mapped_column(LargeBinary)
    targets_json: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=CampaignStatus.DRAFT.value, index=True)
    selection: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    groups: Mapped[list[Any]] = mapped_column(JSON, default=list)
    success_threshold: Mapped[int] = mapped_column(Integer)  # % of a group committed before the next starts
    error_threshold: Mapped[int] = mapped_column(Integer)  # % of offered devices failed/rolled back: stop
    current_group: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    approved_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    stop_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    release: Mapped[Release] = relationship(lazy="joined", innerjoin=True)

    @property
    def label(self) -> str:
        """The campaign name devices see in the director's ``campaign`` field."""
        return f"c-{self.id}"


class CampaignDevice(Base):
    __tablename__ = "campaign_devices"
    __table_args__ = (UniqueConstraint("campaign_id", "device_id", name="uq_campaign_devices_campaign_device"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    group_index: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(24), default=DeviceUpdateState.PENDING.value)
    reason: Mapped[str | None] = mapped_column(Text)
    offered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    device: Mapped[Device] = relationship(lazy="joined", innerjoin=True)
    campaign: Mapped[Campaign] = relationship()


class CampaignDeviceEvent(Base):
    """Per-device history. ``source`` is ``device`` (a signed report, its counter kept) or ``server``."""

    __tablename__ = "campaign_device_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    campaign_device_id: Mapped[int] = mapped_column(ForeignKey("campaign_devices.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(24))
    reason: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    report_counter: Mapped[int | None] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DeviceUpdateReport(Base):
    """The latest update status a device reported in a signed check-in."""

    __tablename__ = "device_update_reports"

    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[str] = mapped_column(String(24))
    release_counter: Mapped[int | None] = mapped_column(BigInteger)
    target: Mapped[str | None] = mapped_column(String(300))
    reason: Mapped[str | None] = mapped_column(Text)
    campaign: Mapped[str | None] = mapped_column(String(64))
    report_counter: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MaintenanceWindow(Base):
    """A hospital's (or one site's) weekly install windows, set by its responsible person (SM-2)."""

    __tablename__ = "maintenance_windows"
    __table_args__ = (UniqueConstraint("organization_id", "site_key", name="uq_maintenance_windows_org_site"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"))
    site_key: Mapped[int] = mapped_column(Integer)  # site id, or 0 for the whole hospital (unique with NULLs)
    timezone: Mapped[str] = mapped_column(String(64))
    weekly: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    updated_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReleaseDecision(Base):
    """A hospital's answer to a release for its devices: accept, or postpone until a date."""

    __tablename__ = "release_decisions"
    __table_args__ = (UniqueConstraint("organization_id", "release_id", name="uq_release_decisions_org_release"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    decision: Mapped[str] = mapped_column(String(16))
    postponed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    note: Mapped[str] = mapped_column(Text, default="")
    decided_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class NotificationChannel(Base):
    """Where an organisation wants update notices: an e-mail address or an HMAC-signed webhook."""

    __tablename__ = "notification_channels"

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "email" or "webhook"
    target: Mapped[str] = mapped_column(String(500))
    secret: Mapped[str | None] = mapped_column(String(128))  # webhook HMAC key
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OutboxMessage(Base):
    """One notice to one channel, written in the transaction that caused it; sent later, once."""

    __tablename__ = "outbox_messages"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("notification_channels.id", ondelete="CASCADE"), index=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    event: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(300))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    channel: Mapped[NotificationChannel] = relationship(lazy="joined", innerjoin=True)


class RepositoryWarning(Base):
    """Expiry warnings already written to the audit log, so each is logged once."""

    __tablename__ = "repository_warnings"
    __table_args__ = (
        UniqueConstraint("product", "role", "version", "kind", name="uq_repository_warnings_product_role"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    product: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # "expiring" or "expired"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
