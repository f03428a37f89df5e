"""Software bills of materials: read, check, generate, export and compare (SM-3, 附属書A).

``read_sbom`` reads CycloneDX 1.2–1.6 (JSON, XML) and SPDX 2.3 JSON into the frozen values of
:mod:`medsec.sbom.model`; ``quality_report`` checks them against the NTIA minimum elements;
``merge`` builds one view of a release's own and its suppliers' SBOMs; ``sbom_from_rootfs``
inventories a device root filesystem; ``export_cyclonedx`` writes CycloneDX 1.6 JSON; ``diff``
compares two releases.
"""

from medsec.sbom.diff import SbomDiff, VersionChange, diff
from medsec.sbom.errors import MalformedSbomError, SbomError, SbomSourceError, UnsupportedSbomError
from medsec.sbom.export import export_cyclonedx
from medsec.sbom.merge import MergeConflict, MergeResult, merge
from medsec.sbom.model import (
    Component,
    ComponentIssue,
    ComponentKind,
    ComponentRef,
    IssueLevel,
    Provenance,
    Sbom,
)
from medsec.sbom.quality import QualityReport, quality_report
from medsec.sbom.reader import parse_json_document, read_sbom
from medsec.sbom.rootfs import sbom_from_rootfs

__all__ = [
    "Component",
    "ComponentIssue",
    "ComponentKind",
    "ComponentRef",
    "IssueLevel",
    "MalformedSbomError",
    "MergeConflict",
    "MergeResult",
    "Provenance",
    "QualityReport",
    "Sbom",
    "SbomDiff",
    "SbomError",
    "SbomSourceError",
    "UnsupportedSbomError",
    "VersionChange",
    "diff",
    "export_cyclonedx",
    "merge",
    "parse_json_document",
    "quality_report",
    "read_sbom",
    "sbom_from_rootfs",
]
