"""Staged rollout campaigns (SM-1, SM-5): selection, cascading groups, thresholds, two-person approval.

Lifecycle::

    draft ──approve (a second person)──▶ approved ──start──▶ running ◀──resume── paused
                                                               │  └──pause──────────▲
                                                               ├──▶ completed
                                                               ├──▶ stopped   (error threshold, by itself)
       draft / approved / running / paused ──cancel──▶ cancelled

A device's progress comes only from its signed version reports (``record_update_report``); the one
state the server sets itself is ``offered``, when the director first hands the device its assignment.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medsec.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from medsec.server.audit import ServerAuditLog
from medsec.server.models import Device, DeviceModel, DeviceStatus, Organization, Release, ReleaseStatus, Role, Site
from medsec.server.models_updates import (
    ERROR_DEVICE_STATES,
    FINISHED_CAMPAIGN,
    TERMINAL_DEVICE_STATES,
    Campaign,
    CampaignDevice,
    CampaignDeviceEvent,
    CampaignStatus,
    DeviceUpdateReport,
    DeviceUpdateState,
)
from medsec.server.principal import Principal
from medsec.server.services.accounts import AuditedRefusal

logger = logging.getLogger(__name__)

RELEASE_ROLES = (Role.RELEASE_ENGINEER, Role.MANUFACTURER_ADMIN)
MAX_GROUPS = 20
_PERCENT = re.compile(r"^([1-9][0-9]?|100)%$")
_LABEL = re.compile(r"^c-([1-9][0-9]{0,9})$")

# Device phases (medsec.updates.device_update.Phase) as campaign states.
REPORTED_STATES: dict[str, DeviceUpdateState] = {
    "downloading": DeviceUpdateState.DOWNLOADING,
    "downloaded": DeviceUpdateState.DOWNLOADING,
    "waiting_for_window": DeviceUpdateState.WAITING_FOR_WINDOW,
    "installing": DeviceUpdateState.INSTALLING,
    "switched": DeviceUpdateState.INSTALLING,
    "health_check": DeviceUpdateState.INSTALLING,
    "committed": DeviceUpdateState.COMMITTED,
    "rolled_back": DeviceUpdateState.ROLLED_BACK,
    "failed": DeviceUpdateState.FAILED,
}


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Selection:
    """Which devices a campaign targets; empty lists mean "any"."""

    hardware_ids: tuple[str, ...] = ()
    hospitals: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    from_versions: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[str]]:
        return {
            "hardware_ids": list(self.hardware_ids),
            "hospitals": list(self.hospitals),
            "sites": list(self.sites),
            "from_versions": list(self.from_versions),
        }


def require_release_role(actor: Principal) -> None:
    """Campaign work is for the manufacturer's release engineers and admins, with a verified second factor."""
    if not actor.is_manufacturer or not actor.has_role(*RELEASE_ROLES):
        raise PermissionDenied("role_required", "campaigns need the release_engineer or manufacturer_admin role")
    if not actor.mfa_verified:
        raise PermissionDenied("mfa_required", "campaign actions need a session verified with TOTP or an API token")


def group_sizes(groups: Sequence[Any], total: int) -> list[int]:
    """Sizes of cascading groups such as ``[1, "10%", "rest"]`` for ``total`` devices."""
    if not groups or len(groups) > MAX_GROUPS:
        raise InvalidRequest("invalid_groups", f"give 1 to {MAX_GROUPS} groups")
    sizes: list[int] = []
    remaining = total
    for i, g in enumerate(groups):
        if g == "rest":
            if i != len(groups) - 1:
                raise InvalidRequest("invalid_groups", '"rest" can only be the last group')
            size = remaining
        elif isinstance(g, int) and not isinstance(g, bool) and g >= 1:
            size = min(g, remaining)
        elif isinstance(g, str) and _PERCENT.match(g):
            size = min(max(1, math.ceil(int(g[:-1]) * total / 100)), remaining)
        else:
            raise InvalidRequest("invalid_groups", 'a group is a device count, a percentage like "10%", or "rest"')
        sizes.append(size)
        remaining -= size
    if remaining:
        sizes[-1] += remaining  # whatever the groups leave over joins the last one
    return sizes


