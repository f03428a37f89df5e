"""CISA Known Exploited Vulnerabilities catalog (JSON, ``known_exploited_vulnerabilities_schema.json``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path

from medsec.vulns.errors import FeedFormatError, FeedRecordError
from medsec.vulns.feeds.osv import _Fields
from medsec.vulns.feeds.source_files import handle_record_error, read_bounded
from medsec.vulns.model import KevCatalog, KevEntry, Source


def _date(f: _Fields, text: str, path: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise f.error(path, f"is not a YYYY-MM-DD date: {text!r}") from None


def parse_kev_entry(data: object, *, file: str) -> KevEntry:
    cve_id = data.get("cveID") if isinstance(data, Mapping) else None
    f = _Fields(file, cve_id if isinstance(cve_id, str) else None)
    item = f.obj(data, "vulnerability")
    due = f.opt_text(item, "dueDate", "dueDate")
    return KevEntry(
        cve_id=f.text(item, "cveID", "cveID"),
        vendor_project=f.text(item, "vendorProject", "vendorProject"),
        product=f.text(item, "product", "product"),
        vulnerability_name=f.text(item, "vulnerabilityName", "vulnerabilityName"),
        date_added=_date(f, f.text(item, "dateAdded", "dateAdded"), "dateAdded"),
        short_description=f.text(item, "shortDescription", "shortDescription"),
        required_action=f.text(item, "requiredAction", "requiredAction"),
        due_date=_date(f, due, "dueDate") if due else None,
        known_ransomware_campaign_use=f.opt_text(item, "knownRansomwareCampaignUse", "knownRansomwareCampaignUse"),
        notes=f.opt_text(item, "notes", "notes"),
        cwes=f.texts(item, "cwes", "cwes"),
    )


def read_kev(path: Path, *, errors: list[FeedRecordError] | None = None, fetched: datetime | None = None) -> KevCatalog:
    data = read_bounded(path)
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise FeedFormatError(path.name, f"is not JSON: {e}") from e
    if not isinstance(doc, Mapping) or not isinstance(doc.get("vulnerabilities"), list):
        raise FeedFormatError(path.name, "has no vulnerabilities[] list")
    entries = []
    for i, raw in enumerate(doc["vulnerabilities"]):
        try:
            entries.append(parse_kev_entry(raw, file=path.name))
        except FeedRecordError as e:
            handle_record_error(FeedRecordError(e.file, e.record, f"vulnerabilities[{i}].{e.field}", e.problem), errors)
    return KevCatalog(
        catalog_version=str(doc.get("catalogVersion", "")),
        date_released=str(doc.get("dateReleased", "")),
        entries=tuple(entries),
        source=Source("kev", str(path), fetched, hashlib.sha256(data).hexdigest()),
    )
