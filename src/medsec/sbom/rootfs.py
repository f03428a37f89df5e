"""Generate an SBOM from a device root filesystem (the release's own SBOM, SM-3).

Three sources, all read-only: the dpkg database (``var/lib/dpkg/status``), Python distributions
(``*.dist-info/METADATA``, ``*.egg-info/PKG-INFO``) and the medsec release manifest, which names the
product itself (the SBOM subject).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

from packageurl import PackageURL

import medsec
from medsec.sbom._collect import MANUFACTURER
from medsec.sbom.errors import SbomSourceError
from medsec.sbom.model import Component, ComponentKind, ComponentRef, Provenance, Sbom

logger = logging.getLogger(__name__)

DPKG_STATUS = "var/lib/dpkg/status"
OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
RELEASE_MANIFESTS = ("etc/medsec/release.json", "etc/medsec/manifest.json", "manifest.json")
PYTHON_METADATA_GLOBS = (
    "usr/lib/python3*/*-packages/*.dist-info/METADATA",
    "usr/lib/python3*/*-packages/*.egg-info/PKG-INFO",
    "usr/local/lib/python3*/*-packages/*.dist-info/METADATA",
    "usr/local/lib/python3*/*-packages/*.egg-info/PKG-INFO",
    "opt/**/site-packages/*.dist-info/METADATA",
)
# dpkg(1) package states in which the files are on disk.
_INSTALLED_STATES = frozenset({"installed", "triggers-pending", "triggers-awaited"})
_DEP_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9.+\-_]*)")
_PEP503 = re.compile(r"[-_.]+")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise SbomSourceError(f"{path}: cannot read: {e.strerror or e}") from e


def parse_deb822(text: str) -> Iterator[dict[str, str]]:
    """Stanzas of a Debian control file (deb822): ``Field: value`` lines, continuations indented."""
    stanza: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if stanza:
                yield stanza
            stanza, last = {}, None
        elif line[0] in " \t":
            if last is not None:
                stanza[last] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            last = key.strip()
            stanza[last] = value.strip()
    if stanza:
        yield stanza


def parse_os_release(text: str) -> dict[str, str]:
    """os-release(5): shell-style ``KEY=value`` lines, values optionally quoted."""
    result: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        result[key.strip()] = value
    return result


def _dep_names(field: str) -> Iterator[list[str]]:
    """Each comma-separated relation of a Depends field as its alternatives' package names."""
    for group in field.split(","):
        names = [m.group(1) for alt in group.split("|") if (m := _DEP_NAME.match(alt))]
        if names:
            yield [n.split(":", 1)[0] for n in names]


def dpkg_components(
    status_text: str, *, namespace: str = "debian", distro: str | None = None
) -> tuple[list[Component], dict[ComponentRef, list[ComponentRef]]]:
    """Installed packages from a dpkg status file, with purls and Depends edges (linear time)."""
    components: list[Component] = []
    depends: list[tuple[ComponentRef, str]] = []
    by_name: dict[str, ComponentRef] = {}
    refs: set[ComponentRef] = set()
    for stanza in parse_deb822(status_text):
        name = stanza.get("Package")
        version = stanza.get("Version")
        state = stanza.get("Status", "").split()[-1:]
        if not name or not state or state[0] not in _INSTALLED_STATES:
            continue
        arch = stanza.get("Architecture")
        qualifiers: dict[str, str] = {}
        if arch:
            qualifiers["arch"] = arch
        if distro:
            qualifiers["distro"] = distro
        if source := stanza.get("Source"):
            # purl-spec deb: "upstream" names the source package, "@version" only when it differs.
            src_name, _, rest = source.partition(" ")
            src_version = rest.strip().strip("()")
            qualifiers["upstream"] = f"{src_name}@{src_version}" if src_version and src_version != version else src_name
        purl = PackageURL(type="deb", namespace=namespace, name=name, version=version, qualifiers=qualifiers)
        ref = ComponentRef(purl.to_string())
        if ref in refs:
            ref = ComponentRef(f"{ref}#{len(components)}")
        refs.add(ref)
        component = Component(
            ref=ref,
            name=name,
            version=version,
            supplier=stanza.get("Maintainer"),
            purl=purl.to_string(),
        )
        components.append(component)
        by_name.setdefault(name, ref)
        for provided in _dep_names(stanza.get("Provides", "")):
            by_name.setdefault(provided[0], ref)
        deps = ", ".join(v for k in ("Pre-Depends", "Depends") if (v := stanza.get(k)))
        if deps:
            depends.append((ref, deps))
    edges: dict[ComponentRef, list[ComponentRef]] = {}
    for ref, field in depends:
        targets: dict[ComponentRef, None] = {}
        for alternatives in _dep_names(field):
            found = next((by_name[n] for n in alternatives if n in by_name), None)
            if found is not None and found != ref:
                targets.setdefault(found)
        edges[ref] = list(targets)
    return components, edges


def _pypi_name(name: str) -> str:
    return _PEP503.sub("-", name).lower()  # PEP 503 normalised name


