from __future__ import annotations

import dataclasses

import asyncssh
import pytest

from medsec.crypto.keys import SigningKey
from medsec.remote.certs import MaintenanceCA, verify_session_certificate
from medsec.remote.errors import CertificateError, SessionRequestInvalid, SessionStateError, TicketError
from medsec.remote.session import (
    Capabilities,
    Outcome,
    PortForward,
    SessionPolicy,
    SessionState,
    WorkReport,
    request_session,
)
from medsec.remote.ticket import MemoryNonceStore, issue_ticket, require_capability, verify_ticket

from .world import ENGINEER, SERIAL, approve, make_session

NOW = 1_800_000_000
REPORT = WorkReport("replaced config", "pump runs", "self test passed")


@pytest.mark.req("RA-3")
@pytest.mark.req("RA-5")
def test_full_life_cycle_emits_an_event_per_transition() -> None:
    s = make_session(NOW)
    s, e1 = s.approve("dr.sato", NOW)
    s, e2 = s.start(NOW + 1)
    s, e3 = s.end(NOW + 100)
    s, e4 = s.submit_report(ENGINEER, NOW + 200, REPORT)
    s, e5 = s.confirm_end("ns.suzuki", NOW + 300, Outcome.ACCEPTED)
    assert s.state is SessionState.CLOSED
    assert [e.kind for e in (e1, e2, e3, e4, e5)] == [
        "session.approved",
        "session.started",
        "session.ended",
        "session.reported",
        "session.confirmed",
    ]
    assert e5.to_json()["outcome"] == "accepted"


@pytest.mark.req("RA-1")
def test_self_approval_and_unknown_approver_are_refused() -> None:
    s = make_session(NOW)
    policy = dataclasses.replace(s.policy, approvers=frozenset({ENGINEER, "dr.sato"}))
    s2 = dataclasses.replace(s, policy=policy)
    with pytest.raises(SessionStateError) as e:
        s2.approve(ENGINEER, NOW)
    assert e.value.code == "self_approval"
    with pytest.raises(SessionStateError) as e:
        s.approve("mallory", NOW)
    assert e.value.code == "not_an_approver"


@pytest.mark.req("RA-1")
def test_two_of_three_approvals() -> None:
    s = make_session(NOW)
    policy = SessionPolicy(approvers=frozenset({"a", "b", "c"}), approvals_required=2)
    s = dataclasses.replace(s, policy=policy)
    s, e = s.approve("a", NOW)
    assert s.state is SessionState.REQUESTED and e.kind == "session.approval_recorded"
    with pytest.raises(SessionStateError) as err:
        s.approve("a", NOW)
    assert err.value.code == "duplicate_approval"
    with pytest.raises(SessionStateError) as err:
        s.start(NOW)
    assert err.value.code == "not_approved"
    s, e = s.approve("b", NOW)
    assert s.state is SessionState.APPROVED and e.kind == "session.approved"


def test_window_limits() -> None:
    with pytest.raises(SessionRequestInvalid) as e:
        make_session(NOW, length=5 * 3600)
    assert e.value.code == "window_too_long"
    with pytest.raises(SessionRequestInvalid):
        SessionPolicy(approvers=frozenset({"a"}), max_window=25 * 3600)


@pytest.mark.req("RA-1")
def test_emergency_is_flagged_and_must_be_approved_within_24h() -> None:
    s = make_session(NOW)
    req = dataclasses.replace(s.request, emergency=True)
    s, ev = request_session(req, s.policy, NOW)
    assert ev.details["emergency"] is True
    s, ev = s.start(NOW)
    assert ev.details["emergency"] is True
    s, _ = s.end(NOW + 60)
    s, events = s.check_overdue(NOW + 25 * 3600)
    assert "session.emergency_approval_overdue" in [e.kind for e in events]
    with pytest.raises(SessionStateError) as e:
        s.approve("dr.sato", NOW + 25 * 3600)
    assert e.value.code == "emergency_approval_overdue"


@pytest.mark.req("RA-3")
def test_unconfirmed_session_escalates_once() -> None:
    s = approve(make_session(NOW), NOW)
    s, _ = s.start(NOW)
    s, _ = s.end(NOW + 10)
    s, events = s.check_overdue(NOW + 10 + s.policy.escalate_after)
    assert [e.kind for e in events] == ["session.escalated"]
    s, events = s.check_overdue(NOW + 10 + 2 * s.policy.escalate_after)
    assert events == []


