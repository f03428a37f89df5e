"""A maintenance session's entries from the device's own access log, with proofs (RA-2, RA-5).

The device records every login, command, file transfer, refusal and session end in its Merkle
access log and the server cosigns that log's checkpoints at check-in (it is the log's witness).
After a session, and while it runs, the device sends the session's entries with RFC 9162
inclusion proofs against a checkpoint the server has already cosigned, in a request signed with
the device key. The server checks each proof against the root *it* cosigned, so what the service
report lists as "from the device log" is exactly what the device logged, and nobody (not the
engineer, not the gateway, not the server's own database) can change it unseen afterwards.

This module is pure: the signed upload message, its strict parsing, the proof checks, and the
device-side selection of entries. Wire format (JSON)::

    POST /api/v1/remote/devices/{serial}/log-entries
    {"upload": {"serial": S, "session": SID, "checkpoint_size": N, "sent_at": unix,
                "entries": [{"index": i, "entry": {...}, "inclusion_proof": ["<b64>", ...]}, ...]},
     "signature": "<b64 Ed25519 over 'medsec-remote-log-upload-v1\\n' + canonical JSON of upload>"}

Refusal codes (:class:`DeviceLogError` and the server's answers): ``malformed_upload``,
``bad_signature``, ``stale_upload``, ``unknown_session``, ``session_not_for_device``,
``unknown_checkpoint``, ``entry_not_for_session``, ``bad_inclusion_proof``, ``entry_conflict``,
``replayed_upload``.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from medsec.auditlog import merkle
from medsec.crypto.canonical import canonical_json
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import CanonicalEncodingError, ProofError, SignatureError
from medsec.protocol import signed_bytes
from medsec.remote.errors import RemoteSessionError

UPLOAD_CONTEXT = b"medsec-remote-log-upload-v1"
MAX_UPLOAD_ENTRIES = 256
MAX_ENTRY_BYTES = 16 * 1024
MAX_PROOF_LENGTH = 64
MAX_SESSION_ID = 80
SESSION_FIELD = "session"
"""The access-log field that ties an entry to a maintenance session (set by ``device_side``)."""

SESSION_EVENTS = (
    "remote.login",
    "remote.command",
    "remote.file_transfer",
    "remote.port_forward",
    "remote.refused",
    "remote.session_end",
)
_UPLOAD_FIELDS = frozenset({"serial", "session", "checkpoint_size", "sent_at", "entries"})
_ENTRY_FIELDS = frozenset({"index", "entry", "inclusion_proof"})


class DeviceLogError(RemoteSessionError):
    """An upload of device access-log entries is malformed, unsigned or does not prove what it claims."""


@dataclass(frozen=True)
class LoggedEntry:
    """One access-log entry as the device logged it, with its inclusion proof."""

    index: int
    entry: Mapping[str, Any]
    inclusion_proof: tuple[bytes, ...]

    @property
    def leaf(self) -> bytes:
        """The leaf data: the canonical JSON the device's log hashed (RFC 9162 2.1.1)."""
        return canonical_json(self.entry)

    @property
    def session(self) -> Any:
        return self.entry.get(SESSION_FIELD)

    @property
    def event(self) -> str:
        return str(self.entry.get("event", ""))

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "entry": dict(self.entry),
            "inclusion_proof": [base64.b64encode(h).decode("ascii") for h in self.inclusion_proof],
        }


