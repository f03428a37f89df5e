"""The maintenance-session life cycle as a pure state machine (RA-1, RA-3, RA-5).

A session is a frozen value; every transition takes the acting person and the
time (the clock is the caller's) and returns the new session together with the
:class:`SessionEvent` to append to the audit log. Illegal transitions raise
:class:`~medsec.remote.errors.SessionStateError` with a specific ``code``::

    requested ──approve (N of M)──▶ approved ──start──▶ active ──end──▶ ended ──report──▶ reported ──confirm──▶ closed
        │  └──reject──▶ rejected                                                              (accepted / rejected /
        │                                                                                       follow_up_needed)
        └──start (emergency only, approved afterwards within 24 h)──▶ active
    requested / approved / active ──revoke──▶ revoked
"""

from __future__ import annotations

import dataclasses
import enum
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NewType

from medsec.remote.errors import SessionRequestInvalid, SessionStateError

SessionId = NewType("SessionId", str)

HOUR = 3600
DEFAULT_MAX_WINDOW = 4 * HOUR
HARD_MAX_WINDOW = 24 * HOUR  # never longer, whatever the policy says
EMERGENCY_APPROVAL_DEADLINE = 24 * HOUR
MAX_TEXT = 4000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_SESSION_ID = re.compile(r"ms-[0-9a-f]{16,64}")


class SessionState(enum.StrEnum):
    REQUESTED = "requested"
    APPROVED = "approved"
    REJECTED = "rejected"
    ACTIVE = "active"
    ENDED = "ended"
    REPORTED = "reported"
    CLOSED = "closed"
    REVOKED = "revoked"


class Outcome(enum.StrEnum):
    """The hospital responsible person's end-of-work decision (RA-3)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FOLLOW_UP_NEEDED = "follow_up_needed"


def new_session_id() -> SessionId:
    return SessionId("ms-" + secrets.token_hex(12))


def check_session_id(value: str) -> SessionId:
    if not _SESSION_ID.fullmatch(value):
        raise SessionRequestInvalid("invalid_session_id", f"{value!r} is not a session id (ms-<hex>)")
    return SessionId(value)


def check_name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise SessionRequestInvalid("invalid_name", f"{what} {value!r} must be 1-128 of [A-Za-z0-9._@-]")
    return value


def _check_text(value: str, what: str) -> str:
    if not value.strip():
        raise SessionRequestInvalid("missing_text", f"{what} must not be empty")
    if len(value) > MAX_TEXT:
        raise SessionRequestInvalid("text_too_long", f"{what} is longer than {MAX_TEXT} characters")
    return value


@dataclass(frozen=True)
class PortForward:
    """A named device-local TCP port the engineer may reach (e.g. ``dicom`` on 104)."""

    name: str
    port: int

    def __post_init__(self) -> None:
        check_name(self.name, "port name")
        if not 1 <= self.port <= 65535:
            raise SessionRequestInvalid("invalid_port", f"port {self.port} is outside 1..65535")


@dataclass(frozen=True)
class Capabilities:
    """What the engineer may do: a restricted shell, file transfer, forwards to named ports."""

    shell: bool = True
    file_transfer: bool = False
    ports: tuple[PortForward, ...] = ()

    def __post_init__(self) -> None:
        if len({p.port for p in self.ports}) != len(self.ports):
            raise SessionRequestInvalid("duplicate_port", "a port is listed twice")
        if not (self.shell or self.file_transfer or self.ports):
            raise SessionRequestInvalid("no_capability", "a session must ask for at least one capability")

    @property
    def port_numbers(self) -> frozenset[int]:
        return frozenset(p.port for p in self.ports)

    def to_json(self) -> dict[str, Any]:
        return {
            "shell": self.shell,
            "file_transfer": self.file_transfer,
            "ports": [{"name": p.name, "port": p.port} for p in self.ports],
        }


@dataclass(frozen=True)
class SessionPolicy:
    """Per-hospital rules: who may approve, how many must, how long windows and confirmations may take."""

    approvers: frozenset[str]
    approvals_required: int = 1
    max_window: int = DEFAULT_MAX_WINDOW
    escalate_after: int = 24 * HOUR
    emergency_allowed: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.approvals_required <= len(self.approvers):
            raise SessionRequestInvalid(
                "invalid_policy",
                f"{self.approvals_required} approvals required but {len(self.approvers)} approvers configured",
            )
        if not 0 < self.max_window <= HARD_MAX_WINDOW:
            raise SessionRequestInvalid("invalid_policy", "the maximum window must be between 1 s and 24 h")
        if self.escalate_after <= 0:
            raise SessionRequestInvalid("invalid_policy", "escalate_after must be positive")


@dataclass(frozen=True)
class SessionRequest:
    """What the engineer asks for and explains before the work (RA-5)."""

    device_serial: str
    engineer: str
    purpose: str
    planned_work: str
    expected_impact: str
    expected_downtime_minutes: int
    rollback: str
    capabilities: Capabilities
    window_start: int
    window_end: int
    emergency: bool = False

    def __post_init__(self) -> None:
        check_name(self.device_serial, "device serial")
        check_name(self.engineer, "engineer")
        for name in ("purpose", "planned_work", "expected_impact", "rollback"):
            _check_text(getattr(self, name), name)
        if self.expected_downtime_minutes < 0:
            raise SessionRequestInvalid("invalid_downtime", "expected downtime must not be negative")
        if self.window_end <= self.window_start:
            raise SessionRequestInvalid("invalid_window", "the window must end after it starts")
        if self.window_end - self.window_start > HARD_MAX_WINDOW:
            raise SessionRequestInvalid("window_too_long", "a maintenance window is never longer than 24 h")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["capabilities"] = self.capabilities.to_json()
        return data


@dataclass(frozen=True)
class WorkReport:
    """The engineer's explanation after the work (RA-5)."""

    work_done: str
    results: str
    verification: str

    def __post_init__(self) -> None:
        _check_text(self.work_done, "work_done")
        _check_text(self.results, "results")
        _check_text(self.verification, "verification")


