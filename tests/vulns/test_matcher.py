"""OSV matching on real records: the Debian 9 SBOM against the four DLAs, PyPI records, OSV range semantics."""

from __future__ import annotations

from dataclasses import replace

import pytest

from medsec.sbom.model import ComponentKind
from medsec.vulns.feeds.osv import read_osv
from medsec.vulns.matcher import Confidence, Matcher, MatchMethod
from medsec.vulns.model import (
    Advisory,
    AdvisoryId,
    Affected,
    AffectedPackage,
    AffectedRange,
    EventKind,
    RangeEvent,
    RangeType,
)

from .conftest import DATA, component, stretch_components

pytestmark = pytest.mark.req("SM-3")

DLAS = ("DLA-3008-1", "DLA-3012-1", "DLA-3022-1", "DLA-3051-1")


@pytest.fixture(scope="module")
def debian_matcher() -> Matcher:
    return Matcher.build(read_osv(DATA / "osv" / "debian"))


@pytest.fixture(scope="module")
def pypi_matcher() -> Matcher:
    return Matcher.build(read_osv(DATA / "osv" / "pypi"))


def test_four_dlas_match_exactly_the_vulnerable_packages_of_the_stretch_sbom(debian_matcher: Matcher) -> None:
    components = stretch_components()
    assert sum(1 for c in components if (c.purl or "").startswith("pkg:deb/")) == 132
    findings = debian_matcher.match(components)
    got = {(f.advisory_id, f.component_ref.split("@")[0], f.component_version) for f in findings}
    assert got == {
        ("DLA-3008-1", "pkg:deb/debian/openssl", "1.1.0l-1~deb9u5"),
        ("DLA-3008-1", "pkg:deb/debian/libssl1.1", "1.1.0l-1~deb9u5"),  # binary -> source via upstream=openssl
        ("DLA-3012-1", "pkg:deb/debian/libxml2", "2.9.4+dfsg1-2.2+deb9u6"),
        ("DLA-3022-1", "pkg:deb/debian/dpkg", "1.18.25"),
        ("DLA-3051-1", "pkg:deb/debian/tzdata", "2021a-0+deb9u3"),
    }
    by_id = {f.advisory_id: f for f in findings}
    assert by_id["DLA-3022-1"].fixed_version == "1.18.26"
    assert by_id["DLA-3008-1"].alias_group == "CVE-2022-1292"
    assert all(f.method is MatchMethod.OSV_PURL and f.confidence is Confidence.HIGH for f in findings)


@pytest.mark.parametrize(
    ("purl", "advisory"),
    [
        ("pkg:deb/debian/libssl1.1@1.1.0l-1~deb9u6?arch=amd64&upstream=openssl&distro=debian-9", "DLA-3008-1"),
        ("pkg:deb/debian/libxml2@2.9.4+dfsg1-2.2+deb9u7?arch=amd64&distro=debian-9", "DLA-3012-1"),
        ("pkg:deb/debian/dpkg@1.18.26?arch=amd64&distro=debian-9", "DLA-3022-1"),
        ("pkg:deb/debian/tzdata@2021a-0+deb9u4?arch=all&distro=debian-9", "DLA-3051-1"),
    ],
)
def test_fixed_debian_versions_do_not_match(debian_matcher: Matcher, purl: str, advisory: str) -> None:
    assert debian_matcher.match([component("c", purl)]) == []


def test_debian_release_must_agree(debian_matcher: Matcher) -> None:
    buster = component("c", "pkg:deb/debian/dpkg@1.18.25?arch=amd64&distro=debian-10")
    assert debian_matcher.match([buster]) == []
    codename = component("c", "pkg:deb/debian/dpkg@1.18.25?arch=amd64&distro=stretch")
    assert [f.advisory_id for f in debian_matcher.match([codename])] == ["DLA-3022-1"]


