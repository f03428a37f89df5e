"""Comparing two releases' components."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsec.sbom import diff, read_sbom

from .conftest import MEDICAL_EXTENDED, cdx, write_json

pytestmark = pytest.mark.req("SM-3")


def _bom(tmp_path: Path, name: str, components: list[dict[str, str]]) -> Path:
    return write_json(tmp_path / name, cdx([{"type": "library", **c} for c in components]))


def test_added_removed_and_version_changed(tmp_path: Path) -> None:
    old = read_sbom(
        _bom(
            tmp_path,
            "old.json",
            [
                {
                    "name": "libssl1.1",
                    "version": "1.1.0l-1~deb9u5",
                    "purl": "pkg:deb/debian/libssl1.1@1.1.0l-1~deb9u5?arch=amd64&distro=debian-9",
                },
                {"name": "tzdata", "version": "2021a", "purl": "pkg:deb/debian/tzdata@2021a?arch=all&distro=debian-9"},
                {"name": "gone", "version": "1", "purl": "pkg:deb/debian/gone@1"},
                {"name": "vendor-blob", "version": "7"},
            ],
        )
    )
    new = read_sbom(
        _bom(
            tmp_path,
            "new.json",
            [
                {
                    "name": "libssl1.1",
                    "version": "1.1.0l-1~deb9u6",
                    "purl": "pkg:deb/debian/libssl1.1@1.1.0l-1~deb9u6?arch=amd64&distro=debian-10",
                },
                {"name": "tzdata", "version": "2021a", "purl": "pkg:deb/debian/tzdata@2021a?arch=all&distro=debian-9"},
                {"name": "fresh", "version": "1", "purl": "pkg:pypi/fresh@1"},
                {"name": "Vendor-Blob", "version": "8"},
            ],
        )
    )
    result = diff(old, new)
    assert [c.name for c in result.added] == ["fresh"]
    assert [c.name for c in result.removed] == ["gone"]
    assert sorted((ch.old.version, ch.new.version) for ch in result.changed) == [
        ("1.1.0l-1~deb9u5", "1.1.0l-1~deb9u6"),
        ("7", "8"),
    ]
    assert result.unchanged == 1
    assert result.to_dict()["changed"][0]["old"] == "1.1.0l-1~deb9u5"


def test_other_architecture_is_another_package(tmp_path: Path) -> None:
    old = read_sbom(
        _bom(tmp_path, "a.json", [{"name": "libc6", "version": "2.36", "purl": "pkg:deb/debian/libc6@2.36?arch=amd64"}])
    )
    new = read_sbom(
        _bom(tmp_path, "b.json", [{"name": "libc6", "version": "2.37", "purl": "pkg:deb/debian/libc6@2.37?arch=i386"}])
    )
    result = diff(old, new)
    assert len(result.added) == len(result.removed) == 1 and not result.changed


def test_several_versions_of_one_package(tmp_path: Path) -> None:
    old = read_sbom(
        _bom(
            tmp_path,
            "a.json",
            [{"name": "lodash", "version": v, "purl": f"pkg:npm/lodash@{v}"} for v in ("3.0.0", "4.17.20")],
        )
    )
    new = read_sbom(
        _bom(
            tmp_path, "b.json", [{"name": "lodash", "version": v, "purl": f"pkg:npm/lodash@{v}"} for v in ("4.17.21",)]
        )
    )
    result = diff(old, new)
    assert len(result.changed) == 1 and len(result.removed) == 1 and not result.added


def test_same_sbom_has_no_changes() -> None:
    sbom = read_sbom(MEDICAL_EXTENDED)
    result = diff(sbom, sbom)
    assert (result.added, result.removed, result.changed) == ((), (), ())
    assert result.unchanged == len(sbom.components)
