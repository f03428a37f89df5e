"""CycloneDX 1.6 export: schema-valid, FDA support properties, and read -> export -> read round trips."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packageurl import PackageURL

from medsec.sbom import Component, Sbom, export_cyclonedx, merge, read_sbom, sbom_from_rootfs
from medsec.sbom.identity import normalise_purl

from .conftest import ALL_REAL, CDX12_JSON, MEDICAL_EXTENDED, MEDICAL_NARROW, cdx, write_json

pytestmark = pytest.mark.req("SM-3")

Validate = Callable[[dict[str, Any]], None]


def _without_issues(components: tuple[Component, ...]) -> list[Component]:
    return [replace(c, issues=()) for c in components]


def _round_trip(sbom: Sbom, tmp_path: Path) -> Sbom:
    return read_sbom(write_json(tmp_path / "out.cdx.json", export_cyclonedx(sbom)))


@pytest.mark.parametrize("path", ALL_REAL, ids=lambda p: p.name)
def test_export_is_schema_valid_and_round_trips(path: Path, tmp_path: Path, validate_cdx16: Validate) -> None:
    sbom = read_sbom(path)
    document = export_cyclonedx(sbom)
    validate_cdx16(document)
    again = _round_trip(sbom, tmp_path)
    assert again.provenance.format == "CycloneDX 1.6 JSON"
    # Issues may differ (a version taken from the purl is no longer missing); the components are the same.
    assert _without_issues(again.components) == _without_issues(sbom.components)
    assert (again.subject and replace(again.subject, issues=())) == (sbom.subject and replace(sbom.subject, issues=()))
    assert again.dependencies == sbom.dependencies
    assert again.provenance.created == sbom.provenance.created
    assert again.provenance.authors == sbom.provenance.authors
    assert again.provenance.tools == sbom.provenance.tools


def test_clean_sbom_round_trips_exactly(tmp_path: Path) -> None:
    sbom = read_sbom(CDX12_JSON)
    assert not any(c.issues for c in sbom.components)
    again = _round_trip(sbom, tmp_path)
    assert again.components == sbom.components
    assert again.subject == sbom.subject


def test_fda_support_properties_and_native_fields(tmp_path: Path, validate_cdx16: Validate) -> None:
    doc = cdx(
        [
            {
                "type": "operating-system",
                "bom-ref": "os",
                "supplier": {"name": "Debian"},
                "name": "debian",
                "version": "12",
                "cpe": "cpe:2.3:o:debian:debian_linux:12:*:*:*:*:*:*:*",
                "properties": [
                    {"name": "medsec:support-level", "value": "security-updates"},
                    {"name": "medsec:end-of-support", "value": "2028-06-30"},
                ],
                "components": [
                    {
                        "type": "library",
                        "bom-ref": "k",
                        "name": "linux",
                        "version": "6.1",
                        "purl": "pkg:generic/linux@6.1",
                    }
                ],
            }
        ],
        spec="1.4",
    )
    sbom = read_sbom(write_json(tmp_path / "in.json", doc))
    os_component = sbom.components[0]
    assert os_component.support_level == "security-updates"
    assert os_component.end_of_support == "2028-06-30"
    out = export_cyclonedx(sbom)
    validate_cdx16(out)
    exported = out["components"][0]
    assert exported["supplier"] == {"name": "Debian"}
    assert {"name": "medsec:end-of-support", "value": "2028-06-30"} in exported["properties"]
    assert {"name": "medsec:support-level", "value": "security-updates"} in exported["properties"]
    assert exported["components"][0]["bom-ref"] == "k"  # nesting restored
    assert out["metadata"]["properties"] == [{"name": "medsec:sbom-source", "value": "manufacturer"}]
    assert out["serialNumber"].startswith("urn:uuid:")


def test_merged_view_exports_with_source_sbom(tmp_path: Path, validate_cdx16: Validate) -> None:
    result = merge(read_sbom(MEDICAL_EXTENDED), read_sbom(MEDICAL_NARROW, supplier="Supplier"))
    out = export_cyclonedx(result.sbom)
    validate_cdx16(out)
    again = read_sbom(write_json(tmp_path / "merged.json", out))
    assert [c.source_sbom for c in again.components] == [c.source_sbom for c in result.sbom.components]


def test_rootfs_sbom_exports_valid(tmp_path: Path, validate_cdx16: Validate) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"product": "pump", "version": "1"}))
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(
        "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nSource: zlib\nVersion: 1:1.2.13.dfsg-1\n"
    )
    sbom = sbom_from_rootfs(tmp_path)
    out = export_cyclonedx(sbom)
    validate_cdx16(out)
    assert _round_trip(sbom, tmp_path).components == sbom.components


_segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..")
)
_version = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-+~:_", min_size=1, max_size=16)
_qualifiers = st.dictionaries(
    st.sampled_from(["arch", "distro", "upstream", "type", "classifier"]), _segment, max_size=3
)


@given(
    ptype=st.sampled_from(["deb", "npm", "generic", "golang", "maven", "apk", "nuget"]),
    namespace=st.one_of(st.none(), _segment),
    name=_segment,
    version=_version,
    qualifiers=_qualifiers,
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_purl_round_trips_through_read_and_export(
    tmp_path: Path, ptype: str, namespace: str | None, name: str, version: str, qualifiers: dict[str, str]
) -> None:
    purl = PackageURL(type=ptype, namespace=namespace, name=name, version=version, qualifiers=qualifiers).to_string()
    canonical = normalise_purl(purl)
    assert normalise_purl(canonical) == canonical  # idempotent
    doc = cdx([{"type": "library", "bom-ref": "c", "name": name, "version": version, "purl": purl}])
    first = read_sbom(write_json(tmp_path / "in.json", doc))
    assert first.components[0].purl == canonical
    assert not first.components[0].issues
    second = _round_trip(first, tmp_path)
    assert second.components == first.components
