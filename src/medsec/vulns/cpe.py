"""CPE 2.3 formatted strings (NISTIR 7695 §6.2) and NVD configuration matching (NISTIR 7696 name matching,
NVD CVE API 2.0 ``configurations``).

Only used for components that have no package identity: operating systems, firmware, devices, platforms and
commercial applications. NVD gives no version scheme, so range bounds compare with :func:`cpe_version_key`,
a dotted/alphanumeric natural order.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from medsec.vulns.errors import CpeError
from medsec.vulns.model import CpeConfiguration, CpeMatch, CpeNode, Operator

ANY = "*"
NA = "-"
_FIELDS = (
    "part",
    "vendor",
    "product",
    "version",
    "update",
    "edition",
    "language",
    "sw_edition",
    "target_sw",
    "target_hw",
    "other",
)
_SPECIAL = set("\\!\"#$%&'()+,/:;<=>@[]^`{|}~?*")  # NISTIR 7695 6.2.2.2: quoted in a formatted string


def _split(text: str) -> list[str]:
    parts, current, escaped = [], [], False
    for c in text:
        if escaped:
            current.append("\\" + c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    if escaped:
        raise CpeError(f"{text!r}: ends in a lone backslash")
    parts.append("".join(current))
    return parts


def unescape(value: str) -> str:
    """The attribute value without CPE quoting (``1.1.0l-1\\~deb9u5`` -> ``1.1.0l-1~deb9u5``)."""
    return re.sub(r"\\(.)", r"\1", value)


def escape(value: str) -> str:
    """Quote the characters a formatted-string attribute must quote (NISTIR 7695 6.2.2.2)."""
    return "".join("\\" + c if c in _SPECIAL else c for c in value)


@dataclass(frozen=True)
class Cpe:
    """A CPE 2.3 name; attributes keep their formatted-string quoting, ``*`` is ANY and ``-`` is NA."""

    part: str
    vendor: str
    product: str
    version: str = ANY
    update: str = ANY
    edition: str = ANY
    language: str = ANY
    sw_edition: str = ANY
    target_sw: str = ANY
    target_hw: str = ANY
    other: str = ANY

    @classmethod
    def parse(cls, text: str) -> Cpe:
        if not text.startswith("cpe:2.3:"):
            raise CpeError(f"{text!r}: not a CPE 2.3 formatted string (must start with 'cpe:2.3:')")
        values = _split(text[len("cpe:2.3:") :])
        if len(values) != len(_FIELDS):
            raise CpeError(f"{text!r}: has {len(values)} attributes, CPE 2.3 needs {len(_FIELDS)}")
        if values[0] not in {"a", "o", "h", ANY}:
            raise CpeError(f"{text!r}: part must be a, o or h")
        if any(v == "" for v in values):
            raise CpeError(f"{text!r}: empty attribute (use * or -)")
        return cls(*(v.lower() for v in values))

    def to_fs(self) -> str:
        return "cpe:2.3:" + ":".join(getattr(self, f) for f in _FIELDS)

    def value(self, attribute: str) -> str:
        return unescape(getattr(self, attribute))

    @property
    def vendor_product(self) -> tuple[str, str]:
        return (self.vendor, self.product)


@functools.lru_cache(maxsize=1 << 16)
def parse_cpe(text: str) -> Cpe:
    """:meth:`Cpe.parse`, cached: NVD repeats the same criteria strings across many CVEs."""
    return Cpe.parse(text)


_NATURAL = re.compile(r"\d+|[a-z]+")


def cpe_version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order for NVD version bounds: numbers numerically, letters after numbers at the same place."""
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in _NATURAL.findall(unescape(version).lower()))


def _has_wildcard(value: str) -> bool:
    return re.search(r"(?<!\\)[*?]", value) is not None


def _attribute_matches(criteria: str, target: str) -> bool:
    # NISTIR 7696 table 6-2, relaxed where the SBOM side is unknown (ANY): the attribute does not rule it out.
    if ANY in (criteria, target):
        return True
    if NA in (criteria, target):
        return criteria == target
    if _has_wildcard(criteria):
        pattern = "".join(
            ".*" if tok == "*" else "." if tok == "?" else re.escape(unescape(tok))
            for tok in re.findall(r"\\.|\*|\?|[^\\*?]+", criteria)
        )
        return re.fullmatch(pattern, unescape(target)) is not None
    return unescape(criteria) == unescape(target)


