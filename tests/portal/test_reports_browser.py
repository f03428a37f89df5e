"""The /reports page in a real headless Chromium: a hospital's responsible person asks for a signed status
report in Japanese and downloads the PDF and its signature, which verify (RA-6)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import sign_in_browser
from medsec.crypto.keys import VerifyKey
from medsec.reports.signing import verify_report

pytestmark = [pytest.mark.browser, pytest.mark.req("RA-6")]


def _download(page: Any, link_name: str, into: Path) -> bytes:
    with page.expect_download() as info:
        page.get_by_role("link", name=link_name, exact=True).first.click()
    path = into / info.value.suggested_filename
    info.value.save_as(str(path))
    return path.read_bytes()


def test_hospital_user_requests_and_downloads_a_signed_report(
    new_page: Any, live_server: Any, totp: Any, checked_in: Any, tmp_path: Path
) -> None:
    page = new_page("ja-JP")
    page.set_default_timeout(30_000)  # the signed PDF is built while the browser waits
    user = live_server.seed.users["a-responsible"]  # a Japanese-speaking responsible person with TOTP
    sign_in_browser(page, live_server.url, user, totp, next_path="/reports", lang="ja")

    assert page.url.endswith("/reports")
    assert page.get_by_role("heading", name="報告書", level=1).is_visible()
    # A hospital user can only ask for its own hospital.
    assert page.get_by_label("医療機関").locator("option").all_inner_texts() == ["Sakura General Hospital"]
    page.get_by_label("報告書の言語").select_option("ja")
    page.get_by_role("button", name="署名付き報告書を作成").click()

    table = page.get_by_role("table", name="署名付き管理状況報告書(新しい順)")
    row = table.get_by_role("row").nth(1)
    report_id = row.get_by_role("rowheader").inner_text().strip()
    assert re.fullmatch(r"sr-[0-9a-f]{20}", report_id)
    assert "a-responsible" in row.inner_text()

    pdf = _download(page, "PDF", tmp_path)
    sig = _download(page, "署名", tmp_path)
    assert pdf.startswith(b"%PDF-")
    key = re.search(r"--key (\S+)", page.locator("pre").inner_text())
    assert key is not None
    statement = verify_report(pdf, "pdf", sig, VerifyKey.from_base64(key.group(1)))
    assert statement["report_id"] == report_id and statement["lang"] == "ja"
    if shutil.which("pdftotext"):
        (tmp_path / "r.pdf").write_bytes(pdf)
        text = subprocess.run(
            ["pdftotext", str(tmp_path / "r.pdf"), "-"], capture_output=True, text=True, check=True
        ).stdout
        assert "セキュリティ管理状況報告書" in text and "IC300-0001" in text and "IC300-0003" not in text