def test_revocation_and_illegal_transitions() -> None:
    s = approve(make_session(NOW), NOW)
    s, _ = s.start(NOW)
    s, ev = s.revoke("dr.sato", NOW + 5, "clinical need")
    assert s.state is SessionState.REVOKED and ev.details["was_active"] is True
    with pytest.raises(SessionStateError) as e:
        s.start(NOW + 6)
    assert e.value.code == "illegal_transition"
    with pytest.raises(SessionStateError) as e:
        s.confirm_end("dr.sato", NOW, Outcome.ACCEPTED)
    assert e.value.code == "illegal_transition"


def _ticket_setup():  # type: ignore[no-untyped-def]
    key = SigningKey.generate()
    s = approve(make_session(NOW, ports=[104]), NOW)
    return key, s, issue_ticket(s, key)


@pytest.mark.req("RA-1")
@pytest.mark.parametrize(
    ("serial", "now", "code"),
    [
        ("SN-0002", NOW, "wrong_device"),
        (SERIAL, NOW + 7200, "ticket_expired"),
        (SERIAL, NOW - 3600, "ticket_not_yet_valid"),
    ],
)
def test_ticket_refusals(serial: str, now: int, code: str) -> None:
    key, _, ticket = _ticket_setup()
    with pytest.raises(TicketError) as e:
        verify_ticket(ticket, key.verify_key, serial, now, MemoryNonceStore())
    assert e.value.code == code


@pytest.mark.req("RA-1")
def test_ticket_replay_signature_and_capability() -> None:
    key, _, ticket = _ticket_setup()
    nonces = MemoryNonceStore()
    claims = verify_ticket(ticket, key.verify_key, SERIAL, NOW, nonces)
    require_capability(claims, "port_forward", 104)
    with pytest.raises(TicketError) as e:
        require_capability(claims, "port_forward", 22)
    assert e.value.code == "capability_not_granted"
    with pytest.raises(TicketError) as e:
        verify_ticket(ticket, key.verify_key, SERIAL, NOW, nonces)
    assert e.value.code == "ticket_replayed"
    forged = dataclasses.replace(ticket, payload=ticket.payload.replace(b'"ports":[104]', b'"ports":[22]'))
    with pytest.raises(TicketError) as e:
        verify_ticket(forged, key.verify_key, SERIAL, NOW, MemoryNonceStore())
    assert e.value.code == "bad_ticket_signature"


def test_unapproved_session_gets_no_ticket_or_certificate() -> None:
    s = make_session(NOW)
    with pytest.raises(TicketError):
        issue_ticket(s, SigningKey.generate())
    with pytest.raises(CertificateError) as e:
        MaintenanceCA.generate().issue(s, asyncssh.generate_private_key("ssh-ed25519"), NOW)
    assert e.value.code == "session_not_approved"


@pytest.mark.req("RA-1")
def test_certificate_is_bound_to_one_session_and_window() -> None:
    ca = MaintenanceCA.generate()
    user = asyncssh.generate_private_key("ssh-ed25519")
    s = approve(make_session(NOW, ports=[104]), NOW)
    cert = ca.issue(s, user, NOW)
    info = verify_session_certificate(cert, ca.public_key, s.id, NOW)
    assert info.engineer == ENGINEER and info.permit_pty and info.permit_port_forwarding
    other = approve(make_session(NOW), NOW)
    for sid, now, code in [(other.id, NOW, "certificate_wrong_session"), (s.id, NOW + 7200, "certificate_expired")]:
        with pytest.raises(CertificateError) as e:
            verify_session_certificate(cert, ca.public_key, sid, now)
        assert e.value.code == code
    with pytest.raises(CertificateError) as e:
        verify_session_certificate(cert, MaintenanceCA.generate().public_key, s.id, NOW)
    assert e.value.code == "unknown_ca"
    assert not cert.options.get("permit-agent-forwarding") and not cert.options.get("permit-X11-forwarding")  # type: ignore[attr-defined]


def test_no_pty_or_forwarding_unless_approved() -> None:
    ca = MaintenanceCA.generate()
    s = make_session(NOW)
    caps = Capabilities(shell=False, file_transfer=True, ports=())
    s = dataclasses.replace(s, request=dataclasses.replace(s.request, capabilities=caps))
    s = approve(s, NOW)
    info = verify_session_certificate(
        ca.issue(s, asyncssh.generate_private_key("ssh-ed25519"), NOW), ca.public_key, s.id, NOW
    )
    assert not info.permit_pty and not info.permit_port_forwarding
    assert PortForward("dicom", 104).port == 104
