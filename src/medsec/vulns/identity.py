"""Package identity shared by advisories and SBOM components: (OSV ecosystem, normalised name), plus the
distribution release and the version to compare.

Debian binary packages are matched through their source package (purl ``upstream=`` qualifier, as syft
writes it: ``upstream=openssl`` or ``upstream=glibc@2.24-11+deb9u4``), because Debian OSV records name source
packages (OSV schema, ecosystem ``Debian``). The release comes from the purl ``distro`` qualifier
(``debian-9``, ``stretch``) on the component side and from the ecosystem suffix (``Debian:9``) on the
advisory side.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from packageurl import PackageURL

from medsec.sbom.model import Component
from medsec.vulns.versions import ecosystem_base

# purl type -> OSV ecosystem (purl-spec PURL-TYPES, OSV ecosystems.json)
_PURL_ECOSYSTEMS = {
    "pypi": "PyPI",
    "npm": "npm",
    "maven": "Maven",
    "golang": "Go",
    "cargo": "crates.io",
    "nuget": "NuGet",
    "gem": "RubyGems",
    "composer": "Packagist",
    "hex": "Hex",
    "pub": "Pub",
}
_DISTRO_NAMESPACES = {
    ("deb", "debian"): "Debian",
    ("deb", "ubuntu"): "Ubuntu",
    ("apk", "alpine"): "Alpine",
    ("apk", "wolfi"): "Wolfi",
    ("apk", "chainguard"): "Chainguard",
    ("rpm", "redhat"): "Red Hat",
    ("rpm", "rocky"): "Rocky Linux",
    ("rpm", "almalinux"): "AlmaLinux",
    ("rpm", "suse"): "SUSE",
    ("rpm", "opensuse"): "openSUSE",
}
# distro-info-data: Debian and Ubuntu code names -> release numbers (OSV uses the numbers)
_DEBIAN_CODENAMES = {
    "squeeze": "6",
    "wheezy": "7",
    "jessie": "8",
    "stretch": "9",
    "buster": "10",
    "bullseye": "11",
    "bookworm": "12",
    "trixie": "13",
    "forky": "14",
}
_UBUNTU_CODENAMES = {
    "trusty": "14.04",
    "xenial": "16.04",
    "bionic": "18.04",
    "focal": "20.04",
    "jammy": "22.04",
    "noble": "24.04",
}
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


@dataclass(frozen=True)
class PackageKey:
    ecosystem: str  # OSV ecosystem without release suffix: "Debian", "PyPI"
    name: str  # normalised for the ecosystem


@dataclass(frozen=True)
class ComponentIdentity:
    key: PackageKey | None
    version: str | None
    release: str | None = None
    via_purl: bool = False
    repo: str | None = None  # normalised repository URL when the component carries a commit
    commit: str | None = None


def normalise_name(ecosystem: str, name: str) -> str:
    base = ecosystem_base(ecosystem)
    if base == "PyPI":
        return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503
    if base in {"NuGet", "Packagist", "Debian", "Ubuntu", "Alpine"}:
        return name.lower()
    return name


def normalise_repo(url: str) -> str:
    """``git+https://GitHub.com/curl/curl.git/`` -> ``github.com/curl/curl``."""
    u = url.strip().lower()
    u = re.sub(r"^git\+", "", u)
    u = re.sub(r"^[a-z]+://", "", u)
    u = re.sub(r"^[^@/]+@", "", u)  # user@host
    u = u.replace(":", "/", 1) if re.match(r"^[^/]+:[^/]", u) else u  # scp-like git@host:owner/repo
    return re.sub(r"(\.git)?/*$", "", u)


def release_of_ecosystem(ecosystem: str) -> str | None:
    """``Debian:9`` -> ``9``; ``Ubuntu:Pro:14.04:LTS`` -> ``14.04``; ``Alpine:v3.16`` -> ``v3.16``."""
    base, _, suffix = ecosystem.partition(":")
    if not suffix or base not in {"Debian", "Ubuntu", "Alpine"}:
        return None
    if base == "Ubuntu":
        found = re.search(r"\d+\.\d+", suffix)
        return found.group(0) if found else suffix
    return suffix


