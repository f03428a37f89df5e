"""The database-backed :class:`~medsec.remote.gateway.SessionAuthority` and the remote-maintenance keys.

Two keys live in the server's keys directory (mode 0600), kept apart on purpose:

* ``remote-approval.key`` (Ed25519) signs the session tickets devices check themselves; it
  turns a hospital approval in the database into something a device believes;
* ``maintenance-ca.key`` (OpenSSH) signs the engineers' short-lived certificates. A gateway
  holding only the CA key cannot open a session: the device also needs a ticket (RA-1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.remote.certs import MaintenanceCA
from medsec.remote.gateway import SessionGrant
from medsec.remote.ticket import SessionTicket
from medsec.server.context import ServerContext
from medsec.server.services import remote_sessions
from medsec.server.settings import Settings

logger = logging.getLogger(__name__)

APPROVAL_KEY_FILE = "remote-approval.key"
CA_KEY_FILE = "maintenance-ca.key"


@dataclass(frozen=True)
class RemoteKeys:
    approval_key: SigningKey
    ca: MaintenanceCA

    @property
    def approval_verify_key(self) -> VerifyKey:
        return self.approval_key.verify_key


def load_remote_keys(settings: Settings) -> RemoteKeys:
    """Load the approval key and the maintenance CA, creating them (0600) on first use."""
    settings.keys_dir.mkdir(parents=True, exist_ok=True)
    approval = SigningKey.load_or_create(settings.keys_dir / APPROVAL_KEY_FILE)
    ca_path = settings.keys_dir / CA_KEY_FILE
    if not ca_path.exists():
        MaintenanceCA.generate().save(ca_path)
        logger.info("created %s", ca_path)
    return RemoteKeys(approval, MaintenanceCA.load(ca_path))


class DatabaseSessionAuthority:
    """Answers the gateway from the database: each call is its own short transaction.

    The gateway polls :meth:`grant` for live sessions, so a revocation written by the portal
    reaches it within one poll interval.
    """

    def __init__(self, ctx: ServerContext, keys: RemoteKeys) -> None:
        self._ctx = ctx
        self._keys = keys

    def grant(self, session_id: str, now: int) -> SessionGrant:
        with self._ctx.tx() as db:
            return remote_sessions.gateway_grant(db, session_id, now)

    def ticket(self, session_id: str, now: int) -> SessionTicket:
        with self._ctx.tx() as db:
            return remote_sessions.gateway_ticket(db, self._ctx.audit, self._keys.approval_key, session_id, now)

    def device_key(self, serial: str) -> VerifyKey | None:
        with self._ctx.tx() as db:
            return remote_sessions.device_key(db, serial)

    def recording_sealed(self, session_id: str, path: Path, sha256: str) -> None:
        with self._ctx.tx() as db:
            remote_sessions.recording_sealed(db, self._ctx.audit, session_id, path, sha256)
