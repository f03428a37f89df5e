"""Generate CSAF 2.0 documents for hospitals (SM-2; handbook §6.4; SM-4 end-of-support notices).

Three profiles (CSAF 2.0 section 4): ``csaf_security_advisory`` for updates and fixes, ``csaf_vex`` for triage
results including "not affected" assessments, and ``csaf_informational_advisory`` for end-of-support notices.
Every builder runs :func:`medsec.advisories.csaf_checks.check_mandatory` on its result, so a document that
fails a mandatory test is never returned.

Product tree: ``vendor / product_name / product_version`` branches for each device release and each assessed
component, and a ``default_component_of`` relationship naming "component X in release Y"; triage statements
about a component refer to that relationship, as CSAF 2.0 3.2.2.3 intends.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import medsec
from medsec.advisories.csaf_checks import check_mandatory
from medsec.advisories.errors import AdvisoryInputError
from medsec.advisories.model import (
    AdvisoryDocument,
    Assessment,
    DeviceRelease,
    Justification,
    Lang,
    Note,
    Reference,
    Status,
    VulnerabilityEntry,
)
from medsec.sbom.model import Component

Json = dict[str, Any]

TLP_URL = "https://www.first.org/tlp/"

# The generator's own phrases; everything else in a document is the caller's text in the document language.
PHRASES: dict[Lang, dict[str, str]] = {
    "en": {
        "distribution": "Disclosure is not limited.",
        "distribution_limited": "Share only as the TLP label allows.",
        "unknown_supplier": "Unknown supplier",
        "component_of": "{component} as a component of {product}",
        "vulnerability_note_title": "Vulnerability description",
        "vulnerability_note_default": "Assessment by {publisher} of {vuln} for the products listed in this document.",
        "eos_summary_title": "End of support",
        "eos_summary": (
            "{product}: end of life (EOL) on {eol}, end of support (EOS) on {eos}. Between EOL and EOS only "
            "security updates and security advisories are provided; after EOS no updates are provided."
        ),
        "eos_summary_ended": "{product}: support ended on {eos}. No further updates are provided.",
        Justification.COMPONENT_NOT_PRESENT: "The affected component is not present in the product.",
        Justification.VULNERABLE_CODE_NOT_PRESENT: "The vulnerable code is not present in the product.",
        Justification.VULNERABLE_CODE_CANNOT_BE_CONTROLLED_BY_ADVERSARY: (
            "The vulnerable code cannot be controlled by an attacker in the product."
        ),
        Justification.VULNERABLE_CODE_NOT_IN_EXECUTE_PATH: "The vulnerable code is never executed in the product.",
        Justification.INLINE_MITIGATIONS_ALREADY_EXIST: (
            "Mitigations built into the product already prevent exploitation."
        ),
    },
    "ja": {
        "distribution": "開示に制限はありません。",
        "distribution_limited": "TLPラベルの範囲でのみ共有してください。",
        "unknown_supplier": "供給者不明",
        "component_of": "{product}の構成品 {component}",
        "vulnerability_note_title": "脆弱性の説明",
        "vulnerability_note_default": "本文書に記載の製品に対する{publisher}による{vuln}の評価です。",
        "eos_summary_title": "サポート終了",
        "eos_summary": (
            "{product}: EOL(販売・通常サポート終了)は{eol}、EOS(サポート終了)は{eos}です。EOLからEOSまでは"
            "セキュリティ更新とセキュリティアドバイザリのみを提供し、EOS以降は更新を提供しません。"
        ),
        "eos_summary_ended": "{product}: サポートは{eos}に終了しました。今後、更新は提供されません。",
        Justification.COMPONENT_NOT_PRESENT: "影響を受ける構成品は本製品に含まれていません。",
        Justification.VULNERABLE_CODE_NOT_PRESENT: "脆弱なコードは本製品に含まれていません。",
        Justification.VULNERABLE_CODE_CANNOT_BE_CONTROLLED_BY_ADVERSARY: (
            "本製品では脆弱なコードを攻撃者が制御することはできません。"
        ),
        Justification.VULNERABLE_CODE_NOT_IN_EXECUTE_PATH: "本製品では脆弱なコードが実行されることはありません。",
        Justification.INLINE_MITIGATIONS_ALREADY_EXIST: "本製品に組み込まれた対策により悪用は防止されています。",
    },
}


def phrase(lang: Lang, key: str, **values: str) -> str:
    return PHRASES[lang][key].format(**values)


def timestamp(value: dt.datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, as CSAF requires timezone-aware times."""
    if value.tzinfo is None:
        raise AdvisoryInputError(f"timestamp {value.isoformat()} has no timezone")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def release_name(release: DeviceRelease) -> str:
    return f"{release.manufacturer} {release.model} {release.version}"


