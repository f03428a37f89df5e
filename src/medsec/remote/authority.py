"""An in-memory :class:`~medsec.remote.gateway.SessionAuthority` over :mod:`medsec.remote.session`.

The server implements the same protocol over its database; this one serves the
demo and the tests, and shows what each answer means.
"""

from __future__ import annotations

from pathlib import Path

from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.remote.errors import AccessRefused
from medsec.remote.gateway import SessionGrant
from medsec.remote.session import MaintenanceSession, SessionEvent, SessionState
from medsec.remote.ticket import SessionTicket, issue_ticket


def grant_for(session: MaintenanceSession, now: int) -> SessionGrant:
    """The gateway's admission rule: approved (or emergency), not revoked, inside the window."""
    if session.state is SessionState.REVOKED:
        raise AccessRefused("session_revoked", f"session {session.id} was revoked")
    if session.state in (SessionState.REQUESTED, SessionState.REJECTED) and not (
        session.emergency and session.state is SessionState.REQUESTED
    ):
        raise AccessRefused("session_not_approved", f"session {session.id} is {session.state.value}")
    if session.state not in (SessionState.APPROVED, SessionState.ACTIVE, SessionState.REQUESTED):
        raise AccessRefused("session_over", f"session {session.id} is {session.state.value}")
    if not session.in_window(now):
        raise AccessRefused("window_closed", f"session {session.id} is outside its window")
    req = session.request
    return SessionGrant(
        session_id=session.id,
        device_serial=req.device_serial,
        engineer=req.engineer,
        shell=req.capabilities.shell,
        file_transfer=req.capabilities.file_transfer,
        ports=req.capabilities.port_numbers,
        not_before=req.window_start,
        not_after=req.window_end,
        approvers=session.approvers,
        emergency=session.emergency,
    )


class MemorySessionAuthority:
    def __init__(self, approval_key: SigningKey) -> None:
        self._approval_key = approval_key
        self.sessions: dict[str, MaintenanceSession] = {}
        self.device_keys: dict[str, VerifyKey] = {}
        self.recordings: dict[str, list[tuple[Path, str]]] = {}
        self.events: list[SessionEvent] = []

    def put(self, session: MaintenanceSession, event: SessionEvent | None = None) -> MaintenanceSession:
        self.sessions[session.id] = session
        if event is not None:
            self.events.append(event)
        return session

    def grant(self, session_id: str, now: int) -> SessionGrant:
        session = self.sessions.get(session_id)
        if session is None:
            raise AccessRefused("unknown_session", f"no session {session_id!r}")
        return grant_for(session, now)

    def ticket(self, session_id: str, now: int) -> SessionTicket:
        self.grant(session_id, now)
        return issue_ticket(self.sessions[session_id], self._approval_key)

    def device_key(self, serial: str) -> VerifyKey | None:
        return self.device_keys.get(serial)

    def recording_sealed(self, session_id: str, path: Path, sha256: str) -> None:
        self.recordings.setdefault(session_id, []).append((path, sha256))
