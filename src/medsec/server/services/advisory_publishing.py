"""CSAF advisories and VEX from triage, published on the trusted-provider tree (SM-2, SM-3, SM-4).

Documents are built by :mod:`medsec.advisories.csaf` (which runs the CSAF mandatory tests on every result),
signed with the PSIRT OpenPGP key (gpg) and written under ``<data_dir>/csaf/.well-known/csaf``; the server
serves that folder at ``/.well-known/csaf``. Each publication is recorded in the database and the audit log.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from medsec.advisories.csaf import build_end_of_support_notice, build_security_advisory, build_vex
from medsec.advisories.errors import PublicationError
from medsec.advisories.model import (
    AdvisoryDocument,
    Assessment,
    DeviceRelease,
    Justification,
    Lang,
    Note,
    Publisher,
    Reference,
    Remediation,
    RemediationCategory,
    Revision,
    Status,
    VulnerabilityEntry,
)
from medsec.advisories.openpgp import GpgSigner, PsirtKey, generate_psirt_key
from medsec.advisories.provider import ProviderConfig, ProviderTree, encode_document
from medsec.advisories.vex import cyclonedx_vex, openvex
from medsec.crypto.keys import write_private_file
from medsec.errors import ConfigError, InvalidRequest, NotFound
from medsec.sbom.model import ComponentRef
from medsec.server.audit import ServerAuditLog
from medsec.server.models import DeviceModel, Organization, OrgKind, Release, Role
from medsec.server.models_vulns import Finding, PublishedAdvisory, TriageDecision
from medsec.server.principal import Principal
from medsec.server.services import sboms
from medsec.server.settings import Settings

logger = logging.getLogger(__name__)

STATUS = {
    "affected": Status.KNOWN_AFFECTED,
    "not_affected": Status.KNOWN_NOT_AFFECTED,
    "fixed": Status.FIXED,
    "under_investigation": Status.UNDER_INVESTIGATION,
}
DEFAULT_REMEDIATION: dict[Lang, str] = {
    "en": "Follow the compensating controls in this advisory until an update is installed.",
    "ja": "更新を適用するまで、本アドバイザリに記載の補完的対策を実施してください。",
}


# -- PSIRT key ------------------------------------------------------------------------------------------------


def init_psirt_key(settings: Settings, uid: str) -> PsirtKey:
    """Create the PSIRT OpenPGP key (secret part mode 0600) unless one exists."""
    folder = settings.psirt_key_dir
    if (folder / "fingerprint").exists():
        raise ConfigError(f"a PSIRT key already exists in {folder}")
    key = generate_psirt_key(uid, settings.psirt_key_passphrase)
    folder.mkdir(parents=True, exist_ok=True)
    write_private_file(folder / "secret.asc", key.secret_key)
    (folder / "public.asc").write_bytes(key.public_key)
    (folder / "fingerprint").write_text(key.fingerprint + "\n", encoding="ascii")
    return key


def load_psirt_key(settings: Settings) -> PsirtKey:
    folder = settings.psirt_key_dir
    try:
        return PsirtKey(
            fingerprint=(folder / "fingerprint").read_text(encoding="ascii").strip(),
            public_key=(folder / "public.asc").read_bytes(),
            secret_key=(folder / "secret.asc").read_bytes(),
        )
    except OSError as e:
        raise ConfigError(f"no PSIRT key in {folder}; run 'medsec advisories init-key' first") from e


def provider_config(settings: Settings, publisher: Publisher) -> ProviderConfig:
    base = settings.csaf_base_url or settings.public_url
    if base.startswith("http://"):
        # CSAF 7.1.1 requires https; behind a TLS-terminating proxy the public URL is https.
        base = "https://" + base.removeprefix("http://")
    return ProviderConfig(base_url=base.rstrip("/"), publisher=publisher)


def publisher_of(session: Session) -> Publisher:
    maker = session.scalar(select(Organization).where(Organization.kind == OrgKind.MANUFACTURER.value))
    if maker is None:
        raise ConfigError("no manufacturer organisation; run 'medsec server bootstrap' first")
    return Publisher(name=maker.name, namespace=f"https://{maker.slug}.example")


# -- building -------------------------------------------------------------------------------------------------


def device_release(session: Session, release: Release, publisher: Publisher) -> DeviceRelease:
    model = session.scalar(select(DeviceModel).where(DeviceModel.product == release.product).limit(1))
    return DeviceRelease(
        manufacturer=publisher.name,
        model=model.name if model else release.product,
        version=release.version,
        components=tuple(sboms.release_components(session, release.id)),
        purl=f"pkg:generic/{release.product}@{release.version}",
    )


def _assessment(f: Finding, decision: TriageDecision | None, lang: Lang) -> Assessment:
    status = STATUS[f.triage_status]
    remediations: tuple[Remediation, ...] = ()
    if decision is not None and status in (Status.KNOWN_AFFECTED, Status.FIXED):
        details = decision.compensating_controls or decision.impact_statement or DEFAULT_REMEDIATION[lang]
        remediations = tuple(Remediation(RemediationCategory(r), details) for r in decision.response)
    if status is Status.KNOWN_AFFECTED and not remediations:
        remediations = (Remediation(RemediationCategory.NONE_AVAILABLE, DEFAULT_REMEDIATION[lang]),)
    return Assessment(
        release=f.release.version,
        status=status,
        component=ComponentRef(f.component_ref),
        justification=Justification(decision.justification) if decision and decision.justification else None,
        impact_statement=decision.impact_statement if decision else None,
        remediations=remediations,
    )


def vulnerability_entries(session: Session, findings: list[Finding], lang: Lang) -> tuple[VulnerabilityEntry, ...]:
    by_group: dict[str, list[Finding]] = {}
    for f in findings:
        by_group.setdefault(f.alias_group, []).append(f)
    entries = []
    for group, items in sorted(by_group.items()):
        seen: set[tuple[str, str]] = set()
        assessments = []
        for f in items:
            key = (f.release.version, f.component_ref)
            if key in seen:
                continue
            seen.add(key)
            decision = session.get(TriageDecision, f.triage_id) if f.triage_id else None
            assessments.append(_assessment(f, decision, lang))
        cve = group if group.startswith("CVE-") else None
        ids = () if cve else (("medsec", group),)
        entries.append(
            VulnerabilityEntry(
                cve=cve,
                ids=ids,
                title=group,
                assessments=tuple(assessments),
                references=(Reference(f"https://osv.dev/vulnerability/{items[0].advisory_id}", items[0].advisory_id),),
            )
        )
    return tuple(entries)


def next_tracking_id(session: Session, prefix: str, year: int) -> str:
    count = session.scalar(
        select(func.count(func.distinct(PublishedAdvisory.tracking_id))).where(
            PublishedAdvisory.tracking_id.like(f"{prefix}-{year}-%")
        )
    )
    return f"{prefix}-{year}-{(count or 0) + 1:04d}"


@dataclass(frozen=True)
class AdvisoryRequest:
    category: str  # csaf_security_advisory or csaf_vex
    finding_ids: tuple[int, ...]
    title_en: str
    title_ja: str
    summary_en: str
    summary_ja: str


def publish_from_triage(
    session: Session,
    audit: ServerAuditLog,
    settings: Settings,
    actor: Principal,
    request: AdvisoryRequest,
    *,
    now: dt.datetime | None = None,
) -> list[PublishedAdvisory]:
    """Build the advisory in English and Japanese from the findings' triage, sign and publish both."""
    actor.require_role(Role.PSIRT)
    if request.category not in ("csaf_security_advisory", "csaf_vex"):
        raise InvalidRequest("invalid_category", "category is csaf_security_advisory or csaf_vex")
    findings = list(session.scalars(select(Finding).where(Finding.id.in_(request.finding_ids))))
    if len(findings) != len(set(request.finding_ids)) or not findings:
        raise NotFound("unknown_finding", "a listed finding does not exist")
    now = now or dt.datetime.now(dt.UTC)
    publisher = publisher_of(session)
    releases = {f.release_id: f.release for f in findings}
    device_releases = tuple(device_release(session, r, publisher) for r in releases.values())
    base_id = next_tracking_id(session, publisher_prefix(publisher), now.year)
    out = []
    for lang, title, summary in (
        ("en", request.title_en, request.summary_en),
        ("ja", request.title_ja, request.summary_ja),
    ):
        lang_t: Lang = "ja" if lang == "ja" else "en"
        tracking = base_id if lang_t == "en" else f"{base_id}-ja"
        doc = AdvisoryDocument(
            tracking_id=tracking,
            title=title,
            lang=lang_t,
            publisher=publisher,
            releases=device_releases,
            revisions=(Revision("1", now, "Initial release" if lang_t == "en" else "初版"),),
            vulnerabilities=vulnerability_entries(session, findings, lang_t),
            notes=(Note("summary", summary, "Summary" if lang_t == "en" else "概要"),),
            references=(Reference(f"{settings.public_url}/vulns/advisories", "medsec portal"),),
        )
        built = build_vex(doc) if request.category == "csaf_vex" else build_security_advisory(doc)
        out.append(
            _publish(
                session,
                audit,
                settings,
                actor.username,
                built,
                list(releases),
                sorted({f.alias_group for f in findings}),
                now,
            )
        )
    for f in findings:
        if f.notified_at is None:
            f.notified_at = now  # the advisory is the customer notice the SLA counts (FDA postmarket)
    return out


