"""Offline-verifiable exports of a log range.

An export is one JSON document::

    {
      "format": "medsec-auditlog-export/v1",
      "origin": "<log origin>",
      "log_vkey": "<the log's verifier key, for information only>",
      "checkpoint": "<signed checkpoint note, with any witness cosignatures>",
      "entries": [{"index": i, "entry": <JSON value> | "entry_b64": "<base64>",
                   "inclusion_proof": ["<base64 hash>", ...]}, ...],
      "consistency": {"checkpoint": "<an earlier signed note>", "proof": ["<base64 hash>", ...]}   (optional)
    }

Each leaf is the canonical JSON of its entry (medsec.crypto.canonical_json);
``entry_b64`` carries the exact bytes when they are not canonical JSON. Every
inclusion proof is against the export's checkpoint (RFC 9162 2.1.3). The
verifier trusts only the keys it is given, never the ones in the document.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from medsec.auditlog import merkle
from medsec.auditlog.checkpoint import Checkpoint, verify_checkpoint
from medsec.auditlog.note import NoteVerifier
from medsec.auditlog.witness import verify_cosignature
from medsec.crypto.canonical import canonical_json
from medsec.errors import CanonicalEncodingError, CheckpointError, ExportError, ProofError

EXPORT_FORMAT = "medsec-auditlog-export/v1"
MAX_EXPORT_ENTRIES = 1_000_000


@dataclass(frozen=True)
class ExportSummary:
    """What a verified export proves."""

    origin: str
    checkpoint: Checkpoint
    entries: tuple[tuple[int, bytes], ...]
    """``(index, leaf data)`` of every exported entry, each proven included in ``checkpoint``."""
    witnesses: tuple[str, ...]
    """Names of the witnesses whose cosignatures verified."""
    cosigned_at: tuple[int, ...]
    previous: Checkpoint | None
    """The earlier checkpoint proven consistent with ``checkpoint``, if the export carried one."""


def _b64(values: Iterable[bytes]) -> list[str]:
    return [base64.b64encode(v).decode("ascii") for v in values]


def _entry_field(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
        if canonical_json(value) == data:
            return {"entry": value}
    except (ValueError, CanonicalEncodingError):
        pass
    return {"entry_b64": base64.b64encode(data).decode("ascii")}


def build_export(
    *,
    reader: merkle.NodeReader,
    log_vkey: str,
    checkpoint_note: str,
    entries: Iterable[tuple[int, bytes]],
    origin: str | None = None,
    previous_checkpoint_note: str | None = None,
) -> dict[str, Any]:
    """Build the export of ``entries`` (``(index, leaf data)`` pairs) against ``checkpoint_note``.

    The entries may be any increasing selection of indexes below the checkpoint's
    size (a tenant-filtered view is fine: every entry carries its own proof).
    ``reader`` serves the log's tree, from any store (files, SQL). The tree must
    match the checkpoint; the previous checkpoint, if given, must not be newer.
    """
    cp = verify_checkpoint(checkpoint_note, log_vkey, origin=origin)
    if merkle.root(reader, cp.size) != cp.root_hash:
        raise ExportError(f"the tree does not match the checkpoint of size {cp.size}")
    items = []
    last = -1
    for i, data in entries:
        if not last < i < cp.size:
            raise ExportError(f"entry {i} is out of order or not inside the checkpoint of size {cp.size}")
        last = i
        if merkle.leaf_hash(data) != reader.node(0, i):
            raise ExportError(f"entry {i} does not match its leaf hash in the tree")
        proof = _b64(merkle.inclusion_proof(reader, i, cp.size))
        items.append({"index": i, **_entry_field(data), "inclusion_proof": proof})
    doc: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "origin": cp.origin,
        "log_vkey": log_vkey,
        "checkpoint": checkpoint_note,
        "entries": items,
    }
    if previous_checkpoint_note is not None:
        prev = verify_checkpoint(previous_checkpoint_note, log_vkey, origin=cp.origin)
        if prev.size > cp.size:
            raise ExportError(f"the previous checkpoint (size {prev.size}) is newer than the export's ({cp.size})")
        doc["consistency"] = {
            "checkpoint": previous_checkpoint_note,
            "proof": _b64(merkle.consistency_proof(reader, prev.size, cp.size)),
        }
    return doc


def _field(data: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ExportError(f"{where}: field {key!r} is missing or not a {kind.__name__}")
    return value


def _hashes(value: Any, where: str) -> list[bytes]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ExportError(f"{where}: a proof must be a list of base64 strings")
    try:
        return [base64.b64decode(v, validate=True) for v in value]
    except (binascii.Error, ValueError) as e:
        raise ExportError(f"{where}: a proof element is not base64") from e


def _leaf_data(item: Mapping[str, Any], where: str) -> bytes:
    if ("entry" in item) == ("entry_b64" in item):
        raise ExportError(f"{where}: needs exactly one of 'entry' and 'entry_b64'")
    if "entry_b64" in item:
        try:
            return base64.b64decode(_field(item, "entry_b64", str, where), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ExportError(f"{where}: entry_b64 is not base64") from e
    try:
        return canonical_json(item["entry"])
    except CanonicalEncodingError as e:
        raise ExportError(f"{where}: entry has no canonical JSON form: {e}") from e


def verify_export(
    data: Mapping[str, Any],
    log_vkey: str | NoteVerifier,
    witness_vkeys: Iterable[str | NoteVerifier] = (),
    *,
    origin: str | None = None,
) -> ExportSummary:
    """Verify an export offline against trusted keys and return what it proves.

    Every witness in ``witness_vkeys`` must have cosigned the checkpoint. The
    origin must be ``origin`` or, by default, the log key's name. Raises
    ExportError (malformed document), CheckpointError (signatures) or ProofError
    (proofs), naming the entry index that failed.
    """
    if not isinstance(data, Mapping):
        raise ExportError("export is not a JSON object")
    if data.get("format") != EXPORT_FORMAT:
        raise ExportError(f"export format is not {EXPORT_FORMAT}")
    note = _field(data, "checkpoint", str, "export")
    cp = verify_checkpoint(note, log_vkey, origin=origin)
    if _field(data, "origin", str, "export") != cp.origin:
        raise ExportError(f"export origin {data['origin']!r} is not the checkpoint's {cp.origin!r}")
    witnesses: list[str] = []
    times: list[int] = []
    for wkey in witness_vkeys:
        verifier = wkey if isinstance(wkey, NoteVerifier) else NoteVerifier.from_vkey(wkey)
        times.append(verify_cosignature(note, verifier))
        witnesses.append(verifier.name)
    items = _field(data, "entries", list, "export")
    if len(items) > MAX_EXPORT_ENTRIES:
        raise ExportError(f"export lists {len(items)} entries, more than {MAX_EXPORT_ENTRIES}")
    verified: list[tuple[int, bytes]] = []
    last = -1
    for position, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ExportError(f"entries[{position}]: not a JSON object")
        i = _field(item, "index", int, f"entries[{position}]")
        where = f"entry {i}"
        if not last < i < cp.size:
            raise ExportError(f"{where}: out of order or not inside the checkpoint of size {cp.size}")
        last = i
        leaf = _leaf_data(item, where)
        proof = _hashes(item.get("inclusion_proof"), where)
        try:
            merkle.verify_inclusion(merkle.leaf_hash(leaf), i, cp.size, proof, cp.root_hash)
        except ProofError as e:
            raise ProofError(f"{where}: not included in the checkpoint of size {cp.size}: {e}") from e
        verified.append((i, leaf))
    previous = None
    consistency = data.get("consistency")
    if consistency is not None:
        if not isinstance(consistency, Mapping):
            raise ExportError("consistency: not a JSON object")
        try:
            previous = verify_checkpoint(
                _field(consistency, "checkpoint", str, "consistency"), log_vkey, origin=cp.origin
            )
        except CheckpointError as e:
            raise CheckpointError(f"consistency: the earlier checkpoint does not verify: {e}") from e
        proof = _hashes(consistency.get("proof"), "consistency")
        if previous.size > cp.size:
            raise ProofError(f"consistency: the earlier checkpoint (size {previous.size}) is larger than {cp.size}")
        if previous.size == 0:
            if proof:
                raise ProofError("consistency: a proof from the empty tree must be empty")
        else:
            try:
                merkle.verify_consistency(previous.size, cp.size, proof, previous.root_hash, cp.root_hash)
            except ProofError as e:
                raise ProofError(f"consistency: size {previous.size} -> {cp.size}: {e}") from e
    return ExportSummary(
        origin=cp.origin,
        checkpoint=cp,
        entries=tuple(verified),
        witnesses=tuple(witnesses),
        cosigned_at=tuple(times),
        previous=previous,
    )
