"""Feeds and SBOMs into the database, findings and their history (SM-3)."""

from __future__ import annotations

import base64
import json
import shutil
import tarfile

import httpx
import pytest
from sqlalchemy import func, select
from vulns_data import DATA, DEBIAN, SBOM, dpkg_fixed_in_place, load_release, make_dla_dir

from medsec.crypto.keys import SigningKey
from medsec.sbom import MalformedSbomError
from medsec.server.models import AuditEntry
from medsec.server.models_vulns import (
    FeedImport,
    Finding,
    FindingEvent,
    KevRecord,
    SbomComponent,
    SbomDocument,
    VulnRecord,
)
from medsec.server.services import feeds, findings, sboms
from medsec.vulns.errors import FeedRecordError

pytestmark = pytest.mark.req("SM-3")


@pytest.fixture
def dla_dir(tmp_path):
    return make_dla_dir(tmp_path)


def _count(ctx, model) -> int:
    with ctx.tx() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def test_malformed_record_rolls_back_the_whole_import_and_names_file_record_field(ctx, dla_dir):
    shutil.copy(DEBIAN.parent / "ubuntu" / "UBUNTU-CVE-2025-6297.json", dla_dir / "DLA-3010-0.json")
    with pytest.raises(FeedRecordError) as caught, ctx.tx() as s:
        feeds.import_osv(s, ctx.audit, "maker-psirt", dla_dir)
    err = caught.value
    assert err.file == "DLA-3010-0.json"
    assert err.record == "UBUNTU-CVE-2025-6297"
    assert err.field.startswith("severity[1].type")
    # Records before the bad one were parsed, yet nothing of the import is stored.
    assert _count(ctx, VulnRecord) == 0
    assert _count(ctx, FeedImport) == 0


def test_malformed_sbom_is_refused_before_anything_is_stored(ctx, tmp_path):
    bad = tmp_path / "bad.cdx.json"
    bad.write_text('{"bomFormat": "CycloneDX", "specVersion": "1.6", "components": [')
    with pytest.raises(MalformedSbomError), ctx.tx() as s:
        sboms.import_sbom_file(s, ctx.audit, "maker-psirt", product="infusion-pump", version="9.9", path=bad)
    assert _count(ctx, SbomDocument) == 0
    assert _count(ctx, SbomComponent) == 0


def test_supplier_sbom_is_kept_apart_with_provenance_and_quality(ctx):
    with ctx.tx() as s:
        own = sboms.import_sbom_file(s, ctx.audit, "maker-psirt", product="infusion-pump", version="1.0", path=SBOM)
        supplier = sboms.import_sbom_file(
            s,
            ctx.audit,
            "maker-psirt",
            product="infusion-pump",
            version="1.0",
            path=DATA / "sbom" / "spdx" / "SPDXJSONExample-v2.3.spdx.json",
            supplier="Example Supplier",
        )
        assert not own.from_supplier and supplier.from_supplier and supplier.supplier == "Example Supplier"
        assert own.quality["component_count"] == own.component_count > 100
        view = sboms.merged_view(s, own.release)
        assert len(view.sbom.components) >= own.component_count


