"""Demo data for vulnerability management and end of support (SM-2, SM-3, SM-4).

Runs after the base seed (:mod:`medsec.server.seed`) on the demo's own database, using the public data shipped in
``demo_data/`` (see its README): the Debian 9 SBOM becomes the SBOM of the release the demo devices run, the four
Debian LTS advisories are the OSV feed, and Debian's endoflife.date file gives the OS its end of support. It then
triages one finding as not_affected, publishes a CSAF VEX signed with a demo PSIRT key, records the release's
EOL/EOS with a legacy plan, and sets the notice date so the IMDRF N70 two-year warning shows.

Every step checks what is already there, so running it again on a reused data directory changes nothing.
Lifecycle dates are relative to the day the data directory is first seeded, so the demo keeps telling the same
story: EOL in 8 months and EOS in 20, both announced less than two years ahead.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from medsec.lifecycle.plan import add_months
from medsec.server.context import ServerContext, build_context
from medsec.server.models import Release, User
from medsec.server.models_vulns import Finding, LifecycleProduct, PublishedAdvisory, ReleaseLifecycleRow, VulnRecord
from medsec.server.principal import Principal
from medsec.server.seed import MODEL
from medsec.server.services import advisory_publishing, feeds, findings, lifecycle_plans, sboms, triage
from medsec.server.settings import Settings

logger = logging.getLogger(__name__)

DATA = Path(__file__).resolve().with_name("demo_data")
SBOM = DATA / "sbom" / "postgres-11.15-stretch.syft.cdx.xml"
OSV_DEBIAN = DATA / "osv-debian"
KEV = DATA / "kev" / "known_exploited_vulnerabilities.subset.json"
ENDOFLIFE = DATA / "endoflife" / "debian.md"

PRODUCT = MODEL["product"]
VERSION = "1.0.0"  # what the demo devices report (their etc/medsec/version)
PSIRT_USER = "maker-psirt"
PSIRT_UID = "Demo Medical Devices PSIRT (DEMO KEY, not for real use) <psirt@medsec-demo-maker.example>"
TRIAGED_ADVISORY = "DLA-3022-1"  # dpkg, CVE-2022-1664

NOT_AFFECTED = {
    "status": "not_affected",
    "justification": "vulnerable_code_not_in_execute_path",
    "impact_statement": (
        "dpkg is only used while the device image is built; the running pump never unpacks packages, "
        "and updates arrive as signed A/B images, not as .deb files."
    ),
    "patient_safety_impact": "none",
    "exploitability": (
        "Needs an attacker-supplied source package and a local shell; the device has no shell outside an "
        "approved maintenance session."
    ),
    "compensating_controls": "Maintenance shell only in approved, recorded sessions (RA-3); signed updates (SM-1).",
}

LEGACY_CONTROLS = [
    {
        "id": "segment",
        "title_en": "Isolate the pump network",
        "title_ja": "ポンプ用ネットワークの分離",
        "en": "Keep the pumps on their own VLAN; allow only the medsec server and the infusion management system.",
        "ja": "ポンプは専用VLANに置き、medsecサーバと輸液管理システムへの通信のみ許可してください。",
    },
    {
        "id": "maintenance",
        "title_en": "Approved maintenance sessions only",
        "title_ja": "承認済み保守セッションのみ",
        "en": "Remote maintenance only through approved, recorded medsec sessions.",
        "ja": "遠隔保守は承認・記録されたmedsecセッションでのみ行ってください。",
        "requirement": "RA-3",
    },
]
REPLACEMENT_PATH = {
    "en": "Release 2.0 moves the pump to Debian 12; install it through an update campaign before EOS.",
    "ja": "リリース2.0でOSをDebian 12に移行します。EOSまでに更新キャンペーンで適用してください。",
}


@dataclass(frozen=True)
class VulnDemo:
    release_id: int
    findings: int
    triaged_finding: int | None
    advisories: tuple[str, ...]


def _psirt(session: Session) -> Principal:
    user = session.scalar(select(User).where(User.username == PSIRT_USER))
    if user is None:
        raise LookupError(f"the base seed has no {PSIRT_USER!r} user")
    return Principal.of(user, mfa_verified=True)


def _load_feeds_and_sbom(ctx: ServerContext, session: Session) -> Release:
    if session.get(LifecycleProduct, "debian") is None:
        feeds.import_endoflife(session, ctx.audit, PSIRT_USER, ENDOFLIFE)
    if not session.scalar(select(VulnRecord.id).where(VulnRecord.source == "osv").limit(1)):
        feeds.import_osv(session, ctx.audit, PSIRT_USER, OSV_DEBIAN)
        feeds.import_kev(session, ctx.audit, PSIRT_USER, KEV)
    release = sboms.ensure_release(session, PRODUCT, VERSION)
    if not sboms.release_documents(session, release):
        sboms.import_sbom_file(session, ctx.audit, PSIRT_USER, product=PRODUCT, version=VERSION, path=SBOM)
        policy = findings.sla_policy(ctx.settings.sla_notice_days, ctx.settings.sla_fix_days)
        findings.match_release(session, ctx.audit, release, policy=policy, actor=PSIRT_USER)
    return release


def _triage(ctx: ServerContext, session: Session, release: Release) -> Finding | None:
    finding = session.scalar(
        select(Finding).where(Finding.release_id == release.id, Finding.advisory_id == TRIAGED_ADVISORY)
    )
    if finding is None or finding.triage_id is not None:
        return finding
    decision = triage.parse_decision(NOT_AFFECTED)
    triage.triage(session, ctx.audit, _psirt(session), finding, decision)
    return finding


def _publish(ctx: ServerContext, session: Session, finding: Finding) -> None:
    if session.scalar(select(PublishedAdvisory.id).limit(1)) is not None:
        return
    if not (ctx.settings.psirt_key_dir / "fingerprint").exists():
        advisory_publishing.init_psirt_key(ctx.settings, PSIRT_UID)
    advisory_publishing.publish_from_triage(
        session,
        ctx.audit,
        ctx.settings,
        _psirt(session),
        advisory_publishing.AdvisoryRequest(
            category="csaf_vex",
            finding_ids=(finding.id,),
            title_en="InfuCare 300 1.0.0: dpkg CVE-2022-1664 does not affect the pump",
            title_ja="InfuCare 300 1.0.0: dpkg の CVE-2022-1664 はポンプに影響しません",
            summary_en=(
                "The pump's Debian 9 base contains dpkg 1.18.25, which DLA-3022-1 lists as vulnerable. "
                "dpkg never runs on the device in use, so the pump is not affected."
            ),
            summary_ja=(
                "ポンプのDebian 9ベースにはDLA-3022-1で脆弱とされるdpkg 1.18.25が含まれますが、"
                "使用中の機器でdpkgは実行されないため、ポンプは影響を受けません。"
            ),
        ),
    )


def _lifecycle(ctx: ServerContext, session: Session, release: Release, today: dt.date) -> None:
    if session.get(ReleaseLifecycleRow, release.id) is not None:
        return
    lifecycle_plans.set_release_lifecycle(
        session,
        ctx.audit,
        PSIRT_USER,
        release,
        released_on=add_months(today, -64),
        eol=add_months(today, 8),
        eos=add_months(today, 20),
        notice_date=today,  # announced now: less than two years ahead, so IMDRF N70 warns
        extended_support=["debian"],  # the pump relied on Debian LTS for its OS
    )
    lifecycle_plans.save_legacy_plan(
        session,
        ctx.audit,
        _psirt(session),
        release,
        controls=LEGACY_CONTROLS,
        replacement_path=REPLACEMENT_PATH,
        timeline=[
            {
                "on": today.isoformat(),
                "en": "Legacy plan shared with hospitals",
                "ja": "レガシー対応計画を医療機関へ共有",
            },
            {
                "on": add_months(today, 8).isoformat(),
                "en": "EOL: security updates and advisories only",
                "ja": "EOL: セキュリティ更新とアドバイザリのみ",
            },
            {
                "on": add_months(today, 20).isoformat(),
                "en": "EOS: replace with release 2.0 or retire",
                "ja": "EOS: リリース2.0へ更新または廃棄",
            },
        ],
        today=today,
    )


def seed_vulns(ctx: ServerContext, *, today: dt.date | None = None) -> VulnDemo:
    """Load the vulnerability and end-of-support demo (idempotent; one transaction)."""
    today = today or dt.datetime.now(dt.UTC).date()
    with ctx.tx() as session:
        release = _load_feeds_and_sbom(ctx, session)
        finding = _triage(ctx, session, release)
        if finding is not None:
            _publish(ctx, session, finding)
        _lifecycle(ctx, session, release, today)
        ctx.audit.checkpoint(session)
        count = len(findings.list_findings(session, _psirt(session), release=release))
        advisories = tuple(
            session.scalars(select(PublishedAdvisory.tracking_id).order_by(PublishedAdvisory.tracking_id))
        )
        return VulnDemo(release.id, count, finding.id if finding else None, advisories)


def seed_demo_vulns(settings: Settings) -> VulnDemo:
    """The demo's hook: build a context over the demo settings, seed, close."""
    ctx = build_context(settings)
    try:
        return seed_vulns(ctx)
    finally:
        ctx.close()
