"""Shared bookkeeping for the format readers: unique refs, dependency edges, document issues.

Every lookup is a dict access, so reading stays linear in the number of components.
"""

from __future__ import annotations

from collections.abc import Iterable

from medsec.sbom.model import Component, ComponentIssue, ComponentRef, IssueLevel, Provenance, Sbom

MANUFACTURER = "manufacturer"  # Provenance.supplier of the manufacturer's own SBOMs
_MAX_LISTED = 5


class Collector:
    def __init__(self) -> None:
        self.components: list[Component] = []
        self.refs: set[str] = set()
        self.issues: list[ComponentIssue] = []
        self.edges: dict[ComponentRef, list[ComponentRef]] = {}
        self.subject: Component | None = None

    def unique_ref(self, wanted: str | None, fallback: str | None) -> ComponentRef:
        """The component's own ref if unused; a duplicate or missing ref gets a stable stand-in."""
        if wanted:
            if wanted not in self.refs:
                self.refs.add(wanted)
                return ComponentRef(wanted)
            self.issues.append(ComponentIssue("bom-ref", f"duplicate ref {wanted!r}; renamed"))
        base = wanted or fallback or f"medsec:component:{len(self.components) + 1}"
        candidate, n = base, 1
        while candidate in self.refs:
            n += 1
            candidate = f"{base}#{n}"
        self.refs.add(candidate)
        return ComponentRef(candidate)

    def add_edges(self, ref: str, targets: Iterable[str]) -> None:
        edges = self.edges.setdefault(ComponentRef(ref), [])
        edges.extend(ComponentRef(t) for t in targets)

    def finish(self, provenance: Provenance) -> Sbom:
        unknown: set[str] = set()
        dependencies: list[tuple[ComponentRef, tuple[ComponentRef, ...]]] = []
        for ref, targets in self.edges.items():
            if ref not in self.refs:
                unknown.add(ref)
                continue
            seen: dict[ComponentRef, None] = {}
            for t in targets:
                if t in self.refs:
                    seen.setdefault(t)
                else:
                    unknown.add(t)
            dependencies.append((ref, tuple(seen)))
        if unknown:
            listed = ", ".join(sorted(unknown)[:_MAX_LISTED])
            more = f" and {len(unknown) - _MAX_LISTED} more" if len(unknown) > _MAX_LISTED else ""
            self.issues.append(
                ComponentIssue("dependencies", f"refs to no component dropped: {listed}{more}", IssueLevel.WARNING)
            )
        return Sbom(
            provenance=provenance,
            subject=self.subject,
            components=tuple(self.components),
            dependencies=tuple(dependencies),
            issues=tuple(self.issues),
        )
