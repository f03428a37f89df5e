"""Errors of the traceability matrix, below :class:`TraceError`::

TraceError
├── CatalogueError     the requirement catalogue or the features map is malformed or inconsistent
├── ResultsError       a results file (matrix.json) cannot be read
└── GateFailed         a requirement has no passing test (``missing`` names them)
"""

from __future__ import annotations

from medsec.errors import Error


class TraceError(Error):
    """Base for traceability failures."""


class CatalogueError(TraceError):
    """The requirement catalogue or the features map is malformed or names an unknown requirement."""


class ResultsError(TraceError):
    """A test results file is missing, not JSON, or not in the matrix format."""


class GateFailed(TraceError):
    """Requirements without a passing test; a release is not ready while any remain."""

    def __init__(self, missing: tuple[str, ...], unknown: tuple[str, ...] = ()) -> None:
        self.missing = missing
        self.unknown = unknown
        parts = []
        if missing:
            parts.append("requirements without a passing test: " + ", ".join(missing))
        if unknown:
            parts.append("tests cite unknown requirement IDs: " + ", ".join(unknown))
        super().__init__("; ".join(parts))
