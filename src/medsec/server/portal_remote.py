"""Portal pages for remote maintenance (RA-1, RA-3, RA-5): the plan before the work, approvals,
revocation, the engineer's work report and the hospital's confirmation of the end of work.

Hospitals see the sessions of their own devices; a service engineer sees its own requests and can
file a request and a work report here too. Routes only speak HTTP: tenant scope and every rule
(no self-approval, N of M, states) come from :mod:`medsec.server.services.remote_sessions`.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from medsec.errors import InvalidRequest, NotFound, PermissionDenied, ServiceError
from medsec.server.i18n import N_
from medsec.server.models import Role
from medsec.server.models_remote import RemoteSession
from medsec.server.portal import (
    SERVICE_MESSAGES,
    Auth,
    FormStr,
    Notice,
    PageState,
    _error_page,
    _here,
    _record_refusal,
    _redirect,
    _render,
    _service_notice,
    _signed_in,
    _ui,
    _unit_of_work,
    form_action,
    refused_with_error_page,
    safe_next,
)
from medsec.server.remote_authority import load_remote_keys
from medsec.server.services import remote_sessions as remote
from medsec.server.services.accounts import AuditedRefusal

router = APIRouter(include_in_schema=False)

MAX_TEXT = 4000
MAX_ID = 80
FINISHED_STATES = frozenset({"rejected", "revoked", "closed"})

SERVICE_MESSAGES.update(
    {
        "unknown_session": N_("There is no such maintenance session."),
        "self_approval": N_("You requested this session, so you cannot approve it."),
        "not_an_approver": N_("Only the hospital's responsible persons approve maintenance sessions."),
        "not_the_engineer": N_("Only the engineer who requested the session can do this."),
        "duplicate_approval": N_("You have already approved this session."),
        "emergency_approval_overdue": N_("An emergency session must be approved within 24 hours of its request."),
        "illegal_transition": N_("The session is not in a state that allows this."),
        "window_passed": N_("The requested window has already ended."),
        "invalid_outcome": N_("Choose accepted, rejected or follow-up needed."),
        "invalid_session_form": N_("Fill in every field; times are whole minutes."),
        "device_not_enrolled": N_("The device has not enrolled yet, so it has no key for a maintenance code."),
        "invalid_policy": N_("The hospital cannot approve maintenance sessions yet: it has no responsible person."),
        "unknown_recording": N_("There is no such recording."),
        "unknown_report": N_("There is no such report file."),
        "recording_tampered": N_(
            "This recording does not match the SHA-256 sealed in the audit log: it was changed after the session. "
            "It is not shown. The attempt has been logged."
        ),
        "recording_unreadable": N_("The recording file cannot be read. The attempt has been logged."),
        "recording_malformed": N_(
            "This recording is damaged and does not match the audit log. It is not shown. The attempt has been logged."
        ),
        "recording_unsealed": N_(
            "This recording has lost its seal and does not match the audit log. It is not shown. "
            "The attempt has been logged."
        ),
    }
)

STATE_LABELS = {
    "requested": N_("Waiting for approval"),
    "approved": N_("Approved"),
    "active": N_("In progress"),
    "ended": N_("Ended, waiting for the work report"),
    "reported": N_("Reported, waiting for confirmation"),
    "closed": N_("Closed (end of work confirmed)"),
    "rejected": N_("Rejected"),
    "revoked": N_("Revoked"),
}

OUTCOME_LABELS = {
    "accepted": N_("Accepted"),
    "rejected": N_("Work rejected"),
    "follow_up_needed": N_("Follow-up needed"),
}


def _now() -> int:
    return int(time.time())


def _labels(request: Request, language: str) -> dict[str, Any]:
    ui = _ui(request)

    def state_label(state: str) -> str:
        return ui.gettext(language, STATE_LABELS[state]) if state in STATE_LABELS else state

    def outcome_label(outcome: str | None) -> str:
        return ui.gettext(language, OUTCOME_LABELS[outcome]) if outcome in OUTCOME_LABELS else (outcome or "—")

    return {"state_label": state_label, "outcome_label": outcome_label}


def _view(row: RemoteSession) -> dict[str, Any]:
    summary = remote.session_summary(row)
    summary["hospital_name"] = row.device.hospital.name
    summary["approved_by"] = [a["approver"] for a in summary["approvals"]]
    return summary


@router.get("/maintenance")
def sessions_page(request: Request) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        p = auth.principal
        rows = [_view(r) for r in remote.list_sessions(db, p)]
        responsible = not p.is_manufacturer and p.has_role(Role.HOSPITAL_RESPONSIBLE)
        engineer = p.is_manufacturer and p.has_role(Role.SERVICE_ENGINEER)
    state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
    return _render(
        request,
        "remote_sessions.html",
        state,
        requested=[r for r in rows if r["state"] == "requested"],
        current=[r for r in rows if r["state"] not in FINISHED_STATES and r["state"] != "requested"],
        finished=[r for r in rows if r["state"] in FINISHED_STATES],
        responsible=responsible,
        engineer=engineer,
        **_labels(request, auth.language),
    )


def _new_page(request: Request, form: dict[str, str], notices: list[Notice], status_code: int = 200) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
    state = PageState(language=auth.language, viewer=auth.viewer, here="/maintenance/new", notices=notices)
    return _render(request, "remote_new.html", state, status_code=status_code, form=form)


@router.get("/maintenance/new")
def new_session_page(request: Request) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        p = auth.principal
        if not (p.is_manufacturer and p.has_role(Role.SERVICE_ENGINEER)):
            state = PageState(language=auth.language, viewer=auth.viewer, here="/maintenance")
            return _error_page(request, state, PermissionDenied("role_required", "service engineers file requests"))
    return _new_page(request, {"window_minutes": "240", "expected_downtime_minutes": "0"}, [])


def _minutes(value: str, low: int, high: int) -> int:
    if not value.strip().isdigit() or not low <= int(value) <= high:
        raise InvalidRequest("invalid_session_form", f"a whole number of minutes from {low} to {high}")
    return int(value)


def _text(value: str) -> str:
    value = value.strip()
    if not value or len(value) > MAX_TEXT:
        raise InvalidRequest("invalid_session_form", f"text of 1 to {MAX_TEXT} characters")
    return value


def _ports(value: str) -> list[tuple[str, int]]:
    """``name=port`` pairs separated by commas, e.g. ``pump-admin=8443``."""
    ports: list[tuple[str, int]] = []
    for item in (x.strip() for x in value.split(",")):
        if not item:
            continue
        name, _, number = item.partition("=")
        if not name.strip() or not number.strip().isdigit() or not 1 <= int(number) <= 65535:
            raise InvalidRequest("invalid_session_form", "ports are name=number pairs")
        ports.append((name.strip()[:128], int(number)))
    return ports[:16]


@router.post("/maintenance")
def request_session(
    request: Request,
    csrf_token: FormStr = "",
    device: FormStr = "",
    purpose: FormStr = "",
    planned_work: FormStr = "",
    expected_impact: FormStr = "",
    expected_downtime_minutes: FormStr = "",
    rollback: FormStr = "",
    shell: FormStr = "",
    file_transfer: FormStr = "",
    ports: FormStr = "",
    window_minutes: FormStr = "240",
    emergency: FormStr = "",
) -> Response:
    ctx = request.app.state.ctx
    form = {
        "device": device,
        "purpose": purpose,
        "planned_work": planned_work,
        "expected_impact": expected_impact,
        "expected_downtime_minutes": expected_downtime_minutes,
        "rollback": rollback,
        "shell": shell,
        "file_transfer": file_transfer,
        "ports": ports,
        "window_minutes": window_minutes,
        "emergency": emergency,
    }

    def submit(db: Session, auth: Auth) -> str:
        now = _now()
        row = remote.request_session(
            db,
            ctx.audit,
            auth.principal,
            serial=device.strip()[:100],
            purpose=_text(purpose),
            planned_work=_text(planned_work),
            expected_impact=_text(expected_impact),
            expected_downtime_minutes=_minutes(expected_downtime_minutes, 0, 24 * 60),
            rollback=_text(rollback),
            shell=bool(shell),
            file_transfer=bool(file_transfer),
            ports=_ports(ports),
            window_start=now,
            window_end=now + _minutes(window_minutes, 1, 24 * 60) * 60,
            emergency=bool(emergency),
            now=now,
        )
        return row.id

    def refused(auth: Auth, e: ServiceError) -> Response:
        return _new_page(request, form, [_service_notice(_ui(request), auth.language, e)], status_code=e.status)

    return form_action(
        request, csrf_token, submit, done=lambda new_id: _redirect(f"/maintenance/{new_id}"), refused=refused
    )


def _session_page(
    request: Request,
    session_id: str,
    notices: list[Notice] | None = None,
    status_code: int = 200,
    local_code: tuple[str, Any] | None = None,
) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        p = auth.principal
        # After a form post the language switch must return to the page, not to the form's target.
        here = safe_next(f"/maintenance/{quote(session_id[:MAX_ID], safe='')}", "/maintenance")
        state = PageState(language=auth.language, viewer=auth.viewer, here=here, notices=notices or [])
        try:
            row = remote.get_session(db, p, session_id[:MAX_ID])
        except ServiceError as e:
            return _error_page(request, state, e)
        session = _view(row)
        responsible = not p.is_manufacturer and p.has_role(Role.HOSPITAL_RESPONSIBLE)
        engineer = p.is_manufacturer and p.has_role(Role.SERVICE_ENGINEER) and row.engineer == p.username
        admin = p.has_role(Role.MANUFACTURER_ADMIN)
    state_now = session["state"]
    emergency_late = session["emergency"] and state_now in ("active", "ended", "reported")
    may = {
        "approve": responsible
        and (state_now == "requested" or emergency_late)
        and auth.viewer.username not in session["approved_by"]
        and auth.viewer.username != session["engineer"],
        "reject": responsible and state_now in ("requested", "approved"),
        "revoke": (responsible or admin) and state_now in ("requested", "approved", "active"),
        "report": engineer
        and (state_now in ("active", "ended") or (state_now == "revoked" and bool(session["started_at"]))),
        "confirm": responsible and state_now == "reported",
        "local_code": engineer and state_now in ("approved", "active"),
    }
    return _render(
        request,
        "remote_session.html",
        state,
        status_code=status_code,
        session=session,
        may=may,
        outcomes=list(OUTCOME_LABELS),
        local_code=local_code,
        **_labels(request, auth.language),
    )


@router.get("/maintenance/{session_id}")
def session_page(request: Request, session_id: str) -> Response:
    return _session_page(request, session_id)


@router.post("/maintenance/{session_id}/{action}")
def session_action(
    request: Request,
    session_id: str,
    action: str,
    csrf_token: FormStr = "",
    comment: FormStr = "",
    reason: FormStr = "",
    outcome: FormStr = "",
    work_done: FormStr = "",
    results: FormStr = "",
    verification: FormStr = "",
) -> Response:
    ctx = request.app.state.ctx
    sid = session_id[:MAX_ID]

    def act(db: Session, auth: Auth) -> tuple[str, datetime] | None:
        p = auth.principal
        now = _now()
        if action == "approve":
            remote.approve(db, ctx.audit, p, sid, comment=comment[:MAX_TEXT], now=now)
        elif action == "reject":
            remote.reject(db, ctx.audit, p, sid, reason=_text(reason), now=now)
        elif action == "revoke":
            remote.revoke(db, ctx.audit, p, sid, reason=_text(reason), now=now)
        elif action == "report":
            remote.submit_report(
                db,
                ctx.audit,
                p,
                sid,
                work_done=_text(work_done),
                results=_text(results),
                verification=_text(verification),
                now=now,
            )
        elif action == "local-code":
            keys = load_remote_keys(ctx.settings)
            return remote.local_maintenance_code(db, ctx.audit, p, keys.approval_key, sid, now=now)
        elif action == "confirm":
            remote.confirm_end(db, ctx.audit, p, sid, outcome=outcome, comment=comment[:MAX_TEXT], now=now)
        else:
            remote.get_session(db, p, sid)
            raise InvalidRequest("unknown_action", "unknown maintenance action")
        return None

    def done(local_code: tuple[str, datetime] | None) -> Response:
        if local_code is not None:
            return _session_page(request, sid, local_code=local_code)
        return _redirect(f"/maintenance/{sid}")

    def refused(auth: Auth, e: ServiceError) -> Response:
        if e.status == 404:
            return refused_with_error_page(request, "/maintenance")(auth, e)
        notice = _service_notice(_ui(request), auth.language, e)
        return _session_page(request, sid, [notice], status_code=e.status)

    return form_action(request, csrf_token, act, done=done, refused=refused)


# -- recordings and the service report --------------------------------------------------------------------

MARKER_KINDS = {"output": N_("output"), "input": N_("typed"), "marker": N_("marker")}
REPORT_FILES = {
    "ja.html": ("html", "ja"),
    "en.html": ("html", "en"),
    "ja.pdf": ("pdf", "ja"),
    "en.pdf": ("pdf", "en"),
    "proof.json": ("bundle", "ja"),
}


def _refused_page(request: Request, error: ServiceError) -> Response:
    """A refused download or playback: logged if it must be, shown as a page (a 404 looks like any other)."""
    if isinstance(error, AuditedRefusal):
        _record_refusal(request.app.state.ctx, error)
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
    state = PageState(language=auth.language, viewer=auth.viewer, here="/maintenance")
    return _error_page(request, state, error)


@router.get("/maintenance/{session_id}/recordings/{name}")
def recording_page(request: Request, session_id: str, name: str) -> Response:
    """Play a recording back as text (``/recordings/7``) or download it (``/recordings/7.cast``); both are logged."""
    ctx = request.app.state.ctx
    number, _, suffix = name.partition(".")
    if not number.isdigit() or suffix not in ("", "cast") or len(number) > 12:
        return _refused_page(request, NotFound("unknown_recording", "no such recording"))
    mode = "download" if suffix == "cast" else "playback"
    try:
        with ctx.tx() as db:
            auth = _signed_in(request, db)
            view = remote.view_recording(db, ctx.audit, auth.principal, session_id[:MAX_ID], int(number), mode=mode)
    except ServiceError as e:
        return _refused_page(request, e)
    if mode == "download":
        return Response(
            view.data,
            media_type="application/x-asciicast",
            headers={
                "Content-Disposition": f'attachment; filename="{view.session_id}-{view.id}.cast"',
                "Cache-Control": "no-store",
            },
        )
    ui = _ui(request)
    here = safe_next(f"/maintenance/{quote(view.session_id, safe='')}/recordings/{view.id}", "/maintenance")
    state = PageState(language=auth.language, viewer=auth.viewer, here=here)
    return _render(
        request,
        "remote_recording.html",
        state,
        recording=view,
        playback=view.playback,
        kind_label=lambda kind: ui.gettext(auth.language, MARKER_KINDS[kind]) if kind in MARKER_KINDS else kind,
    )


@router.get("/maintenance/{session_id}/report/{name}")
def report_download(request: Request, session_id: str, name: str) -> Response:
    """The service report as ``ja.html``, ``en.html``, ``ja.pdf``, ``en.pdf`` or the proof bundle ``proof.json``."""
    ctx = request.app.state.ctx
    if name not in REPORT_FILES:
        return _refused_page(request, NotFound("unknown_report", "no such report file"))
    fmt, lang = REPORT_FILES[name]
    try:
        with ctx.tx() as db:
            auth = _signed_in(request, db)
            report = remote.service_report(db, ctx.audit, auth.principal, session_id[:MAX_ID], fmt=fmt, lang=lang)
    except ServiceError as e:
        return _refused_page(request, e)
    data, media_type, filename = remote.report_file(report, fmt, lang)
    return Response(
        data,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )
