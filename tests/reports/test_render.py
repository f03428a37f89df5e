"""The report renderers: the same document gives the same figures in HTML and PDF, in both languages."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from medsec.reports.document import Document, KeyValues, Paragraph, Section, Table
from medsec.reports.html import render_html
from medsec.reports.pdf import render_pdf


def _doc(lang: str) -> Document:
    return Document(
        title="セキュリティ状況報告" if lang == "ja" else "Security status report",
        lang=lang,
        subtitle="Hospital <A> & co",
        meta=KeyValues((("Generated", "2026-11-26T00:00:00Z"),)),
        sections=(
            Section("Devices", (Table(("Serial", "Version"), (("IC300-0001", "2.1.0"), ("IC300-0002", "2.0.3"))),)),
            Section("Empty", (Table(("A",), (), empty="none recorded"),)),
            Section("Notes", (Paragraph("line one\nline <two>"),)),
        ),
        footer="sha256 0123",
    )


def test_html_escapes_and_keeps_every_figure() -> None:
    page = render_html(_doc("en"))
    assert "Hospital &lt;A&gt; &amp; co" in page
    assert "<td>IC300-0002</td><td>2.0.3</td>" in page
    assert "none recorded" in page
    assert "<script" not in page


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_pdf_is_reproducible(lang: str) -> None:
    first, second = render_pdf(_doc(lang)), render_pdf(_doc(lang))
    assert first.startswith(b"%PDF-")
    assert first == second


@pytest.mark.skipif(
    shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) is not installed; .ci/run installs it"
)
def test_pdf_text_holds_the_figures(tmp_path: Path) -> None:
    path = tmp_path / "r.pdf"
    path.write_bytes(render_pdf(_doc("ja")))
    text = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True, check=True).stdout
    assert "セキュリティ状況報告" in text
    assert re.search(r"IC300-0002\s+2\.0\.3", text)


def test_ragged_table_is_refused() -> None:
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        Table(("a", "b"), (("x",),))
