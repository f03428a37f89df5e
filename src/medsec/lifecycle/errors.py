"""Errors of the lifecycle subsystem (SM-4)::

Error
└── LifecycleError
    ├── EndOfLifeDataError     a product file (endoflife.date format) that breaks the schema rules
    ├── UnknownCycleError      no release cycle of a product matches a component version
    ├── AmbiguousCycleError    several cycles match and nothing tells them apart
    ├── OverrideError          an override without evidence, or two overrides for one cycle
    └── PlanError              inputs that cannot make a lifecycle or legacy plan
"""

from __future__ import annotations

from medsec.errors import Error


class LifecycleError(Error):
    """Base for end-of-life / end-of-support data and plans."""


class EndOfLifeDataError(LifecycleError):
    """A product file breaks the endoflife.date schema rules; names the file and the field."""

    def __init__(self, source: str, field: str, message: str) -> None:
        super().__init__(f"{source}: {field}: {message}")
        self.source = source
        self.field = field


class UnknownCycleError(LifecycleError):
    """No release cycle matches the version."""


class AmbiguousCycleError(LifecycleError):
    """Several release cycles match the version; the caller must name the cycle."""

    def __init__(self, message: str, candidates: tuple[str, ...]) -> None:
        super().__init__(message)
        self.candidates = candidates

    def diagnostics(self) -> str:
        return f"{self} (candidates: {', '.join(self.candidates)}); name the cycle explicitly"


class OverrideError(LifecycleError):
    """An override is malformed, lacks evidence, or conflicts with another one."""


class PlanError(LifecycleError):
    """The inputs cannot make a consistent lifecycle or legacy plan."""
