"""The MDS2-style disclosure (Manufacturer Disclosure Statement for Medical Device Security, 2019 form).

Hospitals and regulators ask for the MDS2 at release (handbook 表2: security policy, EOL/EOS plan, SBOM
and MDS2). This module answers the form's questions that medsec holds the data for, from the database at
generation time, and marks every other question as needing a manual answer, so nobody mistakes an
unanswered question for a "No".

Two layers, so the answers are testable without a database:

* :func:`collect_facts` reads what the server knows about one model and release (:class:`Mds2Facts`);
* :func:`answer_form` turns those facts into items, one per question, each with its section, id,
  question text, answer (``Yes``/``No``/``N/A`` or ``None`` with ``manual`` set), note and evidence.

:func:`build_mds2` does both and returns a JSON-ready dict (canonical-JSON safe: no floats);
:func:`mds2_to_xlsx` writes that dict as a workbook with a cover sheet and one sheet of the form.
Section names and codes are the 2019 form's; the question wording is medsec's own.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Alignment, Font, PatternFill
from sqlalchemy import column, func, inspect, select, table
from sqlalchemy.orm import Session

from medsec.errors import NotFound
from medsec.server.models import (
    AuditCheckpoint,
    AuditHead,
    Checkin,
    Device,
    DeviceLogCheckpoint,
    DeviceModel,
    Organization,
    OrgKind,
    Release,
)
from medsec.server.models_remote import RemotePolicy, RemoteRecording, RemoteSession
from medsec.server.models_updates import Campaign, MaintenanceWindow
from medsec.server.models_vulns import FeedImport, Finding, PublishedAdvisory, ReleaseLifecycleRow, SbomDocument

FORM = "MDS2"
FORM_EDITION = "2019"
YES, NO, NA = "Yes", "No", "N/A"
MANUAL = "Manual answer needed"

# The 2019 form's sections in its own order: (code, name).
SECTIONS: tuple[tuple[str, str], ...] = (
    ("MPII", "Management of Personally Identifiable Information"),
    ("ALOF", "Automatic Logoff"),
    ("AUDT", "Audit Controls"),
    ("AUTH", "Authorization"),
    ("CSUP", "Cyber Security Product Upgrades"),
    ("DIDT", "Health Data De-Identification"),
    ("DTBK", "Data Backup and Disaster Recovery"),
    ("EMRG", "Emergency Access"),
    ("IGAU", "Health Data Integrity and Authenticity"),
    ("MLDP", "Malware Detection/Protection"),
    ("NAUT", "Node Authentication"),
    ("CONN", "Connectivity Capabilities"),
    ("PAUT", "Person Authentication"),
    ("PLOK", "Physical Locks"),
    ("RDMP", "Roadmap for Third Party Components in Device Life Cycle"),
    ("SBOM", "Software Bill of Materials"),
    ("SAHD", "System and Application Hardening"),
    ("SGUD", "Security Guidance"),
    ("STCF", "Health Data Storage Confidentiality"),
    ("TXCF", "Transmission Confidentiality"),
    ("TXIG", "Transmission Integrity"),
    ("RMOT", "Remote Service"),
    ("OTHR", "Other Security Considerations"),
)
SECTION_NAMES = dict(SECTIONS)
XLSX_COLUMNS = ("Section", "Question ID", "Question", "Answer", "Note / evidence")


@dataclass(frozen=True)
class ProtectionCounts:
    """Protection events reported by the devices in scope, by kind (table ``protection_events``)."""

    available: bool = False  # the table exists on this server
    exec_enforce: int = 0  # allowlist decisions in enforce mode
    exec_monitor: int = 0
    exec_denied: int = 0
    integrity: int = 0
    port_policy_applied: int = 0  # port, interface or USB policy applied
    usb_policy_applied: int = 0


@dataclass(frozen=True)
class Mds2Facts:
    """Everything the server knows that bears on the form, for one model and (optionally) one release."""

    manufacturer: str
    product: str
    models: tuple[str, ...]
    hardware_ids: tuple[str, ...]
    version: str | None
    release_status: str | None = None
    release_counter: int | None = None
    target_sha256: str | None = None
    notes_en: bool = False
    notes_ja: bool = False
    rollback_supported: bool | None = None
    fixed_vulnerabilities: int = 0
    expected_downtime_minutes: int | None = None
    eol: str | None = None
    eos: str | None = None
    lifecycle_recorded: bool = False
    legacy_plan: bool = False
    notice_date: str | None = None
    sbom_documents: int = 0
    sbom_supplier_documents: int = 0
    sbom_components: int = 0
    sbom_formats: tuple[str, ...] = ()
    feed_imports: int = 0
    findings_active: int = 0
    findings_triaged: int = 0
    advisories: tuple[str, ...] = ()
    campaigns: int = 0
    devices: int = 0
    devices_enrolled: int = 0
    checkins: int = 0
    log_checkpoints: int = 0
    hospitals: int = 0
    hospitals_with_window: int = 0
    approvals_required_min: int | None = None
    emergency_allowed: bool | None = None
    max_window_minutes: int | None = None
    remote_sessions: int = 0
    remote_recordings: int = 0
    remote_confirmed: int = 0
    audit_entries: int = 0
    audit_checkpoint_size: int | None = None
    protection: ProtectionCounts = field(default_factory=ProtectionCounts)


@dataclass(frozen=True)
class Mds2Item:
    section: str  # section code, e.g. "CSUP"
    id: str  # e.g. "CSUP-1"
    question: str
    answer: str | None  # Yes / No / N/A, or None when a person must answer
    note: str
    evidence: tuple[str, ...] = ()

    @property
    def manual(self) -> bool:
        return self.answer is None

    def to_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "section_name": SECTION_NAMES[self.section],
            "id": self.id,
            "question": self.question,
            "answer": self.answer,
            "manual": self.manual,
            "note": self.note,
            "evidence": list(self.evidence),
        }


# -- the questions ---------------------------------------------------------------------------------------

Answer = tuple[str | None, str, tuple[str, ...]]  # (answer, note, evidence)
Rule = Callable[[Mds2Facts], Answer]


def _manual(why: str) -> Rule:
    def rule(_f: Mds2Facts) -> Answer:
        return None, f"{MANUAL}: {why}", ()

    return rule


def _needs_release(f: Mds2Facts) -> Answer | None:
    if f.version is None or f.release_status is None:
        return None, f"{MANUAL}: no release of {f.product} is recorded on the server", ()
    return None


def _signed_updates(f: Mds2Facts) -> Answer:
    if (missing := _needs_release(f)) is not None:
        return missing
    if f.release_status == "published" and f.target_sha256:
        return (
            YES,
            "Updates are TUF targets signed with offline keys and verified on the device before install (SM-6).",
            (f"releases: {f.product} {f.version} published, target sha256 {f.target_sha256}",),
        )
    return NO, f"Release {f.version} is {f.release_status}, not published as a signed update.", ()


def _release_notes(f: Mds2Facts) -> Answer:
    if (missing := _needs_release(f)) is not None:
        return missing
    langs = [lang for lang, present in (("en", f.notes_en), ("ja", f.notes_ja)) if present]
    if langs:
        return (
            YES,
            "Release notes and update notices are shown to hospitals in the portal and pushed to their channels.",
            (f"releases.notes ({', '.join(langs)}); fixed vulnerabilities listed: {f.fixed_vulnerabilities}",),
        )
    return NO, f"Release {f.version} has no release notes recorded.", ()


def _downgrade(f: Mds2Facts) -> Answer:
    if (missing := _needs_release(f)) is not None:
        return missing
    if f.release_counter is not None:
        return (
            YES,
            "Devices refuse a release whose counter is not higher than the installed one (SM-6).",
            (f"releases.release_counter = {f.release_counter}",),
        )
    return NO, "This release has no release counter (it was never signed as an update).", ()


def _rollback(f: Mds2Facts) -> Answer:
    if (missing := _needs_release(f)) is not None:
        return missing
    if f.rollback_supported:
        return (
            YES,
            "A/B slots: a failed health check rolls back to the known-good slot automatically.",
            ("releases.rollback_supported = true",),
        )
    return NO, "This release is marked as not supporting rollback.", ("releases.rollback_supported = false",)


def _owner_window(f: Mds2Facts) -> Answer:
    if f.hospitals == 0:
        return None, f"{MANUAL}: no device of this model and release is registered to a hospital yet", ()
    return (
        YES,
        "Installs happen only inside the hospital's maintenance window; a hospital may accept or postpone a release.",
        (f"maintenance_windows: {f.hospitals_with_window} of {f.hospitals} hospitals have set a window",),
    )


def _campaigns(f: Mds2Facts) -> Answer:
    if (missing := _needs_release(f)) is not None:
        return missing
    return (
        YES,
        "Updates are rolled out in staged campaigns with success and error thresholds and two-person approval.",
        (f"campaigns for this release: {f.campaigns}",),
    )


def _third_party_patches(f: Mds2Facts) -> Answer:
    if f.sbom_components == 0:
        return None, f"{MANUAL}: no SBOM is recorded, so third-party monitoring cannot be shown", ()
    return (
        YES,
        "Third-party components are matched against vulnerability feeds and each finding is triaged (VEX).",
        (f"feed imports: {f.feed_imports}; active findings: {f.findings_active}; triaged: {f.findings_triaged}",),
    )


def _sbom(f: Mds2Facts) -> Answer:
    if (missing := _needs_release(f)) is not None:
        return missing
    if f.sbom_documents:
        return (
            YES,
            "The SBOM is kept per release and can be exported as CycloneDX 1.6.",
            (f"sbom_documents: {f.sbom_documents} ({', '.join(f.sbom_formats)}), {f.sbom_components} components",),
        )
    return NO, f"No SBOM is recorded for {f.product} {f.version}.", ()


def _supplier_sboms(f: Mds2Facts) -> Answer:
    if (missing := _needs_release(f)) is not None:
        return missing
    if not f.sbom_documents:
        return NA, "No SBOM is recorded for this release.", ()
    if f.sbom_supplier_documents:
        return (
            YES,
            "Supplier SBOMs are stored apart with their provenance and merged into the release view.",
            (f"supplier sbom_documents: {f.sbom_supplier_documents}",),
        )
    return NO, "Only the manufacturer's own SBOM is recorded; no supplier SBOM.", ()


def _vuln_monitoring(f: Mds2Facts) -> Answer:
    if f.feed_imports:
        return (
            YES,
            "OSV, NVD, CISA KEV and EPSS feeds are imported and matched against the SBOM.",
            (f"feed_imports: {f.feed_imports}; active findings for this release: {f.findings_active}",),
        )
    return NO, "No vulnerability feed has been imported on this server.", ()


def _eos_dates(f: Mds2Facts) -> Answer:
    if (missing := _needs_release(f)) is not None:
        return missing
    if f.eol or f.eos:
        return (
            YES,
            "End of life and end of support are declared per release and shared with hospitals (SM-4).",
            (f"releases: EOL {f.eol or '-'}, EOS {f.eos or '-'}; notice date {f.notice_date or '-'}",),
        )
    return NO, "No EOL/EOS dates are recorded for this release.", ()


def _legacy_plan(f: Mds2Facts) -> Answer:
    if (missing := _needs_release(f)) is not None:
        return missing
    if f.legacy_plan:
        return (
            YES,
            "A legacy plan (compensating controls, timeline, replacement path) is shared with hospitals.",
            ("release_lifecycles.legacy_plan",),
        )
    return NO, "No legacy plan is recorded for this release.", ()


def _advisories(f: Mds2Facts) -> Answer:
    if (missing := _needs_release(f)) is not None:
        return missing
    if f.advisories:
        return (
            YES,
            "Security advisories and VEX are published as signed CSAF 2.0 documents.",
            (f"published_advisories: {', '.join(f.advisories)}",),
        )
    return NO, "No advisory has been published for this release yet.", ()


def _audit_device(f: Mds2Facts) -> Answer:
    if f.log_checkpoints:
        return (
            YES,
            "Each device keeps a Merkle-tree access log; the server cosigns its checkpoints as witness (RA-2).",
            (f"device_log_checkpoints: {f.log_checkpoints} from {f.devices_enrolled} enrolled devices",),
        )
    return None, f"{MANUAL}: no device of this model and release has sent an access-log checkpoint yet", ()


def _audit_server(f: Mds2Facts) -> Answer:
    if f.audit_checkpoint_size is None:
        return None, f"{MANUAL}: the server audit log has no signed checkpoint yet", ()
    return (
        YES,
        "Server actions (logins, approvals, releases, triage, reports) go to a tamper-evident log with signed "
        "checkpoints (RFC 9162).",
        (f"audit_entries: {f.audit_entries}; latest checkpoint size {f.audit_checkpoint_size}",),
    )


def _remote_recorded(f: Mds2Facts) -> Answer:
    if f.remote_sessions == 0:
        return None, f"{MANUAL}: no remote session has been held on a device of this model and release", ()
    return (
        YES,
        "Remote maintenance sessions are recorded (asciicast) and the recording's hash is in the audit log.",
        (f"remote_sessions: {f.remote_sessions}; sealed recordings: {f.remote_recordings}",),
    )


def _remote_supported(f: Mds2Facts) -> Answer:
    return (
        YES,
        "Remote service runs through the medsec SSH gateway over a dedicated, outbound-only device connection (RA-4).",
        (f"remote_sessions on this model and release: {f.remote_sessions}",),
    )


def _remote_approval(f: Mds2Facts) -> Answer:
    if f.approvals_required_min is None:
        return (
            YES,
            "Every session needs the hospital's prior approval (default policy: one responsible person).",
            ("remote_policies: none set, default applies",),
        )
    return (
        YES,
        "Every session needs prior approval by the hospital's responsible persons.",
        (f"remote_policies: at least {f.approvals_required_min} approval(s) required",),
    )


def _remote_window(f: Mds2Facts) -> Answer:
    limit = f.max_window_minutes if f.max_window_minutes is not None else 240
    return (
        YES,
        "A remote session ends when its approved window closes; certificates are short-lived and bound to one session.",
        (f"remote_policies.max_window_minutes: {limit}",),
    )


def _remote_confirmed(f: Mds2Facts) -> Answer:
    if f.remote_sessions == 0:
        return None, f"{MANUAL}: no remote session has been held on a device of this model and release", ()
    return (
        YES,
        "The engineer reports the work; the hospital's responsible person confirms the end (RA-3, RA-5).",
        (f"remote_sessions confirmed by the hospital: {f.remote_confirmed} of {f.remote_sessions}",),
    )


def _emergency(f: Mds2Facts) -> Answer:
    if f.emergency_allowed is None:
        return None, f"{MANUAL}: no hospital policy for emergency maintenance is recorded", ()
    if f.emergency_allowed:
        return (
            YES,
            "Emergency remote maintenance may start before approval and must be approved afterwards.",
            ("remote_policies.emergency_allowed = true",),
        )
    return NO, "Hospitals' policies do not allow emergency remote maintenance.", ("remote_policies",)


def _node_auth(f: Mds2Facts) -> Answer:
    if f.devices_enrolled == 0:
        return None, f"{MANUAL}: no device of this model and release has enrolled yet", ()
    return (
        YES,
        "Each device has its own Ed25519 key; every report to the server is signed with a nonce and counter.",
        (f"devices enrolled with a key: {f.devices_enrolled}; signed check-ins: {f.checkins}",),
    )


def _connects_out(f: Mds2Facts) -> Answer:
    if f.checkins == 0:
        return None, f"{MANUAL}: no device of this model and release has checked in yet", ()
    return (
        YES,
        "The device connects outbound to the manufacturer's medsec server for updates and status.",
        (f"checkins: {f.checkins}",),
    )


def _allowlist(f: Mds2Facts) -> Answer:
    p = f.protection
    if not p.available:
        return None, f"{MANUAL}: this server stores no protection events", ()
    if p.exec_enforce:
        return (
            YES,
            "Execution allowlisting (fanotify) is enforced: software outside the signed trust database is refused "
            "(RL-3).",
            (f"protection_events: {p.exec_enforce} enforce-mode decisions, {p.exec_denied} blocked executions",),
        )
    if p.exec_monitor:
        return (
            NO,
            "Allowlisting runs in monitor mode only on the devices in scope: nothing is blocked yet.",
            (f"protection_events: {p.exec_monitor} monitor-mode decisions",),
        )
    return None, f"{MANUAL}: no device of this model and release has reported allowlist decisions", ()


def _integrity(f: Mds2Facts) -> Answer:
    p = f.protection
    if not p.available:
        return None, f"{MANUAL}: this server stores no protection events", ()
    if p.integrity or p.exec_enforce or p.exec_monitor:
        return (
            YES,
            "The device checks its software against a known-good baseline and restores altered files (RL-1).",
            (f"protection_events: {p.integrity} integrity events",),
        )
    return None, f"{MANUAL}: no device of this model and release has reported integrity monitoring", ()


def _ports(f: Mds2Facts) -> Answer:
    p = f.protection
    if not p.available:
        return None, f"{MANUAL}: this server stores no protection events", ()
    if p.port_policy_applied:
        return (
            YES,
            "A signed port policy keeps unused interfaces down and inbound traffic default-deny (PA-2).",
            (f"protection_events: port/interface policy applied {p.port_policy_applied} times",),
        )
    return None, f"{MANUAL}: no device of this model and release has reported an applied port policy", ()


def _usb(f: Mds2Facts) -> Answer:
    p = f.protection
    if not p.available:
        return None, f"{MANUAL}: this server stores no protection events", ()
    if p.usb_policy_applied:
        return (
            YES,
            "USB devices are default-deny with an allow list; the service console needs maintenance mode (PA-3).",
            (f"protection_events: USB policy applied {p.usb_policy_applied} times",),
        )
    return None, f"{MANUAL}: no device of this model and release has reported an applied USB policy", ()


def _ssh(_f: Mds2Facts) -> Answer:
    return (
        YES,
        "Remote service traffic is SSH with OpenSSH certificates issued per approved session.",
        ("medsec gateway (asyncssh)",),
    )


def _signed_reports(f: Mds2Facts) -> Answer:
    if f.checkins == 0:
        return None, f"{MANUAL}: no device of this model and release has checked in yet", ()
    return (
        YES,
        "Device reports are signed (Ed25519) and updates are verified with TUF hashes and signatures.",
        (f"signed checkins: {f.checkins}",),
    )


QUESTIONS: tuple[tuple[str, str, str, Rule], ...] = (
    ("MPII", "MPII-1", "Does the device display, transmit, store or modify personally identifiable information?",
     _manual("medsec holds no data about the clinical data the device processes")),
    ("MPII", "MPII-2", "Is personally identifiable information kept in volatile memory only (deleted at power-off)?",
     _manual("depends on the device application")),
    ("ALOF", "ALOF-1", "Does the device log out an idle user or lock its user interface after a set time?",
     _manual("the device user interface is outside medsec")),
    ("ALOF", "ALOF-2", "Do remote service sessions end by themselves when their approved time is over?",
     _remote_window),
    ("AUDT", "AUDT-1", "Does the device keep an audit trail of access to it?", _audit_device),
    ("AUDT", "AUDT-2", "Are remote service sessions recorded?", _remote_recorded),
    ("AUDT", "AUDT-3", "Are the manufacturer's security-relevant actions logged in a tamper-evident way?",
     _audit_server),
    ("AUDT", "AUDT-4", "Can audit records of clinical users' actions on the device be exported?",
     _manual("clinical user events are outside medsec")),
    ("AUTH", "AUTH-1", "Does the device stop unauthorised users from using it (login, role, or similar)?",
     _manual("the device user interface is outside medsec")),
    ("AUTH", "AUTH-2", "Does service access to the device need the owner's prior authorisation?", _remote_approval),
    ("CSUP", "CSUP-1", "Are updates, third-party ones included, delivered signed and verified before install?",
     _signed_updates),
    ("CSUP", "CSUP-2", "Are updates documented for the owner (release notes, fixed vulnerabilities)?",
     _release_notes),
    ("CSUP", "CSUP-3", "Does the device refuse to install an older release than the installed one?", _downgrade),
    ("CSUP", "CSUP-4", "Can a failed update be rolled back to the previous software?", _rollback),
    ("CSUP", "CSUP-5", "Does the owner control when updates are installed?", _owner_window),
    ("CSUP", "CSUP-6", "Are updates rolled out in stages with stop thresholds?", _campaigns),
    ("CSUP", "CSUP-7", "Does the manufacturer monitor third-party components for vulnerabilities and patch them?",
     _third_party_patches),
    ("DIDT", "DIDT-1", "Can the device remove personal identifiers from health data it exports?",
     _manual("the device application's data export is outside medsec")),
    ("DTBK", "DTBK-1", "Can the owner back up the device's health data and configuration?",
     _manual("data backup is outside medsec")),
    ("DTBK", "DTBK-2", "Does the device keep a known-good copy of its software to recover from a failed update?",
     _rollback),
    ("EMRG", "EMRG-1", "Is there emergency (break-glass) access to the device's clinical functions?",
     _manual("the device user interface is outside medsec")),
    ("EMRG", "EMRG-2", "Can emergency service be given before approval, with approval recorded afterwards?",
     _emergency),
    ("IGAU", "IGAU-1", "Does the device ensure the integrity of stored health data (checksums, signatures)?",
     _manual("health data storage is outside medsec")),
    ("IGAU", "IGAU-2", "Is the device software's integrity checked at install and while running?", _integrity),
    ("MLDP", "MLDP-1", "Does the device run anti-malware scanning software?",
     _manual("medsec uses allowlisting, not signature scanning; state any scanner here")),
    ("MLDP", "MLDP-2", "Does the device use application allowlisting to stop unknown software from running?",
     _allowlist),
    ("NAUT", "NAUT-1", "Does the device authenticate itself to the systems it talks to?", _node_auth),
    ("CONN", "CONN-1", "Does the device connect to the manufacturer's servers over the network?", _connects_out),
    ("CONN", "CONN-2", "Which wireless and wired interfaces does the device have?",
     _manual("the hardware interfaces are not recorded in medsec")),
    ("PAUT", "PAUT-1", "Are service personnel authenticated individually with short-lived credentials?",
     _remote_supported),
    ("PAUT", "PAUT-2", "Does the device support individual user accounts and password rules for clinical users?",
     _manual("the device user interface is outside medsec")),
    ("PLOK", "PLOK-1", "Are the device's storage media and ports physically secured (locks, tamper seals)?",
     _manual("the enclosure is not recorded in medsec")),
    ("PLOK", "PLOK-2", "Are USB and other cable-attached devices refused unless allowed?", _usb),
    ("RDMP", "RDMP-1", "Are end-of-life and end-of-support dates of the release and its components published?",
     _eos_dates),
    ("RDMP", "RDMP-2", "Is there a plan for components whose support ends before the device's?", _legacy_plan),
    ("SBOM", "SBOM-1", "Is a software bill of materials available for this release?", _sbom),
    ("SBOM", "SBOM-2", "Are supplier SBOMs kept with their provenance?", _supplier_sboms),
    ("SBOM", "SBOM-3", "Are the SBOM's components checked against vulnerability databases?", _vuln_monitoring),
    ("SAHD", "SAHD-1", "Are unused network ports and interfaces disabled?", _ports),
    ("SAHD", "SAHD-2", "Is software installation limited to signed releases from the manufacturer?", _signed_updates),
    ("SAHD", "SAHD-3", "Is the device hardened to a published benchmark (e.g. CIS)?",
     _manual("no hardening benchmark is recorded in medsec")),
    ("SGUD", "SGUD-1", "Are security advisories for the device published to owners?", _advisories),
    ("SGUD", "SGUD-2", "Is there security guidance for operating the device after its support ends?", _legacy_plan),
    ("STCF", "STCF-1", "Is health data stored on the device encrypted?",
     _manual("health data storage is outside medsec")),
    ("TXCF", "TXCF-1", "Is remote service traffic encrypted?", _ssh),
    ("TXCF", "TXCF-2", "Is health data sent by the device encrypted in transit?",
     _manual("clinical data interfaces are outside medsec")),
    ("TXIG", "TXIG-1", "Are the device's reports and received updates protected against alteration?",
     _signed_reports),
    ("RMOT", "RMOT-1", "Does the device allow remote service?", _remote_supported),
    ("RMOT", "RMOT-2", "Does every remote session need the owner's approval?", _remote_approval),
    ("RMOT", "RMOT-3", "Does the owner confirm the end of each remote session?", _remote_confirmed),
    ("OTHR", "OTHR-1", "Other security considerations.",
     _manual("add anything the form's sections do not cover")),
)  # fmt: skip


def answer_form(facts: Mds2Facts) -> list[Mds2Item]:
    """One item per question, in the form's section order."""
    order = {code: i for i, (code, _name) in enumerate(SECTIONS)}
    items = []
    for section, qid, question, rule in sorted(QUESTIONS, key=lambda q: order[q[0]]):
        answer, note, evidence = rule(facts)
        items.append(Mds2Item(section, qid, question, answer, note, evidence))
    return items