def _component_name(component: Component) -> str:
    return f"{component.name} {component.version}" if component.version else component.name


def _helper(purl: str | None, cpe: str | None) -> Json | None:
    helper: Json = {}
    if cpe:
        helper["cpe"] = cpe
    if purl:
        helper["purl"] = purl
    return helper or None


class _ProductTree:
    """Assigns product ids and builds ``/product_tree``; ids are stable for the same inputs."""

    def __init__(self, doc: AdvisoryDocument) -> None:
        self.doc = doc
        self.release_ids = {r.version: f"CSAFPID-R{i}" for i, r in enumerate(doc.releases, start=1)}
        self.component_ids: dict[tuple[str, str | None, str | None, str | None], str] = {}
        self.relationships: dict[tuple[str, str], str] = {}
        self.components: dict[str, Component] = {}

    def product_id(self, assessment: Assessment) -> str:
        release = self.doc.release(assessment.release)
        release_id = self.release_ids[release.version]
        if assessment.component is None:
            return release_id
        component = release.component(assessment.component)
        key = (component.name, component.version, component.purl, component.cpe)
        if key not in self.component_ids:
            self.component_ids[key] = f"CSAFPID-C{len(self.component_ids) + 1}"
            self.components[self.component_ids[key]] = component
        component_id = self.component_ids[key]
        rel_key = (release_id, component_id)
        if rel_key not in self.relationships:
            self.relationships[rel_key] = f"{release_id}-{component_id.removeprefix('CSAFPID-')}"
        return self.relationships[rel_key]

    def to_json(self) -> Json:
        lang = self.doc.lang
        by_vendor: dict[str, dict[str, list[Json]]] = defaultdict(lambda: defaultdict(list))
        for release in self.doc.releases:
            product: Json = {"name": release_name(release), "product_id": self.release_ids[release.version]}
            helper = _helper(release.purl, release.cpe)
            if helper:
                product["product_identification_helper"] = helper
            by_vendor[release.manufacturer][release.model].append(
                {"category": "product_version", "name": release.version, "product": product}
            )
        for pid, component in self.components.items():
            product = {"name": _component_name(component), "product_id": pid}
            helper = _helper(component.purl, component.cpe)
            if helper:
                product["product_identification_helper"] = helper
            vendor = component.supplier or phrase(lang, "unknown_supplier")
            by_vendor[vendor][component.name].append(
                {"category": "product_version", "name": component.version or "-", "product": product}
            )
        branches = [
            {
                "category": "vendor",
                "name": vendor,
                "branches": [
                    {"category": "product_name", "name": name, "branches": versions} for name, versions in names.items()
                ],
            }
            for vendor, names in by_vendor.items()
        ]
        tree: Json = {"branches": branches}
        if self.relationships:
            names = {pid: _component_name(c) for pid, c in self.components.items()}
            releases = {self.release_ids[r.version]: release_name(r) for r in self.doc.releases}
            tree["relationships"] = [
                {
                    "category": "default_component_of",
                    "full_product_name": {
                        "name": phrase(lang, "component_of", component=names[cid], product=releases[rid]),
                        "product_id": pid,
                    },
                    "product_reference": cid,
                    "relates_to_product_reference": rid,
                }
                for (rid, cid), pid in self.relationships.items()
            ]
        return tree


def _note(note: Note) -> Json:
    out: Json = {"category": note.category, "text": note.text}
    if note.title:
        out["title"] = note.title
    return out


def _reference(ref: Reference) -> Json:
    return {"category": ref.category, "summary": ref.summary, "url": ref.url}


def _revision_key(number: str) -> tuple[int, ...]:
    """Integer or semantic version numbers (CSAF 3.1.11) in numeric order; pre-release parts are ignored."""
    if not number or not all(p.isdigit() for p in number.split("-", 1)[0].split("+", 1)[0].split(".")):
        raise AdvisoryInputError(f"revision number {number!r} is not an integer or semantic version")
    return tuple(int(p) for p in number.split("-", 1)[0].split("+", 1)[0].split("."))


