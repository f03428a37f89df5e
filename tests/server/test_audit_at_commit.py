"""Audit entries are queued on the session and written when it commits (ADR 0007).

An action and its entry still commit or roll back together, indexes follow commit order, the tree
stays consistent, and the head lock is no longer held while the business transaction runs.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from medsec.auditlog import merkle
from medsec.auditlog.checkpoint import verify_checkpoint
from medsec.server.context import ServerContext
from medsec.server.models import AuditEntry, AuditHead, Organization

pytestmark = [pytest.mark.req("SM-1"), pytest.mark.req("SM-5")]


def _types(ctx: ServerContext) -> list[str]:
    with ctx.tx() as s:
        return list(s.scalars(select(AuditEntry.event_type).order_by(AuditEntry.idx)))


def _size(ctx: ServerContext) -> int:
    with ctx.tx() as s:
        return ctx.audit.size(s)


def _committed_size(ctx: ServerContext) -> int:
    """The head as another connection sees it (committed state only)."""
    with ctx.engine.connect() as conn:
        return int(conn.execute(text("SELECT coalesce(max(size), 0) FROM audit_head")).scalar_one())


def _is_postgresql(ctx: ServerContext) -> bool:
    return ctx.engine.dialect.name == "postgresql"


def _new_org(ctx: ServerContext, slug: str) -> int:
    with ctx.tx() as s:
        org = Organization(slug=slug, name=slug.title(), kind="hospital")
        s.add(org)
        s.flush()
        return org.id


def test_rolled_back_transaction_leaves_no_entry(ctx: ServerContext) -> None:
    before = _size(ctx)
    with pytest.raises(RuntimeError, match="action failed"), ctx.tx() as s:
        ctx.audit.append(s, "test.rolled_back", actor="alice", organization_id=None, details={"n": 1})
        s.add(Organization(slug="ghost", name="Ghost", kind="hospital"))
        raise RuntimeError("action failed")
    assert _size(ctx) == before
    assert "test.rolled_back" not in _types(ctx)
    with ctx.tx() as s:
        assert s.scalar(select(Organization).where(Organization.slug == "ghost")) is None
        assert ctx.audit.verify(s).size == before


def test_entry_is_written_only_when_the_session_commits(ctx: ServerContext) -> None:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()))

    before = _size(ctx)
    event.listen(ctx.engine, "before_cursor_execute", record)
    try:
        with ctx.tx() as s:
            ctx.audit.append(s, "test.queued", actor="alice", organization_id=None)
            s.add(Organization(slug="queued-org", name="Queued", kind="hospital"))
            s.flush()
            assert not [q for q in statements if "audit_" in q], "no audit SQL before the commit"
            business = len(statements)
    finally:
        event.remove(ctx.engine, "before_cursor_execute", record)
    head_lock = [i for i, q in enumerate(statements) if q.startswith("SELECT") and "FROM audit_head" in q]
    assert head_lock and head_lock[0] >= business, "the head is locked after the business rows were written"
    assert _committed_size(ctx) == before + 1
    assert _types(ctx)[-1] == "test.queued"


def test_a_session_reads_its_own_queued_entries(ctx: ServerContext) -> None:
    with ctx.tx() as s:
        before = ctx.audit.size(s)
        ctx.audit.append(s, "test.first", actor="alice", organization_id=None)
        ctx.audit.append(s, "test.second", actor="alice", organization_id=None)
        # A plain ORM read of the audit tables writes the queue first, as autoflush does.
        rows = s.scalars(select(AuditEntry.event_type).where(AuditEntry.idx >= before).order_by(AuditEntry.idx))
        assert list(rows) == ["test.first", "test.second"]
        assert ctx.audit.size(s) == before + 2
    assert _size(ctx) == before + 2


def test_caller_that_needs_the_index_gets_it_with_a_proof(ctx: ServerContext) -> None:
    with ctx.tx() as s:
        before = ctx.audit.size(s)
        ctx.audit.append(s, "test.earlier", actor="alice", organization_id=None)
        index = ctx.audit.append(s, "test.cited", actor="alice", organization_id=None, write_now=True)
        assert index == before + 1, "entries queued earlier in the session keep their order"
        entry = s.get_one(AuditEntry, index)
        checkpoint = ctx.audit.checkpoint(s)
        proof = ctx.audit.inclusion_proof(s, index, checkpoint.size)
        merkle.verify_inclusion(merkle.leaf_hash(entry.body), index, checkpoint.size, proof, checkpoint.root_hash)
        cp = verify_checkpoint(checkpoint.note, ctx.audit.vkey)
        assert cp.size == before + 2
    with ctx.tx() as s:
        assert s.get_one(AuditEntry, index).event_type == "test.cited"
        assert ctx.audit.verify(s).size == before + 2


def test_index_asked_for_inside_a_rolled_back_transaction_is_not_kept(ctx: ServerContext) -> None:
    before = _size(ctx)
    with pytest.raises(RuntimeError), ctx.tx() as s:
        assert ctx.audit.append(s, "test.cited", actor="a", organization_id=None, write_now=True) == before
        raise RuntimeError("later step failed")
    assert _size(ctx) == before
    with ctx.tx() as s:
        assert ctx.audit.append(s, "test.next", actor="a", organization_id=None, write_now=True) == before


def test_two_transactions_append_in_commit_order(ctx: ServerContext) -> None:
    with ctx.tx() as s:
        ctx.audit.append(s, "test.base", actor="a", organization_id=None)  # a non-empty tree to extend
    before = _size(ctx)
    first, second = ctx.sessions(), ctx.sessions()
    try:
        ctx.audit.append(first, "test.began_first", actor="a", organization_id=None)
        ctx.audit.append(second, "test.began_second", actor="b", organization_id=None)
        second.commit()
        first.commit()
    finally:
        first.close()
        second.close()
    assert _types(ctx)[before:] == ["test.began_second", "test.began_first"]
    with ctx.tx() as s:
        report = ctx.audit.verify(s)
        assert report.size == before + 2
        cp = ctx.audit.checkpoint(s)
        old_root = ctx.audit.root(s, before)
        proof = ctx.audit.consistency_proof(s, before, cp.size)
        merkle.verify_consistency(before, cp.size, proof, old_root, cp.root_hash)


def test_rolled_back_savepoint_drops_only_its_own_entries(ctx: ServerContext) -> None:
    with ctx.tx() as s:
        before = ctx.audit.size(s)
        ctx.audit.append(s, "test.outer", actor="a", organization_id=None)
        with s.begin_nested():
            ctx.audit.append(s, "test.kept_savepoint", actor="a", organization_id=None)
        with pytest.raises(ValueError), s.begin_nested():
            ctx.audit.append(s, "test.refused_report", actor="a", organization_id=None)
            raise ValueError("report refused")
        savepoint = s.begin_nested()
        # Written early inside the savepoint: the outer entry goes with it, then comes back.
        ctx.audit.append(s, "test.cited_then_undone", actor="a", organization_id=None, write_now=True)
        savepoint.rollback()
        ctx.audit.append(s, "test.last", actor="a", organization_id=None)
    assert _types(ctx)[before:] == ["test.outer", "test.kept_savepoint", "test.last"]
    with ctx.tx() as s:
        assert ctx.audit.verify(s).size == before + 3


def test_many_concurrent_writers_keep_one_consistent_tree(ctx: ServerContext) -> None:
    before = _size(ctx)
    threads, per_thread = 4, 10
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(per_thread):
                with ctx.tx() as s:
                    ctx.audit.append(s, "test.concurrent", actor=f"w{n}", organization_id=None, details={"i": i})
                    ctx.audit.append(s, "test.concurrent", actor=f"w{n}", organization_id=None, details={"i": -i})
        except BaseException as e:  # reported below, with the thread's failure
            errors.append(e)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not errors, errors
    with ctx.tx() as s:
        assert ctx.audit.verify(s).size == before + threads * per_thread * 2
        # Both entries of one transaction are adjacent: a transaction's entries are written together.
        rows = s.execute(
            select(AuditEntry.idx, AuditEntry.actor).where(AuditEntry.idx >= before).order_by(AuditEntry.idx)
        ).all()
    for k in range(0, len(rows), 2):
        assert rows[k].actor == rows[k + 1].actor


def test_head_lock_is_free_while_the_transaction_runs(ctx: ServerContext) -> None:
    if not _is_postgresql(ctx):
        pytest.skip("SQLite serialises whole write transactions (BEGIN IMMEDIATE); there is no row lock to observe")
    org_id = _new_org(ctx, "lock-test")
    with ctx.tx() as s:
        ctx.audit.append(s, "test.head_exists", actor="a", organization_id=None)
    s = ctx.sessions()
    try:
        org = s.get_one(Organization, org_id)
        org.name = org.name + " (renamed)"
        s.flush()
        ctx.audit.append(s, "test.renamed", actor="a", organization_id=org.id)
        with ctx.engine.connect() as other:
            # NOWAIT: fails at once if the business transaction were holding the head.
            other.execute(text("SELECT size FROM audit_head WHERE id = 1 FOR UPDATE NOWAIT"))
            other.rollback()
        s.commit()
    finally:
        s.close()
    assert _types(ctx)[-1] == "test.renamed"


def test_opposite_lock_orders_do_not_deadlock_on_the_head(ctx: ServerContext) -> None:
    """Appending before touching a row used to hold the head while waiting for that row: a lock cycle."""
    if not _is_postgresql(ctx):
        pytest.skip("SQLite serialises whole write transactions (BEGIN IMMEDIATE); no row-lock cycle can form")
    org_id = _new_org(ctx, "cycle-test")
    before = _size(ctx)
    appended, row_locked = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def lock_org(s: Session) -> None:
        s.execute(select(Organization).where(Organization.id == org_id).with_for_update())

    def append_then_lock() -> None:
        try:
            with ctx.tx() as s:
                s.execute(text("SET LOCAL lock_timeout = '20s'"))
                ctx.audit.append(s, "test.append_first", actor="t1", organization_id=None)
                appended.set()
                row_locked.wait(10)
                lock_org(s)  # waits until the other transaction commits
        except BaseException as e:
            errors.append(e)

    def lock_then_append() -> None:
        try:
            with ctx.tx() as s:
                s.execute(text("SET LOCAL lock_timeout = '20s'"))
                appended.wait(10)
                lock_org(s)
                row_locked.set()
                ctx.audit.append(s, "test.lock_first", actor="t2", organization_id=None)
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=append_then_lock), threading.Thread(target=lock_then_append)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    deadlocks = [e for e in errors if isinstance(e, OperationalError)]
    assert not deadlocks, f"a lock cycle through the audit head: {deadlocks}"
    assert not errors, errors
    assert _types(ctx)[before:] == ["test.lock_first", "test.append_first"]
    with ctx.tx() as s:
        assert ctx.audit.verify(s).size == before + 2
        assert s.scalar(select(func.count()).select_from(AuditHead)) == 1