def facts_to_json(facts: Mds2Facts) -> dict[str, Any]:
    return {
        "manufacturer": facts.manufacturer,
        "product": facts.product,
        "models": list(facts.models),
        "hardware_ids": list(facts.hardware_ids),
        "version": facts.version,
    }


def disclosure(facts: Mds2Facts, generated_at: dt.datetime) -> dict[str, Any]:
    """The JSON form of the disclosure (canonical-JSON safe)."""
    items = answer_form(facts)
    return {
        "form": FORM,
        "form_edition": FORM_EDITION,
        **facts_to_json(facts),
        "generated_at": generated_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "items": [i.to_json() for i in items],
        "summary": {
            "questions": len(items),
            "answered": sum(1 for i in items if not i.manual),
            "manual": sum(1 for i in items if i.manual),
        },
    }


# -- reading the database ----------------------------------------------------------------------------------


def build_mds2(
    session: Session, product: str, version: str | None, *, now: dt.datetime | None = None
) -> dict[str, Any]:
    """The MDS2-style disclosure of ``product`` at release ``version`` (the newest release when None).

    Raises :class:`~medsec.errors.NotFound` when the server knows neither a device model nor a release
    of ``product``, or ``version`` is given and no such release exists.
    """
    facts = collect_facts(session, product, version)
    return disclosure(facts, now or dt.datetime.now(dt.UTC))


