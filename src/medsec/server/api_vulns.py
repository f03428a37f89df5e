"""JSON API for SBOMs, findings, triage (VEX), advisories, lifecycle and metrics (SM-2, SM-3, SM-4, RA-6).

Routes parse, call a service, render. Tenant scope comes from the services through ``Principal``: a hospital
sees only releases its devices run, and findings, SBOMs and VEX of those releases.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from medsec.errors import NotFound
from medsec.server.api import ERRORS, Caller, Ctx, Str100, Strict
from medsec.server.models import Role
from medsec.server.principal import Principal
from medsec.server.services import (
    advisory_publishing,
    devices,
    findings,
    lifecycle_plans,
    metrics,
    sboms,
    triage,
)

router = APIRouter(prefix="/api/v1", tags=["vulnerabilities"])

Text = Annotated[str | None, Field(max_length=4000)]


class TriageBody(Strict):
    status: Annotated[str, Field(min_length=1, max_length=32)]
    justification: Annotated[str | None, Field(max_length=64)] = None
    response: Annotated[list[Annotated[str, Field(max_length=32)]], Field(default_factory=list, max_length=5)]
    impact_statement: Text = None
    patient_safety_impact: Annotated[str | None, Field(max_length=32)] = None
    exploitability: Text = None
    compensating_controls: Text = None
    make_rule: bool = False


class AdvisoryBody(Strict):
    category: Annotated[str, Field(pattern="^(csaf_security_advisory|csaf_vex)$")]
    findings: Annotated[list[int], Field(min_length=1, max_length=500)]
    title_en: Annotated[str, Field(min_length=1, max_length=300)]
    title_ja: Annotated[str, Field(min_length=1, max_length=300)]
    summary_en: Annotated[str, Field(min_length=1, max_length=4000)]
    summary_ja: Annotated[str, Field(min_length=1, max_length=4000)]


@router.get("/vulns/findings", responses=ERRORS)
def list_findings(
    ctx: Ctx,
    caller: Caller,
    product: Annotated[str | None, Query(max_length=100)] = None,
    version: Annotated[str | None, Query(max_length=100)] = None,
    status: Annotated[str | None, Query(max_length=32)] = None,
    vulnerability: Annotated[str | None, Query(max_length=200)] = None,
    include_inactive: bool = False,
) -> list[dict[str, Any]]:
    with ctx.tx() as session:
        release = sboms.visible_release(session, caller, product, version) if product and version else None
        rows = findings.list_findings(
            session,
            caller,
            release=release,
            active=None if include_inactive else True,
            status=status,
            vulnerability=vulnerability,
        )
        return [findings.finding_summary(f) for f in rows]


@router.get("/vulns/findings/{finding_id}", responses=ERRORS)
def show_finding(finding_id: str, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    with ctx.tx() as session:
        f = findings.get_finding(session, caller, finding_id)
        out = findings.finding_summary(f)
        out["history"] = [
            {"at": e.at.isoformat(), "kind": e.kind, "actor": e.actor, "details": e.details}
            for e in findings.finding_history(session, f)
        ]
        out["decisions"] = [triage.decision_summary(d) for d in triage.decisions(session, f)]
        return out


@router.post("/vulns/findings/{finding_id}/triage", responses=ERRORS)
def triage_finding(finding_id: str, body: TriageBody, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    with ctx.tx() as session:
        caller.require_role(Role.PSIRT)
        f = findings.get_finding(session, caller, finding_id)
        decision = triage.parse_decision(body.model_dump(exclude={"make_rule"}))
        row = triage.triage(session, ctx.audit, caller, f, decision, make_rule=body.make_rule)
        return triage.decision_summary(row)


@router.get("/vulns/rules", responses=ERRORS)
def list_rules(ctx: Ctx, caller: Caller) -> list[dict[str, Any]]:
    with ctx.tx() as session:
        return [triage.rule_summary(r) for r in triage.list_rules(session, caller)]


@router.get("/vulns/affected", responses=ERRORS)
def affected(
    ctx: Ctx, caller: Caller, vulnerability: Annotated[str, Query(min_length=3, max_length=200)]
) -> list[dict[str, Any]]:
    """Which of the caller's devices run a release with an open finding for this vulnerability."""
    with ctx.tx() as session:
        return findings.affected_devices(session, caller, vulnerability)


@router.get("/vulns/devices/{serial}", responses=ERRORS)
def device_vulnerabilities(serial: str, ctx: Ctx, caller: Caller) -> list[dict[str, Any]]:
    with ctx.tx() as session:
        device = devices.get_device(session, caller, serial)
        return [findings.finding_summary(f) for f in findings.device_open_findings(session, device)]


