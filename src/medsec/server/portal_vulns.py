"""Portal pages for vulnerabilities, advisories, end of support and metrics (SM-2, SM-3, SM-4, RA-6).

PSIRT sees every finding with priority and SLA and triages them; a hospital sees the findings, advisories,
EOS dates and legacy plans of the releases its own devices run, and downloads their SBOM and VEX. Scope comes
from the services (``Principal``); templates never filter data.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session

from medsec.errors import InvalidRequest, NotFound, ServiceError
from medsec.server.i18n import N_
from medsec.server.models import Role
from medsec.server.portal import (
    Auth,
    Notice,
    PageState,
    _error_page,
    _here,
    _redirect,
    _render,
    _signed_in,
    _ui,
    _unit_of_work,
    _with_headers,
    form_action,
    form_on_page,
    refused_with_error_page,
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
    here = f"/vulns/findings/{finding_id}"

    def decide(db: Session, auth: Auth) -> int:
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
        return f.id

    def refused(auth: Auth, e: ServiceError) -> Response:
        if e.status in (403, 404):
            return refused_with_error_page(request, here)(auth, e)
        state = PageState(language=auth.language, viewer=auth.viewer, here=here, notices=[Notice("error", str(e))])
        with _unit_of_work(request) as db:
            return _finding_page(request, db, auth, state, finding_id, status=e.status)

    return form_action(
        request, csrf_token, decide, done=lambda fid: _redirect(f"/vulns/findings/{fid}"), refused=refused
    )


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


# -- end of support (SM-4): the page, and the manufacturer's forms on it ------------------------------------------

LIFECYCLE_EDITOR_ROLES = (Role.PSIRT, Role.MANUFACTURER_ADMIN)
OVERRIDE_READER_ROLES = (Role.PSIRT, Role.MANUFACTURER_ADMIN, Role.RELEASE_ENGINEER, Role.AUDITOR)
SHORT_TEXT, LONG_TEXT, GUIDANCE_TEXT = 300, 4000, 8000  # the API's limits (api_vulns.py)
EMPTY_CONTROL_ROWS, EMPTY_TIMELINE_ROWS = 2, 3
FormList = Annotated[list[str] | None, Form()]


def _lifecycle_editor(principal: Any) -> None:
    """The rule of the API's lifecycle routes: PSIRT or manufacturer admin, and never a hospital."""
    principal.require_role(*LIFECYCLE_EDITOR_ROLES)
    if not principal.is_manufacturer:
        raise NotFound("unknown_release", "no such release is visible to you")


def _lifecycle_view(
    request: Request, db: Any, auth: Any, state: PageState, status: int = 200, draft: dict[str, Any] | None = None
) -> Response:
    today = dt.datetime.now(dt.UTC).date()
    principal = auth.principal
    releases = lifecycle_plans.visible_lifecycle(db, principal, today, auth.language)
    can_edit = principal.is_manufacturer and principal.has_role(*LIFECYCLE_EDITOR_ROLES)
    draft = draft or {}
    plans: dict[str, dict[str, Any]] = {}
    if can_edit:
        for r in releases:
            key = f"{r['product']} {r['version']}"
            if draft.get("release") == key:
                plans[key] = _legacy_form_from_draft(draft)
            else:
                release = sboms.visible_release(db, principal, r["product"], r["version"])
                plans[key] = _legacy_form(lifecycle_plans.stored_legacy_plan(db, release))
    overrides = (
        [lifecycle_plans.override_summary(o) for o in lifecycle_plans.list_overrides(db)]
        if principal.is_manufacturer and principal.has_role(*OVERRIDE_READER_ROLES)
        else None
    )
    return _render(
        request,
        "vulns_lifecycle.html",
        state,
        status_code=status,
        releases=releases,
        overrides=overrides,
        can_edit=can_edit,
        can_send_notice=principal.is_manufacturer and principal.has_role(Role.PSIRT),
        plans=plans,
        draft=draft,
    )


CONTROL_FIELDS = ("id", "title_en", "title_ja", "en", "ja", "requirement")
STEP_FIELDS = ("on", "en", "ja")


def _legacy_form(stored: dict[str, Any] | None) -> dict[str, Any]:
    """The legacy-plan form's rows: the saved plan's, then empty ones to add more without scripts."""
    stored = stored or {}
    controls = [{k: str(c.get(k) or "") for k in CONTROL_FIELDS} for c in stored.get("controls", [])]
    steps = [{k: str(st.get(k) or "") for k in STEP_FIELDS} for st in stored.get("timeline", [])]
    replacement = stored.get("replacement_path") or {"en": "", "ja": ""}
    return {
        "controls": controls + [dict.fromkeys(CONTROL_FIELDS, "") for _ in range(EMPTY_CONTROL_ROWS)],
        "steps": steps + [dict.fromkeys(STEP_FIELDS, "") for _ in range(EMPTY_TIMELINE_ROWS)],
        "replacement": {"en": replacement.get("en", ""), "ja": replacement.get("ja", "")},
    }


