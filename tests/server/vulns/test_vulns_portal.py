"""Portal pages for vulnerabilities (SM-2, SM-3, SM-4): hospital scope, and PSIRT triage through the form."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from vulns_data import install
from vulns_portal_login import csrf_of, portal_client

from medsec.server.models import AuditEntry
from medsec.server.models_vulns import Finding, TriageDecision
from medsec.server.seed_vulns import seed_vulns

pytestmark = [pytest.mark.req("SM-3"), pytest.mark.req("SM-2"), pytest.mark.req("SM-4")]


@pytest.fixture
def demo(live_server):
    """The demo's vulnerability data; hospital A's IC300-0001 runs the release, hospital B has nothing on it."""
    result = seed_vulns(live_server.ctx)
    install(live_server.ctx, "IC300-0001", "1.0.0")
    return result


def _finding(ctx, advisory: str) -> Finding:
    with ctx.tx() as s:
        row = s.scalar(select(Finding).where(Finding.advisory_id == advisory))
        s.expunge(row)
        return row


def test_hospital_sees_its_findings_advisories_and_end_of_support(live_server, demo):
    users = live_server.seed.users
    with portal_client(live_server.url, users["a-responsible"]) as a:
        findings = a.get("/vulns")
        assert findings.status_code == 200
        assert "DLA-3008-1" in findings.text and "infusion-pump 1.0.0" in findings.text
        affected = a.get("/vulns", params={"q": "CVE-2022-1292"})
        assert "IC300-0001" in affected.text and "IC300-0003" not in affected.text
        advisories = a.get("/vulns/advisories")
        assert all(tracking in advisories.text for tracking in demo.advisories)
        lifecycle = a.get("/vulns/lifecycle")
        assert "IC300-0001" in lifecycle.text and "IMDRF N70" in lifecycle.text
        assert "Isolate the pump network" in lifecycle.text  # the legacy plan
        vex = a.get("/vulns/releases/infusion-pump/1.0.0/vex.openvex.json")
        assert vex.status_code == 200 and "not_affected" in vex.text

    with portal_client(live_server.url, users["b-responsible"]) as b:
        assert "DLA-3008-1" not in b.get("/vulns").text and "libssl1.1" not in b.get("/vulns").text
        assert b.get(f"/vulns/findings/{demo.triaged_finding}").status_code == 404
        assert "IC300-0001" not in b.get("/vulns/lifecycle").text
        assert b.get("/vulns/releases/infusion-pump/1.0.0/sbom.cdx.json").status_code == 404


def test_psirt_triage_form_records_the_decision_with_csrf(live_server, demo):
    ctx, users = live_server.ctx, live_server.seed.users
    openssl = _finding(ctx, "DLA-3008-1")
    form = {
        "status": "not_affected",
        "justification": "vulnerable_code_cannot_be_controlled_by_adversary",
        "impact_statement": "The pump never accepts TLS from the hospital network.",
        "patient_safety_impact": "none",
        "exploitability": "No listening TLS service in clinical use.",
        "compensating_controls": "Pump VLAN.",
    }
    with portal_client(live_server.url, users["maker-psirt"]) as psirt:
        page = psirt.get(f"/vulns/findings/{openssl.id}")
        assert page.status_code == 200 and "Record decision" in page.text
        token = csrf_of(page.text)

        forged = psirt.post(f"/vulns/findings/{openssl.id}/triage", data={**form, "csrf_token": "forged"})
        assert forged.status_code == 403
        missing = psirt.post(
            f"/vulns/findings/{openssl.id}/triage", data={**form, "justification": "", "csrf_token": token}
        )
        assert missing.status_code == 422 and "justification" in missing.text

        done = psirt.post(f"/vulns/findings/{openssl.id}/triage", data={**form, "csrf_token": token})
        assert done.status_code == 303 and done.headers["location"] == f"/vulns/findings/{openssl.id}"
        shown = psirt.get(done.headers["location"])
        assert "Not affected" in shown.text and "Vulnerable code cannot be controlled by an adversary" in shown.text

    with portal_client(live_server.url, users["a-responsible"]) as hospital:
        page = hospital.get(f"/vulns/findings/{openssl.id}")
        assert page.status_code == 200 and "Record decision" not in page.text
        refused = hospital.post(
            f"/vulns/findings/{openssl.id}/triage",
            data={**form, "status": "affected", "csrf_token": csrf_of(page.text)},
        )
        assert refused.status_code == 403

    with ctx.tx() as s:
        decisions = list(s.scalars(select(TriageDecision).where(TriageDecision.finding_id == openssl.id)))
        assert [(d.status, d.decided_by) for d in decisions] == [("not_affected", "maker-psirt")]
        audited = [
            json.loads(e.body)
            for e in s.scalars(select(AuditEntry).where(AuditEntry.event_type == "vuln.triaged"))
            if json.loads(e.body)["details"]["finding"] == openssl.id
        ]
        assert [e["actor"] for e in audited] == ["maker-psirt"]
        assert s.scalars(select(AuditEntry).where(AuditEntry.event_type == "auth.csrf_refused")).first() is not None
