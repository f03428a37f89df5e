"""Helpers for the vulnerability tests: the copied feed data (tests/data/vulns/README.md) and the Debian 9 SBOM
(the demo data copy in the package)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from importlib.resources import files
from pathlib import Path

from medsec.sbom.model import Component, ComponentKind, ComponentRef

DATA = Path(__file__).parent.parent / "data" / "vulns"
# The one stored copy of the Debian 9 SBOM is the demo's (medsec/server/demo_data/README.md has its source).
STRETCH_SBOM = Path(str(files("medsec.server").joinpath("demo_data/sbom/postgres-11.15-stretch.syft.cdx.xml")))
_CDX = "{http://cyclonedx.org/schema/bom/1.4}"


def stretch_components() -> list[Component]:
    """Every component of the postgres:11.15-stretch SBOM (132 deb packages, 3 Go modules, postgresql), built
    from their purls; the SBOM readers are tested in tests/sbom, this keeps the matcher tests independent."""
    root = ET.parse(STRETCH_SBOM).getroot()
    components = []
    for element in root.iter(f"{_CDX}component"):
        purl = element.findtext(f"{_CDX}purl")
        components.append(
            Component(
                ref=ComponentRef(element.get("bom-ref") or purl or ""),
                name=element.findtext(f"{_CDX}name", ""),
                version=element.findtext(f"{_CDX}version"),
                purl=purl,
                cpe=element.findtext(f"{_CDX}cpe"),
            )
        )
    return components


def component(
    ref: str,
    purl: str | None,
    version: str | None = None,
    *,
    name: str | None = None,
    kind: ComponentKind = ComponentKind.LIBRARY,
    cpe: str | None = None,
) -> Component:
    """A component as an SBOM reader would give it; the version defaults to the purl's."""
    if version is None and purl and "@" in purl:
        version = purl.split("@", 1)[1].split("?", 1)[0]
    return Component(ref=ComponentRef(ref), name=name or ref, version=version, purl=purl, kind=kind, cpe=cpe)
