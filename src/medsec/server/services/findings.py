"""Findings: which vulnerability touches which component of which release (SM-3).

Findings are never deleted. A finding that no longer applies turns inactive with a reason, and every change
is an event in ``finding_events``. After a feed import only the changed advisories are re-matched
(:func:`medsec.vulns.rematch.rematch`); a new SBOM is matched in full for its release.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from medsec.errors import NotFound
from medsec.sbom.model import ComponentRef
from medsec.server.audit import ServerAuditLog
from medsec.server.models import Device, DeviceModel, Release
from medsec.server.models_vulns import EpssRecord, Finding, FindingEvent, KevRecord, SbomComponent, VulnRecord
from medsec.server.principal import Principal
from medsec.server.services import feeds, sboms
from medsec.vulns.aliases import build_alias_groups
from medsec.vulns.errors import VulnError
from medsec.vulns.matcher import Confidence, Matcher, MatchMethod
from medsec.vulns.matcher import Finding as MatchFinding
from medsec.vulns.priority import SeverityFacts, SlaPolicy, prioritise, sla_deadlines
from medsec.vulns.rematch import AdvisoryDelta, ComponentIndex, ReleaseFinding, ReleaseId, rematch

logger = logging.getLogger(__name__)

OPEN_STATUSES = ("affected", "under_investigation")


@dataclass(frozen=True)
class MatchSummary:
    new: int
    still_active: int
    now_inactive: int
    pairs_evaluated: int

    def to_dict(self) -> dict[str, int]:
        return {
            "new": self.new,
            "still_active": self.still_active,
            "now_inactive": self.now_inactive,
            "pairs_evaluated": self.pairs_evaluated,
        }


def _event(session: Session, finding: Finding, kind: str, actor: str | None, **details: Any) -> None:
    session.add(FindingEvent(finding_id=finding.id, kind=kind, actor=actor, details=details))


# -- priority --------------------------------------------------------------------------------------------------


class _Threat:
    """KEV, EPSS and severity facts, looked up once per run."""

    def __init__(self, session: Session) -> None:
        self.kev = set(session.scalars(select(KevRecord.cve_id)))
        self.epss = {c: p for c, p in session.execute(select(EpssRecord.cve_id, EpssRecord.probability))}
        self._records: dict[str, dict[str, Any]] = {}
        for record_id, raw in session.execute(select(VulnRecord.record_id, VulnRecord.raw)):
            self._records[record_id] = json.loads(raw)

    def severity(self, ids: Iterable[str]) -> SeverityFacts:
        v3 = v4 = None
        given = None
        for i in ids:
            raw = self._records.get(i)
            if raw is None:
                continue
            for s in raw.get("severity", []):
                if s.get("type") == "CVSS_V3" and v3 is None:
                    v3 = s.get("score")
                if s.get("type") == "CVSS_V4" and v4 is None:
                    v4 = s.get("score")
            for key in ("cvssMetricV31", "cvssMetricV30"):
                for m in raw.get("metrics", {}).get(key, []):
                    v3 = v3 or m.get("cvssData", {}).get("vectorString")
                    given = given or m.get("cvssData", {}).get("baseScore")
        return SeverityFacts(cvss3_vector=v3, given_score=given)

    def apply(self, finding: Finding, policy: SlaPolicy, *, network_reachable: bool = True) -> None:
        ids = {finding.advisory_id, finding.alias_group, *finding.aliases}
        kev = bool(ids & self.kev)
        epss_values = [self.epss[i] for i in ids if i in self.epss]
        facts = self.severity(ids)
        try:
            priority = prioritise(
                facts, kev=kev, epss=max(epss_values) if epss_values else None, network_reachable=network_reachable
            )
        except VulnError:
            priority = prioritise(
                SeverityFacts(given_score=facts.given_score),
                kev=kev,
                epss=max(epss_values) if epss_values else None,
                network_reachable=network_reachable,
            )
        finding.priority_score, finding.priority_tier = priority.score, priority.tier.value
        finding.cvss, finding.kev, finding.epss = priority.cvss, priority.kev, priority.epss
        deadlines = sla_deadlines(priority, finding.first_seen, policy)
        finding.notice_by = deadlines.notice_by if deadlines else None
        finding.fix_by = deadlines.fix_by if deadlines else None


def sla_policy(notice_days: int, fix_days: int) -> SlaPolicy:
    return SlaPolicy(notice_days=notice_days, fix_days=fix_days)


# -- applying match results ------------------------------------------------------------------------------------


def _row_key(f: Finding) -> tuple[int, str, str]:
    return (f.release_id, f.component_ref, f.advisory_id)


def _as_release_finding(f: Finding) -> ReleaseFinding:
    return ReleaseFinding(
        ReleaseId(str(f.release_id)),
        MatchFinding(
            advisory_id=f.advisory_id,
            alias_group=f.alias_group,
            component_ref=ComponentRef(f.component_ref),
            component_version=f.component_version,
            method=MatchMethod(f.method),
            confidence=Confidence(f.confidence),
            matched=f.matched,
            fixed_version=f.fixed_version,
            package=f.package,
            aliases=tuple(f.aliases),
        ),
    )


class _Applier:
    def __init__(self, session: Session, policy: SlaPolicy, actor: str | None) -> None:
        self.session = session
        self.policy = policy
        self.actor = actor
        self.threat = _Threat(session)
        self.now = datetime.now(UTC)
        self.touched: list[Finding] = []
        self.created: list[Finding] = []

    def upsert(self, release_id: int, mf: MatchFinding, components: dict[str, tuple[str, str | None]]) -> bool:
        """Insert or refresh one finding; True when it is new or re-activated."""
        row = self.session.scalar(
            select(Finding).where(
                Finding.release_id == release_id,
                Finding.component_ref == mf.component_ref,
                Finding.advisory_id == mf.advisory_id,
            )
        )
        name, purl = components.get(mf.component_ref, (mf.component_ref, None))
        if row is None:
            row = Finding(
                release_id=release_id,
                component_ref=mf.component_ref,
                component_name=name,
                component_version=mf.component_version,
                component_purl=purl,
                advisory_id=mf.advisory_id,
                alias_group=mf.alias_group,
                aliases=list(mf.aliases),
                method=mf.method.value,
                confidence=mf.confidence.value,
                matched=mf.matched[:1000],
                fixed_version=mf.fixed_version,
                package=mf.package,
                active=True,
                first_seen=self.now,
                last_seen=self.now,
            )
            self.session.add(row)
            self.session.flush()
            self.threat.apply(row, self.policy)
            _event(self.session, row, "matched", self.actor, method=mf.method.value, matched=mf.matched)
            self.created.append(row)
            return True
        fresh = not row.active
        row.last_seen = self.now
        row.alias_group, row.aliases, row.matched = mf.alias_group, list(mf.aliases), mf.matched[:1000]
        row.fixed_version = mf.fixed_version
        if fresh:
            row.active, row.inactive_reason = True, None
            _event(self.session, row, "reactivated", self.actor, matched=mf.matched)
            self.created.append(row)
        self.threat.apply(row, self.policy)
        self.touched.append(row)
        return fresh

    def deactivate(self, row: Finding, reason: str) -> None:
        if not row.active:
            return
        row.active, row.inactive_reason = False, reason
        _event(self.session, row, "inactive", self.actor, reason=reason)


def _components_by_ref(session: Session, release_id: int) -> dict[str, tuple[str, str | None]]:
    return {c.ref: (c.name, c.purl) for c in sboms.release_components(session, release_id)}


def match_release(
    session: Session,
    audit: ServerAuditLog,
    release: Release,
    *,
    policy: SlaPolicy,
    actor: str | None,
    matcher: Matcher | None = None,
) -> MatchSummary:
    """Match every component of ``release`` against every stored advisory; deactivate what no longer matches."""
    from medsec.server.services import triage  # triage imports this module

    if matcher is None:
        advisories = feeds.stored_advisories(session)
        nvd = feeds.stored_nvd(session)
        matcher = Matcher.build(advisories, nvd)
    components = sboms.release_components(session, release.id)
    found = matcher.match(components)
    by_ref: dict[str, tuple[str, str | None]] = {c.ref: (c.name, c.purl) for c in components}
    applier = _Applier(session, policy, actor)
    produced: set[tuple[int, str, str]] = set()
    new = 0
    for mf in found:
        produced.add((release.id, mf.component_ref, mf.advisory_id))
        new += applier.upsert(release.id, mf, by_ref)
    inactive = 0
    for row in session.scalars(select(Finding).where(Finding.release_id == release.id, Finding.active.is_(True))):
        if _row_key(row) not in produced:
            applier.deactivate(row, "no-longer-affected")
            inactive += 1
    session.flush()
    triage.apply_rules(session, applier.created, audit=audit)
    return MatchSummary(new, len(found) - new, inactive, len(components))


def rematch_after_import(
    session: Session, audit: ServerAuditLog, changed_ids: Iterable[str], *, policy: SlaPolicy, actor: str | None
) -> MatchSummary:
    """Incremental re-match: only the (release, component) pairs the changed advisories can touch."""
    from medsec.server.services import triage

    ids = set(changed_ids)
    if not ids:
        return MatchSummary(0, 0, 0, 0)
    all_advisories = feeds.stored_advisories(session)
    changed = tuple(a for a in all_advisories if a.id in ids)
    aliases = build_alias_groups(all_advisories)
    release_ids = set(session.scalars(select(SbomComponent.release_id).distinct()))
    index = ComponentIndex()
    names: dict[int, dict[str, tuple[str, str | None]]] = {}
    for rid in release_ids:
        comps = sboms.release_components(session, rid)
        index.add_release(ReleaseId(str(rid)), comps)
        names[rid] = {c.ref: (c.name, c.purl) for c in comps}
    active_rows = list(
        session.scalars(select(Finding).where(Finding.active.is_(True), Finding.advisory_id.in_(sorted(ids))))
    )
    by_key = {_row_key(r): r for r in active_rows}
    diff = rematch(AdvisoryDelta(changed), index, [_as_release_finding(r) for r in active_rows], aliases=aliases)
    applier = _Applier(session, policy, actor)
    for rf in (*diff.new, *diff.still_active):
        rid = int(rf.release)
        applier.upsert(rid, rf.finding, names.get(rid, {}))
    for d in diff.now_inactive:
        key = (int(d.previous.release), d.previous.finding.component_ref, d.previous.finding.advisory_id)
        row = by_key.get(key)
        if row is not None:
            applier.deactivate(row, d.reason.value)
    session.flush()
    triage.apply_rules(session, applier.created, audit=audit)
    return MatchSummary(len(diff.new), len(diff.still_active), len(diff.now_inactive), diff.pairs_evaluated)


# -- queries ---------------------------------------------------------------------------------------------------


def _scoped(actor: Principal, session: Session) -> Any:
    stmt = select(Finding)
    if not actor.is_manufacturer:
        stmt = stmt.where(Finding.release_id.in_(sorted(sboms.visible_release_ids(session, actor)) or [-1]))
    return stmt


def list_findings(
    session: Session,
    actor: Principal,
    *,
    release: Release | None = None,
    active: bool | None = True,
    status: str | None = None,
    vulnerability: str | None = None,
    limit: int = 500,
) -> list[Finding]:
    stmt = _scoped(actor, session)
    if release is not None:
        stmt = stmt.where(Finding.release_id == release.id)
    if active is not None:
        stmt = stmt.where(Finding.active.is_(active))
    if status:
        stmt = stmt.where(Finding.triage_status == status)
    if vulnerability:
        stmt = stmt.where(or_(Finding.alias_group == vulnerability, Finding.advisory_id == vulnerability))
    stmt = stmt.order_by(Finding.priority_score.desc(), Finding.alias_group, Finding.id).limit(limit)
    rows: list[Finding] = list(session.scalars(stmt))
    if vulnerability:
        return rows
    return rows


def get_finding(session: Session, actor: Principal, finding_id: str) -> Finding:
    """One finding the caller may see; the id is parsed here so any bad id looks like a missing one."""
    try:
        fid = int(finding_id)
    except ValueError:
        fid = -1
    row = session.scalar(_scoped(actor, session).where(Finding.id == fid))
    if row is None:
        raise NotFound("unknown_finding", "no such finding is visible to you")
    finding: Finding = row
    return finding


def finding_history(session: Session, finding: Finding) -> list[FindingEvent]:
    return list(
        session.scalars(select(FindingEvent).where(FindingEvent.finding_id == finding.id).order_by(FindingEvent.id))
    )


def affected_devices(session: Session, actor: Principal, vulnerability: str) -> list[dict[str, Any]]:
    """ "Which of my devices are affected by CVE-…": devices whose installed release has an open finding."""
    vuln = vulnerability.strip().upper()
    rows = session.scalars(
        select(Finding).where(
            Finding.active.is_(True),
            Finding.triage_status.in_(OPEN_STATUSES),
            or_(Finding.alias_group == vuln, Finding.advisory_id == vuln),
        )
    )
    by_release: dict[int, list[Finding]] = {}
    for f in rows:
        by_release.setdefault(f.release_id, []).append(f)
    if not by_release:
        return []
    stmt = actor.scope_devices(select(Device)).join(DeviceModel, Device.model_id == DeviceModel.id)
    out = []
    for device in session.scalars(stmt.order_by(Device.serial)):
        for rid, findings in by_release.items():
            release = findings[0].release
            if device.model.product == release.product and device.installed_version == release.version:
                out.append(
                    {
                        "serial": device.serial,
                        "hospital": device.hospital.slug,
                        "site": device.site.name if device.site else None,
                        "product": release.product,
                        "version": release.version,
                        "release_id": rid,
                        "components": sorted(
                            {f"{f.component_name} {f.component_version or ''}".strip() for f in findings}
                        ),
                        "status": sorted({f.triage_status for f in findings}),
                    }
                )
    return out


def device_open_findings(session: Session, device: Device) -> list[Finding]:
    release = sboms.find_release(session, device.model.product, device.installed_version or "")
    if release is None:
        return []
    return list(
        session.scalars(
            select(Finding)
            .where(Finding.release_id == release.id, Finding.active.is_(True), Finding.triage_status.in_(OPEN_STATUSES))
            .order_by(Finding.priority_score.desc(), Finding.alias_group)
        )
    )


def finding_summary(f: Finding, *, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    sla = None
    if f.fix_by is not None and f.notice_by is not None:
        if f.fixed_at is not None or f.triage_status in ("fixed", "not_affected"):
            sla = "met"
        elif now > f.fix_by:
            sla = "fix-overdue"
        elif f.notified_at is None and now > f.notice_by:
            sla = "notice-overdue"
        else:
            sla = "on-track"
    return {
        "id": f.id,
        "release": {"product": f.release.product, "version": f.release.version},
        "vulnerability": f.alias_group,
        "advisory_id": f.advisory_id,
        "aliases": f.aliases,
        "component": {"ref": f.component_ref, "name": f.component_name, "version": f.component_version},
        "method": f.method,
        "confidence": f.confidence,
        "matched": f.matched,
        "fixed_version": f.fixed_version,
        "active": f.active,
        "inactive_reason": f.inactive_reason,
        "first_seen": f.first_seen.isoformat(),
        "last_seen": f.last_seen.isoformat(),
        "priority": {"score": f.priority_score, "tier": f.priority_tier, "cvss": f.cvss, "kev": f.kev, "epss": f.epss},
        "sla": {
            "state": sla,
            "notice_by": f.notice_by.isoformat() if f.notice_by else None,
            "fix_by": f.fix_by.isoformat() if f.fix_by else None,
        },
        "triage_status": f.triage_status,
    }