def collect_facts(session: Session, product: str, version: str | None) -> Mds2Facts:
    """What the database says about ``product`` at ``version`` (the newest release when None)."""
    models = list(session.scalars(select(DeviceModel).where(DeviceModel.product == product).order_by(DeviceModel.id)))
    release = _release(session, product, version)
    if not models and release is None:
        raise NotFound("unknown_product", f"no device model or release of product {product!r} is known")
    if version is not None and release is None:
        raise NotFound("unknown_release", f"no release {product} {version} is known")
    maker = session.scalar(
        select(Organization.name).where(Organization.kind == OrgKind.MANUFACTURER.value).order_by(Organization.id)
    )
    device_stmt = select(Device.id, Device.hospital_id, Device.public_key).join(
        DeviceModel, Device.model_id == DeviceModel.id
    )
    device_stmt = device_stmt.where(DeviceModel.product == product)
    if release is not None:
        device_stmt = device_stmt.where(Device.installed_version == release.version)
    device_rows = session.execute(device_stmt).all()
    device_ids = [r.id for r in device_rows]
    hospital_ids = sorted({r.hospital_id for r in device_rows})
    facts = Mds2Facts(
        manufacturer=maker or "",
        product=product,
        models=tuple(m.name for m in models),
        hardware_ids=tuple(m.hardware_id for m in models),
        version=release.version if release is not None else None,
        devices=len(device_ids),
        devices_enrolled=sum(1 for r in device_rows if r.public_key),
        hospitals=len(hospital_ids),
        audit_entries=session.scalar(select(AuditHead.size).where(AuditHead.id == 1)) or 0,
        audit_checkpoint_size=session.scalar(select(func.max(AuditCheckpoint.size))),
        feed_imports=session.scalar(select(func.count()).select_from(FeedImport)) or 0,
        **_device_facts(session, device_ids, hospital_ids),
        protection=_protection_counts(session, device_ids),
    )
    if release is None:
        return facts
    return _with_release(session, facts, release)


