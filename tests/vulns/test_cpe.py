"""CPE 2.3 parsing and NVD configuration matching (AND platform nodes), restricted to the component kinds that
have no package identity."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medsec.sbom.model import Component, ComponentKind, ComponentRef
from medsec.vulns.cpe import Cpe, cpe_matches, escape, unescape
from medsec.vulns.errors import CpeError
from medsec.vulns.feeds.nvd import read_nvd
from medsec.vulns.matcher import Confidence, Matcher, MatchMethod
from medsec.vulns.model import CpeMatch, NvdCve

from .conftest import DATA, component

pytestmark = pytest.mark.req("SM-3")
DANTE = "cpe:2.3:a:audinate:dante_application_library:1.1.0:*:*:*:*:*:*:*"
WINDOWS = "cpe:2.3:o:microsoft:windows:-:*:*:*:*:*:*:*"


@pytest.fixture(scope="module")
def page_matcher() -> Matcher:
    page = read_nvd(DATA / "nvd" / "page-2023-07-18-startIndex-200000-200-cves.json")
    return Matcher.build([], page.cves)


def _dante(version: str = "1.1.0") -> Component:
    return component(
        "dante",
        None,
        version,
        kind=ComponentKind.APPLICATION,
        cpe=f"cpe:2.3:a:audinate:dante_application_library:{version}:*:*:*:*:*:*:*",
    )


def _windows() -> Component:
    return component("windows", None, "-", kind=ComponentKind.OPERATING_SYSTEM, cpe=WINDOWS)


def test_windows_platform_and_node_matches_only_when_both_sides_hold(page_matcher: Matcher) -> None:
    commercial = {ComponentRef("dante")}
    both = page_matcher.match([_dante(), _windows()], commercial=commercial)
    assert [(f.advisory_id, f.component_ref, f.method, f.confidence) for f in both] == [
        ("CVE-2022-23748", "dante", MatchMethod.CPE, Confidence.LOW)
    ]
    assert page_matcher.match([_dante()], commercial=commercial) == []
    assert page_matcher.match([_windows()], commercial=commercial) == []


def test_version_above_the_end_bound_does_not_match(page_matcher: Matcher) -> None:
    assert page_matcher.match([_dante("1.2.1"), _windows()], commercial={ComponentRef("dante")}) == []


def test_application_not_flagged_commercial_is_not_cpe_matched(page_matcher: Matcher) -> None:
    assert page_matcher.match([_dante(), _windows()]) == []


def test_open_source_library_with_purl_is_never_cpe_matched() -> None:
    (cve,) = read_nvd(DATA / "nvd" / "CVE-2023-4863.json").cves
    matcher = Matcher.build([], [cve])
    firefox = "cpe:2.3:a:mozilla:firefox:100.0:*:*:*:*:*:*:*"
    library = component("lib", "pkg:generic/firefox@100.0", cpe=firefox)
    assert matcher.match([library], commercial={ComponentRef("lib")}) == []
    app = component("app", None, "100.0", kind=ComponentKind.APPLICATION, cpe=firefox)
    (finding,) = matcher.match([app], commercial={ComponentRef("app")})
    assert finding.fixed_version == "117.0.1"
    assert finding.alias_group == "CVE-2023-4863"


def test_operating_system_matches_by_exact_version() -> None:
    (cve,) = read_nvd(DATA / "nvd" / "CVE-2023-4863.json").cves
    matcher = Matcher.build([], [cve])
    bookworm = component(
        "os", None, "12.0", kind=ComponentKind.OPERATING_SYSTEM, cpe="cpe:2.3:o:debian:debian_linux:12.0:*:*:*:*:*:*:*"
    )
    assert [f.advisory_id for f in matcher.match([bookworm])] == ["CVE-2023-4863"]
    stretch = component(
        "os", None, "9.0", kind=ComponentKind.OPERATING_SYSTEM, cpe="cpe:2.3:o:debian:debian_linux:9.0:*:*:*:*:*:*:*"
    )
    assert matcher.match([stretch]) == []


def test_version_bounds() -> None:
    match = CpeMatch(
        "cpe:2.3:a:v:p:*:*:*:*:*:*:*:*", True, version_start_including="3.8.0", version_end_including="3.8.12"
    )
    assert cpe_matches(match, Cpe.parse("cpe:2.3:a:v:p:3.8.12:*:*:*:*:*:*:*"))
    assert cpe_matches(match, Cpe.parse("cpe:2.3:a:v:p:3.8.9:*:*:*:*:*:*:*"))
    assert not cpe_matches(match, Cpe.parse("cpe:2.3:a:v:p:3.8.13:*:*:*:*:*:*:*"))
    assert not cpe_matches(match, Cpe.parse("cpe:2.3:a:v:p:*:*:*:*:*:*:*:*"))  # unknown version: no claim
    assert cpe_matches(match, Cpe.parse("cpe:2.3:a:v:p:*:*:*:*:*:*:*:*"), fallback_version="3.8.1")


def test_negated_node_excludes() -> None:
    page = read_nvd(DATA / "nvd" / "page-2023-07-18-startIndex-200000-200-cves.json")
    conf = next(c for c in page.cves if c.id == "CVE-2022-23748").configurations[0]
    nodes = (conf.nodes[0], type(conf.nodes[1])(conf.nodes[1].operator, conf.nodes[1].matches, negate=True))
    negated = NvdCve("CVE-TEST", None, None, None, None, configurations=(type(conf)(nodes, conf.operator),))
    matcher = Matcher.build([], [negated])
    commercial = {ComponentRef("dante")}
    assert matcher.match([_dante(), _windows()], commercial=commercial) == []
    assert [f.advisory_id for f in matcher.match([_dante()], commercial=commercial)] == ["CVE-TEST"]


def test_parse_keeps_quoting_and_unescapes_values() -> None:
    cpe = Cpe.parse(r"cpe:2.3:a:libstdc\+\+6:libstdc\+\+6:6.3.0-18\+deb9u1:*:*:*:*:*:*:*")
    assert cpe.value("product") == "libstdc++6"
    assert cpe.value("version") == "6.3.0-18+deb9u1"
    assert cpe.to_fs() == r"cpe:2.3:a:libstdc\+\+6:libstdc\+\+6:6.3.0-18\+deb9u1:*:*:*:*:*:*:*"


@pytest.mark.parametrize(
    "text",
    [
        "cpe:/a:vendor:product",
        "cpe:2.3:a:v:p",
        "cpe:2.3:x:v:p:*:*:*:*:*:*:*:*",
        "cpe:2.3:a:v::*:*:*:*:*:*:*:*",
        "cpe:2.3:a:v:p:1\\",
    ],
)
def test_malformed_cpe_is_refused(text: str) -> None:
    with pytest.raises(CpeError):
        Cpe.parse(text)


@given(st.text(alphabet=st.characters(codec="ascii", exclude_characters="\x00"), min_size=1, max_size=20))
def test_escape_round_trips(value: str) -> None:
    escaped = escape(value)
    assert unescape(escaped) == value
    cpe = Cpe.parse(f"cpe:2.3:a:v:{escaped}:*:*:*:*:*:*:*:*")
    assert cpe.value("product") == value.lower()
