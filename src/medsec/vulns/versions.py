"""Ecosystem-correct version ordering.

Most schemes come from ``univers``. Debian (and Ubuntu, which uses dpkg ordering) is implemented here
from Debian Policy 5.6.12 and dpkg's ``parseversion``/``verrevcmp``: univers' Debian class accepts strings
dpkg rejects (``1.0-``, embedded blanks) and fails on a colon inside the upstream part, which Policy allows
when an epoch is present. tests/vulns/test_versions.py checks this module against ``dpkg --compare-versions``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from univers import versions as uv

from medsec.vulns.errors import InvalidVersionError, UnsupportedEcosystemError


class VersionKey(Protocol):
    """What a parsed version supports: total ordering within one scheme."""

    def __lt__(self, other: Any, /) -> bool: ...
    def __le__(self, other: Any, /) -> bool: ...
    def __gt__(self, other: Any, /) -> bool: ...
    def __ge__(self, other: Any, /) -> bool: ...


# --- Debian ---------------------------------------------------------------------------------------

_INT_MAX = 2**31 - 1  # dpkg stores the epoch in a C int
_SPACES = " \t\n\v\f\r"  # C isspace()
_ALNUM = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_UPSTREAM_CHARS = _ALNUM | frozenset(".-+~:")
_REVISION_CHARS = _ALNUM | frozenset(".+~")
_EPOCH = re.compile(r"[+-]?[0-9]+")  # what C strtol() accepts, whitespace already excluded
_SEGMENT = re.compile(r"([^0-9]*)([0-9]*)")

_Part = tuple[tuple[tuple[int, ...], int], ...]


def _byte_weight(b: int) -> int:
    # dpkg verrevcmp order() works on bytes: '~' before everything, even the end of a part; ASCII letters
    # before every other byte.
    if b == 0x7E:
        return -1
    if 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A:
        return b
    return b + 256


def _part_key(s: str) -> _Part:
    """A tuple key whose ordering equals dpkg's ``verrevcmp`` on one upstream or revision part.

    Each segment is (non-digit run as weights ending in 0, digit run as int); an exhausted string compares as
    an empty segment, which the trailing ``((0,), 0)`` provides.
    """
    segments: list[tuple[tuple[int, ...], int]] = []
    for lex, digits in _SEGMENT.findall(s):
        if not lex and not digits:
            continue
        segments.append(((*map(_byte_weight, lex.encode()), 0), int(digits) if digits else 0))
    empty = ((0,), 0)
    while len(segments) > 1 and segments[-1] == empty:
        segments.pop()
    if not segments:
        segments.append(empty)
    segments.append(empty)
    return tuple(segments)


@functools.total_ordering
@dataclass(frozen=True, eq=False)
class DebianVersion:
    """A parsed Debian version: ``[epoch:]upstream[-revision]``."""

    epoch: int
    upstream: str
    revision: str  # "" when absent (dpkg compares it as "0")

    @functools.cached_property
    def key(self) -> tuple[int, _Part, _Part]:
        return (self.epoch, _part_key(self.upstream), _part_key(self.revision))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DebianVersion):
            return NotImplemented
        return self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __lt__(self, other: DebianVersion) -> bool:
        return self.key < other.key

    def __str__(self) -> str:
        text = f"{self.epoch}:{self.upstream}" if self.epoch else self.upstream
        return f"{text}-{self.revision}" if self.revision else text


def parse_debian_version(text: str, *, strict: bool = True) -> DebianVersion:
    """Parse like dpkg ``parseversion``.

    dpkg errors always raise. dpkg *warnings* (upstream not starting with a digit, characters outside
    Policy 5.6.12) raise only when ``strict``; with ``strict=False`` the result orders exactly as
    ``dpkg --compare-versions``, which compares such versions after warning.
    """

    def bad(reason: str) -> InvalidVersionError:
        return InvalidVersionError("Debian", text, reason)

    s = text.strip(_SPACES)
    if not s:
        raise bad("version string is empty")
    if any(c in _SPACES for c in s):
        raise bad("version string has embedded spaces")
    epoch = 0
    rest = s
    if ":" in s:
        epoch_text, _, rest = s.partition(":")
        if not epoch_text:
            raise bad("epoch in version is empty")
        if not _EPOCH.fullmatch(epoch_text):
            raise bad("epoch in version is not number")
        epoch = int(epoch_text)
        if epoch < 0:
            raise bad("epoch in version is negative")
        if epoch > _INT_MAX:
            raise bad("epoch in version is too big")
        if not rest:
            raise bad("nothing after colon in version number")
    upstream, hyphen, revision = rest.rpartition("-")
    if not hyphen:
        upstream, revision = rest, ""
    elif not revision:
        raise bad("revision number is empty")
    if not upstream:
        raise bad("version number is empty")
    if not strict:
        return DebianVersion(epoch, upstream, revision)
    if not upstream[0].isascii() or not upstream[0].isdigit():
        raise bad("version number does not start with digit")
    if any(c not in _UPSTREAM_CHARS for c in upstream):
        raise bad("invalid character in version number")
    if any(c not in _REVISION_CHARS for c in revision):
        raise bad("invalid character in revision number")
    return DebianVersion(epoch, upstream, revision)


def compare_debian(a: str, b: str) -> int:
    """-1, 0 or 1, as ``dpkg --compare-versions a lt|eq|gt b`` would answer (raises where dpkg errors)."""
    va, vb = parse_debian_version(a, strict=False), parse_debian_version(b, strict=False)
    return (va > vb) - (va < vb)


# --- schemes --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class VersionScheme:
    """A named total order over version strings (compared by identity: each scheme is a module constant)."""

    name: str
    parser: Callable[[str], VersionKey]

    def parse(self, version: str) -> VersionKey:
        return _parse_cached(self, version)

    def compare(self, a: str, b: str) -> int:
        ka, kb = self.parse(a), self.parse(b)
        return -1 if ka < kb else (1 if ka > kb else 0)


def _univers(cls: type[uv.Version], scheme: str, *, unwrap: bool = True) -> Callable[[str], VersionKey]:
    """Parse with univers. ``unwrap`` keeps only the ordered value object (packaging, semantic_version...):
    comparing those directly avoids univers' attrs wrapper on every comparison, the matcher's hot path."""

    def parse(version: str) -> VersionKey:
        try:
            parsed = cls(version)
        except (uv.InvalidVersion, ValueError, TypeError, AttributeError) as e:
            raise InvalidVersionError(scheme, version, str(e)) from e
        key: VersionKey = parsed.value if unwrap else parsed
        return key

    return parse


@functools.lru_cache(maxsize=1 << 18)
def _parse_cached(scheme: VersionScheme, version: str) -> VersionKey:
    return scheme.parser(version)


def _parse_debian_lenient(version: str) -> DebianVersion:
    return parse_debian_version(version, strict=False)


# Matching follows dpkg itself: a version dpkg only warns about (installed packages can carry one) still orders.
DEBIAN = VersionScheme("Debian", _parse_debian_lenient)
PYPI = VersionScheme("PyPI", _univers(uv.PypiVersion, "PyPI"))
SEMVER = VersionScheme("SemVer", _univers(uv.SemverVersion, "SemVer"))
GO = VersionScheme("Go", _univers(uv.GolangVersion, "Go"))
MAVEN = VersionScheme("Maven", _univers(uv.MavenVersion, "Maven"))
NUGET = VersionScheme("NuGet", _univers(uv.NugetVersion, "NuGet"))
RUBYGEMS = VersionScheme("RubyGems", _univers(uv.RubygemsVersion, "RubyGems"))
COMPOSER = VersionScheme("Packagist", _univers(uv.ComposerVersion, "Packagist"))
# univers keeps an Alpine version's value as a plain str; only the wrapper orders it correctly.
ALPINE = VersionScheme("Alpine", _univers(uv.AlpineLinuxVersion, "Alpine", unwrap=False))
RPM = VersionScheme("RPM", _univers(uv.RpmVersion, "RPM"))

# OSV ecosystem name (without its ":<release>" suffix) -> ordering. OSV schema: ecosystems.json.
_ECOSYSTEM_SCHEMES: dict[str, VersionScheme] = {
    "PyPI": PYPI,
    "npm": SEMVER,
    "crates.io": SEMVER,
    "Hex": SEMVER,
    "Pub": SEMVER,
    "Go": GO,
    "Maven": MAVEN,
    "NuGet": NUGET,
    "RubyGems": RUBYGEMS,
    "Packagist": COMPOSER,
    "Debian": DEBIAN,
    "Ubuntu": DEBIAN,
    "Alpine": ALPINE,
    "Wolfi": ALPINE,
    "Chainguard": ALPINE,
    "Red Hat": RPM,
    "Rocky Linux": RPM,
    "AlmaLinux": RPM,
    "SUSE": RPM,
    "openSUSE": RPM,
    "Mageia": RPM,
    "Photon OS": RPM,
    "openEuler": RPM,
}


def ecosystem_base(ecosystem: str) -> str:
    """``Debian:9`` -> ``Debian``; ``Ubuntu:Pro:14.04:LTS`` -> ``Ubuntu``."""
    return ecosystem.split(":", 1)[0]


def supported_ecosystems() -> tuple[str, ...]:
    return tuple(sorted(_ECOSYSTEM_SCHEMES))


def scheme_for(ecosystem: str) -> VersionScheme:
    """The ordering of an OSV ecosystem; raises :class:`UnsupportedEcosystemError` when none is known."""
    try:
        return _ECOSYSTEM_SCHEMES[ecosystem_base(ecosystem)]
    except KeyError:
        raise UnsupportedEcosystemError(ecosystem) from None


def compare_versions(ecosystem: str, a: str, b: str) -> int:
    """-1, 0 or 1 under the ecosystem's ordering."""
    return scheme_for(ecosystem).compare(a, b)