def _columns_to_rows(columns: dict[str, list[str]]) -> list[dict[str, str]]:
    count = max((len(v) for v in columns.values()), default=0)
    return [{k: (v[i] if i < len(v) else "") for k, v in columns.items()} for i in range(count)]


def _legacy_form_from_draft(draft: dict[str, Any]) -> dict[str, Any]:
    """A refused form comes back as it was typed, so nothing written is lost."""
    return {
        "controls": _columns_to_rows(draft["controls"]) or [dict.fromkeys(CONTROL_FIELDS, "")],
        "steps": _columns_to_rows(draft["steps"]) or [dict.fromkeys(STEP_FIELDS, "")],
        "replacement": draft["replacement"],
    }


@router.get("/vulns/lifecycle")
def lifecycle_page(request: Request, saved: int = 0) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        if saved:
            state.notices.append(Notice("success", _ui(request).gettext(auth.language, N_("Saved."))))
        return _lifecycle_view(request, db, auth, state)


def _lifecycle_again(request: Request, draft: dict[str, Any]) -> Callable[..., Response]:
    """The lifecycle page again after a refused form, with what was typed (a ``form_on_page`` page)."""

    def page(db: Session, auth: Auth, state: PageState, e: ServiceError) -> Response:
        return _lifecycle_view(request, db, auth, state, status=e.status, draft=draft)

    return page


def _optional(value: str) -> str | None:
    return value.strip() or None


