"""A portal client signed in as a seed user (session created directly, second factor marked verified)."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select

from medsec.server.models import User
from medsec.server.services import accounts


def signed_in_client(live_server: Any, username: str) -> httpx.Client:
    with live_server.ctx.tx() as s:
        user = s.scalar(select(User).where(User.username == username))
        cookie, _row = accounts.create_web_session(s, live_server.ctx.settings, user, mfa_verified=True)
    client = httpx.Client(base_url=live_server.url, follow_redirects=False)
    client.cookies.set("medsec_session", cookie)
    return client
