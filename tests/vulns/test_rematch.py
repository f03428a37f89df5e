"""Incremental re-match: only the pairs a delta touches are evaluated; the result is a diff, nothing deleted."""

from __future__ import annotations

from dataclasses import replace

import pytest

from medsec.sbom.model import Component
from medsec.vulns.aliases import build_alias_groups
from medsec.vulns.feeds.osv import read_osv, read_osv_file
from medsec.vulns.matcher import Matcher
from medsec.vulns.model import AffectedRange, EventKind, RangeEvent, RangeType
from medsec.vulns.rematch import AdvisoryDelta, ComponentIndex, InactiveReason, ReleaseFinding, ReleaseId, rematch

from .conftest import DATA, component, stretch_components

pytestmark = pytest.mark.req("SM-3")
DLA_DPKG = DATA / "osv" / "debian" / "DLA-3022-1.json"


def _releases() -> dict[ReleaseId, list[Component]]:
    stretch = stretch_components()
    patched = [
        component(c.ref, c.purl.replace("1.18.25", "1.18.26")) if c.purl and "/dpkg@" in c.purl else c for c in stretch
    ]
    return {
        ReleaseId("r1"): stretch,
        ReleaseId("r2"): patched,
        ReleaseId("py"): [component("req", "pkg:pypi/requests@2.30.0")],
    }


def _active(releases: dict[ReleaseId, list[Component]]) -> list[ReleaseFinding]:
    matcher = Matcher.build(read_osv(DATA / "osv" / "debian"))
    return [ReleaseFinding(r, f) for r, comps in releases.items() for f in matcher.match(comps)]


def test_new_advisory_yields_new_findings_only_for_affected_pairs() -> None:
    releases = _releases()
    index = ComponentIndex.build(releases)
    (dla,) = read_osv_file(DLA_DPKG)
    diff = rematch(AdvisoryDelta((dla,)), index, active=[])
    assert [(f.release, f.finding.advisory_id) for f in diff.new] == [("r1", "DLA-3022-1")]
    assert diff.pairs_evaluated == 2  # dpkg in r1 and r2, nothing else
    assert diff.still_active == () and diff.now_inactive == ()


def test_unchanged_match_is_still_active() -> None:
    releases = _releases()
    (dla,) = read_osv_file(DLA_DPKG)
    diff = rematch(
        AdvisoryDelta((replace(dla, modified="2026-04-01T00:00:00Z"),)),
        ComponentIndex.build(releases),
        _active(releases),
    )
    assert [(f.release, f.finding.advisory_id) for f in diff.still_active] == [("r1", "DLA-3022-1")]
    assert diff.new == () and diff.now_inactive == ()


def test_narrowed_range_makes_the_finding_inactive_with_a_reason() -> None:
    releases = _releases()
    (dla,) = read_osv_file(DLA_DPKG)
    narrowed_range = AffectedRange(
        RangeType.ECOSYSTEM, (RangeEvent(EventKind.INTRODUCED, "0"), RangeEvent(EventKind.FIXED, "1.18.20"))
    )
    narrowed = replace(dla, affected=(replace(dla.affected[0], ranges=(narrowed_range,), versions=()),))
    diff = rematch(AdvisoryDelta((narrowed,)), ComponentIndex.build(releases), _active(releases))
    (gone,) = diff.now_inactive
    assert gone.reason is InactiveReason.NOT_AFFECTED
    assert gone.previous.finding.advisory_id == "DLA-3022-1"


def test_withdrawn_and_removed_advisories() -> None:
    releases = _releases()
    index = ComponentIndex.build(releases)
    active = _active(releases)
    (dla,) = read_osv_file(DLA_DPKG)
    withdrawn = rematch(AdvisoryDelta((replace(dla, withdrawn="2026-04-01T00:00:00Z"),)), index, active)
    assert [d.reason for d in withdrawn.now_inactive] == [InactiveReason.WITHDRAWN]
    removed = rematch(AdvisoryDelta((), removed=("DLA-3051-1",)), index, active)
    assert sorted((d.reason, d.previous.release, d.previous.finding.advisory_id) for d in removed.now_inactive) == [
        (InactiveReason.REMOVED, "r1", "DLA-3051-1"),
        (InactiveReason.REMOVED, "r2", "DLA-3051-1"),
    ]


def test_other_advisories_active_findings_are_left_alone() -> None:
    releases = _releases()
    (dla,) = read_osv_file(DLA_DPKG)
    diff = rematch(AdvisoryDelta((dla,)), ComponentIndex.build(releases), _active(releases))
    touched = {d.previous.finding.advisory_id for d in diff.now_inactive} | {f.finding.advisory_id for f in diff.new}
    assert touched <= {"DLA-3022-1"}


def test_alias_groups_from_the_whole_feed_are_used() -> None:
    releases = _releases()
    everything = list(read_osv(DATA / "osv" / "pypi"))
    aliases = build_alias_groups(everything)
    delta = AdvisoryDelta(tuple(a for a in everything if a.id == "PYSEC-2023-74"))
    diff = rematch(delta, ComponentIndex.build(releases), [], aliases=aliases)
    assert {(f.release, f.finding.alias_group) for f in diff.new} == {("py", "CVE-2023-32681")}
