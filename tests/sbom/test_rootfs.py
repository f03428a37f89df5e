"""SBOM generation from a device root filesystem."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from medsec.sbom import SbomSourceError, quality_report, sbom_from_rootfs
from medsec.sbom.identity import parse_purl
from medsec.sbom.quality import Element
from medsec.sbom.rootfs import dpkg_components, parse_deb822

pytestmark = pytest.mark.req("SM-3")

STATUS = """\
Package: libssl3
Status: install ok installed
Priority: optional
Installed-Size: 6160
Maintainer: Debian OpenSSL Team <pkg-openssl-devel@alioth-lists.debian.net>
Architecture: amd64
Multi-Arch: same
Source: openssl
Version: 3.0.13-1~deb12u1
Depends: libc6 (>= 2.34)
Description: Secure Sockets Layer toolkit - shared libraries
 This package is part of the OpenSSL project's implementation of the SSL
 and TLS cryptographic protocols.

Package: libc6
Status: install ok installed
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u4
Provides: libc6-abi

Package: bash
Status: install ok installed
Maintainer: Matthias Klose <doko@debian.org>
Architecture: amd64
Source: bash (5.2.15-2)
Version: 5.2.15-2+b2
Pre-Depends: libc6 (>= 2.36), libtinfo6 (>= 6) | libncurses6
Depends: base-files (>= 2.1.12), debianutils (>= 5.6-0.1)

Package: old-thing
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0
"""

METADATA = """\
Metadata-Version: 2.1
Name: Requests_Lib
Version: 2.31.0
Author: Kenneth Reitz
License: Apache 2.0
Requires-Dist: charset-normalizer (<4,>=2)
Requires-Dist: PySocks (!=1.5.7,>=1.5.6) ; extra == 'socks'

Requests is an HTTP library.
"""


def _fake_root(root: Path) -> Path:
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(STATUS)
    (root / "etc/medsec").mkdir(parents=True)
    (root / "etc/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n')
    site = root / "usr/lib/python3.11/dist-packages"
    (site / "Requests_Lib-2.31.0.dist-info").mkdir(parents=True)
    (site / "Requests_Lib-2.31.0.dist-info/METADATA").write_text(METADATA)
    (site / "charset_normalizer-3.3.2.dist-info").mkdir(parents=True)
    (site / "charset_normalizer-3.3.2.dist-info/METADATA").write_text(
        "Metadata-Version: 2.1\nName: charset-normalizer\nVersion: 3.3.2\nLicense-Expression: MIT\n"
    )
    manifest = {
        "format": "medsec-release/v1",
        "product": "infusion-pump",
        "version": "1.1.0",
        "release_counter": 7,
        "hardware_ids": ["ic300-rev-b"],
        "manufacturer": "Example Medical",
    }
    (root / "etc/medsec/release.json").write_text(json.dumps(manifest))
    return root


def test_fake_root_gives_debs_python_and_the_product(tmp_path: Path) -> None:
    created = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    sbom = sbom_from_rootfs(_fake_root(tmp_path), created=created)
    assert sbom.provenance.created == "2025-01-02T03:04:05Z"
    assert sbom.provenance.authors == ("Example Medical",)
    assert sbom.subject is not None
    assert (sbom.subject.name, sbom.subject.version, sbom.subject.supplier) == (
        "infusion-pump",
        "1.1.0",
        "Example Medical",
    )
    assert ("medsec:hardware-id", "ic300-rev-b") in sbom.subject.properties
    by_name = {c.name: c for c in sbom.components}
    assert set(by_name) == {"libssl3", "libc6", "bash", "Requests_Lib", "charset-normalizer"}  # config-files skipped
    ssl = parse_purl(by_name["libssl3"].purl or "")
    assert (ssl.type, ssl.namespace, ssl.name, ssl.version) == ("deb", "debian", "libssl3", "3.0.13-1~deb12u1")
    assert ssl.qualifiers == {"arch": "amd64", "distro": "debian-12", "upstream": "openssl"}
    # Source version differs from the binary's (binNMU): purl-spec "upstream=name@version".
    assert parse_purl(by_name["bash"].purl or "").qualifiers["upstream"] == "bash@5.2.15-2"
    assert by_name["Requests_Lib"].purl == "pkg:pypi/requests-lib@2.31.0"
    assert by_name["charset-normalizer"].licenses == ("MIT",)
    deps = dict(sbom.dependencies)
    assert deps[by_name["libssl3"].ref] == (by_name["libc6"].ref,)
    assert deps[by_name["bash"].ref] == (by_name["libc6"].ref,)  # libtinfo6, base-files... not installed
    # The optional (extra) requirement is not a dependency.
    assert deps[by_name["Requests_Lib"].ref] == (by_name["charset-normalizer"].ref,)
    assert set(deps[sbom.subject.ref]) == {c.ref for c in sbom.components}
    report = quality_report(sbom)
    assert report.unmatchable == ()
    # Only the distribution that names no author lacks a supplier.
    assert [(f.name, f.missing) for f in report.component_findings] == [("charset-normalizer", (Element.SUPPLIER,))]


def test_manifest_json_at_the_root_is_also_found(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"product": "monitor", "version": "4.2"}))
    sbom = sbom_from_rootfs(tmp_path)
    assert sbom.subject is not None and sbom.subject.purl == "pkg:generic/monitor@4.2"
    assert sbom.components == ()


def test_broken_manifest_and_missing_root_raise(tmp_path: Path) -> None:
    with pytest.raises(SbomSourceError, match="not a directory"):
        sbom_from_rootfs(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(SbomSourceError, match="line 1"):
        sbom_from_rootfs(tmp_path)


def test_deb822_continuation_lines() -> None:
    (stanza,) = parse_deb822("Package: a\nDescription: short\n long line\n .\n more\n")
    assert stanza["Description"] == "short\nlong line\n.\nmore"


def test_this_machines_dpkg_status_parses() -> None:
    status = Path("/var/lib/dpkg/status")
    if not status.is_file():
        pytest.skip("no dpkg database on this machine")
    text = status.read_text(encoding="utf-8", errors="replace")
    expected = sum(1 for s in parse_deb822(text) if s.get("Status", "").endswith(" installed"))
    components, edges = dpkg_components(text, distro="debian-12")
    assert len(components) == expected > 100
    assert all(c.purl and c.purl.startswith("pkg:deb/debian/") for c in components)
    assert len({c.ref for c in components}) == len(components)
    libc = [c for c in components if c.name == "libc6"]
    assert libc and "upstream=glibc" in (libc[0].purl or "")
    assert sum(len(t) for t in edges.values()) > len(components)