def publisher_prefix(publisher: Publisher) -> str:
    letters = "".join(c for c in publisher.name.upper() if c.isascii() and c.isalnum())
    return (letters[:8] or "MEDSEC") + "-SA"


def _publish(
    session: Session,
    audit: ServerAuditLog,
    settings: Settings,
    actor: str,
    doc: dict[str, Any],
    release_ids: list[int],
    vulns: list[str],
    now: dt.datetime,
) -> PublishedAdvisory:
    key = load_psirt_key(settings)
    config = provider_config(settings, publisher_of(session))
    tree = ProviderTree(settings.csaf_root, config)
    with GpgSigner(key, settings.psirt_key_passphrase) as signer:
        published = tree.publish(doc, signer, now=now)
    document = doc["document"]
    row = PublishedAdvisory(
        tracking_id=document["tracking"]["id"],
        version=published.version,
        category=document["category"],
        lang=document["lang"],
        title=document["title"],
        public=True,
        release_ids=release_ids,
        vulnerabilities=vulns,
        path=published.path,
        url=published.url,
        sha512=published.sha512,
        document=encode_document(doc).decode("utf-8"),
        published_by=actor,
        published_at=now,
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        "advisory.published",
        actor=actor,
        organization_id=None,
        details={
            "tracking_id": row.tracking_id,
            "version": row.version,
            "category": row.category,
            "lang": row.lang,
            "path": row.path,
            "sha512": row.sha512,
            "vulnerabilities": vulns,
        },
    )
    return row


