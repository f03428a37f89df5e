"""Vulnerability management metrics (SM-3, RA-6): how much is patched and how fast.

* patched: share of findings (actionable ones: not not_affected) that are fixed or inactive;
* identification to patch: days from a finding's first sighting to its fix;
* patch to field: days from the fix to the first check-in of a device on a release without the finding.
"""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medsec.server.models import Checkin, Device, DeviceModel, Release
from medsec.server.models_vulns import Finding
from medsec.server.principal import Principal
from medsec.server.services import sboms


def _days(a: datetime, b: datetime) -> float:
    return round((b - a).total_seconds() / 86400, 1)


def vulnerability_metrics(session: Session, actor: Principal) -> dict[str, Any]:
    ids = sboms.visible_release_ids(session, actor)
    findings = list(session.scalars(select(Finding).where(Finding.release_id.in_(sorted(ids) or [-1]))))
    actionable = [f for f in findings if f.triage_status != "not_affected"]
    patched = [f for f in actionable if f.triage_status == "fixed" or not f.active]
    to_patch = [_days(f.first_seen, f.fixed_at) for f in actionable if f.fixed_at is not None]
    to_field: list[float] = []
    for f in actionable:
        if f.fixed_at is None:
            continue
        # A device reporting a later version of the same product, after the fix, deployed it.
        first = session.scalar(
            select(func.min(Checkin.received_at))
            .join(Device, Checkin.device_id == Device.id)
            .join(DeviceModel, Device.model_id == DeviceModel.id)
            .join(Release, (Release.product == DeviceModel.product) & (Release.version == Checkin.installed_version))
            .where(
                DeviceModel.product == f.release.product,
                Release.id != f.release_id,
                Checkin.received_at >= f.fixed_at,
            )
        )
        if first is not None:
            to_field.append(_days(f.fixed_at, first))
    return {
        "findings": len(findings),
        "actionable": len(actionable),
        "patched": len(patched),
        "patched_percent": round(100 * len(patched) / len(actionable), 1) if actionable else None,
        "days_identification_to_patch_median": statistics.median(to_patch) if to_patch else None,
        "days_patch_to_field_median": statistics.median(to_field) if to_field else None,
        "open_critical": sum(
            1 for f in actionable if f.active and f.priority_tier == "critical" and f.fixed_at is None
        ),
    }