def _bounded(field: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidRequest("invalid_field", f"{field} is longer than {limit} characters")
    return value.strip()


@router.post("/vulns/lifecycle/overrides")
def override_add_submit(
    request: Request,
    csrf_token: FormStr = "",
    product: FormStr = "",
    cycle: FormStr = "",
    eol: FormStr = "",
    eoas: FormStr = "",
    eoes: FormStr = "",
    evidence_source: FormStr = "",
    evidence_note: FormStr = "",
) -> Response:
    """Record an override of a product cycle's support dates, as ``POST /api/v1/lifecycle/overrides``."""
    draft = {"override": {"product": product, "cycle": cycle, "eol": eol, "eoas": eoas, "eoes": eoes}}
    draft["override"] |= {"evidence_source": evidence_source, "evidence_note": evidence_note}

    def add(db: Session, auth: Auth) -> None:
        _lifecycle_editor(auth.principal)
        for field, value in (("product", product), ("cycle", cycle), ("evidence_source", evidence_source)):
            if not value.strip():
                raise InvalidRequest("invalid_override", f"{field} is required")
        lifecycle_plans.add_override(
            db,
            _ctx_audit(request),
            auth.principal.username,
            product=_bounded("product", product, 100),
            cycle=_bounded("cycle", cycle, 100),
            evidence_source=_bounded("evidence_source", evidence_source, 1000),
            evidence_note=_bounded("evidence_note", evidence_note, LONG_TEXT),
            eol=_optional(eol),
            eoas=_optional(eoas),
            eoes=_optional(eoes),
        )

    return form_on_page(
        request,
        csrf_token,
        "/vulns/lifecycle",
        add,
        done=lambda _: _redirect("/vulns/lifecycle?saved=1#overrides"),
        page=_lifecycle_again(request, draft),
    )


@router.post("/vulns/lifecycle/overrides/remove")
def override_remove_submit(
    request: Request, csrf_token: FormStr = "", product: FormStr = "", cycle: FormStr = ""
) -> Response:
    """Drop an override, so the imported endoflife.date dates apply again (audited with what it said)."""

    def remove(db: Session, auth: Auth) -> None:
        _lifecycle_editor(auth.principal)
        lifecycle_plans.remove_override(db, _ctx_audit(request), auth.principal.username, product=product, cycle=cycle)

    return form_on_page(
        request,
        csrf_token,
        "/vulns/lifecycle",
        remove,
        done=lambda _: _redirect("/vulns/lifecycle?saved=1#overrides"),
        page=_lifecycle_again(request, {}),
    )


def _rows(name: str, columns: dict[str, list[str]], limits: dict[str, int]) -> list[dict[str, str]]:
    """Rows of a repeated form block; a row left wholly empty is skipped, a half-filled one is refused."""
    rows = []
    for i, row in enumerate(_columns_to_rows(columns), start=1):
        if not any(v.strip() for v in row.values()):
            continue
        rows.append({key: _bounded(f"{name} row {i}: {key}", value, limits[key]) for key, value in row.items()})
    return rows


def _legacy_controls(columns: dict[str, list[str]]) -> list[dict[str, str]]:
    limits = {"id": 64, "title_en": SHORT_TEXT, "title_ja": SHORT_TEXT, "en": LONG_TEXT, "ja": LONG_TEXT}
    limits["requirement"] = 32
    controls = []
    for i, row in enumerate(_rows("control", columns, limits), start=1):
        for key in ("id", "title_en", "title_ja", "en", "ja"):
            if not row[key]:
                raise InvalidRequest("invalid_legacy_plan", f"control {i}: {key} is empty")
        if not row["requirement"]:
            del row["requirement"]
        controls.append(row)
    return controls


def _legacy_timeline(columns: dict[str, list[str]]) -> list[dict[str, str]]:
    steps = _rows("timeline", columns, {"on": 10, "en": SHORT_TEXT, "ja": SHORT_TEXT})
    for i, step in enumerate(steps, start=1):
        for key in ("on", "en", "ja"):
            if not step[key]:
                raise InvalidRequest("invalid_legacy_plan", f"timeline step {i}: {key} is empty")
        try:
            dt.date.fromisoformat(step["on"])
        except ValueError:
            raise InvalidRequest(
                "invalid_legacy_plan", f"timeline step {i}: on must be a date (YYYY-MM-DD), not {step['on']!r}"
            ) from None
    return steps


@router.post("/vulns/lifecycle/{product}/{version}/legacy-plan")
def legacy_plan_submit(
    request: Request,
    product: str,
    version: str,
    csrf_token: FormStr = "",
    control_id: FormList = None,
    control_title_en: FormList = None,
    control_title_ja: FormList = None,
    control_en: FormList = None,
    control_ja: FormList = None,
    control_requirement: FormList = None,
    step_on: FormList = None,
    step_en: FormList = None,
    step_ja: FormList = None,
    replacement_en: FormStr = "",
    replacement_ja: FormStr = "",
) -> Response:
    """Save the legacy plan of a release, as ``PUT /api/v1/releases/{product}/{version}/legacy-plan``."""
    control_columns = {
        "id": control_id or [],
        "title_en": control_title_en or [],
        "title_ja": control_title_ja or [],
        "en": control_en or [],
        "ja": control_ja or [],
        "requirement": control_requirement or [],
    }
    step_columns = {"on": step_on or [], "en": step_en or [], "ja": step_ja or []}
    key = f"{product} {version}"
    draft = {"release": key, "controls": control_columns, "steps": step_columns}
    draft["replacement"] = {"en": replacement_en, "ja": replacement_ja}

    def save(db: Session, auth: Auth) -> None:
        _lifecycle_editor(auth.principal)
        release = sboms.visible_release(db, auth.principal, product, version)
        controls = _legacy_controls(control_columns)
        timeline = _legacy_timeline(step_columns)
        replacement = {
            "en": _bounded("replacement path (English)", replacement_en, LONG_TEXT),
            "ja": _bounded("replacement path (Japanese)", replacement_ja, LONG_TEXT),
        }
        for lang, text in replacement.items():
            if not text:
                raise InvalidRequest("invalid_legacy_plan", f"replacement path ({lang}) is empty")
        lifecycle_plans.save_legacy_plan(
            db,
            _ctx_audit(request),
            auth.principal,
            release,
            controls=controls,
            replacement_path=replacement,
            timeline=timeline,
            today=dt.datetime.now(dt.UTC).date(),
        )

    return form_on_page(
        request,
        csrf_token,
        "/vulns/lifecycle",
        save,
        done=lambda _: _redirect("/vulns/lifecycle?saved=1"),
        page=_lifecycle_again(request, draft),
    )


@router.post("/vulns/lifecycle/{product}/{version}/eos-notice")
def eos_notice_submit(
    request: Request,
    product: str,
    version: str,
    csrf_token: FormStr = "",
    guidance_en: FormStr = "",
    guidance_ja: FormStr = "",
) -> Response:
    """Publish the CSAF end-of-support notice, as ``POST /api/v1/releases/{product}/{version}/eos-notice``."""

    def publish(db: Session, auth: Auth) -> None:
        auth.principal.require_role(Role.PSIRT)
        release = sboms.visible_release(db, auth.principal, product, version)
        lifecycle_plans.publish_eos_notice(
            db,
            _ctx_audit(request),
            request.app.state.ctx.settings,
            auth.principal,
            release,
            today=dt.datetime.now(dt.UTC).date(),
            guidance_en=_optional(_bounded("guidance_en", guidance_en, GUIDANCE_TEXT)),
            guidance_ja=_optional(_bounded("guidance_ja", guidance_ja, GUIDANCE_TEXT)),
        )

    draft = {"notice": {"release": f"{product} {version}", "en": guidance_en, "ja": guidance_ja}}
    return form_on_page(
        request,
        csrf_token,
        "/vulns/lifecycle",
        publish,
        done=lambda _: _redirect("/vulns/advisories"),
        page=_lifecycle_again(request, draft),
    )


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
