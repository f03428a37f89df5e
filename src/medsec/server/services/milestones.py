"""Lifecycle milestone packages (SM-2, SM-4; handbook 表2, IMDRF N70): the documents each hospital must get.

At a release the handbook expects hospitals to receive the security policy, the EOL/EOS plan, the SBOM, the
MDS2 disclosure and the maintenance plan; at EOL an EOL notice with the EOS plan; at EOS an EOS notice with the
legacy plan. A milestone freezes those documents (bytes and SHA-256) when it is assembled, creates one
delivery per hospital that has a device of the product, pushes a notice through the outbox (IMDRF N70: push,
do not only post), and records who at each hospital acknowledged which package digest and when.

The security policy and the maintenance plan are written by the manufacturer per product; while one is
missing the package lists it as "manual document needed", and assembling the milestone again later fills it
in. That changes the package digest, so an earlier acknowledgement shows as outdated until repeated.

The server assembles packages on its own too: the release package in the transaction that publishes the
release (:func:`assemble_published`, called by ``updates.sync_releases``), and EOL/EOS packages when their
dates come (:func:`assemble_due`, in the periodic update step). Those are recorded with the actor ``system``.

Tenant scope: a hospital sees a milestone only through its own delivery; another hospital's milestone is
reported exactly like a missing one.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from medsec.crypto.canonical import canonical_json
from medsec.errors import CanonicalEncodingError, Conflict, Error, InvalidRequest, NotFound
from medsec.server.audit import ServerAuditLog
from medsec.server.models import Device, DeviceModel, DeviceStatus, Organization, Release, ReleaseStatus, Role, User
from medsec.server.models_milestones import Milestone, MilestoneDelivery, MilestoneDocument, ProductDocument
from medsec.server.models_vulns import PublishedAdvisory
from medsec.server.notify import enqueue
from medsec.server.principal import Principal
from medsec.server.services import lifecycle_plans, sboms

logger = logging.getLogger(__name__)

MAX_DOCUMENT_TEXT = 100_000


class MilestoneKind(enum.StrEnum):
    RELEASE = "release"
    EOL = "eol"
    EOS = "eos"


class DocumentKind(enum.StrEnum):
    SECURITY_POLICY = "security_policy"
    LIFECYCLE_PLAN = "lifecycle_plan"  # the EOL/EOS plan
    SBOM = "sbom"
    MDS2 = "mds2"
    MAINTENANCE_PLAN = "maintenance_plan"
    EOL_NOTICE = "eol_notice"
    EOS_NOTICE = "eos_notice"
    LEGACY_PLAN = "legacy_plan"


# Handbook 表2: what each milestone hands to hospitals.
PACKAGES: dict[MilestoneKind, tuple[DocumentKind, ...]] = {
    MilestoneKind.RELEASE: (
        DocumentKind.SECURITY_POLICY,
        DocumentKind.LIFECYCLE_PLAN,
        DocumentKind.SBOM,
        DocumentKind.MDS2,
        DocumentKind.MAINTENANCE_PLAN,
    ),
    MilestoneKind.EOL: (DocumentKind.EOL_NOTICE, DocumentKind.LIFECYCLE_PLAN),
    MilestoneKind.EOS: (DocumentKind.EOS_NOTICE, DocumentKind.LEGACY_PLAN),
}
MANUAL_DOCUMENTS = (DocumentKind.SECURITY_POLICY, DocumentKind.MAINTENANCE_PLAN)
TITLES: dict[DocumentKind, tuple[str, str]] = {
    DocumentKind.SECURITY_POLICY: ("Security policy", "セキュリティポリシー"),
    DocumentKind.LIFECYCLE_PLAN: ("EOL/EOS plan", "EOL/EOS計画"),
    DocumentKind.SBOM: ("SBOM (CycloneDX)", "SBOM (CycloneDX)"),
    DocumentKind.MDS2: ("MDS2 disclosure", "MDS2"),
    DocumentKind.MAINTENANCE_PLAN: ("Maintenance plan", "保守計画"),
    DocumentKind.EOL_NOTICE: ("EOL notice", "EOL通知"),
    DocumentKind.EOS_NOTICE: ("EOS notice", "EOS通知"),
    DocumentKind.LEGACY_PLAN: ("Legacy plan", "レガシー対応計画"),
}
SYSTEM_ACTOR = "system"  # the audit actor of packages the server assembles on its own
CREATOR_ROLES = (Role.MANUFACTURER_ADMIN, Role.RELEASE_ENGINEER, Role.PSIRT)
ACKNOWLEDGER_ROLES = (Role.HOSPITAL_RESPONSIBLE, Role.HOSPITAL_ADMIN)


@dataclass(frozen=True)
class BuiltDocument:
    """A document as assembled: bytes, or the reason it cannot be included yet."""

    kind: DocumentKind
    filename: str
    media_type: str
    content: bytes | None
    missing_reason: str | None = None


def parse_milestone_kind(value: str) -> MilestoneKind:
    try:
        return MilestoneKind(value)
    except ValueError as e:
        raise InvalidRequest("invalid_kind", f"kind must be one of release, eol, eos, not {value!r}") from e


def parse_document_kind(value: str) -> DocumentKind:
    try:
        return DocumentKind(value)
    except ValueError as e:
        raise NotFound("unknown_document", f"no document {value!r} in this package") from e


def _json_bytes(value: dict[str, Any]) -> bytes:
    try:
        return canonical_json(value)
    except CanonicalEncodingError:
        # An MDS2 form may carry values without a canonical form; it is still hashed as stored.
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _manufacturer_only(actor: Principal, *roles: Role) -> None:
    # A hospital learns nothing here, not even which roles would do: it gets the answer for a missing object.
    if not actor.is_manufacturer:
        raise NotFound("unknown_milestone", "no such milestone is visible to you")
    actor.require_role(*roles)


# -- manufacturer-written documents ---------------------------------------------------------------------------


def set_product_document(
    session: Session,
    audit: ServerAuditLog,
    actor: Principal,
    *,
    product: str,
    kind: str,
    text_en: str,
    text_ja: str,
) -> ProductDocument:
    """Store the security policy or maintenance plan of a product (manufacturer admin)."""
    _manufacturer_only(actor, Role.MANUFACTURER_ADMIN)
    if kind not in {k.value for k in MANUAL_DOCUMENTS}:
        raise InvalidRequest("invalid_kind", "kind must be security_policy or maintenance_plan")
    for field, text in (("text_en", text_en), ("text_ja", text_ja)):
        if not text.strip():
            raise InvalidRequest("invalid_document", f"{field} is empty")
        if len(text) > MAX_DOCUMENT_TEXT:
            raise InvalidRequest("invalid_document", f"{field} is longer than {MAX_DOCUMENT_TEXT} characters")
    if session.scalar(select(DeviceModel.id).where(DeviceModel.product == product).limit(1)) is None:
        raise NotFound("unknown_product", f"no device model of product {product!r}")
    row = session.scalar(
        select(ProductDocument).where(ProductDocument.product == product, ProductDocument.kind == kind)
    )
    if row is None:
        row = ProductDocument(product=product, kind=kind, text_en="", text_ja="", updated_by=actor.username)
        session.add(row)
    row.text_en, row.text_ja = text_en, text_ja
    row.updated_by, row.updated_at = actor.username, dt.datetime.now(dt.UTC)
    session.flush()
    audit.append(
        session,
        "milestone.product_document",
        actor=actor.username,
        organization_id=None,
        details={
            "product": product,
            "kind": kind,
            "sha256_en": hashlib.sha256(text_en.encode()).hexdigest(),
            "sha256_ja": hashlib.sha256(text_ja.encode()).hexdigest(),
        },
    )
    return row


def product_documents(session: Session, actor: Principal, product: str) -> list[ProductDocument]:
    _manufacturer_only(actor, Role.MANUFACTURER_ADMIN, Role.RELEASE_ENGINEER, Role.PSIRT, Role.AUDITOR)
    return list(
        session.scalars(
            select(ProductDocument).where(ProductDocument.product == product).order_by(ProductDocument.kind)
        )
    )


def product_document_summary(row: ProductDocument) -> dict[str, Any]:
    return {
        "product": row.product,
        "kind": row.kind,
        "text_en": row.text_en,
        "text_ja": row.text_ja,
        "updated_by": row.updated_by,
        "updated_at": row.updated_at.isoformat(),
    }


# -- assembling documents -------------------------------------------------------------------------------------


def _stem(release: Release, kind: DocumentKind) -> str:
    return f"{release.product}-{release.version}-{kind.value.replace('_', '-')}"


def _manual(session: Session, release: Release, kind: DocumentKind) -> BuiltDocument:
    row = session.scalar(
        select(ProductDocument).where(ProductDocument.product == release.product, ProductDocument.kind == kind.value)
    )
    name = f"{_stem(release, kind)}.md"
    if row is None:
        return BuiltDocument(
            kind,
            name,
            "text/markdown; charset=utf-8",
            None,
            f"manual document needed: a manufacturer admin writes the {TITLES[kind][0].lower()} of "
            f"{release.product} (medsec milestones document)",
        )
    en, ja = TITLES[kind]
    text = (
        f"# {en} / {ja}: {release.product} {release.version}\n\n"
        f"## English\n\n{row.text_en.strip()}\n\n## 日本語\n\n{row.text_ja.strip()}\n"
    )
    return BuiltDocument(kind, name, "text/markdown; charset=utf-8", text.encode("utf-8"))


def _json_document(release: Release, kind: DocumentKind, body: dict[str, Any]) -> BuiltDocument:
    return BuiltDocument(kind, f"{_stem(release, kind)}.json", "application/json", _json_bytes(body))


def _missing(release: Release, kind: DocumentKind, reason: str, suffix: str = "json") -> BuiltDocument:
    return BuiltDocument(kind, f"{_stem(release, kind)}.{suffix}", "application/json", None, reason)


def _lifecycle_plan(session: Session, release: Release, today: dt.date) -> BuiltDocument:
    kind = DocumentKind.LIFECYCLE_PLAN
    en = lifecycle_plans.release_status(session, release, today, "en")
    if not en["eol"] or not en["eos"]:
        return _missing(release, kind, "EOL/EOS dates are not declared yet (medsec lifecycle plan)")
    ja = lifecycle_plans.release_status(session, release, today, "ja")
    body = {
        "document": "medsec-eol-eos-plan/1",
        "product": release.product,
        "version": release.version,
        "eol": en["eol"],
        "eos": en["eos"],
        "limited_support": {
            "en": "Between EOL and EOS only security updates and advisories are provided.",
            "ja": "EOLからEOSまではセキュリティ更新とアドバイザリのみの限定サポートです。",
        },
        "alerts": {"en": en["alerts"], "ja": ja["alerts"]},
        "components_ending_before_eos": en["unsupported_components"],
        "legacy_plan": {"en": en["legacy_plan"], "ja": ja["legacy_plan"]} if en["legacy_plan"] else None,
    }
    return _json_document(release, kind, body)


def _sbom(session: Session, release: Release) -> BuiltDocument:
    kind = DocumentKind.SBOM
    try:
        body = sboms.export_release(session, release)
    except NotFound:
        return _missing(release, kind, "no SBOM has been imported for this release (medsec sbom import)")
    return BuiltDocument(kind, f"{_stem(release, kind)}.cdx.json", "application/vnd.cyclonedx+json", _json_bytes(body))


def _mds2(session: Session, release: Release) -> BuiltDocument:
    kind = DocumentKind.MDS2
    try:
        from medsec.reports.mds2 import build_mds2  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return _missing(release, kind, "the MDS2 generator (medsec.reports.mds2) is not available on this server")
    try:
        form = build_mds2(session, release.product, release.version)
    except Error as e:
        return _missing(release, kind, f"MDS2 could not be generated: {e.diagnostics()}")
    if not isinstance(form, dict):
        return _missing(release, kind, "the MDS2 generator returned no document")
    return _json_document(release, kind, form)


def _notice(session: Session, release: Release, kind: DocumentKind) -> BuiltDocument:
    eol, eos = release.eol_date, release.eos_date
    if eol is None or eos is None:
        return _missing(release, kind, "EOL/EOS dates are not declared yet (medsec lifecycle plan)")
    when = eol if kind is DocumentKind.EOL_NOTICE else eos
    if kind is DocumentKind.EOL_NOTICE:
        en = (
            f"{release.product} {release.version} reaches its end of life on {eol.isoformat()}. From then until "
            f"its end of support on {eos.isoformat()} only security updates and advisories are provided."
        )
        ja = (
            f"{release.product} {release.version} は {eol.isoformat()} にEOL(販売・通常サポート終了)となります。"
            f"以後 {eos.isoformat()} のEOSまではセキュリティ更新とアドバイザリのみの限定サポートです。"
        )
    else:
        en = (
            f"Support for {release.product} {release.version} ends on {eos.isoformat()}: no further security "
            f"updates or advisories. Follow the legacy plan and move to a supported release."
        )
        ja = (
            f"{release.product} {release.version} のサポートは {eos.isoformat()} に終了します(EOS)。"
            f"以後セキュリティ更新・アドバイザリは提供されません。レガシー対応計画に従い、サポート中のリリースへ移行してください。"
        )
    csaf = sorted(
        a.tracking_id
        for a in session.scalars(
            select(PublishedAdvisory).where(PublishedAdvisory.category == "csaf_informational_advisory")
        )
        if release.id in a.release_ids
    )
    body = {
        "document": f"medsec-{kind.value.replace('_', '-')}/1",
        "product": release.product,
        "version": release.version,
        "date": when.isoformat(),
        "eol": eol.isoformat(),
        "eos": eos.isoformat(),
        "text": {"en": en, "ja": ja},
        "csaf_notices": csaf,
    }
    return _json_document(release, kind, body)


def _legacy_plan(session: Session, release: Release) -> BuiltDocument:
    kind = DocumentKind.LEGACY_PLAN
    try:
        plan = lifecycle_plans.legacy_plan(session, release)
    except (Error, ValueError) as e:
        return _missing(release, kind, f"the legacy plan cannot be read: {e}", "md")
    if plan is None:
        return _missing(release, kind, "no legacy plan has been saved for this release (medsec lifecycle plan)", "md")
    text = f"{plan.hospital_guidance('en')}\n\n---\n\n{plan.hospital_guidance('ja')}\n"
    return BuiltDocument(kind, f"{_stem(release, kind)}.md", "text/markdown; charset=utf-8", text.encode("utf-8"))


def build_document(session: Session, release: Release, kind: DocumentKind, today: dt.date) -> BuiltDocument:
    if kind in MANUAL_DOCUMENTS:
        return _manual(session, release, kind)
    if kind is DocumentKind.LIFECYCLE_PLAN:
        return _lifecycle_plan(session, release, today)
    if kind is DocumentKind.SBOM:
        return _sbom(session, release)
    if kind is DocumentKind.MDS2:
        return _mds2(session, release)
    if kind is DocumentKind.LEGACY_PLAN:
        return _legacy_plan(session, release)
    return _notice(session, release, kind)


def package_digest(documents: list[MilestoneDocument]) -> str:
    """SHA-256 over the canonical list of (kind, document SHA-256); a missing document counts as null."""
    listing = [{"kind": d.kind, "sha256": d.sha256} for d in sorted(documents, key=lambda d: d.position)]
    return hashlib.sha256(canonical_json(listing)).hexdigest()


# -- milestones -----------------------------------------------------------------------------------------------


def _check_due(release: Release, kind: MilestoneKind) -> None:
    if kind is MilestoneKind.RELEASE and release.status != ReleaseStatus.PUBLISHED.value:
        raise Conflict("release_not_published", f"{release.product} {release.version} is not published yet")
    if kind is MilestoneKind.EOL and release.eol_date is None:
        raise Conflict("no_eol_date", f"{release.product} {release.version} has no declared EOL date")
    if kind is MilestoneKind.EOS and release.eos_date is None:
        raise Conflict("no_eos_date", f"{release.product} {release.version} has no declared EOS date")


def hospitals_with_product(session: Session, product: str) -> list[Organization]:
    """Every hospital with a device of the product that is not retired."""
    ids = session.scalars(
        select(Device.hospital_id)
        .join(DeviceModel, Device.model_id == DeviceModel.id)
        .where(DeviceModel.product == product, Device.status != DeviceStatus.RETIRED.value)
        .distinct()
    )
    wanted = sorted(set(ids))
    if not wanted:
        return []
    return list(session.scalars(select(Organization).where(Organization.id.in_(wanted)).order_by(Organization.slug)))


def find_milestone(session: Session, release: Release, kind: MilestoneKind) -> Milestone | None:
    return session.scalar(select(Milestone).where(Milestone.release_id == release.id, Milestone.kind == kind.value))


def assemble(
    session: Session,
    audit: ServerAuditLog,
    actor: Principal,
    release: Release,
    kind: MilestoneKind,
    *,
    today: dt.date,
    now: dt.datetime | None = None,
) -> Milestone:
    """Create the milestone package, or complete an existing one; deliver it to every hospital with the product.

    Documents already in the package never change (an acknowledgement refers to their bytes); only missing
    ones are filled in, and hospitals that got devices of the product since are added.
    """
    _manufacturer_only(actor, *CREATOR_ROLES)
    return _assemble(session, audit, actor.username, release, kind, today=today, now=now)


def _assemble(
    session: Session,
    audit: ServerAuditLog,
    actor_name: str,
    release: Release,
    kind: MilestoneKind,
    *,
    today: dt.date,
    now: dt.datetime | None,
) -> Milestone:
    _check_due(release, kind)
    now = now or dt.datetime.now(dt.UTC)
    milestone = find_milestone(session, release, kind)
    created = milestone is None
    if milestone is None:
        milestone = Milestone(
            release_id=release.id, kind=kind.value, package_sha256="", created_by=actor_name, created_at=now
        )
        session.add(milestone)
        session.flush()
    filled = _fill_documents(session, milestone, release, kind, today, now)
    old_digest = milestone.package_sha256
    milestone.package_sha256 = package_digest(milestone.documents)
    milestone.updated_at = now
    session.flush()
    new_hospitals = _deliver(session, audit, actor_name, milestone, release, now)
    if not created and milestone.package_sha256 != old_digest:
        _notify_updated(session, milestone, release, [d for d in milestone.deliveries if d.id not in new_hospitals])
    audit.append(
        session,
        "milestone.created" if created else "milestone.completed",
        actor=actor_name,
        organization_id=None,
        details={
            "milestone": milestone.id,
            "release": f"{release.product} {release.version}",
            "kind": kind.value,
            "package_sha256": milestone.package_sha256,
            "documents": {d.kind: d.sha256 for d in milestone.documents},
            "filled": filled,
            "hospitals": [d.hospital.slug for d in milestone.deliveries],
        },
    )
    return milestone


def _fill_documents(
    session: Session, milestone: Milestone, release: Release, kind: MilestoneKind, today: dt.date, now: dt.datetime
) -> list[str]:
    existing = {d.kind: d for d in milestone.documents}
    filled: list[str] = []
    for position, doc_kind in enumerate(PACKAGES[kind]):
        row = existing.get(doc_kind.value)
        if row is not None and row.content is not None:
            continue
        built = build_document(session, release, doc_kind, today)
        if row is None:
            row = MilestoneDocument(kind=doc_kind.value, position=position, filename=built.filename)
            milestone.documents.append(row)
        row.filename, row.media_type = built.filename, built.media_type
        row.content = built.content
        row.sha256 = hashlib.sha256(built.content).hexdigest() if built.content is not None else None
        row.missing_reason = built.missing_reason
        row.added_at = now if built.content is not None else None
        if built.content is not None:
            filled.append(doc_kind.value)
    session.flush()
    return filled


def _notice_payload(milestone: Milestone, release: Release) -> dict[str, Any]:
    return {
        "milestone": milestone.id,
        "kind": milestone.kind,
        "product": release.product,
        "version": release.version,
        "package_sha256": milestone.package_sha256,
        "documents": [{"kind": d.kind, "sha256": d.sha256, "missing": d.content is None} for d in milestone.documents],
        "text_en": (
            f"The {milestone.kind} documents for {release.product} {release.version} are ready in the medsec portal "
            f"(Milestones). Please download them and acknowledge receipt."
        ),
        "text_ja": (
            f"{release.product} {release.version} の{_kind_ja(milestone.kind)}文書を"
            "medsecポータル(マイルストーン)に掲載しました。ダウンロードのうえ受領確認をお願いします。"
        ),
    }


def _kind_ja(kind: str) -> str:
    return {"release": "リリース時", "eol": "EOL時", "eos": "EOS時"}.get(kind, kind)


def _deliver(
    session: Session,
    audit: ServerAuditLog,
    actor_name: str,
    milestone: Milestone,
    release: Release,
    now: dt.datetime,
) -> set[int]:
    have = {d.hospital_id for d in milestone.deliveries}
    added: set[int] = set()
    for hospital in hospitals_with_product(session, release.product):
        if hospital.id in have:
            continue
        delivery = MilestoneDelivery(hospital_id=hospital.id, notified_at=now)
        milestone.deliveries.append(delivery)
        session.flush()
        added.add(delivery.id)
        enqueue(
            session,
            hospital.id,
            event=f"milestone.{milestone.kind}",
            key=f"milestone-{milestone.id}/delivered/org{hospital.id}",
            subject=f"[medsec] {release.product} {release.version}: {milestone.kind} documents / 文書のお知らせ",
            payload=_notice_payload(milestone, release),
        )
        audit.append(
            session,
            "milestone.delivered",
            actor=actor_name,
            organization_id=hospital.id,
            details={
                "milestone": milestone.id,
                "release": f"{release.product} {release.version}",
                "kind": milestone.kind,
                "package_sha256": milestone.package_sha256,
            },
        )
    return added


def _notify_updated(
    session: Session, milestone: Milestone, release: Release, deliveries: list[MilestoneDelivery]
) -> None:
    for d in deliveries:
        enqueue(
            session,
            d.hospital_id,
            event=f"milestone.{milestone.kind}_updated",
            key=f"milestone-{milestone.id}/updated/{milestone.package_sha256[:16]}/org{d.hospital_id}",
            subject=f"[medsec] {release.product} {release.version}: {milestone.kind} documents completed / 文書追加",
            payload=_notice_payload(milestone, release),
        )


def due_milestones(session: Session, today: dt.date) -> list[tuple[Release, MilestoneKind]]:
    """Milestones whose moment has come and that have not been assembled yet."""
    out: list[tuple[Release, MilestoneKind]] = []
    have = {(m.release_id, m.kind) for m in session.scalars(select(Milestone))}
    for release in session.scalars(select(Release).order_by(Release.product, Release.version)):
        candidates = []
        if release.status == ReleaseStatus.PUBLISHED.value:
            candidates.append(MilestoneKind.RELEASE)
        if release.eol_date is not None and release.eol_date <= today:
            candidates.append(MilestoneKind.EOL)
        if release.eos_date is not None and release.eos_date <= today:
            candidates.append(MilestoneKind.EOS)
        out.extend((release, k) for k in candidates if (release.id, k.value) not in have)
    return out


# -- assembled by the server itself ----------------------------------------------------------------------------


def _assemble_isolated(
    session: Session, audit: ServerAuditLog, release: Release, kind: MilestoneKind, today: dt.date, now: dt.datetime
) -> Milestone | None:
    """Assemble inside a savepoint of the caller's transaction; a failure undoes only this package.

    Publishing a release must not be held back by a package that cannot be built (a bug, a concurrent replica
    that created it first): the release stays published and the periodic pass tries the package again.
    """
    try:
        with session.begin_nested():
            return _assemble(session, audit, SYSTEM_ACTOR, release, kind, today=today, now=now)
    except IntegrityError:
        # Another server replica created the same package (unique release + kind) in the meantime.
        logger.info("%s package of %s %s was created concurrently", kind.value, release.product, release.version)
        return None
    except Error as e:
        logger.error(
            "cannot assemble the %s package of %s %s: %s", kind.value, release.product, release.version, e.diagnostics()
        )
        audit.append(
            session,
            "milestone.assembly_failed",
            actor=SYSTEM_ACTOR,
            organization_id=None,
            details={"release": f"{release.product} {release.version}", "kind": kind.value, "problem": str(e)[:500]},
        )
        return None


def assemble_published(
    session: Session, audit: ServerAuditLog, releases: list[Release], *, now: dt.datetime
) -> list[Milestone]:
    """The release package of each release just published, in the publishing transaction (SM-2; 表2).

    Idempotent: a release that already has its release package keeps it untouched (a person completes a
    package on purpose, with ``medsec milestones create`` or the portal form, not as a side effect).
    """
    created: list[Milestone] = []
    for release in releases:
        if release.status != ReleaseStatus.PUBLISHED.value:
            continue
        if find_milestone(session, release, MilestoneKind.RELEASE) is not None:
            continue
        row = _assemble_isolated(session, audit, release, MilestoneKind.RELEASE, now.date(), now)
        if row is not None:
            created.append(row)
    return created


def assemble_due(session: Session, audit: ServerAuditLog, *, now: dt.datetime) -> list[Milestone]:
    """Every package whose moment has come and that does not exist yet (EOL/EOS dates reached; IMDRF N70: push).

    Run by the server's periodic update step. It also makes up for a release package whose assembly failed at
    publication.
    """
    created: list[Milestone] = []
    for release, kind in due_milestones(session, now.date()):
        row = _assemble_isolated(session, audit, release, kind, now.date(), now)
        if row is not None:
            created.append(row)
    return created


# -- what the manufacturer's forms offer -----------------------------------------------------------------------


def known_products(session: Session, actor: Principal) -> list[str]:
    """Products with a device model: those whose security policy and maintenance plan can be written."""
    _manufacturer_only(actor, Role.MANUFACTURER_ADMIN, Role.RELEASE_ENGINEER, Role.PSIRT, Role.AUDITOR)
    return sorted(set(session.scalars(select(DeviceModel.product))))


def package_candidates(session: Session, actor: Principal) -> list[Release]:
    """Releases a package may be assembled for (the rules of each kind are checked when assembling)."""
    _manufacturer_only(actor, *CREATOR_ROLES)
    return list(session.scalars(select(Release).order_by(Release.product, Release.version)))


def find_release_by_id(session: Session, actor: Principal, release_id: int) -> Release:
    """The release a manufacturer picked in a form; a hospital is answered as for a missing milestone."""
    _manufacturer_only(actor, *CREATOR_ROLES)
    release = session.get(Release, release_id)
    if release is None:
        raise NotFound("unknown_release", f"no release with id {release_id}")
    return release


# -- reading, downloading, acknowledging -------------------------------------------------------------------------


def visible_milestones(session: Session, actor: Principal) -> list[Milestone]:
    stmt = select(Milestone).order_by(Milestone.created_at.desc(), Milestone.id.desc())
    if not actor.is_manufacturer:
        stmt = stmt.join(MilestoneDelivery, MilestoneDelivery.milestone_id == Milestone.id).where(
            MilestoneDelivery.hospital_id == actor.organization_id
        )
    return list(session.scalars(stmt))


def get_milestone(session: Session, actor: Principal, milestone_id: int) -> Milestone:
    milestone = session.get(Milestone, milestone_id)
    if milestone is None or (not actor.is_manufacturer and delivery_for(milestone, actor.organization_id) is None):
        raise NotFound("unknown_milestone", "no such milestone is visible to you")
    return milestone


def delivery_for(milestone: Milestone, organization_id: int) -> MilestoneDelivery | None:
    return next((d for d in milestone.deliveries if d.hospital_id == organization_id), None)


def _mark_opened(milestone: Milestone, actor: Principal, now: dt.datetime) -> None:
    if actor.is_manufacturer:
        return
    delivery = delivery_for(milestone, actor.organization_id)
    if delivery is not None and delivery.first_opened_at is None:
        delivery.first_opened_at, delivery.first_opened_by = now, actor.username


def open_document(
    session: Session, actor: Principal, milestone: Milestone, kind: str, now: dt.datetime | None = None
) -> MilestoneDocument:
    """A document with content; a hospital's first download counts as received."""
    wanted = parse_document_kind(kind)
    doc = next((d for d in milestone.documents if d.kind == wanted.value), None)
    if doc is None:
        raise NotFound("unknown_document", f"no document {kind!r} in this package")
    if doc.content is None:
        raise NotFound("document_missing", f"{kind} is not available yet: {doc.missing_reason}")
    _mark_opened(milestone, actor, now or dt.datetime.now(dt.UTC))
    session.flush()
    return doc


