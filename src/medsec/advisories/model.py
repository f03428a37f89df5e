"""Frozen input values for advisories: the products, the triage (VEX) of each vulnerability, and the document.

One set of triage values feeds CSAF (security advisory and VEX profiles), CycloneDX VEX and OpenVEX, so the
three exports cannot disagree. Texts (titles, summaries, impact statements) come from the caller in the
document's language; only the generator's fixed phrases are translated by medsec.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Literal

from medsec.advisories.errors import AdvisoryInputError
from medsec.sbom.model import Component, ComponentRef

Lang = Literal["ja", "en"]


class Status(enum.StrEnum):
    """CSAF product_status groups used for triage (CSAF 2.0 3.2.3.9)."""

    KNOWN_AFFECTED = "known_affected"
    KNOWN_NOT_AFFECTED = "known_not_affected"
    FIXED = "fixed"
    UNDER_INVESTIGATION = "under_investigation"


class Justification(enum.StrEnum):
    """CSAF 2.0 3.2.3.5 flag labels, the CISA VEX minimum-requirements justifications."""

    COMPONENT_NOT_PRESENT = "component_not_present"
    VULNERABLE_CODE_NOT_PRESENT = "vulnerable_code_not_present"
    VULNERABLE_CODE_CANNOT_BE_CONTROLLED_BY_ADVERSARY = "vulnerable_code_cannot_be_controlled_by_adversary"
    VULNERABLE_CODE_NOT_IN_EXECUTE_PATH = "vulnerable_code_not_in_execute_path"
    INLINE_MITIGATIONS_ALREADY_EXIST = "inline_mitigations_already_exist"


class RemediationCategory(enum.StrEnum):
    """CSAF 2.0 3.2.3.12.1."""

    VENDOR_FIX = "vendor_fix"
    MITIGATION = "mitigation"
    WORKAROUND = "workaround"
    NO_FIX_PLANNED = "no_fix_planned"
    NONE_AVAILABLE = "none_available"


class DocumentStatus(enum.StrEnum):
    DRAFT = "draft"
    INTERIM = "interim"
    FINAL = "final"


@dataclass(frozen=True)
class DeviceRelease:
    """A released version of a device model and the components it ships (from its SBOM)."""

    manufacturer: str
    model: str
    version: str
    components: tuple[Component, ...] = ()
    purl: str | None = None
    cpe: str | None = None

    def component(self, ref: ComponentRef) -> Component:
        for c in self.components:
            if c.ref == ref:
                return c
        raise AdvisoryInputError(f"{self.model} {self.version} has no component {ref!r}")


@dataclass(frozen=True)
class Remediation:
    category: RemediationCategory
    details: str
    url: str | None = None
    date: dt.datetime | None = None


@dataclass(frozen=True)
class Assessment:
    """The triage of one vulnerability for one release (or one component inside it)."""

    release: str  # DeviceRelease.version
    status: Status
    component: ComponentRef | None = None  # None: the device release as a whole
    justification: Justification | None = None  # required for KNOWN_NOT_AFFECTED
    impact_statement: str | None = None  # why not affected, in the document language
    remediations: tuple[Remediation, ...] = ()

    def __post_init__(self) -> None:
        if self.status is Status.KNOWN_NOT_AFFECTED and self.justification is None and not self.impact_statement:
            # CSAF 6.1.27.9 and CISA VEX: every not-affected statement needs a justification or impact statement.
            raise AdvisoryInputError("a not-affected assessment needs a justification or an impact statement")
        if self.status is not Status.KNOWN_NOT_AFFECTED and self.justification is not None:
            raise AdvisoryInputError("a justification applies only to not-affected assessments")


@dataclass(frozen=True)
class Cvss3:
    vector: str
    base_score: float
    base_severity: str  # NONE, LOW, MEDIUM, HIGH, CRITICAL


@dataclass(frozen=True)
class Reference:
    url: str
    summary: str
    category: Literal["external", "self"] = "external"


@dataclass(frozen=True)
class VulnerabilityEntry:
    cve: str | None
    assessments: tuple[Assessment, ...]
    ids: tuple[tuple[str, str], ...] = ()  # (system_name, text), e.g. ("JVN", "JVNVU#12345678")
    title: str | None = None
    description: str | None = None  # the caller's summary in the document language
    cwe: tuple[str, str] | None = None  # (id, name)
    cvss_v3: Cvss3 | None = None
    references: tuple[Reference, ...] = ()
    discovery_date: dt.datetime | None = None
    release_date: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.cve is None and not self.ids:
            raise AdvisoryInputError("a vulnerability needs a CVE or another id (CSAF 6.1.27.8)")
        if not self.assessments:
            raise AdvisoryInputError(f"{self.cve or self.ids[0][1]}: no assessment given")


@dataclass(frozen=True)
class Revision:
    number: str  # integer versioning: "1", "2", ...
    date: dt.datetime
    summary: str


@dataclass(frozen=True)
class Publisher:
    name: str
    namespace: str  # https URL of the manufacturer
    category: Literal["vendor", "coordinator", "discoverer", "other", "translator", "user"] = "vendor"
    contact_details: str | None = None
    issuing_authority: str | None = None


@dataclass(frozen=True)
class Note:
    category: Literal["description", "details", "faq", "general", "legal_disclaimer", "other", "summary"]
    text: str
    title: str | None = None


@dataclass(frozen=True)
class AdvisoryDocument:
    """Everything a CSAF document is made from."""

    tracking_id: str
    title: str
    lang: Lang
    publisher: Publisher
    releases: tuple[DeviceRelease, ...]
    revisions: tuple[Revision, ...]
    vulnerabilities: tuple[VulnerabilityEntry, ...] = ()
    notes: tuple[Note, ...] = ()
    references: tuple[Reference, ...] = ()
    status: DocumentStatus = DocumentStatus.FINAL
    tlp: Literal["WHITE", "GREEN", "AMBER", "RED"] = "WHITE"

    def __post_init__(self) -> None:
        if not self.revisions:
            raise AdvisoryInputError("a CSAF document needs at least one revision")
        if not self.tracking_id.strip():
            raise AdvisoryInputError("tracking id is empty")

    def release(self, version: str) -> DeviceRelease:
        for r in self.releases:
            if r.version == version:
                return r
        raise AdvisoryInputError(f"no release {version!r} in this document")
