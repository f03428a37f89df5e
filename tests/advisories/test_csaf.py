from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest

from medsec.advisories.csaf import (
    advisory_filename,
    build_end_of_support_notice,
    build_security_advisory,
    build_vex,
)
from medsec.advisories.csaf_checks import check_mandatory, mandatory_failures
from medsec.advisories.errors import AdvisoryInputError, CsafValidationError
from medsec.advisories.model import Assessment, Note, Reference, Revision, Status, VulnerabilityEntry
from medsec.advisories.provider import verify_sha512

from .conftest import DATA, T0, T1, affected_openssl, document, not_affected_xz, release

pytestmark = pytest.mark.req("SM-2")

ICSMA = sorted((DATA / "cisa-icsma").glob("icsma-*.json"))


def _assert_valid(doc, schema_errors, csaf_package_failures) -> None:
    assert schema_errors(doc) == []
    assert csaf_package_failures(doc) == []
    check_mandatory(doc)


def _eos_notice(lang: str = "en"):
    en = lang == "en"
    doc = document(
        lang,
        vulns=(),
        tracking_id="EXMED-EOS-2025-01",
        title="IMG-100 3.2: end of support" if en else "IMG-100 3.2: サポート終了のお知らせ",
        releases=(release("3.2"),),
        notes=(
            Note(
                "details",
                "Legacy plan: isolate the device; upgrade to IMG-200."
                if en
                else "レガシー対応計画: 機器を分離し、IMG-200 へ更新してください。",
                "Legacy plan" if en else "レガシー対応計画",
            ),
        ),
        references=(Reference("https://example-medical.jp/lifecycle/img-100", "Lifecycle page"),),
    )
    return build_end_of_support_notice(
        doc, eol=dt.date(2025, 12, 31), eos=dt.date(2027, 12, 31), today=dt.date(2025, 3, 3)
    )


def test_security_advisory_passes_schema_and_mandatory_tests(schema_errors, csaf_package_failures) -> None:
    doc = build_security_advisory(document("en"))
    _assert_valid(doc, schema_errors, csaf_package_failures)
    assert doc["document"]["category"] == "csaf_security_advisory"
    openssl = doc["vulnerabilities"][0]
    assert openssl["product_status"] == {"fixed": ["CSAFPID-R2-C1"], "known_affected": ["CSAFPID-R1-C1"]}
    assert {r["category"] for r in openssl["remediations"]} == {"vendor_fix", "mitigation"}
    assert openssl["scores"][0]["products"] == ["CSAFPID-R1-C1", "CSAFPID-R2-C1"]


def test_product_tree_has_releases_components_and_identification_helpers() -> None:
    tree = build_security_advisory(document("en"))["product_tree"]
    vendors = {b["name"]: b for b in tree["branches"]}
    assert set(vendors) == {"Example Medical", "Debian"}
    versions = vendors["Example Medical"]["branches"][0]["branches"]
    assert [v["name"] for v in versions] == ["3.2", "3.3"]
    assert versions[0]["product"]["product_identification_helper"] == {
        "cpe": "cpe:2.3:h:example_medical:img-100:3.2:*:*:*:*:*:*:*",
        "purl": "pkg:generic/example-medical/img-100@3.2",
    }
    rel = tree["relationships"][0]
    assert rel["category"] == "default_component_of"
    assert rel["full_product_name"]["name"] == "libssl1.1 1.1.0l-1~deb9u5 as a component of Example Medical IMG-100 3.2"


@pytest.mark.req("RA-6")
def test_not_affected_vex_with_justification_passes_validators(schema_errors, csaf_package_failures) -> None:
    doc = build_vex(document("en", vulns=(not_affected_xz(),)))
    _assert_valid(doc, schema_errors, csaf_package_failures)
    vuln = doc["vulnerabilities"][0]
    assert doc["document"]["category"] == "csaf_vex"
    assert vuln["product_status"] == {"known_not_affected": ["CSAFPID-R1-C1"]}
    assert vuln["flags"] == [{"label": "vulnerable_code_not_present", "product_ids": ["CSAFPID-R1-C1"]}]
    assert vuln["threats"] == [
        {
            "category": "impact",
            "details": "The vulnerable code is not present in the product.",
            "product_ids": ["CSAFPID-R1-C1"],
        }
    ]


