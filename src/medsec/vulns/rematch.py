"""Incremental re-match after a feed update (SM-3).

Given the advisories that changed (new, modified, withdrawn) or disappeared, and the components of every
release indexed by package, only the (release, component) pairs those advisories can touch are evaluated.
Findings are never deleted: the result is a diff of new, still-active and now-inactive findings (with a
reason) that the server applies to its stored state.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import NewType

from medsec.sbom.model import Component, ComponentRef
from medsec.vulns.aliases import AliasGroups
from medsec.vulns.identity import ComponentIdentity, PackageKey, component_identity, normalise_repo
from medsec.vulns.matcher import Finding, GitHistory, Matcher
from medsec.vulns.model import Advisory

ReleaseId = NewType("ReleaseId", str)


class InactiveReason(enum.StrEnum):
    WITHDRAWN = "advisory-withdrawn"
    REMOVED = "advisory-removed"
    NOT_AFFECTED = "no-longer-affected"  # the changed record no longer covers this component version


@dataclass(frozen=True)
class AdvisoryDelta:
    changed: tuple[Advisory, ...]  # new or modified records, withdrawn ones included
    removed: tuple[str, ...] = ()  # ids no longer published at all

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(a.id for a in self.changed) | frozenset(self.removed)


@dataclass(frozen=True)
class ReleaseFinding:
    release: ReleaseId
    finding: Finding

    @property
    def key(self) -> tuple[ReleaseId, ComponentRef, str]:
        return (self.release, self.finding.component_ref, self.finding.advisory_id)


@dataclass(frozen=True)
class Deactivation:
    previous: ReleaseFinding
    reason: InactiveReason


@dataclass(frozen=True)
class RematchDiff:
    new: tuple[ReleaseFinding, ...]
    still_active: tuple[ReleaseFinding, ...]
    now_inactive: tuple[Deactivation, ...]
    pairs_evaluated: int  # (release, component) pairs looked at
    identities_evaluated: int  # distinct (package, version, release) evaluations behind them


class ComponentIndex:
    """Components of many releases by package key, so a changed advisory finds its candidates directly."""

    def __init__(self) -> None:
        self._by_key: dict[PackageKey, list[tuple[ReleaseId, ComponentRef, ComponentIdentity]]] = {}
        self._by_repo: dict[str, list[tuple[ReleaseId, ComponentRef, ComponentIdentity]]] = {}
        self._identity: dict[tuple[ReleaseId, ComponentRef], ComponentIdentity] = {}
        self._seen: dict[tuple[str | None, str, str | None], ComponentIdentity] = {}

    @classmethod
    def build(
        cls, releases: Mapping[ReleaseId, Iterable[Component]], *, name_ecosystem: str | None = None
    ) -> ComponentIndex:
        index = cls()
        for release, components in releases.items():
            index.add_release(release, components, name_ecosystem=name_ecosystem)
        return index

    def add_release(
        self, release: ReleaseId, components: Iterable[Component], *, name_ecosystem: str | None = None
    ) -> None:
        for component in components:
            # Releases share most components; parse each distinct purl once.
            cache_key = (component.purl, component.name if not component.purl else "", component.version)
            identity = self._seen.get(cache_key)
            if identity is None:
                identity = component_identity(component, name_ecosystem=name_ecosystem)
                self._seen[cache_key] = identity
            row = (release, component.ref, identity)
            self._identity[(release, component.ref)] = identity
            if identity.key is not None:
                self._by_key.setdefault(identity.key, []).append(row)
            if identity.repo and identity.commit:
                self._by_repo.setdefault(identity.repo, []).append(row)

    def candidates(self, keys: Iterable[PackageKey]) -> list[tuple[ReleaseId, ComponentRef, ComponentIdentity]]:
        return [row for key in keys for row in self._by_key.get(key, ())]

    def by_repo(self, repos: Iterable[str]) -> list[tuple[ReleaseId, ComponentRef, ComponentIdentity]]:
        return [row for repo in repos for row in self._by_repo.get(repo, ())]

    def identity(self, release: ReleaseId, ref: ComponentRef) -> ComponentIdentity | None:
        return self._identity.get((release, ref))

    def __len__(self) -> int:
        return len(self._identity)


def rematch(
    delta: AdvisoryDelta,
    components: ComponentIndex,
    active: Iterable[ReleaseFinding],
    *,
    aliases: AliasGroups | None = None,
    git: GitHistory | None = None,
) -> RematchDiff:
    """Recompute findings for the pairs the delta can touch and diff them against the active findings.

    ``active`` may hold every active finding the server knows; only those of changed or removed advisories
    are considered. ``aliases`` should be the groups over the whole feed (the delta alone may not see them).
    """
    matcher = Matcher.build(delta.changed, aliases=aliases)
    delta_ids = delta.ids
    changed_by_id: dict[str, Advisory] = {a.id: a for a in delta.changed}
    relevant = [f for f in active if f.finding.advisory_id in delta_ids]
    active_keys = {f.key for f in relevant}

    pairs: dict[tuple[ReleaseId, ComponentRef], ComponentIdentity] = {}
    for release, ref, identity in components.candidates(matcher.package_keys()):
        pairs[(release, ref)] = identity
    repos = {r for a in delta.changed for aff in a.affected for rng in aff.ranges if rng.repo for r in [rng.repo]}
    if repos:
        for release, ref, identity in components.by_repo(normalise_repo(r) for r in repos):
            pairs[(release, ref)] = identity
    for f in relevant:
        pair = (f.release, f.finding.component_ref)
        if pair not in pairs:
            known = components.identity(*pair)
            if known is not None:
                pairs[pair] = known

    placeholder = ComponentRef("")
    by_identity: dict[ComponentIdentity, list[Finding]] = {}
    new: list[ReleaseFinding] = []
    still: list[ReleaseFinding] = []
    produced: set[tuple[ReleaseId, ComponentRef, str]] = set()
    for (release, ref), identity in pairs.items():
        templates = by_identity.get(identity)
        if templates is None:
            templates = matcher.match_identity(placeholder, identity, git=git)
            by_identity[identity] = templates
        seen_here: set[str] = set()
        for template in templates:
            if template.advisory_id in seen_here:
                continue
            seen_here.add(template.advisory_id)
            rf = ReleaseFinding(release, replace(template, component_ref=ref))
            produced.add(rf.key)
            (still if rf.key in active_keys else new).append(rf)

    inactive = []
    for f in relevant:
        if f.key in produced:
            continue
        advisory = changed_by_id.get(f.finding.advisory_id)
        if advisory is None:
            reason = InactiveReason.REMOVED
        elif advisory.is_withdrawn:
            reason = InactiveReason.WITHDRAWN
        else:
            reason = InactiveReason.NOT_AFFECTED
        inactive.append(Deactivation(f, reason))
    return RematchDiff(
        new=tuple(new),
        still_active=tuple(still),
        now_inactive=tuple(inactive),
        pairs_evaluated=len(pairs),
        identities_evaluated=len(by_identity),
    )
