"""Witness state for device access logs, kept in ``device_log_checkpoints``.

The server cosigns each device's log checkpoint only after checking it is
consistent with the last one it cosigned for that device (RA-2). Callers hold
the device's row lock for the whole transaction, so what this object read
earlier in the transaction is still the current state (compare-and-set holds).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from medsec.auditlog.witness import TreeHead
from medsec.errors import WitnessError
from medsec.server.models import Device, DeviceLogCheckpoint

ORIGIN_PREFIX = "medsec-device/"


@dataclass(frozen=True)
class DeviceLogIdentity:
    """Which device a log origin belongs to, and since when (a re-enrolled device starts a new log)."""

    device_id: int
    since: datetime


@dataclass(frozen=True)
class _Head:
    row_id: int
    head: TreeHead
    note: str


class DeviceLogWitnessState:
    def __init__(self, session: Session, known: dict[str, DeviceLogIdentity] | None = None) -> None:
        self._session = session
        self._known = dict(known or {})
        self._heads: dict[str, _Head | None] = {}

    def _identity(self, origin: str) -> DeviceLogIdentity:
        if origin in self._known:
            return self._known[origin]
        if not origin.startswith(ORIGIN_PREFIX):
            raise WitnessError(f"unknown log origin {origin!r}")
        row = self._session.execute(
            select(Device.id, Device.enrolled_at, Device.created_at).where(
                Device.serial == origin[len(ORIGIN_PREFIX) :]
            )
        ).one_or_none()
        if row is None:
            raise WitnessError(f"unknown log origin {origin!r}")
        identity = DeviceLogIdentity(row.id, row.enrolled_at or row.created_at)
        self._known[origin] = identity
        return identity

    def _head(self, origin: str) -> _Head | None:
        if origin not in self._heads:
            self._heads[origin] = latest_head(self._session, self._identity(origin))
        return self._heads[origin]

    def latest(self, origin: str) -> TreeHead | None:
        head = self._head(origin)
        return head.head if head else None

    def update(self, origin: str, expected: TreeHead | None, new: TreeHead) -> None:
        if self.latest(origin) != expected:
            raise WitnessError(f"witness state for {origin} changed concurrently; retry")
        identity = self._identity(origin)
        row_id = self._session.execute(
            insert(DeviceLogCheckpoint)
            .values(
                device_id=identity.device_id,
                size=new.size,
                root_hash=base64.b64encode(new.root_hash).decode("ascii"),
                note="",  # the cosigned note follows in remember_cosigned_note
                received_at=datetime.now(identity.since.tzinfo),
            )
            .returning(DeviceLogCheckpoint.id)
        ).scalar_one()
        self._heads[origin] = _Head(row_id, new, "")

    def remember_cosigned_note(self, origin: str, note: str) -> None:
        """Keep the cosigned note of the newest head (only once: the first cosignature is the record)."""
        head = self._head(origin)
        if head is not None and not head.note:
            self._session.execute(
                update(DeviceLogCheckpoint).where(DeviceLogCheckpoint.id == head.row_id).values(note=note)
            )
            self._heads[origin] = _Head(head.row_id, head.head, note)


def latest_head(session: Session, identity: DeviceLogIdentity) -> _Head | None:
    row = session.execute(
        select(
            DeviceLogCheckpoint.id, DeviceLogCheckpoint.size, DeviceLogCheckpoint.root_hash, DeviceLogCheckpoint.note
        )
        .where(DeviceLogCheckpoint.device_id == identity.device_id)
        .where(DeviceLogCheckpoint.received_at >= identity.since)
        .order_by(DeviceLogCheckpoint.size.desc(), DeviceLogCheckpoint.id.desc())
        .limit(1)
    ).one_or_none()
    if row is None:
        return None
    return _Head(row.id, TreeHead(row.size, base64.b64decode(row.root_hash)), row.note)


def latest_cosigned_note(session: Session, identity: DeviceLogIdentity) -> str | None:
    head = latest_head(session, identity)
    return head.note if head and head.note else None
