"""The server's side of signed updates: the image repositories, the director, and the Release table (SM-1, SM-6).

- :class:`UpdateTrust` holds the online keys the server may use: image snapshot/timestamp, and the
  director's targets/snapshot/timestamp with the director root. Offline keys never reach the server.
- :func:`maintain_repositories` re-signs timestamp/snapshot when due and logs expiry warnings once.
- :func:`sync_releases` mirrors the published targets of every product into ``Release`` rows.
- :func:`director_file` answers a device's director request with per-device metadata whose versions
  are stored, so the same version always has the same bytes.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medsec.crypto.canonical import canonical_json
from medsec.crypto.keys import VerifyKey
from medsec.errors import Error, NotFound, SignatureError
from medsec.protocol import b64decode_field, director_request_bytes
from medsec.server.audit import ServerAuditLog
from medsec.server.models import Device, DeviceStatus, Release, ReleaseStatus
from medsec.server.models_updates import (
    Campaign,
    CampaignDevice,
    CampaignDeviceEvent,
    CampaignStatus,
    DeviceUpdateState,
    DirectorDeviceMetadata,
    MaintenanceWindow,
    ReleaseDecision,
    RepositoryWarning,
)
from medsec.server.services import milestones
from medsec.server.settings import Settings
from medsec.updates.director import DirectorAssignment, DirectorRepository
from medsec.updates.expiry import check_expiry
from medsec.updates.keys import load_image_online_signers, load_online_signers
from medsec.updates.release import read_bundle
from medsec.updates.repository import ImageRepository, OnlineSigners
from medsec.updates.roots import RootHistory

logger = logging.getLogger(__name__)

MAX_DEVICE_METADATA = 4096  # bytes per device (docs/updates-format.md, the director benchmark)
DEVICE_CLOCK_SKEW = timedelta(minutes=5)
_ROOT_FILE = re.compile(r"^([1-9][0-9]{0,8})\.root\.json$")
DIRECTOR_FILES = ("timestamp.json", "snapshot.json", "targets.json")


def _now() -> datetime:
    return datetime.now(UTC)


# -- keys ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateTrust:
    """The online keys present on this server (either may be missing: updates are then not served)."""

    image_online: OnlineSigners | None
    director: DirectorRepository | None
    director_roots: RootHistory | None


def load_update_trust(settings: Settings) -> UpdateTrust:
    """Read ``<data_dir>/keys/tuf-online`` (a copy of ``KEYS/online``) and ``keys/tuf-director``."""
    online_dir = settings.tuf_online_keys_dir
    image: OnlineSigners | None = None
    director: DirectorRepository | None = None
    roots: RootHistory | None = None
    if (online_dir / "image-snapshot.key").is_file():
        image = load_image_online_signers(online_dir)
    history = RootHistory(settings.director_root_dir)
    if (online_dir / "director-targets.key").is_file() and settings.director_root_dir.is_dir() and history.versions():
        signers = load_online_signers(online_dir, "director")
        director = DirectorRepository(
            history.latest(),
            targets=signers["targets"],
            snapshot=signers["snapshot"],
            timestamp=signers["timestamp"],
        )
        roots = history
    return UpdateTrust(image, director, roots)


def products(repo_dir: Path) -> list[ImageRepository]:
    """Every image repository (one folder per product) under ``repo_dir``."""
    if not repo_dir.is_dir():
        return []
    found = []
    for child in sorted(repo_dir.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        try:
            repo = ImageRepository(repo_dir, child.name)
        except Error:
            continue
        if repo.exists():
            found.append(repo)
    return found


# -- repository upkeep --------------------------------------------------------------------------------


def maintain_repositories(
    session: Session, audit: ServerAuditLog, repo_dir: Path, online: OnlineSigners | None, now: datetime
) -> None:
    """Re-sign what is due (TUF 5.4 freshness) and log each expiry warning once in the audit log."""
    for repo in products(repo_dir):
        if online is not None:
            try:
                result = repo.refresh(online, now)
            except Error as e:
                logger.error("cannot re-sign %s: %s", repo.product, e.diagnostics())
                audit.append(
                    session,
                    "repository.resign_failed",
                    actor="system",
                    organization_id=None,
                    details={"product": repo.product, "problem": e.diagnostics()[:500]},
                )
            else:
                if result.snapshot_version or result.timestamp_version:
                    logger.info(
                        "re-signed %s: snapshot %s, timestamp %s",
                        repo.product,
                        result.snapshot_version,
                        result.timestamp_version,
                    )
        try:
            warnings = check_expiry(repo, now)
        except Error as e:
            logger.error("cannot check expiry of %s: %s", repo.product, e.diagnostics())
            continue
        for w in warnings:
            kind = "expired" if w.expired else "expiring"
            seen = session.scalar(
                select(RepositoryWarning.id).where(
                    RepositoryWarning.product == repo.product,
                    RepositoryWarning.role == w.role,
                    RepositoryWarning.version == w.version,
                    RepositoryWarning.kind == kind,
                )
            )
            if seen is not None:
                continue
            session.add(RepositoryWarning(product=repo.product, role=w.role, version=w.version, kind=kind))
            audit.append(
                session,
                "repository.expiry_warning",
                actor="system",
                organization_id=None,
                details={
                    "product": repo.product,
                    "role": w.role,
                    "version": w.version,
                    "expires": w.expires.isoformat(),
                    "action": w.action,
                    "kind": kind,
                    "text": w.describe(),
                },
            )
            session.flush()


def sync_releases(session: Session, audit: ServerAuditLog, repo_dir: Path, now: datetime) -> list[Release]:
    """Upsert a ``published`` Release for every target the published snapshots reach; return the new ones.

    Each release published here gets its release milestone package (SM-2) in the same transaction.
    """
    added: list[Release] = []
    published: list[Release] = []
    for repo in products(repo_dir):
        try:
            targets = repo.published_targets()
        except Error as e:
            logger.error("cannot read the targets of %s: %s", repo.product, e.diagnostics())
            continue
        for name, target in sorted(targets.items()):
            custom: Any = target.unrecognized_fields.get("custom") or {}
            meta = custom.get("medsec") if isinstance(custom, dict) else None
            digest = target.hashes.get("sha256")
            if not isinstance(meta, dict) or digest is None:
                continue
            version = str(meta.get("version", ""))
            row = session.scalar(select(Release).where(Release.product == repo.product, Release.version == version))
            if row is not None and row.status == ReleaseStatus.PUBLISHED.value and row.target_sha256 == digest:
                continue
            if row is not None and row.target_sha256 not in (None, digest):
                logger.error("%s %s: the repository target differs from the recorded release", repo.product, version)
                continue
            path = repo.target_path(target)
            try:
                info = read_bundle(path)
            except (Error, OSError) as e:
                logger.warning("%s: cannot read the bundle yet: %s", name, e)
                continue
            if info.sha256 != digest or info.length != target.length:
                logger.error("%s: the file in the repository does not match its signed target", name)
                continue
            manifest = info.manifest
            if row is None:
                row = Release(product=repo.product, version=version)
                session.add(row)
                added.append(row)
            row.release_counter = int(meta["release_counter"])
            row.status = ReleaseStatus.PUBLISHED.value
            row.hardware_ids = [str(h) for h in meta.get("hardware_ids", [])]
            row.min_from_version = meta.get("min_from_version")
            row.target_name = name
            row.target_sha256 = digest
            row.target_length = target.length
            notes = meta.get("notes") or {}
            row.notes_en = str(notes.get("en", ""))
            row.notes_ja = str(notes.get("ja", ""))
            row.fixed_vulnerabilities = [str(v) for v in manifest.get("fixed_vulnerabilities", [])]
            row.expected_downtime_minutes = meta.get("expected_downtime_minutes")
            row.rollback_supported = bool(meta.get("rollback_supported", True))
            row.published_at = row.published_at or now
            session.flush()
            audit.append(
                session,
                "release.published",
                actor="system",
                organization_id=None,
                details={
                    "product": repo.product,
                    "version": version,
                    "release_counter": row.release_counter,
                    "target": name,
                    "sha256": digest,
                },
            )
            published.append(row)
    milestones.assemble_published(session, audit, published, now=now)
    return added


# -- director -----------------------------------------------------------------------------------------


def verify_device_request(
    device: Device, path: str, time_header: str | None, signature: str | None, now: datetime
) -> None:
    """Raise NotFound unless the request is signed by ``device``'s key, recently (the device reads only its own)."""
    refused = NotFound("not_found", "Not Found")
    if device.public_key is None or device.status != DeviceStatus.ACTIVE.value or not time_header or not signature:
        raise refused
    try:
        sent = int(time_header)
    except ValueError:
        raise refused from None
    if abs(now.timestamp() - sent) > DEVICE_CLOCK_SKEW.total_seconds():
        raise refused
    try:
        key = VerifyKey.from_base64(device.public_key)
        key.verify(b64decode_field(signature, "signature"), director_request_bytes(device.serial, path, sent))
    except (SignatureError, Error):
        raise refused from None