def get_release(session: Session, product: str, version: str) -> Release:
    row = session.scalar(select(Release).where(Release.product == product, Release.version == version))
    if row is None:
        raise NotFound("unknown_release", "no such release")
    return row


def _busy_device_ids(session: Session) -> set[int]:
    """Devices already in an unfinished campaign that has not reached an end for them."""
    rows = session.execute(
        select(CampaignDevice.device_id, CampaignDevice.state)
        .join(Campaign, Campaign.id == CampaignDevice.campaign_id)
        .where(Campaign.status.not_in([s.value for s in FINISHED_CAMPAIGN]))
    ).all()
    return {r.device_id for r in rows if DeviceUpdateState(r.state) not in TERMINAL_DEVICE_STATES}


def select_devices(session: Session, release: Release, selection: Selection) -> list[Device]:
    stmt = (
        select(Device)
        .join(DeviceModel, DeviceModel.id == Device.model_id)
        .join(Organization, Organization.id == Device.hospital_id)
        .where(Device.status == DeviceStatus.ACTIVE.value, DeviceModel.product == release.product)
        .where(DeviceModel.hardware_id.in_(release.hardware_ids))
        .order_by(Device.serial)
    )
    if selection.hardware_ids:
        stmt = stmt.where(DeviceModel.hardware_id.in_(selection.hardware_ids))
    if selection.hospitals:
        stmt = stmt.where(Organization.slug.in_(selection.hospitals))
    if selection.sites:
        stmt = stmt.outerjoin(Site, Site.id == Device.site_id).where(Site.name.in_(selection.sites))
    if selection.from_versions:
        stmt = stmt.where(Device.installed_version.in_(selection.from_versions))
    busy = _busy_device_ids(session)
    return [d for d in session.scalars(stmt).unique() if d.installed_version != release.version and d.id not in busy]


def _audit(session: Session, audit: ServerAuditLog, event: str, actor: str, campaign: Campaign, **details: Any) -> None:
    audit.append(
        session,
        event,
        actor=actor,
        organization_id=None,
        details={
            "campaign": campaign.id,
            "name": campaign.name,
            "product": campaign.release.product,
            "version": campaign.release.version,
            **details,
        },
    )


def create_campaign(
    session: Session,
    audit: ServerAuditLog,
    actor: Principal,
    *,
    name: str,
    product: str,
    version: str,
    selection: Selection,
    groups: Sequence[Any],
    success_threshold: int,
    error_threshold: int,
) -> Campaign:
    require_release_role(actor)
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise InvalidRequest("invalid_name", "a campaign name has 1 to 200 characters")
    if not (1 <= success_threshold <= 100 and 0 <= error_threshold <= 100):
        raise InvalidRequest("invalid_threshold", "thresholds are percentages (success 1-100, error 0-100)")
    release = get_release(session, product, version)
    if release.status != ReleaseStatus.PUBLISHED.value or release.target_name is None:
        raise Conflict("release_not_published", "only a release published in the update repository can be rolled out")
    chosen = select_devices(session, release, selection)
    if not chosen:
        raise InvalidRequest("no_devices", "no active device matches the selection and needs this release")
    sizes = group_sizes(groups, len(chosen))
    campaign = Campaign(
        name=name,
        release_id=release.id,
        status=CampaignStatus.DRAFT.value,
        selection=selection.to_json(),
        groups=list(groups),
        success_threshold=success_threshold,
        error_threshold=error_threshold,
        current_group=0,
        created_by=actor.user_id,
    )
    campaign.release = release
    session.add(campaign)
    session.flush()
    index = 0
    now = _now()
    for group, size in enumerate(sizes):
        for device in chosen[index : index + size]:
            session.add(
                CampaignDevice(
                    campaign_id=campaign.id,
                    device_id=device.id,
                    group_index=group,
                    state=DeviceUpdateState.PENDING.value,
                    updated_at=now,
                )
            )
        index += size
    session.flush()
    _audit(
        session,
        audit,
        "campaign.created",
        actor.username,
        campaign,
        devices=len(chosen),
        groups=list(groups),
        group_sizes=sizes,
        selection=selection.to_json(),
        success_threshold=success_threshold,
        error_threshold=error_threshold,
    )
    return campaign


