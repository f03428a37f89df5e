"""File access shared by the feed readers: bounded reads, digests, and the skip-or-abort error policy."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from medsec.vulns.errors import FeedRecordError, FeedTransportError

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 512 * 1024 * 1024  # the largest NVD 2.0 page or KEV catalog is far below this
MAX_RECORD_BYTES = 32 * 1024 * 1024  # one OSV record; a bigger zip member is refused, not inflated


def read_bounded(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise FeedTransportError(f"{path}: {size} bytes exceeds the limit of {limit}")
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise FeedTransportError(f"{path}: cannot read: {e.strerror or e}") from e
    if len(data) > limit:
        raise FeedTransportError(f"{path}: grew beyond the limit of {limit} bytes while reading")
    return data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:
        raise FeedTransportError(f"{path}: cannot read: {e.strerror or e}") from e
    return digest.hexdigest()


def handle_record_error(error: FeedRecordError, errors: list[FeedRecordError] | None) -> None:
    """Abort (raise) when the caller gave no list; otherwise skip the record and keep its error."""
    if errors is None:
        raise error
    logger.warning("skipping malformed feed record: %s", error.diagnostics())
    errors.append(error)
