"""Entry point for ASGI servers: ``uvicorn --factory medsec.server.asgi:app`` (settings from MEDSEC_*)."""

from __future__ import annotations

from fastapi import FastAPI

from medsec.server.app import create_app
from medsec.server.settings import Settings


def app() -> FastAPI:
    return create_app(Settings())
