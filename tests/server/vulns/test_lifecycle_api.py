"""End of support through the service and the API: alerts, the two-year notice warning, overrides, legacy plans,
CSAF end-of-support notices (SM-4; IMDRF N70)."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest
from sqlalchemy import select
from vulns_data import PRODUCT, SBOM, install

from medsec.lifecycle.plan import add_months
from medsec.server.models import AuditEntry, Release
from medsec.server.models_vulns import ReleaseLifecycleRow
from medsec.server.seed import MODEL
from medsec.server.seed_vulns import ENDOFLIFE
from medsec.server.services import advisory_publishing, feeds, lifecycle_plans, sboms

pytestmark = pytest.mark.req("SM-4")

PLAN = {
    "controls": [
        {
            "id": "segment",
            "title_en": "Isolate the pump network",
            "title_ja": "ネットワーク分離",
            "en": "Own VLAN.",
            "ja": "専用VLAN。",
        }
    ],
    "replacement_path": {"en": "Install 2.0.", "ja": "2.0を適用。"},
    "timeline": [{"on": "2030-01-31", "en": "EOL", "ja": "EOL"}, {"on": "2031-01-31", "en": "EOS", "ja": "EOS"}],
}


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _release(ctx, version: str, *, notice: dt.date | None, eol=dt.date(2030, 1, 31), eos=dt.date(2031, 1, 31)) -> int:
    with ctx.tx() as s:
        release = sboms.ensure_release(s, PRODUCT, version)
        lifecycle_plans.set_release_lifecycle(
            s, ctx.audit, "maker-psirt", release, released_on=dt.date(2024, 1, 1), eol=eol, eos=eos, notice_date=notice
        )
        return release.id


@pytest.mark.parametrize(
    ("today", "months"),
    [
        (dt.date(2029, 1, 30), None),
        (dt.date(2029, 1, 31), 24),
        (dt.date(2030, 1, 31), 12),
        (dt.date(2030, 7, 31), 6),
        (dt.date(2031, 1, 31), 0),
    ],
)
def test_release_alerts_fire_at_24_12_and_6_months_before_eos(ctx, today, months):
    rid = _release(ctx, "3.0", notice=dt.date(2027, 1, 1))
    with ctx.tx() as s:
        status = lifecycle_plans.release_status(s, s.get(Release, rid), today)
    if months is None:
        assert status["alerts"] == []
    elif months == 0:
        assert status["alerts"] == [f"Support for {PRODUCT} 3.0 ended on 2031-01-31."]
    else:
        assert status["alerts"] == [f"Support for {PRODUCT} 3.0 ends within {months} months, on 2031-01-31."]


def test_notice_less_than_two_years_ahead_warns_and_two_years_does_not(ctx):
    late = _release(ctx, "3.0", notice=dt.date(2028, 2, 1))  # EOL notice due by 2028-01-31
    early = _release(ctx, "3.1", notice=dt.date(2028, 1, 31))
    with ctx.tx() as s:
        warned = lifecycle_plans.release_status(s, s.get(Release, late), dt.date(2028, 2, 1))
        fine = lifecycle_plans.release_status(s, s.get(Release, early), dt.date(2028, 2, 1), "ja")
    assert warned["notice_warnings"] == [
        f"The EOL notice for {PRODUCT} 3.0 (2030-01-31) goes out on 2028-02-01, less than two years ahead "
        "(due by 2028-01-31; IMDRF N70)."
    ]
    assert fine["notice_warnings"] == []


def test_the_debian_9_os_of_a_syft_sbom_gets_its_end_of_support_from_endoflife_data(ctx):
    with ctx.tx() as s:
        feeds.import_endoflife(s, ctx.audit, "maker-psirt", ENDOFLIFE)
        doc = sboms.import_sbom_file(s, ctx.audit, "maker-psirt", product=PRODUCT, version="1.0.0", path=SBOM)
        release = doc.release
        lifecycle_plans.set_release_lifecycle(
            s, ctx.audit, "maker-psirt", release, released_on=dt.date(2021, 1, 1), extended_support=["debian"]
        )
        status = lifecycle_plans.release_status(s, release, dt.date(2021, 6, 1))
    # No declared dates: EOS is the OS's end of LTS (eoes), EOL its end of security support.
    assert (status["eol"], status["eos"]) == ("2020-07-18", "2022-07-01")
    assert status["unsupported_components"] == []
    assert any("IMDRF N70" in w for w in status["notice_warnings"])


def test_override_needs_evidence_and_a_manufacturer_role(live_server):
    url, tokens, ctx = live_server.url, live_server.seed.tokens, live_server.ctx
    body = {"product": "debian", "cycle": "9", "eoes": "2024-06-30", "evidence_source": "Freexian ELTS contract 42"}
    assert httpx.post(f"{url}/api/v1/lifecycle/overrides", json=body, headers=_h(tokens["a-admin"])).status_code == 403
    no_evidence = {k: v for k, v in body.items() if k != "evidence_source"}
    r = httpx.post(f"{url}/api/v1/lifecycle/overrides", json=no_evidence, headers=_h(tokens["maker-psirt"]))
    assert r.status_code == 422
    blank = httpx.post(
        f"{url}/api/v1/lifecycle/overrides", json={**body, "evidence_source": " "}, headers=_h(tokens["maker-psirt"])
    )
    assert blank.status_code == 422 and blank.json()["error"] == "invalid_override"
    bad_date = httpx.post(
        f"{url}/api/v1/lifecycle/overrides", json={**body, "eoes": "2024-13-01"}, headers=_h(tokens["maker-psirt"])
    )
    assert bad_date.status_code == 422
    ok = httpx.post(f"{url}/api/v1/lifecycle/overrides", json=body, headers=_h(tokens["maker-admin"]))
    assert ok.status_code == 200, ok.text
    assert ok.json()["evidence"] | {"recorded_at": None} == {
        "author": "maker-admin",
        "source": "Freexian ELTS contract 42",
        "note": "",
        "recorded_at": None,
    }
    listed = httpx.get(f"{url}/api/v1/lifecycle/overrides", headers=_h(tokens["maker-auditor"])).json()
    assert [(o["product"], o["cycle"], o["eoes"]) for o in listed] == [("debian", "9", "2024-06-30")]
    assert httpx.get(f"{url}/api/v1/lifecycle/overrides", headers=_h(tokens["a-admin"])).status_code == 403
    with ctx.tx() as s:
        entries = [
            json.loads(e.body)
            for e in s.scalars(select(AuditEntry).where(AuditEntry.event_type == "lifecycle.override"))
        ]
    assert [(e["actor"], e["details"]["source"]) for e in entries] == [("maker-admin", "Freexian ELTS contract 42")]
    # Removal: hospitals cannot, a missing one is named, and the audit log keeps what was removed.
    gone = f"{url}/api/v1/lifecycle/overrides/debian/9"
    assert httpx.delete(gone, headers=_h(tokens["a-admin"])).status_code == 403
    assert (
        httpx.delete(f"{url}/api/v1/lifecycle/overrides/debian/8", headers=_h(tokens["maker-psirt"])).json()["error"]
        == "unknown_override"
    )
    assert httpx.delete(gone, headers=_h(tokens["maker-psirt"])).status_code == 204
    assert httpx.get(f"{url}/api/v1/lifecycle/overrides", headers=_h(tokens["maker-auditor"])).json() == []
    with ctx.tx() as s:
        removed = s.scalars(select(AuditEntry).where(AuditEntry.event_type == "lifecycle.override_removed")).one()
    assert json.loads(removed.body)["details"]["eoes"] == "2024-06-30"


def test_legacy_plan_and_two_year_warning_reach_only_the_hospital_running_the_release(live_server):
    url, tokens, ctx = live_server.url, live_server.seed.tokens, live_server.ctx
    today = dt.datetime.now(dt.UTC).date()
    eos = add_months(today, 18)
    rid = _release(ctx, "3.0", notice=today, eol=add_months(today, 12), eos=eos)  # announced 12 months ahead
    install(ctx, "IC300-0001", "3.0")  # hospital A
    path = f"{url}/api/v1/releases/{PRODUCT}/3.0"

    assert httpx.put(f"{path}/legacy-plan", json=PLAN, headers=_h(tokens["a-admin"])).status_code == 403
    unordered = {**PLAN, "timeline": list(reversed(PLAN["timeline"]))}
    r = httpx.put(f"{path}/legacy-plan", json=unordered, headers=_h(tokens["maker-admin"]))
    assert r.status_code == 422 and r.json()["error"] == "invalid_legacy_plan"
    r = httpx.put(f"{path}/legacy-plan", json=PLAN, headers=_h(tokens["maker-admin"]))
    assert r.status_code == 200, r.text
    assert "Isolate the pump network" in r.json()["legacy_plan"]

    a = httpx.get(f"{path}/lifecycle", params={"lang": "ja"}, headers=_h(tokens["a-responsible"]))
    assert a.status_code == 200
    assert a.json()["eos"] == eos.isoformat()
    assert "ネットワーク分離" in a.json()["legacy_plan"]
    assert len(a.json()["notice_warnings"]) == 2  # EOL and EOS both announced less than two years ahead
    assert all("IMDRF N70" in w for w in a.json()["notice_warnings"])
    assert a.json()["alerts"] == [f"{MODEL['name']} 3.0のサポートは24か月以内({eos.isoformat()})に終了します。"]
    assert httpx.get(f"{path}/lifecycle", headers=_h(tokens["b-responsible"])).status_code == 404
    listed = httpx.get(f"{url}/api/v1/lifecycle", headers=_h(tokens["b-responsible"])).json()
    assert rid not in {r.get("id") for r in listed} and all(r["version"] != "3.0" for r in listed)


def test_eos_notice_is_published_as_csaf_informational_and_records_the_notice_day(live_server):
    url, tokens, ctx = live_server.url, live_server.seed.tokens, live_server.ctx
    rid = _release(ctx, "3.0", notice=None)
    path = f"{url}/api/v1/releases/{PRODUCT}/3.0"
    advisory_publishing.init_psirt_key(ctx.settings, "Test PSIRT <psirt@example.com>")
    missing = httpx.post(f"{path}/eos-notice", json={}, headers=_h(tokens["maker-psirt"]))
    assert missing.status_code == 422 and missing.json()["error"] == "guidance_required"
    assert httpx.put(f"{path}/legacy-plan", json=PLAN, headers=_h(tokens["maker-psirt"])).is_success
    assert httpx.post(f"{path}/eos-notice", json={}, headers=_h(tokens["maker-admin"])).status_code == 403

    r = httpx.post(f"{path}/eos-notice", json={}, headers=_h(tokens["maker-psirt"]), timeout=60)
    assert r.status_code == 200, r.text
    assert {(a["lang"], a["category"]) for a in r.json()} == {
        ("en", "csaf_informational_advisory"),
        ("ja", "csaf_informational_advisory"),
    }
    doc = httpx.get(f"{url}/.well-known/csaf/white/{r.json()[0]['path']}").json()
    assert "Install 2.0." in json.dumps(doc)
    with ctx.tx() as s:
        row = s.get(ReleaseLifecycleRow, rid)
        assert row.notice_date == dt.datetime.now(dt.UTC).date()
