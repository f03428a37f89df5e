"""Tables for third-party software and vulnerability management (SM-3, SM-4, SM-2).

SBOMs per release (own and supplier documents kept apart), vulnerability records per feed with provenance,
findings that are never deleted (they turn inactive, with their history in ``finding_events``), VEX triage
decisions and the rules that carry them across releases, published advisories, and lifecycle data.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from medsec.server.db import Base
from medsec.server.models import Release, UTCDateTime, utcnow


class FeedImport(Base):
    """One import run of one feed (a file, folder, archive or bundle): what came in, from where, by whom."""

    __tablename__ = "feed_imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    feed: Mapped[str] = mapped_column(String(16), index=True)  # osv, nvd, kev, epss, endoflife
    location: Mapped[str] = mapped_column(String(1000))
    sha256: Mapped[str | None] = mapped_column(String(64))
    actor: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    records_added: Mapped[int] = mapped_column(Integer, default=0)
    records_updated: Mapped[int] = mapped_column(Integer, default=0)
    records_unchanged: Mapped[int] = mapped_column(Integer, default=0)
    bundle_sha256: Mapped[str | None] = mapped_column(String(64))  # the signed offline bundle it came from


class VulnRecord(Base):
    """One OSV advisory or NVD CVE, kept as published (``raw``) so it is re-read by the same parser."""

    __tablename__ = "vuln_records"
    __table_args__ = (UniqueConstraint("source", "record_id", name="uq_vuln_records_source_record_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # osv, nvd
    record_id: Mapped[str] = mapped_column(String(200), index=True)
    modified: Mapped[str | None] = mapped_column(String(64))  # RFC 3339 text exactly as published
    withdrawn: Mapped[bool] = mapped_column(Boolean, default=False)
    alias_group: Mapped[str] = mapped_column(String(200), index=True)
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    summary: Mapped[str | None] = mapped_column(Text)
    raw: Mapped[str] = mapped_column(Text)
    location: Mapped[str] = mapped_column(String(1000))  # file or archive member it was read from
    sha256: Mapped[str | None] = mapped_column(String(64))
    import_id: Mapped[int] = mapped_column(ForeignKey("feed_imports.id"), index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class KevRecord(Base):
    __tablename__ = "kev_records"

    cve_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(500))
    date_added: Mapped[date] = mapped_column(Date)
    due_date: Mapped[date | None] = mapped_column(Date)
    import_id: Mapped[int] = mapped_column(ForeignKey("feed_imports.id"), index=True)


class EpssRecord(Base):
    __tablename__ = "epss_records"

    cve_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    probability: Mapped[float] = mapped_column(Float)
    percentile: Mapped[float] = mapped_column(Float)
    score_date: Mapped[str | None] = mapped_column(String(32))
    import_id: Mapped[int] = mapped_column(ForeignKey("feed_imports.id"), index=True)


class SbomDocument(Base):
    """One SBOM file imported for a release; supplier SBOMs carry their supplier (附属書A)."""

    __tablename__ = "sbom_documents"
    __table_args__ = (UniqueConstraint("release_id", "sha256", name="uq_sbom_documents_release_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    supplier: Mapped[str] = mapped_column(String(200))
    from_supplier: Mapped[bool] = mapped_column(Boolean, default=False)
    format: Mapped[str] = mapped_column(String(64))
    document_id: Mapped[str | None] = mapped_column(String(500))
    created: Mapped[str | None] = mapped_column(String(64))
    tools: Mapped[list[str]] = mapped_column(JSON, default=list)
    authors: Mapped[list[str]] = mapped_column(JSON, default=list)
    sha256: Mapped[str] = mapped_column(String(64))
    source_name: Mapped[str | None] = mapped_column(String(500))
    subject: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    dependencies: Mapped[list[Any]] = mapped_column(JSON, default=list)
    quality: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    quality_score: Mapped[float] = mapped_column(Float, default=0.0)
    component_count: Mapped[int] = mapped_column(Integer, default=0)
    imported_by: Mapped[str | None] = mapped_column(String(200))
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    release: Mapped[Release] = relationship()


class SbomComponent(Base):
    __tablename__ = "sbom_components"

    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("sbom_documents.id", ondelete="CASCADE"), index=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    ref: Mapped[str] = mapped_column(String(1000))
    name: Mapped[str] = mapped_column(String(500), index=True)
    version: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    purl: Mapped[str | None] = mapped_column(String(1000))
    cpe: Mapped[str | None] = mapped_column(String(1000))
    supplier: Mapped[str | None] = mapped_column(String(500))
    end_of_support: Mapped[str | None] = mapped_column(String(32))
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # hashes, licenses, issues, properties...


class Finding(Base):
    """One vulnerability in one component of one release. Never deleted; ``active`` turns false instead."""

    __tablename__ = "findings"
    __table_args__ = (UniqueConstraint("release_id", "component_ref", "advisory_id", name="uq_findings_release_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    component_ref: Mapped[str] = mapped_column(String(1000))
    component_name: Mapped[str] = mapped_column(String(500))
    component_version: Mapped[str | None] = mapped_column(String(200))
    component_purl: Mapped[str | None] = mapped_column(String(1000))
    advisory_id: Mapped[str] = mapped_column(String(200), index=True)
    alias_group: Mapped[str] = mapped_column(String(200), index=True)
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    method: Mapped[str] = mapped_column(String(32))
    confidence: Mapped[str] = mapped_column(String(16))
    matched: Mapped[str] = mapped_column(String(1000))
    fixed_version: Mapped[str | None] = mapped_column(String(200))
    package: Mapped[str | None] = mapped_column(String(500))
    active: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    inactive_reason: Mapped[str | None] = mapped_column(String(64))
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    priority_score: Mapped[int] = mapped_column(Integer, default=0)
    priority_tier: Mapped[str] = mapped_column(String(16), default="low")
    cvss: Mapped[float | None] = mapped_column(Float)
    kev: Mapped[bool] = mapped_column(Boolean, default=False)
    epss: Mapped[float | None] = mapped_column(Float)
    notice_by: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fix_by: Mapped[datetime | None] = mapped_column(UTCDateTime())
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fixed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    triage_status: Mapped[str] = mapped_column(String(32), default="under_investigation")
    triage_id: Mapped[int | None] = mapped_column(Integer)  # latest TriageDecision.id

    release: Mapped[Release] = relationship(lazy="joined", innerjoin=True)


class FindingEvent(Base):
    """The history of a finding: matched, re-seen, inactive (with reason), reactivated, triaged."""

    __tablename__ = "finding_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    finding_id: Mapped[int] = mapped_column(ForeignKey("findings.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str | None] = mapped_column(String(200))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class TriageRule(Base):
    """A decision that carries to other releases: same vulnerability, same component (name or purl without version)."""

    __tablename__ = "triage_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    alias_group: Mapped[str] = mapped_column(String(200), index=True)
    component_name: Mapped[str | None] = mapped_column(String(500))
    component_purl: Mapped[str | None] = mapped_column(String(1000))  # without version and qualifiers
    status: Mapped[str] = mapped_column(String(32))
    justification: Mapped[str | None] = mapped_column(String(64))
    response: Mapped[list[str]] = mapped_column(JSON, default=list)
    impact_statement: Mapped[str | None] = mapped_column(Text)
    patient_safety_impact: Mapped[str | None] = mapped_column(String(32))
    exploitability: Mapped[str | None] = mapped_column(Text)
    compensating_controls: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class TriageDecision(Base):
    """One VEX decision on one finding; every decision is kept (the latest one is current)."""

    __tablename__ = "triage_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    finding_id: Mapped[int] = mapped_column(ForeignKey("findings.id"), index=True)
    status: Mapped[str] = mapped_column(String(32))
    justification: Mapped[str | None] = mapped_column(String(64))
    response: Mapped[list[str]] = mapped_column(JSON, default=list)
    impact_statement: Mapped[str | None] = mapped_column(Text)
    patient_safety_impact: Mapped[str | None] = mapped_column(String(32))
    exploitability: Mapped[str | None] = mapped_column(Text)
    compensating_controls: Mapped[str | None] = mapped_column(Text)
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("triage_rules.id"))
    decided_by: Mapped[str] = mapped_column(String(200))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PublishedAdvisory(Base):
    """A CSAF document generated from triage (or an end-of-support notice) and where it was published."""

    __tablename__ = "published_advisories"
    __table_args__ = (UniqueConstraint("tracking_id", "version", name="uq_published_advisories_tracking_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tracking_id: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[str] = mapped_column(String(32))
    category: Mapped[str] = mapped_column(String(64))  # csaf_security_advisory, csaf_vex, csaf_informational_advisory
    lang: Mapped[str] = mapped_column(String(8))
    title: Mapped[str] = mapped_column(String(500))
    public: Mapped[bool] = mapped_column(Boolean, default=True)  # TLP:WHITE on the provider tree
    release_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    vulnerabilities: Mapped[list[str]] = mapped_column(JSON, default=list)
    path: Mapped[str | None] = mapped_column(String(500))  # relative to the distribution folder
    url: Mapped[str | None] = mapped_column(String(1000))
    sha512: Mapped[str] = mapped_column(String(128))
    document: Mapped[str] = mapped_column(Text)
    published_by: Mapped[str] = mapped_column(String(200))
    published_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LifecycleProduct(Base):
    """An endoflife.date product file as imported (the parser reads it again on use)."""

    __tablename__ = "lifecycle_products"

    product: Mapped[str] = mapped_column(String(100), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    import_id: Mapped[int] = mapped_column(ForeignKey("feed_imports.id"), index=True)


class LifecycleOverrideRow(Base):
    __tablename__ = "lifecycle_overrides"
    __table_args__ = (UniqueConstraint("product", "cycle", name="uq_lifecycle_overrides_product"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    product: Mapped[str] = mapped_column(String(100))
    cycle: Mapped[str] = mapped_column(String(100))
    eol: Mapped[str | None] = mapped_column(String(16))  # ISO date, "true" or "false"
    eoas: Mapped[str | None] = mapped_column(String(16))
    eoes: Mapped[str | None] = mapped_column(String(16))
    evidence_author: Mapped[str] = mapped_column(String(200))
    evidence_source: Mapped[str] = mapped_column(String(1000))
    evidence_note: Mapped[str] = mapped_column(Text, default="")
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReleaseLifecycleRow(Base):
    """Lifecycle facts of a release beyond its EOL/EOS dates: release day, notice day, legacy plan."""

    __tablename__ = "release_lifecycles"

    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), primary_key=True)
    released_on: Mapped[date] = mapped_column(Date)
    notice_date: Mapped[date | None] = mapped_column(Date)  # when hospitals are (or were) told of EOL/EOS
    extended_support: Mapped[list[str]] = mapped_column(JSON, default=list)  # component refs relying on LTS/ESU
    legacy_plan: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    updated_by: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
