"""Reading CycloneDX 1.2–1.6 JSON and XML: real SBOMs, tolerant per-component ingest, broken documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsec.errors import Error
from medsec.sbom import (
    ComponentKind,
    IssueLevel,
    MalformedSbomError,
    SbomError,
    SbomSourceError,
    UnsupportedSbomError,
    read_sbom,
)
from medsec.sbom.identity import parse_purl

from .conftest import ALPINE_XML, CDX12_JSON, CDX12_XML, DEBIAN_XML, MEDICAL_EXTENDED, MEDICAL_NARROW, cdx, write_json

pytestmark = pytest.mark.req("SM-3")


def test_medical_device_sbom_reads_every_component_with_fda_support_data() -> None:
    sbom = read_sbom(MEDICAL_EXTENDED)
    assert sbom.provenance.format == "CycloneDX 1.4 JSON"
    assert sbom.provenance.document_id == "urn:uuid:9a9fb992-c015-4d78-91b5-88b6be21f53d"
    assert sbom.provenance.created == "2025-07-23T20:23:25.191246+00:00"
    assert sbom.provenance.authors == ("REDACTED",)
    assert len(sbom.provenance.sha256 or "") == 64
    assert len(sbom.components) == 65
    assert sbom.subject is not None and sbom.subject.kind is ComponentKind.DEVICE
    wolfssl = next(c for c in sbom.components if c.name == "WolfSSL")
    assert wolfssl.version == "4.8.1"
    assert wolfssl.kind is ComponentKind.FIRMWARE
    assert wolfssl.cpe == "cpe:2.3:a:wolfssl:wolfssl:4.8.1:*:*:*:*:*:*:*"
    assert wolfssl.purl == "pkg:github/wolfssl/wolfssl"
    assert wolfssl.supplier == "wolfSSL"
    # "Level of Support" is the FDA support level; "End-of-Support" here is text, not a date, so it
    # stays a property and is flagged instead of being passed on as a date.
    assert wolfssl.support_level == "Actively maintained"
    assert wolfssl.end_of_support is None
    assert ("End-of-Support", "Open source") in wolfssl.properties
    assert any(i.field == "End-of-Support" for i in wolfssl.issues)
    # Hardware parts have an empty version: flagged, kept.
    chip = next(c for c in sbom.components if c.name == "Qualcomm Atheros QCA9563")
    assert chip.version is None
    assert any(i.field == "version" for i in chip.issues)


def test_medical_device_sbom_dependencies_are_kept() -> None:
    sbom = read_sbom(MEDICAL_NARROW)
    refs = {c.ref for c in sbom.components} | {sbom.subject.ref if sbom.subject else ""}
    assert len(sbom.components) == 55
    assert sbom.dependencies
    assert all(ref in refs for ref, _ in sbom.dependencies)


def test_debian_syft_xml_reads_137_packages_with_source_package_qualifier() -> None:
    sbom = read_sbom(DEBIAN_XML)
    assert sbom.provenance.format == "CycloneDX 1.4 XML"
    assert sbom.provenance.tools == ("anchore syft 0.73.0",)
    assert sbom.subject is not None and sbom.subject.name == "postgres:11.15-stretch"
    # 137 components: 132 deb packages, 3 Go modules, postgresql itself and the OS.
    assert len(sbom.components) == 137
    debs = [c for c in sbom.components if c.purl and c.purl.startswith("pkg:deb/")]
    assert len(debs) == 132
    libssl = next(c for c in sbom.components if c.name == "libssl1.1")
    assert libssl.version == "1.1.0l-1~deb9u5"
    assert libssl.supplier == "Debian OpenSSL Team <pkg-openssl-devel@lists.alioth.debian.org>"
    purl = parse_purl(libssl.purl or "")
    assert (purl.type, purl.namespace, purl.name, purl.version) == ("deb", "debian", "libssl1.1", "1.1.0l-1~deb9u5")
    assert purl.qualifiers == {"arch": "amd64", "distro": "debian-9", "upstream": "openssl"}
    assert libssl.cpe == r"cpe:2.3:a:libssl1.1:libssl1.1:1.1.0l-1\~deb9u5:*:*:*:*:*:*:*"
    assert ("syft:metadata:source", "openssl") in libssl.properties
    # The four packages the Debian DLAs in the offline data fix are there at the vulnerable versions.
    versions = {c.name: c.version for c in sbom.components}
    assert versions["dpkg"] == "1.18.25"
    assert versions["tzdata"] == "2021a-0+deb9u3"
    assert versions["libxml2"] == "2.9.4+dfsg1-2.2+deb9u6"


def test_alpine_xml() -> None:
    sbom = read_sbom(ALPINE_XML)
    assert len(sbom.components) == 16
    apks = [c for c in sbom.components if c.purl and c.purl.startswith("pkg:apk/alpine/")]
    # busybox (found as a binary) and the OS itself come without purl.
    assert len(apks) == 14
    # The OS component has neither purl nor CPE: kept, but marked unmatchable.
    os_component = next(c for c in sbom.components if c.kind is ComponentKind.OPERATING_SYSTEM)
    assert os_component.name == "alpine"
    assert any(i.level is IssueLevel.ERROR for i in os_component.issues)


def test_cyclonedx_12_json_and_xml_give_the_same_components() -> None:
    from_json = read_sbom(CDX12_JSON)
    from_xml = read_sbom(CDX12_XML)
    assert from_json.provenance.format == "CycloneDX 1.2 JSON"
    assert from_xml.provenance.format == "CycloneDX 1.2 XML"
    assert len(from_json.components) == 43
    assert from_json.components == from_xml.components
    assert from_json.subject == from_xml.subject
    puppeteer = next(c for c in from_json.components if c.name == "puppeteer")
    assert puppeteer.hashes[0][0] == "SHA-512"
    assert puppeteer.licenses == ("Apache-2.0",)


def test_supplier_sbom_is_marked_as_such() -> None:
    own = read_sbom(MEDICAL_NARROW)
    supplied = read_sbom(MEDICAL_NARROW, supplier="NXP Semiconductors")
    assert own.provenance.supplier == "manufacturer" and not own.provenance.from_supplier
    assert supplied.provenance.supplier == "NXP Semiconductors" and supplied.provenance.from_supplier
    assert supplied.provenance.sha256 == own.provenance.sha256
    assert supplied.components == own.components


def test_broken_purl_is_flagged_and_the_file_still_imports(tmp_path: Path) -> None:
    doc = cdx(
        [
            {"type": "library", "bom-ref": "a", "name": "good", "version": "1.0", "purl": "pkg:pypi/good@1.0"},
            {"type": "library", "bom-ref": "b", "name": "bad", "version": "2.0", "purl": "pkg:n@pm/bad@2.0"},
            {
                "type": "library",
                "bom-ref": "c",
                "name": "bad-purl-good-cpe",
                "version": "3.0",
                "purl": "not-a-purl",
                "cpe": "cpe:2.3:a:acme:thing:3.0:*:*:*:*:*:*:*",
            },
            {"type": "library", "bom-ref": "d", "name": "other", "version": "4.0", "purl": "pkg:npm/%40s/other@4.0"},
        ]
    )
    sbom = read_sbom(write_json(tmp_path / "bom.json", doc))
    good, bad, bad_purl_good_cpe, other = sbom.components
    assert good.purl == "pkg:pypi/good@1.0" and not good.issues
    assert other.purl == "pkg:npm/%40s/other@4.0" and not other.issues
    assert bad.purl is None
    assert [(i.field, i.level) for i in bad.issues] == [("purl", IssueLevel.ERROR)]
    assert "pkg:n@pm/bad@2.0" in bad.issues[0].message
    # Still matchable by CPE, so only a warning.
    assert bad_purl_good_cpe.purl is None and bad_purl_good_cpe.cpe is not None
    assert [(i.field, i.level) for i in bad_purl_good_cpe.issues] == [("purl", IssueLevel.WARNING)]


def test_malformed_cpe_and_missing_version_are_flagged(tmp_path: Path) -> None:
    doc = cdx(
        [
            {"type": "library", "name": "x", "version": "1", "cpe": "cpe:2.3:a:only:three"},
            {"type": "library", "name": "y", "purl": "pkg:pypi/y@2.0"},
            {"type": "library", "name": "z", "cpe": "cpe:/a:acme:z:1.2"},
            {"type": "machine-learning-model", "name": "m", "version": "1", "purl": "pkg:huggingface/m@1"},
        ],
        spec="1.5",
    )
    x, y, z, m = read_sbom(write_json(tmp_path / "bom.json", doc)).components
    assert x.cpe is None and {i.field for i in x.issues} == {"cpe"}
    assert x.issues[0].level is IssueLevel.ERROR
    # The purl carries the version; it is used, and the gap is noted.
    assert y.version == "2.0" and [i.field for i in y.issues] == ["version"]
    # A CPE 2.2 URI is converted to the 2.3 formatted string.
    assert z.cpe == "cpe:2.3:a:acme:z:1.2:*:*:*:*:*:*:*"
    assert z.version is None
    assert m.kind is ComponentKind.LIBRARY and any(i.field == "type" for i in m.issues)


def test_nested_components_are_flattened_with_their_refs(tmp_path: Path) -> None:
    doc = cdx(
        [
            {
                "type": "firmware",
                "bom-ref": "fw",
                "name": "pump-firmware",
                "version": "3.1",
                "purl": "pkg:generic/pump-firmware@3.1",
                "components": [
                    {
                        "type": "operating-system",
                        "bom-ref": "rtos",
                        "name": "FreeRTOS",
                        "version": "10.0.1",
                        "cpe": "cpe:2.3:o:amazon:freertos:10.0.1:*:*:*:*:*:*:*",
                        "components": [
                            {"type": "library", "bom-ref": "tcp", "name": "FreeRTOS-Plus-TCP", "version": "2.3.2"}
                        ],
                    },
                    {"type": "library", "bom-ref": "wolf", "name": "wolfssl", "version": "4.8.1"},
                ],
            },
            {"type": "library", "bom-ref": "after", "name": "after", "version": "1"},
        ],
        dependencies=[{"ref": "fw", "dependsOn": ["rtos", "wolf", "ghost"]}, {"ref": "rtos", "dependsOn": ["tcp"]}],
    )
    sbom = read_sbom(write_json(tmp_path / "bom.json", doc))
    assert [(c.ref, c.parent) for c in sbom.components] == [
        ("fw", None),
        ("rtos", "fw"),
        ("tcp", "rtos"),
        ("wolf", "fw"),
        ("after", None),
    ]
    assert dict(sbom.dependencies) == {"fw": ("rtos", "wolf"), "rtos": ("tcp",)}
    assert any("ghost" in i.message for i in sbom.issues)


def test_duplicate_and_missing_refs_get_unique_refs(tmp_path: Path) -> None:
    doc = cdx(
        [
            {"type": "library", "bom-ref": "same", "name": "a", "version": "1"},
            {"type": "library", "bom-ref": "same", "name": "b", "version": "1"},
            {"type": "library", "name": "c", "version": "1", "purl": "pkg:pypi/c@1"},
            {"type": "library", "name": "d", "version": "1"},
        ]
    )
    sbom = read_sbom(write_json(tmp_path / "bom.json", doc))
    refs = [c.ref for c in sbom.components]
    assert len(set(refs)) == 4
    assert refs[0] == "same" and refs[2] == "pkg:pypi/c@1"
    assert any(i.field == "bom-ref" for i in sbom.issues)


def test_a_non_object_component_is_skipped_not_fatal(tmp_path: Path) -> None:
    doc = cdx(["oops", {"type": "library", "name": "ok", "version": "1", "purl": "pkg:pypi/ok@1"}])
    sbom = read_sbom(write_json(tmp_path / "bom.json", doc))
    assert [c.name for c in sbom.components] == ["ok"]
    assert any(i.field == "components[0]" for i in sbom.issues)


def test_metadata_tools_in_the_15_object_form(tmp_path: Path) -> None:
    doc = cdx(
        [],
        spec="1.5",
        metadata={
            "timestamp": "2024-05-01T00:00:00Z",
            "tools": {"components": [{"type": "application", "group": "acme", "name": "sbomgen", "version": "2"}]},
            "authors": [{"name": "PSIRT"}],
        },
    )
    prov = read_sbom(write_json(tmp_path / "bom.json", doc)).provenance
    assert prov.tools == ("acme sbomgen 2",)
    assert prov.authors == ("PSIRT",)


# -- documents that are not SBOMs at all -------------------------------------------------------------


def test_not_json_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "bomFormat": "CycloneDX",\n  "specVersion": "1.4",\n  "components": [,]\n}\n')
    with pytest.raises(MalformedSbomError) as info:
        read_sbom(path)
    err = info.value
    assert (err.line, err.column) == (4, 18)
    assert str(path) in str(err) and "line 4" in str(err) and "column 18" in str(err)
    assert isinstance(err, SbomError) and isinstance(err, Error)
    assert "line 4" in err.diagnostics()


def test_unknown_spec_version_is_refused(tmp_path: Path) -> None:
    path = write_json(tmp_path / "bom.json", cdx([], spec="2.0"))
    with pytest.raises(UnsupportedSbomError) as info:
        read_sbom(path)
    assert info.value.field == "specVersion" and "'2.0'" in str(info.value)


def test_unknown_xml_namespace_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bom.xml"
    path.write_text('<?xml version="1.0"?><bom xmlns="http://cyclonedx.org/schema/bom/1.1"><components/></bom>')
    with pytest.raises(UnsupportedSbomError) as info:
        read_sbom(path)
    assert info.value.field == "xmlns"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ([1, 2, 3], "(document)"),
        ({"hello": "world"}, "bomFormat"),
        ({"bomFormat": "CycloneDX"}, "specVersion"),
        ({"bomFormat": "CycloneDX", "specVersion": "1.4", "components": {"a": 1}}, "components"),
        ({"bomFormat": "CycloneDX", "specVersion": "1.4", "metadata": []}, "metadata"),
        ({"bomFormat": "SPDX", "specVersion": "1.4"}, "bomFormat"),
    ],
)
def test_wrong_document_shape_names_the_field(tmp_path: Path, doc: object, field: str) -> None:
    with pytest.raises(MalformedSbomError) as info:
        read_sbom(write_json(tmp_path / "bom.json", doc))
    assert info.value.field == field
    assert f"field {field!r}" in str(info.value)


def test_xml_that_is_not_well_formed_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bom.xml"
    text = DEBIAN_XML.read_text().replace("<name>libssl1.1</name>", "<name>libssl1.1</nam>")
    path.write_text(text)
    with pytest.raises(MalformedSbomError) as info:
        read_sbom(path)
    assert info.value.line == 3333


def test_entity_expansion_attack_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lol.xml"
    path.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE bom [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>\n'
        '<bom xmlns="http://cyclonedx.org/schema/bom/1.4"><components><component type="library">'
        "<name>&b;</name></component></components></bom>"
    )
    with pytest.raises(MalformedSbomError, match="refused"):
        read_sbom(path)


def test_empty_binary_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.json").write_bytes(b"  \n")
    with pytest.raises(MalformedSbomError, match="empty"):
        read_sbom(tmp_path / "empty.json")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02PK")
    with pytest.raises(MalformedSbomError, match="neither JSON nor XML"):
        read_sbom(tmp_path / "blob.bin")
    (tmp_path / "latin1.json").write_bytes(b'{"name": "\xe9"}')
    with pytest.raises(MalformedSbomError, match="UTF-8"):
        read_sbom(tmp_path / "latin1.json")
    with pytest.raises(SbomSourceError):
        read_sbom(tmp_path / "missing.json")


def test_large_xml_is_read_component_by_component(tmp_path: Path) -> None:
    count = 20_000
    path = tmp_path / "big.xml"
    with path.open("w") as f:
        f.write('<?xml version="1.0"?>\n<bom xmlns="http://cyclonedx.org/schema/bom/1.6" version="1">\n<components>\n')
        for i in range(count):
            f.write(
                f'<component type="library" bom-ref="c{i}"><name>p{i}</name><version>1.{i}</version>'
                f"<purl>pkg:npm/p{i}@1.{i}</purl></component>\n"
            )
        f.write("</components>\n<dependencies>\n")
        for i in range(1, count):
            f.write(f'<dependency ref="c0"><dependency ref="c{i}"/></dependency>\n')
        f.write("</dependencies>\n</bom>\n")
    sbom = read_sbom(path)
    assert len(sbom.components) == count
    assert sbom.components[-1].purl == f"pkg:npm/p{count - 1}@1.{count - 1}"
    assert len(dict(sbom.dependencies)["c0"]) == count - 1
    assert json.dumps(sbom.provenance.sha256)
