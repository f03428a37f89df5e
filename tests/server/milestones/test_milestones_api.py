"""Milestone packages over the real HTTP API and the CLI: tenant isolation, downloads, acknowledgement."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
from milestone_support import OTHER_PRODUCT, PRODUCT, other_product_at_hospital_a, published_release
from sqlalchemy import select
from typer.testing import CliRunner

from medsec.cli.main import app
from medsec.server.models import AuditEntry

pytestmark = [pytest.mark.req("SM-2"), pytest.mark.req("SM-4")]
POLICY = {"text_en": "Our security policy.", "text_ja": "当社のセキュリティポリシー。"}


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _create(url: str, token: str, product: str, version: str, kind: str = "release") -> httpx.Response:
    return httpx.post(
        f"{url}/api/v1/milestones",
        json={"product": product, "version": version, "kind": kind},
        headers=_h(token),
        timeout=60,
    )


def test_another_hospitals_milestone_looks_exactly_like_a_missing_one(live_server) -> None:
    url, tokens, ctx = live_server.url, live_server.seed.tokens, live_server.ctx
    other_product_at_hospital_a(ctx)
    published_release(ctx, "1.0", product=OTHER_PRODUCT)
    r = _create(url, tokens["maker-release"], OTHER_PRODUCT, "1.0")
    assert r.status_code == 200, r.text
    mid = r.json()["id"]
    assert [d["hospital"] for d in r.json()["deliveries"]] == ["hospital-a"]

    b = _h(tokens["b-responsible"])
    theirs = httpx.get(f"{url}/api/v1/milestones/{mid}", headers=b)
    missing = httpx.get(f"{url}/api/v1/milestones/{mid + 1000}", headers=b)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()
    for path in (f"/api/v1/milestones/{mid}/documents/sbom", f"/api/v1/milestones/{mid}/acknowledge"):
        call = httpx.post if path.endswith("acknowledge") else httpx.get
        answer = call(f"{url}{path}", headers=b)
        assert (answer.status_code, answer.json()["error"]) == (404, "unknown_milestone")
    assert httpx.get(f"{url}/api/v1/milestones", headers=b).json() == []
    # a hospital cannot create packages or read product texts either, and is told nothing about them
    assert _create(url, tokens["b-responsible"], OTHER_PRODUCT, "1.0").status_code == 404
    assert httpx.get(f"{url}/api/v1/products/{PRODUCT}/documents", headers=b).status_code == 404

    a = _h(tokens["a-responsible"])
    listed = httpx.get(f"{url}/api/v1/milestones", headers=a).json()
    assert [m["id"] for m in listed] == [mid]
    assert "deliveries" not in listed[0] and listed[0]["delivery"]["status"] == "notified"


def test_hospital_downloads_and_acknowledges_and_the_manufacturer_sees_who(live_server) -> None:
    url, tokens, ctx = live_server.url, live_server.seed.tokens, live_server.ctx
    published_release(ctx, "2.0")
    put = httpx.put(
        f"{url}/api/v1/products/{PRODUCT}/documents/security_policy", json=POLICY, headers=_h(tokens["maker-release"])
    )
    assert put.status_code == 403
    put = httpx.put(
        f"{url}/api/v1/products/{PRODUCT}/documents/security_policy", json=POLICY, headers=_h(tokens["maker-admin"])
    )
    assert put.status_code == 200, put.text
    bad = httpx.put(f"{url}/api/v1/products/{PRODUCT}/documents/sbom", json=POLICY, headers=_h(tokens["maker-admin"]))
    assert (bad.status_code, bad.json()["error"]) == (422, "invalid_kind")
    assert _create(url, tokens["maker-service"], PRODUCT, "2.0").status_code == 403
    assert _create(url, tokens["maker-release"], PRODUCT, "2.0", "later").status_code == 422
    m = _create(url, tokens["maker-release"], PRODUCT, "2.0").json()
    mid = m["id"]

    a = _h(tokens["a-responsible"])
    doc = httpx.get(f"{url}/api/v1/milestones/{mid}/documents/security_policy", headers=a)
    assert doc.status_code == 200
    listed = next(d for d in m["documents"] if d["kind"] == "security_policy")
    assert hashlib.sha256(doc.content).hexdigest() == listed["sha256"] == doc.headers["x-content-sha256"]
    assert "当社のセキュリティポリシー。" in doc.text
    gap = httpx.get(f"{url}/api/v1/milestones/{mid}/documents/maintenance_plan", headers=a)
    assert (gap.status_code, gap.json()["error"]) == (404, "document_missing")
    assert "manual document needed" in gap.json()["detail"]

    assert httpx.post(f"{url}/api/v1/milestones/{mid}/acknowledge", headers=_h(tokens["a-auditor"])).status_code == 403
    assert (
        httpx.post(f"{url}/api/v1/milestones/{mid}/acknowledge", headers=_h(tokens["maker-admin"])).status_code == 404
    )
    ack = httpx.post(f"{url}/api/v1/milestones/{mid}/acknowledge", headers=a)
    assert ack.status_code == 200 and ack.json()["delivery"]["status"] == "acknowledged"
    again = httpx.post(f"{url}/api/v1/milestones/{mid}/acknowledge", headers=_h(tokens["a-admin"]))
    assert (again.status_code, again.json()["error"]) == (409, "already_acknowledged")

    seen = httpx.get(f"{url}/api/v1/milestones/{mid}", headers=_h(tokens["maker-auditor"])).json()
    rows = {d["hospital"]: d for d in seen["deliveries"]}
    assert rows["hospital-a"]["status"] == "acknowledged"
    assert rows["hospital-a"]["acknowledged_by"] == "a-responsible"
    assert rows["hospital-a"]["acknowledged_sha256"] == seen["package_sha256"]
    assert rows["hospital-b"]["status"] == "notified" and seen["not_acknowledged"] == ["hospital-b"]
    with ctx.tx() as s:
        entry = s.scalar(select(AuditEntry).where(AuditEntry.event_type == "milestone.acknowledged"))
        assert entry is not None and entry.actor == "a-responsible"
        assert json.loads(entry.body)["details"]["package_sha256"] == seen["package_sha256"]


def test_cli_creates_lists_shows_and_acknowledges(live_server, tmp_path) -> None:
    ctx = live_server.ctx
    published_release(ctx, "2.0")
    base = ["--data-dir", str(ctx.settings.data_dir), "--database-url", ctx.settings.effective_database_url(), "--json"]
    runner = CliRunner()
    (tmp_path / "en.md").write_text("Maintenance every 6 months.", encoding="utf-8")
    (tmp_path / "ja.md").write_text("6か月ごとに保守します。", encoding="utf-8")
    r = runner.invoke(
        app,
        [
            "milestones",
            "document",
            PRODUCT,
            "maintenance_plan",
            "--as",
            "maker-admin",
            "--en",
            str(tmp_path / "en.md"),
            "--ja",
            str(tmp_path / "ja.md"),
            *base,
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["milestones", "create", "--as", "maker-psirt", "--due", *base])
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout)
    assert [(m["version"], m["kind"]) for m in created] == [("2.0", "release")]
    mid = created[0]["id"]
    r = runner.invoke(
        app, ["milestones", "show", str(mid), "--as", "b-responsible", "--save", str(tmp_path / "docs"), *base]
    )
    assert r.exit_code == 0, r.output
    saved = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "docs").iterdir()}
    expected = {d["filename"]: d["sha256"] for d in json.loads(r.stdout)["documents"] if d["available"]}
    assert saved == expected and f"{PRODUCT}-2.0-maintenance-plan.md" in saved
    r = runner.invoke(app, ["milestones", "acknowledge", str(mid), "--as", "maker-admin", *base])
    assert r.exit_code == 1 and "unknown_milestone" in r.stdout
    r = runner.invoke(app, ["milestones", "acknowledge", str(mid), "--as", "b-responsible", *base])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["milestones", "list", "--as", "maker-admin", *base])
    states = {d["hospital"]: d["status"] for d in json.loads(r.stdout)[0]["deliveries"]}
    assert states == {"hospital-a": "notified", "hospital-b": "acknowledged"}


def test_an_id_beyond_64_bits_is_refused_as_invalid_not_as_a_server_error(live_server) -> None:
    a = _h(live_server.seed.tokens["a-responsible"])
    for path in ("/api/v1/milestones/9223372036854775808", "/api/v1/milestones/0"):
        answer = httpx.get(f"{live_server.url}{path}", headers=a)
        assert answer.status_code == 422, path
        assert answer.json()["error"] == "invalid_request"
