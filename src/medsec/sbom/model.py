"""The SBOM values every other subsystem shares (vulnerability matching, lifecycle, advisories).

Formats (CycloneDX, SPDX) are read into these frozen values and written from them;
nothing outside ``medsec.sbom`` depends on a format library.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NewType

ComponentRef = NewType("ComponentRef", str)  # bom-ref (CycloneDX) or SPDXID, unique inside one SBOM


class ComponentKind(enum.StrEnum):
    """What a component is; CPE matching is used only for the last four (see medsec.vulns)."""

    LIBRARY = "library"
    APPLICATION = "application"
    FRAMEWORK = "framework"
    CONTAINER = "container"
    FILE = "file"
    OPERATING_SYSTEM = "operating-system"
    FIRMWARE = "firmware"
    DEVICE = "device"
    PLATFORM = "platform"


class IssueLevel(enum.StrEnum):
    WARNING = "warning"  # the component is kept but flagged
    ERROR = "error"  # the component is kept but cannot be matched by identifier


@dataclass(frozen=True)
class ComponentIssue:
    """Something wrong with one component (a bad purl, a missing version...); never rejects the file."""

    field: str
    message: str
    level: IssueLevel = IssueLevel.WARNING


@dataclass(frozen=True)
class Component:
    ref: ComponentRef
    name: str
    version: str | None
    kind: ComponentKind = ComponentKind.LIBRARY
    supplier: str | None = None
    purl: str | None = None  # normalised package URL, None if absent or invalid
    cpe: str | None = None  # CPE 2.3 formatted string
    hashes: tuple[tuple[str, str], ...] = ()  # (algorithm, hex)
    licenses: tuple[str, ...] = ()
    # FDA premarket guidance: support level and end-of-support date per component.
    support_level: str | None = None
    end_of_support: str | None = None  # ISO date
    source_sbom: str | None = None  # provenance: which supplier SBOM this came from (merged views)
    issues: tuple[ComponentIssue, ...] = ()
    group: str | None = None  # CycloneDX group (Maven groupId, npm scope...)
    parent: ComponentRef | None = None  # the enclosing component when the SBOM nests components
    properties: tuple[tuple[str, str], ...] = ()  # other name/value properties, in document order


@dataclass(frozen=True)
class Provenance:
    """Where an SBOM came from: the manufacturer itself or a named supplier (附属書A: keep them apart)."""

    supplier: str
    format: str  # "CycloneDX 1.6 JSON", "SPDX 2.3 JSON", ...
    document_id: str | None = None  # serialNumber / documentNamespace
    created: str | None = None
    tools: tuple[str, ...] = ()
    sha256: str | None = None  # of the file as imported
    authors: tuple[str, ...] = ()  # NTIA "author of SBOM data" (people, organisations)
    from_supplier: bool = False  # True when the caller named a supplier (附属書A: kept apart)
    source_name: str | None = None  # file name as imported


@dataclass(frozen=True)
class Sbom:
    provenance: Provenance
    subject: Component | None  # the product/release described (metadata.component / documentDescribes)
    components: tuple[Component, ...]
    dependencies: tuple[tuple[ComponentRef, tuple[ComponentRef, ...]], ...] = ()
    issues: tuple[ComponentIssue, ...] = field(default=())  # document-level findings
