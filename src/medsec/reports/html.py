"""Render a :class:`~medsec.reports.document.Document` as one self-contained HTML page (inline CSS, no scripts)."""

from __future__ import annotations

from html import escape

from medsec.reports.document import Block, Document, KeyValues, Paragraph, Table

_CSS = """
body{font-family:system-ui,"Hiragino Sans","Noto Sans CJK JP","Yu Gothic",sans-serif;margin:2rem auto;max-width:60rem;
color:#1a1a1a;line-height:1.5;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;border-bottom:2px solid #1d4f91;margin-top:2rem}
.subtitle{color:#444;margin-top:0}table{border-collapse:collapse;width:100%;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #bbb;padding:.3rem .45rem;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#eef2f8}dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}dt{font-weight:600}
dd{margin:0;overflow-wrap:anywhere}.empty{color:#555;font-style:italic}footer{margin-top:2rem;color:#555;font-size:.85rem}
@media print{body{margin:0;max-width:none}h2{break-after:avoid}}
"""


def _key_values(kv: KeyValues) -> str:
    rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in kv.items)
    return f"<dl>{rows}</dl>"


def _table(t: Table) -> str:
    if not t.rows:
        return f'<p class="empty">{escape(t.empty)}</p>'
    head = "".join(f'<th scope="col">{escape(c)}</th>' for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{escape(block.text)}</p>"
    if isinstance(block, KeyValues):
        return _key_values(block)
    return _table(block)


def render_html(doc: Document) -> str:
    parts = [
        "<!doctype html>",
        f'<html lang="{doc.lang}"><head><meta charset="utf-8">',
        f"<title>{escape(doc.title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{escape(doc.title)}</h1>",
    ]
    if doc.subtitle:
        parts.append(f'<p class="subtitle">{escape(doc.subtitle)}</p>')
    if doc.meta.items:
        parts.append(_key_values(doc.meta))
    for section in doc.sections:
        parts.append(f"<section><h2>{escape(section.heading)}</h2>")
        parts.extend(_block(b) for b in section.blocks)
        parts.append("</section>")
    parts.append("</main>")
    if doc.footer:
        parts.append(f"<footer>{escape(doc.footer)}</footer>")
    parts.append("</body></html>")
    return "\n".join(parts)