def test_unknown_release_matches_with_medium_confidence(debian_matcher: Matcher) -> None:
    (finding,) = debian_matcher.match([component("c", "pkg:deb/debian/dpkg@1.18.25?arch=amd64")])
    assert finding.confidence is Confidence.MEDIUM


@pytest.mark.parametrize(
    ("purl", "expected"),
    [
        ("pkg:pypi/django@4.2.13", {"PYSEC-2024-57"}),
        ("pkg:pypi/django@5.0.6", {"PYSEC-2024-57"}),
        ("pkg:pypi/Django@4.2.14", set()),
        ("pkg:pypi/django@5.0.7", set()),
        ("pkg:pypi/requests@2.30.0", {"PYSEC-2023-74"}),
        ("pkg:pypi/requests@2.31.0", set()),
        ("pkg:pypi/requests@2.19.1", {"PYSEC-2018-28", "PYSEC-2023-74"}),
    ],
)
def test_pypi_yaml_records_match_affected_and_not_fixed(pypi_matcher: Matcher, purl: str, expected: set[str]) -> None:
    got = {f.advisory_id for f in pypi_matcher.match([component("c", purl)])}
    relevant = {"PYSEC-2024-57", "PYSEC-2023-74", "PYSEC-2018-28"}
    assert got & relevant == expected


def test_pypi_alias_group_is_the_cve(pypi_matcher: Matcher) -> None:
    (finding,) = [
        f for f in pypi_matcher.match([component("c", "pkg:pypi/requests@2.30.0")]) if f.advisory_id == "PYSEC-2023-74"
    ]
    assert finding.alias_group == "CVE-2023-32681"
    assert "GHSA-j8r2-6x86-q33q" in finding.aliases


def test_component_without_purl_matches_by_name_only_when_an_ecosystem_is_given(pypi_matcher: Matcher) -> None:
    bare = component("c", None, "2.30.0", name="Requests")
    assert pypi_matcher.match([bare]) == []
    findings = pypi_matcher.match([bare], name_ecosystem="PyPI")
    assert {f.method for f in findings} == {MatchMethod.OSV_ECOSYSTEM}
    assert {f.confidence for f in findings} == {Confidence.MEDIUM}


def _advisory(*ranges: AffectedRange, versions: tuple[str, ...] = (), ecosystem: str = "PyPI") -> Advisory:
    return Advisory(
        id=AdvisoryId("TEST-1"),
        modified="2024-01-01T00:00:00Z",
        affected=(Affected(AffectedPackage(ecosystem, "pkg"), ranges=ranges, versions=versions),),
    )


def _range(kind: RangeType, *events: tuple[str, str], repo: str | None = None) -> AffectedRange:
    return AffectedRange(kind, tuple(RangeEvent(EventKind(k), v) for k, v in events), repo)


def _hits(advisory: Advisory, version: str, ecosystem_purl: str = "pypi") -> bool:
    return bool(Matcher.build([advisory]).match([component("c", f"pkg:{ecosystem_purl}/pkg@{version}")]))


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("0.9", False),
        ("1.0", True),
        ("1.4", True),
        ("1.5", False),
        ("2.9", False),
        ("3.0", True),
        ("3.2.4", True),
        ("3.2.5", False),
    ],
)
def test_multiple_intervals_in_one_range(version: str, expected: bool) -> None:
    rng = _range(
        RangeType.ECOSYSTEM, ("introduced", "1.0"), ("fixed", "1.5"), ("introduced", "3.0"), ("fixed", "3.2.5")
    )
    assert _hits(_advisory(rng), version) is expected


@pytest.mark.parametrize(("version", "expected"), [("2.1.214", True), ("2.1.215", False), ("0.1", True)])
def test_last_affected_is_inclusive(version: str, expected: bool) -> None:
    rng = _range(RangeType.ECOSYSTEM, ("introduced", "0"), ("last_affected", "2.1.214"))
    assert _hits(_advisory(rng), version) is expected


