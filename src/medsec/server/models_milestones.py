"""Lifecycle milestone packages (handbook 表2; SM-2, SM-4): what each hospital received and acknowledged.

A milestone (release, EOL or EOS of one release) freezes the documents the handbook lists for it, byte for
byte with their SHA-256, so an acknowledgement always refers to exactly what the hospital could download.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from medsec.server.db import Base
from medsec.server.models import Organization, Release, UTCDateTime, utcnow


class ProductDocument(Base):
    """A manufacturer-written text per product: the security policy or the maintenance plan (en + ja)."""

    __tablename__ = "product_documents"
    __table_args__ = (UniqueConstraint("product", "kind", name="uq_product_documents_product"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    product: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(32))  # security_policy, maintenance_plan
    text_en: Mapped[str] = mapped_column(Text)
    text_ja: Mapped[str] = mapped_column(Text)
    updated_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Milestone(Base):
    __tablename__ = "milestones"
    __table_args__ = (UniqueConstraint("release_id", "kind", name="uq_milestones_release_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # release, eol, eos
    package_sha256: Mapped[str] = mapped_column(String(64))  # over the document list; changes when completed
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    release: Mapped[Release] = relationship(lazy="joined", innerjoin=True)
    documents: Mapped[list[MilestoneDocument]] = relationship(
        order_by="MilestoneDocument.position", cascade="all, delete-orphan", lazy="selectin"
    )
    deliveries: Mapped[list[MilestoneDelivery]] = relationship(
        order_by="MilestoneDelivery.id", cascade="all, delete-orphan", lazy="selectin"
    )


class MilestoneDocument(Base):
    """One document of a package; ``content`` is None while a manual document is still needed."""

    __tablename__ = "milestone_documents"
    __table_args__ = (UniqueConstraint("milestone_id", "kind", name="uq_milestone_documents_milestone_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    milestone_id: Mapped[int] = mapped_column(ForeignKey("milestones.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column()
    filename: Mapped[str] = mapped_column(String(300))
    media_type: Mapped[str] = mapped_column(String(100))
    content: Mapped[bytes | None] = mapped_column(LargeBinary)
    sha256: Mapped[str | None] = mapped_column(String(64))
    missing_reason: Mapped[str | None] = mapped_column(Text)
    added_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class MilestoneDelivery(Base):
    """One hospital's copy of a package: when it was pushed, first opened, and acknowledged, and by whom."""

    __tablename__ = "milestone_deliveries"
    __table_args__ = (UniqueConstraint("milestone_id", "hospital_id", name="uq_milestone_deliveries_milestone_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    milestone_id: Mapped[int] = mapped_column(ForeignKey("milestones.id", ondelete="CASCADE"), index=True)
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    notified_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    first_opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    first_opened_by: Mapped[str | None] = mapped_column(String(200))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    acknowledged_name: Mapped[str | None] = mapped_column(String(200))
    acknowledged_sha256: Mapped[str | None] = mapped_column(String(64))

    hospital: Mapped[Organization] = relationship(lazy="joined", innerjoin=True)