def test_findings_are_matched_and_stay_with_history_after_a_feed_update(live_server, dla_dir):
    ctx = live_server.ctx
    load_release(ctx, "1.0", dla_dir)
    with ctx.tx() as s:
        active = {(f.advisory_id, f.component_name) for f in s.scalars(select(Finding).where(Finding.active))}
    assert ("DLA-3022-1", "dpkg") in active
    assert ("DLA-3008-1", "openssl") in active
    before = _count(ctx, Finding)

    dpkg_fixed_in_place(dla_dir)
    with ctx.tx() as s:
        result = feeds.import_osv(s, ctx.audit, "maker-psirt", dla_dir)
        assert result.delta == ["DLA-3022-1"]  # incremental: only the record whose modified moved
        summary = findings.rematch_after_import(
            s, ctx.audit, result.delta, policy=findings.sla_policy(30, 60), actor="maker-psirt"
        )
    assert summary.now_inactive == 1 and summary.new == 0
    assert summary.pairs_evaluated < 10  # only dpkg's pairs, not all 137 components
    assert _count(ctx, Finding) == before  # never deleted
    with ctx.tx() as s:
        dpkg = s.scalar(select(Finding).where(Finding.advisory_id == "DLA-3022-1"))
        assert not dpkg.active and dpkg.inactive_reason == "no-longer-affected"
        kinds = [e.kind for e in s.scalars(select(FindingEvent).where(FindingEvent.finding_id == dpkg.id))]
        assert kinds == ["matched", "inactive"]
        dpkg_id = dpkg.id

    token = live_server.seed.tokens["maker-psirt"]
    r = httpx.get(f"{live_server.url}/api/v1/vulns/findings/{dpkg_id}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert r.json()["active"] is False
    assert [h["kind"] for h in r.json()["history"]] == ["matched", "inactive"]
    listed = httpx.get(f"{live_server.url}/api/v1/vulns/findings", headers={"Authorization": f"Bearer {token}"})
    assert dpkg_id not in {f["id"] for f in listed.json()}
    assert {"sla", "priority"} <= set(listed.json()[0])


def test_signed_bundle_imports_and_a_tampered_one_is_refused(ctx, dla_dir, tmp_path):
    key = SigningKey.generate()
    bundle = tmp_path / "feeds.tar"
    feeds.write_bundle(bundle, [("osv", dla_dir)], key)
    with ctx.tx() as s:
        results = feeds.import_bundle(s, ctx.audit, "maker-psirt", bundle, [key.verify_key])
    assert results[0].added == 4
    with ctx.tx() as s:
        row = s.scalar(select(FeedImport).where(FeedImport.feed == "osv"))
        assert row.bundle_sha256 is not None

    tampered = tmp_path / "tampered.tar"
    with tarfile.open(bundle) as src, tarfile.open(tampered, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name.endswith("DLA-3022-1.json"):
                data = data.replace(b"1.18.26", b"1.18.20")
                member.size = len(data)
            dst.addfile(member, __import__("io").BytesIO(data))
    with pytest.raises(feeds.FeedBundleError, match="SHA-256"), ctx.tx() as s:
        feeds.import_bundle(s, ctx.audit, "maker-psirt", tampered, [key.verify_key])
    with pytest.raises(feeds.FeedBundleError, match="trusted"), ctx.tx() as s:
        feeds.import_bundle(s, ctx.audit, "maker-psirt", bundle, [SigningKey.generate().verify_key])
    assert base64  # keys travel as base64 in settings


def test_stale_feed_status(ctx, dla_dir):
    with ctx.tx() as s:
        assert "osv" in feeds.stale_feeds(s, 7)
        feeds.import_osv(s, ctx.audit, "maker-psirt", dla_dir)
        assert "osv" not in feeds.stale_feeds(s, 7)
        assert s.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.event_type == "feed.imported"))


def test_kev_reimport_counts_changes_honestly(ctx, tmp_path):
    kev = DATA / "vulns" / "kev" / "known_exploited_vulnerabilities.json"
    with ctx.tx() as s:
        first = feeds.import_kev(s, ctx.audit, "maker-psirt", kev)
    assert (first.added, first.updated, first.unchanged) == (1404, 0, 0)
    with ctx.tx() as s:
        again = feeds.import_kev(s, ctx.audit, "maker-psirt", kev)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 1404)
    doc = json.loads(kev.read_text())
    doc["vulnerabilities"][0]["vulnerabilityName"] += " (renamed)"
    changed = tmp_path / "kev.json"
    changed.write_text(json.dumps(doc))
    with ctx.tx() as s:
        third = feeds.import_kev(s, ctx.audit, "maker-psirt", changed)
        stored = s.scalars(select(KevRecord).where(KevRecord.cve_id == doc["vulnerabilities"][0]["cveID"])).one()
        assert stored.name.endswith("(renamed)")
        assert stored.import_id == third.import_id
    assert (third.added, third.updated, third.unchanged) == (0, 1, 1403)
