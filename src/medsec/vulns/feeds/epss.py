"""FIRST EPSS daily CSV (optionally gzipped), read line by line.

The file starts with ``#model_version:<v>,score_date:<timestamp>`` and then the header ``cve,epss,percentile``.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO

from medsec.vulns.errors import FeedFormatError, FeedRecordError, FeedTransportError
from medsec.vulns.feeds.source_files import handle_record_error, sha256_file
from medsec.vulns.model import EpssScore, EpssSnapshot, Source


def _metadata(line: str) -> dict[str, str]:
    out = {}
    for part in line.lstrip("#").strip().split(","):
        key, sep, value = part.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _probability(text: str, name: str, file: str, cve: str, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FeedRecordError(file, cve, field, f"is not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise FeedRecordError(file, cve, field, f"{name} {value} is outside 0..1")
    return value


def iter_epss_scores(
    stream: IO[str], *, file: str, errors: list[FeedRecordError] | None = None
) -> tuple[dict[str, str], Iterator[EpssScore]]:
    """Header metadata and a lazy iterator over the scores of an open text stream."""
    first = stream.readline()
    meta = _metadata(first) if first.startswith("#") else {}
    header_line = stream.readline() if first.startswith("#") else first
    header = [h.strip() for h in next(csv.reader([header_line]), [])]
    if header[:3] != ["cve", "epss", "percentile"]:
        raise FeedFormatError(file, f"expected header cve,epss,percentile, found {header_line.strip()!r}")

    def scores() -> Iterator[EpssScore]:
        for line_no, row in enumerate(csv.reader(stream), start=3 if first.startswith("#") else 2):
            if not row:
                continue
            try:
                if len(row) < 3 or not row[0].startswith("CVE-"):
                    raise FeedRecordError(
                        file, row[0] if row else None, f"line {line_no}", "is not cve,epss,percentile"
                    )
                yield EpssScore(
                    cve_id=row[0],
                    probability=_probability(row[1], "epss", file, row[0], f"line {line_no} epss"),
                    percentile=_probability(row[2], "percentile", file, row[0], f"line {line_no} percentile"),
                )
            except FeedRecordError as e:
                handle_record_error(e, errors)

    return meta, scores()


def read_epss(
    path: Path, *, errors: list[FeedRecordError] | None = None, fetched: datetime | None = None
) -> EpssSnapshot:
    """A daily EPSS file (``.csv`` or ``.csv.gz``); the rows are streamed, never read into one string."""
    digest = sha256_file(path)
    try:
        with (
            gzip.open(path, "rt", encoding="utf-8", newline="")
            if path.suffix == ".gz"
            else path.open(encoding="utf-8", newline="")
        ) as text:
            meta, scores = iter_epss_scores(text, file=path.name, errors=errors)
            collected = tuple(scores)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise FeedTransportError(f"{path}: cannot read: {e}") from e
    return EpssSnapshot(
        model_version=meta.get("model_version"),
        score_date=meta.get("score_date"),
        scores=collected,
        source=Source("epss", str(path), fetched, digest),
    )