def _release(session: Session, product: str, version: str | None) -> Release | None:
    stmt = select(Release).where(Release.product == product)
    if version is not None:
        return session.scalar(stmt.where(Release.version == version))
    # The newest: highest signed release counter, then the newest row (drafts have no counter).
    return session.scalar(
        stmt.order_by(Release.release_counter.desc().nulls_last(), Release.created_at.desc(), Release.id.desc())
    )


def _device_facts(session: Session, device_ids: list[int], hospital_ids: list[int]) -> dict[str, Any]:

    ids = device_ids or [-1]
    hospitals = hospital_ids or [-1]
    policies = list(session.scalars(select(RemotePolicy).where(RemotePolicy.hospital_id.in_(hospitals))))
    sessions = select(RemoteSession.id).where(RemoteSession.device_id.in_(ids))
    return {
        "checkins": session.scalar(select(func.count()).select_from(Checkin).where(Checkin.device_id.in_(ids))) or 0,
        "log_checkpoints": session.scalar(
            select(func.count()).select_from(DeviceLogCheckpoint).where(DeviceLogCheckpoint.device_id.in_(ids))
        )
        or 0,
        "hospitals_with_window": session.scalar(
            select(func.count(func.distinct(MaintenanceWindow.organization_id))).where(
                MaintenanceWindow.organization_id.in_(hospitals)
            )
        )
        or 0,
        "approvals_required_min": min((p.approvals_required for p in policies), default=None),
        # Emergency access is possible if any hospital in scope allows it; the default policy allows it.
        "emergency_allowed": any(p.emergency_allowed for p in policies)
        if policies
        else (True if hospital_ids else None),
        "max_window_minutes": max((p.max_window_minutes for p in policies), default=None),
        "remote_sessions": session.scalar(select(func.count()).select_from(sessions.subquery())) or 0,
        "remote_recordings": session.scalar(
            select(func.count()).select_from(RemoteRecording).where(RemoteRecording.session_id.in_(sessions))
        )
        or 0,
        "remote_confirmed": session.scalar(
            select(func.count())
            .select_from(RemoteSession)
            .where(RemoteSession.device_id.in_(ids), RemoteSession.confirmed_at.is_not(None))
        )
        or 0,
    }


