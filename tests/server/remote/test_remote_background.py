"""The server's lifespan loop escalates overdue remote-maintenance sessions by itself (RA-1, RA-3)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from medsec.server.app import create_app
from medsec.server.context import ServerContext
from medsec.server.models import AuditEntry, User
from medsec.server.principal import Principal
from medsec.server.seed import Seed
from medsec.server.services import remote_sessions as remote

pytestmark = pytest.mark.req("RA-3")

DAY = 24 * 3600


def _emergency_request(ctx: ServerContext) -> str:
    now = int(time.time())
    with ctx.tx() as db:
        engineer = Principal.of(db.scalar(select(User).where(User.username == "maker-service")), mfa_verified=True)
        row = remote.request_session(
            db,
            ctx.audit,
            engineer,
            serial="IC300-0001",
            purpose="pump alarms on every start",
            planned_work="read the alarm log, reset the sensor",
            expected_impact="pump unavailable for 5 minutes",
            expected_downtime_minutes=5,
            rollback="none needed: read-only first",
            shell=True,
            file_transfer=False,
            ports=[],
            window_start=now,
            window_end=now + 3600,
            emergency=True,
            now=now,
        )
        return row.id


def _overdue_events(ctx: ServerContext) -> list[str]:
    with ctx.tx() as db:
        return list(
            db.scalars(
                select(AuditEntry.event_type).where(
                    AuditEntry.event_type == "remote.session.emergency_approval_overdue"
                )
            )
        )


def run_lifespan(app: FastAPI, until: Callable[[], bool], timeout: float) -> None:
    """Start the app's lifespan (its background loops), wait for ``until`` or ``timeout``, stop it."""

    async def main() -> None:
        async with app.router.lifespan_context(app):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if await asyncio.to_thread(until):
                    return
                await asyncio.sleep(0.05)

    asyncio.run(main())


def test_lifespan_loop_escalates_an_unapproved_emergency(ctx: ServerContext, seeded: Seed) -> None:
    sid = _emergency_request(ctx)
    settings = ctx.settings.model_copy(update={"remote_tick_seconds": 0.05, "updates_tick_seconds": 0})
    later = 25 * 3600
    app = create_app(settings, context=ctx, clock=lambda: time.time() + later)
    run_lifespan(app, lambda: bool(_overdue_events(ctx)), timeout=10)
    assert _overdue_events(ctx) == ["remote.session.emergency_approval_overdue"]  # once, however many ticks
    with ctx.tx() as db:
        assert db.get(remote.RemoteSession, sid).emergency_overdue


def test_lifespan_loop_leaves_sessions_alone_before_they_are_due(ctx: ServerContext, seeded: Seed) -> None:
    _emergency_request(ctx)
    settings = ctx.settings.model_copy(update={"remote_tick_seconds": 0.05, "updates_tick_seconds": 0})
    run_lifespan(create_app(settings, context=ctx), lambda: False, timeout=0.3)
    assert _overdue_events(ctx) == []


def test_zero_tick_turns_the_loop_off(ctx: ServerContext, seeded: Seed) -> None:
    _emergency_request(ctx)
    settings = ctx.settings.model_copy(update={"remote_tick_seconds": 0, "updates_tick_seconds": 0})
    run_lifespan(create_app(settings, context=ctx, clock=lambda: time.time() + 2 * DAY), lambda: False, timeout=0.3)
    assert _overdue_events(ctx) == []