def acknowledge(
    session: Session, audit: ServerAuditLog, actor: Principal, milestone: Milestone, now: dt.datetime | None = None
) -> MilestoneDelivery:
    """The hospital's responsible person (or admin) confirms receipt of exactly this package digest."""
    if actor.is_manufacturer:
        raise NotFound("unknown_milestone", "no such milestone is visible to you")
    actor.require_role(*ACKNOWLEDGER_ROLES)
    delivery = delivery_for(milestone, actor.organization_id)
    if delivery is None:
        raise NotFound("unknown_milestone", "no such milestone is visible to you")
    if delivery.acknowledged_sha256 == milestone.package_sha256:
        raise Conflict("already_acknowledged", "this package was already acknowledged")
    now = now or dt.datetime.now(dt.UTC)
    user = session.get(User, actor.user_id)
    delivery.acknowledged_at = now
    delivery.acknowledged_by = actor.username
    delivery.acknowledged_name = user.display_name if user is not None else actor.username
    delivery.acknowledged_sha256 = milestone.package_sha256
    if delivery.first_opened_at is None:
        delivery.first_opened_at, delivery.first_opened_by = now, actor.username
    session.flush()
    audit.append(
        session,
        "milestone.acknowledged",
        actor=actor.username,
        organization_id=actor.organization_id,
        details={
            "milestone": milestone.id,
            "release": f"{milestone.release.product} {milestone.release.version}",
            "kind": milestone.kind,
            "package_sha256": milestone.package_sha256,
        },
    )
    return delivery


