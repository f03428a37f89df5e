"""The hospital's say in updates (SM-2): maintenance windows, accepting or postponing a release, channels,
and what the hospital sees about releases and its devices' updates. Every read is scoped by ``Principal``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.orm import Session

from medsec.errors import InvalidRequest, NotFound, PermissionDenied
from medsec.server.audit import ServerAuditLog
from medsec.server.models import Device, Organization, OrgKind, Release, ReleaseStatus, Role, Site
from medsec.server.models_updates import (
    Campaign,
    CampaignDevice,
    CampaignDeviceEvent,
    DeviceUpdateReport,
    MaintenanceWindow,
    NotificationChannel,
    ReleaseDecision,
)
from medsec.server.principal import Principal
from medsec.updates.window import DAYS

MAX_RULES = 14
_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{2,}$")
DECISIONS = ("accept", "postpone")


def _now() -> datetime:
    return datetime.now(UTC)


def _require_responsible(actor: Principal, org: Organization) -> None:
    """Only the hospital's own responsible person (医療機関の責任者) decides about its windows and updates."""
    if actor.is_manufacturer or actor.organization_id != org.id or not actor.has_role(Role.HOSPITAL_RESPONSIBLE):
        raise PermissionDenied("role_required", "this needs the hospital's responsible person")
    if not actor.mfa_verified:
        raise PermissionDenied("mfa_required", "this needs a session verified with TOTP or an API token")


def _hospital(session: Session, actor: Principal, slug: str) -> Organization:
    org = session.scalar(select(Organization).where(Organization.slug == slug))
    if org is None or org.kind != OrgKind.HOSPITAL.value or not actor.can_see_org(org.id):
        raise NotFound("unknown_organization", "no such organisation is visible to you")
    return org


# -- maintenance windows --------------------------------------------------------------------------


