"""In headless Chromium: a release engineer assembles a milestone package in the portal form and the hospital's
responsible person finds it in their list (SM-2, SM-4)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server" / "milestones"))
from milestone_support import PRODUCT, published_release

from conftest import sign_in_browser

pytestmark = [pytest.mark.browser, pytest.mark.req("SM-2"), pytest.mark.req("SM-4")]


def test_engineer_assembles_a_package_and_the_hospital_finds_it(new_page: Any, live_server: Any, totp: Any) -> None:
    published_release(live_server.ctx, "2.0")
    users = live_server.seed.users
    maker = new_page("en-US")
    sign_in_browser(maker, live_server.url, users["maker-release"], totp, next_path="/milestones", lang="en")
    assert maker.url.endswith("/milestones")
    form = maker.get_by_role("region", name="Assemble a milestone package")
    form.get_by_label("Release").select_option(label=f"{PRODUCT} 2.0")
    form.get_by_label("Milestone").select_option(label="Release")
    form.get_by_role("button", name="Assemble and deliver").click()
    assert maker.get_by_role("heading", name=f"{PRODUCT} 2.0: Release", level=1).is_visible()
    deliveries = maker.get_by_role("table", name="Delivery to hospitals")
    assert deliveries.get_by_role("row").count() == 3  # header and both hospitals with the product
    milestone_path = maker.url.removeprefix(live_server.url)

    hospital = new_page("ja-JP")
    sign_in_browser(hospital, live_server.url, users["a-responsible"], totp, next_path="/milestones", lang="ja")
    assert hospital.url.endswith("/milestones")
    assert hospital.get_by_role("heading", name="マイルストーン文書", level=1).is_visible()
    assert hospital.get_by_role("region", name="マイルストーンパッケージの作成").count() == 0
    hospital.get_by_role("link", name=f"{PRODUCT} 2.0").click()
    assert hospital.url.endswith(milestone_path)
    assert hospital.locator("#delivery-status").inner_text() == "通知済み・未開封"
