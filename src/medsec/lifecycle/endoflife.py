"""Read endoflife.date product files into frozen values and map component versions to release cycles (SM-4).

A product file is Markdown with a YAML front matter; only the front matter is data. The rules checked here are
those of endoflife.date's ``product-schema.json`` that matter for support dates; every violation raises
:class:`EndOfLifeDataError` naming the file and the field (``debian.md: releases[4].eol: ...``).

Support-end fields are a date, ``True`` (ended, date not published) or ``False`` (not ended / not determined).
The older field names ``support`` and ``extendedSupport`` are read as ``eoas`` and ``eoes``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medsec.lifecycle.errors import AmbiguousCycleError, EndOfLifeDataError, UnknownCycleError
from medsec.sbom.model import Component

SupportEnd = dt.date | bool
"""A date, True (ended on an unpublished date) or False (not ended or not yet determined)."""

# product-schema.json lists "db"; the product files of the same commit use "database", so both are accepted.
CATEGORIES = frozenset(
    {"app", "database", "db", "device", "framework", "lang", "library", "os", "server-app", "service", "standard"}
)
_CYCLE_PATTERN = re.compile(r"^[a-z0-9.\-+_]+$")
_TAGS_PATTERN = re.compile(r"^[a-z0-9\-]+( [a-z0-9\-]+)*$")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*$", re.DOTALL | re.MULTILINE)
_LEGACY_NAMES = {"support": "eoas", "extendedSupport": "eoes"}
_SUPPORT_FIELDS = ("eol", "eoas", "eoes", "discontinued")
_COLUMN_FIELDS = {
    "eolColumn": "eol",
    "eoasColumn": "eoas",
    "eoesColumn": "eoes",
    "discontinuedColumn": "discontinued",
    "releaseDateColumn": "releaseDate",
    "latestColumn": "latest",
}


def support_ended(value: SupportEnd | None, on: dt.date) -> bool:
    """Whether support marked ``value`` has ended on day ``on`` (the end date itself counts as ended)."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    return on >= value


@dataclass(frozen=True)
class ProductCycle:
    """One release cycle of a product as the feed states it."""

    product: str
    cycle: str
    label: str | None = None
    codename: str | None = None
    release_date: dt.date | None = None
    eol: SupportEnd = False  # end of security support
    eoas: SupportEnd | None = None  # end of active support
    eoes: SupportEnd | None = None  # end of extended support (LTS, ESU...)
    lts: bool | dt.date = False
    latest: str | None = None
    latest_release_date: dt.date | None = None
    link: str | None = None


@dataclass(frozen=True)
class ProductLifecycle:
    """All cycles of one product file, with the identifiers endoflife.date gives for it."""

    product: str  # permalink without the slash, e.g. "debian"
    title: str
    category: str
    cycles: tuple[ProductCycle, ...]
    cpes: tuple[str, ...] = ()
    purls: tuple[str, ...] = ()
    source: str = "<memory>"

    def cycle(self, name: str) -> ProductCycle:
        for c in self.cycles:
            if c.cycle == name:
                return c
        raise UnknownCycleError(f"{self.product} has no release cycle {name!r}")