def install_window_for(session: Session, device: Device) -> dict[str, Any] | None:
    """The site's window, else the hospital's, in the policy format of ``medsec.updates.window``."""
    rows = session.scalars(
        select(MaintenanceWindow).where(
            MaintenanceWindow.organization_id == device.hospital_id,
            MaintenanceWindow.site_key.in_([device.site_id or 0, 0]),
        )
    ).all()
    best = sorted(rows, key=lambda w: w.site_key == 0)
    if not best:
        return None
    w = best[0]
    return {"timezone": w.timezone, "weekly": [dict(rule) for rule in w.weekly]}


def _postponed(session: Session, device: Device, release_id: int, now: datetime) -> bool:
    decision = session.scalar(
        select(ReleaseDecision).where(
            ReleaseDecision.organization_id == device.hospital_id, ReleaseDecision.release_id == release_id
        )
    )
    return (
        decision is not None
        and decision.decision == "postpone"
        and (decision.postponed_until is None or decision.postponed_until > now)
    )


def current_assignment(session: Session, device: Device, now: datetime) -> CampaignDevice | None:
    """The campaign entry the director should assign to ``device`` now, or None.

    Running campaigns offer to their open groups; a paused one keeps what it already offered; a
    stopped or cancelled one lets an install in progress finish; a committed release stays listed
    so the director keeps naming what runs.
    """
    rows = session.scalars(
        select(CampaignDevice)
        .join(Campaign, Campaign.id == CampaignDevice.campaign_id)
        .where(CampaignDevice.device_id == device.id)
        .order_by(Campaign.id.desc())
    ).all()
    for cd in rows:
        campaign = cd.campaign
        state = DeviceUpdateState(cd.state)
        status = CampaignStatus(campaign.status)
        if state in (DeviceUpdateState.ROLLED_BACK, DeviceUpdateState.FAILED, DeviceUpdateState.SKIPPED):
            continue
        if state is DeviceUpdateState.COMMITTED:
            return cd
        if status is CampaignStatus.RUNNING:
            if cd.group_index > campaign.current_group:
                continue
            if state in (DeviceUpdateState.PENDING, DeviceUpdateState.OFFERED) and _postponed(
                session, device, campaign.release_id, now
            ):
                continue
            return cd
        if status is CampaignStatus.PAUSED and state is not DeviceUpdateState.PENDING:
            return cd
        if status in (CampaignStatus.STOPPED, CampaignStatus.CANCELLED) and state is DeviceUpdateState.INSTALLING:
            return cd
    return None


