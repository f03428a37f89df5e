"""The medsec exception tree.

Every error medsec raises on purpose derives from :class:`Error`, which carries a
human-readable :meth:`Error.diagnostics` text. Below it there is one base per
subsystem; inside a subsystem, errors are grouped by fault::

    Error
    ├── UserInputError            bad arguments, malformed files given by a person
    ├── ConfigError               settings or local files that are missing or inconsistent
    ├── CryptoError
    │   ├── KeyFileError          a key file that cannot be read, decrypted or written
    │   └── SignatureError        a signature that does not verify
    ├── CanonicalEncodingError    a value that has no canonical JSON form
    ├── AuditLogError
    │   ├── ProofError            an inclusion or consistency proof that does not verify
    │   ├── CheckpointError       a checkpoint note that is malformed or wrongly signed
    │   ├── WitnessError          a witness refuses to cosign (fork, rollback, unknown log)
    │   ├── LogStoreError         the local log files are damaged or inconsistent
    │   └── ExportError           an exported log range that does not verify
    ├── ProtocolError             device <-> server messages (enrollment, check-in)
    │   └── CheckinRejected       the server refused a report; ``code`` says why
    ├── AgentError                the device agent's local state
    └── ServiceError              a server operation refused; ``code`` and ``status`` for the API
        ├── AuthenticationFailed  401: no, wrong or expired credentials
        ├── PermissionDenied      403: authenticated, but not allowed (role or tenant)
        ├── NotFound              404: no such object *visible to the caller*
        ├── Conflict              409: the object's state forbids the operation
        └── InvalidRequest        422: well-formed HTTP, unusable content

Subsystems with many errors keep their subtree next to their code, rooted here:
``medsec.updates.errors.UpdateError``, ``medsec.sbom.errors.SbomError``,
``medsec.vulns.errors.VulnError``, ``medsec.lifecycle.errors.LifecycleError``,
``medsec.advisories.errors.AdvisoryError``. Each derives from :class:`Error`, so
``except medsec.errors.Error`` catches them all and the CLI maps them to exit code 1.

Foreign exceptions are translated at the boundary with ``raise ... from e``.
"""

from __future__ import annotations


class Error(Exception):
    """Root of all medsec errors."""

    def diagnostics(self) -> str:
        """A text for people: what went wrong and, where known, what to do."""
        return str(self) or self.__class__.__name__


class UserInputError(Error):
    """A person gave medsec something it cannot use."""


class ConfigError(Error):
    """Settings or local files are missing or inconsistent."""


class CryptoError(Error):
    """Base for key handling and signature failures."""


class KeyFileError(CryptoError):
    """A key file cannot be read, decrypted or written."""


class SignatureError(CryptoError):
    """A signature does not verify."""


class CanonicalEncodingError(Error):
    """A value has no canonical JSON encoding (floats, non-string keys, ...)."""


class AuditLogError(Error):
    """Base for tamper-evident log failures."""


class ProofError(AuditLogError):
    """An inclusion or consistency proof does not verify."""


class CheckpointError(AuditLogError):
    """A checkpoint note is malformed or not signed by the expected key."""


class WitnessError(AuditLogError):
    """A witness refuses to cosign a checkpoint."""


class LogStoreError(AuditLogError):
    """The stored log is damaged or inconsistent with itself."""


class ExportError(AuditLogError):
    """An exported log range is malformed or does not verify."""


class ProtocolError(Error):
    """Base for device <-> server message failures."""


class CheckinRejected(ProtocolError):
    """The server refused a device report.

    ``code`` is the machine-readable reason (``bad_signature``, ``stale_nonce``,
    ``counter_not_increasing``, ...), the same string the HTTP API returns.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def diagnostics(self) -> str:
        return f"{self.code}: {self}"


class AgentError(Error):
    """The device agent's local state is unusable."""


class ServiceError(Error):
    """A server operation was refused. ``code`` is stable and machine-readable."""

    status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def diagnostics(self) -> str:
        return f"{self.code}: {self}"


class AuthenticationFailed(ServiceError):
    status = 401


class PermissionDenied(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class InvalidRequest(ServiceError):
    status = 422