def _int(value: Any, what: str, *, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise DeviceLogError("malformed_upload", f"{what} must be an integer of at least {minimum}")
    return value


def _proof(value: Any, where: str) -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > MAX_PROOF_LENGTH or not all(isinstance(v, str) for v in value):
        raise DeviceLogError("malformed_upload", f"{where}: inclusion_proof must be a list of base64 strings")
    try:
        hashes = tuple(base64.b64decode(v, validate=True) for v in value)
    except (binascii.Error, ValueError) as e:
        raise DeviceLogError("malformed_upload", f"{where}: an inclusion proof element is not base64") from e
    if any(len(h) != merkle.HASH_SIZE for h in hashes):
        raise DeviceLogError("malformed_upload", f"{where}: an inclusion proof element is not a SHA-256 hash")
    return hashes


def parse_entry(item: Any, where: str) -> LoggedEntry:
    """One ``{"index", "entry", "inclusion_proof"}`` object, strictly."""
    if not isinstance(item, dict) or set(item) != _ENTRY_FIELDS:
        raise DeviceLogError("malformed_upload", f"{where}: needs exactly index, entry and inclusion_proof")
    index = _int(item["index"], f"{where}: index")
    entry = item["entry"]
    if not isinstance(entry, dict):
        raise DeviceLogError("malformed_upload", f"{where}: entry must be a JSON object")
    try:
        size = len(canonical_json(entry))
    except CanonicalEncodingError as e:
        raise DeviceLogError("malformed_upload", f"{where}: entry has no canonical JSON form: {e}") from e
    if size > MAX_ENTRY_BYTES:
        raise DeviceLogError("malformed_upload", f"{where}: entry is larger than {MAX_ENTRY_BYTES} bytes")
    return LoggedEntry(index, entry, _proof(item["inclusion_proof"], where))


@dataclass(frozen=True)
class SessionLogUpload:
    """The device's signed statement: these entries of my log belong to this session."""

    serial: str
    session: str
    checkpoint_size: int
    sent_at: int
    entries: tuple[LoggedEntry, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "session": self.session,
            "checkpoint_size": self.checkpoint_size,
            "sent_at": self.sent_at,
            "entries": [e.to_json() for e in self.entries],
        }

    def sign(self, key: SigningKey) -> dict[str, Any]:
        body = self.to_json()
        signature = base64.b64encode(key.sign(signed_bytes(UPLOAD_CONTEXT, body))).decode("ascii")
        return {"upload": body, "signature": signature}

    @classmethod
    def from_json(cls, body: Any) -> SessionLogUpload:
        """Parse an upload strictly: unknown fields, wrong types and unordered entries are refused."""
        if not isinstance(body, dict) or set(body) != _UPLOAD_FIELDS:
            raise DeviceLogError("malformed_upload", f"upload needs exactly the fields {sorted(_UPLOAD_FIELDS)}")
        serial, session = body["serial"], body["session"]
        for name, value in (("serial", serial), ("session", session)):
            if not isinstance(value, str) or not 0 < len(value) <= MAX_SESSION_ID:
                raise DeviceLogError("malformed_upload", f"{name} must be a string of 1 to {MAX_SESSION_ID}")
        size = _int(body["checkpoint_size"], "checkpoint_size", minimum=1)
        sent_at = _int(body["sent_at"], "sent_at")
        items = body["entries"]
        if not isinstance(items, list) or not 0 < len(items) <= MAX_UPLOAD_ENTRIES:
            raise DeviceLogError("malformed_upload", f"entries must list 1 to {MAX_UPLOAD_ENTRIES} entries")
        entries = tuple(parse_entry(item, f"entries[{n}]") for n, item in enumerate(items))
        for before, after in itertools.pairwise(entries):
            if after.index <= before.index:
                raise DeviceLogError("malformed_upload", f"entry {after.index} is out of order")
        if entries[-1].index >= size:
            raise DeviceLogError(
                "malformed_upload", f"entry {entries[-1].index} is not inside the checkpoint of size {size}"
            )
        return cls(serial, session, size, sent_at, entries)

    @classmethod
    def verify(cls, body: Any, signature_b64: Any, key: VerifyKey) -> SessionLogUpload:
        """The upload, if ``signature_b64`` is ``key``'s signature over exactly its canonical form."""
        upload = cls.from_json(body)
        if not isinstance(signature_b64, str):
            raise DeviceLogError("bad_signature", "the upload carries no signature")
        try:
            key.verify(base64.b64decode(signature_b64, validate=True), signed_bytes(UPLOAD_CONTEXT, upload.to_json()))
        except (SignatureError, binascii.Error, ValueError) as e:
            raise DeviceLogError("bad_signature", "the upload is not signed by this device's key") from e
        return upload


def verify_entries(entries: Iterable[LoggedEntry], session: str, checkpoint_size: int, root_hash: bytes) -> None:
    """Raise unless every entry names ``session`` and is included in the tree ``root_hash`` of ``checkpoint_size``.

    The session check comes first: a well-proven entry of another session (or another device's
    log, which carries another session id) is refused as such, not as a bad proof.
    """
    for e in entries:
        if e.session != session:
            raise DeviceLogError(
                "entry_not_for_session", f"entry {e.index} belongs to session {e.session!r}, not {session!r}"
            )
        try:
            merkle.verify_inclusion(merkle.leaf_hash(e.leaf), e.index, checkpoint_size, e.inclusion_proof, root_hash)
        except ProofError as err:
            raise DeviceLogError(
                "bad_inclusion_proof",
                f"entry {e.index} is not in the cosigned checkpoint of size {checkpoint_size}: {err}",
            ) from err


# -- the device side -----------------------------------------------------------------------------------


class SessionLogSource(Protocol):
    """Read access to the device's access log (``medsec.agent.access_log.AccessLog`` fits)."""

    def entry_bytes(self, index: int) -> bytes: ...

    def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...


def session_entries(source: SessionLogSource, start: int, end: int) -> dict[str, list[int]]:
    """Indexes of the entries in ``[start, end)`` that name a session, grouped by session, in log order."""
    groups: dict[str, list[int]] = {}
    for index in range(start, end):
        entry = json.loads(source.entry_bytes(index))
        session = entry.get(SESSION_FIELD) if isinstance(entry, dict) else None
        if isinstance(session, str) and 0 < len(session) <= MAX_SESSION_ID:
            groups.setdefault(session, []).append(index)
    return groups


def build_uploads(
    source: SessionLogSource, serial: str, session: str, indexes: Sequence[int], checkpoint_size: int, now: int
) -> list[SessionLogUpload]:
    """The session's entries with proofs against ``checkpoint_size``, in uploads of at most MAX_UPLOAD_ENTRIES."""
    uploads: list[SessionLogUpload] = []
    for start in range(0, len(indexes), MAX_UPLOAD_ENTRIES):
        entries = tuple(
            LoggedEntry(i, json.loads(source.entry_bytes(i)), tuple(source.inclusion_proof(i, checkpoint_size)))
            for i in indexes[start : start + MAX_UPLOAD_ENTRIES]
        )
        uploads.append(SessionLogUpload(serial, session, checkpoint_size, now, entries))
    return uploads
