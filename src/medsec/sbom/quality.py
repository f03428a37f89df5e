"""SBOM quality against the NTIA minimum elements (2021) as framed by CISA (2024).

Seven data fields are checked: supplier, component name, version, unique identifiers (purl or CPE),
dependency relationship, author of SBOM data and timestamp. The first five are per component,
the last two per document. Components without an identifier are listed on their own: vulnerability
matching cannot see them (SM-3).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

from medsec.sbom.model import ComponentRef, IssueLevel, Sbom


class Element(enum.StrEnum):
    """NTIA minimum data fields."""

    SUPPLIER = "supplier"
    NAME = "name"
    VERSION = "version"
    IDENTIFIER = "identifier"  # "other unique identifiers": purl or CPE
    DEPENDENCY = "dependency"  # "dependency relationship"
    AUTHOR = "author"  # "author of SBOM data"
    TIMESTAMP = "timestamp"


COMPONENT_ELEMENTS = (Element.SUPPLIER, Element.NAME, Element.VERSION, Element.IDENTIFIER, Element.DEPENDENCY)
DOCUMENT_ELEMENTS = (Element.AUTHOR, Element.TIMESTAMP)


@dataclass(frozen=True)
class Coverage:
    element: Element
    present: int
    total: int

    @property
    def ratio(self) -> float:
        return self.present / self.total if self.total else 1.0


@dataclass(frozen=True)
class ComponentFindings:
    ref: ComponentRef
    name: str
    missing: tuple[Element, ...]
    issues: tuple[str, ...]  # the component's own issues, as "field: message"


@dataclass(frozen=True)
class QualityReport:
    score: float  # 0-100: mean of the per-element coverage of all seven elements
    coverage: tuple[Coverage, ...]
    document_findings: tuple[str, ...]
    component_findings: tuple[ComponentFindings, ...]  # only components with something missing or wrong
    unmatchable: tuple[ComponentRef, ...]  # no purl or CPE: invisible to vulnerability matching
    component_count: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": round(self.score, 1),
            "component_count": self.component_count,
            "coverage": {c.element.value: {"present": c.present, "total": c.total} for c in self.coverage},
            "document_findings": list(self.document_findings),
            "unmatchable": list(self.unmatchable),
            "components": [
                {"ref": f.ref, "name": f.name, "missing": [m.value for m in f.missing], "issues": list(f.issues)}
                for f in self.component_findings
            ],
        }


def _is_timestamp(value: str) -> bool:
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def quality_report(sbom: Sbom) -> QualityReport:
    """Check ``sbom`` against the minimum elements; linear in components and dependency edges."""
    related: set[ComponentRef] = set()
    for ref, targets in sbom.dependencies:
        if targets:
            related.add(ref)
            related.update(targets)
    subject_ref = sbom.subject.ref if sbom.subject is not None else None

    counts = dict.fromkeys(COMPONENT_ELEMENTS, 0)
    findings: list[ComponentFindings] = []
    unmatchable: list[ComponentRef] = []
    for c in sbom.components:
        present = {
            Element.SUPPLIER: bool(c.supplier),
            Element.NAME: bool(c.name),
            Element.VERSION: bool(c.version),
            Element.IDENTIFIER: c.purl is not None or c.cpe is not None,
            # A nested component is related to its parent by containment (CycloneDX assemblies).
            Element.DEPENDENCY: c.ref in related or c.parent is not None,
        }
        for element, ok in present.items():
            counts[element] += ok
        if not present[Element.IDENTIFIER]:
            unmatchable.append(c.ref)
        missing = tuple(e for e, ok in present.items() if not ok)
        if missing or c.issues:
            findings.append(
                ComponentFindings(
                    ref=c.ref,
                    name=c.name,
                    missing=missing,
                    issues=tuple(f"{i.field}: {i.message}" for i in c.issues),
                )
            )

    total = len(sbom.components)
    document: list[str] = []
    prov = sbom.provenance
    has_author = bool(prov.authors or prov.tools)
    if not prov.authors and prov.tools:
        document.append(f"author: only tools named ({', '.join(prov.tools)}); no person or organisation")
    elif not has_author:
        document.append("author: no author of SBOM data (metadata.authors / creators)")
    has_timestamp = prov.created is not None and _is_timestamp(prov.created)
    if prov.created is None:
        document.append("timestamp: missing")
    elif not has_timestamp:
        document.append(f"timestamp: {prov.created!r} is not an ISO 8601 date-time")
    if sbom.subject is None:
        document.append("subject: the SBOM does not name the product it describes")
    if total and not related:
        document.append("dependency: no dependency relationships at all")
    if subject_ref is not None and subject_ref not in related and total:
        document.append("dependency: the subject has no relationship to its components")
    if unmatchable:
        document.append(f"identifier: {len(unmatchable)} of {total} components have no purl or CPE")
    errors = sum(1 for c in sbom.components for i in c.issues if i.level is IssueLevel.ERROR)
    if errors:
        document.append(f"issues: {errors} component errors")
    document.extend(f"{i.field}: {i.message}" for i in sbom.issues)

    coverage = [Coverage(e, counts[e], total) for e in COMPONENT_ELEMENTS]
    coverage.append(Coverage(Element.AUTHOR, int(has_author), 1))
    coverage.append(Coverage(Element.TIMESTAMP, int(has_timestamp), 1))
    score = 100.0 * sum(c.ratio for c in coverage) / len(coverage)
    return QualityReport(
        score=score,
        coverage=tuple(coverage),
        document_findings=tuple(document),
        component_findings=tuple(findings),
        unmatchable=tuple(unmatchable),
        component_count=total,
    )