def test_japanese_vex_uses_japanese_fixed_phrases(schema_errors, csaf_package_failures) -> None:
    doc = build_vex(document("ja", vulns=(not_affected_xz(),)))
    _assert_valid(doc, schema_errors, csaf_package_failures)
    assert doc["document"]["lang"] == "ja"
    assert doc["document"]["distribution"]["text"] == "開示に制限はありません。"
    assert doc["vulnerabilities"][0]["threats"][0]["details"] == "脆弱なコードは本製品に含まれていません。"
    assert doc["vulnerabilities"][0]["notes"][0]["title"] == "脆弱性の説明"
    rel_name = doc["product_tree"]["relationships"][0]["full_product_name"]["name"]
    assert rel_name == "Example Medical IMG-100 3.2の構成品 xz-utils 5.2.2-1.2"


def test_caller_impact_statement_replaces_the_default_phrase() -> None:
    doc = build_vex(document("en", vulns=(not_affected_xz(impact="liblzma is not linked by sshd on this device."),)))
    assert doc["vulnerabilities"][0]["threats"][0]["details"] == "liblzma is not linked by sshd on this device."


@pytest.mark.req("SM-4")
@pytest.mark.parametrize("lang", ["en", "ja"])
def test_end_of_support_notice_is_an_informational_advisory(lang, schema_errors, csaf_package_failures) -> None:
    doc = _eos_notice(lang)
    _assert_valid(doc, schema_errors, csaf_package_failures)
    assert doc["document"]["category"] == "csaf_informational_advisory"
    assert "vulnerabilities" not in doc
    summary = doc["document"]["notes"][0]
    assert summary["category"] == "summary"
    assert "2027-12-31" in summary["text"]
    assert ("security updates" if lang == "en" else "セキュリティ更新") in summary["text"]


@pytest.mark.req("SM-4")
def test_end_of_support_notice_needs_an_external_reference() -> None:
    doc = document("en", vulns=(), references=())
    with pytest.raises(AdvisoryInputError, match=r"6\.1\.27\.2"):
        build_end_of_support_notice(doc, eol=dt.date(2025, 1, 1), eos=dt.date(2026, 1, 1), today=dt.date(2024, 1, 1))


def test_revision_history_and_tracking(schema_errors, csaf_package_failures) -> None:
    doc = build_security_advisory(
        document("en", revisions=(Revision("2", T1, "Add mitigation"), Revision("1", T0, "Initial release")))
    )
    _assert_valid(doc, schema_errors, csaf_package_failures)
    tracking = doc["document"]["tracking"]
    assert tracking["version"] == "2"
    assert [r["number"] for r in tracking["revision_history"]] == ["1", "2"]
    assert tracking["initial_release_date"] == "2025-03-03T09:00:00.000Z"
    assert tracking["current_release_date"] == "2025-04-01T09:00:00.000Z"
    assert tracking["generator"]["engine"]["name"] == "medsec"


def test_contradicting_status_for_one_product_is_refused() -> None:
    twice = VulnerabilityEntry(
        cve="CVE-2024-0001",
        assessments=(
            Assessment("3.2", Status.KNOWN_AFFECTED, release("3.2").components[1].ref),
            Assessment("3.2", Status.FIXED, release("3.2").components[1].ref),
        ),
    )
    with pytest.raises(AdvisoryInputError, match="assessed twice"):
        build_security_advisory(document("en", vulns=(twice,)))


def test_vex_affected_without_action_statement_is_refused() -> None:
    bare = dataclasses.replace(
        affected_openssl(), assessments=(Assessment("3.2", Status.KNOWN_AFFECTED, release("3.2").components[1].ref),)
    )
    with pytest.raises(AdvisoryInputError, match=r"6\.1\.27\.10"):
        build_vex(document("en", vulns=(bare,)))
    build_security_advisory(document("en", vulns=(bare,)))  # allowed outside the VEX profile


def test_not_affected_without_reason_is_refused() -> None:
    with pytest.raises(AdvisoryInputError):
        Assessment("3.2", Status.KNOWN_NOT_AFFECTED)


