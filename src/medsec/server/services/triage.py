"""Triage as VEX (SM-3; handbook §6.4): decisions on findings, their audit trail, and rules across releases.

Statuses follow CISA VEX (affected, not_affected with a justification, fixed, under_investigation) and the
response follows CSAF remediation categories. Clinical fields record what a medical device adds: the impact on
patient safety, whether the vulnerability is exploitable in the intended use environment, and the compensating
controls. Every decision goes into the tamper-evident audit log with its actor; only PSIRT may decide.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from packageurl import PackageURL
from sqlalchemy import select
from sqlalchemy.orm import Session

from medsec.advisories.model import Justification, RemediationCategory
from medsec.errors import InvalidRequest, NotFound
from medsec.server.audit import ServerAuditLog
from medsec.server.models import Role
from medsec.server.models_vulns import Finding, FindingEvent, TriageDecision, TriageRule
from medsec.server.principal import Principal


class TriageStatus(enum.StrEnum):
    AFFECTED = "affected"
    NOT_AFFECTED = "not_affected"
    FIXED = "fixed"
    UNDER_INVESTIGATION = "under_investigation"


class SafetyImpact(enum.StrEnum):
    """Patient-safety impact of exploitation (ISO 14971 style severity, kept coarse on purpose)."""

    NONE = "none"
    NEGLIGIBLE = "negligible"
    MINOR = "minor"
    SERIOUS = "serious"
    CRITICAL = "critical"


@dataclass(frozen=True)
class Decision:
    status: TriageStatus
    justification: Justification | None = None
    response: tuple[RemediationCategory, ...] = ()
    impact_statement: str | None = None
    patient_safety_impact: SafetyImpact | None = None
    exploitability: str | None = None  # in the intended use environment
    compensating_controls: str | None = None

    def check(self) -> None:
        if self.status is TriageStatus.NOT_AFFECTED and self.justification is None:
            # CISA VEX minimum requirements: not_affected needs a justification.
            raise InvalidRequest("justification_required", "not_affected needs a justification (CISA VEX)")
        if self.status is not TriageStatus.NOT_AFFECTED and self.justification is not None:
            raise InvalidRequest("justification_not_allowed", "a justification applies only to not_affected")
        if self.status is TriageStatus.AFFECTED and not self.response:
            raise InvalidRequest("response_required", "an affected finding needs a response (CSAF remediation)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "justification": self.justification.value if self.justification else None,
            "response": [r.value for r in self.response],
            "impact_statement": self.impact_statement,
            "patient_safety_impact": self.patient_safety_impact.value if self.patient_safety_impact else None,
            "exploitability": self.exploitability,
            "compensating_controls": self.compensating_controls,
        }


def parse_decision(data: dict[str, Any]) -> Decision:
    """A decision from request data; unknown values are refused with the field named."""

    def enum_of(kind: type[enum.StrEnum], key: str) -> Any:
        value = data.get(key)
        if value in (None, ""):
            return None
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(m.value for m in kind)
            raise InvalidRequest(f"invalid_{key}", f"{key} must be one of: {allowed}") from None

    status = enum_of(TriageStatus, "status")
    if status is None:
        raise InvalidRequest("invalid_status", "status is required")
    responses = []
    for r in data.get("response") or []:
        try:
            responses.append(RemediationCategory(r))
        except ValueError:
            raise InvalidRequest("invalid_response", f"unknown response {r!r}") from None

    def text(key: str) -> str | None:
        value = data.get(key)
        return str(value).strip()[:4000] or None if value is not None else None

    decision = Decision(
        status=status,
        justification=enum_of(Justification, "justification"),
        response=tuple(responses),
        impact_statement=text("impact_statement"),
        patient_safety_impact=enum_of(SafetyImpact, "patient_safety_impact"),
        exploitability=text("exploitability"),
        compensating_controls=text("compensating_controls"),
    )
    decision.check()
    return decision


def purl_without_version(purl: str | None) -> str | None:
    if not purl:
        return None
    try:
        p = PackageURL.from_string(purl)
    except ValueError:
        return None
    return PackageURL(type=p.type, namespace=p.namespace, name=p.name).to_string()


def _record(
    session: Session,
    audit: ServerAuditLog,
    finding: Finding,
    decision: Decision,
    actor: str,
    *,
    organization_id: int | None,
    rule: TriageRule | None = None,
) -> TriageDecision:
    row = TriageDecision(
        finding_id=finding.id,
        status=decision.status.value,
        justification=decision.justification.value if decision.justification else None,
        response=[r.value for r in decision.response],
        impact_statement=decision.impact_statement,
        patient_safety_impact=decision.patient_safety_impact.value if decision.patient_safety_impact else None,
        exploitability=decision.exploitability,
        compensating_controls=decision.compensating_controls,
        rule_id=rule.id if rule else None,
        decided_by=actor,
        decided_at=datetime.now(UTC),
    )
    session.add(row)
    session.flush()
    previous = finding.triage_status
    finding.triage_status, finding.triage_id = decision.status.value, row.id
    if decision.status is TriageStatus.FIXED and finding.fixed_at is None:
        finding.fixed_at = row.decided_at
    session.add(
        FindingEvent(
            finding_id=finding.id,
            kind="triaged",
            actor=actor,
            details={"from": previous, **decision.to_dict(), "rule": rule.id if rule else None},
        )
    )
    audit.append(
        session,
        "vuln.triaged",
        actor=actor,
        organization_id=organization_id,
        details={
            "finding": finding.id,
            "release": f"{finding.release.product} {finding.release.version}",
            "vulnerability": finding.alias_group,
            "component": f"{finding.component_name} {finding.component_version or ''}".strip(),
            "from": previous,
            "rule": rule.id if rule else None,
            **decision.to_dict(),
        },
    )
    return row


def triage(
    session: Session,
    audit: ServerAuditLog,
    actor: Principal,
    finding: Finding,
    decision: Decision,
    *,
    make_rule: bool = False,
) -> TriageDecision:
    """Record a PSIRT decision; with ``make_rule`` it also carries to the same component in other releases."""
    actor.require_role(Role.PSIRT)
    decision.check()
    rule = None
    if make_rule:
        rule = create_rule(
            session,
            audit,
            actor,
            alias_group=finding.alias_group,
            component_name=finding.component_name,
            component_purl=purl_without_version(finding.component_purl),
            decision=decision,
        )
    row = _record(session, audit, finding, decision, actor.username, organization_id=actor.organization_id, rule=rule)
    if rule is not None:
        others = session.scalars(
            select(Finding).where(Finding.alias_group == finding.alias_group, Finding.id != finding.id)
        )
        apply_rules(session, [f for f in others if f.triage_id is None], audit=audit)
    return row


def create_rule(
    session: Session,
    audit: ServerAuditLog,
    actor: Principal,
    *,
    alias_group: str,
    component_name: str | None,
    component_purl: str | None,
    decision: Decision,
) -> TriageRule:
    actor.require_role(Role.PSIRT)
    decision.check()
    if not component_name and not component_purl:
        raise InvalidRequest("rule_needs_component", "a rule names the component (name or purl without version)")
    rule = TriageRule(
        alias_group=alias_group,
        component_name=component_name,
        component_purl=component_purl,
        status=decision.status.value,
        justification=decision.justification.value if decision.justification else None,
        response=[r.value for r in decision.response],
        impact_statement=decision.impact_statement,
        patient_safety_impact=decision.patient_safety_impact.value if decision.patient_safety_impact else None,
        exploitability=decision.exploitability,
        compensating_controls=decision.compensating_controls,
        created_by=actor.username,
    )
    session.add(rule)
    session.flush()
    audit.append(
        session,
        "vuln.rule_created",
        actor=actor.username,
        organization_id=actor.organization_id,
        details={
            "rule": rule.id,
            "vulnerability": alias_group,
            "component_name": component_name,
            "component_purl": component_purl,
            **decision.to_dict(),
        },
    )
    return rule


def _decision_of(rule: TriageRule) -> Decision:
    return Decision(
        status=TriageStatus(rule.status),
        justification=Justification(rule.justification) if rule.justification else None,
        response=tuple(RemediationCategory(r) for r in rule.response),
        impact_statement=rule.impact_statement,
        patient_safety_impact=SafetyImpact(rule.patient_safety_impact) if rule.patient_safety_impact else None,
        exploitability=rule.exploitability,
        compensating_controls=rule.compensating_controls,
    )


def _rule_fits(rule: TriageRule, finding: Finding) -> bool:
    if rule.alias_group != finding.alias_group:
        return False
    if rule.component_purl:
        return purl_without_version(finding.component_purl) == rule.component_purl
    return rule.component_name == finding.component_name


def apply_rules(session: Session, findings: Iterable[Finding], *, audit: ServerAuditLog) -> int:
    """Carry rule decisions to untriaged findings (new releases, new matches); returns how many were decided.

    The audit entry names the rule's author as the actor, with the rule id, so the decision stays attributable.
    """
    pending = [f for f in findings if f.triage_id is None]
    if not pending:
        return 0
    groups = {f.alias_group for f in pending}
    rules = list(
        session.scalars(
            select(TriageRule)
            .where(TriageRule.active.is_(True), TriageRule.alias_group.in_(sorted(groups)))
            .order_by(TriageRule.id.desc())
        )
    )
    if not rules:
        return 0
    decided = 0
    for finding in pending:
        for rule in rules:
            if _rule_fits(rule, finding):
                _record(session, audit, finding, _decision_of(rule), rule.created_by, organization_id=None, rule=rule)
                decided += 1
                break
    return decided


def list_rules(session: Session, actor: Principal) -> list[TriageRule]:
    actor.require_role(Role.PSIRT, Role.MANUFACTURER_ADMIN, Role.AUDITOR)
    if not actor.is_manufacturer:
        raise NotFound("unknown_rule", "no triage rules are visible to you")
    return list(session.scalars(select(TriageRule).order_by(TriageRule.id)))


def decisions(session: Session, finding: Finding) -> list[TriageDecision]:
    return list(
        session.scalars(
            select(TriageDecision).where(TriageDecision.finding_id == finding.id).order_by(TriageDecision.id)
        )
    )


def current_decision(session: Session, finding: Finding) -> TriageDecision | None:
    if finding.triage_id is None:
        return None
    return session.get(TriageDecision, finding.triage_id)


def rule_summary(rule: TriageRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "vulnerability": rule.alias_group,
        "component_name": rule.component_name,
        "component_purl": rule.component_purl,
        **_decision_of(rule).to_dict(),
        "created_by": rule.created_by,
        "created_at": rule.created_at.isoformat(),
        "active": rule.active,
    }


def decision_summary(row: TriageDecision) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "justification": row.justification,
        "response": row.response,
        "impact_statement": row.impact_statement,
        "patient_safety_impact": row.patient_safety_impact,
        "exploitability": row.exploitability,
        "compensating_controls": row.compensating_controls,
        "rule": row.rule_id,
        "decided_by": row.decided_by,
        "decided_at": row.decided_at.isoformat(),
    }
