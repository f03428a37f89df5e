"""Remote-maintenance test set-up shared by the server, portal and report tests: the seeded people
and a session requested by ``maker-service`` and approved by ``a-responsible``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from medsec.server.context import ServerContext
from medsec.server.models import User
from medsec.server.principal import Principal
from medsec.server.services import remote_sessions as remote


def people(ctx: ServerContext) -> dict[str, Principal]:
    """Every seeded user, signed in with MFA."""
    with ctx.tx() as db:
        return {u.username: Principal.of(u, mfa_verified=True) for u in db.scalars(select(User))}


def approved_session(ctx: ServerContext, serial: str, now: int, *, comment: str = "", **plan: Any) -> str:
    """A one-hour shell session on ``serial``, requested and approved at ``now``; ``plan`` overrides the request."""
    who = people(ctx)
    request: dict[str, Any] = {
        "purpose": "quarterly inspection",
        "planned_work": "read status",
        "expected_impact": "none",
        "expected_downtime_minutes": 0,
        "rollback": "none",
        "shell": True,
        "file_transfer": False,
        "ports": [],
        "window_start": now - 5,
        "window_end": now + 3600,
        "emergency": False,
    } | plan
    with ctx.tx() as db:
        sid = remote.request_session(db, ctx.audit, who["maker-service"], serial=serial, now=now, **request).id
        remote.approve(db, ctx.audit, who["a-responsible"], sid, comment=comment, now=now)
    return str(sid)