def _document(doc: AdvisoryDocument, category: str, extra_notes: Iterable[Json] = ()) -> Json:
    revisions = sorted(doc.revisions, key=lambda r: _revision_key(r.number))
    publisher: Json = {
        "category": doc.publisher.category,
        "name": doc.publisher.name,
        "namespace": doc.publisher.namespace,
    }
    if doc.publisher.contact_details:
        publisher["contact_details"] = doc.publisher.contact_details
    if doc.publisher.issuing_authority:
        publisher["issuing_authority"] = doc.publisher.issuing_authority
    current = max(r.date for r in revisions)
    document: Json = {
        "category": category,
        "csaf_version": "2.0",
        "distribution": {
            "text": phrase(doc.lang, "distribution" if doc.tlp == "WHITE" else "distribution_limited"),
            "tlp": {"label": doc.tlp, "url": TLP_URL},
        },
        "lang": doc.lang,
        "publisher": publisher,
        "title": doc.title,
        "tracking": {
            "current_release_date": timestamp(current),
            "generator": {"date": timestamp(current), "engine": {"name": "medsec", "version": medsec.__version__}},
            "id": doc.tracking_id,
            "initial_release_date": timestamp(min(r.date for r in revisions)),
            "revision_history": [
                {"date": timestamp(r.date), "number": r.number, "summary": r.summary} for r in revisions
            ],
            "status": doc.status.value,
            "version": revisions[-1].number,
        },
    }
    notes = [*extra_notes, *(_note(n) for n in doc.notes)]
    if notes:
        document["notes"] = notes
    if doc.references:
        document["references"] = [_reference(r) for r in doc.references]
    return document


def _vulnerability(vuln: VulnerabilityEntry, tree: _ProductTree, doc: AdvisoryDocument, *, vex: bool) -> Json:
    lang = doc.lang
    label = vuln.cve or vuln.ids[0][1]
    status: dict[Status, list[str]] = defaultdict(list)
    flags: dict[Justification, list[str]] = defaultdict(list)
    impacts: dict[str, list[str]] = defaultdict(list)
    remediations: dict[tuple[str, str, str | None, str | None], list[str]] = defaultdict(list)
    seen: dict[str, Status] = {}
    for a in vuln.assessments:
        pid = tree.product_id(a)
        if pid in seen:
            # CSAF 6.1.6: one product, one status per vulnerability.
            raise AdvisoryInputError(f"{label}: product {pid} assessed twice ({seen[pid]} and {a.status})")
        seen[pid] = a.status
        status[a.status].append(pid)
        if a.status is Status.KNOWN_NOT_AFFECTED:
            if a.justification is not None:
                flags[a.justification].append(pid)
            impacts[a.impact_statement or phrase(lang, str(a.justification))].append(pid)
        if vex and a.status is Status.KNOWN_AFFECTED and not a.remediations:
            # CSAF 6.1.27.10: a VEX must say what to do about every affected product.
            raise AdvisoryInputError(
                f"{label}: affected product {pid} needs a remediation (action statement, CSAF 6.1.27.10)"
            )
        for r in a.remediations:
            date = timestamp(r.date) if r.date else None
            remediations[(r.category.value, r.details, r.url, date)].append(pid)
    out: Json = {}
    if vuln.cve:
        out["cve"] = vuln.cve
    if vuln.cwe:
        out["cwe"] = {"id": vuln.cwe[0], "name": vuln.cwe[1]}
    if vuln.discovery_date:
        out["discovery_date"] = timestamp(vuln.discovery_date)
    if flags:
        out["flags"] = [{"label": j.value, "product_ids": pids} for j, pids in flags.items()]
    if vuln.ids:
        out["ids"] = [{"system_name": s, "text": t} for s, t in vuln.ids]
    out["notes"] = [
        {
            "category": "description",
            "text": vuln.description
            or phrase(lang, "vulnerability_note_default", publisher=doc.publisher.name, vuln=label),
            "title": phrase(lang, "vulnerability_note_title"),
        }
    ]
    out["product_status"] = {s.value: pids for s, pids in sorted(status.items())}
    if vuln.references:
        out["references"] = [_reference(r) for r in vuln.references]
    if vuln.release_date:
        out["release_date"] = timestamp(vuln.release_date)
    if remediations:
        out["remediations"] = []
        for (category, details, url, date), pids in remediations.items():
            item: Json = {"category": category, "details": details, "product_ids": pids}
            if url:
                item["url"] = url
            if date:
                item["date"] = date
            out["remediations"].append(item)
    if vuln.cvss_v3:
        scored = [p for s in (Status.KNOWN_AFFECTED, Status.FIXED, Status.UNDER_INVESTIGATION) for p in status[s]]
        if scored:
            version = "3.0" if vuln.cvss_v3.vector.startswith("CVSS:3.0/") else "3.1"
            out["scores"] = [
                {
                    "cvss_v3": {
                        "baseScore": vuln.cvss_v3.base_score,
                        "baseSeverity": vuln.cvss_v3.base_severity,
                        "vectorString": vuln.cvss_v3.vector,
                        "version": version,
                    },
                    "products": scored,
                }
            ]
    if impacts:
        out["threats"] = [
            {"category": "impact", "details": text, "product_ids": pids} for text, pids in impacts.items()
        ]
    if vuln.title:
        out["title"] = vuln.title
    return out