def get_campaign(session: Session, actor: Principal, campaign_id: str, *, lock: bool = False) -> Campaign:
    require_release_role(actor)
    if not campaign_id.isdigit() or len(campaign_id) > 10:
        raise NotFound("unknown_campaign", "no such campaign")
    stmt = select(Campaign).where(Campaign.id == int(campaign_id))
    if lock:
        stmt = stmt.with_for_update()
    campaign = session.scalar(stmt)
    if campaign is None:
        raise NotFound("unknown_campaign", "no such campaign")
    return campaign


def list_campaigns(session: Session, actor: Principal) -> list[Campaign]:
    require_release_role(actor)
    return list(session.scalars(select(Campaign).order_by(Campaign.id.desc())))


def campaign_devices(session: Session, campaign: Campaign) -> list[CampaignDevice]:
    return list(
        session.scalars(
            select(CampaignDevice)
            .where(CampaignDevice.campaign_id == campaign.id)
            .order_by(CampaignDevice.group_index, CampaignDevice.id)
        )
    )


def device_events(session: Session, cd_ids: Sequence[int]) -> dict[int, list[CampaignDeviceEvent]]:
    out: dict[int, list[CampaignDeviceEvent]] = {i: [] for i in cd_ids}
    if not cd_ids:
        return out
    for e in session.scalars(
        select(CampaignDeviceEvent)
        .where(CampaignDeviceEvent.campaign_device_id.in_(cd_ids))
        .order_by(CampaignDeviceEvent.id)
    ):
        out[e.campaign_device_id].append(e)
    return out


def _status(campaign: Campaign) -> CampaignStatus:
    return CampaignStatus(campaign.status)


def _wrong_state(campaign: Campaign, action: str) -> Conflict:
    return Conflict("campaign_state", f"cannot {action} a campaign that is {campaign.status}")


def approve_campaign(session: Session, audit: ServerAuditLog, actor: Principal, campaign: Campaign) -> None:
    """The second person's approval. The creator can never approve their own campaign."""
    require_release_role(actor)
    if campaign.created_by == actor.user_id:
        raise AuditedRefusal(
            PermissionDenied("two_person_rule", "the person who created a campaign cannot approve it"),
            "campaign.approval_refused",
            actor=actor.username,
            organization_id=None,
            details={"campaign": campaign.id, "reason": "creator_cannot_approve"},
        )
    if _status(campaign) is not CampaignStatus.DRAFT:
        raise _wrong_state(campaign, "approve")
    campaign.status = CampaignStatus.APPROVED.value
    campaign.approved_by = actor.user_id
    campaign.approved_at = _now()
    _audit(session, audit, "campaign.approved", actor.username, campaign, created_by=campaign.created_by)


def start_campaign(session: Session, audit: ServerAuditLog, actor: Principal, campaign: Campaign) -> None:
    require_release_role(actor)
    if _status(campaign) is not CampaignStatus.APPROVED or campaign.approved_by is None:
        raise AuditedRefusal(
            Conflict("approval_required", "a campaign starts only after a second person approved it"),
            "campaign.start_refused",
            actor=actor.username,
            organization_id=None,
            details={"campaign": campaign.id, "status": campaign.status},
        )
    if campaign.approved_by == campaign.created_by:
        raise Conflict("two_person_rule", "creator and approver must be different people")
    now = _now()
    campaign.status = CampaignStatus.RUNNING.value
    campaign.started_at = now
    _audit(session, audit, "campaign.started", actor.username, campaign, approved_by=campaign.approved_by)
    from medsec.server.services.update_notices import campaign_started_notices

    campaign_started_notices(session, campaign)
    advance_campaign(session, audit, campaign, now)


