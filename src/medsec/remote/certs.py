"""The maintenance SSH CA: short-lived OpenSSH user certificates for one approved session.

Certificate layout (OpenSSH PROTOCOL.certkeys):

* key id ``<engineer>/<session-id>``; the only principal is the session id, and
  the engineer logs in to the gateway with the session id as user name, so a
  certificate for one session can never open another;
* valid only inside the approved window (clipped to ``max_lifetime``);
* extensions: ``permit-pty`` only when the shell is approved,
  ``permit-port-forwarding`` only when a port forward is approved; never
  ``permit-agent-forwarding``, ``permit-X11-forwarding`` or ``permit-user-rc``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from asyncssh.public_key import SSHOpenSSHCertificate

from medsec.crypto.keys import write_private_file
from medsec.remote.errors import CertificateError
from medsec.remote.session import MaintenanceSession, SessionId, SessionState, check_session_id

DEFAULT_MAX_LIFETIME = 4 * 3600
_FORBIDDEN_EXTENSIONS = ("permit-agent-forwarding", "permit-X11-forwarding", "permit-user-rc")


@dataclass(frozen=True)
class SessionCertificate:
    """What a verified certificate says about its session."""

    session_id: SessionId
    engineer: str
    valid_after: int
    valid_before: int
    permit_pty: bool
    permit_port_forwarding: bool


class MaintenanceCA:
    """Holds the CA key; issues certificates only for approved, in-window sessions."""

    def __init__(self, key: asyncssh.SSHKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> MaintenanceCA:
        return cls(asyncssh.generate_private_key("ssh-ed25519", comment="medsec maintenance CA"))

    @classmethod
    def load(cls, path: Path, passphrase: str | None = None) -> MaintenanceCA:
        try:
            return cls(asyncssh.read_private_key(path, passphrase))
        except (OSError, asyncssh.KeyImportError) as e:
            raise CertificateError("ca_key_unreadable", f"cannot load the maintenance CA key {path}: {e}") from e

    def save(self, path: Path, passphrase: str | None = None) -> None:
        write_private_file(path, self._key.export_private_key("openssh", passphrase))

    @property
    def public_key(self) -> asyncssh.SSHKey:
        return self._key.convert_to_public()

    def public_key_line(self) -> str:
        """The ``ssh-ed25519 AAAA…`` line for a ``@cert-authority`` or TrustedUserCAKeys entry."""
        return bytes(self.public_key.export_public_key("openssh")).decode("ascii").strip()

    def issue(
        self,
        session: MaintenanceSession,
        engineer_key: asyncssh.SSHKey,
        now: int,
        *,
        max_lifetime: int = DEFAULT_MAX_LIFETIME,
    ) -> asyncssh.SSHCertificate:
        """A user certificate for ``session``, which must be approved (or an active emergency) and in its window."""
        if session.state not in (SessionState.APPROVED, SessionState.ACTIVE):
            raise CertificateError("session_not_approved", f"session {session.id} is {session.state.value}")
        if session.state is SessionState.ACTIVE and not (session.approved or session.emergency):
            raise CertificateError("session_not_approved", f"session {session.id} has no approval")
        req = session.request
        if now >= req.window_end:
            raise CertificateError("window_closed", f"the window of session {session.id} has ended")
        valid_after = max(req.window_start, now - 60)
        valid_before = min(req.window_end, max(now, req.window_start) + max_lifetime)
        return self.sign(
            engineer_key,
            engineer=req.engineer,
            session_id=session.id,
            valid_after=valid_after,
            valid_before=valid_before,
            permit_pty=req.capabilities.shell,
            permit_port_forwarding=bool(req.capabilities.ports),
        )

    def sign(
        self,
        engineer_key: asyncssh.SSHKey,
        *,
        engineer: str,
        session_id: SessionId,
        valid_after: int,
        valid_before: int,
        permit_pty: bool,
        permit_port_forwarding: bool,
    ) -> asyncssh.SSHCertificate:
        """The raw signing step, without the session checks of :meth:`issue`."""
        return self._key.generate_user_certificate(
            engineer_key,
            f"{engineer}/{session_id}",
            principals=[session_id],
            valid_after=valid_after,
            valid_before=valid_before,
            permit_x11_forwarding=False,
            permit_agent_forwarding=False,
            permit_port_forwarding=permit_port_forwarding,
            permit_pty=permit_pty,
            permit_user_rc=False,
            touch_required=False,
        )


def export_certificate(cert: asyncssh.SSHCertificate) -> bytes:
    """The ``-cert.pub`` file content OpenSSH reads with ``CertificateFile``."""
    return bytes(cert.export_certificate("openssh"))


def verify_session_certificate(
    cert: asyncssh.SSHCertificate | bytes,
    ca_key: asyncssh.SSHKey,
    session_id: str,
    now: int,
) -> SessionCertificate:
    """Check that ``cert`` is a CA-signed user certificate for ``session_id`` valid at ``now``."""
    if isinstance(cert, bytes):
        try:
            cert = asyncssh.import_certificate(cert)
        except (asyncssh.KeyImportError, ValueError) as e:
            raise CertificateError("malformed_certificate", f"not an OpenSSH certificate: {e}") from e
    if not isinstance(cert, SSHOpenSSHCertificate):
        raise CertificateError("malformed_certificate", "only OpenSSH certificates are accepted")
    if cert.signing_key.public_data != ca_key.convert_to_public().public_data:
        raise CertificateError("unknown_ca", "the certificate is not signed by the maintenance CA")
    fields = _cert_fields(cert.public_data)
    if fields.cert_type != _CERT_TYPE_USER:
        raise CertificateError("malformed_certificate", "not a user certificate")
    sid = check_session_id(session_id)
    engineer, sep, key_session = fields.key_id.partition("/")
    if list(cert.principals) != [sid] or not sep or key_session != sid:
        raise CertificateError(
            "certificate_wrong_session", f"certificate {fields.key_id!r} is not for session {session_id}"
        )
    if now < fields.valid_after:
        raise CertificateError("certificate_not_yet_valid", "the certificate is not valid yet")
    if now >= fields.valid_before:
        raise CertificateError("certificate_expired", "the certificate has expired")
    options = cert.options
    for name in _FORBIDDEN_EXTENSIONS:
        if options.get(name):
            raise CertificateError("certificate_too_permissive", f"the certificate grants {name}")
    return SessionCertificate(
        session_id=sid,
        engineer=engineer,
        valid_after=fields.valid_after,
        valid_before=fields.valid_before,
        permit_pty=bool(options.get("permit-pty")),
        permit_port_forwarding=bool(options.get("permit-port-forwarding")),
    )


_CERT_TYPE_USER = 1
# Number of length-prefixed public-key fields after the nonce, per certificate type (PROTOCOL.certkeys).
_KEY_FIELDS = {
    "ssh-ed25519-cert-v01@openssh.com": 1,
    "ssh-rsa-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": 2,
}


@dataclass(frozen=True)
class _CertFields:
    cert_type: int
    key_id: str
    valid_after: int
    valid_before: int


def _cert_fields(blob: bytes) -> _CertFields:
    """Read type, key id and validity from a certificate blob (PROTOCOL.certkeys)."""
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(blob):
            raise CertificateError("malformed_certificate", "certificate is truncated")
        out = blob[pos : pos + n]
        pos += n
        return out

    def string() -> bytes:
        return take(struct.unpack(">I", take(4))[0])

    try:
        algorithm = string().decode("ascii")
    except UnicodeDecodeError as e:
        raise CertificateError("malformed_certificate", "certificate algorithm is not ASCII") from e
    if algorithm not in _KEY_FIELDS:
        raise CertificateError("malformed_certificate", f"unsupported certificate type {algorithm}")
    string()  # nonce
    for _ in range(_KEY_FIELDS[algorithm]):
        string()
    take(8)  # serial
    (cert_type,) = struct.unpack(">I", take(4))
    try:
        key_id = string().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CertificateError("malformed_certificate", "certificate key id is not UTF-8") from e
    string()  # principals (asyncssh decodes them)
    valid_after, valid_before = struct.unpack(">QQ", take(16))
    return _CertFields(cert_type, key_id, valid_after, valid_before)
