"""Portal pages for vulnerabilities, advisories, end of support and metrics (SM-2, SM-3, SM-4, RA-6).

PSIRT sees every finding with priority and SLA and triages them; a hospital sees the findings, advisories,
EOS dates and legacy plans of the releases its own devices run, and downloads their SBOM and VEX. Scope comes
from the services (``Principal``); templates never filter data.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from medsec.errors import NotFound, ServiceError
from medsec.server.i18n import N_
from medsec.server.models import Role
from medsec.server.portal import (
    Notice,
    PageState,
    _check_csrf,
    _error_page,
    _here,
    _redirect,
    _render,
    _signed_in,
    _unit_of_work,
    _with_headers,
)
from medsec.server.services import advisory_publishing, findings, lifecycle_plans, metrics, sboms, triage

router = APIRouter(include_in_schema=False)

FormStr = Annotated[str, Form()]
MAX_QUERY = 200

TRIAGE_LABELS = {
    "affected": N_("Affected"),
    "not_affected": N_("Not affected"),
    "fixed": N_("Fixed"),
    "under_investigation": N_("Under investigation"),
}
JUSTIFICATION_LABELS = {
    "component_not_present": N_("Component not present"),
    "vulnerable_code_not_present": N_("Vulnerable code not present"),
    "vulnerable_code_cannot_be_controlled_by_adversary": N_("Vulnerable code cannot be controlled by an adversary"),
    "vulnerable_code_not_in_execute_path": N_("Vulnerable code not in execute path"),
    "inline_mitigations_already_exist": N_("Inline mitigations already exist"),
}
RESPONSE_LABELS = {
    "vendor_fix": N_("Vendor fix (update)"),
    "mitigation": N_("Mitigation"),
    "workaround": N_("Workaround"),
    "no_fix_planned": N_("No fix planned"),
    "none_available": N_("No fix available"),
}
SAFETY_LABELS = {
    "none": N_("None"),
    "negligible": N_("Negligible"),
    "minor": N_("Minor"),
    "serious": N_("Serious"),
    "critical": N_("Critical"),
}


def mount_csaf(app: FastAPI, root: Path) -> None:
    """Serve the CSAF trusted-provider tree (static, signed files) at ``/.well-known/csaf``."""
    app.mount(
        "/.well-known/csaf",
        StaticFiles(directory=root / ".well-known" / "csaf", check_dir=False),
        name="csaf",
    )


def _labels() -> dict[str, Any]:
    return {
        "triage_labels": TRIAGE_LABELS,
        "justification_labels": JUSTIFICATION_LABELS,
        "response_labels": RESPONSE_LABELS,
        "safety_labels": SAFETY_LABELS,
    }


@router.get("/vulns")
def findings_page(
    request: Request, q: Annotated[str, Query(max_length=MAX_QUERY)] = "", inactive: bool = False
) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        query = q.strip().upper()
        rows = [
            findings.finding_summary(f)
            for f in findings.list_findings(
                db, auth.principal, active=None if inactive else True, vulnerability=query or None
            )
        ]
        affected = findings.affected_devices(db, auth.principal, query) if query else []
        is_psirt = auth.principal.has_role(Role.PSIRT)
    return _render(
        request,
        "vulns_findings.html",
        state,
        findings=rows,
        query=query,
        affected=affected,
        inactive=inactive,
        is_psirt=is_psirt,
        **_labels(),
    )


@router.get("/vulns/findings/{finding_id}")
def finding_page(request: Request, finding_id: str) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        return _finding_page(request, db, auth, state, finding_id)


def _finding_page(
    request: Request, db: Any, auth: Any, state: PageState, finding_id: str, status: int = 200
) -> Response:
    try:
        f = findings.get_finding(db, auth.principal, finding_id)
    except ServiceError as e:
        return _error_page(request, state, e)
    summary = findings.finding_summary(f)
    history = [
        {"at": e.at, "kind": e.kind, "actor": e.actor, "details": json.dumps(e.details, ensure_ascii=False)}
        for e in findings.finding_history(db, f)
    ]
    current = triage.current_decision(db, f)
    return _render(
        request,
        "vulns_finding.html",
        state,
        status_code=status,
        f=summary,
        history=history,
        current=triage.decision_summary(current) if current else None,
        is_psirt=auth.principal.has_role(Role.PSIRT),
        **_labels(),
    )


@router.post("/vulns/findings/{finding_id}/triage")
def triage_submit(
    request: Request,
    finding_id: str,
    csrf_token: FormStr = "",
    status: FormStr = "",
    justification: FormStr = "",
    response: Annotated[list[str] | None, Form()] = None,
    impact_statement: FormStr = "",
    patient_safety_impact: FormStr = "",
    exploitability: FormStr = "",
    compensating_controls: FormStr = "",
    make_rule: FormStr = "",
) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        _check_csrf(request, auth, csrf_token)
        state = PageState(language=auth.language, viewer=auth.viewer, here=f"/vulns/findings/{finding_id}")
        try:
            auth.principal.require_role(Role.PSIRT)
            f = findings.get_finding(db, auth.principal, finding_id)
            decision = triage.parse_decision(
                {
                    "status": status,
                    "justification": justification,
                    "response": response or [],
                    "impact_statement": impact_statement,
                    "patient_safety_impact": patient_safety_impact,
                    "exploitability": exploitability,
                    "compensating_controls": compensating_controls,
                }
            )
            triage.triage(db, _ctx_audit(request), auth.principal, f, decision, make_rule=make_rule == "1")
        except ServiceError as e:
            if e.status in (403, 404):
                return _error_page(request, state, e)
            state.notices.append(Notice("error", str(e)))
            return _finding_page(request, db, auth, state, finding_id, status=e.status)
    return _redirect(f"/vulns/findings/{f.id}")


def _ctx_audit(request: Request) -> Any:
    return request.app.state.ctx.audit


@router.get("/vulns/advisories")
def advisories_page(request: Request) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        rows = advisory_publishing.visible_advisories(db, auth.principal)
        mine = {a.id for a in advisory_publishing.advisories_about_my_devices(db, auth.principal)}
        items = [advisory_publishing.advisory_summary(a) | {"mine": a.id in mine} for a in rows]
    return _render(request, "vulns_advisories.html", state, advisories=items)


@router.get("/vulns/lifecycle")
def lifecycle_page(request: Request) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        today = dt.datetime.now(dt.UTC).date()
        releases = lifecycle_plans.visible_lifecycle(db, auth.principal, today, auth.language)
    return _render(request, "vulns_lifecycle.html", state, releases=releases)


@router.get("/vulns/metrics")
def metrics_page(request: Request) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        values = metrics.vulnerability_metrics(db, auth.principal)
    return _render(request, "vulns_metrics.html", state, m=values)


@router.get("/vulns/releases/{product}/{version}/{document}")
def release_download(request: Request, product: str, version: str, document: str) -> Response:
    """SBOM (CycloneDX) and VEX (CycloneDX, OpenVEX) of a release the viewer's devices run."""
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        try:
            release = sboms.visible_release(db, auth.principal, product, version)
            if document == "sbom.cdx.json":
                body = sboms.export_release(db, release)
            elif document == "vex.cdx.json":
                body = advisory_publishing.release_vex(db, release, "cyclonedx")
            elif document == "vex.openvex.json":
                body = advisory_publishing.release_vex(db, release, "openvex")
            else:
                raise NotFound("unknown_document", "no such document")
        except ServiceError as e:
            return _error_page(request, state, e)
    data = json.dumps(body, ensure_ascii=False, indent=2).encode("utf-8")
    response = Response(data, media_type="application/json")
    response.headers["Content-Disposition"] = f'attachment; filename="{product}-{version}-{document}"'
    return _with_headers(response)