def _version_in_range(match: CpeMatch, version: str) -> bool:
    key = cpe_version_key(version)
    if match.version_start_including and key < cpe_version_key(match.version_start_including):
        return False
    if match.version_start_excluding and key <= cpe_version_key(match.version_start_excluding):
        return False
    if match.version_end_including and key > cpe_version_key(match.version_end_including):
        return False
    return not (match.version_end_excluding and key >= cpe_version_key(match.version_end_excluding))


def cpe_matches(match: CpeMatch, target: Cpe, *, fallback_version: str | None = None) -> bool:
    """Whether one ``cpeMatch`` criteria (with its version bounds) covers the target CPE.

    ``fallback_version`` (the component's own version) stands in when the target CPE's version is ANY.
    A range needs a concrete version: an unknown version never satisfies one.
    """
    criteria = parse_cpe(match.criteria)
    for attribute in _FIELDS:
        if attribute == "version":
            continue
        if not _attribute_matches(getattr(criteria, attribute), getattr(target, attribute)):
            return False
    version = target.version
    if version == ANY and fallback_version:
        version = escape(fallback_version.lower())
    if match.has_version_range:
        if criteria.version not in {ANY, NA} and not _attribute_matches(criteria.version, version):
            return False
        return version not in {ANY, NA} and _version_in_range(match, version)
    if criteria.version == ANY:
        return True
    if version == ANY:
        return False  # a specific affected version, and we do not know ours
    if NA in (criteria.version, version):
        return criteria.version == version
    if _has_wildcard(criteria.version):
        return _attribute_matches(criteria.version, version)
    return unescape(criteria.version) == unescape(version)


@dataclass(frozen=True)
class CpeTarget:
    """A CPE present in the product: the component it came from and its parsed name."""

    ref: str
    cpe: Cpe
    version: str | None = None


@dataclass(frozen=True)
class ConfigurationHit:
    """A satisfied configuration and the (component ref, cpeMatch) pairs that made a vulnerable match."""

    configuration: CpeConfiguration
    vulnerable: tuple[tuple[str, CpeMatch], ...]


def _node_hits(node: CpeNode, targets: Sequence[CpeTarget]) -> tuple[bool, list[tuple[str, CpeMatch]]]:
    results = []
    hits: list[tuple[str, CpeMatch]] = []
    for match in node.matches:
        matched = [t for t in targets if cpe_matches(match, t.cpe, fallback_version=t.version)]
        results.append(bool(matched))
        if match.vulnerable:
            hits.extend((t.ref, match) for t in matched)
    satisfied = all(results) if node.operator is Operator.AND else any(results)
    if node.negate:
        return (not satisfied, [])
    return (satisfied, hits)


def evaluate_configuration(configuration: CpeConfiguration, targets: Sequence[CpeTarget]) -> ConfigurationHit | None:
    """Evaluate one NVD configuration against every CPE of a product (the AND/OR tree, ``negate`` honoured).

    A platform AND node (``vulnerable: false`` Windows next to a vulnerable application) holds only when the
    product has both. Returns ``None`` unless the configuration holds with at least one vulnerable match.
    """
    if not configuration.nodes:
        return None
    outcomes = [_node_hits(node, targets) for node in configuration.nodes]
    flags = [ok for ok, _ in outcomes]
    satisfied = all(flags) if configuration.operator is Operator.AND else any(flags)
    if configuration.negate:
        satisfied = not satisfied
    if not satisfied:
        return None
    hits = [h for ok, node_hits in outcomes if ok for h in node_hits]
    unique = tuple(dict.fromkeys(hits))
    return ConfigurationHit(configuration, unique) if unique else None


def vendor_products(configurations: Iterable[CpeConfiguration]) -> set[tuple[str, str]]:
    """The (vendor, product) pairs of the vulnerable criteria: the keys an index needs."""
    out = set()
    for conf in configurations:
        for node in conf.nodes:
            for match in node.matches:
                if match.vulnerable:
                    out.add(parse_cpe(match.criteria).vendor_product)
    return out
