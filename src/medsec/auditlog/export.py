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

A bundle may also carry entries of *other* logs (a device's access log), each
proven against one of that log's checkpoints (an optional member that older
verifiers ignore, so every v1 export stays valid)::

      "attached_logs": [{"origin": "<that log's origin>", "log_key": "<its verifier key>",
                         "match": {"<field>": <value>, ...},                       (optional)
                         "checkpoints": ["<signed note>", ...],
                         "entries": [{"index": i, "entry": ..., "inclusion_proof": [...],
                                      "checkpoint_size": n}, ...]}]

An attached log's key is trusted only if the verifier is given it, or if a
verified entry of the main export vouches for it: an entry whose ``details``
name the same ``log_origin``, ``log_key``, ``checkpoint_size`` and
``root_hash`` (hex), which is how the server records that it checked a device's
upload against a checkpoint it cosigned. Without a given key, every attached
checkpoint must be vouched for that way. ``match`` fields must hold in every
attached entry (the service report uses ``{"session": id}``).
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
ATTACHED_LOGS = "attached_logs"
ATTESTATION_FIELDS = ("log_origin", "log_key", "checkpoint_size", "root_hash")


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


# -- entries of other logs attached to an export -------------------------------------------------------


@dataclass(frozen=True)
class AttachedLogSummary:
    """What a verified attached log proves."""

    origin: str
    log_key: str
    key_source: str
    """``given`` (the verifier was handed the key) or ``vouched`` (a verified main entry names it)."""
    checkpoints: tuple[Checkpoint, ...]
    entries: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class BundleSummary:
    """A verified export and the verified logs attached to it."""

    export: ExportSummary
    attached: tuple[AttachedLogSummary, ...]


_Vouched = dict[tuple[str, str], set[tuple[int, str]]]


def _vouched(summary: ExportSummary) -> _Vouched:
    """``(origin, key) -> {(size, root hex)}`` named by the verified entries of the main export."""
    out: _Vouched = {}
    for _, leaf in summary.entries:
        try:
            value = json.loads(leaf)
        except ValueError:
            continue
        details = value.get("details") if isinstance(value, dict) else None
        if not isinstance(details, dict) or not all(k in details for k in ATTESTATION_FIELDS):
            continue
        size = details["checkpoint_size"]
        if isinstance(size, int) and not isinstance(size, bool):
            key = (str(details["log_origin"]), str(details["log_key"]))
            out.setdefault(key, set()).add((size, str(details["root_hash"])))
    return out


def _attached_checkpoints(
    log: Mapping[str, Any], where: str, verifier: NoteVerifier, origin: str, vouched: set[tuple[int, str]] | None
) -> dict[int, Checkpoint]:
    notes = _field(log, "checkpoints", list, where)
    if not notes:
        raise ExportError(f"{where}: lists no checkpoints")
    by_size: dict[int, Checkpoint] = {}
    for n, note in enumerate(notes):
        if not isinstance(note, str):
            raise ExportError(f"{where}: checkpoints[{n}] is not a signed note")
        try:
            cp = verify_checkpoint(note, verifier, origin=origin)
        except CheckpointError as e:
            raise CheckpointError(f"{where}: checkpoint {n} does not verify: {e}") from e
        if vouched is not None and (cp.size, cp.root_hash.hex()) not in vouched:
            raise CheckpointError(f"{where}: the checkpoint of size {cp.size} is not vouched for by a verified entry")
        if by_size.setdefault(cp.size, cp) != cp:
            raise CheckpointError(f"{where}: two different roots for size {cp.size}: the log was forked")
    return by_size


def _check_match(match: Mapping[str, Any], leaf: bytes, where: str) -> None:
    if not match:
        return
    try:
        value = json.loads(leaf)
    except ValueError as e:
        raise ExportError(f"{where}: is not a JSON object, so it cannot match {dict(match)}") from e
    for name, expected in match.items():
        actual = value.get(name) if isinstance(value, dict) else None
        if actual != expected:
            raise ExportError(f"{where}: {name} is {actual!r}, not {expected!r}")


