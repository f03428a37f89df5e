"""The /reports portal pages through the real forms: CSRF, tenant isolation of downloads, and the MDS2
export that only manufacturer roles reach (RA-6, SM-2, SM-4)."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from openpyxl import load_workbook

from conftest import csrf_of, sign_in

pytestmark = pytest.mark.req("RA-6")


def _request(client: Any, hospital: str, lang: str = "en") -> str:
    page = client.get("/reports")
    answer = client.post("/reports/status", data={"csrf_token": csrf_of(page.text), "hospital": hospital, "lang": lang})
    assert answer.status_code == 303, answer.text
    match = re.search(r"created=(sr-[0-9a-f]+)", answer.headers["location"])
    assert match
    return match.group(1)


def test_forged_form_is_refused_and_nothing_is_generated(live_server: Any, client_factory: Any, totp: Any) -> None:
    a = client_factory()
    sign_in(a, live_server.seed.users["a-responsible"], totp, next_path="/reports")
    forged = a.post("/reports/status", data={"csrf_token": "forged", "hospital": "hospital-a", "lang": "en"})
    assert forged.status_code == 403
    assert "No status report has been generated yet." in a.get("/reports").text


def test_other_hospital_reports_look_missing_in_the_portal(live_server: Any, client_factory: Any, totp: Any) -> None:
    a = client_factory()
    sign_in(a, live_server.seed.users["a-responsible"], totp, next_path="/reports")
    report_id = _request(a, "hospital-a")
    assert report_id in a.get("/reports").text
    assert a.get(f"/reports/status/{report_id}.pdf").content.startswith(b"%PDF-")

    b = client_factory()
    sign_in(b, live_server.seed.users["b-responsible"], totp, next_path="/reports")
    assert report_id not in b.get("/reports").text
    theirs = b.get(f"/reports/status/{report_id}.pdf")
    missing = b.get("/reports/status/sr-00000000000000000000.pdf")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.text.replace(report_id, "X") == missing.text.replace("sr-00000000000000000000", "X")
    page = b.get("/reports")
    refused = b.post("/reports/status", data={"csrf_token": csrf_of(page.text), "hospital": "hospital-a"})
    assert refused.status_code == 404
    # The hospital sees no MDS2 form and cannot fetch one.
    assert "MDS2" not in page.text
    assert b.get("/reports/mds2", params={"product": "infusion-pump"}).status_code == 404


@pytest.mark.req("SM-2")
@pytest.mark.req("SM-4")
def test_manufacturer_downloads_the_mds2_workbook(live_server: Any, client_factory: Any, totp: Any) -> None:
    m = client_factory()
    sign_in(m, live_server.seed.users["maker-admin"], totp, next_path="/reports")
    page = m.get("/reports")
    assert "Download MDS2" in page.text and "hospital-b" in page.text
    got = m.get("/reports/mds2", params={"product": "infusion-pump", "format": "xlsx"})
    assert got.status_code == 200
    book = load_workbook(io.BytesIO(got.content))
    cover = {r[0]: r[1] for r in book["Cover"].iter_rows(min_row=2, values_only=True)}
    assert cover["Model"] == "InfuCare 300 infusion pump" and cover["Version"] == "not recorded"
    answers = {r[1]: r[3] for r in book["MDS2"].iter_rows(min_row=2, values_only=True)}
    assert answers["CSUP-1"] == "Manual answer needed"  # no release recorded yet
    assert m.get("/reports/mds2", params={"product": "no-such-product"}).status_code == 404


def test_japanese_page(live_server: Any, client_factory: Any, totp: Any) -> None:
    a = client_factory(lang="ja")
    sign_in(a, live_server.seed.users["a-auditor"], totp, next_path="/reports")
    page = a.get("/reports")
    assert "セキュリティ管理状況報告書の作成を依頼" in page.text and "これまでの報告書" in page.text