def pause_campaign(session: Session, audit: ServerAuditLog, actor: Principal, campaign: Campaign) -> None:
    require_release_role(actor)
    if _status(campaign) is not CampaignStatus.RUNNING:
        raise _wrong_state(campaign, "pause")
    campaign.status = CampaignStatus.PAUSED.value
    _audit(session, audit, "campaign.paused", actor.username, campaign)


def resume_campaign(session: Session, audit: ServerAuditLog, actor: Principal, campaign: Campaign) -> None:
    require_release_role(actor)
    if _status(campaign) is not CampaignStatus.PAUSED:
        raise _wrong_state(campaign, "resume")
    campaign.status = CampaignStatus.RUNNING.value
    _audit(session, audit, "campaign.resumed", actor.username, campaign)
    advance_campaign(session, audit, campaign, _now())


def cancel_campaign(session: Session, audit: ServerAuditLog, actor: Principal, campaign: Campaign) -> None:
    require_release_role(actor)
    if _status(campaign) in FINISHED_CAMPAIGN:
        raise _wrong_state(campaign, "cancel")
    _finish(session, campaign, CampaignStatus.CANCELLED, f"cancelled by {actor.username}", _now())
    _audit(session, audit, "campaign.cancelled", actor.username, campaign)


def _finish(session: Session, campaign: Campaign, status: CampaignStatus, reason: str | None, now: datetime) -> None:
    campaign.status = status.value
    campaign.finished_at = now
    campaign.stop_reason = reason
    for cd in campaign_devices(session, campaign):
        if cd.state == DeviceUpdateState.PENDING.value:
            cd.state = DeviceUpdateState.SKIPPED.value
            cd.reason = reason
            cd.updated_at = now
            session.add(
                CampaignDeviceEvent(campaign_device_id=cd.id, state=cd.state, reason=reason, source="server", at=now)
            )


def _state_counts(session: Session, campaign: Campaign) -> dict[int, Counter[DeviceUpdateState]]:
    """Devices per group and state, counted by the database (a report must not load the whole fleet)."""
    counts: dict[int, Counter[DeviceUpdateState]] = {}
    rows = session.execute(
        select(CampaignDevice.group_index, CampaignDevice.state, func.count())
        .where(CampaignDevice.campaign_id == campaign.id)
        .group_by(CampaignDevice.group_index, CampaignDevice.state)
    )
    for group_index, state, n in rows:
        counts.setdefault(group_index, Counter())[DeviceUpdateState(state)] += n
    return counts


def advance_campaign(session: Session, audit: ServerAuditLog, campaign: Campaign, now: datetime) -> None:
    """Apply the thresholds: stop on errors, open the next group on success, finish at the end."""
    if _status(campaign) is not CampaignStatus.RUNNING:
        return
    by_group = _state_counts(session, campaign)
    states: Counter[DeviceUpdateState] = Counter()
    for group_counts in by_group.values():
        states.update(group_counts)
    offered = sum(n for s, n in states.items() if s not in (DeviceUpdateState.PENDING, DeviceUpdateState.SKIPPED))
    errors = sum(n for s, n in states.items() if s in ERROR_DEVICE_STATES)
    if errors and errors * 100 >= campaign.error_threshold * offered:
        reason = (
            f"error threshold reached: {errors} of {offered} offered devices failed or rolled back "
            f"(threshold {campaign.error_threshold}%)"
        )
        _finish(session, campaign, CampaignStatus.STOPPED, reason, now)
        _audit(session, audit, "campaign.stopped", "system", campaign, reason=reason)
        from medsec.server.services.update_notices import campaign_finished_notices

        campaign_finished_notices(session, campaign)
        return
    last_group = max(by_group) if by_group else 0
    all_terminal = all(s in TERMINAL_DEVICE_STATES for s in states)
    while True:
        group = by_group.get(campaign.current_group, Counter())
        size = sum(group.values())
        committed = group[DeviceUpdateState.COMMITTED]
        finished = all(s in TERMINAL_DEVICE_STATES for s in group)
        if campaign.current_group < last_group and committed * 100 >= campaign.success_threshold * size:
            campaign.current_group += 1
            _audit(session, audit, "campaign.group_started", "system", campaign, group=campaign.current_group)
            continue
        if finished and campaign.current_group < last_group:
            reason = (
                f"group {campaign.current_group + 1} ended below the success threshold ({campaign.success_threshold}%)"
            )
            _finish(session, campaign, CampaignStatus.STOPPED, reason, now)
            _audit(session, audit, "campaign.stopped", "system", campaign, reason=reason)
            return
        if campaign.current_group == last_group and all_terminal:
            _finish(session, campaign, CampaignStatus.COMPLETED, None, now)
            summary = {s.value: n for s, n in states.items() if n}
            _audit(session, audit, "campaign.completed", "system", campaign, outcome=summary)
            from medsec.server.services.update_notices import campaign_finished_notices

            campaign_finished_notices(session, campaign)
        return


