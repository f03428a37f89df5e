"""The server's maintenance workflow on SQLite and PostgreSQL: roles, tenants, N of M, emergencies, revocation."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import select

from medsec.errors import ServiceError
from medsec.remote.certs import verify_session_certificate
from medsec.server.context import ServerContext
from medsec.server.models import AuditEntry, User
from medsec.server.principal import Principal
from medsec.server.remote_authority import DatabaseSessionAuthority, load_remote_keys
from medsec.server.seed import Seed
from medsec.server.services import accounts
from medsec.server.services import remote_sessions as remote

pytestmark = pytest.mark.req("RA-1")

SERIAL_A = "IC300-0001"


_PEOPLE: dict[tuple[int, str], Principal] = {}


def load_people(ctx: ServerContext) -> None:
    """Principals loaded once per change, so tests never open a second transaction inside one (SQLite)."""
    with ctx.tx() as db:
        for user in db.scalars(select(User)):
            _PEOPLE[(id(ctx), user.username)] = Principal.of(user, mfa_verified=True)


def principal(ctx: ServerContext, username: str) -> Principal:
    if (id(ctx), username) not in _PEOPLE:
        load_people(ctx)
    return _PEOPLE[(id(ctx), username)]


@pytest.fixture(autouse=True)
def _fresh_people(request: pytest.FixtureRequest) -> None:
    _PEOPLE.clear()
    if "seeded" in request.fixturenames:
        request.getfixturevalue("seeded")
        load_people(request.getfixturevalue("ctx"))


def add_responsible(ctx: ServerContext, username: str, hospital: str = "hospital-a") -> Principal:
    with ctx.tx() as db:
        from medsec.server.models import Organization, Role

        org = db.scalar(select(Organization).where(Organization.slug == hospital))
        accounts.create_user(
            db,
            ctx.audit,
            None,
            org=org,
            username=username,
            display_name=username,
            password="correct horse battery staple",
            roles={Role.HOSPITAL_RESPONSIBLE},
        )
    load_people(ctx)
    return principal(ctx, username)


def new_request(ctx: ServerContext, *, emergency: bool = False, start: int | None = None, minutes: int = 60) -> str:
    now = int(time.time())
    start = now - 5 if start is None else start
    with ctx.tx() as db:
        row = remote.request_session(
            db,
            ctx.audit,
            principal(ctx, "maker-service"),
            serial=SERIAL_A,
            purpose="replace the flow sensor calibration table",
            planned_work="upload calibration v7, restart the pump service",
            expected_impact="pump unavailable for 10 minutes",
            expected_downtime_minutes=10,
            rollback="restore calibration v6 from the backup slot",
            shell=True,
            file_transfer=True,
            ports=[("dicom", 104)],
            window_start=start,
            window_end=start + minutes * 60,
            emergency=emergency,
            now=now,
        )
        return row.id


def state_of(ctx: ServerContext, sid: str) -> str:
    with ctx.tx() as db:
        return remote.get_session(db, principal(ctx, "maker-admin"), sid).state


def events(ctx: ServerContext, prefix: str = "remote.") -> list[str]:
    with ctx.tx() as db:
        return [e for e in db.scalars(select(AuditEntry.event_type).order_by(AuditEntry.idx)) if e.startswith(prefix)]


def test_full_workflow_is_audited_for_the_hospital(ctx: ServerContext, seeded: Seed) -> None:
    sid = new_request(ctx)
    now = int(time.time())
    resp = principal(ctx, "a-responsible")
    with ctx.tx() as db:
        row = remote.approve(db, ctx.audit, resp, sid, comment="ok for Tuesday", now=now)
        assert row.state == "approved"
    authority = DatabaseSessionAuthority(ctx, load_remote_keys(ctx.settings))
    grant = authority.grant(sid, now)
    assert grant.device_serial == SERIAL_A and grant.ports == frozenset({104})
    ticket = authority.ticket(sid, now)
    assert ticket.unverified_claims().approvers == ("a-responsible",)
    assert state_of(ctx, sid) == "active"
    with ctx.tx() as db:
        remote.submit_report(
            db,
            ctx.audit,
            principal(ctx, "maker-service"),
            sid,
            work_done="uploaded calibration v7",
            results="flow within 1 %",
            verification="test infusion of 50 ml measured",
            now=now + 1,
        )
        remote.confirm_end(db, ctx.audit, resp, sid, outcome="accepted", comment="", now=now + 2)
        row = remote.get_session(db, resp, sid)
        assert (row.state, row.confirmed_by, row.outcome) == ("closed", "a-responsible", "accepted")
        assert row.confirmed_at is not None
        hospital_id = row.hospital_id
        orgs = set(db.scalars(select(AuditEntry.organization_id).where(AuditEntry.event_type.like("remote.session.%"))))
    assert orgs == {hospital_id}
    assert events(ctx) == [
        "remote.session.requested",
        "remote.session.approved",
        "remote.session.started",
        "remote.ticket_issued",
        "remote.session.ended",
        "remote.session.reported",
        "remote.session.confirmed",
    ]


def test_self_approval_is_refused(ctx: ServerContext, seeded: Seed) -> None:
    # A service engineer who is also a hospital's responsible person cannot approve their own request.
    with ctx.tx() as db:
        from medsec.server.models import UserRole

        user = db.scalar(select(User).where(User.username == "a-responsible"))
        assert user is not None
        db.add(UserRole(user_id=user.id, role="service_engineer"))
    load_people(ctx)
    sid = new_request(ctx)
    with ctx.tx() as db:
        row = remote.get_session(db, principal(ctx, "maker-admin"), sid)
        row.engineer = "a-responsible"  # the request came from that same person
    with pytest.raises(ServiceError) as err, ctx.tx() as db:
        remote.approve(db, ctx.audit, principal(ctx, "a-responsible"), sid, comment="", now=int(time.time()))
    assert (err.value.code, err.value.status) == ("self_approval", 403)


def test_hospital_b_cannot_approve_hospital_a_session(ctx: ServerContext, seeded: Seed) -> None:
    sid = new_request(ctx)
    with pytest.raises(ServiceError) as err, ctx.tx() as db:
        remote.approve(db, ctx.audit, principal(ctx, "b-responsible"), sid, comment="", now=int(time.time()))
    assert err.value.status == 404
    with pytest.raises(ServiceError), ctx.tx() as db:
        remote.revoke(db, ctx.audit, principal(ctx, "b-responsible"), sid, reason="no", now=int(time.time()))
    with ctx.tx() as db:
        assert remote.list_sessions(db, principal(ctx, "b-responsible")) == []
    assert state_of(ctx, sid) == "requested"


def test_engineer_and_hospital_admin_cannot_approve(ctx: ServerContext, seeded: Seed) -> None:
    sid = new_request(ctx)
    for who in ("maker-service", "a-admin"):
        with pytest.raises(ServiceError), ctx.tx() as db:
            remote.approve(db, ctx.audit, principal(ctx, who), sid, comment="", now=int(time.time()))


def test_two_of_three_approvers(ctx: ServerContext, seeded: Seed) -> None:
    second = add_responsible(ctx, "a-responsible-2")
    add_responsible(ctx, "a-responsible-3")
    with ctx.tx() as db:
        view = remote.set_policy(
            db,
            ctx.audit,
            principal(ctx, "a-admin"),
            principal(ctx, "a-admin").organization_id,
            approvals_required=2,
            max_window_minutes=120,
            escalate_after_minutes=60,
            emergency_allowed=True,
        )
    assert view.approvals_required == 2 and len(view.approvers) == 3
    sid = new_request(ctx)
    now = int(time.time())
    with ctx.tx() as db:
        assert remote.approve(db, ctx.audit, principal(ctx, "a-responsible"), sid, comment="", now=now).state == (
            "requested"
        )
    authority = DatabaseSessionAuthority(ctx, load_remote_keys(ctx.settings))
    with pytest.raises(Exception, match="requested"):
        authority.grant(sid, now)
    with pytest.raises(ServiceError) as dup, ctx.tx() as db:
        remote.approve(db, ctx.audit, principal(ctx, "a-responsible"), sid, comment="", now=now)
    assert dup.value.code == "duplicate_approval"
    with ctx.tx() as db:
        assert remote.approve(db, ctx.audit, second, sid, comment="", now=now).state == "approved"
    assert authority.grant(sid, now).approvers == ("a-responsible", "a-responsible-2")
    assert "remote.session.approval_recorded" in events(ctx)


def test_window_longer_than_policy_is_refused(ctx: ServerContext, seeded: Seed) -> None:

    with pytest.raises(ServiceError) as err:
        new_request(ctx, minutes=5 * 60)
    assert err.value.code == "window_too_long"


def test_emergency_is_approved_afterwards_and_flagged(ctx: ServerContext, seeded: Seed) -> None:
    sid = new_request(ctx, emergency=True)
    now = int(time.time())
    authority = DatabaseSessionAuthority(ctx, load_remote_keys(ctx.settings))
    assert authority.grant(sid, now).emergency is True
    ticket = authority.ticket(sid, now)
    assert ticket.unverified_claims().emergency is True and ticket.unverified_claims().approvers == ()
    assert state_of(ctx, sid) == "active"
    with ctx.tx() as db:
        remote.approve(db, ctx.audit, principal(ctx, "a-responsible"), sid, comment="after the fact", now=now + 5)
        row = remote.get_session(db, principal(ctx, "a-responsible"), sid)
        assert row.state == "active" and row.emergency and [a.approver for a in row.approvals] == ["a-responsible"]
        bodies = [e.body for e in db.scalars(select(AuditEntry).where(AuditEntry.event_type.like("remote.session.%")))]
    assert all(b'"emergency":true' in b for b in bodies)


def test_unapproved_emergency_escalates_after_24_hours(ctx: ServerContext, seeded: Seed) -> None:
    sid = new_request(ctx, emergency=True)
    with ctx.tx() as db:
        touched = remote.check_overdue(db, ctx.audit, int(time.time()) + 25 * 3600)
    assert sid in touched
    assert "remote.session.emergency_approval_overdue" in events(ctx)
    with ctx.tx() as db:
        assert remote.get_session(db, principal(ctx, "a-responsible"), sid).emergency_overdue


def test_unconfirmed_end_escalates(ctx: ServerContext, seeded: Seed) -> None:
    sid = new_request(ctx)
    now = int(time.time())
    with ctx.tx() as db:
        remote.approve(db, ctx.audit, principal(ctx, "a-responsible"), sid, comment="", now=now)
    DatabaseSessionAuthority(ctx, load_remote_keys(ctx.settings)).ticket(sid, now)
    with ctx.tx() as db:
        remote.end_session(db, ctx.audit, principal(ctx, "maker-service"), sid, now=now)
        assert remote.check_overdue(db, ctx.audit, now + 3600) == []
        assert remote.check_overdue(db, ctx.audit, now + 25 * 3600) == [sid]
        assert remote.check_overdue(db, ctx.audit, now + 26 * 3600) == []  # escalated once
    assert events(ctx).count("remote.session.escalated") == 1


def test_revocation_stops_the_grant(ctx: ServerContext, seeded: Seed) -> None:
    sid = new_request(ctx)
    now = int(time.time())
    authority = DatabaseSessionAuthority(ctx, load_remote_keys(ctx.settings))
    with ctx.tx() as db:
        remote.approve(db, ctx.audit, principal(ctx, "a-responsible"), sid, comment="", now=now)
    authority.ticket(sid, now)
    with ctx.tx() as db:
        row = remote.revoke(db, ctx.audit, principal(ctx, "a-responsible"), sid, reason="ward needs it", now=now)
        assert (row.state, row.revoked_by, row.end_reason) == ("revoked", "a-responsible", "revoked")
    from medsec.remote.errors import AccessRefused

    with pytest.raises(AccessRefused) as err:
        authority.grant(sid, now)
    assert err.value.code == "session_revoked"
    with pytest.raises(AccessRefused):
        authority.ticket(sid, now)


def test_certificate_only_for_own_approved_session(ctx: ServerContext, seeded: Seed) -> None:
    import asyncssh

    sid = new_request(ctx)
    key = asyncssh.generate_private_key("ssh-ed25519")
    line = bytes(key.export_public_key("openssh")).decode()
    keys = load_remote_keys(ctx.settings)
    now = int(time.time())
    with pytest.raises(ServiceError) as err, ctx.tx() as db:
        remote.issue_certificate(db, ctx.audit, principal(ctx, "maker-service"), keys.ca, sid, line, now=now)
    assert err.value.code == "session_not_approved"
    with ctx.tx() as db:
        remote.approve(db, ctx.audit, principal(ctx, "a-responsible"), sid, comment="", now=now)
        cert = remote.issue_certificate(db, ctx.audit, principal(ctx, "maker-service"), keys.ca, sid, line, now=now)
    info = verify_session_certificate(cert, keys.ca.public_key, sid, now)
    assert info.engineer == "maker-service" and info.permit_port_forwarding
    assert oct((ctx.settings.keys_dir / "remote-approval.key").stat().st_mode & 0o777) == "0o600"
    assert oct((ctx.settings.keys_dir / "maintenance-ca.key").stat().st_mode & 0o777) == "0o600"


@pytest.mark.req("RA-3")
def test_api_walkthrough(live_server) -> None:  # type: ignore[no-untyped-def]
    tokens = live_server.seed.tokens

    def call(user: str, method: str, path: str, body: object = None) -> httpx.Response:
        return httpx.request(
            method,
            live_server.url + "/api/v1/remote" + path,
            json=body,
            headers={"Authorization": f"Bearer {tokens[user]}"},
            timeout=10,
        )

    r = call(
        "maker-service",
        "POST",
        "/sessions",
        {
            "device": SERIAL_A,
            "purpose": "inspection",
            "planned_work": "read logs",
            "expected_impact": "none",
            "expected_downtime_minutes": 0,
            "rollback": "none needed",
            "window_minutes": 60,
        },
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert call("b-responsible", "GET", f"/sessions/{sid}").status_code == 404
    assert call("b-responsible", "POST", f"/sessions/{sid}/approve", {}).status_code == 404
    assert call("maker-service", "POST", f"/sessions/{sid}/approve", {}).status_code == 403
    r = call("a-responsible", "POST", f"/sessions/{sid}/approve", {"comment": "go"})
    assert r.status_code == 200 and r.json()["state"] == "approved"
    r = call("a-responsible", "POST", f"/sessions/{sid}/revoke", {"reason": "changed plans"})
    assert r.json()["state"] == "revoked"
    assert [s["id"] for s in call("a-responsible", "GET", "/sessions").json()] == [sid]
    assert call("b-responsible", "GET", "/sessions").json() == []
    with live_server.ctx.tx() as db:
        refused = list(db.scalars(select(AuditEntry.event_type).where(AuditEntry.event_type == "remote.refused")))
    assert len(refused) >= 1  # the engineer trying to approve
