"""Reading SPDX 2.3 JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsec.sbom import MalformedSbomError, UnsupportedSbomError, read_sbom

from .conftest import SPDX_JSON, write_json

pytestmark = pytest.mark.req("SM-3")


def test_spdx_example_packages_subject_and_relationships() -> None:
    sbom = read_sbom(SPDX_JSON)
    prov = sbom.provenance
    assert prov.format == "SPDX 2.3 JSON"
    assert prov.document_id == "http://spdx.org/spdxdocs/spdx-example-444504E0-4F89-41D3-9A0C-0305E82C3301"
    assert prov.created == "2010-01-29T18:30:22Z"
    assert prov.tools == ("LicenseFind-1.0",)
    assert prov.authors == ("ExampleCodeInspect", "Jane Doe")
    # documentDescribes names one package (and a file): that package is the subject.
    assert sbom.subject is not None and sbom.subject.name == "glibc"
    assert sbom.subject.cpe == "cpe:2.3:a:pivotal_software:spring_framework:4.1.0:*:*:*:*:*:*:*"
    assert sbom.subject.supplier == "Jane Doe"
    assert ("SHA-1", "85ed0817af83a24ad8da68c2b5094de69833983c") in sbom.subject.hashes
    by_name = {c.name: c for c in sbom.components}
    assert set(by_name) == {"Apache Commons Lang", "Jena", "Saxon"}
    assert by_name["Jena"].purl == "pkg:maven/org.apache.jena/apache-jena@3.12.0"
    assert by_name["Saxon"].licenses == ("MPL-1.0",)
    assert by_name["Apache Commons Lang"].version is None
    # SPDXRef-Package DYNAMIC_LINK SPDXRef-Saxon.
    assert dict(sbom.dependencies) == {"SPDXRef-Package": ("SPDXRef-Saxon",)}


def test_spdx_reverse_relationships_and_bad_purl(tmp_path: Path) -> None:
    doc = json.loads(SPDX_JSON.read_text())
    doc["packages"][2]["externalRefs"] = [
        {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": "pkg:/broken"}
    ]
    doc["relationships"].append(
        {
            "spdxElementId": "SPDXRef-Saxon",
            "relationshipType": "DEPENDENCY_OF",
            "relatedSpdxElement": "SPDXRef-fromDoap-0",
        }
    )
    sbom = read_sbom(write_json(tmp_path / "doc.spdx.json", doc))
    jena = next(c for c in sbom.components if c.name == "Jena")
    assert jena.purl is None and any(i.field == "purl" for i in jena.issues)
    assert dict(sbom.dependencies)["SPDXRef-fromDoap-0"] == ("SPDXRef-Saxon",)
    assert len(sbom.components) == 3


def test_unknown_spdx_version_is_refused(tmp_path: Path) -> None:
    doc = json.loads(SPDX_JSON.read_text())
    doc["spdxVersion"] = "SPDX-3.0"
    with pytest.raises(UnsupportedSbomError, match=r"SPDX-3\.0"):
        read_sbom(write_json(tmp_path / "doc.spdx.json", doc))


def test_spdx_packages_must_be_an_array(tmp_path: Path) -> None:
    with pytest.raises(MalformedSbomError) as info:
        read_sbom(write_json(tmp_path / "doc.json", {"spdxVersion": "SPDX-2.3", "packages": {}}))
    assert info.value.field == "packages"


def test_spdx_tag_value_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "doc.spdx"
    path.write_text("SPDXVersion: SPDX-2.3\nDataLicense: CC0-1.0\n")
    with pytest.raises(UnsupportedSbomError, match="SPDX JSON"):
        read_sbom(path)
