"""Portal pages for lifecycle milestone packages (SM-2, SM-4; handbook 表2).

A hospital sees the packages delivered to it, downloads each document (the first download counts as
received), and its responsible person or admin acknowledges receipt. The manufacturer sees, per milestone,
which hospitals opened and acknowledged the package and which have not. Scope and rules come from
:mod:`medsec.server.services.milestones`; templates never filter data.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from medsec.errors import ServiceError
from medsec.server.i18n import N_
from medsec.server.portal import (
    FormStr,
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
from medsec.server.services import milestones

router = APIRouter(include_in_schema=False)

KIND_LABELS = {"release": N_("Release"), "eol": N_("End of life (EOL)"), "eos": N_("End of support (EOS)")}
DOCUMENT_LABELS = {
    "security_policy": N_("Security policy"),
    "lifecycle_plan": N_("EOL/EOS plan"),
    "sbom": N_("SBOM (CycloneDX)"),
    "mds2": N_("MDS2 disclosure"),
    "maintenance_plan": N_("Maintenance plan"),
    "eol_notice": N_("EOL notice"),
    "eos_notice": N_("EOS notice"),
    "legacy_plan": N_("Legacy plan"),
}
STATUS_LABELS = {
    "notified": N_("Notified, not opened"),
    "opened": N_("Received, not acknowledged"),
    "acknowledged": N_("Acknowledged"),
    "acknowledgement_outdated": N_("Package completed since acknowledgement"),
}


def _labels() -> dict[str, Any]:
    return {"kind_labels": KIND_LABELS, "document_labels": DOCUMENT_LABELS, "delivery_labels": STATUS_LABELS}


@router.get("/milestones")
def milestones_page(request: Request) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        rows = [milestones.summary(m, auth.principal) for m in milestones.visible_milestones(db, auth.principal)]
    return _render(request, "milestones_list.html", state, milestones=rows, **_labels())


def _detail(request: Request, db: Any, auth: Any, state: PageState, milestone_id: int, status: int = 200) -> Response:
    try:
        milestone = milestones.get_milestone(db, auth.principal, milestone_id)
    except ServiceError as e:
        return _error_page(request, state, e)
    can_acknowledge = not auth.principal.is_manufacturer and auth.principal.has_role(*milestones.ACKNOWLEDGER_ROLES)
    return _render(
        request,
        "milestones_detail.html",
        state,
        status_code=status,
        m=milestones.summary(milestone, auth.principal),
        can_acknowledge=can_acknowledge,
        **_labels(),
    )


@router.get("/milestones/{milestone_id}")
def milestone_page(request: Request, milestone_id: int) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        return _detail(request, db, auth, state, milestone_id)


@router.get("/milestones/{milestone_id}/documents/{kind}")
def document_download(request: Request, milestone_id: int, kind: str) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        try:
            milestone = milestones.get_milestone(db, auth.principal, milestone_id)
            doc = milestones.open_document(db, auth.principal, milestone, kind)
        except ServiceError as e:
            return _error_page(request, state, e)
        content, media_type, filename = doc.content or b"", doc.media_type, doc.filename
    response = Response(content, media_type=media_type)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return _with_headers(response)


@router.post("/milestones/{milestone_id}/acknowledge")
def acknowledge_submit(request: Request, milestone_id: int, csrf_token: FormStr = "") -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        _check_csrf(request, auth, csrf_token)
        state = PageState(language=auth.language, viewer=auth.viewer, here=f"/milestones/{milestone_id}")
        try:
            milestone = milestones.get_milestone(db, auth.principal, milestone_id)
            milestones.acknowledge(db, request.app.state.ctx.audit, auth.principal, milestone)
        except ServiceError as e:
            if e.status in (403, 404):
                return _error_page(request, state, e)
            state.notices.append(Notice("error", str(e)))
            return _detail(request, db, auth, state, milestone_id, status=e.status)
    return _redirect(f"/milestones/{milestone_id}")
