"""Frozen values for vulnerability data: OSV advisories, NVD CPE configurations, KEV and EPSS.

Timestamps from feeds stay strings exactly as published (RFC 3339 text): re-serialising a parsed
``datetime`` can break the OSV schema's ``Z`` pattern (see tests/data/vulns/README.md).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, NewType

AdvisoryId = NewType("AdvisoryId", str)
JsonObject = Mapping[str, Any]


@dataclass(frozen=True)
class Source:
    """Where a record came from: feed name, file or URL, when it was fetched and the digest of what was read."""

    feed: str  # "osv", "nvd", "kev", "epss"
    location: str
    fetched: datetime | None = None
    sha256: str | None = None


class RangeType(enum.StrEnum):
    ECOSYSTEM = "ECOSYSTEM"
    SEMVER = "SEMVER"
    GIT = "GIT"


class EventKind(enum.StrEnum):
    INTRODUCED = "introduced"
    FIXED = "fixed"
    LAST_AFFECTED = "last_affected"
    LIMIT = "limit"


@dataclass(frozen=True)
class RangeEvent:
    kind: EventKind
    version: str


@dataclass(frozen=True)
class AffectedRange:
    type: RangeType
    events: tuple[RangeEvent, ...]
    repo: str | None = None  # OSV schema: required for GIT

    def events_of(self, kind: EventKind) -> tuple[str, ...]:
        return tuple(e.version for e in self.events if e.kind is kind)


@dataclass(frozen=True)
class Severity:
    type: str  # CVSS_V2, CVSS_V3, CVSS_V4, Ubuntu, ...
    score: str  # a vector for CVSS types


@dataclass(frozen=True)
class AffectedPackage:
    ecosystem: str  # as published, e.g. "Debian:9", "PyPI"
    name: str
    purl: str | None = None


@dataclass(frozen=True)
class Affected:
    package: AffectedPackage | None  # OSV schema: optional when only GIT ranges describe the code
    ranges: tuple[AffectedRange, ...] = ()
    versions: tuple[str, ...] = ()
    severity: tuple[Severity, ...] = ()
    ecosystem_specific: JsonObject = field(default_factory=dict, hash=False)
    database_specific: JsonObject = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Reference:
    type: str
    url: str


@dataclass(frozen=True)
class Advisory:
    """One OSV record (schema 1.x)."""

    id: AdvisoryId
    modified: str
    published: str | None = None
    withdrawn: str | None = None
    aliases: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()
    related: tuple[str, ...] = ()
    summary: str | None = None
    details: str | None = None
    severity: tuple[Severity, ...] = ()
    affected: tuple[Affected, ...] = ()
    references: tuple[Reference, ...] = ()
    database_specific: JsonObject = field(default_factory=dict, hash=False)
    schema_version: str | None = None
    source: Source | None = field(default=None, compare=False)

    @property
    def is_withdrawn(self) -> bool:
        return self.withdrawn is not None


# --- NVD CVE API 2.0 ---------------------------------------------------------------------------


class Operator(enum.StrEnum):
    AND = "AND"
    OR = "OR"


@dataclass(frozen=True)
class CpeMatch:
    """One ``cpeMatch`` entry: a CPE 2.3 criteria string, optional version bounds, and whether it is vulnerable
    (``False`` marks a platform condition such as "running on Windows")."""

    criteria: str
    vulnerable: bool
    version_start_including: str | None = None
    version_start_excluding: str | None = None
    version_end_including: str | None = None
    version_end_excluding: str | None = None
    match_criteria_id: str | None = None

    @property
    def has_version_range(self) -> bool:
        return any(
            (
                self.version_start_including,
                self.version_start_excluding,
                self.version_end_including,
                self.version_end_excluding,
            )
        )


@dataclass(frozen=True)
class CpeNode:
    operator: Operator
    matches: tuple[CpeMatch, ...]
    negate: bool = False


@dataclass(frozen=True)
class CpeConfiguration:
    """NVD ``configurations[]``: nodes combined with ``operator`` (OR when absent)."""

    nodes: tuple[CpeNode, ...]
    operator: Operator = Operator.OR
    negate: bool = False


@dataclass(frozen=True)
class CvssMetric:
    version: str  # "2.0", "3.0", "3.1", "4.0"
    vector: str
    base_score: float
    source: str | None = None
    type: str | None = None  # "Primary" or "Secondary"


@dataclass(frozen=True)
class NvdCve:
    id: str
    published: str | None
    last_modified: str | None
    status: str | None
    description: str | None
    metrics: tuple[CvssMetric, ...] = ()
    configurations: tuple[CpeConfiguration, ...] = ()
    references: tuple[str, ...] = ()
    weaknesses: tuple[str, ...] = ()
    cisa_exploit_add: str | None = None
    source: Source | None = field(default=None, compare=False)


@dataclass(frozen=True)
class NvdPage:
    """One CVE API 2.0 response (a page or a single-CVE answer)."""

    total_results: int
    start_index: int
    results_per_page: int
    timestamp: str | None
    cves: tuple[NvdCve, ...]


# --- CISA KEV and FIRST EPSS ---------------------------------------------------------------------


@dataclass(frozen=True)
class KevEntry:
    cve_id: str
    vendor_project: str
    product: str
    vulnerability_name: str
    date_added: date
    short_description: str
    required_action: str
    due_date: date | None
    known_ransomware_campaign_use: str | None = None
    notes: str | None = None
    cwes: tuple[str, ...] = ()


@dataclass(frozen=True)
class KevCatalog:
    catalog_version: str
    date_released: str
    entries: tuple[KevEntry, ...]
    source: Source | None = field(default=None, compare=False)

    def cve_ids(self) -> frozenset[str]:
        return frozenset(e.cve_id for e in self.entries)


@dataclass(frozen=True)
class EpssScore:
    cve_id: str
    probability: float  # 0..1: chance of exploitation activity in the next 30 days
    percentile: float


@dataclass(frozen=True)
class EpssSnapshot:
    model_version: str | None
    score_date: str | None
    scores: tuple[EpssScore, ...]
    source: Source | None = field(default=None, compare=False)

    def by_cve(self) -> dict[str, EpssScore]:
        return {s.cve_id: s for s in self.scores}
