"""Priority of a finding and its SLA deadlines (SM-3; FDA 2016 postmarket guidance: for an uncontrolled risk,
tell customers within 30 days and fix within 60 days).

Score (0-100), documented so a PSIRT can explain every number::

    severity   = CVSS base score / 10       (v4 score when given, else v3.x computed from the vector,
                                             else a given v3/v2 score; 0.5 when nothing is known)
    exposure   = 0.5 if the device is not network-reachable and the attack vector is Network/Adjacent
                 1.0 otherwise (reachable, Local/Physical vector, or no vector known)
    threat     = 1.0 if the CVE is in CISA KEV, else the EPSS probability (0..1, 0 when unknown)
    score      = round(70 * severity * exposure + 30 * threat)

Tier: critical when in KEV, or score >= 75, or CVSS >= 9.0 on a reachable device; high when score >= 55;
medium when score >= 30; low otherwise.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from medsec.vulns.errors import FeedDataError

# CVSS v3.1 specification, section 7.4 (metric values); 3.0 uses the same weights.
_AV = {"N": 0.85, "A": 0.62, "L": 0.55, "P": 0.2}
_AC = {"L": 0.77, "H": 0.44}
_PR_UNCHANGED = {"N": 0.85, "L": 0.62, "H": 0.27}
_PR_CHANGED = {"N": 0.85, "L": 0.68, "H": 0.5}
_UI = {"N": 0.85, "R": 0.62}
_CIA = {"H": 0.56, "L": 0.22, "N": 0.0}
_BASE_METRICS = ("AV", "AC", "PR", "UI", "S", "C", "I", "A")


class CvssError(FeedDataError):
    """A CVSS vector that does not parse."""


@dataclass(frozen=True)
class Cvss3:
    version: str  # "3.0" or "3.1"
    metrics: dict[str, str] = field(hash=False)

    @property
    def attack_vector(self) -> str:
        return self.metrics["AV"]

    def base_score(self) -> float:
        m = self.metrics
        changed = m["S"] == "C"
        iss = 1 - (1 - _CIA[m["C"]]) * (1 - _CIA[m["I"]]) * (1 - _CIA[m["A"]])
        impact = 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02) ** 15 if changed else 6.42 * iss
        pr = (_PR_CHANGED if changed else _PR_UNCHANGED)[m["PR"]]
        exploitability = 8.22 * _AV[m["AV"]] * _AC[m["AC"]] * pr * _UI[m["UI"]]
        if impact <= 0:
            return 0.0
        total = min(1.08 * (impact + exploitability), 10) if changed else min(impact + exploitability, 10)
        return _roundup(total, self.version)


def _roundup(value: float, version: str) -> float:
    if version == "3.0":
        return math.ceil(value * 10) / 10
    # CVSS v3.1 Appendix A: round up avoiding floating-point artefacts.
    scaled = round(value * 100_000)
    if scaled % 10_000 == 0:
        return scaled / 100_000
    return (math.floor(scaled / 10_000) + 1) / 10.0


def parse_cvss3(vector: str) -> Cvss3:
    """``CVSS:3.1/AV:N/AC:L/...``; temporal and environmental metrics are accepted and ignored."""
    prefix, _, rest = vector.strip().partition("/")
    if prefix not in {"CVSS:3.0", "CVSS:3.1"}:
        raise CvssError(f"{vector!r}: not a CVSS 3.x vector")
    metrics: dict[str, str] = {}
    for part in rest.split("/"):
        key, sep, value = part.partition(":")
        if not sep or key in metrics:
            raise CvssError(f"{vector!r}: bad or repeated metric {part!r}")
        metrics[key] = value
    tables = {
        "AV": _AV,
        "AC": _AC,
        "PR": _PR_UNCHANGED,
        "UI": _UI,
        "S": {"U": 0.0, "C": 0.0},
        "C": _CIA,
        "I": _CIA,
        "A": _CIA,
    }
    for key in _BASE_METRICS:
        if metrics.get(key) not in tables[key]:
            raise CvssError(f"{vector!r}: base metric {key} missing or invalid")
    return Cvss3(prefix.removeprefix("CVSS:"), metrics)


def cvss4_attack_vector(vector: str) -> str:
    """The AV metric of a CVSS 4.0 vector (its score comes from the feed: v4 scoring needs FIRST's lookup table)."""
    if not vector.startswith("CVSS:4.0/"):
        raise CvssError(f"{vector!r}: not a CVSS 4.0 vector")
    metrics = dict(p.partition(":")[::2] for p in vector.split("/")[1:])
    if metrics.get("AV") not in {"N", "A", "L", "P"}:
        raise CvssError(f"{vector!r}: base metric AV missing or invalid")
    return metrics["AV"]


class Tier(enum.StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


@dataclass(frozen=True)
class SeverityFacts:
    """What is known about one vulnerability's severity; any part may be missing."""

    cvss3_vector: str | None = None
    cvss4_vector: str | None = None
    cvss4_score: float | None = None
    given_score: float | None = None  # e.g. NVD baseScore when no vector can be computed


@dataclass(frozen=True)
class Priority:
    score: int
    tier: Tier
    cvss: float | None
    kev: bool
    epss: float | None
    network_reachable: bool


def _base(severity: SeverityFacts) -> tuple[float | None, str | None]:
    if severity.cvss4_score is not None:
        av = cvss4_attack_vector(severity.cvss4_vector) if severity.cvss4_vector else None
        return severity.cvss4_score, av
    if severity.cvss3_vector:
        parsed = parse_cvss3(severity.cvss3_vector)
        return parsed.base_score(), parsed.attack_vector
    return severity.given_score, None


def prioritise(severity: SeverityFacts, *, kev: bool, epss: float | None, network_reachable: bool) -> Priority:
    """The documented score and tier (module docstring)."""
    cvss, attack_vector = _base(severity)
    severity_part = (cvss if cvss is not None else 5.0) / 10
    exposure = 0.5 if not network_reachable and attack_vector in {"N", "A"} else 1.0
    threat = 1.0 if kev else (epss or 0.0)
    score = round(70 * severity_part * exposure + 30 * threat)
    if kev or score >= 75 or (cvss is not None and cvss >= 9.0 and exposure == 1.0):
        tier = Tier.CRITICAL
    elif score >= 55:
        tier = Tier.HIGH
    elif score >= 30:
        tier = Tier.MEDIUM
    else:
        tier = Tier.LOW
    return Priority(score, tier, cvss, kev, epss, network_reachable)


# --- SLA ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlaPolicy:
    """Defaults follow FDA 2016 postmarket guidance; a manufacturer may tighten or widen them."""

    notice_days: int = 30
    fix_days: int = 60
    tiers: frozenset[Tier] = frozenset({Tier.CRITICAL})
    kev_always: bool = True


@dataclass(frozen=True)
class SlaDeadlines:
    notice_by: datetime
    fix_by: datetime


class SlaState(enum.StrEnum):
    ON_TRACK = "on-track"
    NOTICE_OVERDUE = "notice-overdue"
    FIX_OVERDUE = "fix-overdue"
    MET = "met"


def sla_deadlines(priority: Priority, discovered: datetime, policy: SlaPolicy | None = None) -> SlaDeadlines | None:
    """Deadlines counted from when the finding was first seen; ``None`` when the SLA does not apply."""
    p = policy or SlaPolicy()
    if not (priority.tier in p.tiers or (p.kev_always and priority.kev)):
        return None
    return SlaDeadlines(discovered + timedelta(days=p.notice_days), discovered + timedelta(days=p.fix_days))


def sla_state(
    deadlines: SlaDeadlines,
    *,
    clock: Callable[[], datetime],
    notified_at: datetime | None = None,
    fixed_at: datetime | None = None,
) -> SlaState:
    """Where a finding stands against its deadlines at ``clock()``."""
    now = clock()
    if fixed_at is not None and fixed_at <= deadlines.fix_by and (notified_at or fixed_at) <= deadlines.notice_by:
        return SlaState.MET
    if fixed_at is None and now > deadlines.fix_by:
        return SlaState.FIX_OVERDUE
    if notified_at is None and fixed_at is None and now > deadlines.notice_by:
        return SlaState.NOTICE_OVERDUE
    if fixed_at is not None and fixed_at > deadlines.fix_by:
        return SlaState.FIX_OVERDUE
    return SlaState.ON_TRACK
