"""Portal pages for reports: request a signed security status report, list and download earlier ones
(RA-6); export the MDS2-style disclosure (manufacturer roles; SM-2, SM-4).

A hospital user sees and requests only its own hospital's reports; another hospital's report id answers
exactly like a missing one. Scope comes from :mod:`medsec.server.services.status_reports`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import Response
from sqlalchemy import select

from medsec.errors import NotFound, ServiceError
from medsec.reports.mds2 import build_mds2, mds2_to_xlsx
from medsec.reports.signing import ensure_report_key
from medsec.server.i18n import N_
from medsec.server.models import DeviceModel, Release
from medsec.server.portal import (
    Auth,
    Notice,
    PageState,
    _check_csrf,
    _ctx,
    _error_page,
    _here,
    _redirect,
    _render,
    _signed_in,
    _unit_of_work,
    _with_headers,
)
from medsec.server.services import status_reports

router = APIRouter(include_in_schema=False)

FormStr = Annotated[str, Form()]
LANGUAGE_LABELS = {"en": N_("English"), "ja": N_("Japanese")}
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def _products(db: Any) -> list[dict[str, Any]]:
    """Products with their known releases, for the MDS2 form."""
    names = sorted(set(db.scalars(select(DeviceModel.product))) | set(db.scalars(select(Release.product))))
    out = []
    for product in names:
        versions = list(db.scalars(select(Release.version).where(Release.product == product).order_by(Release.id)))
        out.append({"product": product, "versions": versions})
    return out


def _page(request: Request, db: Any, auth: Auth, state: PageState, status_code: int = 200) -> Response:
    rows = status_reports.list_reports(db, auth.principal)
    slugs = status_reports.hospital_slugs(db, rows)
    reports = [status_reports.report_summary(r, slugs.get(r.organization_id)) for r in rows]
    hospitals = [{"slug": o.slug, "name": o.name} for o in status_reports.report_hospitals(db, auth.principal)]
    key = ensure_report_key(_ctx(request).settings.keys_dir).verify_key.to_base64()
    return _render(
        request,
        "reports_index.html",
        state,
        status_code=status_code,
        reports=reports,
        hospitals=hospitals,
        report_key=key,
        log_key=_ctx(request).audit.vkey,
        language_labels=LANGUAGE_LABELS,
        products=_products(db) if auth.principal.is_manufacturer else [],
    )


@router.get("/reports")
def reports_page(request: Request) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        return _page(request, db, auth, state)


@router.post("/reports/status")
def request_report(request: Request, csrf_token: FormStr = "", hospital: FormStr = "", lang: FormStr = "") -> Response:
    ctx = _ctx(request)
    signer = status_reports.signer_for(ctx.audit, ctx.settings.keys_dir)
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        _check_csrf(request, auth, csrf_token)
        state = PageState(language=auth.language, viewer=auth.viewer, here="/reports")
        try:
            row = status_reports.generate(db, signer, auth.principal, hospital, lang or auth.language)
        except ServiceError as e:
            if e.status == 404:
                return _error_page(request, state, e)
            state.notices.append(Notice("error", str(e)))
            return _page(request, db, auth, state, status_code=e.status)
        report_id = row.id
    return _redirect(f"/reports?created={report_id}")


@router.get("/reports/status/{name}")
def download_report(request: Request, name: str) -> Response:
    report_id, _, kind = name.partition(".")
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        try:
            row = status_reports.get_report(db, auth.principal, report_id)
            data, media, filename = status_reports.report_file(row, kind)
        except ServiceError as e:
            return _error_page(request, state, e)
    response = Response(data, media_type=media)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return _with_headers(response)


@router.get("/reports/mds2")
def mds2_download(
    request: Request,
    product: Annotated[str, Query(max_length=100)] = "",
    version: Annotated[str, Query(max_length=100)] = "",
    format: Annotated[str, Query(max_length=8)] = "xlsx",
) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        try:
            if not auth.principal.is_manufacturer or format not in ("xlsx", "json"):
                raise NotFound("unknown_product", "no such product is visible to you")
            doc = build_mds2(db, product, version or None)
            _ctx(request).audit.append(
                db,
                "report.mds2_exported",
                actor=auth.principal.username,
                organization_id=auth.principal.organization_id,
                details={"product": product, "version": doc["version"], "format": format},
            )
        except ServiceError as e:
            return _error_page(request, state, e)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    base = f"mds2-{product}-{doc['version'] or 'latest'}-{stamp}"
    if format == "json":
        response = Response(
            json.dumps(doc, ensure_ascii=False, indent=2).encode("utf-8"), media_type="application/json"
        )
    else:
        response = Response(mds2_to_xlsx(doc), media_type=XLSX_TYPE)
    response.headers["Content-Disposition"] = f'attachment; filename="{base}.{format}"'
    return _with_headers(response)
