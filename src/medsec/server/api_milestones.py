"""JSON API for lifecycle milestone packages (SM-2, SM-4; handbook 表2) under ``/api/v1/milestones``.

Routes parse, call :mod:`medsec.server.services.milestones`, render. A hospital reaches a milestone only
through its own delivery; another hospital's milestone answers 404 like one that does not exist.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import Field

from medsec.errors import NotFound
from medsec.server.api import ERRORS, Caller, Ctx, RowId, Strict
from medsec.server.services import milestones, sboms

router = APIRouter(prefix="/api/v1", tags=["milestones"])


class MilestoneBody(Strict):
    product: Annotated[str, Field(min_length=1, max_length=100)]
    version: Annotated[str, Field(min_length=1, max_length=100)]
    kind: Annotated[str, Field(pattern="^(release|eol|eos)$")]


class ProductDocumentBody(Strict):
    text_en: Annotated[str, Field(min_length=1, max_length=milestones.MAX_DOCUMENT_TEXT)]
    text_ja: Annotated[str, Field(min_length=1, max_length=milestones.MAX_DOCUMENT_TEXT)]


@router.get("/milestones", responses=ERRORS)
def list_milestones(ctx: Ctx, caller: Caller) -> list[dict[str, Any]]:
    with ctx.tx() as session:
        return [milestones.summary(m, caller) for m in milestones.visible_milestones(session, caller)]


@router.post("/milestones", responses=ERRORS)
def create_milestone(body: MilestoneBody, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    """Assemble (or complete) the package for a release, EOL or EOS and deliver it to the hospitals."""
    with ctx.tx() as session:
        if not caller.is_manufacturer:
            raise NotFound("unknown_release", "no such release is visible to you")
        release = sboms.visible_release(session, caller, body.product, body.version)
        row = milestones.assemble(
            session,
            ctx.audit,
            caller,
            release,
            milestones.parse_milestone_kind(body.kind),
            today=dt.datetime.now(dt.UTC).date(),
        )
        return milestones.summary(row, caller)


@router.get("/milestones/{milestone_id}", responses=ERRORS)
def show_milestone(milestone_id: RowId, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    with ctx.tx() as session:
        return milestones.summary(milestones.get_milestone(session, caller, milestone_id), caller)


@router.get("/milestones/{milestone_id}/documents/{kind}", responses=ERRORS)
def download_document(milestone_id: RowId, kind: str, ctx: Ctx, caller: Caller) -> Response:
    with ctx.tx() as session:
        milestone = milestones.get_milestone(session, caller, milestone_id)
        doc = milestones.open_document(session, caller, milestone, kind)
        content, media_type, filename, digest = doc.content or b"", doc.media_type, doc.filename, doc.sha256
    response = Response(content, media_type=media_type)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["X-Content-SHA256"] = digest or ""
    return response


@router.post("/milestones/{milestone_id}/acknowledge", responses=ERRORS)
def acknowledge(milestone_id: RowId, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    with ctx.tx() as session:
        milestone = milestones.get_milestone(session, caller, milestone_id)
        milestones.acknowledge(session, ctx.audit, caller, milestone)
        return milestones.summary(milestone, caller)


@router.get("/products/{product}/documents", responses=ERRORS)
def list_product_documents(product: str, ctx: Ctx, caller: Caller) -> list[dict[str, Any]]:
    with ctx.tx() as session:
        return [milestones.product_document_summary(d) for d in milestones.product_documents(session, caller, product)]


@router.put("/products/{product}/documents/{kind}", responses=ERRORS)
def put_product_document(
    product: str, kind: str, body: ProductDocumentBody, ctx: Ctx, caller: Caller
) -> dict[str, Any]:
    """Set the security policy or maintenance plan text of a product (manufacturer admin)."""
    with ctx.tx() as session:
        row = milestones.set_product_document(
            session, ctx.audit, caller, product=product, kind=kind, text_en=body.text_en, text_ja=body.text_ja
        )
        return milestones.product_document_summary(row)