def publish_eos_notice(
    session: Session,
    audit: ServerAuditLog,
    settings: Settings,
    actor: Principal,
    release: Release,
    *,
    guidance: dict[Lang, str],
    today: dt.date,
    now: dt.datetime | None = None,
) -> list[PublishedAdvisory]:
    """An informational CSAF end-of-support notice for one release, in English and Japanese (SM-4)."""
    actor.require_role(Role.PSIRT)
    if release.eol_date is None or release.eos_date is None:
        raise InvalidRequest("no_eos_dates", f"{release.product} {release.version} has no EOL/EOS dates")
    now = now or dt.datetime.now(dt.UTC)
    publisher = publisher_of(session)
    base_id = next_tracking_id(session, publisher_prefix(publisher).replace("-SA", "-EOS"), now.year)
    out = []
    for lang in ("en", "ja"):
        lang_t: Lang = "ja" if lang == "ja" else "en"
        title = (
            f"End of support: {release.product} {release.version}"
            if lang_t == "en"
            else f"サポート終了のお知らせ: {release.product} {release.version}"
        )
        doc = AdvisoryDocument(
            tracking_id=base_id if lang_t == "en" else f"{base_id}-ja",
            title=title,
            lang=lang_t,
            publisher=publisher,
            releases=(DeviceRelease(publisher.name, release.product, release.version),),
            revisions=(Revision("1", now, "Initial release" if lang_t == "en" else "初版"),),
            notes=(Note("details", guidance[lang_t], "Legacy plan" if lang_t == "en" else "レガシー対応計画"),),
            references=(Reference(f"{settings.public_url}/vulns/lifecycle", "medsec portal"),),
        )
        built = build_end_of_support_notice(doc, eol=release.eol_date, eos=release.eos_date, today=today)
        out.append(_publish(session, audit, settings, actor.username, built, [release.id], [], now))
    return out


