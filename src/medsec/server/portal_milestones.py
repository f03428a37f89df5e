"""Portal pages for lifecycle milestone packages (SM-2, SM-4; handbook 表2).

A hospital sees the packages delivered to it, downloads each document (the first download counts as
received), and its responsible person or admin acknowledges receipt. The manufacturer sees, per milestone,
which hospitals opened and acknowledged the package and which have not, assembles a package for a release,
EOL or EOS (or completes one), and writes each product's security policy and maintenance plan. Scope and
rules come from :mod:`medsec.server.services.milestones`, the same functions the API and CLI call; templates
never filter data, and a hospital never gets the manufacturer's forms (posting them anyway is refused).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from medsec.errors import InvalidRequest, ServiceError
from medsec.server.api import RowId
from medsec.server.i18n import N_
from medsec.server.models import Role
from medsec.server.portal import (
    Auth,
    FormStr,
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
    form_on_page,
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


def _can_create(auth: Any) -> bool:
    return bool(auth.principal.is_manufacturer and auth.principal.has_role(*milestones.CREATOR_ROLES))


def _list(request: Request, db: Any, auth: Any, state: PageState, status: int = 200, **form: Any) -> Response:
    rows = [milestones.summary(m, auth.principal) for m in milestones.visible_milestones(db, auth.principal)]
    can_create = _can_create(auth)
    candidates = (
        [
            {"id": r.id, "label": f"{r.product} {r.version}", "status": r.status}
            for r in milestones.package_candidates(db, auth.principal)
        ]
        if can_create
        else []
    )
    return _render(
        request,
        "milestones_list.html",
        state,
        status_code=status,
        milestones=rows,
        can_create=can_create,
        can_read_documents=auth.principal.is_manufacturer,
        candidates=candidates,
        form=form,
        **_labels(),
    )


@router.get("/milestones")
def milestones_page(request: Request) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        return _list(request, db, auth, state)


def _parse_release_id(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidRequest("invalid_release", "release: choose a release from the list") from None


@router.post("/milestones")
def create_submit(request: Request, csrf_token: FormStr = "", release: FormStr = "", kind: FormStr = "") -> Response:
    """Assemble (or complete) a package and deliver it, as ``POST /api/v1/milestones`` does."""

    def assemble(db: Session, auth: Auth) -> int:
        row = milestones.find_release_by_id(db, auth.principal, _parse_release_id(release))
        milestone = milestones.assemble(
            db,
            request.app.state.ctx.audit,
            auth.principal,
            row,
            milestones.parse_milestone_kind(kind),
            today=dt.datetime.now(dt.UTC).date(),
        )
        return milestone.id

    def page(db: Session, auth: Auth, state: PageState, e: ServiceError) -> Response:
        return _list(request, db, auth, state, status=e.status, release=release, kind=kind)

    return form_on_page(
        request, csrf_token, "/milestones", assemble, done=lambda m_id: _redirect(f"/milestones/{m_id}"), page=page
    )


# -- the security policy and maintenance plan of each product --------------------------------------------------


def _documents_page(
    request: Request, db: Any, auth: Any, state: PageState, status: int = 200, draft: dict[str, str] | None = None
) -> Response:
    try:
        products = milestones.known_products(db, auth.principal)
    except ServiceError as e:
        return _error_page(request, state, e)
    stored = {
        (d.product, d.kind): milestones.product_document_summary(d)
        for product in products
        for d in milestones.product_documents(db, auth.principal, product)
    }
    return _render(
        request,
        "milestones_documents.html",
        state,
        status_code=status,
        products=products,
        manual_kinds=[k.value for k in milestones.MANUAL_DOCUMENTS],
        stored=stored,
        draft=draft or {},
        can_edit=auth.principal.has_role(Role.MANUFACTURER_ADMIN),
        **_labels(),
    )


@router.get("/milestones/product-documents")
def documents_page(request: Request, saved: int = 0) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        if saved:
            state.notices.append(Notice("success", _ui(request).gettext(auth.language, N_("Saved."))))
        return _documents_page(request, db, auth, state)


@router.post("/milestones/product-documents")
def documents_submit(
    request: Request,
    csrf_token: FormStr = "",
    product: FormStr = "",
    kind: FormStr = "",
    text_en: FormStr = "",
    text_ja: FormStr = "",
) -> Response:
    """Store a product's security policy or maintenance plan, as ``PUT /api/v1/products/{p}/documents/{k}``."""

    def store(db: Session, auth: Auth) -> None:
        milestones.set_product_document(
            db,
            request.app.state.ctx.audit,
            auth.principal,
            product=product,
            kind=kind,
            text_en=text_en,
            text_ja=text_ja,
        )

    def page(db: Session, auth: Auth, state: PageState, e: ServiceError) -> Response:
        draft = {"product": product, "kind": kind, "text_en": text_en, "text_ja": text_ja}
        return _documents_page(request, db, auth, state, status=e.status, draft=draft)

    return form_on_page(
        request,
        csrf_token,
        "/milestones/product-documents",
        store,
        done=lambda _: _redirect("/milestones/product-documents?saved=1"),
        page=page,
    )


def _detail(request: Request, db: Any, auth: Any, state: PageState, milestone_id: RowId, status: int = 200) -> Response:
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
        can_complete=_can_create(auth),
        release_id=milestone.release_id,
        **_labels(),
    )


@router.get("/milestones/{milestone_id}")
def milestone_page(request: Request, milestone_id: RowId) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        return _detail(request, db, auth, state, milestone_id)


@router.get("/milestones/{milestone_id}/documents/{kind}")
def document_download(request: Request, milestone_id: RowId, kind: str) -> Response:
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
def acknowledge_submit(request: Request, milestone_id: RowId, csrf_token: FormStr = "") -> Response:
    def acknowledge(db: Session, auth: Auth) -> None:
        milestone = milestones.get_milestone(db, auth.principal, milestone_id)
        milestones.acknowledge(db, request.app.state.ctx.audit, auth.principal, milestone)

    def page(db: Session, auth: Auth, state: PageState, e: ServiceError) -> Response:
        return _detail(request, db, auth, state, milestone_id, status=e.status)

    return form_on_page(
        request,
        csrf_token,
        f"/milestones/{milestone_id}",
        acknowledge,
        done=lambda _: _redirect(f"/milestones/{milestone_id}"),
        page=page,
    )