def advance_all(session: Session, audit: ServerAuditLog, now: datetime) -> None:
    for campaign in session.scalars(
        select(Campaign).where(Campaign.status == CampaignStatus.RUNNING.value).with_for_update()
    ):
        advance_campaign(session, audit, campaign, now)


def campaign_id_from_label(label: str | None) -> int | None:
    m = _LABEL.match(label or "")
    return int(m.group(1)) if m else None


def record_update_report(
    session: Session,
    audit: ServerAuditLog,
    *,
    device_id: int,
    serial: str,
    hospital_id: int,
    installed_version: str,
    update: dict[str, Any],
    report_counter: int,
    now: datetime,
) -> None:
    """Take a device's signed update status into its campaign history (the only way a device state changes)."""
    row = session.get(DeviceUpdateReport, device_id)
    if row is None:
        row = DeviceUpdateReport(device_id=device_id, report_counter=report_counter)
        session.add(row)
    row.state = str(update["state"])
    row.release_counter = update.get("release_counter")
    row.target = update.get("target")
    row.reason = update.get("reason")
    row.campaign = update.get("campaign")
    row.report_counter = report_counter
    row.received_at = now
    new_state = REPORTED_STATES.get(str(update["state"]))
    campaign_id = campaign_id_from_label(update.get("campaign"))
    if new_state is None or campaign_id is None:
        return
    campaign = session.scalar(select(Campaign).where(Campaign.id == campaign_id).with_for_update())
    if campaign is None:
        return
    cd = session.scalar(
        select(CampaignDevice).where(CampaignDevice.campaign_id == campaign.id, CampaignDevice.device_id == device_id)
    )
    if cd is None:
        return
    release = campaign.release
    if update.get("release_counter") not in (None, release.release_counter) or update.get("target") not in (
        None,
        release.target_name,
    ):
        logger.info("%s reported on another release than campaign %d's; not recorded", serial, campaign.id)
        return
    current = DeviceUpdateState(cd.state)
    if current in TERMINAL_DEVICE_STATES or current is new_state:
        return
    if new_state is DeviceUpdateState.COMMITTED and installed_version != release.version:
        logger.warning("%s reports committed but runs %s, not %s", serial, installed_version, release.version)
        return
    reason = update.get("reason")
    cd.state = new_state.value
    cd.reason = reason
    cd.updated_at = now
    session.add(
        CampaignDeviceEvent(
            campaign_device_id=cd.id,
            state=new_state.value,
            reason=reason,
            source="device",
            report_counter=report_counter,
            at=now,
        )
    )
    audit.append(
        session,
        "campaign.device_state",
        actor=f"device:{serial}",
        organization_id=hospital_id,
        details={
            "campaign": campaign.id,
            "serial": serial,
            "from": current.value,
            "to": new_state.value,
            "reason": reason,
            "report_counter": report_counter,
        },
    )
    session.flush()
    if new_state in ERROR_DEVICE_STATES or new_state is DeviceUpdateState.COMMITTED:
        from medsec.server.services.update_notices import device_outcome_notice

        device_outcome_notice(session, campaign, cd)
    advance_campaign(session, audit, campaign, now)
