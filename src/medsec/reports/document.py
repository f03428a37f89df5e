"""The format-neutral report model: a title, metadata, and sections of paragraphs, key-value lists and tables.

Every value is already a display string in the report's language; renderers only lay it out.
:meth:`Document.to_json` gives a stable form for hashing and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LANGUAGES = ("en", "ja")


@dataclass(frozen=True)
class Paragraph:
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"paragraph": self.text}


@dataclass(frozen=True)
class KeyValues:
    items: tuple[tuple[str, str], ...]

    def to_json(self) -> dict[str, Any]:
        return {"key_values": [list(kv) for kv in self.items]}


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    empty: str = ""  # shown instead of the table when there are no rows

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"table row {i} has {len(row)} cells for {len(self.columns)} columns")

    def to_json(self) -> dict[str, Any]:
        return {"table": {"columns": list(self.columns), "rows": [list(r) for r in self.rows], "empty": self.empty}}


Block = Paragraph | KeyValues | Table


@dataclass(frozen=True)
class Section:
    heading: str
    blocks: tuple[Block, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"heading": self.heading, "blocks": [b.to_json() for b in self.blocks]}


@dataclass(frozen=True)
class Document:
    title: str
    lang: str
    sections: tuple[Section, ...]
    subtitle: str | None = None
    meta: KeyValues = field(default_factory=lambda: KeyValues(()))
    footer: str | None = None

    def __post_init__(self) -> None:
        if self.lang not in LANGUAGES:
            raise ValueError(f"report language must be one of {', '.join(LANGUAGES)}, not {self.lang!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "subtitle": self.subtitle,
            "lang": self.lang,
            "meta": self.meta.to_json()["key_values"],
            "sections": [s.to_json() for s in self.sections],
            "footer": self.footer,
        }
