"""The server's tamper-evident audit log, kept in the SQL database.

Entries are canonical JSON; the Merkle tree (RFC 9162) is stored as its
perfect-subtree hashes in ``audit_nodes`` so proofs cost O(log n) reads.
Appends run inside the caller's transaction, so an action and its audit entry
commit or roll back together; the ``audit_head`` row lock serialises appends
(PostgreSQL ``SELECT ... FOR UPDATE``; SQLite transactions are already
serialised by ``BEGIN IMMEDIATE``). The database commit is the group commit:
one fsync covers every entry of a transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medsec.auditlog import merkle
from medsec.auditlog.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from medsec.auditlog.note import NoteSignature, NoteSigner, NoteVerifier, assemble_note, parse_note
from medsec.auditlog.witness import verify_cosignature
from medsec.crypto.canonical import canonical_json
from medsec.errors import CheckpointError, LogStoreError
from medsec.server.models import AuditCheckpoint, AuditEntry, AuditHead, AuditNode

logger = logging.getLogger(__name__)


class SqlNodeReader:
    """A :class:`medsec.auditlog.merkle.NodeReader` over ``audit_nodes``."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._cache: dict[tuple[int, int], bytes] = {}

    def node(self, level: int, index: int) -> bytes:
        key = (level, index)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        value = self._session.scalar(select(AuditNode.hash).where(AuditNode.level == level, AuditNode.idx == index))
        if value is None:
            raise LogStoreError(f"audit log node (level {level}, index {index}) is missing")
        self._cache[key] = value
        return value


