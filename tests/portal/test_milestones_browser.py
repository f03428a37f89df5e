"""A hospital's responsible person acknowledges a milestone package in headless Chromium (SM-2, SM-4)."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server" / "milestones"))
from milestone_support import principal, published_release

from medsec.server.models import Release
from medsec.server.services import milestones
from medsec.server.services.milestones import MilestoneKind

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.req("SM-2"),
    pytest.mark.req("SM-4"),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
    ),
]


@pytest.fixture
def browser_page() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                locale="ja-JP", viewport={"width": 1280, "height": 900}, accept_downloads=True
            )
            page = context.new_page()
            page.set_default_timeout(15_000)
            yield page
            context.close()
        finally:
            browser.close()


def test_responsible_person_acknowledges_a_release_package(browser_page: Any, live_server: Any, totp: Any) -> None:
    ctx = live_server.ctx
    rid = published_release(ctx, "2.0")
    actor = principal(ctx, "maker-release")
    with ctx.tx() as s:
        release = s.get(Release, rid)
        mid = milestones.assemble(s, ctx.audit, actor, release, MilestoneKind.RELEASE, today=dt.date(2027, 1, 1)).id

    page = browser_page
    user = live_server.seed.users["a-responsible"]
    page.goto(f"{live_server.url}/milestones")
    page.locator("#username").fill(user.username)
    page.locator("#password").fill(user.password)
    page.get_by_role("button", name="ログイン").click()
    page.get_by_label("6 桁のコード").fill(totp.next(user))
    page.get_by_role("button", name="検証").click()

    assert page.url.endswith("/milestones")
    assert page.get_by_role("heading", name="マイルストーン文書", level=1).is_visible()
    page.get_by_role("navigation", name="メイン").get_by_role("link", name="マイルストーン").is_visible()
    page.get_by_role("link", name="infusion-pump 2.0").click()
    assert page.url.endswith(f"/milestones/{mid}")
    table = page.get_by_role("table", name="このパッケージの文書")
    assert table.get_by_role("rowheader", name="SBOM(CycloneDX)").is_visible()
    with page.expect_download() as download:
        table.get_by_role("link", name="infusion-pump-2.0-sbom.cdx.json").click()
    assert download.value.suggested_filename == "infusion-pump-2.0-sbom.cdx.json"

    page.get_by_role("button", name="受領を確認する").click()
    assert page.locator("#delivery-status").inner_text() == "受領確認済み"
    assert page.get_by_text("Sakura responsible person (a-responsible)").is_visible()
    assert page.get_by_role("button", name="受領を確認する").count() == 0

    hospital_a = principal(ctx, "a-responsible").organization_id
    with ctx.tx() as s:
        delivery = milestones.delivery_for(s.get(milestones.Milestone, mid), hospital_a)
        assert delivery is not None and delivery.acknowledged_by == "a-responsible"
        assert delivery.first_opened_at is not None and delivery.first_opened_at <= delivery.acknowledged_at
