"""CycloneDX 1.6 VEX and OpenVEX 0.2.0 exports of the same triage values as the CSAF VEX (handbook §6.4).

Mappings follow the CISA "Minimum Requirements for VEX" status and justification sets; CycloneDX has its own
justification and response vocabularies, so the nearest term is chosen and the CSAF text is kept in ``detail``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from medsec.advisories.csaf import phrase, timestamp
from medsec.advisories.errors import AdvisoryInputError
from medsec.advisories.model import (
    Assessment,
    DeviceRelease,
    Justification,
    Lang,
    RemediationCategory,
    Status,
    VulnerabilityEntry,
)

CDX_STATE = {
    Status.KNOWN_AFFECTED: "exploitable",
    Status.KNOWN_NOT_AFFECTED: "not_affected",
    Status.FIXED: "resolved",
    Status.UNDER_INVESTIGATION: "in_triage",
}
CDX_JUSTIFICATION = {
    Justification.COMPONENT_NOT_PRESENT: "code_not_present",
    Justification.VULNERABLE_CODE_NOT_PRESENT: "code_not_present",
    Justification.VULNERABLE_CODE_NOT_IN_EXECUTE_PATH: "code_not_reachable",
    Justification.VULNERABLE_CODE_CANNOT_BE_CONTROLLED_BY_ADVERSARY: "requires_environment",
    Justification.INLINE_MITIGATIONS_ALREADY_EXIST: "protected_by_mitigating_control",
}
CDX_RESPONSE = {
    RemediationCategory.VENDOR_FIX: "update",
    RemediationCategory.MITIGATION: "workaround_available",
    RemediationCategory.WORKAROUND: "workaround_available",
    RemediationCategory.NO_FIX_PLANNED: "will_not_fix",
    RemediationCategory.NONE_AVAILABLE: "can_not_fix",
}
OPENVEX_STATUS = {
    Status.KNOWN_AFFECTED: "affected",
    Status.KNOWN_NOT_AFFECTED: "not_affected",
    Status.FIXED: "fixed",
    Status.UNDER_INVESTIGATION: "under_investigation",
}
OPENVEX_CONTEXT = "https://openvex.dev/ns/v0.2.0"


def _for_release(
    vulns: tuple[VulnerabilityEntry, ...], release: DeviceRelease
) -> list[tuple[VulnerabilityEntry, Assessment]]:
    pairs = [(v, a) for v in vulns for a in v.assessments if a.release == release.version]
    if not pairs:
        raise AdvisoryInputError(f"no assessment for {release.model} {release.version}")
    return pairs


def _detail(a: Assessment, lang: Lang) -> str | None:
    if a.impact_statement:
        return a.impact_statement
    if a.justification is not None:
        return phrase(lang, str(a.justification))
    return None


def cyclonedx_vex(
    release: DeviceRelease,
    vulnerabilities: tuple[VulnerabilityEntry, ...],
    *,
    now: dt.datetime,
    lang: Lang = "en",
    serial_number: uuid.UUID | None = None,
    version: int = 1,
) -> dict[str, Any]:
    """A CycloneDX 1.6 BOM holding the release, its assessed components and ``vulnerabilities[].analysis``."""
    release_ref = f"release:{release.model}@{release.version}"
    subject: dict[str, Any] = {
        "type": "device",
        "bom-ref": release_ref,
        "name": release.model,
        "version": release.version,
        "manufacturer": {"name": release.manufacturer},
    }
    if release.cpe:
        subject["cpe"] = release.cpe
    if release.purl:
        subject["purl"] = release.purl
    components: dict[str, dict[str, Any]] = {}
    entries: list[dict[str, Any]] = []
    for n, (vuln, a) in enumerate(_for_release(vulnerabilities, release), start=1):
        ref = release_ref
        if a.component is not None:
            c = release.component(a.component)
            ref = str(c.ref)
            item: dict[str, Any] = {"type": str(c.kind), "bom-ref": ref, "name": c.name}
            for key, value in (("version", c.version), ("cpe", c.cpe), ("purl", c.purl)):
                if value:
                    item[key] = value
            if c.supplier:
                item["supplier"] = {"name": c.supplier}
            components[ref] = item
        analysis: dict[str, Any] = {"state": CDX_STATE[a.status]}
        if a.justification is not None:
            analysis["justification"] = CDX_JUSTIFICATION[a.justification]
        responses = sorted({CDX_RESPONSE[r.category] for r in a.remediations})
        if responses:
            analysis["response"] = responses
        details = [d for d in (_detail(a, lang), *(r.details for r in a.remediations)) if d]
        if details:
            analysis["detail"] = "\n".join(details)
        entry: dict[str, Any] = {"bom-ref": f"vex-{n}", "id": vuln.cve or vuln.ids[0][1]}
        if vuln.cve:
            entry["source"] = {"name": "NVD", "url": f"https://nvd.nist.gov/vuln/detail/{vuln.cve}"}
        if vuln.cvss_v3:
            method = "CVSSv3" if vuln.cvss_v3.vector.startswith("CVSS:3.0/") else "CVSSv31"
            entry["ratings"] = [
                {
                    "score": vuln.cvss_v3.base_score,
                    "severity": vuln.cvss_v3.base_severity.lower(),
                    "method": method,
                    "vector": vuln.cvss_v3.vector,
                }
            ]
        if vuln.cwe and vuln.cwe[0].startswith("CWE-") and vuln.cwe[0][4:].isdigit():
            entry["cwes"] = [int(vuln.cwe[0][4:])]
        if vuln.description:
            entry["description"] = vuln.description
        entry["analysis"] = analysis
        entry["affects"] = [{"ref": ref}]
        entries.append(entry)
    bom: dict[str, Any] = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": (serial_number or uuid.uuid4()).urn,
        "version": version,
        "metadata": {"timestamp": timestamp(now), "component": subject},
    }
    if components:
        bom["components"] = list(components.values())
    bom["vulnerabilities"] = entries
    return bom


def _openvex_id(purl: str | None, cpe: str | None, what: str) -> str:
    if purl:
        return purl
    if cpe:
        return cpe
    raise AdvisoryInputError(f"OpenVEX needs a purl or CPE for {what}")


def openvex(
    release: DeviceRelease,
    vulnerabilities: tuple[VulnerabilityEntry, ...],
    *,
    document_id: str,
    author: str,
    now: dt.datetime,
    lang: Lang = "en",
    version: int = 1,
) -> dict[str, Any]:
    """An OpenVEX 0.2.0 document; products are named by purl (or CPE), components as subcomponents."""
    product_id = _openvex_id(release.purl, release.cpe, f"{release.model} {release.version}")
    statements: list[dict[str, Any]] = []
    for vuln, a in _for_release(vulnerabilities, release):
        product: dict[str, Any] = {"@id": product_id}
        if a.component is not None:
            c = release.component(a.component)
            product["subcomponents"] = [{"@id": _openvex_id(c.purl, c.cpe, c.name)}]
        vulnerability: dict[str, Any] = {"name": vuln.cve or vuln.ids[0][1]}
        if vuln.cve:
            vulnerability["@id"] = f"https://nvd.nist.gov/vuln/detail/{vuln.cve}"
        aliases = [text for _, text in vuln.ids if text != vulnerability["name"]]
        if aliases:
            vulnerability["aliases"] = aliases
        statement: dict[str, Any] = {
            "vulnerability": vulnerability,
            "products": [product],
            "status": OPENVEX_STATUS[a.status],
        }
        if a.justification is not None:
            statement["justification"] = a.justification.value
        if a.status is Status.KNOWN_NOT_AFFECTED and a.impact_statement:
            statement["impact_statement"] = a.impact_statement
        if a.status is Status.KNOWN_AFFECTED:
            if not a.remediations:
                # OpenVEX 0.2.0: an "affected" statement must carry an action statement.
                raise AdvisoryInputError(f"{vulnerability['name']}: affected needs a remediation (action statement)")
            statement["action_statement"] = "\n".join(r.details for r in a.remediations)
        statements.append(statement)
    return {
        "@context": OPENVEX_CONTEXT,
        "@id": document_id,
        "author": author,
        "timestamp": timestamp(now),
        "version": version,
        "statements": statements,
    }