def _protection_counts(session: Session, device_ids: list[int]) -> ProtectionCounts:
    """Counts from ``protection_events`` when this server has the table (it arrives with device protection)."""
    if not inspect(session.connection()).has_table("protection_events"):
        return ProtectionCounts()
    events = table("protection_events", column("device_id"), column("category"), column("action"), column("mode"))
    stmt = (
        select(events.c.category, events.c.action, events.c.mode, func.count())
        .where(events.c.device_id.in_(device_ids or [-1]))
        .group_by(events.c.category, events.c.action, events.c.mode)
    )
    counts: dict[str, int] = {}
    for category, action, mode, n in session.execute(stmt):
        if category in ("exec", "open") and mode == "enforce":
            counts["exec_enforce"] = counts.get("exec_enforce", 0) + n
        if category in ("exec", "open") and mode == "monitor":
            counts["exec_monitor"] = counts.get("exec_monitor", 0) + n
        if category == "exec" and action == "deny":
            counts["exec_denied"] = counts.get("exec_denied", 0) + n
        if category == "integrity":
            counts["integrity"] = counts.get("integrity", 0) + n
        if category in ("port", "interface") and action == "applied":
            counts["port_policy_applied"] = counts.get("port_policy_applied", 0) + n
        if category == "usb" and action == "applied":
            counts["usb_policy_applied"] = counts.get("usb_policy_applied", 0) + n
    return ProtectionCounts(available=True, **counts)


