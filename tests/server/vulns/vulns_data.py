"""Fixtures for the vulnerability-management server tests: the Debian 9 SBOM and DLA records."""

from __future__ import annotations

import json
import shutil
from importlib.resources import files
from pathlib import Path

from sqlalchemy import select

from medsec.server.models import Device, Release
from medsec.server.services import feeds, findings, sboms

DATA = Path(__file__).resolve().parents[2] / "data"
# The one stored copy of the Debian 9 SBOM is the demo's (medsec/server/demo_data/README.md has its source).
SBOM = Path(str(files("medsec.server").joinpath("demo_data/sbom/postgres-11.15-stretch.syft.cdx.xml")))
DEBIAN = DATA / "vulns" / "osv" / "debian"
DLAS = ("DLA-3008-1.json", "DLA-3012-1.json", "DLA-3022-1.json", "DLA-3051-1.json")
PRODUCT = "infusion-pump"


def make_dla_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "osv-debian"
    folder.mkdir()
    for name in DLAS:
        shutil.copy(DEBIAN / name, folder / name)
    return folder


def dpkg_fixed_in_place(folder: Path) -> None:
    """A newer DLA-3022-1: 1.18.25 is no longer listed as affected (a corrected record)."""
    path = folder / "DLA-3022-1.json"
    record = json.loads(path.read_text())
    record["modified"] = "2099-01-01T00:00:00Z"
    record["affected"][0]["ranges"][0]["events"] = [{"introduced": "0"}, {"fixed": "1.18.25"}]
    record["affected"][0]["versions"] = ["1.18.24"]
    path.write_text(json.dumps(record))


def load_release(ctx, version: str, dla_dir: Path | None = None) -> int:
    """Import the Debian 9 SBOM for ``version`` (and the DLAs when given), then match; returns the release id."""
    with ctx.tx() as s:
        doc = sboms.import_sbom_file(s, ctx.audit, "maker-psirt", product=PRODUCT, version=version, path=SBOM)
        release_id = doc.release_id
    if dla_dir is not None:
        with ctx.tx() as s:
            feeds.import_osv(s, ctx.audit, "maker-psirt", dla_dir)
    with ctx.tx() as s:
        release = s.get(Release, release_id)
        findings.match_release(s, ctx.audit, release, policy=findings.sla_policy(30, 60), actor="maker-psirt")
    return release_id


def install(ctx, serial: str, version: str) -> None:
    with ctx.tx() as s:
        device = s.scalar(select(Device).where(Device.serial == serial))
        device.installed_version = version
