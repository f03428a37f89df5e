"""The portal in a real headless Chromium, without downloading a browser: sign in with TOTP, see the
hospital's devices, verify the audit log, in English and in Japanese (switched through the UI)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from conftest import sign_in_browser

SCREENSHOTS = Path(os.environ.get("MEDSEC_PORTAL_SCREENSHOTS", "/tmp/medsec-portal-screenshots"))

pytestmark = pytest.mark.browser


def _screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


@pytest.mark.req("PA-1")
@pytest.mark.req("RA-2")
def test_hospital_user_in_english(new_page: Any, live_server: Any, totp: Any, checked_in: Any) -> None:
    page = new_page("en-US")
    user = live_server.seed.users["a-responsible"]  # prefers Japanese; the switch overrides that
    page.goto(f"{live_server.url}/devices")
    page.get_by_role("link", name="English").click()
    assert page.locator("html").get_attribute("lang") == "en"
    sign_in_browser(page, live_server.url, user, totp, lang="en")

    assert page.url.endswith("/devices")
    assert page.locator("html").get_attribute("lang") == "en"
    table = page.get_by_role("table", name="Devices at Sakura General Hospital")
    assert table.get_by_role("rowheader", name="IC300-0001").is_visible()
    assert table.get_by_role("rowheader", name="IC300-0002").is_visible()
    assert page.get_by_text("IC300-0003").count() == 0
    _screenshot(page, "devices-en.png")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
    assert page.get_by_role("heading", name="Audit log", level=1).is_visible()
    page.get_by_role("button", name="Verify").click()
    status = page.get_by_role("status")
    assert "The audit log verified." in status.inner_text()
    _screenshot(page, "audit-en.png")

    page.get_by_role("button", name="Sign out").click()
    assert "/login" in page.url


@pytest.mark.req("PA-1")
@pytest.mark.req("RA-2")
def test_manufacturer_in_japanese(new_page: Any, live_server: Any, totp: Any, checked_in: Any) -> None:
    page = new_page("en-US")
    user = live_server.seed.users["maker-admin"]
    page.goto(f"{live_server.url}/login")
    assert page.locator("html").get_attribute("lang") == "en"
    page.get_by_role("link", name="日本語").click()
    assert page.locator("html").get_attribute("lang") == "ja"
    _screenshot(page, "login-ja.png")
    sign_in_browser(page, live_server.url, user, totp, lang="ja")

    assert page.url.endswith("/devices")
    assert page.get_by_role("heading", name="機器", level=1).is_visible()
    assert page.get_by_role("columnheader", name="最終チェックイン").first.is_visible()
    assert page.get_by_role("table", name="Minato University Hospital の機器", exact=False).is_visible()
    page.get_by_label("医療機関").select_option("hospital-a")
    page.get_by_role("button", name="表示").click()
    assert "hospital=hospital-a" in page.url
    assert page.get_by_text("IC300-0003").count() == 0
    _screenshot(page, "devices-ja.png")

    page.get_by_role("link", name="IC300-0001").click()
    assert page.get_by_role("heading", name="機器 IC300-0001").is_visible()
    assert page.get_by_role("heading", name="署名付きチェックイン").is_visible()

    page.get_by_role("navigation", name="メイン").get_by_role("link", name="監査ログ").click()
    page.get_by_role("button", name="検証").click()
    assert "監査ログの検証に成功しました。" in page.get_by_role("status").inner_text()
    _screenshot(page, "audit-ja.png")

    # keyboard users reach the skip link first and land on the main content
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.getAttribute('href')") == "#main"
