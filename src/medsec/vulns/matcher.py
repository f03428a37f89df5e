"""Match SBOM components against OSV advisories and NVD CPE configurations (SM-3).

:class:`Matcher` indexes advisories once by (ecosystem, normalised package name) and by repository for GIT
ranges, and NVD configurations by the (vendor, product) of their vulnerable criteria. :meth:`Matcher.match`
then looks each component up instead of scanning every advisory.

OSV semantics follow the schema's "Evaluation" section exactly: a version is affected if it is listed in
``versions`` or lies in any range; within a range the events are sorted and walked (introduced sets,
fixed clears at ``>=``, last_affected clears at ``>``), and ``limit`` events bound the range from above.
``SEMVER`` ranges use SemVer 2.0 precedence, ``ECOSYSTEM`` ranges the ecosystem's own ordering, and ``GIT``
ranges only apply to components that carry a commit.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from medsec.sbom.model import Component, ComponentKind, ComponentRef
from medsec.vulns.aliases import AliasGroups, build_alias_groups
from medsec.vulns.cpe import CpeTarget, evaluate_configuration, parse_cpe, vendor_products
from medsec.vulns.errors import CpeError, VersionError
from medsec.vulns.identity import (
    ComponentIdentity,
    PackageKey,
    advisory_package_key,
    component_identity,
    normalise_repo,
    release_of_ecosystem,
)
from medsec.vulns.model import Advisory, AffectedRange, CpeMatch, EventKind, NvdCve, RangeType
from medsec.vulns.versions import SEMVER, VersionKey, VersionScheme, scheme_for

logger = logging.getLogger(__name__)

# CPE matching applies to these kinds, and to applications the caller marks as commercial; never to an
# open-source library identified by a purl (CPE vendor/product guesses are too coarse for those).
CPE_KINDS = frozenset(
    {ComponentKind.OPERATING_SYSTEM, ComponentKind.FIRMWARE, ComponentKind.DEVICE, ComponentKind.PLATFORM}
)


class MatchMethod(enum.StrEnum):
    OSV_PURL = "osv-purl"  # component purl -> ecosystem + name, range evaluated
    OSV_ECOSYSTEM = "osv-ecosystem"  # component without purl, by name inside a caller-given ecosystem
    OSV_GIT = "osv-git"  # component commit inside a GIT range
    CPE = "cpe"  # NVD configuration by CPE vendor/product


class Confidence(enum.StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


_CONFIDENCE_ORDER = {Confidence.HIGH: 0, Confidence.MEDIUM: 1, Confidence.LOW: 2}


@dataclass(frozen=True)
class Finding:
    """One advisory applying to one component."""

    advisory_id: str
    alias_group: str  # canonical id of the advisory's alias group (a CVE when there is one)
    component_ref: ComponentRef
    component_version: str | None
    method: MatchMethod
    confidence: Confidence
    matched: str  # what matched: "ECOSYSTEM introduced 0, fixed 1.18.26", "versions[]", a CPE criteria
    fixed_version: str | None  # the fix above the component's version, when the data names one
    package: str | None = None  # "Debian:9/dpkg", or the CPE vendor:product
    aliases: tuple[str, ...] = ()  # every id of the alias group, sorted

    @property
    def key(self) -> tuple[ComponentRef, str]:
        return (self.component_ref, self.advisory_id)


@dataclass(frozen=True)
class MatchIssue:
    """Why a component could not be fully evaluated (unparseable version, unsupported ecosystem, ...)."""

    component_ref: ComponentRef
    advisory_id: str | None
    message: str


@dataclass(frozen=True)
class MatchReport:
    findings: tuple[Finding, ...]
    issues: tuple[MatchIssue, ...] = ()


class GitHistory(Protocol):
    """Commit-graph answers a GIT range needs (OSV schema: ``u < v`` when u is an ancestor of v)."""

    def is_ancestor(self, repo: str, ancestor: str, descendant: str) -> bool: ...


@dataclass(frozen=True)
class _Entry:
    advisory: int
    affected: int
    release: str | None
    ecosystem: str
    package: str


_MIN, _NORMAL, _MAX = 0, 1, 2  # "0" introduced sorts first, "*" limit last (OSV schema: special values)
_KIND_ORDER = {EventKind.INTRODUCED: 0, EventKind.FIXED: 1, EventKind.LAST_AFFECTED: 2, EventKind.LIMIT: 3}


@dataclass(frozen=True)
class _CompiledRange:
    events: tuple[tuple[int, VersionKey | int, int, EventKind, str], ...]  # (rank, key, kind order, kind, text)
    limits: tuple[tuple[int, VersionKey | int], ...]


_Event = tuple[int, "VersionKey | int", int, EventKind, str]


def _compile(rng: AffectedRange, scheme: VersionScheme) -> _CompiledRange:
    events: list[_Event] = []
    for e in rng.events:
        if e.kind is EventKind.INTRODUCED and e.version == "0":
            events.append((_MIN, 0, _KIND_ORDER[e.kind], e.kind, e.version))
        elif e.kind is EventKind.LIMIT and e.version == "*":
            events.append((_MAX, 0, _KIND_ORDER[e.kind], e.kind, e.version))
        else:
            events.append((_NORMAL, scheme.parse(e.version), _KIND_ORDER[e.kind], e.kind, e.version))
    events.sort(key=lambda t: (t[0], t[1], t[2]))
    limits = tuple((rank, key) for rank, key, _, kind, _ in events if kind is EventKind.LIMIT)
    return _CompiledRange(tuple(e for e in events if e[3] is not EventKind.LIMIT), limits)


def _at_least(v: VersionKey, rank: int, key: VersionKey | int) -> bool:
    return rank == _MIN or (rank == _NORMAL and v >= key)


def _evaluate(compiled: _CompiledRange, v: VersionKey) -> tuple[bool, str | None, str | None]:
    """OSV schema "Evaluation": (affected, introduced text, fixed/last_affected text above v)."""
    if compiled.limits and not any(rank == _MAX or (rank == _NORMAL and v < key) for rank, key in compiled.limits):
        return (False, None, None)
    vulnerable = False
    introduced = None
    for rank, key, _, kind, text in compiled.events:
        if kind is EventKind.INTRODUCED and _at_least(v, rank, key):
            vulnerable, introduced = True, text
        elif (kind is EventKind.FIXED and _at_least(v, rank, key)) or (
            kind is EventKind.LAST_AFFECTED and rank == _NORMAL and v > key
        ):
            vulnerable = False
    if not vulnerable:
        return (False, None, None)
    upper = next(
        (
            text
            for rank, key, _, kind, text in compiled.events
            if kind is not EventKind.INTRODUCED and not _at_least(v, rank, key)
        ),
        None,
    )
    return (True, introduced, upper)


def _describe(rng: AffectedRange, introduced: str | None, upper: str | None) -> str:
    parts = [f"introduced {introduced}"] if introduced is not None else []
    if upper is not None:
        kind = next(
            (e.kind.value for e in rng.events if e.version == upper and e.kind is not EventKind.INTRODUCED), "fixed"
        )
        parts.append(f"{kind} {upper}")
    return f"{rng.type.value} " + ", ".join(parts)


@dataclass
class _Cache:
    compiled: dict[tuple[int, int, int], _CompiledRange | VersionError] = field(default_factory=dict)


class Matcher:
    """An index over many advisories (and optionally NVD CVEs), built once and queried per SBOM."""

    def __init__(self, advisories: Sequence[Advisory], nvd: Sequence[NvdCve], aliases: AliasGroups) -> None:
        self._advisories = advisories
        self._nvd = nvd
        self._aliases = aliases
        self._by_package: dict[PackageKey, list[_Entry]] = {}
        self._by_repo: dict[str, list[tuple[int, int]]] = {}
        self._by_vendor_product: dict[tuple[str, str], list[tuple[int, int]]] = {}
        self._cache = _Cache()
        for i, advisory in enumerate(advisories):
            if advisory.is_withdrawn:
                continue  # OSV schema: withdrawn records no longer apply
            for j, affected in enumerate(advisory.affected):
                if affected.package is not None:
                    key = advisory_package_key(affected.package.ecosystem, affected.package.name)
                    entry = _Entry(
                        i,
                        j,
                        release_of_ecosystem(affected.package.ecosystem),
                        affected.package.ecosystem,
                        affected.package.name,
                    )
                    self._by_package.setdefault(key, []).append(entry)
                for rng in affected.ranges:
                    if rng.type is RangeType.GIT and rng.repo:
                        self._by_repo.setdefault(normalise_repo(rng.repo), []).append((i, j))
        for i, cve in enumerate(nvd):
            for c, conf in enumerate(cve.configurations):
                try:
                    pairs = vendor_products([conf])
                except CpeError as e:
                    logger.warning("%s: configuration %d skipped: %s", cve.id, c, e)
                    continue
                for pair in pairs:
                    self._by_vendor_product.setdefault(pair, []).append((i, c))

    @classmethod
    def build(
        cls, advisories: Iterable[Advisory], nvd: Iterable[NvdCve] = (), *, aliases: AliasGroups | None = None
    ) -> Matcher:
        """Index advisories and NVD CVEs. Alias groups are computed from them unless given."""
        advisory_list = list(advisories)
        nvd_list = list(nvd)
        if aliases is None:
            aliases = build_alias_groups(advisory_list, (c.id for c in nvd_list))
        return cls(advisory_list, nvd_list, aliases)

    @property
    def advisories(self) -> Sequence[Advisory]:
        return self._advisories

    @property
    def aliases(self) -> AliasGroups:
        return self._aliases

    def package_keys(self) -> frozenset[PackageKey]:
        return frozenset(self._by_package)

    # --- queries ---------------------------------------------------------------------------------

    def match(
        self,
        components: Iterable[Component],
        *,
        commercial: Collection[ComponentRef] = (),
        name_ecosystem: str | None = None,
        git: GitHistory | None = None,
    ) -> list[Finding]:
        """Findings for the components of one product (one SBOM). See :meth:`match_report`."""
        return list(
            self.match_report(components, commercial=commercial, name_ecosystem=name_ecosystem, git=git).findings
        )

    def match_report(
        self,
        components: Iterable[Component],
        *,
        commercial: Collection[ComponentRef] = (),
        name_ecosystem: str | None = None,
        git: GitHistory | None = None,
    ) -> MatchReport:
        """Findings and the issues that kept parts of the evaluation from running.

        ``commercial``: refs of application components to match by CPE. ``name_ecosystem``: the OSV
        ecosystem in which components without a purl are looked up by name (method ``osv-ecosystem``).
        ``git``: commit history for GIT ranges; without it only a commit equal to an ``introduced`` or
        ``last_affected`` event matches.
        """
        findings: dict[tuple[ComponentRef, str], Finding] = {}
        issues: list[MatchIssue] = []
        cpe_targets: list[CpeTarget] = []

        def keep(f: Finding) -> None:
            old = findings.get(f.key)
            if old is None or _CONFIDENCE_ORDER[f.confidence] < _CONFIDENCE_ORDER[old.confidence]:
                findings[f.key] = f

        for component in components:
            identity = component_identity(component, name_ecosystem=name_ecosystem)
            for f in self.match_identity(component.ref, identity, issues=issues, git=git):
                keep(f)
            if component.cpe and (
                component.kind in CPE_KINDS
                or (component.kind is ComponentKind.APPLICATION and component.ref in commercial)
            ):
                try:
                    cpe_targets.append(CpeTarget(component.ref, parse_cpe(component.cpe), component.version))
                except CpeError as e:
                    issues.append(MatchIssue(component.ref, None, str(e)))
        for f in self._match_cpe(cpe_targets):
            keep(f)
        ordered = sorted(findings.values(), key=lambda f: (f.component_ref, f.alias_group, f.advisory_id))
        return MatchReport(tuple(ordered), tuple(issues))

    def match_identity(
        self,
        ref: ComponentRef,
        identity: ComponentIdentity,
        *,
        issues: list[MatchIssue] | None = None,
        git: GitHistory | None = None,
        only: Collection[str] | None = None,
    ) -> list[Finding]:
        """OSV findings for one component identity; ``only`` restricts to these advisory ids."""
        out: list[Finding] = []
        sink: list[MatchIssue] = [] if issues is None else issues
        if identity.key is not None:
            for entry in self._by_package.get(identity.key, ()):
                advisory = self._advisories[entry.advisory]
                if only is not None and advisory.id not in only:
                    continue
                if entry.release and identity.release and entry.release != identity.release:
                    continue
                finding = self._evaluate_entry(ref, identity, entry, sink)
                if finding is not None:
                    out.append(finding)
        if identity.commit and identity.repo:
            for i, j in self._by_repo.get(identity.repo, ()):
                advisory = self._advisories[i]
                if only is not None and advisory.id not in only:
                    continue
                finding = self._evaluate_git(ref, identity, i, j, git)
                if finding is not None:
                    out.append(finding)
        return out

    # --- OSV evaluation --------------------------------------------------------------------------

    def _finding(
        self,
        advisory: Advisory,
        ref: ComponentRef,
        version: str | None,
        method: MatchMethod,
        confidence: Confidence,
        matched: str,
        fixed: str | None,
        package: str | None,
    ) -> Finding:
        group = self._aliases.group(advisory.id)
        return Finding(
            advisory_id=advisory.id,
            alias_group=group.canonical,
            component_ref=ref,
            component_version=version,
            method=method,
            confidence=confidence,
            matched=matched,
            fixed_version=fixed,
            package=package,
            aliases=tuple(sorted(group.members)),
        )

    def _evaluate_entry(
        self, ref: ComponentRef, identity: ComponentIdentity, entry: _Entry, issues: list[MatchIssue]
    ) -> Finding | None:
        advisory = self._advisories[entry.advisory]
        affected = advisory.affected[entry.affected]
        version = identity.version
        if not version:
            issues.append(MatchIssue(ref, advisory.id, "component has no version; ranges cannot be evaluated"))
            return None
        if identity.via_purl:
            method = MatchMethod.OSV_PURL
            # A release-scoped record ("Debian:9") for a component whose release is unknown is a weaker match.
            confidence = Confidence.MEDIUM if entry.release and not identity.release else Confidence.HIGH
        else:
            method, confidence = MatchMethod.OSV_ECOSYSTEM, Confidence.MEDIUM
        package = f"{entry.ecosystem}/{entry.package}"
        for r, rng in enumerate(affected.ranges):
            if rng.type is RangeType.GIT:
                continue
            try:
                scheme = SEMVER if rng.type is RangeType.SEMVER else scheme_for(entry.ecosystem)
                compiled = self._compiled(entry.advisory, entry.affected, r, rng, scheme)
                v = scheme.parse(version)
            except VersionError as e:
                issues.append(MatchIssue(ref, advisory.id, f"{package} ranges[{r}]: {e}"))
                continue
            hit, introduced, upper = _evaluate(compiled, v)
            if hit:
                fixed = upper if upper is not None and rng.events_of(EventKind.FIXED).count(upper) else None
                return self._finding(
                    advisory, ref, version, method, confidence, _describe(rng, introduced, upper), fixed, package
                )
        if version in affected.versions:  # OSV schema: IncludedInVersions is an exact string match
            return self._finding(advisory, ref, version, method, confidence, "versions[]", None, package)
        return None

    def _compiled(self, i: int, j: int, r: int, rng: AffectedRange, scheme: VersionScheme) -> _CompiledRange:
        cached = self._cache.compiled.get((i, j, r))
        if cached is None:
            try:
                cached = _compile(rng, scheme)
            except VersionError as e:
                cached = e
            self._cache.compiled[(i, j, r)] = cached
        if isinstance(cached, VersionError):
            raise cached
        return cached

    def _evaluate_git(
        self, ref: ComponentRef, identity: ComponentIdentity, i: int, j: int, git: GitHistory | None
    ) -> Finding | None:
        advisory = self._advisories[i]
        affected = advisory.affected[j]
        commit = identity.commit or ""
        for rng in affected.ranges:
            if rng.type is not RangeType.GIT or not rng.repo or normalise_repo(rng.repo) != identity.repo:
                continue
            introduced = [c.lower() for c in rng.events_of(EventKind.INTRODUCED)]
            fixed = [c.lower() for c in rng.events_of(EventKind.FIXED)]
            last = [c.lower() for c in rng.events_of(EventKind.LAST_AFFECTED)]
            limits = [c.lower() for c in rng.events_of(EventKind.LIMIT)]
            if git is None:
                hit = commit in introduced or commit in last
            else:
                repo = rng.repo

                def reaches(a: str, b: str, repo: str = repo) -> bool:
                    return a == b or git.is_ancestor(repo, a, b)

                hit = (
                    any(c == "0" or reaches(c, commit) for c in introduced)
                    and not any(reaches(c, commit) for c in fixed)
                    and not any(c != commit and reaches(c, commit) for c in last)
                    and (not limits or any(c != commit and reaches(commit, c) for c in limits))
                )
            if hit:
                return self._finding(
                    advisory,
                    ref,
                    commit,
                    MatchMethod.OSV_GIT,
                    Confidence.HIGH,
                    f"GIT {rng.repo}",
                    fixed[0] if len(fixed) == 1 else None,
                    identity.repo,
                )
        return None

    # --- CPE -------------------------------------------------------------------------------------

    def _match_cpe(self, targets: Sequence[CpeTarget]) -> list[Finding]:
        if not targets:
            return []
        candidates: set[tuple[int, int]] = set()
        for target in targets:
            candidates.update(self._by_vendor_product.get(target.cpe.vendor_product, ()))
        out = []
        for i, c in sorted(candidates):
            cve = self._nvd[i]
            try:
                hit = evaluate_configuration(cve.configurations[c], targets)
            except CpeError as e:
                logger.warning("%s: configuration %d skipped: %s", cve.id, c, e)
                continue
            if hit is None:
                continue
            group = self._aliases.group(cve.id)
            by_ref = {t.ref: t for t in targets}
            for ref, match in hit.vulnerable:
                criteria = parse_cpe(match.criteria)
                out.append(
                    Finding(
                        advisory_id=cve.id,
                        alias_group=group.canonical,
                        component_ref=ComponentRef(ref),
                        component_version=by_ref[ref].version,
                        method=MatchMethod.CPE,
                        confidence=Confidence.LOW,
                        matched=_describe_cpe(match),
                        fixed_version=match.version_end_excluding,
                        package=f"{criteria.value('vendor')}:{criteria.value('product')}",
                        aliases=tuple(sorted(group.members)),
                    )
                )
        return out


def _describe_cpe(match: CpeMatch) -> str:
    bounds = [
        f"{label} {value}"
        for label, value in (
            (">=", match.version_start_including),
            (">", match.version_start_excluding),
            ("<=", match.version_end_including),
            ("<", match.version_end_excluding),
        )
        if value
    ]
    return match.criteria + (f" ({', '.join(bounds)})" if bounds else "")