class DeliveryStatus(enum.StrEnum):
    NOTIFIED = "notified"
    OPENED = "opened"
    ACKNOWLEDGED = "acknowledged"
    OUTDATED = "acknowledgement_outdated"  # acknowledged an earlier, incomplete package


def delivery_status(milestone: Milestone, delivery: MilestoneDelivery) -> DeliveryStatus:
    if delivery.acknowledged_sha256 == milestone.package_sha256:
        return DeliveryStatus.ACKNOWLEDGED
    if delivery.acknowledged_sha256 is not None:
        return DeliveryStatus.OUTDATED
    if delivery.first_opened_at is not None:
        return DeliveryStatus.OPENED
    return DeliveryStatus.NOTIFIED


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def delivery_summary(milestone: Milestone, d: MilestoneDelivery) -> dict[str, Any]:
    return {
        "hospital": d.hospital.slug,
        "hospital_name": d.hospital.name,
        "status": delivery_status(milestone, d).value,
        "notified_at": _iso(d.notified_at),
        "first_opened_at": _iso(d.first_opened_at),
        "first_opened_by": d.first_opened_by,
        "acknowledged_at": _iso(d.acknowledged_at),
        "acknowledged_by": d.acknowledged_by,
        "acknowledged_name": d.acknowledged_name,
        "acknowledged_sha256": d.acknowledged_sha256,
    }


