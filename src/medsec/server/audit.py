"""The server's tamper-evident audit log, kept in the SQL database.

Entries are canonical JSON; the Merkle tree (RFC 9162) is stored as its
perfect-subtree hashes in ``audit_nodes`` so proofs cost O(log n) reads.

An append is queued on the caller's session and written when that session
commits (a ``before_commit`` hook, ADR 0007): the action and its entry commit or
roll back together, the ``audit_head`` row lock (PostgreSQL ``SELECT ... FOR
UPDATE``; SQLite transactions are already serialised by ``BEGIN IMMEDIATE``) is
the last lock a transaction takes and is held only for the commit, and indexes
follow commit order. A rolled-back savepoint drops the entries queued in it. A
caller that needs the index at once passes ``write_now=True``; any read of the
audit tables in a session with queued entries writes them first, as autoflush
does for ORM objects, so a transaction always sees its own entries.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, overload

from sqlalchemy import event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.util import find_tables

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

    def remember(self, level: int, index: int, digest: bytes) -> None:
        """Note a node written in this transaction, so the next append of a batch reads it from memory."""
        self._cache[(level, index)] = digest


# -- appends queued on the session and written at commit (ADR 0007) -------------------------------

_QUEUE_KEY = "medsec.audit.queue"
_AUDIT_TABLES = frozenset({AuditHead.__table__, AuditEntry.__table__, AuditNode.__table__})


@dataclass(eq=False)  # compared by identity: two identical entries are still two entries
class _QueuedEntry:
    """One entry waiting for its session's commit."""

    when: datetime
    event_type: str
    actor: str | None
    organization_id: int | None
    body: bytes
    queued_in: SessionTransaction | None
    written_in: SessionTransaction | None = None
    index: int | None = None


@dataclass
class _Queue:
    """The session's queued entries, and those written early inside a savepoint that may still roll back."""

    pending: list[_QueuedEntry] = field(default_factory=list)
    written_in_savepoint: list[_QueuedEntry] = field(default_factory=list)
    writing: bool = False


def _queue(session: Session) -> _Queue:
    """The session's queue; the first call hooks the session's commit, rollback and reads."""
    queue = session.info.get(_QUEUE_KEY)
    if queue is None:
        queue = _Queue()
        session.info[_QUEUE_KEY] = queue
        event.listen(session, "before_commit", _write_at_commit)
        event.listen(session, "after_soft_rollback", _drop_rolled_back)
        event.listen(session, "after_transaction_end", _forget_at_end)
        event.listen(session, "do_orm_execute", _write_before_audit_read)
    return queue


def _innermost(session: Session) -> SessionTransaction | None:
    """The savepoint (or transaction) now open; None before the session's transaction has begun."""
    return session.get_nested_transaction() or session.get_transaction()