@dataclass(frozen=True)
class Approval:
    approver: str
    at: int
    comment: str = ""


@dataclass(frozen=True)
class Confirmation:
    by: str
    at: int
    outcome: Outcome
    comment: str = ""


@dataclass(frozen=True)
class SessionEvent:
    """One audit-log entry produced by a transition."""

    kind: str
    session_id: SessionId
    at: int
    actor: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "session": self.session_id, "at": self.at, "actor": self.actor, **self.details}


@dataclass(frozen=True)
class MaintenanceSession:
    """A session and everything that happened to it; change it only through its transitions."""

    id: SessionId
    request: SessionRequest
    policy: SessionPolicy
    requested_at: int
    state: SessionState = SessionState.REQUESTED
    approvals: tuple[Approval, ...] = ()
    rejected_by: str | None = None
    started_at: int | None = None
    ended_at: int | None = None
    end_reason: str | None = None
    revoked_by: str | None = None
    report: WorkReport | None = None
    reported_at: int | None = None
    confirmation: Confirmation | None = None
    escalated_at: int | None = None
    emergency_overdue: bool = False

    @property
    def emergency(self) -> bool:
        return self.request.emergency

    @property
    def approved(self) -> bool:
        return len(self.approvals) >= self.policy.approvals_required

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(a.approver for a in self.approvals)

    @property
    def emergency_deadline(self) -> int:
        return self.requested_at + EMERGENCY_APPROVAL_DEADLINE

    def in_window(self, now: int) -> bool:
        return self.request.window_start <= now < self.request.window_end

    def _event(self, kind: str, at: int, actor: str, **details: Any) -> SessionEvent:
        flags = {"emergency": True} if self.emergency else {}
        return SessionEvent(kind, self.id, at, actor, {**flags, **details})

    def _require(self, code: str, *states: SessionState) -> None:
        if self.state not in states:
            allowed = ", ".join(s.value for s in states)
            raise SessionStateError(code, f"session {self.id} is {self.state.value}; this needs {allowed}")

    # -- transitions --------------------------------------------------------------

    def approve(self, approver: str, now: int, comment: str = "") -> tuple[MaintenanceSession, SessionEvent]:
        """Record one hospital approval; the session is approved once N of M have approved."""
        if approver == self.request.engineer:
            raise SessionStateError("self_approval", "the requesting engineer cannot approve their own session")
        if approver not in self.policy.approvers:
            raise SessionStateError("not_an_approver", f"{approver} is not an approver for this device")
        if approver in self.approvers:
            raise SessionStateError("duplicate_approval", f"{approver} has already approved this session")
        if self.emergency and self.state in (SessionState.ACTIVE, SessionState.ENDED, SessionState.REPORTED):
            # Emergency sessions are approved afterwards, within 24 h (RA-1).
            if now > self.emergency_deadline:
                raise SessionStateError(
                    "emergency_approval_overdue", "an emergency session must be approved within 24 h of its request"
                )
        else:
            self._require("illegal_transition", SessionState.REQUESTED)
            if now >= self.request.window_end:
                raise SessionStateError("window_passed", "the requested window has already ended")
        approvals = (*self.approvals, Approval(approver, now, comment))
        state = self.state
        if len(approvals) >= self.policy.approvals_required and state is SessionState.REQUESTED:
            state = SessionState.APPROVED
        new = dataclasses.replace(self, approvals=approvals, state=state)
        kind = "session.approved" if new.approved and not self.approved else "session.approval_recorded"
        return new, self._event(
            kind, now, approver, approvals=len(approvals), required=self.policy.approvals_required, comment=comment
        )

    def reject(self, approver: str, now: int, reason: str) -> tuple[MaintenanceSession, SessionEvent]:
        self._require("illegal_transition", SessionState.REQUESTED, SessionState.APPROVED)
        if approver not in self.policy.approvers:
            raise SessionStateError("not_an_approver", f"{approver} is not an approver for this device")
        _check_text(reason, "reason")
        new = dataclasses.replace(self, state=SessionState.REJECTED, rejected_by=approver)
        return new, self._event("session.rejected", now, approver, reason=reason)

    def start(self, now: int) -> tuple[MaintenanceSession, SessionEvent]:
        """The engineer's first connection reached the device."""
        if self.emergency and self.state is SessionState.REQUESTED:
            if not self.policy.emergency_allowed:
                raise SessionStateError("emergency_not_allowed", "this hospital does not allow emergency sessions")
        else:
            if self.state is SessionState.REQUESTED:
                raise SessionStateError("not_approved", f"session {self.id} has not been approved")
            self._require("illegal_transition", SessionState.APPROVED)
        if not self.in_window(now):
            raise SessionStateError("outside_window", "the session can only start inside its window")
        new = dataclasses.replace(self, state=SessionState.ACTIVE, started_at=now)
        return new, self._event("session.started", now, self.request.engineer)

    def end(self, now: int, reason: str = "completed") -> tuple[MaintenanceSession, SessionEvent]:
        self._require("illegal_transition", SessionState.ACTIVE)
        new = dataclasses.replace(self, state=SessionState.ENDED, ended_at=now, end_reason=reason)
        return new, self._event("session.ended", now, self.request.engineer, reason=reason)

    def revoke(self, by: str, now: int, reason: str) -> tuple[MaintenanceSession, SessionEvent]:
        """The hospital stops the session; live connections must close within 5 s (RA-1)."""
        self._require("illegal_transition", SessionState.REQUESTED, SessionState.APPROVED, SessionState.ACTIVE)
        _check_text(reason, "reason")
        was_active = self.state is SessionState.ACTIVE
        new = dataclasses.replace(
            self,
            state=SessionState.REVOKED,
            revoked_by=by,
            ended_at=now if was_active else self.ended_at,
            end_reason="revoked" if was_active else self.end_reason,
        )
        return new, self._event("session.revoked", now, by, reason=reason, was_active=was_active)

    def submit_report(self, engineer: str, now: int, report: WorkReport) -> tuple[MaintenanceSession, SessionEvent]:
        if engineer != self.request.engineer:
            raise SessionStateError("not_the_engineer", "only the session's engineer submits its work report")
        if self.state is SessionState.REVOKED and self.started_at is not None and self.report is None:
            pass  # a revoked session that did work still owes its report (RA-5)
        else:
            self._require("illegal_transition", SessionState.ENDED)
        state = SessionState.REPORTED if self.state is SessionState.ENDED else self.state
        new = dataclasses.replace(self, report=report, reported_at=now, state=state)
        return new, self._event("session.reported", now, engineer, **dataclasses.asdict(report))

    def confirm_end(
        self, by: str, now: int, outcome: Outcome, comment: str = ""
    ) -> tuple[MaintenanceSession, SessionEvent]:
        """The hospital responsible person confirms the end of the work (RA-3)."""
        self._require("illegal_transition", SessionState.REPORTED)
        if by not in self.policy.approvers:
            raise SessionStateError("not_an_approver", f"{by} is not a responsible person for this device")
        if by == self.request.engineer:
            raise SessionStateError("self_approval", "the engineer cannot confirm their own work")
        if self.emergency and not self.approved:
            raise SessionStateError("emergency_not_approved", "approve the emergency session before confirming it")
        if outcome is Outcome.REJECTED and not comment.strip():
            raise SessionRequestInvalid("missing_text", "say why the work is not accepted")
        conf = Confirmation(by, now, outcome, comment)
        new = dataclasses.replace(self, state=SessionState.CLOSED, confirmation=conf)
        return new, self._event("session.confirmed", now, by, outcome=outcome.value, comment=comment)

    def check_overdue(self, now: int) -> tuple[MaintenanceSession, list[SessionEvent]]:
        """Escalate a session whose end is unconfirmed too long, or an emergency not approved in 24 h."""
        events: list[SessionEvent] = []
        new = self
        if (
            self.escalated_at is None
            and self.state in (SessionState.ENDED, SessionState.REPORTED)
            and self.ended_at is not None
            and now - self.ended_at >= self.policy.escalate_after
        ):
            new = dataclasses.replace(new, escalated_at=now)
            events.append(self._event("session.escalated", now, "system", waiting_seconds=now - self.ended_at))
        if self.emergency and not self.approved and not self.emergency_overdue and now > self.emergency_deadline:
            new = dataclasses.replace(new, emergency_overdue=True)
            events.append(self._event("session.emergency_approval_overdue", now, "system"))
        return new, events


def request_session(
    request: SessionRequest, policy: SessionPolicy, now: int, session_id: SessionId | None = None
) -> tuple[MaintenanceSession, SessionEvent]:
    """Open a new session request, checking the window against the hospital's policy."""
    if request.window_end - request.window_start > policy.max_window:
        raise SessionRequestInvalid(
            "window_too_long", f"the window is longer than the allowed {policy.max_window // 60} minutes"
        )
    if request.window_end <= now:
        raise SessionRequestInvalid("invalid_window", "the window has already ended")
    if request.emergency and not policy.emergency_allowed:
        raise SessionStateError("emergency_not_allowed", "this hospital does not allow emergency sessions")
    session = MaintenanceSession(id=session_id or new_session_id(), request=request, policy=policy, requested_at=now)
    details = request.to_json()
    details.pop("engineer")
    return session, session._event("session.requested", now, request.engineer, **details)
