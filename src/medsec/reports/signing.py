"""Signing and offline verification of security status reports (RA-6).

A report is three files made from one document (PDF, HTML, canonical JSON). The server signs a
small statement about them in a DSSE envelope (payload type :data:`PAYLOAD_TYPE`) with its
report-signing key: the SHA-256 of each file, the hospital, who asked, when, and the report's own
entry in the server audit log with the inclusion proof of that entry under a signed checkpoint.

:func:`verify_report` needs only the file, the envelope and the report key's public half; given the
audit log's verifier key it also checks the checkpoint signature and the inclusion proof, so a
hospital can show a regulator, offline, that the report was logged. Every check raises; nothing
returns a bool.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsec.auditlog import merkle
from medsec.auditlog.checkpoint import verify_checkpoint
from medsec.crypto.envelope import open_envelope, seal
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import AuditLogError, CryptoError, KeyFileError, SignatureError

PAYLOAD_TYPE = "application/vnd.medsec.status-report+json"
STATEMENT_TYPE = "medsec-status-report/v1"
REPORT_KEY_FILE = "report-signing.key"
FILE_KINDS = ("pdf", "html", "json")


class ReportVerificationError(SignatureError):
    """A report file, its envelope or its audit-log proof does not match what the server signed."""


class ReportFileMismatch(ReportVerificationError):
    """The file's SHA-256 differs from the one in the signed statement: it was altered or is another report."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the key ---------------------------------------------------------------------------------------------


def report_key_path(keys_dir: Path) -> Path:
    return keys_dir / REPORT_KEY_FILE


def ensure_report_key(keys_dir: Path) -> SigningKey:
    """The server's report-signing key, created beside its other keys on first use (mode 0600).

    Creation never replaces a key another process created at the same moment: the new key is
    written to a temporary file and linked into place, which fails if the name already exists.
    """
    path = report_key_path(keys_dir)
    if not path.exists():
        _create_exclusively(path, SigningKey.generate())
    return SigningKey.load(path)


def _create_exclusively(path: Path, key: SigningKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(key.to_pem())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return  # another process won; its key is the one
        except OSError as e:
            raise KeyFileError(f"cannot create {path}: {e.strerror}") from e
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        os.unlink(tmp)


# -- the statement -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditInclusion:
    """The report's own audit entry and its inclusion proof under a signed checkpoint."""

    origin: str
    index: int
    entry: bytes  # the entry's canonical JSON, the Merkle leaf data
    checkpoint: str  # signed note
    size: int
    proof: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "index": self.index,
            "entry": base64.b64encode(self.entry).decode("ascii"),
            "checkpoint": self.checkpoint,
            "size": self.size,
            "proof": [p.hex() for p in self.proof],
        }


def statement(
    *,
    report_id: str,
    hospital: Mapping[str, str],
    generated_by: str,
    generated_at: str,
    lang: str,
    files: Mapping[str, bytes],
    content_sha256: str,
    audit: AuditInclusion,
) -> dict[str, Any]:
    """The signed statement about one report (canonical-JSON safe)."""
    return {
        "_type": STATEMENT_TYPE,
        "report_id": report_id,
        "hospital": dict(hospital),
        "generated_by": generated_by,
        "generated_at": generated_at,
        "lang": lang,
        "files": {kind: {"sha256": sha256_hex(files[kind]), "size": len(files[kind])} for kind in FILE_KINDS},
        "content_sha256": content_sha256,
        "audit": audit.to_json(),
    }


def sign_statement(document: Mapping[str, Any], key: SigningKey) -> bytes:
    return seal(document, PAYLOAD_TYPE, [key])


# -- verification ------------------------------------------------------------------------------------------


def open_statement(envelope: bytes, report_key: VerifyKey) -> dict[str, Any]:
    """The statement, after checking the envelope's type and its signature by ``report_key``."""
    document = open_envelope(envelope, PAYLOAD_TYPE, [report_key])
    if document.get("_type") != STATEMENT_TYPE:
        raise ReportVerificationError(f"the envelope holds {document.get('_type')!r}, not a status report statement")
    return document


def kind_of(path: Path) -> str:
    """The file kind from its name (``.pdf``, ``.html``, ``.json``)."""
    kind = path.suffix.lower().lstrip(".")
    if kind == "htm":
        kind = "html"
    if kind not in FILE_KINDS:
        raise ReportVerificationError(f"{path.name}: a report file ends in .pdf, .html or .json")
    return kind


def check_file(document: Mapping[str, Any], kind: str, data: bytes) -> None:
    """Raise :class:`ReportFileMismatch` unless ``data`` is the ``kind`` file the statement names."""
    try:
        expected = document["files"][kind]["sha256"]
    except (KeyError, TypeError) as e:
        raise ReportVerificationError(f"the signed statement has no {kind} file") from e
    got = sha256_hex(data)
    if got != expected:
        raise ReportFileMismatch(
            f"the {kind.upper()} file does not match the signed report {document.get('report_id')}: "
            f"its SHA-256 is {got}, the signature covers {expected}"
        )


def check_audit_inclusion(document: Mapping[str, Any], log_vkey: str) -> int:
    """Check the checkpoint's signature by the audit log key and the entry's inclusion proof.

    Returns the entry's index. The entry must be the ``report.status_generated`` entry of this report.
    """
    try:
        audit = document["audit"]
        entry = base64.b64decode(audit["entry"], validate=True)
        proof = [bytes.fromhex(p) for p in audit["proof"]]
        index, size = int(audit["index"]), int(audit["size"])
        note = str(audit["checkpoint"])
    except (KeyError, TypeError, ValueError, binascii.Error) as e:
        raise ReportVerificationError(f"the statement's audit part is malformed: {e}") from e
    try:
        checkpoint = verify_checkpoint(note, log_vkey, origin=str(audit.get("origin")))
    except (AuditLogError, CryptoError) as e:
        raise ReportVerificationError(f"the audit checkpoint does not verify: {e.diagnostics()}") from e
    if checkpoint.size != size:
        raise ReportVerificationError(f"the proof is for size {size}, the checkpoint has {checkpoint.size}")
    try:
        merkle.verify_inclusion(merkle.leaf_hash(entry), index, size, proof, checkpoint.root_hash)
    except AuditLogError as e:
        raise ReportVerificationError(f"the report's audit entry is not in the log: {e.diagnostics()}") from e
    body = json.loads(entry)
    details = body.get("details", {}) if isinstance(body, dict) else {}
    if body.get("type") != "report.status_generated" or details.get("report_id") != document.get("report_id"):
        raise ReportVerificationError("the logged entry is not this report's report.status_generated entry")
    if details.get("content_sha256") != document.get("content_sha256"):
        raise ReportVerificationError("the logged content hash differs from the signed one")
    return index


def verify_report(
    data: bytes, kind: str, envelope: bytes, report_key: VerifyKey, *, log_vkey: str | None = None
) -> dict[str, Any]:
    """Verify a report file offline and return the signed statement."""
    document = open_statement(envelope, report_key)
    check_file(document, kind, data)
    if log_vkey is not None:
        check_audit_inclusion(document, log_vkey)
    return document
