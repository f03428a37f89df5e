"""Triage as VEX with an audit trail, rules across releases, CSAF publication, hospital scope (SM-2, SM-3, RA-6)."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
from sqlalchemy import select
from vulns_data import PRODUCT, install, load_release, make_dla_dir

from medsec.advisories.openpgp import verify_detached
from medsec.server.models import AuditEntry
from medsec.server.models_vulns import Finding, TriageDecision
from medsec.server.services import advisory_publishing

pytestmark = [pytest.mark.req("SM-3"), pytest.mark.req("SM-2"), pytest.mark.req("RA-6")]


@pytest.fixture
def dla_dir(tmp_path):
    return make_dla_dir(tmp_path)


NOT_AFFECTED = {
    "status": "not_affected",
    "justification": "vulnerable_code_not_in_execute_path",
    "impact_statement": "dpkg is never run on the device after installation.",
    "patient_safety_impact": "none",
    "exploitability": "Needs a local shell; the device has none outside maintenance mode.",
    "compensating_controls": "Maintenance shell only in approved sessions (RA-3).",
}


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _finding(ctx, release_id: int, advisory: str) -> int:
    with ctx.tx() as s:
        return s.scalar(select(Finding.id).where(Finding.release_id == release_id, Finding.advisory_id == advisory))


def test_triage_needs_psirt_is_audited_and_a_rule_carries_it_to_a_new_release(live_server, dla_dir):
    ctx, url, tokens = live_server.ctx, live_server.url, live_server.seed.tokens
    r10 = load_release(ctx, "1.0", dla_dir)
    fid = _finding(ctx, r10, "DLA-3022-1")

    refused = httpx.post(
        f"{url}/api/v1/vulns/findings/{fid}/triage", json=NOT_AFFECTED, headers=_h(tokens["maker-admin"])
    )
    assert refused.status_code == 403
    missing = httpx.post(
        f"{url}/api/v1/vulns/findings/{fid}/triage",
        json={"status": "not_affected"},
        headers=_h(tokens["maker-psirt"]),
    )
    assert missing.status_code == 422 and missing.json()["error"] == "justification_required"

    r = httpx.post(
        f"{url}/api/v1/vulns/findings/{fid}/triage",
        json={**NOT_AFFECTED, "make_rule": True},
        headers=_h(tokens["maker-psirt"]),
    )
    assert r.status_code == 200, r.text
    assert r.json()["decided_by"] == "maker-psirt" and r.json()["rule"] is not None

    with ctx.tx() as s:
        entries = [
            json.loads(e.body) for e in s.scalars(select(AuditEntry).where(AuditEntry.event_type == "vuln.triaged"))
        ]
    assert [(e["actor"], e["details"]["status"], e["details"]["justification"]) for e in entries] == [
        ("maker-psirt", "not_affected", "vulnerable_code_not_in_execute_path")
    ]

    r11 = load_release(ctx, "1.1")  # same components, new release: the rule decides the new finding
    new_fid = _finding(ctx, r11, "DLA-3022-1")
    with ctx.tx() as s:
        f = s.get(Finding, new_fid)
        decision = s.get(TriageDecision, f.triage_id)
        assert (f.triage_status, decision.justification, decision.rule_id) == (
            "not_affected",
            "vulnerable_code_not_in_execute_path",
            r.json()["rule"],
        )
        openssl = s.scalar(select(Finding).where(Finding.release_id == r11, Finding.advisory_id == "DLA-3008-1"))
        assert openssl.triage_status == "under_investigation"  # other vulnerabilities are not touched


def test_csaf_published_tree_is_served_and_verifies_and_hospitals_see_only_their_devices(live_server, dla_dir):
    ctx, url, tokens = live_server.ctx, live_server.url, live_server.seed.tokens
    r10 = load_release(ctx, "1.0", dla_dir)
    load_release(ctx, "2.0")
    install(ctx, "IC300-0001", "1.0")  # hospital A
    install(ctx, "IC300-0003", "2.0")  # hospital B
    fid = _finding(ctx, r10, "DLA-3022-1")
    assert httpx.post(
        f"{url}/api/v1/vulns/findings/{fid}/triage", json=NOT_AFFECTED, headers=_h(tokens["maker-psirt"])
    ).is_success

    key = advisory_publishing.init_psirt_key(ctx.settings, "Demo PSIRT <psirt@example.com>")
    body = {
        "category": "csaf_vex",
        "findings": [fid],
        "title_en": "InfuCare 300: dpkg CVE-2022-1664 does not apply",
        "title_ja": "InfuCare 300: dpkg の CVE-2022-1664 は影響しません",
        "summary_en": "dpkg is never run on the device.",
        "summary_ja": "dpkg は機器上で実行されません。",
    }
    published = httpx.post(f"{url}/api/v1/advisories", json=body, headers=_h(tokens["maker-psirt"]), timeout=60)
    assert published.status_code == 200, published.text
    langs = {a["lang"]: a for a in published.json()}
    assert set(langs) == {"en", "ja"}

    meta = httpx.get(f"{url}/.well-known/csaf/provider-metadata.json").json()
    assert meta["role"] == "csaf_trusted_provider"
    index = httpx.get(f"{url}/.well-known/csaf/white/index.txt").text.split()
    for advisory in langs.values():
        assert advisory["path"] in index
        base = f"{url}/.well-known/csaf/white/{advisory['path']}"
        data = httpx.get(base).content
        assert httpx.get(base + ".sha512").text.split()[0] == hashlib.sha512(data).hexdigest()
        verify_detached(data, httpx.get(base + ".asc").content, key.public_key, key.fingerprint)
        doc = json.loads(data)
        assert doc["document"]["category"] == "csaf_vex"
        assert doc["document"]["lang"] == advisory["lang"]
    from csaf.csaf.v20 import validate

    report = validate(
        json.loads(httpx.get(f"{url}/.well-known/csaf/white/{langs['ja']['path']}").content), preset="basic"
    )
    assert [r.id for r in report.results if not r.passed and not r.skipped] == []

    # Hospital A: its device on 1.0 is the only one affected by CVE-2022-1292; B's release is invisible.
    a = _h(tokens["a-responsible"])
    affected = httpx.get(f"{url}/api/v1/vulns/affected", params={"vulnerability": "CVE-2022-1292"}, headers=a).json()
    assert [d["serial"] for d in affected] == ["IC300-0001"]
    maker = httpx.get(
        f"{url}/api/v1/vulns/affected", params={"vulnerability": "CVE-2022-1292"}, headers=_h(tokens["maker-psirt"])
    ).json()
    assert {d["serial"] for d in maker} == {"IC300-0001", "IC300-0003"}
    listed = httpx.get(f"{url}/api/v1/vulns/findings", headers=a).json()
    assert listed and {f["release"]["version"] for f in listed} == {"1.0"}
    assert httpx.get(f"{url}/api/v1/releases/{PRODUCT}/2.0/sbom", headers=a).status_code == 404
    sbom = httpx.get(f"{url}/api/v1/releases/{PRODUCT}/1.0/sbom", headers=a)
    assert sbom.status_code == 200 and sbom.json()["bomFormat"] == "CycloneDX"
    vex = httpx.get(f"{url}/api/v1/releases/{PRODUCT}/1.0/vex", params={"format": "openvex"}, headers=a)
    assert vex.status_code == 200 and vex.json()["@context"].startswith("https://openvex.dev")
    advisories = httpx.get(f"{url}/api/v1/advisories", headers=a).json()
    assert {x["tracking_id"] for x in advisories} == {a_["tracking_id"] for a_ in langs.values()}
    b_view = httpx.get(f"{url}/api/v1/vulns/findings", headers=_h(tokens["b-responsible"])).json()
    assert {f["release"]["version"] for f in b_view} == {"2.0"}
    m = httpx.get(f"{url}/api/v1/vulns/metrics", headers=a).json()
    assert m["findings"] == len(listed)
