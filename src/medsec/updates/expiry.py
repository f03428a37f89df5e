"""Expiry watch for an image repository: people re-sign offline roles, the server the online ones.

Root is flagged 60 days ahead and targets and bins 14 days ahead, because those need the offline
keys (a ceremony or a release engineer). Snapshot and timestamp are re-signed by the server
(:meth:`ImageRepository.refresh`); for them a warning only says that the re-signing is due.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from medsec.updates.repository import ImageRepository

ROOT_WARNING = timedelta(days=60)
TARGETS_WARNING = timedelta(days=14)

Action = Literal["offline-resign", "auto-resign"]


@dataclass(frozen=True)
class ExpiryWarning:
    role: str
    version: int
    expires: datetime
    remaining: timedelta
    action: Action

    @property
    def expired(self) -> bool:
        return self.remaining <= timedelta(0)

    def describe(self) -> str:
        when = "expired" if self.expired else f"expires in {self.remaining.days} d {self.remaining.seconds // 3600} h"
        what = "re-sign with the offline keys" if self.action == "offline-resign" else "due for automatic re-signing"
        return f"{self.role} v{self.version} {when} ({self.expires:%Y-%m-%d %H:%M}Z): {what}"


def check_expiry(repo: ImageRepository, now: datetime) -> list[ExpiryWarning]:
    """Warnings for every role of the published repository that is close to expiry or expired."""
    policy = repo.policy
    warnings: list[ExpiryWarning] = []

    def check(role: str, version: int, expires: datetime, margin: timedelta, action: Action) -> None:
        remaining = expires - now
        if remaining <= margin:
            warnings.append(ExpiryWarning(role, version, expires, remaining, action))

    root = repo.root().signed
    check("root", root.version, root.expires, ROOT_WARNING, "offline-resign")
    snapshot_md = repo.snapshot()
    for name, meta in sorted(snapshot_md.signed.meta.items()):
        role = name.removesuffix(".json")
        t = repo.load_targets(role, meta.version).signed
        check(role, t.version, t.expires, TARGETS_WARNING, "offline-resign")
    check(
        "snapshot", snapshot_md.signed.version, snapshot_md.signed.expires, policy.snapshot_resign_before, "auto-resign"
    )
    ts = repo.timestamp().signed
    check("timestamp", ts.version, ts.expires, policy.timestamp_resign_before, "auto-resign")
    return warnings