@router.get("/vulns/metrics", responses=ERRORS)
def vuln_metrics(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    with ctx.tx() as session:
        return metrics.vulnerability_metrics(session, caller)


@router.get("/releases/{product}/{version}/sbom", responses=ERRORS)
def release_sbom(product: str, version: str, ctx: Ctx, caller: Caller) -> JSONResponse:
    with ctx.tx() as session:
        release = sboms.visible_release(session, caller, product, version)
        body = sboms.export_release(session, release)
    return JSONResponse(body, media_type="application/vnd.cyclonedx+json")


@router.get("/releases/{product}/{version}/vex", responses=ERRORS)
def release_vex(
    product: str,
    version: str,
    ctx: Ctx,
    caller: Caller,
    format: Annotated[str, Query(pattern="^(cyclonedx|openvex)$")] = "cyclonedx",
    lang: Annotated[str, Query(pattern="^(en|ja)$")] = "en",
) -> dict[str, Any]:
    with ctx.tx() as session:
        release = sboms.visible_release(session, caller, product, version)
        return advisory_publishing.release_vex(session, release, format, lang="ja" if lang == "ja" else "en")


@router.get("/releases/{product}/{version}/sbom-documents", responses=ERRORS)
def release_sbom_documents(product: str, version: str, ctx: Ctx, caller: Caller) -> list[dict[str, Any]]:
    with ctx.tx() as session:
        caller.require_role(Role.PSIRT, Role.MANUFACTURER_ADMIN, Role.RELEASE_ENGINEER, Role.AUDITOR)
        if not caller.is_manufacturer:
            raise NotFound("unknown_release", "no such release is visible to you")
        release = sboms.visible_release(session, caller, product, version)
        return [sboms.document_summary(d) | {"quality": d.quality} for d in sboms.release_documents(session, release)]


@router.get("/advisories", responses=ERRORS)
def list_advisories(ctx: Ctx, caller: Caller) -> list[dict[str, Any]]:
    with ctx.tx() as session:
        return [
            advisory_publishing.advisory_summary(a) for a in advisory_publishing.visible_advisories(session, caller)
        ]


@router.post("/advisories", responses=ERRORS)
def publish_advisory(body: AdvisoryBody, ctx: Ctx, caller: Caller) -> list[dict[str, Any]]:
    with ctx.tx() as session:
        rows = advisory_publishing.publish_from_triage(
            session,
            ctx.audit,
            ctx.settings,
            caller,
            advisory_publishing.AdvisoryRequest(
                category=body.category,
                finding_ids=tuple(body.findings),
                title_en=body.title_en,
                title_ja=body.title_ja,
                summary_en=body.summary_en,
                summary_ja=body.summary_ja,
            ),
        )
        return [advisory_publishing.advisory_summary(r) for r in rows]


@router.get("/lifecycle", responses=ERRORS)
def lifecycle(
    ctx: Ctx, caller: Caller, lang: Annotated[str, Query(pattern="^(en|ja)$")] = "en"
) -> list[dict[str, Any]]:
    with ctx.tx() as session:
        return lifecycle_plans.visible_lifecycle(session, caller, dt.datetime.now(dt.UTC).date(), lang)


# -- lifecycle (SM-4) ------------------------------------------------------------------------------------------

SupportEndText = Annotated[str | None, Field(pattern=r"^(\d{4}-\d{2}-\d{2}|true|false)$")]
ShortText = Annotated[str, Field(min_length=1, max_length=300)]
LongText = Annotated[str, Field(min_length=1, max_length=4000)]


class OverrideBody(Strict):
    """New support dates for one endoflife.date product cycle, with the evidence for them."""

    product: Annotated[str, Field(min_length=1, max_length=100)]
    cycle: Annotated[str, Field(min_length=1, max_length=100)]
    eol: SupportEndText = None
    eoas: SupportEndText = None
    eoes: SupportEndText = None
    evidence_source: Annotated[str, Field(min_length=1, max_length=1000)]
    evidence_note: Annotated[str, Field(max_length=4000)] = ""


class ControlBody(Strict):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    title_en: ShortText
    title_ja: ShortText
    en: LongText
    ja: LongText
    requirement: Annotated[str | None, Field(max_length=32)] = None


class BilingualBody(Strict):
    en: LongText
    ja: LongText


class TimelineStepBody(Strict):
    on: Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")]
    en: ShortText
    ja: ShortText


class LegacyPlanBody(Strict):
    controls: Annotated[list[ControlBody], Field(min_length=1, max_length=50)]
    replacement_path: BilingualBody
    timeline: Annotated[list[TimelineStepBody], Field(min_length=1, max_length=50)]


class EosNoticeBody(Strict):
    """Text for hospitals; when absent, the release's legacy plan guidance is used."""

    guidance_en: Annotated[str | None, Field(max_length=8000)] = None
    guidance_ja: Annotated[str | None, Field(max_length=8000)] = None


def _manufacturer_lifecycle_editor(caller: Principal) -> None:
    caller.require_role(Role.PSIRT, Role.MANUFACTURER_ADMIN)
    if not caller.is_manufacturer:
        raise NotFound("unknown_release", "no such release is visible to you")


@router.get("/lifecycle/overrides", responses=ERRORS)
def list_overrides(ctx: Ctx, caller: Caller) -> list[dict[str, Any]]:
    with ctx.tx() as session:
        caller.require_role(Role.PSIRT, Role.MANUFACTURER_ADMIN, Role.RELEASE_ENGINEER, Role.AUDITOR)
        if not caller.is_manufacturer:
            raise NotFound("unknown_override", "no lifecycle overrides are visible to you")
        return [lifecycle_plans.override_summary(r) for r in lifecycle_plans.list_overrides(session)]


@router.post("/lifecycle/overrides", responses=ERRORS)
def add_override(body: OverrideBody, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    """Record an override of a product cycle's support dates (the evidence source is required)."""
    with ctx.tx() as session:
        _manufacturer_lifecycle_editor(caller)
        row = lifecycle_plans.add_override(
            session,
            ctx.audit,
            caller.username,
            product=body.product,
            cycle=body.cycle,
            evidence_source=body.evidence_source,
            evidence_note=body.evidence_note,
            eol=body.eol,
            eoas=body.eoas,
            eoes=body.eoes,
        )
        return lifecycle_plans.override_summary(row)


@router.delete("/lifecycle/overrides/{product}/{cycle}", status_code=204, responses=ERRORS)
def remove_override(product: Str100, cycle: Str100, ctx: Ctx, caller: Caller) -> Response:
    """Drop an override, so the imported endoflife.date dates apply again (the audit log keeps what it said)."""
    with ctx.tx() as session:
        _manufacturer_lifecycle_editor(caller)
        lifecycle_plans.remove_override(session, ctx.audit, caller.username, product=product, cycle=cycle)
    return Response(status_code=204)


@router.get("/releases/{product}/{version}/lifecycle", responses=ERRORS)
def release_lifecycle(
    product: str,
    version: str,
    ctx: Ctx,
    caller: Caller,
    lang: Annotated[str, Query(pattern="^(en|ja)$")] = "en",
) -> dict[str, Any]:
    """EOL/EOS, alerts due (T-24/12/6 months), IMDRF N70 notice warnings and the legacy plan of one release."""
    with ctx.tx() as session:
        release = sboms.visible_release(session, caller, product, version)
        return lifecycle_plans.release_status(session, release, dt.datetime.now(dt.UTC).date(), lang)


@router.put("/releases/{product}/{version}/legacy-plan", responses=ERRORS)
def put_legacy_plan(product: str, version: str, body: LegacyPlanBody, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    with ctx.tx() as session:
        _manufacturer_lifecycle_editor(caller)
        release = sboms.visible_release(session, caller, product, version)
        today = dt.datetime.now(dt.UTC).date()
        lifecycle_plans.save_legacy_plan(
            session,
            ctx.audit,
            caller,
            release,
            controls=[c.model_dump(exclude_none=True) for c in body.controls],
            replacement_path=body.replacement_path.model_dump(),
            timeline=[s.model_dump() for s in body.timeline],
            today=today,
        )
        return lifecycle_plans.release_status(session, release, today)


@router.post("/releases/{product}/{version}/eos-notice", responses=ERRORS)
def publish_eos_notice(
    product: str, version: str, body: EosNoticeBody, ctx: Ctx, caller: Caller
) -> list[dict[str, Any]]:
    """Publish the CSAF informational end-of-support notice (en + ja) on the trusted-provider tree."""
    with ctx.tx() as session:
        caller.require_role(Role.PSIRT)
        release = sboms.visible_release(session, caller, product, version)
        rows = lifecycle_plans.publish_eos_notice(
            session,
            ctx.audit,
            ctx.settings,
            caller,
            release,
            guidance_en=body.guidance_en,
            guidance_ja=body.guidance_ja,
            today=dt.datetime.now(dt.UTC).date(),
        )
        return [advisory_publishing.advisory_summary(r) for r in rows]
