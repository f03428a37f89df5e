"""Database schema (SQLAlchemy 2 typed mappings). One Alembic migration per change."""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from medsec.server.db import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite stores naive text otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class OrgKind(enum.StrEnum):
    MANUFACTURER = "manufacturer"
    HOSPITAL = "hospital"


class Role(enum.StrEnum):
    MANUFACTURER_ADMIN = "manufacturer_admin"
    RELEASE_ENGINEER = "release_engineer"
    PSIRT = "psirt"
    SERVICE_ENGINEER = "service_engineer"
    HOSPITAL_ADMIN = "hospital_admin"
    HOSPITAL_RESPONSIBLE = "hospital_responsible"  # 医療機関の責任者
    AUDITOR = "auditor"


MANUFACTURER_ROLES = frozenset(
    {Role.MANUFACTURER_ADMIN, Role.RELEASE_ENGINEER, Role.PSIRT, Role.SERVICE_ENGINEER, Role.AUDITOR}
)
HOSPITAL_ROLES = frozenset({Role.HOSPITAL_ADMIN, Role.HOSPITAL_RESPONSIBLE, Role.AUDITOR})
# Roles that change devices, keys, releases or approvals need a second factor.
PRIVILEGED_ROLES = frozenset(set(Role) - {Role.AUDITOR})


class DeviceStatus(enum.StrEnum):
    PENDING = "pending"  # registered, waiting for enrollment
    ACTIVE = "active"
    RETIRED = "retired"


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    sites: Mapped[list[Site]] = relationship(back_populates="organization", order_by="Site.name")


class Site(Base):
    __tablename__ = "sites"
    __table_args__ = (UniqueConstraint("organization_id", "name", name="uq_sites_org_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))

    organization: Mapped[Organization] = relationship(back_populates="sites")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(254))
    password_hash: Mapped[str] = mapped_column(String(255))
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    totp_confirmed: Mapped[bool] = mapped_column(Boolean, default=False)
    totp_last_step: Mapped[int] = mapped_column(BigInteger, default=0)  # refuses a reused code
    locale: Mapped[str] = mapped_column(String(8), default="en")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    organization: Mapped[Organization] = relationship()
    role_rows: Mapped[list[UserRole]] = relationship(cascade="all, delete-orphan", lazy="selectin")

    @property
    def roles(self) -> frozenset[Role]:
        return frozenset(Role(r.role) for r in self.role_rows)

    @property
    def is_privileged(self) -> bool:
        return bool(self.roles & PRIVILEGED_ROLES)


class UserRole(Base):
    __tablename__ = "user_roles"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship()


class WebSession(Base):
    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the cookie value
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    mfa_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship()


class DeviceModel(Base):
    __tablename__ = "device_models"

    id: Mapped[int] = mapped_column(primary_key=True)
    product: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    hardware_id: Mapped[str] = mapped_column(String(100), unique=True)


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(primary_key=True)
    serial: Mapped[str] = mapped_column(String(100), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("device_models.id"), index=True)
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=DeviceStatus.PENDING.value)
    public_key: Mapped[str | None] = mapped_column(String(64))
    enrolled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    installed_version: Mapped[str | None] = mapped_column(String(100))
    agent_state: Mapped[str | None] = mapped_column(String(64))
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_counter: Mapped[int] = mapped_column(BigInteger, default=0)
    nonce: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    model: Mapped[DeviceModel] = relationship(lazy="joined", innerjoin=True)
    hospital: Mapped[Organization] = relationship(lazy="joined", innerjoin=True)
    site: Mapped[Site | None] = relationship(lazy="joined")


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    device: Mapped[Device] = relationship()


class Checkin(Base):
    __tablename__ = "checkins"
    __table_args__ = (UniqueConstraint("device_id", "counter", name="uq_checkins_device_counter"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    counter: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    installed_version: Mapped[str] = mapped_column(String(100))
    agent_state: Mapped[str] = mapped_column(String(64))
    report: Mapped[str] = mapped_column(Text)  # canonical JSON exactly as signed
    signature: Mapped[str] = mapped_column(String(128))


class DeviceLogCheckpoint(Base):
    """Checkpoints of a device's access log that the server cosigned as witness (RA-2)."""

    __tablename__ = "device_log_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(Text)  # with the server's cosignature
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditHead(Base):
    """The single row that serialises appends to the server audit log."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, default=0)


class AuditEntry(Base):
    __tablename__ = "audit_entries"

    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    event_type: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str | None] = mapped_column(String(200))
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id"), index=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)  # canonical JSON, the Merkle leaf data


class AuditNode(Base):
    """Perfect-subtree hashes of the audit log (level 0 = leaf hashes)."""

    __tablename__ = "audit_nodes"

    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditCheckpoint(Base):
    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, index=True)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReleaseStatus(enum.StrEnum):
    DRAFT = "draft"  # known (e.g. an SBOM was imported) but not published as a signed update
    PUBLISHED = "published"  # signed and in the TUF image repository
    WITHDRAWN = "withdrawn"


class Release(Base):
    """One software version of a product: what devices run, what SBOMs describe, what updates install."""

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("product", "version", name="uq_releases_product_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    product: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[str] = mapped_column(String(100))
    release_counter: Mapped[int | None] = mapped_column(BigInteger)  # strictly increasing per product (SM-6)
    status: Mapped[str] = mapped_column(String(16), default=ReleaseStatus.DRAFT.value)
    hardware_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    min_from_version: Mapped[str | None] = mapped_column(String(100))
    target_name: Mapped[str | None] = mapped_column(String(300))
    target_sha256: Mapped[str | None] = mapped_column(String(64))
    target_length: Mapped[int | None] = mapped_column(BigInteger)
    notes_en: Mapped[str] = mapped_column(Text, default="")
    notes_ja: Mapped[str] = mapped_column(Text, default="")
    fixed_vulnerabilities: Mapped[list[str]] = mapped_column(JSON, default=list)
    expected_downtime_minutes: Mapped[int | None] = mapped_column(Integer)
    rollback_supported: Mapped[bool] = mapped_column(Boolean, default=True)
    eol_date: Mapped[date | None] = mapped_column(Date)  # end of life: limited support begins (handbook 表2)
    eos_date: Mapped[date | None] = mapped_column(Date)  # end of support: no more security updates
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
