from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from medsec.advisories.errors import AdvisoryInputError
from medsec.advisories.model import Assessment, Status
from medsec.advisories.vex import cyclonedx_vex, openvex

from .conftest import OPENSSL, affected_openssl, not_affected_xz, release

pytestmark = [pytest.mark.req("SM-2"), pytest.mark.req("RA-6")]

NOW = dt.datetime(2025, 4, 1, 10, 0, tzinfo=dt.UTC)
VULNS = (affected_openssl(), not_affected_xz())


def test_cyclonedx_vex_is_valid_cyclonedx_1_6() -> None:
    bom = cyclonedx_vex(release("3.2"), VULNS, now=NOW, serial_number=uuid.UUID(int=1))
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(bom)) is None
    assert bom["serialNumber"] == "urn:uuid:00000000-0000-0000-0000-000000000001"
    by_id = {v["id"]: v for v in bom["vulnerabilities"]}
    assert by_id["CVE-2024-3094"]["analysis"] == {
        "state": "not_affected",
        "justification": "code_not_present",
        "detail": "The vulnerable code is not present in the product.",
    }
    assert by_id["CVE-2024-3094"]["affects"] == [{"ref": "xz"}]
    openssl = by_id["CVE-2022-1292"]
    assert openssl["analysis"]["state"] == "exploitable"
    assert openssl["analysis"]["response"] == ["update", "workaround_available"]
    assert openssl["ratings"][0]["method"] == "CVSSv31"
    assert openssl["cwes"] == [78]
    assert {c["bom-ref"] for c in bom["components"]} == {str(OPENSSL.ref), "xz"}


def test_cyclonedx_vex_for_the_fixed_release() -> None:
    bom = cyclonedx_vex(release("3.3"), VULNS, now=NOW)
    assert [v["analysis"]["state"] for v in bom["vulnerabilities"]] == ["resolved"]
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(bom)) is None


def test_cyclonedx_vex_in_japanese_uses_japanese_detail() -> None:
    bom = cyclonedx_vex(release("3.2"), (not_affected_xz(),), now=NOW, lang="ja")
    assert bom["vulnerabilities"][0]["analysis"]["detail"] == "脆弱なコードは本製品に含まれていません。"


def test_openvex_statements() -> None:
    doc = openvex(
        release("3.2"),
        VULNS,
        document_id="https://psirt.example-medical.jp/vex/EXMED-2025-0001",
        author="Example Medical PSIRT",
        now=NOW,
    )
    assert doc["@context"] == "https://openvex.dev/ns/v0.2.0"
    assert doc["timestamp"] == "2025-04-01T10:00:00.000Z"
    affected, not_affected = doc["statements"]
    assert affected["status"] == "affected"
    assert affected["action_statement"] == "Update to IMG-100 3.3.\nBlock inbound connections except from the PACS."
    assert affected["products"] == [
        {"@id": "pkg:generic/example-medical/img-100@3.2", "subcomponents": [{"@id": OPENSSL.purl}]}
    ]
    assert not_affected["status"] == "not_affected"
    assert not_affected["justification"] == "vulnerable_code_not_present"
    assert not_affected["vulnerability"] == {
        "name": "CVE-2024-3094",
        "@id": "https://nvd.nist.gov/vuln/detail/CVE-2024-3094",
    }


def test_openvex_affected_needs_an_action_statement() -> None:
    bare = dataclasses.replace(affected_openssl(), assessments=(Assessment("3.2", Status.KNOWN_AFFECTED, OPENSSL.ref),))
    with pytest.raises(AdvisoryInputError):
        openvex(release("3.2"), (bare,), document_id="urn:x", author="a", now=NOW)


def test_openvex_needs_product_identifiers() -> None:
    anonymous = dataclasses.replace(release("3.2"), purl=None, cpe=None)
    with pytest.raises(AdvisoryInputError, match="purl or CPE"):
        openvex(anonymous, VULNS, document_id="urn:x", author="a", now=NOW)


def test_release_without_assessments_is_refused() -> None:
    with pytest.raises(AdvisoryInputError):
        cyclonedx_vex(release("9.9"), VULNS, now=NOW)