@pytest.mark.parametrize(("version", "expected"), [("1.0", True), ("1.9", True), ("2.0", False), ("5.0", False)])
def test_limit_bounds_the_range(version: str, expected: bool) -> None:
    rng = _range(RangeType.ECOSYSTEM, ("introduced", "1.0"), ("limit", "2.0"))
    assert _hits(_advisory(rng), version) is expected


def test_unsorted_events_are_sorted_before_evaluation() -> None:
    rng = _range(RangeType.ECOSYSTEM, ("fixed", "1.5"), ("introduced", "1.0"))
    assert _hits(_advisory(rng), "1.2")
    assert not _hits(_advisory(rng), "1.5")


def test_explicit_versions_list_matches_exact_strings() -> None:
    advisory = _advisory(versions=("1.0.0", "1.0.3"))
    assert _hits(advisory, "1.0.3")
    assert not _hits(advisory, "1.0.2")


def test_semver_range_uses_semver_precedence_not_the_ecosystem() -> None:
    rng = _range(RangeType.SEMVER, ("introduced", "1.0.0"), ("fixed", "1.10.0"))
    advisory = _advisory(rng, ecosystem="npm")
    assert _hits(advisory, "1.9.0", "npm")
    assert _hits(advisory, "1.10.0-rc.1", "npm")  # SemVer 2.0 section 11: pre-release < release
    assert not _hits(advisory, "1.10.0", "npm")


def test_withdrawn_advisory_never_matches() -> None:
    advisory = replace(_advisory(_range(RangeType.ECOSYSTEM, ("introduced", "0"))), withdrawn="2024-02-01T00:00:00Z")
    assert not _hits(advisory, "1.0")


def test_git_range_only_matches_components_with_a_commit() -> None:
    (curl,) = read_osv(DATA / "osv" / "other" / "CURL-CVE-2009-0037.json")
    matcher = Matcher.build([curl])
    introduced = "ae1912cb0d494b48d514d937826c9fe83ec96c4d"
    with_commit = component(
        "curl", f"pkg:generic/curl@7.19.0?vcs_url=git%2Bhttps://github.com/curl/curl.git%40{introduced}"
    )
    (finding,) = matcher.match([with_commit])
    assert finding.method is MatchMethod.OSV_GIT
    assert finding.fixed_version == "042cc1f69ec0878f542667cb684378869f859911"
    assert matcher.match([component("curl", "pkg:generic/curl@7.19.0")]) == []


def test_git_history_decides_descendant_commits() -> None:
    (curl,) = read_osv(DATA / "osv" / "other" / "CURL-CVE-2009-0037.json")
    fixed = "042cc1f69ec0878f542667cb684378869f859911"
    middle = "1" * 40

    class History:
        def is_ancestor(self, repo: str, ancestor: str, descendant: str) -> bool:
            order = ["ae1912cb0d494b48d514d937826c9fe83ec96c4d", middle, fixed]
            return ancestor in order and descendant in order and order.index(ancestor) < order.index(descendant)

    matcher = Matcher.build([curl])

    def at(commit: str) -> list[object]:
        c = component("curl", f"pkg:generic/curl?vcs_url=git%2Bhttps://github.com/curl/curl%40{commit}", "x")
        return list(matcher.match([c], git=History()))

    assert at(middle)
    assert not at(fixed)


def test_unparseable_component_version_is_an_issue_not_a_finding(pypi_matcher: Matcher) -> None:
    report = pypi_matcher.match_report([component("c", "pkg:pypi/requests@not-a-version")])
    assert report.findings == ()
    assert report.issues and "not a valid PyPI version" in report.issues[0].message


def test_osv_matching_ignores_component_kind_and_cpe(debian_matcher: Matcher) -> None:
    c = component(
        "c",
        "pkg:deb/debian/dpkg@1.18.25?distro=debian-9",
        kind=ComponentKind.OPERATING_SYSTEM,
        cpe="cpe:2.3:a:debian:dpkg:1.18.25:*:*:*:*:*:*:*",
    )
    assert [f.advisory_id for f in debian_matcher.match([c])] == ["DLA-3022-1"]
