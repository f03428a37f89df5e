"""Portal pages for updates (SM-1, SM-2): releases with their notes, per-device update status, maintenance
windows and accept/postpone for hospitals; campaigns with two-person approval for the manufacturer.

Routes only speak HTTP; tenant scope comes from the services (``Principal``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from medsec.errors import InvalidRequest, ServiceError
from medsec.server.i18n import N_
from medsec.server.models import Role
from medsec.server.portal import (
    SERVICE_MESSAGES,
    Auth,
    FormStr,
    Notice,
    PageState,
    Refused,
    _error_page,
    _here,
    _redirect,
    _render,
    _service_notice,
    _signed_in,
    _ui,
    _unit_of_work,
    form_action,
    refused_with_error_page,
)
from medsec.server.services import update_campaigns as campaigns
from medsec.server.services import update_hospital as hospital
from medsec.updates.window import DAYS

router = APIRouter(include_in_schema=False)

SERVICE_MESSAGES.update(
    {
        "two_person_rule": N_("The person who created a campaign cannot approve it. Ask a second person."),
        "approval_required": N_("A campaign starts only after a second person approved it."),
        "campaign_state": N_("The campaign is not in a state that allows this."),
        "unknown_campaign": N_("There is no such campaign."),
        "unknown_release": N_("There is no such release."),
        "no_devices": N_("No active device matches the selection and needs this release."),
        "invalid_window": N_("Check the days, the start time (HH:MM) and the duration (15 to 1440 minutes)."),
        "invalid_timezone": N_("Unknown time zone."),
        "invalid_decision": N_("Choose accept or postpone (postpone to a future date)."),
    }
)

STATE_LABELS = {
    "pending": N_("Pending"),
    "offered": N_("Offered"),
    "downloading": N_("Downloading"),
    "waiting_for_window": N_("Waiting for the maintenance window"),
    "installing": N_("Installing"),
    "committed": N_("Installed"),
    "rolled_back": N_("Rolled back"),
    "failed": N_("Failed"),
    "skipped": N_("Not offered"),
    "draft": N_("Waiting for approval"),
    "approved": N_("Approved"),
    "running": N_("Running"),
    "paused": N_("Paused"),
    "completed": N_("Completed"),
    "stopped": N_("Stopped"),
    "cancelled": N_("Cancelled"),
}


def _labels(request: Request, language: str) -> dict[str, Any]:
    ui = _ui(request)

    def state_label(state: str | None) -> str:
        return ui.gettext(language, STATE_LABELS[state]) if state in STATE_LABELS else (state or "—")

    return {"state_label": state_label}


# -- hospital and manufacturer: releases, device updates, windows -----------------------------------


def _updates_page(request: Request, notices: list[Notice] | None = None, status_code: int = 200) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        p = auth.principal
        releases = hospital.list_releases(db, p)
        decisions = hospital.decisions_of(db, p)
        release_rows = [
            {
                "product": r.product,
                "version": r.version,
                "counter": r.release_counter,
                "notes": r.notes_ja if auth.language == "ja" else r.notes_en,
                "fixed": list(r.fixed_vulnerabilities),
                "downtime": r.expected_downtime_minutes,
                "rollback": r.rollback_supported,
                "published_at": r.published_at,
                "decision": decisions[r.id].decision if r.id in decisions else None,
                "until": decisions[r.id].postponed_until if r.id in decisions else None,
            }
            for r in releases
        ]
        device_rows = hospital.device_updates(db, p)
        windows = hospital.list_windows(db, p)
        responsible = not p.is_manufacturer and p.has_role(Role.HOSPITAL_RESPONSIBLE)
        sites = [s.name for s in auth.user.organization.sites] if responsible else []
    state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request), notices=notices or [])
    return _render(
        request,
        "updates_overview.html",
        state,
        status_code=status_code,
        releases=release_rows,
        devices=device_rows,
        windows=windows,
        responsible=responsible,
        sites=sites,
        days=DAYS,
        **_labels(request, auth.language),
    )


@router.get("/updates")
def updates_page(request: Request, saved: int = 0) -> Response:
    notices = []
    if saved:
        with _unit_of_work(request) as db:
            language = _signed_in(request, db).language
        notices.append(Notice("success", _ui(request).gettext(language, N_("Saved."))))
    return _updates_page(request, notices)


@router.post("/updates/window")
def save_window(
    request: Request,
    csrf_token: FormStr = "",
    site: FormStr = "",
    timezone: FormStr = "Asia/Tokyo",
    days: Annotated[list[str] | None, Form()] = None,
    start: FormStr = "",
    duration_minutes: FormStr = "",
) -> Response:
    ctx = request.app.state.ctx

    def save(db: Session, auth: Auth) -> None:
        chosen = [d for d in (days or []) if d]
        if not duration_minutes.isdigit():
            raise InvalidRequest("invalid_window", "duration_minutes must be a number")
        rule = {"days": chosen, "start": start, "duration_minutes": int(duration_minutes)}
        hospital.set_window(
            db,
            ctx.audit,
            auth.principal,
            hospital=auth.viewer.organization_slug,
            site=site or None,
            timezone=timezone,
            weekly=[rule],
        )

    return form_action(request, csrf_token, save, done=_saved, refused=_refused_on_updates_page(request))


@router.post("/updates/releases/{product}/{version}/decision")
def decide_release(
    request: Request,
    product: str,
    version: str,
    csrf_token: FormStr = "",
    decision: FormStr = "",
    postpone_days: FormStr = "",
    note: FormStr = "",
) -> Response:
    ctx = request.app.state.ctx

    def decide(db: Session, auth: Auth) -> None:
        release = hospital.get_visible_release(db, auth.principal, product[:100], version[:100])
        until = None
        if decision == "postpone":
            days = int(postpone_days) if postpone_days.isdigit() else 0
            if not 1 <= days <= 365:
                raise InvalidRequest("invalid_decision", "postpone by 1 to 365 days")
            until = datetime.now(UTC) + timedelta(days=days)
        hospital.decide_release(
            db,
            ctx.audit,
            auth.principal,
            hospital=auth.viewer.organization_slug,
            release=release,
            decision=decision,
            postponed_until=until,
            note=note,
        )

    return form_action(request, csrf_token, decide, done=_saved, refused=_refused_on_updates_page(request))


def _saved(_result: None) -> Response:
    return _redirect("/updates?saved=1")


def _refused_on_updates_page(request: Request) -> Refused:
    """Hospital forms answer a refusal on the updates page itself, with the reason as a notice."""

    def page(auth: Auth, error: ServiceError) -> Response:
        return _updates_page(request, [_service_notice(_ui(request), auth.language, error)], status_code=error.status)

    return page


# -- manufacturer: campaigns ----------------------------------------------------------------------


@router.get("/campaigns")
def campaigns_page(request: Request) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        try:
            rows = campaigns.list_campaigns(db, auth.principal)
        except ServiceError as e:
            return _error_page(request, state, e)
        items = [
            {
                "id": c.id,
                "name": c.name,
                "release": f"{c.release.product} {c.release.version}",
                "status": c.status,
                "created_at": c.created_at,
            }
            for c in rows
        ]
        releases = [(r.product, r.version) for r in hospital.list_releases(db, auth.principal)]
    return _render(
        request, "updates_campaigns.html", state, campaigns=items, releases=releases, **_labels(request, state.language)
    )


@router.post("/campaigns")
def create_campaign(
    request: Request,
    csrf_token: FormStr = "",
    name: FormStr = "",
    release: FormStr = "",
    groups: FormStr = "1, rest",
    hospitals: FormStr = "",
    error_threshold: FormStr = "10",
    success_threshold: FormStr = "100",
) -> Response:
    ctx = request.app.state.ctx

    def create(db: Session, auth: Auth) -> int:
        product, _, version = release.partition(" ")
        spec: list[Any] = [int(g) if g.isdigit() else g for g in (x.strip() for x in groups.split(",")) if g]
        if not (error_threshold.isdigit() and success_threshold.isdigit()):
            raise InvalidRequest("invalid_threshold", "thresholds are whole percentages")
        c = campaigns.create_campaign(
            db,
            ctx.audit,
            auth.principal,
            name=name,
            product=product,
            version=version,
            selection=campaigns.Selection(hospitals=tuple(h.strip() for h in hospitals.split(",") if h.strip())),
            groups=spec,
            success_threshold=int(success_threshold),
            error_threshold=int(error_threshold),
        )
        return c.id

    return form_action(
        request,
        csrf_token,
        create,
        done=lambda new_id: _redirect(f"/campaigns/{new_id}"),
        refused=refused_with_error_page(request, "/campaigns"),
    )


@router.get("/campaigns/{campaign_id}")
def campaign_page(request: Request, campaign_id: str) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        try:
            c = campaigns.get_campaign(db, auth.principal, campaign_id[:12])
        except ServiceError as e:
            return _error_page(request, state, e)
        rows = campaigns.campaign_devices(db, c)
        events = campaigns.device_events(db, [r.id for r in rows])
        devices = [
            {
                "serial": r.device.serial,
                "hospital": r.device.hospital.name,
                "group": r.group_index + 1,
                "state": r.state,
                "reason": r.reason,
                "history": [(e.at, e.state, e.reason, e.source) for e in events[r.id]],
            }
            for r in rows
        ]
        view = {
            "id": c.id,
            "name": c.name,
            "release": f"{c.release.product} {c.release.version}",
            "status": c.status,
            "groups": ", ".join(str(g) for g in c.groups),
            "current_group": c.current_group + 1,
            "success_threshold": c.success_threshold,
            "error_threshold": c.error_threshold,
            "stop_reason": c.stop_reason,
            "mine": c.created_by == auth.principal.user_id,
            "approved": c.approved_by is not None,
        }
    return _render(
        request, "updates_campaign.html", state, campaign=view, devices=devices, **_labels(request, state.language)
    )


@router.post("/campaigns/{campaign_id}/{action}")
def campaign_action(request: Request, campaign_id: str, action: str, csrf_token: FormStr = "") -> Response:
    ctx = request.app.state.ctx
    actions = {
        "approve": campaigns.approve_campaign,
        "start": campaigns.start_campaign,
        "pause": campaigns.pause_campaign,
        "resume": campaigns.resume_campaign,
        "cancel": campaigns.cancel_campaign,
    }

    def act(db: Session, auth: Auth) -> int:
        c = campaigns.get_campaign(db, auth.principal, campaign_id[:12], lock=True)
        if action not in actions:
            raise InvalidRequest("unknown_action", "unknown campaign action")
        actions[action](db, ctx.audit, auth.principal, c)
        return c.id

    return form_action(
        request,
        csrf_token,
        act,
        done=lambda cid: _redirect(f"/campaigns/{cid}"),
        refused=refused_with_error_page(request, "/campaigns"),
    )
