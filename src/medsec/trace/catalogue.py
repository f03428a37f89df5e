"""The requirement catalogue and the features map, read from the YAML files next to this module.

The catalogue is the single list of requirement IDs the matrix and the gate know; a test marker naming any
other ID is an error, so a typo never silently leaves a requirement uncovered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from medsec.trace.errors import CatalogueError

REQUIREMENT_ID = re.compile(r"^(SM|PA|RA|RL)-[1-9][0-9]*$")
# A test may carry its requirement in its name instead of a marker: test_ra3_..., test_sm_4_...
_NAME_ID = re.compile(r"(?:^|_)(sm|pa|ra|rl)_?([1-9][0-9]*)(?=_|$)")
REQUIREMENTS_FORMAT = "medsec-requirements/1"
FEATURES_FORMAT = "medsec-features/1"


@dataclass(frozen=True)
class Group:
    code: str
    en: str
    ja: str


@dataclass(frozen=True)
class Requirement:
    id: str
    group: Group
    text: str


@dataclass(frozen=True)
class Feature:
    """Something medsec does, the requirements it serves, and where it lives (modules, CLI commands)."""

    name: str
    summary: str
    requirements: tuple[str, ...]
    modules: tuple[str, ...]
    commands: tuple[str, ...]


@dataclass(frozen=True)
class Catalogue:
    requirements: tuple[Requirement, ...]
    features: tuple[Feature, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.requirements)

    def features_for(self, requirement_id: str) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if requirement_id in f.requirements)


def ids_in_test_name(name: str) -> tuple[str, ...]:
    """Requirement IDs spelled in a test function's name (``test_ra3_end_needs_confirmation`` → RA-3)."""
    base = name.split("[", 1)[0]
    if not base.startswith("test_"):
        return ()
    found = [f"{m.group(1).upper()}-{m.group(2)}" for m in _NAME_ID.finditer(base[len("test") :])]
    return tuple(dict.fromkeys(found))


def _yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CatalogueError(f"{source}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise CatalogueError(f"{source}: the top level must be a mapping")
    return data


def _str(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CatalogueError(f"{where}: field {key!r} must be a non-empty string")
    return value.strip()


def _str_list(item: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = item.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise CatalogueError(f"{where}: field {key!r} must be a list of non-empty strings")
    return tuple(v.strip() for v in value)


def parse_requirements(text: str, source: str = "requirements.yaml") -> tuple[Requirement, ...]:
    data = _yaml(text, source)
    if data.get("format") != REQUIREMENTS_FORMAT:
        raise CatalogueError(f"{source}: format must be {REQUIREMENTS_FORMAT!r}")
    groups: dict[str, Group] = {}
    for i, g in enumerate(data.get("groups") or []):
        where = f"{source}: groups[{i}]"
        if not isinstance(g, dict):
            raise CatalogueError(f"{where}: must be a mapping")
        group = Group(_str(g, "code", where), _str(g, "en", where), _str(g, "ja", where))
        groups[group.code] = group
    out: list[Requirement] = []
    seen: set[str] = set()
    for i, r in enumerate(data.get("requirements") or []):
        where = f"{source}: requirements[{i}]"
        if not isinstance(r, dict):
            raise CatalogueError(f"{where}: must be a mapping")
        rid = _str(r, "id", where)
        if not REQUIREMENT_ID.match(rid):
            raise CatalogueError(f"{where}: {rid!r} is not a requirement ID like RA-3")
        if rid in seen:
            raise CatalogueError(f"{where}: {rid} is listed twice")
        code = rid.split("-", 1)[0]
        if code not in groups:
            raise CatalogueError(f"{where}: {rid} belongs to no listed group ({code})")
        seen.add(rid)
        out.append(Requirement(rid, groups[code], " ".join(_str(r, "text", where).split())))
    if not out:
        raise CatalogueError(f"{source}: no requirements listed")
    return tuple(out)


def parse_features(text: str, known_ids: tuple[str, ...], source: str = "features.yaml") -> tuple[Feature, ...]:
    data = _yaml(text, source)
    if data.get("format") != FEATURES_FORMAT:
        raise CatalogueError(f"{source}: format must be {FEATURES_FORMAT!r}")
    out: list[Feature] = []
    names: set[str] = set()
    for i, f in enumerate(data.get("features") or []):
        where = f"{source}: features[{i}]"
        if not isinstance(f, dict):
            raise CatalogueError(f"{where}: must be a mapping")
        name = _str(f, "name", where)
        where = f"{source}: feature {name}"
        if name in names:
            raise CatalogueError(f"{where}: the name is used twice")
        names.add(name)
        reqs = _str_list(f, "requirements", where)
        if not reqs:
            raise CatalogueError(f"{where}: names no requirement")
        unknown = [r for r in reqs if r not in known_ids]
        if unknown:
            raise CatalogueError(f"{where}: unknown requirement IDs {', '.join(unknown)}")
        modules = _str_list(f, "modules", where)
        if not modules:
            raise CatalogueError(f"{where}: names no module")
        commands = _str_list(f, "commands", where)
        bad = [c for c in commands if not c.startswith("medsec ")]
        if bad:
            raise CatalogueError(f"{where}: commands must start with 'medsec ': {', '.join(bad)}")
        out.append(Feature(name, " ".join(_str(f, "summary", where).split()), reqs, modules, commands))
    return tuple(out)


def _packaged(name: str) -> str:
    return resources.files("medsec.trace").joinpath(name).read_text(encoding="utf-8")


def load_catalogue() -> Catalogue:
    """The catalogue and features map shipped with medsec."""
    requirements = parse_requirements(_packaged("requirements.yaml"))
    features = parse_features(_packaged("features.yaml"), tuple(r.id for r in requirements))
    return Catalogue(requirements, features)
