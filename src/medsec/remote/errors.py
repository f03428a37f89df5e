"""Errors of remote maintenance, grouped by fault.

Every refusal carries a stable machine-readable ``code`` (the same string the
gateway writes to the engineer and the device writes to its access log)::

    RemoteSessionError                  medsec.errors.Error
    ├── SessionRequestInvalid           a request, report or policy a person gave is unusable
    ├── SessionStateError               the session's state forbids the operation
    ├── TicketError                     a session ticket the device was handed does not hold
    ├── CertificateError                an SSH certificate is wrong for the session
    ├── AccessRefused                   the gateway or the device refuses an engineer's request
    ├── RecordingError                  a session recording is malformed or was changed
    └── GatewayTransportError           the SSH connection itself failed
"""

from __future__ import annotations

from medsec.errors import Error


class RemoteSessionError(Error):
    """Base of remote-maintenance errors; ``code`` is stable and machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def diagnostics(self) -> str:
        return f"{self.code}: {self}"


class SessionRequestInvalid(RemoteSessionError):
    """A session request, approval, work report or policy is unusable as given."""


class SessionStateError(RemoteSessionError):
    """The session's state (or who is asking) forbids the transition."""


class TicketError(RemoteSessionError):
    """A session ticket does not verify for this device, time or capability."""


class CertificateError(RemoteSessionError):
    """An SSH user certificate is not the one this session needs."""


class AccessRefused(RemoteSessionError):
    """The gateway or the device refused an engineer's request."""


class RecordingError(RemoteSessionError):
    """A session recording is malformed or does not match its hash."""


class GatewayTransportError(RemoteSessionError):
    """The SSH connection between device, gateway and engineer failed."""
