"""Portal helpers: sign in through the real forms (over HTTP or in headless Chromium), fresh TOTP codes, devices
that have checked in."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from medsec.agent.access_log import AccessLog
from medsec.crypto.keys import SigningKey
from medsec.protocol import EnrollmentRequest, VersionReport
from medsec.server.seed import SeedUser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-sync"]
# The login forms' visible labels: username, sign-in button, code field, verify button.
LOGIN_LABELS = {
    "ja": ("ユーザー名", "ログイン", "6 桁のコード", "検証"),
    "en": ("Username", "Sign in", "6-digit code", "Verify"),
}
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "page has no CSRF token"
    return match.group(1)


@dataclass
class TotpCodes:
    """Codes the server will accept: it refuses a time step it has already seen, so never reuse one."""

    used: dict[str, int] = field(default_factory=dict)

    def next(self, user: SeedUser) -> str:
        assert user.totp_secret
        now = int(time.time()) // 30
        step = max(now, self.used.get(user.username, -1) + 1)
        if step > now + 1:  # both the current and the next step are spent: wait for the clock
            time.sleep((step - 1) * 30 - time.time() + 0.2)
        self.used[user.username] = step
        return str(pyotp.TOTP(user.totp_secret).generate_otp(step))

    def for_secret(self, name: str, secret: str) -> str:
        return self.next(SeedUser(name, "", secret, frozenset(), ""))


@pytest.fixture
def totp() -> TotpCodes:
    return TotpCodes()


def sign_in(client: httpx.Client, user: SeedUser, totp: TotpCodes, *, next_path: str = "/devices") -> httpx.Response:
    """Password, then the second factor when the account needs one; returns the landing page."""
    page = client.get("/login", params={"next": next_path})
    assert page.status_code == 200
    answer = client.post(
        "/login",
        data={
            "username": user.username,
            "password": user.password,
            "csrf_token": csrf_of(page.text),
            "next": next_path,
        },
    )
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    if location.startswith("/login/totp"):
        form = client.get(location)
        answer = client.post(
            "/login/totp", data={"code": totp.next(user), "csrf_token": csrf_of(form.text), "next": next_path}
        )
        assert answer.status_code == 303, answer.text
        location = answer.headers["location"]
    assert location == next_path
    return client.get(location)


@pytest.fixture
def new_page() -> Iterator[Callable[[str], Any]]:
    """Opens pages in Debian's headless Chromium: ``new_page("ja-JP")`` gives a page of a fresh browser profile
    with that locale. Every page of a test shares one browser."""
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright's Python package")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        contexts: list[Any] = []

        def open_page(locale: str) -> Any:
            context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 900}, accept_downloads=True)
            contexts.append(context)
            page = context.new_page()
            page.set_default_timeout(15_000)
            return page

        try:
            yield open_page
        finally:
            for context in contexts:
                context.close()
            browser.close()


def sign_in_browser(
    page: Any, base_url: str, user: SeedUser, totp: TotpCodes, *, next_path: str | None = None, lang: str
) -> None:
    """Password, then the one-time code, typed into the login forms in ``lang`` ("ja" or "en").

    With ``next_path`` the page first opens that path, which the portal answers with its login form and returns to
    afterwards; without it the login form must already be showing."""
    username, sign_in_button, code, verify = LOGIN_LABELS[lang]
    if next_path is not None:
        page.goto(f"{base_url}{next_path}")
    page.get_by_label(username).fill(user.username)
    page.locator("#password").fill(user.password)
    page.get_by_role("button", name=sign_in_button).click()
    page.get_by_label(code).fill(totp.next(user))
    page.get_by_role("button", name=verify).click()


@pytest.fixture
def client_factory(live_server: Any) -> Iterator[type[httpx.Client]]:
    clients: list[httpx.Client] = []
    base = live_server.url

    class Client(httpx.Client):
        def __init__(self, *, lang: str | None = "en", **kwargs: Any) -> None:
            """``lang`` presets the language switch's cookie (seeded hospital users prefer Japanese)."""
            headers = {"accept-language": "en"}
            headers.update(kwargs.pop("headers", {}) or {})
            super().__init__(base_url=base, headers=headers, timeout=30, **kwargs)
            if lang is not None:
                self.cookies.set("medsec_lang", lang)
            clients.append(self)

    yield Client
    for c in clients:
        c.close()


@dataclass
class CheckedInDevice:
    serial: str
    key: SigningKey
    version: str


def enroll_and_check_in(base_url: str, serial: str, hardware_id: str, token: str, log_dir: Path) -> CheckedInDevice:
    """Enroll a simulated device and send two signed reports, the second with an access-log checkpoint."""
    key = SigningKey.generate()
    req = EnrollmentRequest(token=token, serial=serial, hardware_id=hardware_id, public_key=key.verify_key.to_base64())
    r = httpx.post(f"{base_url}/api/v1/enroll", json=req.sign(key))
    assert r.status_code == 200, r.text
    nonce = r.json()["nonce"]
    log = AccessLog(log_dir / serial, serial, key)
    log.record("agent.started")
    log.record("agent.port_policy_applied", ports=0)
    for counter, checkpoint in ((1, None), (2, log.checkpoint())):
        report = VersionReport(
            serial=serial,
            hardware_id=hardware_id,
            installed_version="2.4.1",
            agent_state="running",
            counter=counter,
            nonce=nonce,
            sent_at=int(time.time()),
            log_checkpoint=checkpoint,
        )
        r = httpx.post(f"{base_url}/api/v1/checkin", json=report.sign(key))
        assert r.status_code == 200, r.text
        nonce = r.json()["nonce"]
    return CheckedInDevice(serial, key, "2.4.1")


@pytest.fixture
def checked_in(live_server: Any, tmp_path: Path) -> dict[str, CheckedInDevice]:
    """One device per hospital has enrolled and reported (IC300-0001 at hospital-a, IC300-0003 at hospital-b)."""
    server = live_server
    out = {}
    for d in server.seed.devices:
        if d.serial in ("IC300-0001", "IC300-0003"):
            out[d.serial] = enroll_and_check_in(
                server.url,
                d.serial,
                d.hardware_id,
                d.enrollment_token,
                tmp_path / "devices",
            )
    return out


def wrong_code(secret: str) -> str:
    """A six-digit code that is not valid around now (so the test never passes by luck)."""
    totp = pyotp.TOTP(secret)
    now = int(time.time()) // 30
    valid = {totp.generate_otp(s) for s in range(now - 2, now + 3)}
    return next(c for c in (f"{n:06d}" for n in range(1000)) if c not in valid)
