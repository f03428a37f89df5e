"""The CSAF 2.0 mandatory tests (section 6.1) that documents made by medsec can break.

Implemented: 6.1.1, 6.1.2, 6.1.6, 6.1.14, 6.1.16, 6.1.21, 6.1.22, 6.1.23, 6.1.27.1-6.1.27.11, 6.1.29, 6.1.32,
6.1.33. The JSON schema and the remaining tests (CVSS computation, CWE names, purl syntax, language tags...) are
run by the external validators in the test suite. :func:`check_mandatory` raises; it never returns a bool.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from medsec.advisories.errors import CsafValidationError

Failure = tuple[str, str, str]  # (test id, JSON pointer, message)
_STATUS_GROUPS = {
    "first_affected": "affected",
    "known_affected": "affected",
    "last_affected": "affected",
    "known_not_affected": "not_affected",
    "first_fixed": "fixed",
    "fixed": "fixed",
    "under_investigation": "under_investigation",
}
_VEX_STATUSES = ("fixed", "known_affected", "known_not_affected", "under_investigation")
_NOTE_CATEGORIES = {"description", "details", "general", "summary"}


def _branch_definitions(branches: list[Any], path: str) -> Iterator[tuple[str, str]]:
    for i, branch in enumerate(branches):
        here = f"{path}/{i}"
        if "product" in branch:
            yield branch["product"]["product_id"], f"{here}/product/product_id"
        yield from _branch_definitions(branch.get("branches", []), f"{here}/branches")


def _definitions(doc: dict[str, Any]) -> list[tuple[str, str]]:
    tree = doc.get("product_tree", {})
    found = list(_branch_definitions(tree.get("branches", []), "/product_tree/branches"))
    for i, fpn in enumerate(tree.get("full_product_names", [])):
        found.append((fpn["product_id"], f"/product_tree/full_product_names/{i}/product_id"))
    for i, rel in enumerate(tree.get("relationships", [])):
        found.append((rel["full_product_name"]["product_id"], f"/product_tree/relationships/{i}/full_product_name"))
    return found


def _references(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    tree = doc.get("product_tree", {})
    for i, group in enumerate(tree.get("product_groups", [])):
        for j, pid in enumerate(group.get("product_ids", [])):
            yield pid, f"/product_tree/product_groups/{i}/product_ids/{j}"
    for i, rel in enumerate(tree.get("relationships", [])):
        yield rel["product_reference"], f"/product_tree/relationships/{i}/product_reference"
        yield rel["relates_to_product_reference"], f"/product_tree/relationships/{i}/relates_to_product_reference"
    for v, vuln in enumerate(doc.get("vulnerabilities", [])):
        base = f"/vulnerabilities/{v}"
        for group, pids in vuln.get("product_status", {}).items():
            for j, pid in enumerate(pids):
                yield pid, f"{base}/product_status/{group}/{j}"
        for key, field in (("remediations", "product_ids"), ("threats", "product_ids"), ("flags", "product_ids")):
            for i, item in enumerate(vuln.get(key, [])):
                for j, pid in enumerate(item.get(field, [])):
                    yield pid, f"{base}/{key}/{i}/{field}/{j}"
        for i, score in enumerate(vuln.get("scores", [])):
            for j, pid in enumerate(score.get("products", [])):
                yield pid, f"{base}/scores/{i}/products/{j}"


def _product_ids_of(doc: dict[str, Any], item: dict[str, Any]) -> set[str]:
    """Product ids an item names directly or through its product groups."""
    groups = {g["group_id"]: g["product_ids"] for g in doc.get("product_tree", {}).get("product_groups", [])}
    ids = set(item.get("product_ids", []))
    for gid in item.get("group_ids", []):
        ids.update(groups.get(gid, []))
    return ids


def _revision_key(number: str) -> tuple[int, ...]:
    head = number.split("-", 1)[0].split("+", 1)[0]
    return tuple(int(p) for p in head.split(".") if p.isdigit())


def mandatory_failures(doc: dict[str, Any]) -> list[Failure]:
    failures: list[Failure] = []
    fail = failures.append
    definitions = _definitions(doc)
    defined = {pid for pid, _ in definitions}
    for pid, path in _references(doc):
        if pid not in defined:
            fail(("6.1.1", path, f"product id {pid!r} is not defined"))
    for pid, count in Counter(pid for pid, _ in definitions).items():
        if count > 1:
            paths = [p for q, p in definitions if q == pid]
            fail(("6.1.2", paths[1], f"product id {pid!r} is defined {count} times"))

    document = doc.get("document", {})
    tracking = document.get("tracking", {})
    history = tracking.get("revision_history", [])
    numbers = [r["number"] for r in history]
    dated = [r["number"] for r in sorted(history, key=lambda r: r["date"])]
    if [_revision_key(n) for n in dated] != sorted(_revision_key(n) for n in numbers):
        fail(("6.1.14", "/document/tracking/revision_history", "revision numbers do not increase with their dates"))
    if numbers and tracking.get("status") != "draft":
        latest = max(numbers, key=_revision_key)
        if _revision_key(latest) != _revision_key(tracking.get("version", "")):
            fail(("6.1.16", "/document/tracking/version", f"version is not the latest revision {latest!r}"))
    majors = sorted({k[0] for k in (_revision_key(n) for n in numbers) if k})
    if majors and majors != list(range(majors[0], majors[0] + len(majors))):
        fail(("6.1.21", "/document/tracking/revision_history", "revision numbers have a gap"))
    for number, count in Counter(numbers).items():
        if count > 1:
            fail(("6.1.22", "/document/tracking/revision_history", f"revision {number!r} appears {count} times"))

    vulns = doc.get("vulnerabilities", [])
    for cve, count in Counter(v["cve"] for v in vulns if "cve" in v).items():
        if count > 1:
            fail(("6.1.23", "/vulnerabilities", f"{cve} appears in {count} vulnerabilities"))
    for v, vuln in enumerate(vulns):
        base = f"/vulnerabilities/{v}"
        groups: dict[str, str] = {}
        for status, pids in vuln.get("product_status", {}).items():
            for pid in pids:
                group = _STATUS_GROUPS.get(status, status)
                if groups.setdefault(pid, group) != group:
                    fail(("6.1.6", f"{base}/product_status", f"product {pid!r} has contradicting statuses"))
        for i, rem in enumerate(vuln.get("remediations", [])):
            if not rem.get("product_ids") and not rem.get("group_ids"):
                fail(("6.1.29", f"{base}/remediations/{i}", "remediation names no product or group"))
        flagged: Counter[str] = Counter()
        for i, flag in enumerate(vuln.get("flags", [])):
            if not flag.get("product_ids") and not flag.get("group_ids"):
                fail(("6.1.32", f"{base}/flags/{i}", "flag names no product or group"))
            flagged.update(_product_ids_of(doc, flag))
        for pid, count in flagged.items():
            if count > 1:
                fail(("6.1.33", f"{base}/flags", f"product {pid!r} has {count} VEX flags"))

    failures.extend(_profile_failures(doc))
    return failures


def _profile_failures(doc: dict[str, Any]) -> list[Failure]:
    """CSAF 2.0 6.1.27: the rules of each profile."""
    failures: list[Failure] = []
    fail = failures.append
    document = doc.get("document", {})
    category = document.get("category")
    vulns = doc.get("vulnerabilities", [])
    if category in ("csaf_informational_advisory", "csaf_security_incident_response"):
        if not any(n.get("category") in _NOTE_CATEGORIES for n in document.get("notes", [])):
            fail(("6.1.27.1", "/document/notes", "needs a description, details, general or summary note"))
        if not any(r.get("category") == "external" for r in document.get("references", [])):
            fail(("6.1.27.2", "/document/references", "needs an external reference"))
    if category == "csaf_informational_advisory" and "vulnerabilities" in doc:
        fail(("6.1.27.3", "/vulnerabilities", "an informational advisory has no vulnerabilities"))
    if category in ("csaf_security_advisory", "csaf_vex"):
        if "product_tree" not in doc:
            fail(("6.1.27.4", "/product_tree", "required for this profile"))
        if "vulnerabilities" not in doc:
            fail(("6.1.27.11", "/vulnerabilities", "required for this profile"))
        for v, vuln in enumerate(vulns):
            if not vuln.get("notes"):
                fail(("6.1.27.5", f"/vulnerabilities/{v}/notes", "required for this profile"))
    if category == "csaf_security_advisory":
        for v, vuln in enumerate(vulns):
            if "product_status" not in vuln:
                fail(("6.1.27.6", f"/vulnerabilities/{v}/product_status", "required for security advisories"))
    if category == "csaf_vex":
        for v, vuln in enumerate(vulns):
            base = f"/vulnerabilities/{v}"
            status = vuln.get("product_status", {})
            if not any(status.get(s) for s in _VEX_STATUSES):
                fail(
                    (
                        "6.1.27.7",
                        f"{base}/product_status",
                        "needs fixed, known_affected, known_not_affected or under_investigation",
                    )
                )
            if "cve" not in vuln and not vuln.get("ids"):
                fail(("6.1.27.8", base, "needs a cve or ids"))
            explained: set[str] = set()
            for flag in vuln.get("flags", []):
                explained |= _product_ids_of(doc, flag)
            for threat in vuln.get("threats", []):
                if threat.get("category") == "impact":
                    explained |= _product_ids_of(doc, threat)
            for pid in status.get("known_not_affected", []):
                if pid not in explained:
                    fail(("6.1.27.9", f"{base}/product_status/known_not_affected", f"{pid!r} has no impact statement"))
            acted: set[str] = set()
            for rem in vuln.get("remediations", []):
                acted |= _product_ids_of(doc, rem)
            for pid in status.get("known_affected", []):
                if pid not in acted:
                    fail(("6.1.27.10", f"{base}/product_status/known_affected", f"{pid!r} has no action statement"))
    return failures


def check_mandatory(doc: dict[str, Any]) -> None:
    """Raise :class:`CsafValidationError` listing every failed mandatory test."""
    failures = mandatory_failures(doc)
    if failures:
        raise CsafValidationError(tuple(failures))
