"""Alias groups: which ids name the same vulnerability (CVE, GHSA, PYSEC, DSA/DLA, DEBIAN-CVE, UBUNTU-CVE...).

A union-find over ids. Edges come from OSV ``aliases`` (equivalence), ``upstream`` and ``related``
(OSV schema: upstream is transitive, related symmetric), and from the per-CVE record naming of the distro
databases (``DEBIAN-CVE-2022-1292`` and ``UBUNTU-CVE-2022-1292`` describe ``CVE-2022-1292``).

A group never holds two different CVE ids. An edge that would join two CVEs (a DLA fixing several CVEs, a
PYSEC record ``related`` to two CVEs) is kept as a *link* instead: the record then belongs to its own group
and is listed as linked from each CVE's group. The canonical id of a group is its CVE when it has one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from medsec.vulns.model import Advisory

_CVE = re.compile(r"CVE-\d{4}-\d{4,}")
_PER_CVE_RECORD = re.compile(r"(?:DEBIAN|UBUNTU)-(CVE-\d{4}-\d{4,})")
# When a group has no CVE, prefer the most widely cross-referenced database ids.
_PREFERENCE = ("GHSA-", "PYSEC-", "GO-", "RUSTSEC-", "OSV-")


def is_cve(identifier: str) -> bool:
    return _CVE.fullmatch(identifier) is not None


def _rank(identifier: str) -> tuple[int, str]:
    if is_cve(identifier):
        return (0, identifier)
    for i, prefix in enumerate(_PREFERENCE, start=1):
        if identifier.startswith(prefix):
            return (i, identifier)
    return (len(_PREFERENCE) + 1, identifier)


@dataclass(frozen=True)
class AliasGroup:
    canonical: str
    members: frozenset[str]
    # ids joined to this group by an upstream/related edge that could not merge (it would join two CVEs)
    linked: frozenset[str] = frozenset()

    def __contains__(self, identifier: object) -> bool:
        return identifier in self.members


class AliasGroups:
    """The result of :class:`AliasGroupBuilder`; answers for any id, known or not."""

    def __init__(self, groups: dict[str, AliasGroup], links: dict[str, frozenset[str]]) -> None:
        self._groups = groups
        self._links = links

    def group(self, identifier: str) -> AliasGroup:
        return self._groups.get(identifier) or AliasGroup(identifier, frozenset({identifier}))

    def canonical(self, identifier: str) -> str:
        return self.group(identifier).canonical

    def related_groups(self, identifier: str) -> tuple[AliasGroup, ...]:
        """The id's own group, then the groups it links to (sorted by canonical id)."""
        own = self.group(identifier)
        others = {self.group(t).canonical: self.group(t) for t in self._links.get(identifier, ())}
        others.pop(own.canonical, None)
        return (own, *(others[k] for k in sorted(others)))

    def groups(self) -> tuple[AliasGroup, ...]:
        unique = {g.canonical: g for g in self._groups.values()}
        return tuple(unique[k] for k in sorted(unique))


class AliasGroupBuilder:
    """Collect ids and edges, then :meth:`build`. Alias edges are applied before upstream/related ones so
    that the CVE guard sees the full alias picture regardless of input order."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}
        self._cve: dict[str, str] = {}  # root -> the CVE in its group
        self._equal: list[tuple[str, str]] = []
        self._refers: list[tuple[str, tuple[str, ...]]] = []

    def add_id(self, identifier: str) -> None:
        self._find(identifier)

    def add_alias(self, a: str, b: str) -> None:
        self._equal.append((a, b))

    def add_advisory(self, advisory: Advisory) -> None:
        self.add_id(advisory.id)
        for alias in advisory.aliases:
            self.add_alias(advisory.id, alias)
        targets = tuple(dict.fromkeys((*advisory.upstream, *advisory.related)))
        if targets:
            self._refers.append((advisory.id, targets))

    def _find(self, x: str) -> str:
        parent = self._parent
        if x not in parent:
            parent[x] = x
            if is_cve(x):
                self._cve[x] = x
            per_cve = _PER_CVE_RECORD.fullmatch(x)
            if per_cve:
                self._equal.append((x, per_cve.group(1)))
            return x
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def _union(self, a: str, b: str) -> bool:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return True
        ca, cb = self._cve.get(ra), self._cve.get(rb)
        if ca and cb and ca != cb:
            return False
        self._parent[rb] = ra
        if cb:
            self._cve[ra] = cb
        return True

    def build(self) -> AliasGroups:
        links: dict[str, set[str]] = {}

        def link(a: str, b: str) -> None:
            links.setdefault(a, set()).add(b)
            links.setdefault(b, set()).add(a)

        i = 0
        while i < len(self._equal):  # _find may append per-CVE edges while we go
            a, b = self._equal[i]
            if not self._union(a, b):
                link(a, b)
            i += 1
        for record, targets in self._refers:
            for t in targets:
                self._find(t)
            while i < len(self._equal):
                a, b = self._equal[i]
                if not self._union(a, b):
                    link(a, b)
                i += 1
            cves = {self._cve.get(self._find(x)) for x in (record, *targets)} - {None}
            if len(cves) <= 1:
                for t in targets:
                    self._union(record, t)
            else:
                for t in targets:
                    if self._cve.get(self._find(t)) is None and self._union(record, t):
                        continue
                    link(record, t)
        members: dict[str, set[str]] = {}
        for x in list(self._parent):
            members.setdefault(self._find(x), set()).add(x)
        groups: dict[str, AliasGroup] = {}
        linked_by_root: dict[str, set[str]] = {}
        for a, bs in links.items():
            for b in bs:
                linked_by_root.setdefault(self._find(b), set()).add(a)
        for root, ids in members.items():
            canonical = self._cve.get(root) or min(ids, key=_rank)
            group = AliasGroup(canonical, frozenset(ids), frozenset(linked_by_root.get(root, set()) - ids))
            for x in ids:
                groups[x] = group
        return AliasGroups(groups, {k: frozenset(v) for k, v in links.items()})


def build_alias_groups(advisories: Iterable[Advisory], extra_ids: Iterable[str] = ()) -> AliasGroups:
    """Alias groups over OSV advisories plus bare ids from other feeds (NVD CVE ids, KEV ``cveID``)."""
    builder = AliasGroupBuilder()
    for advisory in advisories:
        builder.add_advisory(advisory)
    for identifier in extra_ids:
        builder.add_id(identifier)
    return builder.build()
