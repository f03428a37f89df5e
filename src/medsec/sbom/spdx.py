"""SPDX 2.3 JSON reader (2.2 JSON has the same shape and is read too).

SPDX packages become components; relationships that mean "uses" become dependencies. The one
package the document describes becomes the subject, as ``metadata.component`` does in CycloneDX.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medsec.sbom._collect import MANUFACTURER, Collector
from medsec.sbom.errors import MalformedSbomError, UnsupportedSbomError
from medsec.sbom.identity import check_identifiers
from medsec.sbom.model import Component, ComponentIssue, ComponentKind, ComponentRef, IssueLevel, Provenance, Sbom

SUPPORTED_VERSIONS = ("SPDX-2.2", "SPDX-2.3")
_NOASSERTION = frozenset({"NOASSERTION", "NONE"})

# SPDX 2.3 clause 7.4 checksum algorithms -> CycloneDX hash-alg names (one vocabulary inside medsec).
_ALGORITHMS = {
    "MD5": "MD5",
    "SHA1": "SHA-1",
    "SHA256": "SHA-256",
    "SHA384": "SHA-384",
    "SHA512": "SHA-512",
    "SHA3-256": "SHA3-256",
    "SHA3-384": "SHA3-384",
    "SHA3-512": "SHA3-512",
    "BLAKE2b-256": "BLAKE2b-256",
    "BLAKE2b-384": "BLAKE2b-384",
    "BLAKE2b-512": "BLAKE2b-512",
    "BLAKE3": "BLAKE3",
}
# SPDX 2.3 clause 7.24 primaryPackagePurpose -> component kind.
_PURPOSES = {
    "APPLICATION": ComponentKind.APPLICATION,
    "FRAMEWORK": ComponentKind.FRAMEWORK,
    "LIBRARY": ComponentKind.LIBRARY,
    "CONTAINER": ComponentKind.CONTAINER,
    "OPERATING-SYSTEM": ComponentKind.OPERATING_SYSTEM,
    "DEVICE": ComponentKind.DEVICE,
    "FIRMWARE": ComponentKind.FIRMWARE,
    "FILE": ComponentKind.FILE,
}
# SPDX 2.3 clause 11.1 relationship types read as "A uses B" (forward) or "B uses A" (reverse).
_FORWARD = frozenset({"DEPENDS_ON", "CONTAINS", "DYNAMIC_LINK", "STATIC_LINK", "HAS_PREREQUISITE"})
_REVERSE = frozenset(
    {
        "DEPENDENCY_OF",
        "CONTAINED_BY",
        "RUNTIME_DEPENDENCY_OF",
        "BUILD_DEPENDENCY_OF",
        "DEV_DEPENDENCY_OF",
        "OPTIONAL_DEPENDENCY_OF",
        "PROVIDED_DEPENDENCY_OF",
        "TEST_DEPENDENCY_OF",
        "PREREQUISITE_FOR",
    }
)


def _text(value: object) -> str | None:
    if isinstance(value, str) and (value := value.strip()) and value not in _NOASSERTION:
        return value
    return None


def _actor(value: object) -> str | None:
    """``Organization: Name (email)`` or ``Person: ...`` (SPDX 2.3 clause 7.5) -> ``Name``."""
    text = _text(value)
    if text is None:
        return None
    _, sep, rest = text.partition(":")
    name = rest if sep else text
    name = name.split("(", 1)[0].strip()
    return name or None


def _package(raw: Mapping[str, Any], ref: ComponentRef) -> Component:
    issues: list[ComponentIssue] = []
    name = _text(raw.get("name"))
    if name is None:
        issues.append(ComponentIssue("name", "package name missing", IssueLevel.ERROR))
    purl_text: str | None = None
    cpe_text: str | None = None
    for ext in raw.get("externalRefs") or []:
        if not isinstance(ext, Mapping):
            continue
        ref_type = ext.get("referenceType")
        locator = _text(ext.get("referenceLocator"))
        if ref_type == "purl" and purl_text is None:
            purl_text = locator
        elif ref_type in ("cpe23Type", "cpe22Type") and cpe_text is None:
            cpe_text = locator
    purl, cpe, version, id_issues = check_identifiers(purl_text, cpe_text, _text(raw.get("versionInfo")))
    issues.extend(id_issues)
    hashes: list[tuple[str, str]] = []
    for checksum in raw.get("checksums") or []:
        if isinstance(checksum, Mapping):
            alg = _ALGORITHMS.get(str(checksum.get("algorithm")))
            value = _text(checksum.get("checksumValue"))
            if alg is not None and value is not None:
                hashes.append((alg, value.lower()))
    licenses = tuple(
        dict.fromkeys(lic for key in ("licenseConcluded", "licenseDeclared") if (lic := _text(raw.get(key))))
    )
    purpose = raw.get("primaryPackagePurpose")
    kind = _PURPOSES.get(purpose, ComponentKind.LIBRARY) if isinstance(purpose, str) else ComponentKind.LIBRARY
    return Component(
        ref=ref,
        name=name or "",
        version=version,
        kind=kind,
        supplier=_actor(raw.get("supplier")) or _actor(raw.get("originator")),
        purl=purl,
        cpe=cpe,
        hashes=tuple(hashes),
        licenses=licenses,
        issues=tuple(issues),
    )


def read_json(doc: object, *, source: str) -> Sbom:
    """Read a parsed SPDX JSON document."""
    if not isinstance(doc, Mapping):
        raise MalformedSbomError("an SPDX document must be a JSON object", source=source, field="(document)")
    spec = doc.get("spdxVersion")
    if not isinstance(spec, str):
        raise MalformedSbomError("SPDX version missing", source=source, field="spdxVersion")
    if spec not in SUPPORTED_VERSIONS:
        raise UnsupportedSbomError(
            f"SPDX version {spec!r} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})",
            source=source,
            field="spdxVersion",
        )
    for key in ("packages", "relationships", "documentDescribes"):
        if key in doc and not isinstance(doc[key], list):
            raise MalformedSbomError("must be an array", source=source, field=key)
    creation = doc.get("creationInfo")
    if creation is not None and not isinstance(creation, Mapping):
        raise MalformedSbomError("must be an object", source=source, field="creationInfo")
    creation = creation or {}

    collector = Collector()
    document_ref = _text(doc.get("SPDXID")) or "SPDXRef-DOCUMENT"
    packages: list[Component] = []
    for i, raw in enumerate(doc.get("packages") or []):
        if not isinstance(raw, Mapping):
            collector.issues.append(ComponentIssue(f"packages[{i}]", "not a package object; skipped"))
            continue
        ref = collector.unique_ref(_text(raw.get("SPDXID")), None)
        packages.append(_package(raw, ref))

    relationships = [r for r in doc.get("relationships") or [] if isinstance(r, Mapping)]
    described = [_text(x) for x in doc.get("documentDescribes") or []]
    described += [
        _text(r.get("relatedSpdxElement"))
        for r in relationships
        if r.get("relationshipType") == "DESCRIBES" and r.get("spdxElementId") == document_ref
    ]
    package_refs = {c.ref for c in packages}
    described_packages = list(dict.fromkeys(d for d in described if d in package_refs))
    subject_ref = described_packages[0] if len(described_packages) == 1 else None
    for component in packages:
        if component.ref == subject_ref:
            collector.subject = component
        else:
            collector.components.append(component)

    for r in relationships:
        kind = r.get("relationshipType")
        a, b = _text(r.get("spdxElementId")), _text(r.get("relatedSpdxElement"))
        if a is None or b is None or a not in package_refs or b not in package_refs:
            continue  # documents, files and snippets are not components
        if kind in _FORWARD:
            collector.add_edges(a, [b])
        elif kind in _REVERSE:
            collector.add_edges(b, [a])

    tools: list[str] = []
    authors: list[str] = []
    for creator in creation.get("creators") or []:
        if not isinstance(creator, str):
            continue
        kind_name, _, _ = creator.partition(":")
        if kind_name.strip() == "Tool":
            tools.append(creator.partition(":")[2].strip())
        elif (who := _actor(creator)) is not None:
            authors.append(who)
    provenance = Provenance(
        supplier=MANUFACTURER,
        format=f"SPDX {spec.removeprefix('SPDX-')} JSON",
        document_id=_text(doc.get("documentNamespace")),
        created=_text(creation.get("created")),
        tools=tuple(tools),
        authors=tuple(authors),
    )
    return collector.finish(provenance)