def _with_release(session: Session, facts: Mds2Facts, release: Release) -> Mds2Facts:

    docs = list(session.scalars(select(SbomDocument).where(SbomDocument.release_id == release.id)))
    lifecycle = session.get(ReleaseLifecycleRow, release.id)
    active = select(func.count()).select_from(Finding).where(Finding.release_id == release.id, Finding.active)
    advisories = sorted(
        {
            a.tracking_id
            for a in session.scalars(select(PublishedAdvisory).order_by(PublishedAdvisory.tracking_id))
            if release.id in (a.release_ids or [])
        }
    )
    return replace(
        facts,
        release_status=release.status,
        release_counter=release.release_counter,
        target_sha256=release.target_sha256,
        notes_en=bool(release.notes_en.strip()),
        notes_ja=bool(release.notes_ja.strip()),
        rollback_supported=release.rollback_supported,
        fixed_vulnerabilities=len(release.fixed_vulnerabilities or []),
        expected_downtime_minutes=release.expected_downtime_minutes,
        eol=release.eol_date.isoformat() if release.eol_date else None,
        eos=release.eos_date.isoformat() if release.eos_date else None,
        lifecycle_recorded=lifecycle is not None,
        legacy_plan=bool(lifecycle and lifecycle.legacy_plan),
        notice_date=lifecycle.notice_date.isoformat() if lifecycle and lifecycle.notice_date else None,
        sbom_documents=len(docs),
        sbom_supplier_documents=sum(1 for d in docs if d.from_supplier),
        sbom_components=sum(d.component_count for d in docs),
        sbom_formats=tuple(sorted({d.format for d in docs})),
        findings_active=session.scalar(active) or 0,
        findings_triaged=session.scalar(active.where(Finding.triage_status != "under_investigation")) or 0,
        advisories=tuple(advisories),
        campaigns=session.scalar(select(func.count()).select_from(Campaign).where(Campaign.release_id == release.id))
        or 0,
    )