@pytest.mark.parametrize(
    ("mutate", "test_id"),
    [
        (lambda d: d["product_tree"]["relationships"].pop(), "6.1.1"),
        (
            lambda d: d["product_tree"]["relationships"].append(copy.deepcopy(d["product_tree"]["relationships"][0])),
            "6.1.2",
        ),
        (lambda d: d["vulnerabilities"][0].pop("threats") and d["vulnerabilities"][0].pop("flags"), "6.1.27.9"),
        (lambda d: d["vulnerabilities"][0]["product_status"].update(fixed=["CSAFPID-R1-C1"]), "6.1.6"),
        (
            lambda d: d["vulnerabilities"][0]["flags"].append(
                dict(d["vulnerabilities"][0]["flags"][0], label="component_not_present")
            ),
            "6.1.33",
        ),
        (lambda d: d["document"]["tracking"].update(version="3"), "6.1.16"),
        (lambda d: d["vulnerabilities"][0].pop("notes"), "6.1.27.5"),
        (lambda d: d["vulnerabilities"][0].pop("cve"), "6.1.27.8"),
    ],
)
def test_broken_documents_fail_own_checks_and_csaf_package(mutate, test_id, csaf_package_failures) -> None:
    doc = build_vex(document("en", vulns=(not_affected_xz(),)))
    mutate(doc)
    assert test_id in {f[0] for f in mandatory_failures(doc)}
    with pytest.raises(CsafValidationError) as e:
        check_mandatory(doc)
    assert test_id in e.value.diagnostics()
    assert csaf_package_failures(doc) != []


def test_advisory_filename_follows_csaf_5_1() -> None:
    assert advisory_filename("EXMED-2025-0001") == "exmed-2025-0001.json"
    assert advisory_filename("RHSA-2021:5186") == "rhsa-2021_5186.json"
    assert advisory_filename("ACME+X/1 ä") == "acme+x_1__.json"


# -- cross-check with CISA's real medical-device advisories ------------------------------------------------------


@pytest.mark.parametrize("path", ICSMA, ids=lambda p: p.name)
def test_cisa_icsma_advisories_verify_and_validate(path: Path, schema_errors, csaf_package_failures) -> None:
    verify_sha512(path)
    doc = json.loads(path.read_bytes())
    _assert_valid(doc, schema_errors, csaf_package_failures)
    assert advisory_filename(doc["document"]["tracking"]["id"]) == path.name


def _shape(doc):
    """Keys and branch categories: what a consumer of CISA's advisories relies on."""

    def categories(branches, depth=0):
        out = set()
        for b in branches:
            out.add((depth, b["category"]))
            out |= categories(b.get("branches", []), depth + 1)
        return out

    return (
        {"document", "product_tree", "vulnerabilities"} <= set(doc),
        {"category", "csaf_version", "distribution", "lang", "publisher", "title", "tracking"} <= set(doc["document"]),
        categories(doc["product_tree"]["branches"]),
        {k for v in doc["vulnerabilities"] for k in v} >= {"cve", "product_status", "notes", "remediations"},
    )


def test_generated_advisory_has_the_shape_of_cisa_icsma() -> None:
    ours = build_security_advisory(document("en"))
    cisa = json.loads((DATA / "cisa-icsma" / "icsma-24-163-01.json").read_bytes())
    expected = (True, True, {(0, "vendor"), (1, "product_name"), (2, "product_version")}, True)
    assert _shape(ours) == expected
    assert _shape(cisa)[:2] == expected[:2]
    assert {c for _, c in _shape(cisa)[2]} <= {"vendor", "product_name", "product_version", "product_version_range"}


@pytest.fixture(scope="module")
def bsi_results(tmp_path_factory, node_validator):
    """One node run (its start-up dominates) over generated, broken and CISA documents, keyed by file name."""
    folder = tmp_path_factory.mktemp("bsi")
    broken = build_vex(document("en", vulns=(not_affected_xz(),)))
    broken["product_tree"]["relationships"].pop()
    docs = {
        "advisory-en.json": build_security_advisory(document("en")),
        "vex-ja.json": build_vex(document("ja", vulns=(not_affected_xz(),))),
        "eos-ja.json": _eos_notice("ja"),
        "broken.json": broken,
    }
    for name, doc in docs.items():
        (folder / name).write_text(json.dumps(doc, ensure_ascii=False))
    results = node_validator([*(folder / n for n in docs), ICSMA[0]])
    return {Path(r["file"]).name: r for r in results}


def test_bsi_csaf_validator_lib_accepts_generated_and_cisa_documents(bsi_results) -> None:
    for name in ("advisory-en.json", "vex-ja.json", "eos-ja.json", ICSMA[0].name):
        assert (bsi_results[name]["isValid"], bsi_results[name]["failures"]) == (True, []), name


def test_bsi_csaf_validator_lib_rejects_a_missing_product_definition(bsi_results) -> None:
    result = bsi_results["broken.json"]
    assert result["isValid"] is False
    assert "mandatoryTest_6_1_1" in {f["name"] for f in result["failures"]}
