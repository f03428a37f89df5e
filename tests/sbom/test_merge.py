"""Merged view of a release's own SBOM and its supplier SBOMs (附属書A)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsec.sbom import merge, read_sbom
from medsec.sbom.merge import source_label

from .conftest import MEDICAL_EXTENDED, MEDICAL_NARROW, cdx, write_json

pytestmark = pytest.mark.req("SM-3")


def _own(tmp_path: Path) -> Path:
    return write_json(
        tmp_path / "own.json",
        cdx(
            [
                {
                    "type": "library",
                    "bom-ref": "ssl",
                    "name": "openssl",
                    "version": "3.0.13",
                    "purl": "pkg:generic/openssl@3.0.13",
                },
                {"type": "library", "bom-ref": "zlib", "name": "zlib", "version": "1.3"},
            ],
            serialNumber="urn:uuid:11111111-1111-1111-1111-111111111111",
            metadata={"component": {"type": "application", "bom-ref": "pump", "name": "pump", "version": "2.0"}},
            dependencies=[{"ref": "pump", "dependsOn": ["ssl", "zlib"]}],
        ),
    )


def _supplier(tmp_path: Path) -> Path:
    return write_json(
        tmp_path / "supplier.json",
        cdx(
            [
                {
                    "type": "library",
                    "bom-ref": "ssl",
                    "name": "openssl",
                    "version": "3.0.13",
                    "purl": "pkg:generic/openssl@3.0.13",
                    "supplier": {"name": "OpenSSL Foundation"},
                },
                {
                    "type": "library",
                    "bom-ref": "zlib",
                    "name": "zlib",
                    "version": "1.3",
                    "purl": "pkg:generic/zlib@1.3",
                },
                {
                    "type": "library",
                    "bom-ref": "lwip",
                    "name": "lwip",
                    "version": "2.1.3",
                    "purl": "pkg:generic/lwip@2.1.3",
                },
            ],
            metadata={"component": {"type": "firmware", "bom-ref": "radio", "name": "radio-module", "version": "5"}},
            dependencies=[{"ref": "radio", "dependsOn": ["ssl", "zlib", "lwip"]}],
        ),
    )


def test_merge_deduplicates_by_purl_then_name_version_and_keeps_sources(tmp_path: Path) -> None:
    own = read_sbom(_own(tmp_path))
    supplier = read_sbom(_supplier(tmp_path), supplier="RadioCo")
    result = merge(own, supplier)
    merged = result.sbom
    by_name = {c.name: c for c in merged.components}
    assert set(by_name) == {"openssl", "zlib", "radio-module", "lwip"}
    own_label = source_label(own.provenance)
    supplier_label = source_label(supplier.provenance)
    assert own_label == "manufacturer (urn:uuid:11111111-1111-1111-1111-111111111111)"
    assert supplier_label.startswith("RadioCo (sha256:")
    assert by_name["openssl"].source_sbom == own_label
    assert by_name["lwip"].source_sbom == supplier_label
    assert by_name["radio-module"].source_sbom == supplier_label
    assert result.duplicates == 2
    conflicts = {(c.key, c.field): c for c in result.conflicts}
    # Same purl, the supplier names a supplier the own SBOM did not.
    assert conflicts[("pkg:generic/openssl@3.0.13", "supplier")].other == "OpenSSL Foundation"
    # zlib had no purl in the own SBOM: matched by name+version; the purl difference is recorded.
    assert conflicts[("pkg:generic/zlib@1.3", "purl")].kept == ""
    # Refs that clashed ("ssl", "zlib") were folded into the kept ones; dependencies follow.
    deps = dict(merged.dependencies)
    assert deps["pump"] == ("ssl", "zlib", "radio")
    assert set(deps["radio"]) == {"ssl", "zlib", "lwip"}
    refs = [c.ref for c in merged.components]
    assert len(refs) == len(set(refs))
    # The supplier SBOM itself is untouched (kept apart).
    assert all(c.source_sbom is None for c in supplier.components)


def test_clashing_refs_of_different_components_are_prefixed(tmp_path: Path) -> None:
    a = write_json(tmp_path / "a.json", cdx([{"type": "library", "bom-ref": "x", "name": "alpha", "version": "1"}]))
    b = write_json(
        tmp_path / "b.json",
        cdx(
            [
                {"type": "library", "bom-ref": "x", "name": "beta", "version": "1"},
                {"type": "library", "bom-ref": "y", "name": "gamma", "version": "1"},
            ],
            dependencies=[{"ref": "y", "dependsOn": ["x"]}],
        ),
    )
    result = merge(read_sbom(a), read_sbom(b, supplier="S"))
    beta = next(c for c in result.sbom.components if c.name == "beta")
    assert beta.ref != "x" and beta.ref.endswith("/x")
    assert dict(result.sbom.dependencies)["y"] == (beta.ref,)


def test_merge_of_the_two_real_medical_device_sboms() -> None:
    own = read_sbom(MEDICAL_EXTENDED)
    supplier = read_sbom(MEDICAL_NARROW, supplier="Narrow Inc")
    result = merge(own, supplier)
    purls = [c.purl for c in result.sbom.components if c.purl]
    assert len(purls) == len(set(purls))
    assert len(result.sbom.components) < len(own.components) + len(supplier.components) + 1
    assert {c.source_sbom for c in result.sbom.components} <= {
        source_label(own.provenance),
        source_label(supplier.provenance),
    }
