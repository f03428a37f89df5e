"""Errors of ``medsec.sbom``, grouped by fault::

    SbomError
    ├── MalformedSbomError      bad data: not JSON/XML, wrong document shape (file, line, field)
    │   └── UnsupportedSbomError  a format or spec version medsec does not read
    └── SbomSourceError         local state: a file or root filesystem that cannot be read

Per-component faults (a bad purl, a missing version) are never raised: they become
:class:`medsec.sbom.model.ComponentIssue` values on the component (SM-3, 附属書A).
"""

from __future__ import annotations

from medsec.errors import Error


class SbomError(Error):
    """Base for SBOM failures."""


class MalformedSbomError(SbomError):
    """A document that cannot be read as an SBOM at all; says where (file, line, column, field)."""

    def __init__(
        self,
        message: str,
        *,
        source: str,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
    ) -> None:
        where = source
        if line is not None:
            where += f", line {line}"
            if column is not None:
                where += f", column {column}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line
        self.column = column
        self.field = field


class UnsupportedSbomError(MalformedSbomError):
    """A well-formed document in a format or spec version that medsec does not read."""


class SbomSourceError(SbomError):
    """A local file or device root filesystem that cannot be read."""
