"""SBOMs per release (SM-3, 附属書A): import, stored quality report, merged view, export, diff.

Each import is one transaction: the document, its components and its audit entry commit together or not at
all. Supplier SBOMs are stored as their own documents with their provenance; the merged view is computed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medsec.errors import Conflict, NotFound
from medsec.sbom import MergeResult, Sbom, diff, export_cyclonedx, merge, quality_report, read_sbom
from medsec.sbom.diff import SbomDiff
from medsec.sbom.model import Component, ComponentIssue, ComponentKind, ComponentRef, IssueLevel, Provenance
from medsec.server.audit import ServerAuditLog
from medsec.server.models import Device, DeviceModel, Release, ReleaseStatus
from medsec.server.models_vulns import SbomComponent, SbomDocument
from medsec.server.principal import Principal

logger = logging.getLogger(__name__)


def find_release(session: Session, product: str, version: str) -> Release | None:
    return session.scalar(select(Release).where(Release.product == product, Release.version == version))


def ensure_release(session: Session, product: str, version: str) -> Release:
    """The release row, created as a draft when an SBOM arrives before the signed update does."""
    release = find_release(session, product, version)
    if release is None:
        release = Release(product=product, version=version, status=ReleaseStatus.DRAFT.value)
        session.add(release)
        session.flush()
    return release


def visible_release(session: Session, actor: Principal, product: str, version: str) -> Release:
    """A release the caller may see: every release for the manufacturer, installed ones for a hospital."""
    release = find_release(session, product, version)
    if release is None or release.id not in visible_release_ids(session, actor):
        raise NotFound("unknown_release", "no such release is visible to you")
    return release


def visible_release_ids(session: Session, actor: Principal) -> set[int]:
    if actor.is_manufacturer:
        return set(session.scalars(select(Release.id)))
    stmt = (
        select(Release.id)
        .join(DeviceModel, DeviceModel.product == Release.product)
        .join(Device, (Device.model_id == DeviceModel.id) & (Device.installed_version == Release.version))
        .where(Device.hospital_id == actor.organization_id)
    )
    return set(session.scalars(stmt))


# -- values <-> rows ------------------------------------------------------------------------------------------


def _component_extra(c: Component) -> dict[str, Any]:
    return {
        "hashes": [list(h) for h in c.hashes],
        "licenses": list(c.licenses),
        "support_level": c.support_level,
        "source_sbom": c.source_sbom,
        "issues": [{"field": i.field, "message": i.message, "level": i.level.value} for i in c.issues],
        "group": c.group,
        "parent": c.parent,
        "properties": [list(p) for p in c.properties],
    }


def component_of(row: SbomComponent) -> Component:
    extra = row.extra or {}
    return Component(
        ref=ComponentRef(row.ref),
        name=row.name,
        version=row.version,
        kind=ComponentKind(row.kind),
        supplier=row.supplier,
        purl=row.purl,
        cpe=row.cpe,
        hashes=tuple((str(a), str(b)) for a, b in extra.get("hashes", [])),
        licenses=tuple(extra.get("licenses", [])),
        support_level=extra.get("support_level"),
        end_of_support=row.end_of_support,
        source_sbom=extra.get("source_sbom"),
        issues=tuple(ComponentIssue(i["field"], i["message"], IssueLevel(i["level"])) for i in extra.get("issues", [])),
        group=extra.get("group"),
        parent=ComponentRef(extra["parent"]) if extra.get("parent") else None,
        properties=tuple((str(a), str(b)) for a, b in extra.get("properties", [])),
    )


def _subject_json(c: Component | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {"ref": c.ref, "name": c.name, "version": c.version, "kind": c.kind.value, "purl": c.purl, "cpe": c.cpe}


def sbom_of(session: Session, doc: SbomDocument) -> Sbom:
    rows = session.scalars(select(SbomComponent).where(SbomComponent.document_id == doc.id).order_by(SbomComponent.id))
    subject = None
    if doc.subject:
        s = doc.subject
        subject = Component(
            ComponentRef(s["ref"]), s["name"], s.get("version"), ComponentKind(s["kind"]), purl=s.get("purl")
        )
    return Sbom(
        provenance=Provenance(
            supplier=doc.supplier,
            format=doc.format,
            document_id=doc.document_id,
            created=doc.created,
            tools=tuple(doc.tools),
            sha256=doc.sha256,
            authors=tuple(doc.authors),
            from_supplier=doc.from_supplier,
            source_name=doc.source_name,
        ),
        subject=subject,
        components=tuple(component_of(r) for r in rows),
        dependencies=tuple((ComponentRef(ref), tuple(ComponentRef(t) for t in ts)) for ref, ts in doc.dependencies),
    )


# -- import -------------------------------------------------------------------------------------------------


def store_sbom(
    session: Session,
    audit: ServerAuditLog,
    actor: str,
    release: Release,
    sbom: Sbom,
) -> SbomDocument:
    """Store one parsed SBOM for ``release`` with its quality report (caller owns the transaction)."""
    prov = sbom.provenance
    sha = prov.sha256 or ""
    existing = session.scalar(
        select(SbomDocument).where(SbomDocument.release_id == release.id, SbomDocument.sha256 == sha)
    )
    if existing is not None:
        raise Conflict(
            "sbom_exists", f"this SBOM ({sha[:12]}…) is already stored for {release.product} {release.version}"
        )
    report = quality_report(sbom)
    doc = SbomDocument(
        release_id=release.id,
        supplier=prov.supplier,
        from_supplier=prov.from_supplier,
        format=prov.format,
        document_id=prov.document_id,
        created=prov.created,
        tools=list(prov.tools),
        authors=list(prov.authors),
        sha256=sha,
        source_name=prov.source_name,
        subject=_subject_json(sbom.subject),
        dependencies=[[ref, list(targets)] for ref, targets in sbom.dependencies],
        quality=report.to_dict(),
        quality_score=round(report.score, 1),
        component_count=len(sbom.components),
        imported_by=actor,
    )
    session.add(doc)
    session.flush()
    session.add_all(
        SbomComponent(
            document_id=doc.id,
            release_id=release.id,
            ref=c.ref,
            name=c.name,
            version=c.version,
            kind=c.kind.value,
            purl=c.purl,
            cpe=c.cpe,
            supplier=c.supplier,
            end_of_support=c.end_of_support,
            extra=_component_extra(c),
        )
        for c in sbom.components
    )
    session.flush()
    audit.append(
        session,
        "sbom.imported",
        actor=actor,
        organization_id=None,
        details={
            "release": f"{release.product} {release.version}",
            "supplier": prov.supplier,
            "from_supplier": prov.from_supplier,
            "sha256": sha,
            "components": len(sbom.components),
            "quality_score": str(doc.quality_score),
        },
    )
    return doc


def import_sbom_file(
    session: Session,
    audit: ServerAuditLog,
    actor: str,
    *,
    product: str,
    version: str,
    path: Path,
    supplier: str | None = None,
) -> SbomDocument:
    """Read ``path`` (CycloneDX or SPDX) and store it for the release; a malformed file raises before any write."""
    sbom = read_sbom(path, supplier=supplier)
    release = ensure_release(session, product, version)
    return store_sbom(session, audit, actor, release, sbom)


def release_documents(session: Session, release: Release) -> list[SbomDocument]:
    return list(
        session.scalars(
            select(SbomDocument)
            .where(SbomDocument.release_id == release.id)
            .order_by(SbomDocument.from_supplier, SbomDocument.id)
        )
    )


def merged_view(session: Session, release: Release) -> MergeResult:
    """The release's own SBOM merged with its supplier SBOMs (provenance kept per component)."""
    docs = release_documents(session, release)
    if not docs:
        raise NotFound("no_sbom", f"{release.product} {release.version} has no SBOM")
    sboms = [sbom_of(session, d) for d in docs]
    own = [s for s in sboms if not s.provenance.from_supplier]
    suppliers = [s for s in sboms if s.provenance.from_supplier]
    if own:
        first, *rest = own
        return merge(first, *rest, *suppliers)
    first, *rest = suppliers
    return merge(first, *rest)


