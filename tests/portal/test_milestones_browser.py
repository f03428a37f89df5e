"""A hospital's responsible person acknowledges a milestone package in headless Chromium (SM-2, SM-4)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server" / "milestones"))
from milestone_support import principal, published_release

from conftest import sign_in_browser
from medsec.server.models import Release
from medsec.server.services import milestones
from medsec.server.services.milestones import MilestoneKind

pytestmark = [pytest.mark.browser, pytest.mark.req("SM-2"), pytest.mark.req("SM-4")]


def test_responsible_person_acknowledges_a_release_package(new_page: Any, live_server: Any, totp: Any) -> None:
    ctx = live_server.ctx
    rid = published_release(ctx, "2.0")
    actor = principal(ctx, "maker-release")
    with ctx.tx() as s:
        release = s.get(Release, rid)
        mid = milestones.assemble(s, ctx.audit, actor, release, MilestoneKind.RELEASE, today=dt.date(2027, 1, 1)).id

    page = new_page("ja-JP")
    user = live_server.seed.users["a-responsible"]
    sign_in_browser(page, live_server.url, user, totp, next_path="/milestones", lang="ja")

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