def verify_attached_log(
    log: Any, vouched: _Vouched, trusted: Mapping[str, NoteVerifier], position: int = 0
) -> AttachedLogSummary:
    """Verify one attached log: its key, its checkpoints, ``match`` and every inclusion proof."""
    where = f"attached log {position}"
    if not isinstance(log, Mapping):
        raise ExportError(f"{where}: not a JSON object")
    origin = _field(log, "origin", str, where)
    log_key = _field(log, "log_key", str, where)
    where = f"attached log {origin}"
    given = trusted.get(origin)
    if given is not None:
        if given.vkey != log_key:
            raise CheckpointError(f"{where}: the bundle names key {log_key!r}, not the one given")
        verifier, vouched_roots, source = given, None, "given"
    else:
        if (origin, log_key) not in vouched:
            raise ExportError(f"{where}: its key is neither given nor vouched for by a verified entry")
        verifier, vouched_roots, source = NoteVerifier.from_vkey(log_key), vouched[(origin, log_key)], "vouched"
    checkpoints = _attached_checkpoints(log, where, verifier, origin, vouched_roots)
    match = log.get("match") or {}
    if not isinstance(match, Mapping):
        raise ExportError(f"{where}: match is not a JSON object")
    items = _field(log, "entries", list, where)
    if len(items) > MAX_EXPORT_ENTRIES:
        raise ExportError(f"{where}: lists {len(items)} entries, more than {MAX_EXPORT_ENTRIES}")
    verified: list[tuple[int, bytes]] = []
    last = -1
    for n, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ExportError(f"{where} entries[{n}]: not a JSON object")
        i = _field(item, "index", int, f"{where} entries[{n}]")
        entry_where = f"{where} entry {i}"
        if i <= last:
            raise ExportError(f"{entry_where}: out of order")
        last = i
        size = _field(item, "checkpoint_size", int, entry_where)
        cp = checkpoints.get(size)
        if cp is None:
            raise ExportError(f"{entry_where}: no checkpoint of size {size} in the bundle")
        leaf = _leaf_data(item, entry_where)
        proof = _hashes(item.get("inclusion_proof"), entry_where)
        try:
            merkle.verify_inclusion(merkle.leaf_hash(leaf), i, cp.size, proof, cp.root_hash)
        except ProofError as e:
            raise ProofError(f"{entry_where}: not included in the checkpoint of size {cp.size}: {e}") from e
        _check_match(match, leaf, entry_where)
        verified.append((i, leaf))
    return AttachedLogSummary(
        origin=origin,
        log_key=log_key,
        key_source=source,
        checkpoints=tuple(checkpoints[k] for k in sorted(checkpoints)),
        entries=tuple(verified),
    )


def verify_bundle(
    data: Mapping[str, Any],
    log_vkey: str | NoteVerifier,
    witness_vkeys: Iterable[str | NoteVerifier] = (),
    *,
    origin: str | None = None,
    attached_keys: Iterable[str | NoteVerifier] = (),
) -> BundleSummary:
    """:func:`verify_export`, then every attached log (none in a plain export).

    ``attached_keys`` are verifier keys of attached logs the caller trusts directly (a device's
    log key, named by its origin); the others must be vouched for by the verified main entries.
    """
    summary = verify_export(data, log_vkey, witness_vkeys, origin=origin)
    logs = data.get(ATTACHED_LOGS)
    if logs is None:
        return BundleSummary(summary, ())
    if not isinstance(logs, list):
        raise ExportError(f"{ATTACHED_LOGS}: not a list")
    trusted = {}
    for key in attached_keys:
        verifier = key if isinstance(key, NoteVerifier) else NoteVerifier.from_vkey(key)
        trusted[verifier.name] = verifier
    vouched = _vouched(summary)
    attached = tuple(verify_attached_log(log, vouched, trusted, n) for n, log in enumerate(logs))
    return BundleSummary(summary, attached)
