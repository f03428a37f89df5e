"""``read_sbom``: detect the format of a file and read it into an :class:`Sbom`.

JSON is told apart by its keys (``bomFormat`` / ``spdxVersion``), XML by its root element.
The SHA-256 of the bytes read is recorded, so a stored SBOM can be tied to the file it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from medsec.sbom import cyclonedx, spdx
from medsec.sbom._collect import MANUFACTURER
from medsec.sbom.errors import MalformedSbomError, SbomSourceError, UnsupportedSbomError
from medsec.sbom.model import Sbom

_SNIFF = 4096
_UTF8_BOM = b"\xef\xbb\xbf"


class _HashingReader:
    """Hashes what the XML parser reads, so the file is read once and never held whole."""

    def __init__(self, stream: IO[bytes], first: bytes) -> None:
        self._stream = stream
        self._pending = first
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
        else:
            data = self._stream.read(size)
        self.sha256.update(data)
        return data


def _decode_json(data: bytes, source: str) -> Any:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MalformedSbomError(f"not UTF-8 at byte {e.start}", source=source) from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MalformedSbomError(f"not valid JSON: {e.msg}", source=source, line=e.lineno, column=e.colno) from e


def parse_json_document(doc: object, *, source: str) -> Sbom:
    """Read an already-parsed JSON SBOM (CycloneDX or SPDX) — for SBOMs that arrive over HTTP."""
    if not isinstance(doc, dict):
        raise MalformedSbomError("an SBOM must be a JSON object", source=source, field="(document)")
    if "bomFormat" in doc:
        return cyclonedx.read_json(doc, source=source)
    if "spdxVersion" in doc:
        return spdx.read_json(doc, source=source)
    raise UnsupportedSbomError(
        "neither CycloneDX (bomFormat) nor SPDX (spdxVersion) JSON", source=source, field="bomFormat"
    )


def read_sbom(path: str | os.PathLike[str], *, supplier: str | None = None) -> Sbom:
    """Read a CycloneDX (1.2–1.6, JSON or XML) or SPDX 2.3 JSON file.

    ``supplier`` names the supplier an SBOM came from; without it the SBOM is the manufacturer's own
    (附属書A: supplier SBOMs are kept apart). Component faults are recorded as issues; a document
    that cannot be read raises :class:`MalformedSbomError` naming file, line and field.
    """
    path = Path(path)
    source = str(path)
    try:
        with path.open("rb") as stream:
            head = stream.read(_SNIFF)
            first = head.removeprefix(_UTF8_BOM).lstrip()[:1]
            if first in (b"{", b"["):
                data = head + stream.read()
                sha256 = hashlib.sha256(data).hexdigest()
                sbom = parse_json_document(_decode_json(data, source), source=source)
            elif first == b"<":
                hashing = _HashingReader(stream, head)
                sbom = cyclonedx.read_xml(hashing, source=source)  # type: ignore[arg-type]
                while hashing.read(1 << 16):
                    pass
                sha256 = hashing.sha256.hexdigest()
            elif head.lstrip().startswith(b"SPDXVersion:"):
                raise UnsupportedSbomError("SPDX tag-value is not read; use SPDX JSON", source=source, line=1)
            elif not head.strip():
                raise MalformedSbomError("empty file", source=source)
            else:
                raise MalformedSbomError("neither JSON nor XML", source=source, line=1, column=1)
    except OSError as e:
        raise SbomSourceError(f"{source}: cannot read: {e.strerror or e}") from e
    provenance = replace(
        sbom.provenance,
        supplier=supplier or MANUFACTURER,
        from_supplier=supplier is not None,
        sha256=sha256,
        source_name=path.name,
    )
    return replace(sbom, provenance=provenance)
