"""Errors of the update repository side (image repository, releases, director, key ceremonies).

Grouped by fault, below :class:`UpdateError`::

    UpdateError
    ├── RepositoryError             the local repository files are missing, damaged or inconsistent
    ├── ReleaseError                a release bundle is malformed or does not match what is signed
    │   └── ReleaseCounterNotIncreasing   a release_counter not above every signed one (SM-6)
    ├── KeyCeremonyError            wrong or too few keys for a signing step (threshold not met,
    │                               a key that is not the role's key, an unavailable key backend)
    └── DirectorError               per-device director metadata cannot be built as asked

Key files that cannot be read or decrypted raise :class:`medsec.errors.KeyFileError`.
"""

from __future__ import annotations

from medsec.errors import Error


class UpdateError(Error):
    """Base of all signed-update errors."""


class RepositoryError(UpdateError):
    """The local TUF repository is missing files, damaged or inconsistent."""


class ReleaseError(UpdateError):
    """A release bundle is malformed or does not match its signed target."""


class ReleaseCounterNotIncreasing(ReleaseError):
    """A release_counter that is not greater than every one signed for the product (SM-6)."""


class KeyCeremonyError(UpdateError):
    """The keys given for a signing step are wrong or below the role's threshold."""


class DirectorError(UpdateError):
    """Per-device director metadata cannot be built from the given values."""
