"""The ASGI application factory. Nothing is built at import time."""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medsec import __version__
from medsec.errors import ServiceError
from medsec.server.context import ServerContext, build_context
from medsec.server.services.accounts import AuditedRefusal, record_failed_login
from medsec.server.settings import Settings

logger = logging.getLogger(__name__)


def error_body(code: str, detail: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail}


def record_refusal(ctx: ServerContext, exc: AuditedRefusal) -> None:
    """Log a refused request in its own transaction (the request's own one was rolled back)."""
    try:
        with ctx.tx() as session:
            ctx.audit.append(
                session,
                exc.event_type,
                actor=exc.actor,
                organization_id=exc.organization_id,
                details={**exc.details, "code": exc.code},
            )
            if exc.event_type == "auth.login_failed" and exc.actor:
                record_failed_login(session, ctx.settings, exc.actor)
    except Exception:
        logger.exception("could not record refusal %s in the audit log", exc.code)


class BodySizeLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    await self._refuse(send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(error_body("request_too_large", f"request body is over {self.limit} bytes"), 413)
        await response({"type": "http"}, _empty_receive, send)


class _TooLarge(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}


def check_remote_sessions(ctx: ServerContext, now: int) -> list[str]:
    """One escalation pass over the remote-maintenance sessions (RA-3), in its own transaction."""
    from medsec.server.services.remote_sessions import check_overdue

    with ctx.tx() as db:
        return check_overdue(db, ctx.audit, now)


def create_app(
    settings: Settings | None = None,
    context: ServerContext | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """Build the server. Pass ``context`` to share one (tests), else it is built from ``settings``.

    ``clock`` is the time the background loops act on; tests pass a later one to see escalations.
    """
    settings = settings or Settings()
    ctx = context or build_context(settings)

    from medsec.server.services.update_background import UpdateRuntime

    updates = UpdateRuntime(ctx)

    async def update_loop(stop: asyncio.Event) -> None:
        # Re-signing, release sync, campaign steps and notifications (SM-1, SM-2); in a thread: it does I/O.
        while not stop.is_set():
            try:
                await asyncio.to_thread(updates.step)
            except Exception:
                logger.exception("update background step failed")
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.updates_tick_seconds)

    async def remote_loop(stop: asyncio.Event) -> None:
        # Unconfirmed ends, late emergency approvals, sessions past their window (RA-1, RA-3).
        while not stop.is_set():
            try:
                touched = await asyncio.to_thread(check_remote_sessions, ctx, int(clock()))
                if touched:
                    logger.info("remote sessions escalated or closed: %s", ", ".join(touched))
            except Exception:
                logger.exception("remote-maintenance background check failed")
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.remote_tick_seconds)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        if settings.updates_tick_seconds > 0:
            tasks.append(asyncio.create_task(update_loop(stop)))
        if settings.remote_tick_seconds > 0:
            tasks.append(asyncio.create_task(remote_loop(stop)))
        yield
        stop.set()
        for task in tasks:
            await task
        if context is None:
            ctx.close()

    app = FastAPI(
        title="medsec",
        version=__version__,
        description="Manufacturer server for medical-device cybersecurity: devices, hospitals, audit log.",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.state.updates = updates

    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        if isinstance(exc, AuditedRefusal):
            record_refusal(ctx, exc)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(error_body(exc.code, str(exc)), exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return JSONResponse(error_body("invalid_request", problems), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        wants_html = "text/html" in request.headers.get("accept", "") and not request.url.path.startswith("/api/")
        if wants_html:
            # A person followed a wrong link: a page, not a JSON body.
            page = (
                '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>medsec</title>'
                '<link rel="stylesheet" href="/static/portal.css"></head><body>'
                f'<main id="main"><h1>{exc.status_code}</h1>'
                f'<p>{html.escape(str(exc.detail))}</p><p><a href="/">medsec</a></p></main></body></html>'
            )
            return HTMLResponse(page, exc.status_code)
        return JSONResponse(error_body(code, exc.detail), exc.status_code, headers=getattr(exc, "headers", None))

    from medsec.server.api import router as api_router
    from medsec.server.api_updates import mount_repository
    from medsec.server.api_updates import router as updates_api_router
    from medsec.server.portal import router as portal_router
    from medsec.server.portal_updates import router as updates_portal_router

    app.include_router(api_router)
    app.include_router(updates_api_router)
    app.include_router(portal_router)
    app.include_router(updates_portal_router)
    from medsec.server.portal import mount_static

    mount_static(app)
    from medsec.server.api_vulns import router as vulns_api_router
    from medsec.server.portal_vulns import mount_csaf
    from medsec.server.portal_vulns import router as vulns_portal_router

    app.include_router(vulns_api_router)
    app.include_router(vulns_portal_router)
    mount_csaf(app, settings.csaf_root)
    from medsec.server.api_remote import router as remote_api_router
    from medsec.server.portal_remote import router as remote_portal_router

    app.include_router(remote_api_router)
    app.include_router(remote_portal_router)
    from medsec.server.api_protect import router as protect_api_router
    from medsec.server.portal_protect import router as protect_portal_router

    app.include_router(protect_api_router)
    app.include_router(protect_portal_router)
    from medsec.server.api_reports import router as reports_api_router
    from medsec.server.portal_reports import router as reports_portal_router

    app.include_router(reports_api_router)
    app.include_router(reports_portal_router)
    from medsec.server.api_milestones import router as milestones_api_router
    from medsec.server.portal_milestones import router as milestones_portal_router

    app.include_router(milestones_api_router)
    app.include_router(milestones_portal_router)
    mount_repository(app, settings.repo_dir)
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes)
    return app