def summary(milestone: Milestone, actor: Principal) -> dict[str, Any]:
    """What the caller may know: every delivery for the manufacturer, only its own for a hospital."""
    release = milestone.release
    out: dict[str, Any] = {
        "id": milestone.id,
        "kind": milestone.kind,
        "product": release.product,
        "version": release.version,
        "eol": release.eol_date.isoformat() if release.eol_date else None,
        "eos": release.eos_date.isoformat() if release.eos_date else None,
        "package_sha256": milestone.package_sha256,
        "created_at": _iso(milestone.created_at),
        "updated_at": _iso(milestone.updated_at),
        "complete": all(d.content is not None for d in milestone.documents),
        "documents": [
            {
                "kind": d.kind,
                "filename": d.filename,
                "media_type": d.media_type,
                "sha256": d.sha256,
                "size": len(d.content) if d.content is not None else None,
                "available": d.content is not None,
                "missing_reason": d.missing_reason,
                "manual": d.kind in {k.value for k in MANUAL_DOCUMENTS},
            }
            for d in milestone.documents
        ],
    }
    if actor.is_manufacturer:
        out["created_by"] = milestone.created_by
        out["deliveries"] = [delivery_summary(milestone, d) for d in milestone.deliveries]
        out["acknowledged"] = sum(
            1 for d in milestone.deliveries if delivery_status(milestone, d) is DeliveryStatus.ACKNOWLEDGED
        )
        out["not_acknowledged"] = [
            d.hospital.slug
            for d in milestone.deliveries
            if delivery_status(milestone, d) is not DeliveryStatus.ACKNOWLEDGED
        ]
    else:
        own = delivery_for(milestone, actor.organization_id)
        out["delivery"] = delivery_summary(milestone, own) if own is not None else None
    return out