# -- reading --------------------------------------------------------------------------------------------------


def visible_advisories(session: Session, actor: Principal) -> list[PublishedAdvisory]:
    """Public advisories, and for a hospital those about releases its devices run (newest first)."""
    rows = list(session.scalars(select(PublishedAdvisory).order_by(PublishedAdvisory.published_at.desc())))
    if actor.is_manufacturer:
        return rows
    mine = sboms.visible_release_ids(session, actor)
    return [r for r in rows if r.public or set(r.release_ids) & mine]


def advisories_about_my_devices(session: Session, actor: Principal) -> list[PublishedAdvisory]:
    mine = sboms.visible_release_ids(session, actor)
    return [r for r in visible_advisories(session, actor) if set(r.release_ids) & mine]


def get_advisory(session: Session, actor: Principal, tracking_id: str) -> PublishedAdvisory:
    for row in visible_advisories(session, actor):
        if row.tracking_id == tracking_id:
            return row
    raise NotFound("unknown_advisory", "no such advisory is visible to you")


def advisory_summary(row: PublishedAdvisory) -> dict[str, Any]:
    return {
        "tracking_id": row.tracking_id,
        "version": row.version,
        "category": row.category,
        "lang": row.lang,
        "title": row.title,
        "url": row.url,
        "path": row.path,
        "sha512": row.sha512,
        "vulnerabilities": row.vulnerabilities,
        "published_at": row.published_at.isoformat(),
    }


def release_vex(session: Session, release: Release, fmt: str, *, lang: Lang = "en") -> dict[str, Any]:
    """CycloneDX VEX or OpenVEX for one release from its current triage."""
    findings = list(session.scalars(select(Finding).where(Finding.release_id == release.id)))
    findings = [f for f in findings if f.active or f.triage_status == "fixed"]
    publisher = publisher_of(session)
    dr = device_release(session, release, publisher)
    entries = vulnerability_entries(session, findings, lang)
    now = dt.datetime.now(dt.UTC)
    if not entries:
        raise NotFound("no_findings", f"{release.product} {release.version} has no findings to state")
    if fmt == "openvex":
        return openvex(
            dr,
            entries,
            document_id=f"https://{publisher.namespace.removeprefix('https://')}/vex/{release.product}-{release.version}",
            author=publisher.name,
            now=now,
            lang=lang,
        )
    if fmt == "cyclonedx":
        return cyclonedx_vex(dr, entries, now=now, lang=lang)
    raise InvalidRequest("invalid_format", "format is cyclonedx or openvex")


def published_file(settings: Settings, rel: str) -> Path:
    return settings.csaf_root / ".well-known" / "csaf" / "white" / rel


def search_advisories(rows: list[PublishedAdvisory], query: str | None) -> list[PublishedAdvisory]:
    if not query:
        return rows
    q = query.strip().upper()
    return [r for r in rows if q in r.tracking_id.upper() or any(q == v.upper() for v in r.vulnerabilities)]


def documents_json(row: PublishedAdvisory) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(row.document)
    return doc


__all__ = ["PublicationError", "or_"]