def _with_vulnerabilities(doc: AdvisoryDocument, category: str, *, vex: bool) -> Json:
    if not doc.vulnerabilities:
        raise AdvisoryInputError(f"a {category} needs at least one vulnerability (CSAF 6.1.27.11)")
    cves = [v.cve for v in doc.vulnerabilities if v.cve]
    if len(cves) != len(set(cves)):
        raise AdvisoryInputError("a CVE appears twice in one document (CSAF 6.1.23)")
    tree = _ProductTree(doc)
    vulnerabilities = [_vulnerability(v, tree, doc, vex=vex) for v in doc.vulnerabilities]
    result: Json = {
        "document": _document(doc, category),
        "product_tree": tree.to_json(),
        "vulnerabilities": vulnerabilities,
    }
    check_mandatory(result)
    return result


def build_security_advisory(doc: AdvisoryDocument) -> Json:
    """A ``csaf_security_advisory``: what is affected or fixed and what to do (SM-2)."""
    return _with_vulnerabilities(doc, "csaf_security_advisory", vex=False)


def build_vex(doc: AdvisoryDocument) -> Json:
    """A ``csaf_vex``: triage results, including not-affected with justification (handbook §6.4)."""
    return _with_vulnerabilities(doc, "csaf_vex", vex=True)


def build_end_of_support_notice(doc: AdvisoryDocument, *, eol: dt.date, eos: dt.date, today: dt.date) -> Json:
    """A ``csaf_informational_advisory`` announcing EOL/EOS of the document's releases (SM-4, handbook 表2).

    The generator writes the summary; the caller's notes (e.g. the legacy plan's hospital guidance) follow it.
    CSAF 6.1.27.2 requires at least one external reference, e.g. the manufacturer's lifecycle page.
    """
    if doc.vulnerabilities:
        raise AdvisoryInputError("an informational advisory has no vulnerabilities (CSAF 6.1.27.3)")
    if not any(r.category == "external" for r in doc.references):
        raise AdvisoryInputError("an end-of-support notice needs an external reference (CSAF 6.1.27.2)")
    if eol > eos:
        raise AdvisoryInputError(f"EOL {eol} is after EOS {eos}")
    products = ", ".join(release_name(r) for r in doc.releases)
    if today >= eos:
        text = phrase(doc.lang, "eos_summary_ended", product=products, eos=eos.isoformat())
    else:
        text = phrase(doc.lang, "eos_summary", product=products, eol=eol.isoformat(), eos=eos.isoformat())
    summary = {"category": "summary", "text": text, "title": phrase(doc.lang, "eos_summary_title")}
    result: Json = {"document": _document(doc, "csaf_informational_advisory", [summary])}
    if doc.releases:
        result["product_tree"] = _ProductTree(doc).to_json()
    check_mandatory(result)
    return result


def advisory_filename(tracking_id: str) -> str:
    """CSAF 2.0 5.1: lower-case id, every character outside ``+-a-z0-9`` replaced by ``_``, then ``.json``."""
    return "".join(c if c in "+-" or (c.isascii() and c.isalnum()) else "_" for c in tracking_id.lower()) + ".json"
