"""A checkpoint witness (https://c2sp.org/tlog-cosignature, cosignature/v1).

A witness remembers, per log origin, the largest tree it has cosigned. It
cosigns a newer checkpoint only if the log signed it and a consistency proof
shows the old tree is a prefix of the new one, so a log that forks or rolls
back can never get a second cosignature. The state is written before the
cosignature is returned (a crash can lose a cosignature, never the memory of it).
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from medsec.atomic_file import atomic_write
from medsec.auditlog.checkpoint import verify_checkpoint
from medsec.auditlog.merkle import EMPTY_ROOT, HASH_SIZE, verify_consistency
from medsec.auditlog.note import (
    SIG_TYPE_COSIGNATURE_V1,
    NoteSignature,
    NoteVerifier,
    assemble_note,
    check_key_name,
    cosignature_message,
    cosignature_timestamp,
    parse_note,
)
from medsec.crypto.keys import SigningKey
from medsec.errors import CheckpointError, ProofError, WitnessError

logger = logging.getLogger(__name__)

_MAX_TIMESTAMP = 2**63 - 1


@dataclass(frozen=True)
class TreeHead:
    """The size and root of a tree the witness has cosigned."""

    size: int
    root_hash: bytes

    def __post_init__(self) -> None:
        if self.size < 0 or len(self.root_hash) != HASH_SIZE:
            raise WitnessError("a tree head needs a size >= 0 and a 32-byte root hash")


class WitnessState(Protocol):
    """Where a witness keeps the last tree head it cosigned for each log."""

    def latest(self, origin: str) -> TreeHead | None:
        """The last cosigned tree head of ``origin``, or None if the log is new to this witness."""
        ...

    def update(self, origin: str, expected: TreeHead | None, new: TreeHead) -> None:
        """Store ``new`` if the current head is still ``expected``; else raise WitnessError.

        Compare-and-set, so two concurrent cosign calls cannot both advance from
        the same old head (a DB implementation does this in one transaction).
        """
        ...


class MemoryWitnessState:
    """Witness state kept in memory (tests, short-lived tools)."""

    def __init__(self) -> None:
        self._heads: dict[str, TreeHead] = {}
        self._lock = threading.Lock()

    def latest(self, origin: str) -> TreeHead | None:
        with self._lock:
            return self._heads.get(origin)

    def update(self, origin: str, expected: TreeHead | None, new: TreeHead) -> None:
        with self._lock:
            if self._heads.get(origin) != expected:
                raise WitnessError(f"witness state for {origin} changed concurrently; retry")
            self._heads[origin] = new


class FileWitnessState:
    """Witness state in one JSON file, replaced atomically and guarded by a lock file.

    Format: ``{"version": 1, "logs": {origin: {"size": int, "root_hash": base64}}}``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._thread_lock = threading.Lock()

    def _read(self) -> dict[str, TreeHead]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise WitnessError(f"cannot read witness state {self.path}: {e.strerror}") from e
        try:
            doc = json.loads(raw)
            if doc.get("version") != 1:
                raise WitnessError(f"witness state {self.path} has an unknown version")
            return {
                origin: TreeHead(int(h["size"]), base64.b64decode(h["root_hash"], validate=True))
                for origin, h in doc["logs"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
            raise WitnessError(f"witness state {self.path} is damaged: {e}") from e

    def latest(self, origin: str) -> TreeHead | None:
        return self._read().get(origin)

    def update(self, origin: str, expected: TreeHead | None, new: TreeHead) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, self._lock_path.open("a") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)  # other processes sharing the file
            heads = self._read()
            if heads.get(origin) != expected:
                raise WitnessError(f"witness state for {origin} changed concurrently; retry")
            heads[origin] = new
            doc: dict[str, Any] = {
                "version": 1,
                "logs": {
                    o: {"size": h.size, "root_hash": base64.b64encode(h.root_hash).decode("ascii")}
                    for o, h in sorted(heads.items())
                },
            }
            atomic_write(self.path, json.dumps(doc, indent=1, sort_keys=True).encode("utf-8") + b"\n")


class Witness:
    """Cosigns checkpoints of logs, refusing rollbacks and forks."""

    def __init__(self, name: str, key: SigningKey, state: WitnessState) -> None:
        check_key_name(name)
        self.name = name
        self._key = key
        self.state = state
        self.verifier = NoteVerifier(name, SIG_TYPE_COSIGNATURE_V1, key.verify_key)

    def __repr__(self) -> str:
        return f"Witness({self.vkey!r})"

    @property
    def vkey(self) -> str:
        """``name+keyid+base64(0x04||pubkey)`` (tlog-cosignature "Format")."""
        return self.verifier.vkey

    def cosign(self, note: str, log_vkey: str | NoteVerifier, consistency_proof: Sequence[bytes], now: int) -> str:
        """Return ``note`` with this witness's cosignature added.

        ``consistency_proof`` goes from the last tree this witness cosigned for the
        log to the new one; ``now`` is the POSIX time of the cosignature.
        """
        if not 0 <= now <= _MAX_TIMESTAMP:
            raise WitnessError(f"timestamp {now} is out of range")
        cp = verify_checkpoint(note, log_vkey)
        new = TreeHead(cp.size, cp.root_hash)
        old = self.state.latest(cp.origin)
        if old is not None:
            if cp.size < old.size:
                raise WitnessError(
                    f"rollback: {cp.origin} checkpoint has size {cp.size}, smaller than the cosigned size {old.size}"
                )
            if cp.size == old.size:
                if cp.root_hash != old.root_hash:
                    raise WitnessError(f"fork: {cp.origin} shows a second root hash for size {cp.size}")
            elif old.size == 0:
                if old.root_hash != EMPTY_ROOT:
                    raise WitnessError(f"witness state for {cp.origin} holds a bad root for size 0")
            else:
                try:
                    verify_consistency(old.size, cp.size, consistency_proof, old.root_hash, cp.root_hash)
                except ProofError as e:
                    raise WitnessError(
                        f"fork: {cp.origin} size {cp.size} is not consistent with cosigned size {old.size}: {e}"
                    ) from e
        if old != new:
            self.state.update(cp.origin, old, new)
            logger.info("witness %s advanced %s to size %d", self.name, cp.origin, cp.size)
        text, signatures = parse_note(note)
        signature = self._key.sign(cosignature_message(text, now))
        cosig = NoteSignature(self.name, self.verifier.key_id, now.to_bytes(8, "big") + signature)
        kept = [s for s in signatures if (s.name, s.key_id) != (cosig.name, cosig.key_id)]
        return assemble_note(text, [*kept, cosig])


def verify_cosignature(note: str, witness_vkey: str | NoteVerifier) -> int:
    """Verify a witness's cosignature on ``note`` and return its timestamp.

    Raises CheckpointError if the witness did not cosign the note or the
    cosignature does not verify.
    """
    verifier = witness_vkey if isinstance(witness_vkey, NoteVerifier) else NoteVerifier.from_vkey(witness_vkey)
    if verifier.sig_type != SIG_TYPE_COSIGNATURE_V1:
        raise CheckpointError("a witness key must have signature type 0x04 (cosignature/v1)")
    text, signatures = parse_note(note)
    mine = [s for s in signatures if (s.name, s.key_id) == (verifier.name, verifier.key_id)]
    if not mine:
        raise CheckpointError(f"note carries no cosignature from witness {verifier.name}")
    if len(mine) > 1:
        raise CheckpointError(f"note carries two cosignatures from witness {verifier.name}")
    verifier.verify(text, mine[0].signature)
    return cosignature_timestamp(mine[0].signature)
