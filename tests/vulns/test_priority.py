"""Priority score (CVSS, EPSS, KEV, exposure) and the SLA defaults with an injected clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from medsec.vulns.priority import (
    CvssError,
    SeverityFacts,
    SlaPolicy,
    SlaState,
    Tier,
    parse_cvss3,
    prioritise,
    sla_deadlines,
    sla_state,
)

from .conftest import DATA

pytestmark = pytest.mark.req("SM-3")
VECTORS = [
    *json.loads((DATA / "nvd" / "nvd-cvss-v3.1-vector-scores.json").read_text("utf-8")),
    *json.loads((DATA / "nvd" / "nvd-cvss-v3.0-vector-scores.json").read_text("utf-8")),
]
T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("case", VECTORS, ids=lambda c: c["vector"])
def test_cvss3_base_scores_agree_with_nvd(case: dict[str, object]) -> None:
    assert parse_cvss3(str(case["vector"])).base_score() == case["score"]


@pytest.mark.parametrize(
    "vector", ["AV:N/AC:L", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H", "CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"]
)
def test_bad_vectors_raise(vector: str) -> None:
    with pytest.raises(CvssError):
        parse_cvss3(vector)


CRITICAL_NET = SeverityFacts(cvss3_vector="CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")  # 9.8


def test_score_formula() -> None:
    p = prioritise(CRITICAL_NET, kev=False, epss=0.5, network_reachable=True)
    assert p.score == round(70 * 0.98 + 30 * 0.5)
    assert p.tier is Tier.CRITICAL


def test_unreachable_device_halves_network_attack_vector() -> None:
    p = prioritise(CRITICAL_NET, kev=False, epss=0.0, network_reachable=False)
    assert p.score == round(70 * 0.98 * 0.5)
    assert p.tier is Tier.MEDIUM
    local = SeverityFacts(cvss3_vector="CVSS:3.1/AV:L/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")
    assert prioritise(local, kev=False, epss=None, network_reachable=False).score == round(70 * 0.84)


def test_kev_is_always_critical_and_maximal_threat() -> None:
    p = prioritise(SeverityFacts(given_score=4.0), kev=True, epss=0.01, network_reachable=False)
    assert p.tier is Tier.CRITICAL
    assert p.score == round(70 * 0.4 * 1.0 + 30)  # no vector: exposure cannot be discounted


def test_cvss4_score_is_used_when_given() -> None:
    sev = SeverityFacts(cvss4_vector="CVSS:4.0/AV:P/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N", cvss4_score=7.0)
    p = prioritise(sev, kev=False, epss=None, network_reachable=False)
    assert p.cvss == 7.0 and p.score == 49


def test_unknown_severity_counts_as_medium() -> None:
    assert prioritise(SeverityFacts(), kev=False, epss=None, network_reachable=True).score == 35


def test_sla_defaults_30_and_60_days_for_critical() -> None:
    p = prioritise(CRITICAL_NET, kev=False, epss=0.5, network_reachable=True)
    deadlines = sla_deadlines(p, T0)
    assert deadlines is not None
    assert deadlines.notice_by == T0 + timedelta(days=30)
    assert deadlines.fix_by == T0 + timedelta(days=60)
    low = prioritise(SeverityFacts(given_score=2.0), kev=False, epss=None, network_reachable=False)
    assert sla_deadlines(low, T0) is None


def test_sla_is_configurable() -> None:
    p = prioritise(SeverityFacts(given_score=7.5), kev=False, epss=0.1, network_reachable=True)
    assert p.tier is Tier.HIGH
    deadlines = sla_deadlines(p, T0, SlaPolicy(notice_days=7, fix_days=14, tiers=frozenset({Tier.CRITICAL, Tier.HIGH})))
    assert deadlines is not None and deadlines.fix_by == T0 + timedelta(days=14)


def test_sla_state_follows_the_injected_clock() -> None:
    p = prioritise(SeverityFacts(given_score=5.0), kev=True, epss=None, network_reachable=True)
    deadlines = sla_deadlines(p, T0)
    assert deadlines is not None

    def at(days: int) -> datetime:
        return T0 + timedelta(days=days)

    assert sla_state(deadlines, clock=lambda: at(10)) is SlaState.ON_TRACK
    assert sla_state(deadlines, clock=lambda: at(31)) is SlaState.NOTICE_OVERDUE
    assert sla_state(deadlines, clock=lambda: at(31), notified_at=at(20)) is SlaState.ON_TRACK
    assert sla_state(deadlines, clock=lambda: at(61), notified_at=at(20)) is SlaState.FIX_OVERDUE
    assert sla_state(deadlines, clock=lambda: at(90), notified_at=at(20), fixed_at=at(50)) is SlaState.MET
