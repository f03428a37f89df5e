"""Errors of device protection, grouped by fault below :class:`ProtectError`::

    ProtectError
    ├── FanotifyError          the kernel refused a fanotify call (errno and call named)
    ├── PolicyError            a protection, port or baseline policy is malformed or not signed by a trusted key
    ├── TrustDatabaseError     malformed, unsigned, for another product, or older than the one in use
    ├── IntegrityError         the integrity baseline cannot be built or checked
    └── PortPolicyError        nftables, interface or USB control could not be applied

A refused signature raises :class:`medsec.errors.SignatureError` from the envelope layer,
wrapped by the matching error above so callers see which document was refused.
"""

from __future__ import annotations

from medsec.errors import Error


class ProtectError(Error):
    """Base of all device-protection errors."""


class FanotifyError(ProtectError):
    """A fanotify system call failed; the message names the call and the errno."""


class PolicyError(ProtectError):
    """A signed protection policy is malformed, for another device model, or not signed by a trusted key."""


class TrustDatabaseError(ProtectError):
    """A trust database is malformed, unsigned, for another product, or a rollback."""


class IntegrityError(ProtectError):
    """The integrity baseline cannot be built, loaded or checked."""


class PortPolicyError(ProtectError):
    """The port, interface or USB policy could not be applied or read."""
