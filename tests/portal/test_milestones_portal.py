"""Milestone pages over real HTTP: hospital list and detail in Japanese, download, acknowledgement with CSRF,
the manufacturer's delivery table, and another hospital's milestone answering like a missing one."""

from __future__ import annotations

import datetime as dt
import hashlib
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server" / "milestones"))
from milestone_support import OTHER_PRODUCT, PRODUCT, other_product_at_hospital_a, principal, published_release

from conftest import csrf_of, sign_in
from medsec.server.models import Release
from medsec.server.services import milestones
from medsec.server.services.milestones import MilestoneKind

pytestmark = [pytest.mark.req("SM-2"), pytest.mark.req("SM-4")]


def _milestone(live_server: Any, version: str, product: str = PRODUCT) -> int:
    ctx = live_server.ctx
    rid = published_release(ctx, version, product=product)
    actor = principal(ctx, "maker-release")
    with ctx.tx() as s:
        return milestones.assemble(s, ctx.audit, actor, s.get(Release, rid), MilestoneKind.RELEASE, today=_today()).id


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def test_hospital_sees_downloads_and_acknowledges_in_japanese(client_factory: Any, live_server: Any, totp: Any) -> None:
    mid = _milestone(live_server, "2.0")
    client = client_factory(lang="ja")
    sign_in(client, live_server.seed.users["a-responsible"], totp, next_path="/milestones")
    page = client.get("/milestones")
    assert page.status_code == 200
    assert "マイルストーン文書" in page.text and f'href="/milestones/{mid}"' in page.text
    assert "通知済み・未開封" in page.text

    detail = client.get(f"/milestones/{mid}")
    assert "手動で作成する文書が必要です" in detail.text  # security policy and maintenance plan not written yet
    assert "受領を確認する" in detail.text
    sbom = client.get(f"/milestones/{mid}/documents/sbom")
    assert sbom.status_code == 200 and sbom.headers["content-disposition"].endswith('-sbom.cdx.json"')
    assert hashlib.sha256(sbom.content).hexdigest() in detail.text

    refused = client.post(f"/milestones/{mid}/acknowledge", data={"csrf_token": "forged"})
    assert refused.status_code == 403
    assert "受領済み・未確認" in client.get(f"/milestones/{mid}").text
    done = client.post(f"/milestones/{mid}/acknowledge", data={"csrf_token": csrf_of(detail.text)})
    assert done.status_code == 303
    after = client.get(f"/milestones/{mid}")
    assert 'id="delivery-status">受領確認済み<' in after.text and "Sakura responsible person" in after.text
    assert "受領を確認する" not in after.text


def test_manufacturer_sees_which_hospitals_acknowledged(client_factory: Any, live_server: Any, totp: Any) -> None:
    mid = _milestone(live_server, "2.0")
    actor = principal(live_server.ctx, "b-responsible")
    with live_server.ctx.tx() as s:
        milestones.acknowledge(s, live_server.ctx.audit, actor, milestones.get_milestone(s, actor, mid))
    client = client_factory(lang="en")
    sign_in(client, live_server.seed.users["maker-admin"], totp, next_path="/milestones")
    listing = client.get("/milestones").text
    assert "1 of 2 hospitals acknowledged" in listing
    detail = client.get(f"/milestones/{mid}").text
    assert "Delivery to hospitals" in detail
    assert "Minato responsible person (b-responsible)" in detail
    assert "Notified, not opened" in detail  # hospital A
    assert "manual document needed: a manufacturer admin writes the security policy" in detail
    assert "Acknowledge receipt" not in detail


def test_other_hospitals_milestone_page_is_a_plain_not_found(client_factory: Any, live_server: Any, totp: Any) -> None:
    other_product_at_hospital_a(live_server.ctx)
    mid = _milestone(live_server, "1.0", product=OTHER_PRODUCT)
    client = client_factory(lang="en")
    sign_in(client, live_server.seed.users["b-responsible"], totp, next_path="/milestones")
    theirs = client.get(f"/milestones/{mid}")
    missing = client.get(f"/milestones/{mid + 1000}")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.text.replace(f"/milestones/{mid}", "/milestones/N") == missing.text.replace(
        f"/milestones/{mid + 1000}", "/milestones/N"
    )
    assert client.get(f"/milestones/{mid}/documents/sbom").status_code == 404
    page = client.get(f"/milestones/{mid}")
    answer = client.post(f"/milestones/{mid}/acknowledge", data={"csrf_token": csrf_of(client.get("/milestones").text)})
    assert answer.status_code == 404 and page.status_code == 404
