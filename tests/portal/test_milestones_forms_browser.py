"""In headless Chromium: a release engineer assembles a milestone package in the portal form and the hospital's
responsible person finds it in their list (SM-2, SM-4)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server" / "milestones"))
from milestone_support import PRODUCT, published_release

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
BUTTONS = {"en-US": ("Sign in", "Verify"), "ja-JP": ("ログイン", "検証")}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.req("SM-2"),
    pytest.mark.req("SM-4"),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
    ),
]


@pytest.fixture
def chromium() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def signed_in_page(browser: Any, live_server: Any, totp: Any, username: str, path: str, locale: str) -> Any:
    """A page of a fresh browser profile, signed in through the login and second-factor forms."""
    page = browser.new_context(locale=locale, viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(15_000)
    user = live_server.seed.users[username]
    sign_in_label, verify_label = BUTTONS[locale]
    page.goto(f"{live_server.url}{path}")
    page.locator("#username").fill(user.username)
    page.locator("#password").fill(user.password)
    page.get_by_role("button", name=sign_in_label).click()
    page.locator("#code").fill(totp.next(user))
    page.get_by_role("button", name=verify_label).click()
    assert page.url.endswith(path)
    return page


def test_engineer_assembles_a_package_and_the_hospital_finds_it(chromium: Any, live_server: Any, totp: Any) -> None:
    published_release(live_server.ctx, "2.0")
    maker = signed_in_page(chromium, live_server, totp, "maker-release", "/milestones", "en-US")
    form = maker.get_by_role("region", name="Assemble a milestone package")
    form.get_by_label("Release").select_option(label=f"{PRODUCT} 2.0")
    form.get_by_label("Milestone").select_option(label="Release")
    form.get_by_role("button", name="Assemble and deliver").click()
    assert maker.get_by_role("heading", name=f"{PRODUCT} 2.0: Release", level=1).is_visible()
    deliveries = maker.get_by_role("table", name="Delivery to hospitals")
    assert deliveries.get_by_role("row").count() == 3  # header and both hospitals with the product
    milestone_path = maker.url.removeprefix(live_server.url)

    hospital = signed_in_page(chromium, live_server, totp, "a-responsible", "/milestones", "ja-JP")
    assert hospital.get_by_role("heading", name="マイルストーン文書", level=1).is_visible()
    assert hospital.get_by_role("region", name="マイルストーンパッケージの作成").count() == 0
    hospital.get_by_role("link", name=f"{PRODUCT} 2.0").click()
    assert hospital.url.endswith(milestone_path)
    assert hospital.locator("#delivery-status").inner_text() == "通知済み・未開封"
