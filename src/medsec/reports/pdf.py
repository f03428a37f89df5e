"""Render a :class:`~medsec.reports.document.Document` as a PDF (A4) with reportlab.

Japanese text uses the Adobe-Japan1 CID font HeiseiKakuGo-W5, which every PDF reader
has without embedding, so the renderer needs no font files. English documents use
Helvetica. Output is reproducible: the same document gives the same bytes (reportlab's
``invariant`` mode fixes the creation date and file id), so a signed report can be
rebuilt and compared.
"""

from __future__ import annotations

import io
from functools import cache
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.platypus import Paragraph as RLParagraph
from reportlab.platypus import SimpleDocTemplate, Spacer, TableStyle
from reportlab.platypus import Table as RLTable

from medsec.reports.document import Block, Document, KeyValues, Paragraph, Table

JAPANESE_FONT = "HeiseiKakuGo-W5"
_ACCENT = colors.HexColor("#1d4f91")
_HEADER_BG = colors.HexColor("#eef2f8")
_GRID = colors.HexColor("#bbbbbb")


@cache
def _font(lang: str) -> tuple[str, str]:
    """(regular, bold) font names for ``lang``."""
    if lang == "ja":
        pdfmetrics.registerFont(UnicodeCIDFont(JAPANESE_FONT))
        return JAPANESE_FONT, JAPANESE_FONT
    return "Helvetica", "Helvetica-Bold"


@cache
def _styles(lang: str) -> dict[str, ParagraphStyle]:
    regular, bold = _font(lang)
    # Japanese lines may break between any two characters.
    wrap = "CJK" if lang == "ja" else None
    base = ParagraphStyle("body", fontName=regular, fontSize=9.5, leading=13.5, wordWrap=wrap)
    return {
        "title": ParagraphStyle("title", parent=base, fontName=bold, fontSize=17, leading=22, spaceAfter=2 * mm),
        "subtitle": ParagraphStyle("subtitle", parent=base, fontSize=10.5, textColor=colors.HexColor("#444444")),
        "h2": ParagraphStyle(
            "h2", parent=base, fontName=bold, fontSize=12.5, leading=16, textColor=_ACCENT, spaceBefore=5 * mm
        ),
        "body": base,
        "cell": ParagraphStyle("cell", parent=base, fontSize=8, leading=10.5),
        "head": ParagraphStyle("head", parent=base, fontName=bold, fontSize=8, leading=10.5),
        "empty": ParagraphStyle("empty", parent=base, textColor=colors.HexColor("#555555")),
        "footer": ParagraphStyle("footer", parent=base, fontSize=7.5, textColor=colors.HexColor("#555555")),
    }


def _p(text: str, style: ParagraphStyle) -> RLParagraph:
    # reportlab paragraphs take a small XML markup: escape everything, keep line breaks.
    return RLParagraph(escape(text).replace("\n", "<br/>"), style)


def _grid(data: list[list[Any]], widths: list[float] | None, header: bool) -> RLTable:
    table = RLTable(data, colWidths=widths, repeatRows=1 if header else 0, hAlign="LEFT")
    commands: list[tuple[Any, ...]] = [
        ("GRID", (0, 0), (-1, -1), 0.4, _GRID),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LEFTPADDING", (0, 0), (-1, -1), 3),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3),
    ]
    if header:
        commands.append(("BACKGROUND", (0, 0), (-1, 0), _HEADER_BG))
    table.setStyle(TableStyle(commands))
    return table


def _flowables(block: Block, styles: dict[str, ParagraphStyle], width: float) -> list[Any]:
    if isinstance(block, Paragraph):
        return [_p(block.text, styles["body"]), Spacer(1, 1.5 * mm)]
    if isinstance(block, KeyValues):
        if not block.items:
            return []
        data = [[_p(k, styles["head"]), _p(v, styles["cell"])] for k, v in block.items]
        return [_grid(data, [width * 0.3, width * 0.7], header=False), Spacer(1, 2 * mm)]
    return _table(block, styles, width)


def _table(block: Table, styles: dict[str, ParagraphStyle], width: float) -> list[Any]:
    if not block.rows:
        return [_p(block.empty, styles["empty"]), Spacer(1, 1.5 * mm)]
    data: list[list[Any]] = [[_p(c, styles["head"]) for c in block.columns]]
    data.extend([_p(cell, styles["cell"]) for cell in row] for row in block.rows)
    widths = [width / len(block.columns)] * len(block.columns)
    return [_grid(data, widths, header=True), Spacer(1, 2 * mm)]


def render_pdf(doc: Document) -> bytes:
    """The PDF bytes of ``doc``: title, metadata, sections, and a footer with page numbers."""
    styles = _styles(doc.lang)
    out = io.BytesIO()
    template = SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=16 * mm,
        rightMargin=16 * mm,
        topMargin=16 * mm,
        bottomMargin=18 * mm,
        title=doc.title,
        author="medsec",
        lang=doc.lang,
        invariant=1,
    )
    width = template.width
    story: list[Any] = [_p(doc.title, styles["title"])]
    if doc.subtitle:
        story.append(_p(doc.subtitle, styles["subtitle"]))
    story.append(Spacer(1, 3 * mm))
    story.extend(_flowables(doc.meta, styles, width))
    for section in doc.sections:
        story.append(_p(section.heading, styles["h2"]))
        story.append(Spacer(1, 1.5 * mm))
        for block in section.blocks:
            story.extend(_flowables(block, styles, width))
    footer = doc.footer or ""
    regular, _ = _font(doc.lang)

    def on_page(canvas: Any, page_doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(regular, 7.5)
        canvas.setFillColor(colors.HexColor("#555555"))
        text = f"{footer}  {page_doc.page}" if footer else str(page_doc.page)
        canvas.drawRightString(A4[0] - 16 * mm, 10 * mm, text)
        canvas.restoreState()

    template.build(story, onFirstPage=on_page, onLaterPages=on_page)
    return out.getvalue()
