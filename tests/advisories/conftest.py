"""Advisory fixtures: a sample device release with triage values, and the three independent CSAF validators
(the OASIS JSON schema via jsonschema, the PyPI ``csaf`` package, and BSI's csaf-validator-lib via node)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4, DRAFT7

from medsec.advisories.model import (
    AdvisoryDocument,
    Assessment,
    Cvss3,
    DeviceRelease,
    Justification,
    Note,
    Publisher,
    Reference,
    Remediation,
    RemediationCategory,
    Revision,
    Status,
    VulnerabilityEntry,
)
from medsec.sbom.model import Component, ComponentKind, ComponentRef

DATA = Path(__file__).parent.parent / "data" / "csaf"
SCHEMA = DATA / "schema"
NODE_SCRIPT = Path(__file__).parent / "csaf_validator.mjs"
NODE_LIB = Path(__file__).parent / "node" / "node_modules" / "@secvisogram" / "csaf-validator-lib"

T0 = dt.datetime(2025, 3, 3, 9, 0, tzinfo=dt.UTC)
T1 = dt.datetime(2025, 4, 1, 9, 0, tzinfo=dt.UTC)

PUBLISHER = Publisher(
    name="Example Medical PSIRT",
    namespace="https://psirt.example-medical.jp",
    contact_details="psirt@example-medical.jp",
)
OPENSSL = Component(
    ComponentRef("pkg:deb/debian/libssl1.1@1.1.0l-1~deb9u5"),
    "libssl1.1",
    "1.1.0l-1~deb9u5",
    supplier="Debian",
    purl="pkg:deb/debian/libssl1.1@1.1.0l-1~deb9u5?arch=amd64&upstream=openssl&distro=debian-9",
    cpe="cpe:2.3:a:openssl:openssl:1.1.0l:*:*:*:*:*:*:*",
)
XZ = Component(
    ComponentRef("xz"),
    "xz-utils",
    "5.2.2-1.2",
    supplier="Debian",
    purl="pkg:deb/debian/xz-utils@5.2.2-1.2?distro=debian-9",
)
OS = Component(
    ComponentRef("os"),
    "debian",
    "9",
    kind=ComponentKind.OPERATING_SYSTEM,
    cpe="cpe:2.3:o:debian:debian_linux:9:*:*:*:*:*:*:*",
)


def release(version: str) -> DeviceRelease:
    return DeviceRelease(
        manufacturer="Example Medical",
        model="IMG-100",
        version=version,
        components=(OS, OPENSSL, XZ),
        purl=f"pkg:generic/example-medical/img-100@{version}",
        cpe=f"cpe:2.3:h:example_medical:img-100:{version}:*:*:*:*:*:*:*",
    )


def not_affected_xz(version: str = "3.2", impact: str | None = None) -> VulnerabilityEntry:
    return VulnerabilityEntry(
        cve="CVE-2024-3094",
        title="xz backdoor",
        assessments=(
            Assessment(
                release=version,
                component=ComponentRef("xz"),
                status=Status.KNOWN_NOT_AFFECTED,
                justification=Justification.VULNERABLE_CODE_NOT_PRESENT,
                impact_statement=impact,
            ),
        ),
        references=(Reference("https://nvd.nist.gov/vuln/detail/CVE-2024-3094", "NVD CVE-2024-3094"),),
    )


def affected_openssl() -> VulnerabilityEntry:
    return VulnerabilityEntry(
        cve="CVE-2022-1292",
        title="OpenSSL c_rehash command injection",
        description="The c_rehash script does not properly sanitise shell metacharacters.",
        cwe=("CWE-78", "Improper Neutralization of Special Elements used in an OS Command ('OS Command Injection')"),
        cvss_v3=Cvss3("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8, "CRITICAL"),
        assessments=(
            Assessment(
                release="3.2",
                component=OPENSSL.ref,
                status=Status.KNOWN_AFFECTED,
                remediations=(
                    Remediation(
                        RemediationCategory.VENDOR_FIX,
                        "Update to IMG-100 3.3.",
                        "https://example-medical.jp/img-100/3.3",
                    ),
                    Remediation(RemediationCategory.MITIGATION, "Block inbound connections except from the PACS."),
                ),
            ),
            Assessment(release="3.3", component=OPENSSL.ref, status=Status.FIXED),
        ),
    )


def document(
    lang: str = "en", *, vulns: tuple[VulnerabilityEntry, ...] | None = None, **changes: Any
) -> AdvisoryDocument:
    en = lang == "en"
    values: dict[str, Any] = {
        "tracking_id": "EXMED-2025-0001",
        "title": "IMG-100: OpenSSL and xz vulnerabilities" if en else "IMG-100: OpenSSL および xz の脆弱性",
        "lang": lang,
        "publisher": PUBLISHER,
        "releases": (release("3.2"), release("3.3")),
        "revisions": (Revision("1", T0, "Initial release" if en else "初版"),),
        "vulnerabilities": (affected_openssl(), not_affected_xz()) if vulns is None else vulns,
        "notes": (
            Note(
                "summary",
                "IMG-100 3.3 fixes CVE-2022-1292. CVE-2024-3094 does not affect IMG-100."
                if en
                else "IMG-100 3.3 で CVE-2022-1292 を修正しました。CVE-2024-3094 は IMG-100 に影響しません。",
                "Summary" if en else "概要",
            ),
        ),
        "references": (Reference("https://example-medical.jp/security/EXMED-2025-0001", "Advisory page"),),
    }
    values.update(changes)
    return AdvisoryDocument(**values)


def _registry() -> Registry:
    registry: Registry = Registry()
    for name, spec in (("cvss-v2.0.json", DRAFT4), ("cvss-v3.0.json", DRAFT4), ("cvss-v3.1.json", DRAFT7)):
        contents = json.loads((SCHEMA / name).read_text())
        registry = registry.with_resource(f"https://www.first.org/cvss/{name}", Resource.from_contents(contents, spec))
    csaf = json.loads((SCHEMA / "csaf_json_schema.json").read_text())
    return registry.with_resource(csaf["$id"], Resource.from_contents(csaf))


@pytest.fixture(scope="session")
def schema_errors() -> Callable[[dict[str, Any], str], list[str]]:
    """Errors of a document against the local OASIS schema (CVSS refs resolved to the local FIRST files)."""
    registry = _registry()

    def check(doc: dict[str, Any], schema_name: str = "csaf_json_schema.json") -> list[str]:
        schema = json.loads((SCHEMA / schema_name).read_text())
        validator = jsonschema.Draft202012Validator(
            schema, registry=registry, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]

    return check


@pytest.fixture(scope="session")
def csaf_package_failures() -> Callable[[dict[str, Any]], list[str]]:
    """Failed schema and mandatory (6.1.x) tests according to the PyPI ``csaf`` package's CSAF 2.0 validator."""
    from csaf.csaf.v20 import validate

    def check(doc: dict[str, Any]) -> list[str]:
        report = validate(doc, preset="basic")
        return [f"{r.id}: {[e.message for e in r.errors]}" for r in report.results if not r.passed and not r.skipped]

    return check


@pytest.fixture(scope="session")
def node_validator() -> Callable[[list[Path]], list[dict[str, Any]]]:
    """BSI csaf-validator-lib (schema + mandatory tests) through tests/advisories/csaf_validator.mjs."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not NODE_LIB.is_dir():
        pytest.skip(
            "@secvisogram/csaf-validator-lib is not installed; run "
            "`npm install --prefix tests/advisories/node @secvisogram/csaf-validator-lib`"
        )

    def run(files: list[Path]) -> list[dict[str, Any]]:
        result = subprocess.run(
            [node, str(NODE_SCRIPT), *map(str, files)], capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode not in (0, 1):
            raise AssertionError(f"validator crashed: {result.stderr}")
        return [json.loads(line) for line in result.stdout.splitlines()]

    return run