def check_weekly(timezone: str, weekly: Sequence[Any]) -> list[dict[str, Any]]:
    """Validate weekly rules in the device policy format (``medsec.updates.window``)."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise InvalidRequest("invalid_timezone", "unknown time zone") from e
    if len(weekly) > MAX_RULES:
        raise InvalidRequest("invalid_window", f"at most {MAX_RULES} weekly rules")
    rules = []
    for rule in weekly:
        if not isinstance(rule, dict):
            raise InvalidRequest("invalid_window", "a weekly rule is an object")
        days = rule.get("days")
        start = rule.get("start")
        duration = rule.get("duration_minutes")
        if not isinstance(days, list) or not days or any(d not in DAYS for d in days):
            raise InvalidRequest("invalid_window", f"days are some of {', '.join(DAYS)}")
        if not isinstance(start, str) or not _TIME.match(start):
            raise InvalidRequest("invalid_window", "start is HH:MM (24-hour)")
        if not isinstance(duration, int) or isinstance(duration, bool) or not 15 <= duration <= 24 * 60:
            raise InvalidRequest("invalid_window", "duration_minutes is between 15 and 1440")
        rules.append({"days": sorted(set(days), key=DAYS.index), "start": start, "duration_minutes": duration})
    return rules


def set_window(
    session: Session,
    audit: ServerAuditLog,
    actor: Principal,
    *,
    hospital: str,
    site: str | None,
    timezone: str,
    weekly: Sequence[Any],
) -> MaintenanceWindow:
    org = _hospital(session, actor, hospital)
    _require_responsible(actor, org)
    site_row = None
    if site:
        site_row = session.scalar(select(Site).where(Site.organization_id == org.id, Site.name == site))
        if site_row is None:
            raise NotFound("unknown_site", "no such site in your hospital")
    rules = check_weekly(timezone, weekly)
    key = site_row.id if site_row else 0
    row = session.scalar(
        select(MaintenanceWindow).where(MaintenanceWindow.organization_id == org.id, MaintenanceWindow.site_key == key)
    )
    if row is None:
        row = MaintenanceWindow(organization_id=org.id, site_id=site_row.id if site_row else None, site_key=key)
        session.add(row)
    row.timezone = timezone
    row.weekly = rules
    row.updated_by = actor.user_id
    row.updated_at = _now()
    session.flush()
    audit.append(
        session,
        "maintenance_window.set",
        actor=actor.username,
        organization_id=org.id,
        details={"site": site_row.name if site_row else None, "timezone": timezone, "weekly": rules},
    )
    return row


@dataclass(frozen=True)
class WindowView:
    hospital: str
    hospital_name: str
    site: str | None
    timezone: str
    weekly: list[dict[str, Any]]
    updated_at: datetime


def list_windows(session: Session, actor: Principal) -> list[WindowView]:
    stmt = select(MaintenanceWindow, Organization).join(
        Organization, Organization.id == MaintenanceWindow.organization_id
    )
    if not actor.is_manufacturer:
        stmt = stmt.where(MaintenanceWindow.organization_id == actor.organization_id)
    out = []
    for w, org in session.execute(stmt.order_by(Organization.slug, MaintenanceWindow.site_key)).all():
        site = session.get(Site, w.site_id) if w.site_id else None
        out.append(
            WindowView(org.slug, org.name, site.name if site else None, w.timezone, list(w.weekly), w.updated_at)
        )
    return out


# -- accept / postpone ----------------------------------------------------------------------------


def decide_release(
    session: Session,
    audit: ServerAuditLog,
    actor: Principal,
    *,
    hospital: str,
    release: Release,
    decision: str,
    postponed_until: datetime | None,
    note: str,
) -> ReleaseDecision:
    org = _hospital(session, actor, hospital)
    _require_responsible(actor, org)
    if decision not in DECISIONS:
        raise InvalidRequest("invalid_decision", "decide 'accept' or 'postpone'")
    if decision == "postpone" and postponed_until is not None and postponed_until <= _now():
        raise InvalidRequest("invalid_decision", "postpone to a time in the future")
    row = session.scalar(
        select(ReleaseDecision).where(
            ReleaseDecision.organization_id == org.id, ReleaseDecision.release_id == release.id
        )
    )
    if row is None:
        row = ReleaseDecision(organization_id=org.id, release_id=release.id)
        session.add(row)
    row.decision = decision
    row.postponed_until = postponed_until if decision == "postpone" else None
    row.note = note[:1000]
    row.decided_by = actor.user_id
    row.decided_at = _now()
    session.flush()
    audit.append(
        session,
        f"release.{decision}ed" if decision == "accept" else "release.postponed",
        actor=actor.username,
        organization_id=org.id,
        details={
            "product": release.product,
            "version": release.version,
            "until": postponed_until.isoformat() if postponed_until else None,
        },
    )
    return row


def decisions_of(session: Session, actor: Principal) -> dict[int, ReleaseDecision]:
    """The caller's hospital's decisions by release id (none for the manufacturer)."""
    if actor.is_manufacturer:
        return {}
    return {
        d.release_id: d
        for d in session.scalars(
            select(ReleaseDecision).where(ReleaseDecision.organization_id == actor.organization_id)
        )
    }


def list_releases(session: Session, actor: Principal) -> list[Release]:
    """Published releases; a hospital sees those of the products its devices run."""
    stmt = select(Release).where(Release.status == ReleaseStatus.PUBLISHED.value)
    if not actor.is_manufacturer:
        from medsec.server.models import DeviceModel

        products = select(DeviceModel.product).join(Device, Device.model_id == DeviceModel.id)
        stmt = stmt.where(Release.product.in_(products.where(Device.hospital_id == actor.organization_id)))
    return list(session.scalars(stmt.order_by(Release.product, Release.release_counter.desc())))


def get_visible_release(session: Session, actor: Principal, product: str, version: str) -> Release:
    for r in list_releases(session, actor):
        if r.product == product and r.version == version:
            return r
    raise NotFound("unknown_release", "no such release")


# -- per-device update status -------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceUpdateView:
    serial: str
    hospital: str
    site: str | None
    installed_version: str | None
    campaign: int | None
    release: str | None
    state: str | None
    reason: str | None
    updated_at: datetime | None
    reported_state: str | None
    history: list[tuple[datetime, str, str | None, str]]


def device_updates(session: Session, actor: Principal, serial: str | None = None) -> list[DeviceUpdateView]:
    """Each visible device with its latest campaign entry (and its history) and its last reported update state."""
    stmt = actor.scope_devices(select(Device)).order_by(Device.serial)
    if serial is not None:
        stmt = stmt.where(Device.serial == serial)
    out = []
    for device in session.scalars(stmt):
        cd = session.scalar(
            select(CampaignDevice)
            .where(CampaignDevice.device_id == device.id)
            .order_by(CampaignDevice.campaign_id.desc())
            .limit(1)
        )
        report = session.get(DeviceUpdateReport, device.id)
        history: list[tuple[datetime, str, str | None, str]] = []
        release = None
        if cd is not None:
            campaign = session.get_one(Campaign, cd.campaign_id)
            release = f"{campaign.release.product} {campaign.release.version}"
            history = [
                (e.at, e.state, e.reason, e.source)
                for e in session.scalars(
                    select(CampaignDeviceEvent)
                    .where(CampaignDeviceEvent.campaign_device_id == cd.id)
                    .order_by(CampaignDeviceEvent.id)
                )
            ]
        out.append(
            DeviceUpdateView(
                serial=device.serial,
                hospital=device.hospital.slug,
                site=device.site.name if device.site else None,
                installed_version=device.installed_version,
                campaign=cd.campaign_id if cd else None,
                release=release,
                state=cd.state if cd else None,
                reason=cd.reason if cd else None,
                updated_at=cd.updated_at if cd else None,
                reported_state=report.state if report else None,
                history=history,
            )
        )
    if serial is not None and not out:
        raise NotFound("unknown_device", "no such device is visible to you")
    return out


# -- notification channels ------------------------------------------------------------------------


def add_channel(
    session: Session, audit: ServerAuditLog, actor: Principal, *, kind: str, target: str
) -> tuple[NotificationChannel, str | None]:
    """A channel for the caller's own organisation; a webhook gets a new secret, shown once."""
    if not actor.has_role(Role.HOSPITAL_RESPONSIBLE, Role.HOSPITAL_ADMIN, Role.MANUFACTURER_ADMIN):
        raise PermissionDenied("role_required", "channels need an administrator or the responsible person")
    if kind == "email":
        if not _EMAIL.match(target):
            raise InvalidRequest("invalid_target", "give an e-mail address")
        secret = None
    elif kind == "webhook":
        if not target.startswith(("https://", "http://")) or len(target) > 500:
            raise InvalidRequest("invalid_target", "give an http(s) URL")
        secret = secrets.token_urlsafe(32)
    else:
        raise InvalidRequest("invalid_kind", "a channel is 'email' or 'webhook'")
    row = NotificationChannel(organization_id=actor.organization_id, kind=kind, target=target, secret=secret)
    session.add(row)
    session.flush()
    audit.append(
        session,
        "notification_channel.added",
        actor=actor.username,
        organization_id=actor.organization_id,
        details={"kind": kind, "target": target, "channel": row.id},
    )
    return row, secret


def list_channels(session: Session, actor: Principal) -> list[NotificationChannel]:
    return list(
        session.scalars(
            select(NotificationChannel)
            .where(NotificationChannel.organization_id == actor.organization_id)
            .order_by(NotificationChannel.id)
        )
    )
