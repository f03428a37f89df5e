"""What changed in the components between two releases (for update notices, SM-2/SM-3).

Components are paired by package identity: purl type, namespace, name and architecture, without
version and the other qualifiers (a distro qualifier changes with the OS release); without a purl,
by group and name. A pair with different versions is a version change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medsec.sbom.identity import package_key
from medsec.sbom.model import Component, Sbom


@dataclass(frozen=True)
class VersionChange:
    old: Component
    new: Component


@dataclass(frozen=True)
class SbomDiff:
    added: tuple[Component, ...]
    removed: tuple[Component, ...]
    changed: tuple[VersionChange, ...]
    unchanged: int

    def to_dict(self) -> dict[str, Any]:
        def show(c: Component) -> dict[str, Any]:
            return {"name": c.name, "version": c.version, "purl": c.purl}

        return {
            "added": [show(c) for c in self.added],
            "removed": [show(c) for c in self.removed],
            "changed": [
                {"name": ch.new.name, "old": ch.old.version, "new": ch.new.version, "purl": ch.new.purl}
                for ch in self.changed
            ],
            "unchanged": self.unchanged,
        }


def _group(components: tuple[Component, ...]) -> dict[tuple[str, ...], list[Component]]:
    groups: dict[tuple[str, ...], list[Component]] = {}
    for c in components:
        groups.setdefault(package_key(c), []).append(c)
    return groups


def diff(old: Sbom, new: Sbom) -> SbomDiff:
    """Components added, removed and changed in version from ``old`` to ``new`` (linear time)."""
    before, after = _group(old.components), _group(new.components)
    added: list[Component] = []
    removed: list[Component] = []
    changed: list[VersionChange] = []
    unchanged = 0
    for key, olds in before.items():
        news = after.get(key, [])
        new_versions = {c.version for c in news}
        old_versions = {c.version for c in olds}
        left = [c for c in olds if c.version not in new_versions]
        right = [c for c in news if c.version not in old_versions]
        unchanged += len(olds) - len(left)
        # Several versions of one package (npm, Maven): pair leftovers in order, the rest are
        # additions and removals.
        for a, b in zip(left, right, strict=False):
            changed.append(VersionChange(a, b))
        removed.extend(left[len(right) :])
        added.extend(right[len(left) :])
    for key, news in after.items():
        if key not in before:
            added.extend(news)
    return SbomDiff(tuple(added), tuple(removed), tuple(changed), unchanged)