def _assignment(session: Session, device: Device, cd: CampaignDevice | None) -> DirectorAssignment | None:
    if cd is None:
        return None
    release = cd.campaign.release
    if release.target_name is None or release.target_sha256 is None or release.target_length is None:
        return None
    if release.release_counter is None or device.model.hardware_id not in release.hardware_ids:
        return None
    return DirectorAssignment(
        target_name=release.target_name,
        length=release.target_length,
        hashes={"sha256": release.target_sha256},
        serial=device.serial,
        hardware_id=device.model.hardware_id,
        release_counter=release.release_counter,
        campaign=cd.campaign.label,
        install_window=install_window_for(session, device),
    )


def _digest(assignment: DirectorAssignment | None, root_version: int) -> str:
    if assignment is None:
        doc: Mapping[str, Any] = {"none": True, "root": root_version}
    else:
        doc = {"root": root_version, **assignment.target_entry(), "name": assignment.target_name}
    return hashlib.sha256(canonical_json(dict(doc))).hexdigest()


def device_metadata_row(
    session: Session,
    audit: ServerAuditLog,
    director: DirectorRepository,
    device: Device,
    now: datetime,
    resign_before: timedelta,
) -> DirectorDeviceMetadata:
    """The device's current director metadata; a new version when the assignment changed or expiry is near."""
    row = session.scalar(
        select(DirectorDeviceMetadata).where(DirectorDeviceMetadata.device_id == device.id).with_for_update()
    )
    cd = current_assignment(session, device, now)
    assignment = _assignment(session, device, cd)
    digest = _digest(assignment, director.root_version)
    if row is not None and row.assignment_digest == digest and row.timestamp_expires_at - now > resign_before:
        return row
    version = row.version + 1 if row is not None else 1
    md = director.device_metadata(device.serial, assignment, version, now)
    if md.size > MAX_DEVICE_METADATA:
        logger.warning("director metadata of %s is %d bytes (over %d)", device.serial, md.size, MAX_DEVICE_METADATA)
    if row is None:
        row = DirectorDeviceMetadata(device_id=device.id)
        session.add(row)
    row.version = version
    row.assignment_digest = digest
    row.campaign_id = cd.campaign_id if cd is not None and assignment is not None else None
    row.timestamp_expires_at = now + director.lifetimes.timestamp
    row.timestamp_json = md.timestamp
    row.snapshot_json = md.snapshot
    row.targets_json = md.targets
    row.created_at = now
    if cd is not None and assignment is not None and cd.state == DeviceUpdateState.PENDING.value:
        cd.state = DeviceUpdateState.OFFERED.value
        cd.offered_at = now
        cd.updated_at = now
        session.add(CampaignDeviceEvent(campaign_device_id=cd.id, state=cd.state, source="server", at=now))
        audit.append(
            session,
            "campaign.device_offered",
            actor="system",
            organization_id=device.hospital_id,
            details={"campaign": cd.campaign_id, "serial": device.serial, "director_version": version},
        )
    session.flush()
    return row


