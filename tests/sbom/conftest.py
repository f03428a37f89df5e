"""Fixtures for the SBOM tests: the stored real SBOMs and a CycloneDX 1.6 schema validator."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator, FormatChecker
from referencing import Registry, Resource

DATA = Path(__file__).parent.parent / "data" / "sbom"

MEDICAL_EXTENDED = DATA / "medical-device" / "extended.sbom.json"
MEDICAL_NARROW = DATA / "medical-device" / "narrow.sbom.json"
# The one stored copy of the Debian 9 SBOM is the demo's (medsec/server/demo_data/README.md has its source).
DEBIAN_XML = Path(str(files("medsec.server").joinpath("demo_data/sbom/postgres-11.15-stretch.syft.cdx.xml")))
ALPINE_XML = DATA / "cyclonedx" / "alpine.cdx.xml"
CDX12_JSON = DATA / "cyclonedx" / "cern-lhc-vdm-editor-e564943.bom.json"
CDX12_XML = DATA / "cyclonedx" / "cern-lhc-vdm-editor-e564943.bom.xml"
SPDX_JSON = DATA / "spdx" / "SPDXJSONExample-v2.3.spdx.json"
ALL_REAL = (MEDICAL_EXTENDED, MEDICAL_NARROW, DEBIAN_XML, ALPINE_XML, CDX12_JSON, CDX12_XML, SPDX_JSON)


def write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


def cdx(components: list[dict[str, Any]], spec: str = "1.6", **extra: Any) -> dict[str, Any]:
    """A minimal CycloneDX JSON document around ``components``."""
    return {"bomFormat": "CycloneDX", "specVersion": spec, "version": 1, "components": components, **extra}


@pytest.fixture(scope="session")
def validate_cdx16() -> Callable[[dict[str, Any]], None]:
    """Validate a document against the stored CycloneDX 1.6 schema; $refs resolve to local files."""
    schemas = {
        name: json.loads((DATA / "schema" / name).read_text()) for name in ("spdx.schema.json", "jsf-0.82.schema.json")
    }
    registry: Registry[Any] = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in schemas.values()
    )
    bom_schema = json.loads((DATA / "schema" / "bom-1.6.schema.json").read_text())
    validator = Draft7Validator(bom_schema, registry=registry, format_checker=FormatChecker())

    def validate(doc: dict[str, Any]) -> None:
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:200]}" for e in errors[:10])

    return validate
