"""The manufacturer's end-of-support forms over real HTTP: lifecycle overrides, legacy plans and EOS notices,
each audited like its API route; hospitals see the results and are refused the forms (SM-4; IMDRF N70)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import func, select

from conftest import csrf_of, sign_in, sign_in_browser
from medsec.server.models import AuditEntry
from medsec.server.models_vulns import LifecycleOverrideRow, PublishedAdvisory, ReleaseLifecycleRow
from medsec.server.seed import MODEL
from medsec.server.services import advisory_publishing, lifecycle_plans, sboms

pytestmark = pytest.mark.req("SM-4")
PRODUCT = MODEL["product"]
VERSION = "2.4.1"  # what the checked-in devices of both hospitals run
PLAN_URL = f"/vulns/lifecycle/{PRODUCT}/{VERSION}/legacy-plan"
NOTICE_URL = f"/vulns/lifecycle/{PRODUCT}/{VERSION}/eos-notice"
OVERRIDE = {
    "product": "debian",
    "cycle": "9",
    "eol": "",
    "eoas": "2020-07-06",
    "eoes": "2024-06-30",
    "evidence_source": "Freexian ELTS contract 42",
    "evidence_note": "signed 2024-05-01",
}


def plan_form(**changes: Any) -> dict[str, Any]:
    """One control, a replacement path and two timeline steps, with one empty control row left over."""
    form: dict[str, Any] = {
        "control_id": ["segment", ""],
        "control_title_en": ["Isolate the pump network", ""],
        "control_title_ja": ["ポンプ用ネットワークの分離", ""],
        "control_en": ["Put the pumps on their own VLAN.", ""],
        "control_ja": ["ポンプを専用VLANに置いてください。", ""],
        "control_requirement": ["PA-2", ""],
        "replacement_en": ["Install 3.0."],
        "replacement_ja": ["3.0 を適用してください。"],
        "step_on": ["2030-01-31", "2031-01-31", ""],
        "step_en": ["EOL", "EOS", ""],
        "step_ja": ["EOL", "EOS", ""],
    }
    form.update(changes)
    return form


@pytest.fixture
def lifecycle_release(live_server: Any, checked_in: Any) -> int:
    ctx = live_server.ctx
    with ctx.tx() as s:
        release = sboms.ensure_release(s, PRODUCT, VERSION)
        lifecycle_plans.set_release_lifecycle(
            s,
            ctx.audit,
            "maker-psirt",
            release,
            released_on=dt.date(2026, 1, 1),
            eol=dt.date(2030, 1, 31),
            eos=dt.date(2031, 1, 31),
        )
        return release.id


def _events(ctx: Any, event_type: str) -> list[dict[str, Any]]:
    with ctx.tx() as s:
        rows = s.scalars(select(AuditEntry).where(AuditEntry.event_type == event_type).order_by(AuditEntry.idx))
        return [json.loads(e.body) for e in rows]


def _count(ctx: Any, model: Any) -> int:
    with ctx.tx() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_psirt_adds_and_removes_an_override(client_factory: Any, live_server: Any, totp: Any) -> None:
    client = client_factory(lang="en")
    page = sign_in(client, live_server.seed.users["maker-psirt"], totp, next_path="/vulns/lifecycle")
    token = csrf_of(page.text)
    assert "Add or replace an override" in page.text and "No overrides" in page.text

    bad = client.post("/vulns/lifecycle/overrides", data={**OVERRIDE, "eoes": "2024-13-40", "csrf_token": token})
    assert bad.status_code == 422 and "override for debian 9" in bad.text
    assert 'value="Freexian ELTS contract 42"' in bad.text  # nothing typed is lost
    no_source = client.post("/vulns/lifecycle/overrides", data={**OVERRIDE, "evidence_source": "", "csrf_token": token})
    assert no_source.status_code == 422 and "evidence_source is required" in no_source.text
    assert _count(live_server.ctx, LifecycleOverrideRow) == 0

    added = client.post("/vulns/lifecycle/overrides", data={**OVERRIDE, "csrf_token": token})
    assert added.status_code == 303
    listed = client.get("/vulns/lifecycle").text
    assert "Freexian ELTS contract 42: signed 2024-05-01" in listed and "2024-06-30" in listed
    assert [(e["actor"], e["details"]["eoes"]) for e in _events(live_server.ctx, "lifecycle.override")] == [
        ("maker-psirt", "2024-06-30")
    ]

    removed = client.post(
        "/vulns/lifecycle/overrides/remove", data={"product": "debian", "cycle": "9", "csrf_token": token}
    )
    assert removed.status_code == 303
    assert "No overrides" in client.get("/vulns/lifecycle").text
    gone = _events(live_server.ctx, "lifecycle.override_removed")
    assert [(e["actor"], e["details"]["eoes"], e["details"]["evidence"]["source"]) for e in gone] == [
        ("maker-psirt", "2024-06-30", "Freexian ELTS contract 42")
    ]
    again = client.post(
        "/vulns/lifecycle/overrides/remove", data={"product": "debian", "cycle": "9", "csrf_token": token}
    )
    assert again.status_code == 404


def test_legacy_plan_written_in_the_form_reaches_the_hospital(
    client_factory: Any, live_server: Any, totp: Any, lifecycle_release: int
) -> None:
    maker = client_factory(lang="en")
    page = sign_in(maker, live_server.seed.users["maker-admin"], totp, next_path="/vulns/lifecycle")
    token = csrf_of(page.text)
    assert f"Write the legacy plan of {PRODUCT} {VERSION}" in page.text
    assert "Send the end-of-support notice" not in page.text  # PSIRT only

    half = maker.post(PLAN_URL, data={**plan_form(control_title_ja=["", ""]), "csrf_token": token})
    assert half.status_code == 422 and "control 1: title_ja is empty" in half.text
    assert 'value="Isolate the pump network"' in half.text
    bad_date = maker.post(PLAN_URL, data={**plan_form(step_on=["2030-02-30", "2031-01-31", ""]), "csrf_token": token})
    assert bad_date.status_code == 422 and "timeline step 1: on must be a date" in bad_date.text
    unordered = maker.post(PLAN_URL, data={**plan_form(step_on=["2031-01-31", "2030-01-31", ""]), "csrf_token": token})
    assert unordered.status_code == 422 and "date order" in unordered.text
    with live_server.ctx.tx() as s:
        assert not s.get(ReleaseLifecycleRow, lifecycle_release).legacy_plan

    saved = maker.post(PLAN_URL, data={**plan_form(), "csrf_token": token})
    assert saved.status_code == 303
    again = maker.get("/vulns/lifecycle").text
    assert 'value="segment"' in again and "Isolate the pump network" in again
    audited = _events(live_server.ctx, "lifecycle.legacy_plan")
    assert [(e["actor"], e["details"]["controls"]) for e in audited] == [("maker-admin", ["segment"])]

    hospital = client_factory(lang="ja")
    seen = sign_in(hospital, live_server.seed.users["b-responsible"], totp, next_path="/vulns/lifecycle").text
    assert "ポンプ用ネットワークの分離" in seen and "3.0 を適用してください。" in seen
    assert "legacy-plan" not in seen and "eos-notice" not in seen and "/vulns/lifecycle/overrides" not in seen


def test_hospital_posting_lifecycle_forms_is_refused(
    client_factory: Any, live_server: Any, totp: Any, lifecycle_release: int
) -> None:
    hospital = client_factory(lang="en")
    page = sign_in(hospital, live_server.seed.users["a-admin"], totp, next_path="/vulns/lifecycle")
    token = csrf_of(page.text)
    answers = [
        hospital.post("/vulns/lifecycle/overrides", data={**OVERRIDE, "csrf_token": token}),
        hospital.post(
            "/vulns/lifecycle/overrides/remove", data={"product": "debian", "cycle": "9", "csrf_token": token}
        ),
        hospital.post(PLAN_URL, data={**plan_form(), "csrf_token": token}),
        hospital.post(NOTICE_URL, data={"guidance_en": "x", "guidance_ja": "x", "csrf_token": token}),
    ]
    assert [a.status_code for a in answers] == [403, 403, 403, 403]
    assert all("Your role does not allow this." in a.text for a in answers)
    assert _count(live_server.ctx, LifecycleOverrideRow) == 0 and _count(live_server.ctx, PublishedAdvisory) == 0
    with live_server.ctx.tx() as s:
        assert not s.get(ReleaseLifecycleRow, lifecycle_release).legacy_plan
    forged = hospital.post(PLAN_URL, data={**plan_form(), "csrf_token": "forged"})
    assert forged.status_code == 403 and _events(live_server.ctx, "auth.csrf_refused")


def test_psirt_sends_the_eos_notice_from_the_form(
    client_factory: Any, live_server: Any, totp: Any, lifecycle_release: int
) -> None:
    advisory_publishing.init_psirt_key(live_server.ctx.settings, "Test PSIRT <psirt@example.com>")
    psirt = client_factory(lang="en")
    page = sign_in(psirt, live_server.seed.users["maker-psirt"], totp, next_path="/vulns/lifecycle")
    token = csrf_of(page.text)
    assert "Publish end-of-support notice" in page.text

    empty = psirt.post(NOTICE_URL, data={"guidance_en": "", "guidance_ja": "", "csrf_token": token})
    assert empty.status_code == 422 and "give guidance or save a legacy plan first" in empty.text
    half = psirt.post(NOTICE_URL, data={"guidance_en": "Move to 3.0.", "guidance_ja": "", "csrf_token": token})
    assert half.status_code == 422 and "Move to 3.0." in half.text
    assert _count(live_server.ctx, PublishedAdvisory) == 0

    sent = psirt.post(
        NOTICE_URL,
        data={
            "guidance_en": "Move to 3.0 by 2031.",
            "guidance_ja": "2031年までに3.0へ移行してください。",
            "csrf_token": token,
        },
    )
    assert sent.status_code == 303 and sent.headers["location"] == "/vulns/advisories"
    with live_server.ctx.tx() as s:
        rows = s.scalars(select(PublishedAdvisory)).all()
        assert {(r.lang, r.category) for r in rows} == {
            ("en", "csaf_informational_advisory"),
            ("ja", "csaf_informational_advisory"),
        }
        assert s.get(ReleaseLifecycleRow, lifecycle_release).notice_date == dt.datetime.now(dt.UTC).date()
    assert {e["actor"] for e in _events(live_server.ctx, "advisory.published")} == {"maker-psirt"}


@pytest.mark.browser
def test_legacy_plan_typed_in_chromium_reaches_the_hospital(
    new_page: Any, live_server: Any, totp: Any, lifecycle_release: int
) -> None:
    users = live_server.seed.users
    maker = new_page("en-US")
    sign_in_browser(maker, live_server.url, users["maker-admin"], totp, next_path="/vulns/lifecycle", lang="en")
    assert maker.url.endswith("/vulns/lifecycle")
    maker.get_by_text(f"Write the legacy plan of {PRODUCT} {VERSION}").click()
    form = maker.get_by_role("form", name=f"Legacy plan of {PRODUCT} {VERSION}")
    control = form.get_by_role("group", name="Compensating control 1")
    control.get_by_label("Identifier").fill("segment")
    control.get_by_label("Title (English)").fill("Isolate the pump network")
    control.get_by_label("Title (Japanese)").fill("ポンプ用ネットワークの分離")
    control.get_by_label("Description (English)").fill("Put the pumps on their own VLAN.")
    control.get_by_label("Description (Japanese)").fill("ポンプを専用VLANに置いてください。")
    form.get_by_label("Replacement path (English)").fill("Install 3.0.")
    form.get_by_label("Replacement path (Japanese)").fill("3.0 を適用してください。")
    for number, (day, what) in enumerate((("2030-01-31", "EOL"), ("2031-01-31", "EOS")), start=1):
        step = form.get_by_role("group", name=f"Timeline step {number}")
        step.get_by_label("Date").fill(day)
        step.get_by_label("What happens (English)").fill(what)
        step.get_by_label("What happens (Japanese)").fill(what)
    form.get_by_role("button", name="Save legacy plan").click()
    assert maker.get_by_role("status").filter(has_text="Saved.").is_visible()
    assert "Isolate the pump network" in maker.locator("pre.plan").first.inner_text()

    hospital = new_page("ja-JP")
    sign_in_browser(hospital, live_server.url, users["a-responsible"], totp, next_path="/vulns/lifecycle", lang="ja")
    assert hospital.url.endswith("/vulns/lifecycle")
    plan = hospital.locator("pre.plan").first.inner_text()
    assert "ポンプ用ネットワークの分離" in plan and "3.0 を適用してください。" in plan
    assert hospital.get_by_role("button", name="レガシー対応計画を保存").count() == 0