# -- the workbook ------------------------------------------------------------------------------------------


def _cover_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    summary = doc.get("summary", {})
    return [
        ("Form", f"{doc.get('form', FORM)} ({doc.get('form_edition', FORM_EDITION)} edition)"),
        ("Manufacturer", str(doc.get("manufacturer") or "")),
        ("Product", str(doc.get("product") or "")),
        ("Model", ", ".join(doc.get("models") or [])),
        ("Hardware IDs", ", ".join(doc.get("hardware_ids") or [])),
        ("Version", str(doc.get("version") or "not recorded")),
        ("Date", str(doc.get("generated_at") or "")),
        ("Questions", str(summary.get("questions", ""))),
        ("Answered from medsec data", str(summary.get("answered", ""))),
        ("Manual answers needed", str(summary.get("manual", ""))),
    ]


def _note_cell(item: dict[str, Any]) -> str:
    evidence: Sequence[str] = item.get("evidence") or ()
    parts = [str(item.get("note") or "")]
    parts.extend(f"Evidence: {e}" for e in evidence)
    return "\n".join(p for p in parts if p)


def mds2_to_xlsx(doc: dict[str, Any]) -> bytes:
    """A workbook: a cover sheet (manufacturer, model, version, date) and the form with one row per question.

    Manual items show "Manual answer needed" in the answer column on a highlighted row.
    """

    book = Workbook()
    cover = book.active
    assert cover is not None
    cover.title = "Cover"
    cover.append(("Manufacturer Disclosure Statement for Medical Device Security",))
    cover["A1"].font = Font(bold=True, size=14)
    for key, value in _cover_rows(doc):
        cover.append((key, value))
    cover.column_dimensions["A"].width = 28
    cover.column_dimensions["B"].width = 70

    sheet = book.create_sheet("MDS2")
    sheet.append(XLSX_COLUMNS)
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    manual_fill = PatternFill("solid", fgColor="FFF2CC")
    for item in doc.get("items", []):
        answer = item.get("answer") or MANUAL
        sheet.append((item.get("section_name", ""), item.get("id", ""), item.get("question", ""), answer,
                      _note_cell(item)))  # fmt: skip
        if item.get("manual"):
            for cell in sheet[sheet.max_row]:
                cell.fill = manual_fill
    for letter, width in zip("ABCDE", (34, 11, 60, 22, 80), strict=True):
        sheet.column_dimensions[letter].width = width
    for row in sheet.iter_rows(min_row=2):
        for cell in row:
            cell.alignment = Alignment(wrap_text=True, vertical="top")
    sheet.freeze_panes = "A2"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
