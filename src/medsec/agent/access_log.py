"""The device's tamper-evident access log (RA-2), a thin layer over :mod:`medsec.auditlog`.

Entries are small JSON objects ``{"event": "agent.…", "at": unix_seconds, …}``.
The log is signed with the device key under the origin ``medsec-device/<serial>``;
the server cosigns its checkpoints at check-in, so a later rewrite of the log
on the device shows up as a fork.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medsec.auditlog import FileLog, NoteSigner
from medsec.auditlog.checkpoint import Checkpoint, verify_checkpoint
from medsec.auditlog.note import NoteVerifier, parse_note
from medsec.auditlog.store import CHECKPOINT_FILE
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import AgentError, AuditLogError, CheckpointError


class AccessLog:
    def __init__(self, directory: Path, serial: str, key: SigningKey, clock: Callable[[], float] = time.time) -> None:
        self.origin = f"medsec-device/{serial}"
        self._clock = clock
        self._signer = NoteSigner(self.origin, key)
        self._log = FileLog(directory, self.origin, self._signer)

    @property
    def size(self) -> int:
        return self._log.size

    def record(self, event: str, /, **fields: Any) -> int:
        """Append one event durably, refresh the signed checkpoint, and return the event's index.

        Signing after every event keeps ``checkpoint.note`` current, so cutting
        entries off the end is caught when the log is next opened, and a status
        reader sees the real size without opening (and locking) the log.
        """
        index = self._log.append({"event": event, "at": int(self._clock()), **fields})
        self._log.checkpoint()
        return index

    def checkpoint(self) -> str:
        """The signed checkpoint note for the current size."""
        return self._log.checkpoint()

    def consistency_proof_b64(self, old_size: int, new_size: int) -> tuple[str, ...]:
        """The RFC 9162 consistency proof from ``old_size`` to ``new_size``, as base64 strings.

        Empty when there is nothing to prove: no earlier cosigned size, or no growth.
        """
        if old_size <= 0 or old_size >= new_size:
            return ()
        return tuple(base64.b64encode(h).decode("ascii") for h in self._log.consistency_proof(old_size, new_size))

    def check_own_checkpoint(self, note: str) -> int:
        """Return the size of ``note`` if it is a checkpoint this log signed and still matches; raise otherwise."""
        cp = verify_checkpoint(note, self._signer.verifier)
        if cp.size > self._log.size or self._log.root(cp.size) != cp.root_hash:
            raise CheckpointError(f"checkpoint of size {cp.size} does not match this device's access log")
        return cp.size

    def keep_cosigned(self, note: str) -> None:
        """Keep a verified cosigned checkpoint next to the log, if it is still the latest one."""
        self._log.store_cosigned_checkpoint(note)

    def entries(self) -> list[dict[str, Any]]:
        return [self._log.entry(i) for i in range(self._log.size)]

    def entry_bytes(self, index: int) -> bytes:
        """The exact leaf data of entry ``index`` (canonical JSON), checked against the tree."""
        return self._log.entry_bytes(index)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The RFC 9162 inclusion proof of entry ``index`` in the tree of ``size`` entries.

        With ``size`` the size of a checkpoint the server cosigned, the server can check the
        entry against the root it cosigned itself (session entries in the service report).
        """
        return self._log.inclusion_proof(index, size)

    def verify(self) -> None:
        self._log.verify()

    def close(self) -> None:
        self._log.close()


def checkpoint_size(directory: Path) -> int:
    """The size in the log's latest checkpoint note, read without opening the log (0 if none).

    Informational only: the signature is not checked here.
    """
    try:
        note = (directory / CHECKPOINT_FILE).read_text("utf-8")
    except FileNotFoundError:
        return 0
    except (OSError, UnicodeDecodeError) as e:
        raise AgentError(f"cannot read the access log checkpoint in {directory}: {e}") from e
    try:
        text, _ = parse_note(note)
        return Checkpoint.parse(text).size
    except AuditLogError as e:
        raise AgentError(f"the access log checkpoint in {directory} is damaged: {e}") from e


def parse_verifier_key(vkey: str) -> NoteVerifier:
    """Parse a C2SP verifier key ``name+keyid+base64(type||key)`` and check its key ID.

    The key name cannot hold '+', but the base64 part can, so only the first two
    '+' separate fields.
    """
    name, _, rest = vkey.partition("+")
    kid_hex, sep, key_b64 = rest.partition("+")
    if not sep or not re.fullmatch(r"[0-9a-f]{8}", kid_hex):
        raise CheckpointError("verifier key must be name+keyid+key with an 8-digit hex key ID")
    try:
        raw = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise CheckpointError("verifier key is not valid base64") from e
    if len(raw) != 33:
        raise CheckpointError("verifier key must be a type byte and a 32-byte Ed25519 key")
    verifier = NoteVerifier(name, raw[0], VerifyKey(raw[1:]))
    if verifier.key_id.hex() != kid_hex:
        raise CheckpointError(f"verifier key ID {kid_hex} does not match the key")
    return verifier
