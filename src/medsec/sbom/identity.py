"""Component identity: package URLs, CPE 2.3 names, and the keys merge and diff compare by.

Identifiers are what vulnerability matching keys on (附属書A: purl or CPE), so a value that does not
parse is dropped from the component and reported as a :class:`ComponentIssue` instead of being kept
half-valid.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote

from packageurl import PackageURL

from medsec.sbom.model import Component, ComponentIssue, IssueLevel

# NISTIR 7695 (CPE 2.3 Naming) section 6.2, figure 6-3: the formatted-string binding.
_AVSTRING = r"""(?:(?:\?*|\*?)(?:[a-zA-Z0-9\-._]|\\[\\*?!"#$%&'()+,/:;<=>@\[\]^`{|}~])+(?:\?*|\*?)|[*\-])"""
_LANGUAGE = r"(?:[a-zA-Z]{2,3}(?:-(?:[a-zA-Z]{2}|[0-9]{3}))?|[*\-])"
_CPE23 = re.compile(rf"cpe:2\.3:[aho*\-](?::{_AVSTRING}){{5}}:{_LANGUAGE}(?::{_AVSTRING}){{4}}")
# NISTIR 7695 section 6.1: the older URI binding (CPE 2.2), still common in SBOMs.
_CPE22 = re.compile(r"cpe:/[aho]?(?::[A-Za-z0-9._\-~%]*){0,6}", re.IGNORECASE)
_CPE23_QUOTED = re.compile(r"[^A-Za-z0-9\-._]")


class IdentifierError(ValueError):
    """An identifier that does not parse; the message says why."""


@functools.lru_cache(maxsize=65536)
def normalise_purl(text: str) -> str:
    """The canonical form of a package URL (purl-spec: lower-case type, sorted qualifiers...).

    Raises :class:`IdentifierError` when ``text`` is not a package URL.
    """
    try:
        return str(PackageURL.from_string(text.strip()).to_string())
    except ValueError as e:
        raise IdentifierError(str(e)) from e


def parse_purl(text: str) -> PackageURL:
    try:
        return PackageURL.from_string(text)
    except ValueError as e:
        raise IdentifierError(str(e)) from e


def is_cpe23(text: str) -> bool:
    return _CPE23.fullmatch(text) is not None


def _bind_23(value: str) -> str:
    if value in ("", "*"):
        return "*"
    if value == "-":
        return "-"
    return _CPE23_QUOTED.sub(lambda m: "\\" + m.group(0), unquote(value))


def normalise_cpe(text: str) -> str:
    """A CPE 2.3 formatted string; a CPE 2.2 URI is converted (NISTIR 7695 section 6.1.3.2).

    Raises :class:`IdentifierError` for anything else.
    """
    text = text.strip()
    if is_cpe23(text):
        return text
    if _CPE22.fullmatch(text):
        parts = text[len("cpe:/") :].split(":")
        parts += [""] * (7 - len(parts))
        part, vendor, product, version, update, edition, language = parts
        extended = ["", "", "", ""]  # sw_edition, target_sw, target_hw, other
        if edition.startswith("~"):  # packed edition (6.1.3.2 step 3)
            packed = edition[1:].split("~")
            if len(packed) != 5:
                raise IdentifierError(f"bad packed edition in CPE 2.2 URI {text!r}")
            edition, *rest = packed
            extended = rest
        fields = [vendor, product, version, update, edition, language, *extended]
        result = "cpe:2.3:" + (part.lower() or "*") + ":" + ":".join(_bind_23(f) for f in fields)
        if is_cpe23(result):
            return result
    raise IdentifierError(f"not a CPE 2.3 formatted string or CPE 2.2 URI: {text!r}")


def check_identifiers(
    purl: str | None, cpe: str | None, version: str | None
) -> tuple[str | None, str | None, str | None, list[ComponentIssue]]:
    """Validate a component's purl, CPE and version together.

    Returns the normalised purl, CPE and version and the issues found. A bad identifier is an
    ``ERROR`` when the component is left with no usable identifier, a ``WARNING`` otherwise.
    """
    issues: list[ComponentIssue] = []
    bad: list[tuple[str, str]] = []
    good_purl: str | None = None
    good_cpe: str | None = None
    purl_version: str | None = None
    if purl is not None and purl.strip():
        try:
            good_purl = normalise_purl(purl)
            purl_version = parse_purl(good_purl).version
        except IdentifierError as e:
            bad.append(("purl", f"invalid package URL {purl!r}: {e}"))
    if cpe is not None and cpe.strip():
        try:
            good_cpe = normalise_cpe(cpe)
            if good_cpe != cpe.strip():
                issues.append(ComponentIssue("cpe", f"CPE 2.2 URI {cpe!r} converted to {good_cpe!r}"))
        except IdentifierError as e:
            bad.append(("cpe", str(e)))
    level = IssueLevel.WARNING if (good_purl or good_cpe) else IssueLevel.ERROR
    issues.extend(ComponentIssue(f, msg, level) for f, msg in bad)
    if version is None or not version.strip():
        version = None
        if purl_version:
            version = purl_version
            issues.append(ComponentIssue("version", f"version missing; taken from the purl ({purl_version})"))
        else:
            issues.append(ComponentIssue("version", "version missing"))
    elif purl_version is not None and purl_version != version:
        issues.append(ComponentIssue("purl", f"purl version {purl_version!r} differs from version {version!r}"))
    if good_purl is None and good_cpe is None and not bad:
        issues.append(ComponentIssue("purl", "no purl or CPE: cannot be matched to vulnerabilities", IssueLevel.ERROR))
    return good_purl, good_cpe, version, issues


def package_key(component: Component) -> tuple[str, ...]:
    """What stays the same across versions of one package: purl type, namespace, name (and arch).

    Without a purl: group and name, case-folded. Used to pair old and new versions in a diff.
    """
    if component.purl is not None:
        p = parse_purl(component.purl)
        arch = p.qualifiers.get("arch", "") if isinstance(p.qualifiers, dict) else ""
        return ("purl", p.type, p.namespace or "", p.name, arch)
    return ("name", (component.group or "").casefold(), component.name.casefold())


def duplicate_key(component: Component) -> tuple[str, ...]:
    """Two components with this key are the same component: their purl, else group+name+version."""
    if component.purl is not None:
        return ("purl", component.purl)
    return ("name", (component.group or "").casefold(), component.name.casefold(), component.version or "")


def name_version_key(component: Component) -> tuple[str, ...]:
    return ("name", (component.group or "").casefold(), component.name.casefold(), component.version or "")
