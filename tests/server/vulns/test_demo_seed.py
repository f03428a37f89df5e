"""The demo's vulnerability and end-of-support data (SM-3, SM-4): loads on a fresh data directory, and again
without change on a reused one."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import func, select

from medsec.server.models import Release
from medsec.server.models_vulns import Finding, PublishedAdvisory, SbomDocument, TriageDecision
from medsec.server.seed_vulns import PRODUCT, VERSION, seed_demo_vulns, seed_vulns
from medsec.server.services import lifecycle_plans

pytestmark = [pytest.mark.req("SM-3"), pytest.mark.req("SM-4")]


def _counts(ctx) -> tuple[int, ...]:
    with ctx.tx() as s:
        return tuple(
            s.scalar(select(func.count()).select_from(m)) or 0
            for m in (SbomDocument, Finding, TriageDecision, PublishedAdvisory)
        )


def test_seed_vulns_tells_the_whole_story_and_is_idempotent(ctx, seeded):
    first = seed_vulns(ctx, today=dt.date(2026, 1, 15))
    assert first.findings == 5  # openssl, libssl1.1, libxml2, dpkg, tzdata
    assert len(first.advisories) == 2  # en and ja
    with ctx.tx() as s:
        triaged = s.get(Finding, first.triaged_finding)
        decision = s.get(TriageDecision, triaged.triage_id)
        assert (triaged.component_name, triaged.triage_status) == ("dpkg", "not_affected")
        assert decision.justification == "vulnerable_code_not_in_execute_path" and decision.exploitability
        doc = json.loads(s.scalar(select(PublishedAdvisory.document).where(PublishedAdvisory.lang == "en")))
        assert doc["document"]["category"] == "csaf_vex"
        release = s.scalar(select(Release).where(Release.product == PRODUCT, Release.version == VERSION))
        status = lifecycle_plans.release_status(s, release, dt.date(2026, 1, 15))
    assert (status["eol"], status["eos"]) == ("2026-09-15", "2027-09-15")
    assert status["unsupported_components"] == [{"name": "debian 9", "end_of_support": "2022-07-01"}]
    assert len(status["notice_warnings"]) == 3 and all("IMDRF N70" in w for w in status["notice_warnings"])
    assert status["legacy_plan"] and "Debian 12" in status["legacy_plan"]

    before = _counts(ctx)
    again = seed_vulns(ctx, today=dt.date(2026, 3, 1))
    assert again == first
    assert _counts(ctx) == before


def test_demo_seeding_runs_on_a_fresh_data_dir(tmp_path):
    from medsec.demo import DemoOptions, _settings, prepare

    options = DemoOptions(data_dir=tmp_path / "demo", port=8799)
    prepare(options)
    result = seed_demo_vulns(_settings(options))
    assert result.findings == 5 and result.triaged_finding is not None
    fingerprint = (tmp_path / "demo" / "keys" / "psirt" / "fingerprint").read_text().strip()
    assert fingerprint
    index = (tmp_path / "demo" / "csaf" / ".well-known" / "csaf" / "white" / "index.txt").read_text().split()
    assert len(index) == 2
    assert seed_demo_vulns(_settings(options)) == result
