"""The manufacturer's milestone forms over real HTTP: assemble a package, write a product's security policy and
maintenance plan; CSRF, roles, and a hospital refused like for any other forbidden action (SM-2, SM-4)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server" / "milestones"))
from milestone_support import PRODUCT, published_release
from sqlalchemy import func, select

from conftest import csrf_of, sign_in
from medsec.server.models import AuditEntry
from medsec.server.models_milestones import Milestone, ProductDocument
from medsec.server.services import sboms

pytestmark = [pytest.mark.req("SM-2"), pytest.mark.req("SM-4")]
POLICY_EN = "Report vulnerabilities to psirt@example.com; we answer within 5 days."
POLICY_JA = "脆弱性は psirt@example.com へ報告してください。5日以内に回答します。"


def _count(ctx: Any, model: Any) -> int:
    with ctx.tx() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _events(ctx: Any, event_type: str) -> list[dict[str, Any]]:
    with ctx.tx() as s:
        rows = s.scalars(select(AuditEntry).where(AuditEntry.event_type == event_type).order_by(AuditEntry.idx))
        return [json.loads(e.body) for e in rows]


def test_manufacturer_assembles_a_package_and_the_hospital_sees_it(
    client_factory: Any, live_server: Any, totp: Any
) -> None:
    rid = published_release(live_server.ctx, "2.0")
    maker = client_factory(lang="en")
    page = sign_in(maker, live_server.seed.users["maker-release"], totp, next_path="/milestones")
    assert "Assemble a milestone package" in page.text
    assert f'<option value="{rid}">{PRODUCT} 2.0</option>' in page.text

    forged = maker.post("/milestones", data={"csrf_token": "forged", "release": str(rid), "kind": "release"})
    assert forged.status_code == 403 and _count(live_server.ctx, Milestone) == 0
    done = maker.post("/milestones", data={"csrf_token": csrf_of(page.text), "release": str(rid), "kind": "release"})
    assert done.status_code == 303
    mid = int(done.headers["location"].rsplit("/", 1)[1])
    detail = maker.get(done.headers["location"]).text
    assert "Delivery to hospitals" in detail and "Fill in missing documents" in detail
    created = _events(live_server.ctx, "milestone.created")
    assert [(e["actor"], e["details"]["milestone"]) for e in created] == [("maker-release", mid)]

    hospital = client_factory(lang="ja")
    listing = sign_in(hospital, live_server.seed.users["a-responsible"], totp, next_path="/milestones").text
    assert f'href="/milestones/{mid}"' in listing
    assert 'action="/milestones"' not in listing and "マイルストーンパッケージの作成" not in listing
    assert "不足文書を追加する" not in hospital.get(f"/milestones/{mid}").text


def test_a_package_whose_moment_has_not_come_is_refused_with_the_reason(
    client_factory: Any, live_server: Any, totp: Any
) -> None:
    with live_server.ctx.tx() as s:
        draft = sboms.ensure_release(s, PRODUCT, "9.9").id  # no signed update published yet
    maker = client_factory(lang="en")
    page = sign_in(maker, live_server.seed.users["maker-admin"], totp, next_path="/milestones")
    answer = maker.post("/milestones", data={"csrf_token": csrf_of(page.text), "release": str(draft), "kind": "eol"})
    assert answer.status_code == 409
    assert "has no declared EOL date" in answer.text
    assert f'<option value="{draft}" selected>' in answer.text  # the choice survives the refusal
    bad = maker.post("/milestones", data={"csrf_token": csrf_of(page.text), "release": "x", "kind": "release"})
    assert bad.status_code == 422 and "release: choose a release from the list" in bad.text
    assert _count(live_server.ctx, Milestone) == 0


def test_hospital_posting_the_manufacturer_forms_is_refused(client_factory: Any, live_server: Any, totp: Any) -> None:
    rid = published_release(live_server.ctx, "2.0")
    hospital = client_factory(lang="en")
    page = sign_in(hospital, live_server.seed.users["a-admin"], totp, next_path="/milestones")
    token = csrf_of(page.text)
    create = hospital.post("/milestones", data={"csrf_token": token, "release": str(rid), "kind": "release"})
    assert create.status_code == 404
    document = hospital.post(
        "/milestones/product-documents",
        data={"csrf_token": token, "product": PRODUCT, "kind": "security_policy", "text_en": "x", "text_ja": "x"},
    )
    assert document.status_code == 404
    assert hospital.get("/milestones/product-documents").status_code == 404
    assert _count(live_server.ctx, Milestone) == 0 and _count(live_server.ctx, ProductDocument) == 0


def test_admin_writes_the_policy_and_completes_the_package(client_factory: Any, live_server: Any, totp: Any) -> None:
    rid = published_release(live_server.ctx, "2.0")
    admin = client_factory(lang="en")
    page = sign_in(admin, live_server.seed.users["maker-admin"], totp, next_path="/milestones/product-documents")
    token = csrf_of(page.text)
    assert "Not written yet" in page.text
    created = admin.post("/milestones", data={"csrf_token": token, "release": str(rid), "kind": "release"})
    mid = int(created.headers["location"].rsplit("/", 1)[1])

    empty = admin.post(
        "/milestones/product-documents",
        data={"csrf_token": token, "product": PRODUCT, "kind": "security_policy", "text_en": POLICY_EN, "text_ja": " "},
    )
    assert empty.status_code == 422 and "text_ja is empty" in empty.text
    assert POLICY_EN in empty.text  # what was typed is still in the form
    for kind in ("security_policy", "maintenance_plan"):
        saved = admin.post(
            "/milestones/product-documents",
            data={"csrf_token": token, "product": PRODUCT, "kind": kind, "text_en": POLICY_EN, "text_ja": POLICY_JA},
        )
        assert saved.status_code == 303
    assert "Last saved by maker-admin" in admin.get("/milestones/product-documents").text
    audited = _events(live_server.ctx, "milestone.product_document")
    assert [(e["actor"], e["details"]["kind"]) for e in audited] == [
        ("maker-admin", "security_policy"),
        ("maker-admin", "maintenance_plan"),
    ]

    filled = admin.post("/milestones", data={"csrf_token": token, "release": str(rid), "kind": "release"})
    assert filled.status_code == 303 and filled.headers["location"] == f"/milestones/{mid}"
    with live_server.ctx.tx() as s:
        docs = {d.kind: d for d in s.get(Milestone, mid).documents}
        assert POLICY_JA in docs["security_policy"].content.decode()
        assert docs["maintenance_plan"].content is not None
    assert [e["actor"] for e in _events(live_server.ctx, "milestone.completed")] == ["maker-admin"]


def test_only_the_manufacturer_admin_edits_product_texts(client_factory: Any, live_server: Any, totp: Any) -> None:
    engineer = client_factory(lang="en")
    page = sign_in(engineer, live_server.seed.users["maker-release"], totp, next_path="/milestones/product-documents")
    assert page.status_code == 200 and 'name="text_en"' not in page.text
    answer = engineer.post(
        "/milestones/product-documents",
        data={
            "csrf_token": csrf_of(page.text),
            "product": PRODUCT,
            "kind": "security_policy",
            "text_en": POLICY_EN,
            "text_ja": POLICY_JA,
        },
    )
    assert answer.status_code == 403 and "Your role does not allow this." in answer.text
    assert _count(live_server.ctx, ProductDocument) == 0
