"""Feed readers on real upstream files: OSV (JSON, PyPA YAML, folders, all.zip), NVD 2.0, KEV, EPSS."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from medsec.vulns.errors import FeedFormatError, FeedRecordError, FeedTransportError
from medsec.vulns.feeds.epss import read_epss
from medsec.vulns.feeds.kev import read_kev
from medsec.vulns.feeds.nvd import read_nvd
from medsec.vulns.feeds.osv import read_osv, read_osv_file, read_osv_zip
from medsec.vulns.model import EventKind, Operator, RangeType

from .conftest import DATA

pytestmark = pytest.mark.req("SM-3")
MALFORMED = DATA / "osv" / "ubuntu" / "UBUNTU-CVE-2025-6297.json"


def test_debian_dla_record_is_read_with_ranges_and_versions() -> None:
    (adv,) = read_osv_file(DATA / "osv" / "debian" / "DLA-3022-1.json")
    assert adv.id == "DLA-3022-1"
    assert adv.upstream == ("CVE-2022-1664", "DEBIAN-CVE-2022-1664")
    (affected,) = adv.affected
    assert affected.package is not None and affected.package.ecosystem == "Debian:9"
    assert affected.package.purl == "pkg:deb/debian/dpkg?arch=source"
    (rng,) = affected.ranges
    assert rng.type is RangeType.ECOSYSTEM
    assert [(e.kind, e.version) for e in rng.events] == [(EventKind.INTRODUCED, "0"), (EventKind.FIXED, "1.18.26")]
    assert affected.versions == ("1.18.24", "1.18.25")
    assert adv.source is not None and adv.source.feed == "osv" and len(adv.source.sha256 or "") == 64


def test_pypa_yaml_keeps_timestamps_and_versions_as_strings() -> None:
    (adv,) = read_osv_file(DATA / "osv" / "pypi" / "pillow" / "PYSEC-2023-175.yaml")
    assert adv.modified == "2023-09-25T17:25:13.946374Z"
    assert isinstance(adv.modified, str)
    versions = adv.affected[0].versions
    assert "1.0" in versions and all(isinstance(v, str) for v in versions)
    assert adv.related == ("CVE-2023-4863", "CVE-2023-5129")


def test_unquoted_yaml_numbers_stay_version_strings(tmp_path: Path) -> None:
    record = tmp_path / "X-1.yaml"
    record.write_text(
        "id: X-1\nmodified: 2024-01-02T03:04:05Z\naffected:\n- package: {name: p, ecosystem: PyPI}\n"
        "  ranges:\n  - type: ECOSYSTEM\n    events:\n    - introduced: 1.10\n    - fixed: 2\n  versions: [1.10, 1.2]\n"
    )
    (adv,) = read_osv_file(record)
    assert adv.modified == "2024-01-02T03:04:05Z"
    assert adv.affected[0].ranges[0].events_of(EventKind.INTRODUCED) == ("1.10",)
    assert adv.affected[0].versions == ("1.10", "1.2")


def test_malformed_ubuntu_record_is_reported_with_file_and_field() -> None:
    with pytest.raises(FeedRecordError) as caught:
        list(read_osv_file(MALFORMED))
    err = caught.value
    assert str(err) == "UBUNTU-CVE-2025-6297.json: severity[1].type missing"
    assert err.file == "UBUNTU-CVE-2025-6297.json"
    assert err.record == "UBUNTU-CVE-2025-6297"
    assert err.field == "severity[1].type"
    assert "record UBUNTU-CVE-2025-6297" in err.diagnostics()


def test_malformed_record_is_skipped_and_collected_when_asked(tmp_path: Path) -> None:
    shutil.copy(MALFORMED, tmp_path)
    shutil.copy(DATA / "osv" / "debian" / "DLA-3008-1.json", tmp_path)
    errors: list[FeedRecordError] = []
    advisories = list(read_osv(tmp_path, errors=errors))
    assert [a.id for a in advisories] == ["DLA-3008-1"]
    assert [str(e) for e in errors] == ["UBUNTU-CVE-2025-6297.json: severity[1].type missing"]


def test_malformed_record_aborts_the_import_by_default(tmp_path: Path) -> None:
    shutil.copy(MALFORMED, tmp_path)
    shutil.copy(DATA / "osv" / "debian" / "DLA-3008-1.json", tmp_path)
    with pytest.raises(FeedRecordError):
        list(read_osv(tmp_path))


def test_whole_tree_reads_every_valid_record() -> None:
    errors: list[FeedRecordError] = []
    advisories = list(read_osv(DATA / "osv", errors=errors))
    assert len(advisories) == 6 + 1 + 1 + 60 + 6
    assert [e.record for e in errors] == ["UBUNTU-CVE-2025-6297"]


def test_all_zip_is_streamed_member_by_member(tmp_path: Path) -> None:
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in ("DLA-3008-1.json", "DLA-3012-1.json"):
            z.write(DATA / "osv" / "debian" / name, name)
        z.write(MALFORMED, MALFORMED.name)
        z.writestr("broken.json", "{not json")
    errors: list[FeedRecordError] = []
    advisories = list(read_osv_zip(archive, errors=errors))
    assert [a.id for a in advisories] == ["DLA-3008-1", "DLA-3012-1"]
    assert advisories[0].source is not None and advisories[0].source.location.endswith("all.zip!/DLA-3008-1.json")
    assert [e.file for e in errors] == ["all.zip!/UBUNTU-CVE-2025-6297.json", "all.zip!/broken.json"]
    assert list(tmp_path.iterdir()) == [archive]  # nothing extracted


def test_a_file_that_is_not_a_zip_is_a_transport_error(tmp_path: Path) -> None:
    fake = tmp_path / "all.zip"
    fake.write_bytes(b"not a zip")
    with pytest.raises(FeedTransportError):
        list(read_osv_zip(fake))


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"modified": "x"}, "id"),
        ({"id": "A", "modified": "x", "affected": [{"package": {"name": "n"}}]}, "affected[0].package.ecosystem"),
        (
            {"id": "A", "modified": "x", "affected": [{"ranges": [{"type": "GIT", "events": [{"introduced": "0"}]}]}]},
            "affected[0].ranges[0].repo",
        ),
        (
            {"id": "A", "modified": "x", "affected": [{"ranges": [{"type": "SEMVER", "events": [{"fixed": "1"}]}]}]},
            "affected[0].ranges[0].events",
        ),
        (
            {
                "id": "A",
                "modified": "x",
                "affected": [{"ranges": [{"type": "SEMVER", "events": [{"introduced": "0", "fixed": "1"}]}]}],
            },
            "affected[0].ranges[0].events[0]",
        ),
        ({"id": "A", "modified": "x", "aliases": ["B", 3]}, "aliases[1]"),
    ],
)
def test_schema_violations_name_the_field(tmp_path: Path, record: dict[str, object], field: str) -> None:
    path = tmp_path / "rec.json"
    path.write_text(json.dumps(record))
    with pytest.raises(FeedRecordError) as caught:
        list(read_osv_file(path))
    assert caught.value.field == field


def test_nvd_single_cve_response() -> None:
    page = read_nvd(DATA / "nvd" / "CVE-2023-4863.json")
    (cve,) = page.cves
    assert cve.id == "CVE-2023-4863"
    assert cve.cisa_exploit_add is not None
    assert any(m.version == "3.1" and m.base_score == 8.8 for m in cve.metrics)
    criteria = [m.criteria for c in cve.configurations for n in c.nodes for m in n.matches]
    assert "cpe:2.3:o:debian:debian_linux:12.0:*:*:*:*:*:*:*" in criteria


def test_nvd_page_and_platform_and_configuration() -> None:
    page = read_nvd(DATA / "nvd" / "page-2023-07-18-startIndex-200000-200-cves.json")
    assert (page.total_results, page.start_index, len(page.cves)) == (220499, 200000, 200)
    cve = next(c for c in page.cves if c.id == "CVE-2022-23748")
    (conf,) = cve.configurations
    assert conf.operator is Operator.AND
    assert [m.vulnerable for n in conf.nodes for m in n.matches] == [True, False]


def test_nvd_bare_cve_item() -> None:
    (cve,) = read_nvd(DATA / "nvd" / "CVE-2022-26488.json").cves
    assert cve.id == "CVE-2022-26488"


def test_nvd_other_api_answers_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "sources.json"
    path.write_text('{"sources": []}')
    with pytest.raises(FeedFormatError):
        read_nvd(path)


def test_kev_catalog_parses() -> None:
    kev = read_kev(DATA / "kev" / "known_exploited_vulnerabilities.json")
    assert kev.catalog_version == "2025.08.25"
    assert len(kev.entries) == 1404
    entry = next(e for e in kev.entries if e.cve_id == "CVE-2023-4863")
    assert entry.product == "Chromium WebP"
    assert entry.date_added.isoformat() == "2023-09-13"
    assert entry.cwes == ("CWE-787",)
    assert {"CVE-2022-0543", "CVE-2024-23113", "CVE-2022-23748", "CVE-2023-5631"} <= kev.cve_ids()


def test_epss_csv_with_model_version_line() -> None:
    snapshot = read_epss(DATA / "epss" / "epss_scores-excerpt-2025-02-20.csv")
    assert snapshot.model_version == "v2023.03.01"
    assert snapshot.score_date == "2025-02-20T00:00:00+0000"
    assert len(snapshot.scores) == 5
    assert snapshot.by_cve()["CVE-1999-0005"].probability == pytest.approx(0.91963)


def test_epss_bad_row_is_reported_by_line(tmp_path: Path) -> None:
    path = tmp_path / "epss.csv"
    path.write_text("#model_version:v1,score_date:d\ncve,epss,percentile\nCVE-1-1,2.5,0.1\nCVE-1-2,0.1,0.2\n")
    errors: list[FeedRecordError] = []
    snapshot = read_epss(path, errors=errors)
    assert [s.cve_id for s in snapshot.scores] == ["CVE-1-2"]
    assert errors[0].field == "line 3 epss"
