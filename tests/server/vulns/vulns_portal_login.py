"""Signing in to the portal through its real forms, for the vulnerability page tests."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pyotp

from medsec.server.seed import SeedUser

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
_used_steps: dict[str, int] = {}


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "page has no CSRF token"
    return match.group(1)


def _code(user: SeedUser) -> str:
    """A TOTP code for a time step the server has not seen yet (it refuses a step used before)."""
    assert user.totp_secret
    now = int(time.time()) // 30
    step = max(now, _used_steps.get(user.totp_secret, -1) + 1)
    if step > now + 1:
        time.sleep((step - 1) * 30 - time.time() + 0.2)
    _used_steps[user.totp_secret] = step
    return str(pyotp.TOTP(user.totp_secret).generate_otp(step))


@contextmanager
def portal_client(base_url: str, user: SeedUser, *, lang: str = "en") -> Iterator[httpx.Client]:
    """A client signed in as ``user`` (password, then TOTP when the account has one)."""
    with httpx.Client(base_url=base_url, timeout=30, headers={"accept-language": lang}) as client:
        _sign_in(client, user, lang)
        yield client


def _sign_in(client: httpx.Client, user: SeedUser, lang: str) -> None:
    client.cookies.set("medsec_lang", lang)
    page = client.get("/login", params={"next": "/vulns"})
    answer = client.post(
        "/login",
        data={"username": user.username, "password": user.password, "csrf_token": csrf_of(page.text), "next": "/vulns"},
    )
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    if location.startswith("/login/totp"):
        form = client.get(location)
        answer = client.post(
            "/login/totp", data={"code": _code(user), "csrf_token": csrf_of(form.text), "next": "/vulns"}
        )
        assert answer.status_code == 303, answer.text