def _within(tx: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while tx is not None:
        if tx is ancestor:
            return True
        tx = tx.parent
    return False


def write_queued(session: Session) -> None:
    """Write the session's queued entries now, under the head lock (a no-op when nothing is queued).

    The session's other changes are flushed first, so their row locks come before the head lock:
    every transaction takes the head lock last and cannot be part of a lock cycle through it.
    """
    queue: _Queue | None = session.info.get(_QUEUE_KEY)
    if queue is None or not queue.pending or queue.writing:
        return
    queue.writing = True
    try:
        session.flush()
        with session.no_autoflush:
            _write_entries(session, queue.pending)
        session.flush()
        tx = _innermost(session)
        if tx is not None and tx.nested:
            for entry in queue.pending:
                entry.written_in = tx
            queue.written_in_savepoint.extend(queue.pending)
        queue.pending = []
    finally:
        queue.writing = False


def _lock_head(session: Session) -> AuditHead:
    """Lock the head row, creating it on the first append (concurrent first appends create it once)."""
    locked = select(AuditHead).where(AuditHead.id == 1).with_for_update()
    head = session.scalar(locked)
    if head is None:
        insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        session.execute(insert(AuditHead).values(id=1, size=0).on_conflict_do_nothing())
        head = session.scalars(locked.execution_options(populate_existing=True)).one()
    return head


def _write_entries(session: Session, entries: list[_QueuedEntry]) -> None:
    head = _lock_head(session)
    reader = SqlNodeReader(session)
    index = head.size
    for entry in entries:
        for level, idx, digest in merkle.nodes_for_append(reader, index, merkle.leaf_hash(entry.body)):
            session.add(AuditNode(level=level, idx=idx, hash=digest))
            reader.remember(level, idx, digest)
        session.add(
            AuditEntry(
                idx=index,
                created_at=entry.when,
                event_type=entry.event_type,
                actor=entry.actor,
                organization_id=entry.organization_id,
                body=entry.body,
            )
        )
        entry.index = index
        index += 1
    head.size = index


def _write_at_commit(session: Session) -> None:
    # before_commit also fires when a savepoint is released; its entries wait for the real commit.
    if not session.in_nested_transaction():
        write_queued(session)


def _drop_rolled_back(session: Session, previous: SessionTransaction) -> None:
    """A rolled-back savepoint takes its entries with it; entries written inside it go back in the queue."""
    queue: _Queue | None = session.info.get(_QUEUE_KEY)
    if queue is None:
        return
    boundary: SessionTransaction | None = previous
    while boundary is not None and not boundary.nested and boundary.parent is not None:
        boundary = boundary.parent  # a flush's subtransaction rolls back its savepoint or the whole transaction
    if boundary is None or not boundary.nested:
        queue.pending.clear()
        queue.written_in_savepoint.clear()
        return
    undone = [e for e in queue.written_in_savepoint if _within(e.written_in, boundary)]
    queue.written_in_savepoint = [e for e in queue.written_in_savepoint if e not in undone]
    requeue = [e for e in undone if not _within(e.queued_in, boundary)]
    for entry in requeue:
        entry.index = None
        entry.written_in = None
    queue.pending = requeue + [e for e in queue.pending if not _within(e.queued_in, boundary)]


def _forget_at_end(session: Session, transaction: SessionTransaction) -> None:
    # Whatever ends the outermost transaction (commit, rollback, close), nothing queued may outlive it.
    if transaction.parent is None:
        queue: _Queue | None = session.info.get(_QUEUE_KEY)
        if queue is not None:
            queue.pending.clear()
            queue.written_in_savepoint.clear()


def _write_before_audit_read(state: ORMExecuteState) -> None:
    queue: _Queue | None = state.session.info.get(_QUEUE_KEY)
    if queue is None or not queue.pending or queue.writing:
        return
    statement = state.statement
    if not isinstance(statement, ClauseElement):
        return
    if _AUDIT_TABLES.intersection(find_tables(statement, include_joins=True, include_selects=True)):
        write_queued(state.session)


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

    @overload
    def append(
        self,
        session: Session,
        event_type: str,
        *,
        actor: str | None,
        organization_id: int | None,
        details: dict[str, Any] | None = None,
        now: datetime | None = None,
        write_now: Literal[False] = False,
    ) -> None: ...

    @overload
    def append(
        self,
        session: Session,
        event_type: str,
        *,
        actor: str | None,
        organization_id: int | None,
        details: dict[str, Any] | None = None,
        now: datetime | None = None,
        write_now: Literal[True],
    ) -> int: ...

    def append(
        self,
        session: Session,
        event_type: str,
        *,
        actor: str | None,
        organization_id: int | None,
        details: dict[str, Any] | None = None,
        now: datetime | None = None,
        write_now: bool = False,
    ) -> int | None:
        """Queue one entry in ``session``'s transaction; it is written when the session commits.

        With ``write_now=True`` the entry (and those queued before it) is written at once and its
        index returned, for callers that must cite it in the same transaction; that takes the head
        lock early, so only rare actions should ask for it.
        """
        when = now or datetime.now(UTC)
        entry = {
            "type": event_type,
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "actor": actor,
            "org": organization_id,
            "details": details or {},
        }
        queued = _QueuedEntry(
            when=when,
            event_type=event_type,
            actor=actor,
            organization_id=organization_id,
            body=canonical_json(entry),
            queued_in=_innermost(session),
        )
        _queue(session).pending.append(queued)
        if not write_now:
            return None
        write_queued(session)
        if queued.index is None:  # pragma: no cover - write_queued writes every queued entry
            raise LogStoreError("the audit entry was not written")
        return queued.index

    def size(self, session: Session) -> int:
        write_queued(session)
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
