"""Portal pages of device protection (RL-1, RL-2, RL-3, PA-2): what each device blocked, which
integrity findings it made and repaired, and how its ports and USB drifted from the signed policy.

The manufacturer sees every device; a hospital sees only its own, and only what happened while the
device was its own. Tenant scope comes from :mod:`medsec.server.services.protection`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from medsec.errors import ServiceError
from medsec.server.i18n import N_
from medsec.server.portal import (
    SERVICE_MESSAGES,
    PageState,
    _error_page,
    _here,
    _render,
    _signed_in,
    _ui,
    _unit_of_work,
)
from medsec.server.services import protection

router = APIRouter(include_in_schema=False)

ROWS_SHOWN = 100
DAY_CHOICES = (1, 7, 30, 365)
DEFAULT_DAYS = 30

SERVICE_MESSAGES.update(
    {
        "invalid_category": N_("Choose a listed event category."),
        "invalid_action": N_("Choose a listed event action."),
    }
)

ACTION_LABELS = {
    "allow": N_("Allowed"),
    "deny": N_("Blocked"),
    "would_deny": N_("Would be blocked (monitor mode)"),
    "learned": N_("Learned"),
    "detected": N_("Detected"),
    "restored": N_("Restored"),
    "quarantined": N_("Quarantined"),
    "applied": N_("Policy applied"),
    "drift": N_("Drift from policy"),
    "gap": N_("Agent not running"),
    "error": N_("Protection error"),
}

MODE_LABELS = {
    "learn": N_("Learn"),
    "monitor": N_("Monitor"),
    "enforce": N_("Enforce"),
    "off": N_("Off"),
}

CATEGORY_LABELS = {
    "exec": N_("Execution"),
    "open": N_("File open"),
    "integrity": N_("Integrity"),
    "port": N_("Network port"),
    "interface": N_("Network interface"),
    "usb": N_("USB"),
    "console": N_("Service console"),
    "agent": N_("Agent"),
}

# The three tables of the device page: which events each shows, and the actions its filter offers.
SECTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "blocked": (("exec", "open"), protection.BLOCKED_ACTIONS),
    "integrity": (("integrity",), protection.INTEGRITY_ACTIONS),
    "drift": (protection.DRIFT_CATEGORIES, ("drift", "detected", "deny", "applied", "error")),
}


@dataclass(frozen=True)
class EventRow:
    time: datetime
    category: str
    action: str
    mode: str | None
    rule: str
    subject_exe: str | None
    subject_sha256: str | None
    subject_pid: int | None
    object_path: str | None
    object_sha256: str | None
    detail: str
    seq: int


def _event_row(e: Any) -> EventRow:
    return EventRow(
        e.event_time,
        e.category,
        e.action,
        e.mode,
        e.rule,
        e.subject_exe,
        e.subject_sha256,
        e.subject_pid,
        e.object_path,
        e.object_sha256,
        e.detail,
        e.seq,
    )


def _labels(request: Request, language: str) -> dict[str, Any]:
    ui = _ui(request)

    def pick(table: dict[str, str], value: str | None) -> str:
        if value is None:
            return "—"
        return ui.gettext(language, table[value]) if value in table else value

    return {
        "action_label": lambda v: pick(ACTION_LABELS, v),
        "mode_label": lambda v: pick(MODE_LABELS, v),
        "category_label": lambda v: pick(CATEGORY_LABELS, v),
    }


def _days(value: str) -> int | None:
    """The period filter: one of DAY_CHOICES, "all" for no limit, anything else the default."""
    if value == "all":
        return None
    return int(value) if value.isdigit() and int(value) in DAY_CHOICES else DEFAULT_DAYS


@router.get("/protection")
def fleet_page(request: Request) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        rows = protection.fleet_summary(db, auth.principal, days=protection.FLEET_DAYS)
    state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
    return _render(
        request,
        "protect_fleet.html",
        state,
        rows=rows,
        days=protection.FLEET_DAYS,
        **_labels(request, auth.language),
    )


@router.get("/devices/{serial}/protection")
def device_protection_page(request: Request, serial: str, action: str = "", days: str = "") -> Response:
    period = _days(days)
    since = datetime.now(UTC) - timedelta(days=period) if period else None
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        try:
            status = protection.get_status(db, auth.principal, serial[:100])
            tables: dict[str, list[EventRow]] = {}
            for name, (categories, actions) in SECTIONS.items():
                if action and action not in actions:
                    tables[name] = []  # the chosen action never appears in this table
                    continue
                rows = protection.list_events(
                    db,
                    auth.principal,
                    status.serial,
                    categories=categories,
                    actions=(action,) if action else actions,
                    since=since,
                    limit=ROWS_SHOWN,
                )
                tables[name] = [_event_row(e) for e in rows]
        except ServiceError as e:
            return _error_page(request, state, e)
    filter_actions = sorted({a for _c, acts in SECTIONS.values() for a in acts})
    return _render(
        request,
        "protect_device.html",
        state,
        serial=status.serial,
        status=status,
        blocked=tables["blocked"],
        integrity=tables["integrity"],
        drift=tables["drift"],
        filter_actions=filter_actions,
        selected_action=action if action in filter_actions else "",
        day_choices=DAY_CHOICES,
        selected_days=period,
        rows_shown=ROWS_SHOWN,
        **_labels(request, auth.language),
    )
