"""Version ordering: Debian against the real ``dpkg --compare-versions`` and the dpkg/python-debian cases
(tests/data/vulns/versions, GPL-2.0-or-later sources, data only), and univers-backed schemes."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medsec.vulns.errors import InvalidVersionError, UnsupportedEcosystemError
from medsec.vulns.versions import compare_debian, compare_versions, parse_debian_version, scheme_for

from .conftest import DATA

pytestmark = pytest.mark.req("SM-3")
CASES: dict[str, Any] = json.loads((DATA / "versions" / "debian-version-compare.json").read_text("utf-8"))
DPKG = shutil.which("dpkg")
needs_dpkg = pytest.mark.skipif(
    DPKG is None, reason="dpkg is not installed: no reference implementation to compare with"
)


@pytest.mark.parametrize("case", CASES["comparisons"], ids=lambda c: f"{c['a']} vs {c['b']}")
def test_debian_comparison_cases(case: dict[str, Any]) -> None:
    assert compare_debian(case["a"], case["b"]) == case["expected"]


@pytest.mark.parametrize("case", CASES["parse_cases"], ids=lambda c: repr(c["version"]))
def test_debian_parse_cases(case: dict[str, Any]) -> None:
    v = parse_debian_version(case["version"])
    assert v.epoch == (int(case["epoch"]) if case["epoch"] is not None else 0)
    assert v.upstream == case["upstream"]
    assert v.revision == (case["revision"] or "")


@pytest.mark.parametrize("case", CASES["invalid_versions"], ids=lambda c: repr(c["version"]))
def test_debian_invalid_versions_are_refused(case: dict[str, Any]) -> None:
    with pytest.raises(InvalidVersionError):
        parse_debian_version(case["version"])


@pytest.mark.parametrize("case", CASES["sorted_lists"], ids=lambda c: c["function"])
def test_debian_sorted_lists(case: dict[str, Any]) -> None:
    from medsec.vulns.versions import _part_key

    if case["function"] == "version_compare":
        ordered = sorted(case["unsorted"], key=lambda s: parse_debian_version(s, strict=False))
    else:  # version_compare_part / version_compare_string: dpkg verrevcmp on bare strings
        ordered = sorted(case["unsorted"], key=_part_key)
    assert ordered == case["expected_sorted"]


def _dpkg(a: str, op: str, b: str) -> subprocess.CompletedProcess[str]:
    assert DPKG is not None
    return subprocess.run([DPKG, "--compare-versions", a, op, b], capture_output=True, text=True, check=False)


def _dpkg_order(a: str, b: str) -> int:
    if _dpkg(a, "lt", b).returncode == 0:
        return -1
    return 1 if _dpkg(a, "gt", b).returncode == 0 else 0


_alnum = st.sampled_from("0123456789" * 3 + "abcxyzABZ")
_piece = st.text(alphabet="0123456789abzAZ.+~", min_size=0, max_size=6)
_upstream = st.builds(lambda first, rest: first + rest, st.sampled_from("0123456789"), _piece)
debian_versions = st.builds(
    lambda epoch, upstream, revision: (
        (f"{epoch}:" if epoch is not None else "") + upstream + (f"-{revision}" if revision else "")
    ),
    st.one_of(st.none(), st.integers(min_value=0, max_value=99)),
    st.one_of(_upstream, st.builds(lambda u, h: u + "-" + h, _upstream, _piece.filter(bool))),
    st.one_of(st.just(""), st.text(alphabet="0123456789ab.+~", min_size=1, max_size=5)),
)


@needs_dpkg
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(debian_versions, debian_versions)
def test_debian_ordering_agrees_with_dpkg(a: str, b: str) -> None:
    assert compare_debian(a, b) == _dpkg_order(a, b), (a, b)


@needs_dpkg
@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["1.0", "2:1.2-3", "0~rc1"]), st.text(alphabet="0123456789aZ.+-~:_@ ", max_size=8))
def test_debian_validity_agrees_with_dpkg(reference: str, candidate: str) -> None:
    """dpkg errors (exit 2) must raise in both modes; dpkg warnings must raise in strict mode only."""
    if candidate.startswith("-") or candidate == "":
        return  # dpkg would read it as an option / treats "" as "no version", older than any (dpkg(1))
    result = _dpkg(candidate, "eq", reference)
    hard_error = result.returncode == 2
    warned = "bad syntax" in result.stderr
    if hard_error:
        with pytest.raises(InvalidVersionError):
            parse_debian_version(candidate, strict=False)
        return
    lenient = parse_debian_version(candidate, strict=False)
    assert (lenient == parse_debian_version(reference)) == (result.returncode == 0)
    if warned:
        with pytest.raises(InvalidVersionError):
            parse_debian_version(candidate)
    else:
        parse_debian_version(candidate)


def test_colon_in_upstream_with_epoch_orders() -> None:
    # univers' Debian class cannot order this; Debian Policy 5.6.12 allows it.
    assert compare_debian("1:2:3", "1:2.3") == 1  # dpkg: ":" sorts after "."


@pytest.mark.parametrize(
    ("ecosystem", "a", "b", "expected"),
    [
        ("PyPI", "1.0", "1.0.0", 0),
        ("PyPI", "2.0rc1", "2.0", -1),
        ("npm", "1.2.3", "1.10.0", -1),
        ("npm", "1.0.0-beta.2", "1.0.0-beta.11", -1),
        ("Go", "v1.2.3", "v1.2.10", -1),
        ("Maven", "1.0-SNAPSHOT", "1.0", -1),
        ("Debian:9", "1.1.0l-1~deb9u5", "1.1.0l-1~deb9u6", -1),
        ("Ubuntu:22.04:LTS", "1.21.1ubuntu2.3", "1.21.1ubuntu2", 1),
        ("Alpine:v3.16", "1.2.3-r1", "1.2.3-r0", 1),
        ("Red Hat", "1.0-2.el8", "1.0-10.el8", -1),
    ],
)
def test_ecosystem_orderings(ecosystem: str, a: str, b: str, expected: int) -> None:
    assert compare_versions(ecosystem, a, b) == expected


def test_unsupported_ecosystem_is_a_clear_error() -> None:
    with pytest.raises(UnsupportedEcosystemError) as caught:
        scheme_for("Bioconductor")
    assert "Bioconductor" in caught.value.diagnostics()


def test_invalid_version_names_the_scheme() -> None:
    with pytest.raises(InvalidVersionError) as caught:
        compare_versions("PyPI", "not a version", "1.0")
    assert caught.value.scheme == "PyPI"
