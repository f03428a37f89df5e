"""Errors raised by :mod:`medsec.vulns`, grouped by fault::

VulnError
├── FeedDataError             a feed file or record that is not what its format promises
│   ├── FeedFormatError       the whole file is unusable (not JSON, wrong top-level shape)
│   └── FeedRecordError       one record is malformed; names the file, record and field
├── FeedTransportError        a feed file or archive cannot be read (I/O, size limit, bad zip)
├── VersionError              a version string or scheme medsec cannot order
│   ├── UnsupportedEcosystemError
│   └── InvalidVersionError
├── CpeError                  a CPE 2.3 formatted string that does not parse
└── VulnStateError            local state given to a pure function is inconsistent
"""

from __future__ import annotations

from medsec.errors import Error


class VulnError(Error):
    """Base for vulnerability feed, matching and priority failures."""


class FeedDataError(VulnError):
    """Feed content is not what its format promises."""


class FeedFormatError(FeedDataError):
    """A feed file as a whole cannot be used."""

    def __init__(self, file: str, message: str) -> None:
        super().__init__(f"{file}: {message}")
        self.file = file


class FeedRecordError(FeedDataError):
    """One record of a feed is malformed.

    ``str()`` reads ``UBUNTU-CVE-2025-6297.json: severity[1].type missing``.
    """

    def __init__(self, file: str, record: str | None, field: str, problem: str) -> None:
        super().__init__(f"{file}: {field} {problem}" if field else f"{file}: {problem}")
        self.file = file
        self.record = record
        self.field = field
        self.problem = problem

    def diagnostics(self) -> str:
        where = f"{self.file} (record {self.record})" if self.record else self.file
        return f"{where}: {self.field} {self.problem}".rstrip()


class FeedTransportError(VulnError):
    """A feed source cannot be read."""


class VersionError(VulnError):
    """A version cannot be ordered."""


class UnsupportedEcosystemError(VersionError):
    """No version ordering is known for this ecosystem."""

    def __init__(self, ecosystem: str) -> None:
        super().__init__(f"no version ordering for ecosystem {ecosystem!r}")
        self.ecosystem = ecosystem

    def diagnostics(self) -> str:
        return f"{self}; supported: see medsec.vulns.versions.supported_ecosystems()"


class InvalidVersionError(VersionError):
    """A version string is not valid in its scheme."""

    def __init__(self, scheme: str, version: str, reason: str) -> None:
        super().__init__(f"{version!r} is not a valid {scheme} version: {reason}")
        self.scheme = scheme
        self.version = version
        self.reason = reason


class CpeError(VulnError):
    """A CPE 2.3 formatted string does not parse."""


class VulnStateError(VulnError):
    """State handed to a pure function is inconsistent (e.g. a finding for an unknown release)."""
