"""One component list for a release: its own SBOM plus the SBOMs its suppliers delivered.

附属書A keeps supplier SBOMs apart; the merged view is derived from them, never stored in their
place. Each component says which SBOM it came from (``source_sbom``). A component listed twice (same
purl, else same name and version) is kept once, the first one wins, and any disagreement on other
fields is recorded as a :class:`MergeConflict`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from medsec.sbom.identity import duplicate_key, name_version_key
from medsec.sbom.model import Component, ComponentRef, Provenance, Sbom

_COMPARED = ("purl", "cpe", "supplier", "hashes", "licenses", "support_level", "end_of_support", "kind")


@dataclass(frozen=True)
class MergeConflict:
    key: str  # the purl, or "name@version"
    field: str
    kept: str  # value and SBOM of the component kept
    kept_source: str
    other: str
    other_source: str


@dataclass(frozen=True)
class MergeResult:
    sbom: Sbom
    conflicts: tuple[MergeConflict, ...]
    duplicates: int  # components dropped because an earlier SBOM listed them


def source_label(provenance: Provenance) -> str:
    """How a merged component names its SBOM: the supplier and the document (or file) identity."""
    identity = provenance.document_id or (f"sha256:{provenance.sha256[:16]}" if provenance.sha256 else None)
    return f"{provenance.supplier} ({identity})" if identity else provenance.supplier


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ", ".join(" ".join(v) if isinstance(v, tuple) else str(v) for v in value)
    return "" if value is None else str(value)


def merge(own: Sbom, *suppliers: Sbom) -> MergeResult:
    """Merge a release's own SBOM with supplier SBOMs; linear in the number of components.

    A supplier SBOM's subject (the product the supplier delivered) becomes a component of the merged
    view. Refs that clash between SBOMs are prefixed with the SBOM's label; dependencies follow.
    """
    kept: list[Component] = []
    by_key: dict[tuple[str, ...], int] = {}
    by_name_version: dict[tuple[str, ...], int] = {}
    used_refs: set[str] = set()
    conflicts: list[MergeConflict] = []
    edges: dict[ComponentRef, dict[ComponentRef, None]] = {}
    duplicates = 0
    issues = list(own.issues)

    for index, sbom in enumerate((own, *suppliers)):
        label = source_label(sbom.provenance)
        rename: dict[ComponentRef, ComponentRef] = {}
        members = list(sbom.components)
        start = len(kept)
        if index > 0 and sbom.subject is not None:
            members.insert(0, sbom.subject)
        elif index == 0 and sbom.subject is not None:
            used_refs.add(sbom.subject.ref)
        for component in members:
            key = duplicate_key(component)
            nv = name_version_key(component)
            existing = by_key.get(key)
            if existing is None:
                candidate = by_name_version.get(nv)
                # name+version decides only when one side has no purl.
                if candidate is not None and (component.purl is None or kept[candidate].purl is None):
                    existing = candidate
            if existing is not None:
                first = kept[existing]
                duplicates += 1
                rename[component.ref] = first.ref
                shown_key = component.purl or f"{component.name}@{component.version or ''}"
                for name in _COMPARED:
                    a, b = getattr(first, name), getattr(component, name)
                    if a != b and b not in (None, ()):
                        conflicts.append(
                            MergeConflict(shown_key, name, _show(a), first.source_sbom or "", _show(b), label)
                        )
                continue
            ref = component.ref
            if ref in used_refs:
                ref = ComponentRef(f"{label}/{ref}")
                n = 1
                while ref in used_refs:
                    n += 1
                    ref = ComponentRef(f"{label}/{component.ref}#{n}")
            used_refs.add(ref)
            rename[component.ref] = ref
            by_key[key] = len(kept)
            by_name_version.setdefault(nv, len(kept))
            kept.append(replace(component, ref=ref, source_sbom=component.source_sbom or label))
        for ref, targets in sbom.dependencies:
            source = rename.get(ref, ref)
            bucket = edges.setdefault(source, {})
            for t in targets:
                target = rename.get(t, t)
                if target != source:
                    bucket.setdefault(target)
        # A nested component's parent ref follows a renamed parent.
        for i in range(start, len(kept)):
            parent = kept[i].parent
            if parent is not None and parent in rename:
                kept[i] = replace(kept[i], parent=rename[parent])
        if index > 0:
            issues.extend(replace(issue, field=f"{label}: {issue.field}") for issue in sbom.issues)
            # The release depends on what each supplier delivered.
            if own.subject is not None and sbom.subject is not None:
                edges.setdefault(own.subject.ref, {}).setdefault(rename[sbom.subject.ref])

    provenance = replace(own.provenance, format=f"merged view ({1 + len(suppliers)} SBOMs)")
    merged = Sbom(
        provenance=provenance,
        subject=own.subject,
        components=tuple(kept),
        dependencies=tuple((ref, tuple(targets)) for ref, targets in edges.items()),
        issues=tuple(issues),
    )
    return MergeResult(sbom=merged, conflicts=tuple(conflicts), duplicates=duplicates)
