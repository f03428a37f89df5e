"""NVD CVE API 2.0 JSON: ``/cves/2.0`` pages, single-CVE answers (``vulnerabilities[].cve``) and bare
``{"cve": {...}}`` items. NVD API 2.0 gives no streaming form; a page is read whole (bounded)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from medsec.vulns.errors import FeedFormatError, FeedRecordError
from medsec.vulns.feeds.osv import _Fields
from medsec.vulns.feeds.source_files import handle_record_error, read_bounded
from medsec.vulns.model import CpeConfiguration, CpeMatch, CpeNode, CvssMetric, NvdCve, NvdPage, Operator, Source

# NVD 2.0 "metrics" keys and the CVSS version each holds.
_METRIC_KEYS = {"cvssMetricV40": "4.0", "cvssMetricV31": "3.1", "cvssMetricV30": "3.0", "cvssMetricV2": "2.0"}


def _operator(f: _Fields, parent: Mapping[str, Any], path: str) -> Operator:
    text = f.opt_text(parent, "operator", path) or "OR"
    try:
        return Operator(text)
    except ValueError:
        raise f.error(path, f"unknown operator {text!r}") from None


def _flag(f: _Fields, parent: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = parent.get(key, default)
    if not isinstance(value, bool):
        raise f.error(path, "must be true or false")
    return value


def _configuration(f: _Fields, raw: object, path: str) -> CpeConfiguration:
    conf = f.obj(raw, path)
    nodes = []
    for i, raw_node in enumerate(f.items(conf, "nodes", f"{path}.nodes")):
        npath = f"{path}.nodes[{i}]"
        node = f.obj(raw_node, npath)
        matches = []
        for j, raw_match in enumerate(f.items(node, "cpeMatch", f"{npath}.cpeMatch")):
            mpath = f"{npath}.cpeMatch[{j}]"
            m = f.obj(raw_match, mpath)
            matches.append(
                CpeMatch(
                    criteria=f.text(m, "criteria", f"{mpath}.criteria"),
                    vulnerable=_flag(f, m, "vulnerable", f"{mpath}.vulnerable", True),
                    version_start_including=f.opt_text(m, "versionStartIncluding", f"{mpath}.versionStartIncluding"),
                    version_start_excluding=f.opt_text(m, "versionStartExcluding", f"{mpath}.versionStartExcluding"),
                    version_end_including=f.opt_text(m, "versionEndIncluding", f"{mpath}.versionEndIncluding"),
                    version_end_excluding=f.opt_text(m, "versionEndExcluding", f"{mpath}.versionEndExcluding"),
                    match_criteria_id=f.opt_text(m, "matchCriteriaId", f"{mpath}.matchCriteriaId"),
                )
            )
        nodes.append(
            CpeNode(
                operator=_operator(f, node, f"{npath}.operator"),
                matches=tuple(matches),
                negate=_flag(f, node, "negate", f"{npath}.negate", False),
            )
        )
    return CpeConfiguration(
        nodes=tuple(nodes),
        operator=_operator(f, conf, f"{path}.operator"),
        negate=_flag(f, conf, "negate", f"{path}.negate", False),
    )


def _metrics(f: _Fields, cve: Mapping[str, Any]) -> tuple[CvssMetric, ...]:
    metrics = f.opt_obj(cve, "metrics", "metrics")
    out = []
    for key, version in _METRIC_KEYS.items():
        for i, raw in enumerate(f.items(metrics, key, f"metrics.{key}")):
            path = f"metrics.{key}[{i}]"
            item = f.obj(raw, path)
            data = f.obj(item.get("cvssData"), f"{path}.cvssData")
            score = data.get("baseScore")
            if isinstance(score, bool) or not isinstance(score, int | float):
                raise f.error(f"{path}.cvssData.baseScore", "missing or not a number")
            out.append(
                CvssMetric(
                    version=version,
                    vector=f.text(data, "vectorString", f"{path}.cvssData.vectorString"),
                    base_score=float(score),
                    source=f.opt_text(item, "source", f"{path}.source"),
                    type=f.opt_text(item, "type", f"{path}.type"),
                )
            )
    return tuple(out)


def parse_nvd_cve(data: object, *, file: str, source: Source | None = None) -> NvdCve:
    """One ``cve`` object of the CVE API 2.0; raises :class:`FeedRecordError` naming the bad field."""
    cve_id = data.get("id") if isinstance(data, Mapping) else None
    f = _Fields(file, cve_id if isinstance(cve_id, str) else None)
    cve = f.obj(data, "cve")
    description = None
    for i, raw in enumerate(f.items(cve, "descriptions", "descriptions")):
        d = f.obj(raw, f"descriptions[{i}]")
        if d.get("lang") == "en":
            description = f.text(d, "value", f"descriptions[{i}].value")
            break
    weaknesses: list[str] = []
    for i, raw in enumerate(f.items(cve, "weaknesses", "weaknesses")):
        w = f.obj(raw, f"weaknesses[{i}]")
        for j, raw_d in enumerate(f.items(w, "description", f"weaknesses[{i}].description")):
            text = f.text(
                f.obj(raw_d, f"weaknesses[{i}].description[{j}]"), "value", f"weaknesses[{i}].description[{j}].value"
            )
            if text not in weaknesses:
                weaknesses.append(text)
    references = tuple(
        f.text(f.obj(r, f"references[{i}]"), "url", f"references[{i}].url")
        for i, r in enumerate(f.items(cve, "references", "references"))
    )
    return NvdCve(
        id=f.text(cve, "id", "id"),
        published=f.opt_text(cve, "published", "published"),
        last_modified=f.opt_text(cve, "lastModified", "lastModified"),
        status=f.opt_text(cve, "vulnStatus", "vulnStatus"),
        description=description,
        metrics=_metrics(f, cve),
        configurations=tuple(
            _configuration(f, c, f"configurations[{i}]")
            for i, c in enumerate(f.items(cve, "configurations", "configurations"))
        ),
        references=references,
        weaknesses=tuple(weaknesses),
        cisa_exploit_add=f.opt_text(cve, "cisaExploitAdd", "cisaExploitAdd"),
        source=source,
    )


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def read_nvd(path: Path, *, errors: list[FeedRecordError] | None = None, fetched: datetime | None = None) -> NvdPage:
    """A CVE API 2.0 response file (a page or one CVE) or a bare ``{"cve": {...}}`` item."""
    data = read_bounded(path)
    source = Source("nvd", str(path), fetched, hashlib.sha256(data).hexdigest())
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise FeedFormatError(path.name, f"is not JSON: {e}") from e
    if not isinstance(doc, Mapping):
        raise FeedFormatError(path.name, "top level must be an object")
    if "cve" in doc and "vulnerabilities" not in doc:
        items: list[object] = [doc]
    elif isinstance(doc.get("vulnerabilities"), list):
        items = doc["vulnerabilities"]
    else:
        raise FeedFormatError(path.name, "has neither vulnerabilities[] nor cve")
    cves = []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, Mapping) or "cve" not in item:
                raise FeedRecordError(path.name, None, f"vulnerabilities[{i}].cve", "missing")
            cves.append(parse_nvd_cve(item["cve"], file=path.name, source=source))
        except FeedRecordError as e:
            handle_record_error(e, errors)
    return NvdPage(
        total_results=_int(doc.get("totalResults"), len(items)),
        start_index=_int(doc.get("startIndex"), 0),
        results_per_page=_int(doc.get("resultsPerPage"), len(items)),
        timestamp=doc.get("timestamp") if isinstance(doc.get("timestamp"), str) else None,
        cves=tuple(cves),
    )