def release_components(session: Session, release_id: int) -> list[Component]:
    """All components of a release from every stored document (for matching)."""
    rows = session.scalars(
        select(SbomComponent).where(SbomComponent.release_id == release_id).order_by(SbomComponent.id)
    )
    seen: set[str] = set()
    out: list[Component] = []
    for row in rows:
        if row.ref in seen:
            continue  # the same ref in a supplier SBOM: keep the first (the release's own) one
        seen.add(row.ref)
        out.append(component_of(row))
    return out


def export_release(session: Session, release: Release) -> dict[str, Any]:
    """CycloneDX 1.6 JSON of the merged view (FDA support-level and end-of-support properties included)."""
    return export_cyclonedx(merged_view(session, release).sbom)


def diff_releases(session: Session, old: Release, new: Release) -> SbomDiff:
    return diff(merged_view(session, old).sbom, merged_view(session, new).sbom)


def document_summary(doc: SbomDocument) -> dict[str, Any]:
    return {
        "id": doc.id,
        "release": f"{doc.release.product} {doc.release.version}",
        "supplier": doc.supplier,
        "from_supplier": doc.from_supplier,
        "format": doc.format,
        "sha256": doc.sha256,
        "source_name": doc.source_name,
        "components": doc.component_count,
        "quality_score": doc.quality_score,
        "imported_at": doc.imported_at.isoformat(),
        "imported_by": doc.imported_by,
    }


def merge_summary(result: MergeResult) -> dict[str, Any]:
    return {
        "components": len(result.sbom.components),
        "conflicts": [asdict(c) for c in result.conflicts],
    }
