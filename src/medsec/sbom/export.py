"""Write an :class:`Sbom` as CycloneDX 1.6 JSON (the format of ``sbom.cdx.json`` in a release).

Native 1.6 fields are used where they exist (supplier, hashes, licenses, nested components,
``metadata.tools.components``, ``metadata.authors``). The FDA premarket guidance's per-component
support level and end-of-support date have no native field in 1.6, so they are written as
``properties`` named ``medsec:support-level`` and ``medsec:end-of-support`` (ISO date).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from medsec.sbom.cyclonedx import (
    END_OF_SUPPORT_PROPERTY,
    HASH_ALGORITHMS,
    SOURCE_SBOM_PROPERTY,
    SUPPORT_LEVEL_PROPERTY,
)
from medsec.sbom.model import Component, ComponentRef, Sbom

SPEC_VERSION = "1.6"
SBOM_SOURCE_PROPERTY = "medsec:sbom-source"  # Provenance.supplier: whose SBOM this is (附属書A)
_SERIAL = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_EXPRESSION = re.compile(r"\s(?:AND|OR|WITH)\s")


def _serial_number(sbom: Sbom) -> str:
    prov = sbom.provenance
    if prov.document_id and _SERIAL.fullmatch(prov.document_id.lower()):
        return prov.document_id.lower()
    # A stable serial for SBOMs that had another kind of id (SPDX namespace, file hash).
    seed = prov.document_id or prov.sha256 or f"{prov.supplier}|{prov.created}|{len(sbom.components)}"
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'medsec-sbom:' + seed)}"


def _licenses(component: Component) -> list[dict[str, Any]]:
    if len(component.licenses) == 1 and _EXPRESSION.search(component.licenses[0]):
        return [{"expression": component.licenses[0]}]
    # "name" rather than "id": an id must be on the SPDX list, which medsec does not ship.
    return [{"license": {"name": name}} for name in component.licenses]


def component_to_dict(component: Component, children: dict[ComponentRef, list[Component]]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": component.kind.value, "bom-ref": component.ref}
    if component.supplier:
        out["supplier"] = {"name": component.supplier}
    if component.group:
        out["group"] = component.group
    out["name"] = component.name
    if component.version:
        out["version"] = component.version
    hashes = [{"alg": alg, "content": value} for alg, value in component.hashes if alg in HASH_ALGORITHMS]
    if hashes:
        out["hashes"] = hashes
    if component.licenses:
        out["licenses"] = _licenses(component)
    if component.cpe:
        out["cpe"] = component.cpe
    if component.purl:
        out["purl"] = component.purl
    properties = [{"name": name, "value": value} for name, value in component.properties]
    if component.support_level:
        properties.append({"name": SUPPORT_LEVEL_PROPERTY, "value": component.support_level})
    if component.end_of_support:
        properties.append({"name": END_OF_SUPPORT_PROPERTY, "value": component.end_of_support})
    if component.source_sbom:
        properties.append({"name": SOURCE_SBOM_PROPERTY, "value": component.source_sbom})
    if properties:
        out["properties"] = properties
    nested = children.get(component.ref)
    if nested:
        out["components"] = [component_to_dict(c, children) for c in nested]
    return out


def export_cyclonedx(sbom: Sbom) -> dict[str, Any]:
    """The SBOM as a CycloneDX 1.6 JSON document (a dict ready for ``json.dumps``)."""
    known = {c.ref for c in sbom.components}
    if sbom.subject is not None:
        known.add(sbom.subject.ref)
    children: dict[ComponentRef, list[Component]] = {}
    top: list[Component] = []
    for c in sbom.components:
        if c.parent is not None and c.parent in known and c.parent != c.ref:
            children.setdefault(c.parent, []).append(c)
        else:
            top.append(c)

    prov = sbom.provenance
    metadata: dict[str, Any] = {}
    if prov.created:
        metadata["timestamp"] = prov.created
    if prov.tools:
        metadata["tools"] = {"components": [{"type": "application", "name": tool} for tool in prov.tools]}
    if prov.authors:
        metadata["authors"] = [{"name": author} for author in prov.authors]
    if sbom.subject is not None:
        metadata["component"] = component_to_dict(sbom.subject, children)
    metadata["properties"] = [{"name": SBOM_SOURCE_PROPERTY, "value": prov.supplier}]

    document: dict[str, Any] = {
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": _serial_number(sbom),
        "version": 1,
        "metadata": metadata,
        "components": [component_to_dict(c, children) for c in top],
    }
    if sbom.dependencies:
        document["dependencies"] = [
            {"ref": ref, "dependsOn": list(targets)} if targets else {"ref": ref} for ref, targets in sbom.dependencies
        ]
    return document