def _distro_release(ecosystem: str, distro: str) -> str | None:
    d = distro.lower()
    if ecosystem == "Debian":
        found = re.fullmatch(r"(?:debian-)?(\d+)(?:\.\d+)*", d)
        return found.group(1) if found else _DEBIAN_CODENAMES.get(d.removeprefix("debian-"))
    if ecosystem == "Ubuntu":
        found = re.fullmatch(r"(?:ubuntu-)?(\d+\.\d+)(?:\.\d+)?", d)
        return found.group(1) if found else _UBUNTU_CODENAMES.get(d.removeprefix("ubuntu-"))
    if ecosystem == "Alpine":
        found = re.fullmatch(r"(?:alpine-)?v?(\d+\.\d+)(?:\.\d+)?", d)
        return f"v{found.group(1)}" if found else None
    return None


def purl_key(purl: PackageURL) -> tuple[PackageKey | None, str | None]:
    """The package key of a purl and, for distro packages, the source-package version if the purl names one."""
    ptype = purl.type.lower()
    namespace = purl.namespace or ""
    qualifiers = purl.qualifiers if isinstance(purl.qualifiers, dict) else {}
    ecosystem = _PURL_ECOSYSTEMS.get(ptype) or _DISTRO_NAMESPACES.get((ptype, namespace.lower()))
    if ecosystem is None:
        return None, None
    name = purl.name
    source_version = None
    if ptype == "maven":
        name = f"{namespace}:{purl.name}"
    elif ptype in {"npm", "golang", "composer"} and namespace:
        name = f"{namespace}/{purl.name}"
    elif ptype == "deb" and qualifiers.get("upstream"):
        source, _, source_version = qualifiers["upstream"].partition("@")
        name = source or purl.name
    return PackageKey(ecosystem, normalise_name(ecosystem, name)), source_version or None


def advisory_package_key(ecosystem: str, name: str) -> PackageKey:
    base = ecosystem_base(ecosystem)
    return PackageKey(base, normalise_name(base, name))


def component_identity(component: Component, *, name_ecosystem: str | None = None) -> ComponentIdentity:
    """How a component is looked up: by its purl, or by its plain name in ``name_ecosystem`` when it has none."""
    return _identity(component.purl, component.name, component.version, name_ecosystem)


@functools.lru_cache(maxsize=1 << 16)
def _identity(purl_text: str | None, name: str, version: str | None, name_ecosystem: str | None) -> ComponentIdentity:
    # Cached: the same purl recurs across the releases of a product line and across SBOM re-scans.
    if purl_text:
        try:
            purl = PackageURL.from_string(purl_text)
        except ValueError:
            purl = None
        if purl is not None:
            key, source_version = purl_key(purl)
            qualifiers = purl.qualifiers if isinstance(purl.qualifiers, dict) else {}
            repo = commit = None
            vcs = qualifiers.get("vcs_url")
            if vcs and "@" in vcs.rsplit("/", 1)[-1]:
                vcs_repo, _, vcs_commit = vcs.rpartition("@")
                if _COMMIT.fullmatch(vcs_commit.lower()):
                    repo, commit = normalise_repo(vcs_repo), vcs_commit.lower()
            elif (
                purl.type in {"github", "gitlab", "bitbucket"}
                and purl.version
                and _COMMIT.fullmatch(purl.version.lower())
            ):
                repo = normalise_repo(
                    f"{purl.type}.{'org' if purl.type == 'bitbucket' else 'com'}/{purl.namespace}/{purl.name}"
                )
                commit = purl.version.lower()
            release = None
            if key is not None and qualifiers.get("distro"):
                release = _distro_release(key.ecosystem, qualifiers["distro"])
            resolved = source_version or purl.version or version
            return ComponentIdentity(key, resolved, release, via_purl=True, repo=repo, commit=commit)
    if name_ecosystem:
        base = ecosystem_base(name_ecosystem)
        return ComponentIdentity(PackageKey(base, normalise_name(base, name)), version)
    return ComponentIdentity(None, version)
