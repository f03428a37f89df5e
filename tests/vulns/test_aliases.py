"""Alias groups across OSV (aliases/upstream/related), NVD and KEV."""

from __future__ import annotations

import pytest

from medsec.vulns.aliases import AliasGroupBuilder, build_alias_groups
from medsec.vulns.feeds.kev import read_kev
from medsec.vulns.feeds.nvd import read_nvd
from medsec.vulns.feeds.osv import read_osv
from medsec.vulns.model import Advisory, AdvisoryId

from .conftest import DATA

pytestmark = pytest.mark.req("SM-3")


def test_cve_2023_4863_joins_nvd_pysec_and_kev() -> None:
    advisories = list(read_osv(DATA / "osv" / "pypi"))
    nvd = read_nvd(DATA / "nvd" / "CVE-2023-4863.json").cves
    kev = read_kev(DATA / "kev" / "known_exploited_vulnerabilities.json")
    kev_ids = [e.cve_id for e in kev.entries if e.cve_id == "CVE-2023-4863"]
    groups = build_alias_groups(advisories, [*(c.id for c in nvd), *kev_ids])
    group = groups.group("CVE-2023-4863")
    assert group.canonical == "CVE-2023-4863"
    assert groups.canonical(nvd[0].id) == groups.canonical(kev_ids[0]) == "CVE-2023-4863"
    # PYSEC-2023-175 is `related` to CVE-2023-4863 and CVE-2023-5129: linked to both, merged into neither.
    assert "PYSEC-2023-175" in group.linked
    assert "CVE-2023-4863" in {g.canonical for g in groups.related_groups("PYSEC-2023-175")}


def test_dla_upstream_and_debian_cve_join_the_cve() -> None:
    groups = build_alias_groups(read_osv(DATA / "osv" / "debian"))
    group = groups.group("DLA-3008-1")
    assert group.canonical == "CVE-2022-1292"
    assert group.members == {"DLA-3008-1", "CVE-2022-1292", "DEBIAN-CVE-2022-1292"}


def test_aliases_join_ghsa_pysec_and_cve() -> None:
    groups = build_alias_groups(read_osv(DATA / "osv" / "pypi" / "json-from-osv-api"))
    assert groups.group("GHSA-j8r2-6x86-q33q").canonical == "CVE-2023-32681"
    assert "PYSEC-2023-74" in groups.group("CVE-2023-32681")


def test_ubuntu_per_cve_record_joins_by_name() -> None:
    groups = build_alias_groups(read_osv(DATA / "osv" / "ubuntu" / "UBUNTU-CVE-2025-38094.json"), ["CVE-2025-38094"])
    assert groups.canonical("UBUNTU-CVE-2025-38094") == "CVE-2025-38094"


def test_a_record_upstream_of_two_cves_never_merges_them() -> None:
    dsa = Advisory(AdvisoryId("DSA-1"), "m", upstream=("CVE-2024-0001", "CVE-2024-0002"))
    groups = build_alias_groups([dsa])
    assert groups.canonical("CVE-2024-0001") != groups.canonical("CVE-2024-0002")
    assert {g.canonical for g in groups.related_groups("DSA-1")} >= {"CVE-2024-0001", "CVE-2024-0002"}


def test_group_without_cve_prefers_ghsa_and_result_is_order_independent() -> None:
    a = Advisory(AdvisoryId("PYSEC-1"), "m", aliases=("GHSA-aaaa",))
    b = Advisory(AdvisoryId("OSV-9"), "m", related=("PYSEC-1",))
    for order in ([a, b], [b, a]):
        builder = AliasGroupBuilder()
        for adv in order:
            builder.add_advisory(adv)
        groups = builder.build()
        assert groups.canonical("OSV-9") == "GHSA-aaaa"


def test_unknown_id_is_its_own_group() -> None:
    groups = build_alias_groups([])
    assert groups.group("CVE-2000-0001").members == {"CVE-2000-0001"}
