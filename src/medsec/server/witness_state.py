"""Witness state for device access logs, kept in ``device_log_checkpoints``.

The server cosigns each device's log checkpoint only after checking it is
consistent with the last one it cosigned for that device (RA-2).
"""

from __future__ import annotations

import base64

from sqlalchemy import select
from sqlalchemy.orm import Session

from medsec.auditlog.witness import TreeHead
from medsec.errors import WitnessError
from medsec.server.models import Device, DeviceLogCheckpoint

ORIGIN_PREFIX = "medsec-device/"


class DeviceLogWitnessState:
    def __init__(self, session: Session | None) -> None:
        self._session = session

    def _device(self, origin: str) -> Device:
        if self._session is None or not origin.startswith(ORIGIN_PREFIX):
            raise WitnessError(f"unknown log origin {origin!r}")
        device = self._session.scalar(select(Device).where(Device.serial == origin[len(ORIGIN_PREFIX) :]))
        if device is None:
            raise WitnessError(f"unknown log origin {origin!r}")
        return device

    def latest_row_for(self, device: Device) -> DeviceLogCheckpoint | None:
        assert self._session is not None
        return self._session.scalar(
            select(DeviceLogCheckpoint)
            .where(DeviceLogCheckpoint.device_id == device.id)
            # A re-enrolled device has a new key and starts a new log.
            .where(DeviceLogCheckpoint.received_at >= (device.enrolled_at or device.created_at))
            .order_by(DeviceLogCheckpoint.size.desc(), DeviceLogCheckpoint.id.desc())
            .limit(1)
        )

    def latest(self, origin: str) -> TreeHead | None:
        row = self.latest_row_for(self._device(origin))
        if row is None:
            return None
        return TreeHead(row.size, base64.b64decode(row.root_hash))

    def update(self, origin: str, expected: TreeHead | None, new: TreeHead) -> None:
        """Record ``new``; the caller holds the device row lock, so compare-and-set is exact."""
        assert self._session is not None
        device = self._device(origin)
        if self.latest(origin) != expected:
            raise WitnessError(f"witness state for {origin} changed concurrently; retry")
        self._session.add(
            DeviceLogCheckpoint(
                device_id=device.id,
                size=new.size,
                root_hash=base64.b64encode(new.root_hash).decode("ascii"),
                note="",  # filled with the cosigned note by the caller
            )
        )
        self._session.flush()

    def remember_cosigned_note(self, origin: str, note: str) -> None:
        row = self.latest_row_for(self._device(origin))
        if row is not None and not row.note:
            row.note = note