def load_product(path: Path) -> ProductLifecycle:
    """Read one product file; the product name is taken from its permalink."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EndOfLifeDataError(path.name, "(file)", f"cannot read: {e}") from e
    return parse_product(text, source=path.name)


def load_products(directory: Path) -> dict[str, ProductLifecycle]:
    """Read every ``*.md`` product file in a folder, keyed by product name."""
    products: dict[str, ProductLifecycle] = {}
    for path in sorted(directory.glob("*.md")):
        product = load_product(path)
        products[product.product] = product
    return products


def parse_product(text: str, source: str = "<memory>") -> ProductLifecycle:
    match = _FRONT_MATTER.match(text)
    if match is None:
        raise EndOfLifeDataError(source, "(front matter)", "no YAML front matter between '---' lines")
    try:
        data = yaml.safe_load(match.group(1))
    except (yaml.YAMLError, ValueError) as e:  # PyYAML raises ValueError for dates like 2020-13-01
        raise EndOfLifeDataError(source, "(front matter)", f"not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise EndOfLifeDataError(source, "(front matter)", "must be a mapping")
    return _product(data, source)


def _product(data: Mapping[str, Any], source: str) -> ProductLifecycle:
    for key in ("title", "category", "permalink", "releases"):
        if key not in data:
            raise EndOfLifeDataError(source, key, "required field is missing")
    title = _string(data["title"], source, "title")
    category = data["category"]
    if category not in CATEGORIES:
        raise EndOfLifeDataError(source, "category", f"{category!r} is not one of {sorted(CATEGORIES)}")
    permalink = _string(data["permalink"], source, "permalink")
    if not permalink.startswith("/"):
        raise EndOfLifeDataError(source, "permalink", "must start with '/'")
    if "tags" in data and not _TAGS_PATTERN.match(_string(data["tags"], source, "tags")):
        raise EndOfLifeDataError(source, "tags", "lowercase words separated by single spaces expected")
    product = permalink.strip("/")
    label_template = data.get("releaseLabel")
    releases = data["releases"]
    if not isinstance(releases, list):
        raise EndOfLifeDataError(source, "releases", "must be a list")
    cycles: list[ProductCycle] = []
    seen: set[str] = set()
    for i, release in enumerate(releases):
        cycle = _release(release, product, label_template, source, f"releases[{i}]")
        if cycle.cycle in seen:
            raise EndOfLifeDataError(source, f"releases[{i}].releaseCycle", f"cycle {cycle.cycle!r} appears twice")
        seen.add(cycle.cycle)
        cycles.append(cycle)
    cpes, purls = _identifiers(data.get("identifiers", []), source)
    return ProductLifecycle(
        product=product, title=title, category=category, cycles=tuple(cycles), cpes=cpes, purls=purls, source=source
    )


def _identifiers(items: Any, source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not isinstance(items, list):
        raise EndOfLifeDataError(source, "identifiers", "must be a list")
    cpes: list[str] = []
    purls: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or len(item) != 1:
            raise EndOfLifeDataError(source, f"identifiers[{i}]", "must be a mapping with one key")
        ((kind, value),) = item.items()
        if kind == "cpe":
            cpes.append(_string(value, source, f"identifiers[{i}].cpe"))
        elif kind == "purl":
            purls.append(_string(value, source, f"identifiers[{i}].purl"))
    return tuple(cpes), tuple(purls)


def _release(release: Any, product: str, label_template: Any, source: str, where: str) -> ProductCycle:
    if not isinstance(release, dict):
        raise EndOfLifeDataError(source, where, "must be a mapping")
    release = dict(release)
    for old, new in _LEGACY_NAMES.items():
        if old in release:
            if new in release:
                raise EndOfLifeDataError(source, f"{where}.{old}", f"given together with {new!r}")
            release[new] = release.pop(old)
    if "releaseCycle" not in release:
        raise EndOfLifeDataError(source, f"{where}.releaseCycle", "required field is missing")
    raw_cycle = release["releaseCycle"]
    if not isinstance(raw_cycle, str):
        # An unquoted 3.10 would silently become 3.1 in YAML; the schema requires a string.
        raise EndOfLifeDataError(source, f"{where}.releaseCycle", f"must be a quoted string, not {raw_cycle!r}")
    if not _CYCLE_PATTERN.match(raw_cycle):
        raise EndOfLifeDataError(source, f"{where}.releaseCycle", f"{raw_cycle!r} has characters outside [a-z0-9.-+_]")
    where = f"{where} ({raw_cycle})"
    for column, required in _COLUMN_FIELDS.items():
        if isinstance(release.get(column), str) and required not in release:
            raise EndOfLifeDataError(source, f"{where}.{required}", f"required because {column} is set")
    support = {
        name: _support_end(release[name], source, f"{where}.{name}") for name in _SUPPORT_FIELDS if name in release
    }
    lts_raw = release.get("lts", False)
    lts: bool | dt.date = lts_raw if isinstance(lts_raw, bool) else _date(lts_raw, source, f"{where}.lts")
    codename = release.get("codename")
    if codename is not None:
        codename = _string(codename, source, f"{where}.codename")
    link = release.get("link")
    if link is not None:
        link = _string(link, source, f"{where}.link")
    latest = release.get("latest")
    if latest is not None and not isinstance(latest, str):
        # Unquoted numeric "latest" values (e.g. 10.0) occur in real files; keep their text.
        if isinstance(latest, bool):
            raise EndOfLifeDataError(source, f"{where}.latest", "must be a string")
        latest = str(latest)
    label = release.get("releaseLabel", label_template)
    if label is not None:
        label = (
            _string(label, source, f"{where}.releaseLabel")
            .replace("__RELEASE_CYCLE__", raw_cycle)
            .replace("__CODENAME__", codename or "")
        )
    return ProductCycle(
        product=product,
        cycle=raw_cycle,
        label=label,
        codename=codename,
        release_date=_optional_date(release.get("releaseDate"), source, f"{where}.releaseDate"),
        eol=support.get("eol", False),
        eoas=support.get("eoas"),
        eoes=support.get("eoes"),
        lts=lts,
        latest=latest,
        latest_release_date=_optional_date(release.get("latestReleaseDate"), source, f"{where}.latestReleaseDate"),
        link=link,
    )


def _string(value: Any, source: str, field: str) -> str:
    if not isinstance(value, str):
        raise EndOfLifeDataError(source, field, f"must be a string, not {value!r}")
    return value


def _date(value: Any, source: str, field: str) -> dt.date:
    if isinstance(value, dt.datetime):
        raise EndOfLifeDataError(source, field, f"must be a date (yyyy-mm-dd), not a timestamp {value!r}")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise EndOfLifeDataError(source, field, f"must be a date (yyyy-mm-dd), not {value!r}")


def _optional_date(value: Any, source: str, field: str) -> dt.date | None:
    return None if value is None else _date(value, source, field)


def _support_end(value: Any, source: str, field: str) -> SupportEnd:
    if isinstance(value, bool):
        return value
    try:
        return _date(value, source, field)
    except EndOfLifeDataError:
        raise EndOfLifeDataError(source, field, f"must be a date (yyyy-mm-dd) or a boolean, not {value!r}") from None


_EPOCH = re.compile(r"^\d+:")


def _normalise_version(version: str) -> str:
    v = _EPOCH.sub("", version.strip().lower())
    return v[1:] if v.startswith("v") and v[1:2].isdigit() else v


def _is_prefix(cycle: str, version: str) -> bool:
    """``cycle`` names the start of ``version`` on a component boundary (3.11 fits 3.11.7 and 3.11, not 3.1)."""
    if version == cycle:
        return True
    if not version.startswith(cycle):
        return False
    following = version[len(cycle)]
    # A letter after a numeric cycle is a patch letter (OpenSSL 1.1.1w); a digit would extend the number.
    return not (following.isdigit() or (following.isalpha() and cycle[-1].isalpha()))


def cycle_for(product: ProductLifecycle, version: str) -> ProductCycle:
    """The release cycle a component version belongs to.

    Debian ``9`` or ``9.13`` -> ``9``; Python ``3.11.7`` -> ``3.11``; OpenSSL ``1.1.1w`` -> ``1.1.1``. The longest
    matching cycle name wins. When no cycle name fits, a cycle whose ``latest`` release is the version (or its
    prefix, e.g. a Windows build) is used, but only if exactly one does.
    """
    v = _normalise_version(version)
    if not v:
        raise UnknownCycleError(f"{product.product}: empty version")
    by_name = [c for c in product.cycles if _is_prefix(c.cycle, v)]
    if by_name:
        return max(by_name, key=lambda c: len(c.cycle))
    by_latest = [
        c
        for c in product.cycles
        if c.latest is not None and (v == c.latest.lower() or v.startswith(c.latest.lower() + "."))
    ]
    if len(by_latest) == 1:
        return by_latest[0]
    if by_latest:
        raise AmbiguousCycleError(
            f"{product.product} version {version!r} fits several cycles", tuple(c.cycle for c in by_latest)
        )
    raise UnknownCycleError(f"{product.product} has no release cycle for version {version!r}")


def _cpe_key(cpe: str) -> tuple[str, str, str] | None:
    """(part, vendor, product) of a CPE 2.3 formatted string or a CPE 2.2 URI."""
    if cpe.startswith("cpe:2.3:"):
        parts = cpe.split(":")
        return (parts[2], parts[3], parts[4]) if len(parts) >= 5 else None
    if cpe.startswith("cpe:/"):
        parts = cpe[5:].split(":")
        return (parts[0], parts[1], parts[2]) if len(parts) >= 3 else None
    return None


def _purl_key(purl: str) -> str:
    return purl.split("?", 1)[0].split("#", 1)[0].split("@", 1)[0].lower()


def product_for_component(component: Component, products: Iterable[ProductLifecycle]) -> ProductLifecycle | None:
    """The product whose identifiers (CPE part/vendor/product or purl without version) match the component."""
    cpe = _cpe_key(component.cpe) if component.cpe else None
    purl = _purl_key(component.purl) if component.purl else None
    for product in products:
        if cpe is not None and any(_cpe_key(c) == cpe for c in product.cpes):
            return product
        if purl is not None and any(_purl_key(p) == purl for p in product.purls):
            return product
    return None
