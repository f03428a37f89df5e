"""Errors of the advisories subsystem::

Error
└── AdvisoryError
    ├── AdvisoryInputError        triage or document values that cannot make a valid advisory
    ├── CsafValidationError       a document that fails a CSAF 2.0 mandatory test; ``failures`` lists them
    ├── PublicationError          the provider tree cannot be written or is inconsistent
    ├── AdvisoryIntegrityError    a published file whose .sha512 does not match
    └── AdvisorySignatureError    an .asc that does not verify (also a medsec.errors.SignatureError)
"""

from __future__ import annotations

from medsec.errors import Error, SignatureError


class AdvisoryError(Error):
    """Base for advisory generation and publication."""


class AdvisoryInputError(AdvisoryError):
    """The values given cannot make a valid advisory."""


class CsafValidationError(AdvisoryError):
    """A CSAF document fails one or more mandatory tests (CSAF 2.0 section 6.1)."""

    def __init__(self, failures: tuple[tuple[str, str, str], ...]) -> None:
        super().__init__(f"{len(failures)} CSAF mandatory test failure(s)")
        self.failures = failures  # (test id, JSON pointer, message)

    def diagnostics(self) -> str:
        return "\n".join([str(self), *(f"  {t} {path}: {msg}" for t, path, msg in self.failures)])


class PublicationError(AdvisoryError):
    """The provider tree cannot be written or is inconsistent."""


class AdvisoryIntegrityError(AdvisoryError):
    """A published advisory does not match its .sha512."""


class AdvisorySignatureError(AdvisoryError, SignatureError):
    """A published advisory's OpenPGP signature does not verify."""