@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`ServerAuditLog.verify` checked."""

    size: int
    root_hash: bytes
    checkpoints_checked: int
    latest_checkpoint_size: int


class ServerAuditLog:
    """Appends, checkpoints, proofs and full verification of the server log."""

    def __init__(self, origin: str, signer: NoteSigner) -> None:
        self.origin = origin
        self.signer = signer

    @property
    def vkey(self) -> str:
        return self.signer.vkey

    # -- writing -----------------------------------------------------------------------------

    def append(
        self,
        session: Session,
        event_type: str,
        *,
        actor: str | None,
        organization_id: int | None,
        details: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> int:
        """Append one entry in ``session``'s transaction and return its index."""
        when = now or datetime.now(UTC)
        entry = {
            "type": event_type,
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "actor": actor,
            "org": organization_id,
            "details": details or {},
        }
        body = canonical_json(entry)
        head = session.scalar(select(AuditHead).where(AuditHead.id == 1).with_for_update())
        if head is None:
            head = AuditHead(id=1, size=0)
            session.add(head)
            session.flush()
        index = head.size
        reader = SqlNodeReader(session)
        for level, idx, digest in merkle.nodes_for_append(reader, index, merkle.leaf_hash(body)):
            session.add(AuditNode(level=level, idx=idx, hash=digest))
        session.add(
            AuditEntry(
                idx=index,
                created_at=when,
                event_type=event_type,
                actor=actor,
                organization_id=organization_id,
                body=body,
            )
        )
        head.size = index + 1
        session.flush()
        return index

    def size(self, session: Session) -> int:
        head = session.get(AuditHead, 1)
        return head.size if head else 0

    def root(self, session: Session, size: int | None = None) -> bytes:
        n = self.size(session) if size is None else size
        return merkle.root(SqlNodeReader(session), n)

    def checkpoint(self, session: Session) -> AuditCheckpoint:
        """Sign and store a checkpoint of the current tree (reuses the latest if nothing changed)."""
        size = self.size(session)
        latest = self.latest_checkpoint(session)
        if latest is not None and latest.size == size:
            return latest
        root_hash = self.root(session, size)
        note = sign_checkpoint(Checkpoint(origin=self.origin, size=size, root_hash=root_hash), self.signer)
        row = AuditCheckpoint(size=size, root_hash=root_hash, note=note)
        session.add(row)
        session.flush()
        return row

    # -- reading -----------------------------------------------------------------------------

    def add_cosignatures(self, session: Session, note: str, witness_vkeys: Sequence[str]) -> AuditCheckpoint:
        """Merge verified witness cosignatures on one of our checkpoints into its stored note.

        Only cosignatures from ``witness_vkeys`` (the configured witnesses) are kept; a note
        without any valid one raises CheckpointError. The checkpoint must be one we signed.
        """
        cp = verify_checkpoint(note, self.vkey)
        row = session.scalar(
            select(AuditCheckpoint).where(AuditCheckpoint.size == cp.size).order_by(AuditCheckpoint.id.desc()).limit(1)
        )
        if row is None or row.root_hash != cp.root_hash:
            raise CheckpointError(f"no checkpoint of size {cp.size} with that root was published by this log")
        text, offered = parse_note(note)
        accepted: list[NoteSignature] = []
        for vkey in witness_vkeys:
            verifier = NoteVerifier.from_vkey(vkey)
            mine = [sig for sig in offered if (sig.name, sig.key_id) == (verifier.name, verifier.key_id)]
            if mine:
                verify_cosignature(assemble_note(text, mine[:1]), verifier)
                accepted.append(mine[0])
        if not accepted:
            raise CheckpointError("the note carries no valid cosignature from a configured witness")
        stored_text, stored = parse_note(row.note)
        keep = [sig for sig in stored if (sig.name, sig.key_id) not in {(a.name, a.key_id) for a in accepted}]
        row.note = assemble_note(stored_text, [*keep, *accepted])
        session.flush()
        return row

    def latest_checkpoint(self, session: Session) -> AuditCheckpoint | None:
        return session.scalar(select(AuditCheckpoint).order_by(AuditCheckpoint.size.desc()).limit(1))

    def inclusion_proof(self, session: Session, index: int, size: int) -> list[bytes]:
        return merkle.inclusion_proof(SqlNodeReader(session), index, size)

    def consistency_proof(self, session: Session, old_size: int, new_size: int) -> list[bytes]:
        return merkle.consistency_proof(SqlNodeReader(session), old_size, new_size)

    def verify(self, session: Session) -> VerifyReport:
        """Recompute the whole tree from the stored entries and check every stored checkpoint.

        Raises LogStoreError (entries or nodes altered, missing or reordered), CheckpointError
        (a checkpoint not signed by this log's key) or ProofError (checkpoints that fork).
        """
        size = self.size(session)
        count = session.scalar(select(func.count()).select_from(AuditEntry)) or 0
        if count != size:
            raise LogStoreError(f"audit log head says {size} entries but {count} are stored")
        leaves: list[bytes] = []
        for expected, (idx, body) in enumerate(
            session.execute(select(AuditEntry.idx, AuditEntry.body).order_by(AuditEntry.idx))
        ):
            if idx != expected:
                raise LogStoreError(f"audit log entry {expected} is missing")
            leaves.append(merkle.leaf_hash(body))
        rebuilt = merkle.MemoryNodes()
        for leaf in leaves:
            rebuilt.append_hash(leaf)
        stored = SqlNodeReader(session)
        for i, leaf in enumerate(leaves):
            if stored.node(0, i) != leaf:
                raise LogStoreError(f"audit log entry {i} does not match its stored leaf hash")
        root_hash = rebuilt.root()
        checkpoints = session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.size)).all()
        for cp_row in checkpoints:
            cp = verify_checkpoint(cp_row.note, self.vkey)
            if cp.size > size:
                raise LogStoreError(f"checkpoint at size {cp.size} is beyond the stored log ({size} entries)")
            if cp.root_hash != merkle.root(rebuilt, cp.size):
                raise LogStoreError(f"checkpoint at size {cp.size} does not match the stored entries")
        latest = checkpoints[-1].size if checkpoints else 0
        return VerifyReport(
            size=size, root_hash=root_hash, checkpoints_checked=len(checkpoints), latest_checkpoint_size=latest
        )