def director_file(
    session: Session,
    audit: ServerAuditLog,
    trust: UpdateTrust,
    settings: Settings,
    *,
    serial: str,
    filename: str,
    path: str,
    time_header: str | None,
    signature: str | None,
    now: datetime | None = None,
) -> bytes:
    """The bytes of ``/director/{serial}/metadata/{filename}`` for the device that signed the request."""
    now = now or _now()
    if trust.director is None or trust.director_roots is None:
        raise NotFound("not_found", "Not Found")
    device = session.scalar(select(Device).where(Device.serial == serial))
    if device is None:
        raise NotFound("not_found", "Not Found")
    verify_device_request(device, path, time_header, signature, now)
    m = _ROOT_FILE.match(filename)
    if m:
        root_path = trust.director_roots.path(int(m.group(1)))
        if not root_path.is_file():
            raise NotFound("not_found", "Not Found")
        return root_path.read_bytes()
    if filename not in DIRECTOR_FILES:
        raise NotFound("not_found", "Not Found")
    row = None
    if filename != "timestamp.json":
        # A refresh reads timestamp, snapshot, targets in turn: only its first request may move the
        # version, so the three files of one refresh always belong together (TUF 5.5.3, 5.6.3).
        row = session.get(DirectorDeviceMetadata, device.id)
    if row is None:
        resign_before = timedelta(hours=settings.director_resign_before_hours)
        row = device_metadata_row(session, audit, trust.director, device, now, resign_before)
    return {"timestamp.json": row.timestamp_json, "snapshot.json": row.snapshot_json, "targets.json": row.targets_json}[
        filename
    ]
