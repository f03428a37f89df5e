"""SBOM quality against the NTIA minimum elements."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsec.sbom import read_sbom
from medsec.sbom.quality import Element, quality_report

from .conftest import CDX12_JSON, DEBIAN_XML, MEDICAL_EXTENDED, cdx, write_json

pytestmark = pytest.mark.req("SM-3")


def _coverage(report_dict: dict[str, object], element: str) -> tuple[int, int]:
    entry = report_dict["coverage"][element]  # type: ignore[index]
    return entry["present"], entry["total"]


def test_medical_device_sbom_lacks_dependency_relationships() -> None:
    report = quality_report(read_sbom(MEDICAL_EXTENDED))
    as_dict = report.to_dict()
    assert _coverage(as_dict, "name") == (65, 65)
    assert _coverage(as_dict, "identifier") == (65, 65)
    assert _coverage(as_dict, "version") == (59, 65)
    # The dependencies section lists every ref with no dependsOn: no relationship is stated.
    assert _coverage(as_dict, "dependency") == (0, 65)
    assert "dependency: no dependency relationships at all" in report.document_findings
    assert report.unmatchable == ()
    assert 80 < report.score < 90


def test_debian_sbom_lists_components_without_identifiers() -> None:
    sbom = read_sbom(DEBIAN_XML)
    report = quality_report(sbom)
    names = {c.ref: c.name for c in sbom.components}
    assert [names[r] for r in report.unmatchable] == ["debian"]
    assert any(f.startswith("author: only tools named") for f in report.document_findings)
    assert any(f.startswith("identifier: 1 of 137") for f in report.document_findings)
    findings = {f.name: f for f in report.component_findings}
    assert Element.IDENTIFIER in findings["debian"].missing


def test_complete_sbom_scores_100(tmp_path: Path) -> None:
    doc = cdx(
        [
            {
                "type": "library",
                "bom-ref": "a",
                "supplier": {"name": "Acme"},
                "name": "a",
                "version": "1",
                "purl": "pkg:pypi/a@1",
            }
        ],
        metadata={
            "timestamp": "2024-01-01T00:00:00Z",
            "authors": [{"name": "PSIRT"}],
            "component": {"type": "application", "bom-ref": "app", "name": "app", "version": "2"},
        },
        dependencies=[{"ref": "app", "dependsOn": ["a"]}],
    )
    report = quality_report(read_sbom(write_json(tmp_path / "bom.json", doc)))
    assert report.score == 100.0
    assert report.document_findings == ()
    assert report.component_findings == ()


def test_missing_timestamp_and_author_are_document_findings(tmp_path: Path) -> None:
    doc = cdx([{"type": "library", "name": "a", "version": "1", "purl": "pkg:pypi/a@1"}])
    report = quality_report(read_sbom(write_json(tmp_path / "bom.json", doc)))
    assert "timestamp: missing" in report.document_findings
    assert any(f.startswith("author: no author") for f in report.document_findings)
    coverage = {c.element: c for c in report.coverage}
    assert coverage[Element.AUTHOR].ratio == 0 and coverage[Element.TIMESTAMP].ratio == 0


def test_quality_of_a_12_sbom_with_hashes() -> None:
    report = quality_report(read_sbom(CDX12_JSON))
    assert report.component_count == 43
    assert 0 <= report.score <= 100
