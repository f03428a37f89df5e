"""Hospital-facing update notices (SM-2): what a release changes, when it comes, how it went."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medsec.server.models import Device, Release
from medsec.server.models_updates import Campaign, CampaignDevice
from medsec.server.notify import enqueue


def release_facts(release: Release) -> dict[str, Any]:
    return {
        "product": release.product,
        "version": release.version,
        "release_counter": release.release_counter,
        "notes": {"en": release.notes_en, "ja": release.notes_ja},
        "fixed_vulnerabilities": list(release.fixed_vulnerabilities),
        "expected_downtime_minutes": release.expected_downtime_minutes,
        "rollback_supported": release.rollback_supported,
    }


def _hospital_serials(session: Session, campaign: Campaign) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    rows = session.execute(
        select(Device.hospital_id, Device.serial)
        .join(CampaignDevice, CampaignDevice.device_id == Device.id)
        .where(CampaignDevice.campaign_id == campaign.id)
        .order_by(Device.serial)
    ).all()
    for hospital_id, serial in rows:
        out.setdefault(hospital_id, []).append(serial)
    return out


def campaign_started_notices(session: Session, campaign: Campaign) -> None:
    release = campaign.release
    for hospital_id, serials in _hospital_serials(session, campaign).items():
        enqueue(
            session,
            hospital_id,
            event="update.scheduled",
            key=f"campaign-{campaign.id}/started/org{hospital_id}",
            subject=f"[medsec] {release.product} {release.version}: update scheduled / アップデート予定",
            payload={
                **release_facts(release),
                "campaign": campaign.label,
                "devices": serials,
                "text_en": (
                    f"{release.product} {release.version} will be installed on {len(serials)} of your devices "
                    f"inside your maintenance windows. Expected downtime: "
                    f"{release.expected_downtime_minutes or 0} min. {release.notes_en}"
                ),
                "text_ja": (
                    f"{release.product} {release.version} を貴院の機器 {len(serials)} 台に、"
                    f"設定されたメンテナンス時間帯内でインストールします。"
                    f"想定停止時間: {release.expected_downtime_minutes or 0} 分。{release.notes_ja}"
                ),
            },
        )


def campaign_finished_notices(session: Session, campaign: Campaign) -> None:
    release = campaign.release
    for hospital_id, serials in _hospital_serials(session, campaign).items():
        enqueue(
            session,
            hospital_id,
            event=f"update.campaign_{campaign.status}",
            key=f"campaign-{campaign.id}/{campaign.status}/org{hospital_id}",
            subject=f"[medsec] {release.product} {release.version}: rollout {campaign.status}",
            payload={**release_facts(release), "campaign": campaign.label, "devices": serials},
        )


def device_outcome_notice(session: Session, campaign: Campaign, cd: CampaignDevice) -> None:
    release = campaign.release
    device = cd.device
    enqueue(
        session,
        device.hospital_id,
        event=f"update.device_{cd.state}",
        key=f"campaign-{campaign.id}/device-{device.id}/{cd.state}",
        subject=f"[medsec] {device.serial}: {release.product} {release.version} {cd.state}",
        payload={
            **release_facts(release),
            "campaign": campaign.label,
            "serial": device.serial,
            "state": cd.state,
            "reason": cd.reason,
        },
    )