def python_component(metadata_text: str) -> tuple[Component, list[str]] | None:
    """One distribution and the names it requires, from its core metadata (METADATA / PKG-INFO)."""
    headers: dict[str, list[str]] = {}
    last: str | None = None
    for line in metadata_text.splitlines():
        if not line.strip():
            break
        if line[0] in " \t" and last is not None:
            continue  # folded description-like headers are not needed
        key, sep, value = line.partition(":")
        if not sep:
            continue
        last = key.strip()
        headers.setdefault(last, []).append(value.strip())
    name = (headers.get("Name") or [""])[0]
    version = (headers.get("Version") or [""])[0]
    if not name:
        return None
    supplier = next(
        (v[0] for k in ("Author", "Author-email", "Maintainer", "Maintainer-email") if (v := headers.get(k)) and v[0]),
        None,
    )
    license_text = (headers.get("License-Expression") or headers.get("License") or [""])[0]
    purl = PackageURL(type="pypi", name=_pypi_name(name), version=version or None).to_string()
    requires = [
        _pypi_name(m.group(1))
        for r in headers.get("Requires-Dist", [])
        if "extra" not in r.partition(";")[2] and (m := _DEP_NAME.match(r))
    ]
    component = Component(
        ref=ComponentRef(purl),
        name=name,
        version=version or None,
        supplier=supplier,
        purl=purl,
        licenses=(license_text,) if license_text and license_text != "UNKNOWN" and "\n" not in license_text else (),
    )
    return component, requires


def _manifest_subject(root: Path) -> Component | None:
    for relative in RELEASE_MANIFESTS:
        path = root / relative
        if not path.is_file():
            continue
        try:
            manifest = json.loads(_read_text(path))
        except json.JSONDecodeError as e:
            raise SbomSourceError(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON: {e.msg}") from e
        if not isinstance(manifest, dict) or not isinstance(manifest.get("product"), str):
            raise SbomSourceError(f"{path}: field 'product': a release manifest names its product")
        product = manifest["product"]
        version = manifest.get("version") if isinstance(manifest.get("version"), str) else None
        purl = PackageURL(type="generic", name=product, version=version).to_string()
        supplier = manifest.get("manufacturer") or manifest.get("supplier")
        properties = (
            [("medsec:release-counter", str(manifest["release_counter"]))] if "release_counter" in manifest else []
        )
        properties += [("medsec:hardware-id", str(h)) for h in manifest.get("hardware_ids") or []]
        return Component(
            ref=ComponentRef(purl),
            name=product,
            version=version,
            kind=ComponentKind.APPLICATION,
            supplier=supplier if isinstance(supplier, str) else None,
            purl=purl,
            properties=tuple(properties),
        )
    return None


def sbom_from_rootfs(root: str | os.PathLike[str], *, created: dt.datetime | None = None) -> Sbom:
    """Inventory a device root filesystem into the release's own SBOM.

    ``created`` defaults to now (UTC); pass it to make the output reproducible.
    """
    root = Path(root)
    if not root.is_dir():
        raise SbomSourceError(f"{root}: not a directory")
    os_release: dict[str, str] = {}
    for relative in OS_RELEASE:
        if (root / relative).is_file():
            os_release = parse_os_release(_read_text(root / relative))
            break
    os_id = os_release.get("ID", "debian").lower()
    version_id = os_release.get("VERSION_ID") or os_release.get("VERSION_CODENAME")
    distro = f"{os_id}-{version_id}" if version_id else None

    components: list[Component] = []
    edges: dict[ComponentRef, list[ComponentRef]] = {}
    if (root / DPKG_STATUS).is_file():
        debs, edges = dpkg_components(_read_text(root / DPKG_STATUS), namespace=os_id, distro=distro)
        components.extend(debs)
    seen = {c.ref for c in components}
    python: list[tuple[Component, list[str]]] = []
    for pattern in PYTHON_METADATA_GLOBS:
        for path in sorted(root.glob(pattern)):
            found = python_component(_read_text(path))
            if found is not None and found[0].ref not in seen:
                seen.add(found[0].ref)
                python.append(found)
    by_pypi = {_pypi_name(c.name): c.ref for c, _ in python}
    for c, requires in python:
        edges[c.ref] = [by_pypi[n] for n in dict.fromkeys(requires) if n in by_pypi and by_pypi[n] != c.ref]
        components.append(c)

    subject = _manifest_subject(root)
    if subject is not None:
        # NTIA dependency relationship: everything found is included in the product.
        edges = {subject.ref: [c.ref for c in components], **edges}
    created = created or dt.datetime.now(dt.UTC)
    provenance = Provenance(
        supplier=MANUFACTURER,
        format="medsec rootfs inventory",
        document_id=f"urn:uuid:{uuid.uuid4()}",
        created=created.isoformat(timespec="seconds").replace("+00:00", "Z"),
        tools=(f"medsec {medsec.__version__}",),
        authors=(subject.supplier,) if subject is not None and subject.supplier else (),
        source_name=str(root),
    )
    logger.info("rootfs %s: %d components", root, len(components))
    return Sbom(
        provenance=provenance,
        subject=subject,
        components=tuple(components),
        dependencies=tuple((ref, tuple(targets)) for ref, targets in edges.items()),
    )
