"""Vulnerability feeds into the database (SM-3): OSV, NVD 2.0, KEV, EPSS, endoflife.date, offline bundles.

Every import is one transaction: a malformed record anywhere rolls back the whole import and the error names
the file, the record and the field (``FeedRecordError.diagnostics()``). OSV and NVD records are kept as
published JSON; an import only replaces a record whose ``modified`` moved forward, and returns those records
as the delta that :mod:`medsec.server.services.findings` re-matches incrementally.

Offline bundle (air-gapped sites): a tar holding ``manifest.json``, ``manifest.sig`` (Ed25519 over the
manifest bytes, base64) and the feed files the manifest lists with their SHA-256. The signature and every
digest are checked before any file is read as a feed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import SignatureError, UserInputError
from medsec.lifecycle.endoflife import parse_product
from medsec.server.audit import ServerAuditLog
from medsec.server.models_vulns import EpssRecord, FeedImport, KevRecord, LifecycleProduct, VulnRecord
from medsec.vulns.aliases import build_alias_groups
from medsec.vulns.errors import FeedFormatError, FeedTransportError, VulnError
from medsec.vulns.feeds.epss import read_epss
from medsec.vulns.feeds.kev import read_kev
from medsec.vulns.feeds.nvd import parse_nvd_cve, read_nvd
from medsec.vulns.feeds.osv import parse_osv_record, read_osv
from medsec.vulns.feeds.source_files import sha256_file
from medsec.vulns.model import Advisory, NvdCve

logger = logging.getLogger(__name__)

FEEDS = ("osv", "nvd", "kev", "epss", "endoflife")
BUNDLE_MANIFEST = "manifest.json"
BUNDLE_SIGNATURE = "manifest.sig"
MAX_BUNDLE_MEMBER = 1024 * 1024 * 1024
Progress = Callable[[int], None]


class FeedBundleError(VulnError):
    """An offline feed bundle that is unsigned, signed by an unknown key, or altered."""


@dataclass
class ImportResult:
    feed: str
    import_id: int
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    delta: list[str] = field(default_factory=list)  # OSV ids that are new or changed

    def to_dict(self) -> dict[str, Any]:
        return {
            "feed": self.feed,
            "import_id": self.import_id,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "changed_ids": len(self.delta),
        }


# -- encoding back to the published formats (so stored records re-parse with the same reader) -------------


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v not in (None, (), [], {})}


def osv_to_json(a: Advisory) -> dict[str, Any]:
    affected = []
    for aff in a.affected:
        entry: dict[str, Any] = {}
        if aff.package is not None:
            entry["package"] = _drop_none(
                {"ecosystem": aff.package.ecosystem, "name": aff.package.name, "purl": aff.package.purl}
            )
        if aff.ranges:
            entry["ranges"] = [
                _drop_none(
                    {
                        "type": r.type.value,
                        "repo": r.repo,
                        "events": [{e.kind.value: e.version} for e in r.events],
                    }
                )
                for r in aff.ranges
            ]
        if aff.versions:
            entry["versions"] = list(aff.versions)
        if aff.severity:
            entry["severity"] = [{"type": s.type, "score": s.score} for s in aff.severity]
        if aff.ecosystem_specific:
            entry["ecosystem_specific"] = dict(aff.ecosystem_specific)
        if aff.database_specific:
            entry["database_specific"] = dict(aff.database_specific)
        affected.append(entry)
    return _drop_none(
        {
            "schema_version": a.schema_version,
            "id": a.id,
            "modified": a.modified,
            "published": a.published,
            "withdrawn": a.withdrawn,
            "aliases": list(a.aliases),
            "upstream": list(a.upstream),
            "related": list(a.related),
            "summary": a.summary,
            "details": a.details,
            "severity": [{"type": s.type, "score": s.score} for s in a.severity],
            "affected": affected,
            "references": [{"type": r.type, "url": r.url} for r in a.references],
            "database_specific": dict(a.database_specific),
        }
    )


_METRIC_KEY = {"4.0": "cvssMetricV40", "3.1": "cvssMetricV31", "3.0": "cvssMetricV30", "2.0": "cvssMetricV2"}


def nvd_to_json(c: NvdCve) -> dict[str, Any]:
    metrics: dict[str, list[dict[str, Any]]] = {}
    for m in c.metrics:
        metrics.setdefault(_METRIC_KEY[m.version], []).append(
            _drop_none(
                {
                    "source": m.source,
                    "type": m.type,
                    "cvssData": {"version": m.version, "vectorString": m.vector, "baseScore": m.base_score},
                }
            )
        )
    configurations = [
        {
            "operator": conf.operator.value,
            "negate": conf.negate,
            "nodes": [
                {
                    "operator": node.operator.value,
                    "negate": node.negate,
                    "cpeMatch": [
                        _drop_none(
                            {
                                "vulnerable": m.vulnerable,
                                "criteria": m.criteria,
                                "versionStartIncluding": m.version_start_including,
                                "versionStartExcluding": m.version_start_excluding,
                                "versionEndIncluding": m.version_end_including,
                                "versionEndExcluding": m.version_end_excluding,
                                "matchCriteriaId": m.match_criteria_id,
                            }
                        )
                        for m in node.matches
                    ],
                }
                for node in conf.nodes
            ],
        }
        for conf in c.configurations
    ]
    return _drop_none(
        {
            "id": c.id,
            "published": c.published,
            "lastModified": c.last_modified,
            "vulnStatus": c.status,
            "descriptions": [{"lang": "en", "value": c.description}] if c.description else [],
            "metrics": metrics,
            "configurations": configurations,
            "references": [{"url": u} for u in c.references],
            "weaknesses": [{"description": [{"lang": "en", "value": w} for w in c.weaknesses]}] if c.weaknesses else [],
            "cisaExploitAdd": c.cisa_exploit_add,
        }
    )


def stored_advisories(session: Session) -> list[Advisory]:
    rows = session.execute(select(VulnRecord.raw, VulnRecord.location).where(VulnRecord.source == "osv"))
    return [parse_osv_record(json.loads(raw), file=loc) for raw, loc in rows]


def stored_nvd(session: Session) -> list[NvdCve]:
    rows = session.execute(select(VulnRecord.raw, VulnRecord.location).where(VulnRecord.source == "nvd"))
    return [parse_nvd_cve(json.loads(raw), file=loc) for raw, loc in rows]


# -- imports -------------------------------------------------------------------------------------------------


def _start(
    session: Session, feed: str, location: str, sha256: str | None, actor: str, bundle: str | None
) -> FeedImport:
    row = FeedImport(feed=feed, location=location, sha256=sha256, actor=actor, bundle_sha256=bundle)
    session.add(row)
    session.flush()
    return row


def _finish(session: Session, audit: ServerAuditLog, row: FeedImport, result: ImportResult, actor: str) -> None:
    row.records_added, row.records_updated, row.records_unchanged = result.added, result.updated, result.unchanged
    audit.append(
        session,
        "feed.imported",
        actor=actor,
        organization_id=None,
        details={"location": row.location, "sha256": row.sha256, "bundle": row.bundle_sha256, **result.to_dict()},
    )
    session.flush()


def _is_newer(new: str | None, old: str | None) -> bool:
    if old is None:
        return True
    if new is None:
        return False
    try:
        return datetime.fromisoformat(new.replace("Z", "+00:00")) > datetime.fromisoformat(old.replace("Z", "+00:00"))
    except ValueError:
        return new > old


def _upsert_records(
    session: Session,
    source: str,
    items: Iterable[tuple[str, str | None, bool, list[str], str | None, dict[str, Any], str, str | None]],
    result: ImportResult,
    import_id: int,
    progress: Progress | None,
) -> None:
    existing = {r.record_id: r for r in session.scalars(select(VulnRecord).where(VulnRecord.source == source))}
    now = datetime.now(UTC)
    for record_id, modified, withdrawn, aliases, summary, raw, location, sha in items:
        row = existing.get(record_id)
        if row is None:
            row = VulnRecord(
                source=source,
                record_id=record_id,
                modified=modified,
                withdrawn=withdrawn,
                alias_group=record_id,
                aliases=aliases,
                summary=summary,
                raw=json.dumps(raw, ensure_ascii=False, sort_keys=True),
                location=location,
                sha256=sha,
                import_id=import_id,
                updated_at=now,
            )
            session.add(row)
            existing[record_id] = row
            result.added += 1
            result.delta.append(record_id)
        elif _is_newer(modified, row.modified):
            row.modified, row.withdrawn, row.aliases, row.summary = modified, withdrawn, aliases, summary
            row.raw = json.dumps(raw, ensure_ascii=False, sort_keys=True)
            row.location, row.sha256, row.import_id, row.updated_at = location, sha, import_id, now
            result.updated += 1
            result.delta.append(record_id)
        else:
            result.unchanged += 1
        if progress is not None:
            progress(1)
    session.flush()


def refresh_alias_groups(session: Session) -> None:
    """Recompute the canonical alias group of every record over the whole stored feed."""
    advisories = stored_advisories(session)
    nvd_ids = list(session.scalars(select(VulnRecord.record_id).where(VulnRecord.source == "nvd")))
    groups = build_alias_groups(advisories, nvd_ids)
    for row in session.scalars(select(VulnRecord)):
        canonical = groups.canonical(row.record_id)
        if row.alias_group != canonical:
            row.alias_group = canonical
    session.flush()


def import_osv(
    session: Session,
    audit: ServerAuditLog,
    actor: str,
    path: Path,
    *,
    bundle: str | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    """OSV records from a file, a folder or an ``all.zip``; raises on the first malformed record."""
    digest = sha256_file(path) if path.is_file() else None
    row = _start(session, "osv", str(path), digest, actor, bundle)
    result = ImportResult("osv", row.id)
    fetched = datetime.now(UTC)

    def items() -> Iterator[tuple[str, str | None, bool, list[str], str | None, dict[str, Any], str, str | None]]:
        for a in read_osv(path, fetched=fetched):
            src = a.source
            yield (
                a.id,
                a.modified,
                a.is_withdrawn,
                list(a.aliases),
                a.summary,
                osv_to_json(a),
                src.location if src else str(path),
                src.sha256 if src else None,
            )

    _upsert_records(session, "osv", items(), result, row.id, progress)
    refresh_alias_groups(session)
    _finish(session, audit, row, result, actor)
    return result


def import_nvd(
    session: Session,
    audit: ServerAuditLog,
    actor: str,
    path: Path,
    *,
    bundle: str | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    files = sorted(p for p in path.rglob("*.json")) if path.is_dir() else [path]
    row = _start(session, "nvd", str(path), sha256_file(path) if path.is_file() else None, actor, bundle)
    result = ImportResult("nvd", row.id)

    def items() -> Iterator[tuple[str, str | None, bool, list[str], str | None, dict[str, Any], str, str | None]]:
        for f in files:
            page = read_nvd(f)
            for c in page.cves:
                yield (
                    c.id,
                    c.last_modified,
                    c.status == "Rejected",
                    [],
                    c.description,
                    nvd_to_json(c),
                    str(f),
                    c.source.sha256 if c.source else None,
                )

    _upsert_records(session, "nvd", items(), result, row.id, progress)
    refresh_alias_groups(session)
    _finish(session, audit, row, result, actor)
    return result


_CveRow = TypeVar("_CveRow", KevRecord, EpssRecord)


def _upsert_by_cve(
    session: Session,
    model: type[_CveRow],
    rows: Mapping[str, dict[str, Any]],
    result: ImportResult,
) -> None:
    """Insert or update one row per CVE id, counting added, updated and unchanged rows.

    ``import_id`` always moves to the newest import (it says which import last confirmed
    the row); only a change of another field counts as an update.
    """
    existing = {r.cve_id: r for r in session.scalars(select(model))}
    for cve_id, values in rows.items():
        old = existing.get(cve_id)
        if old is None:
            session.add(model(cve_id=cve_id, import_id=result.import_id, **values))
            result.added += 1
            continue
        if any(getattr(old, k) != v for k, v in values.items()):
            for k, v in values.items():
                setattr(old, k, v)
            result.updated += 1
        else:
            result.unchanged += 1
        old.import_id = result.import_id


def import_kev(
    session: Session, audit: ServerAuditLog, actor: str, path: Path, *, bundle: str | None = None
) -> ImportResult:
    catalog = read_kev(path)
    row = _start(session, "kev", str(path), catalog.source.sha256 if catalog.source else None, actor, bundle)
    result = ImportResult("kev", row.id)
    values = {
        e.cve_id: {"name": e.vulnerability_name[:500], "date_added": e.date_added, "due_date": e.due_date}
        for e in catalog.entries
    }
    _upsert_by_cve(session, KevRecord, values, result)
    _finish(session, audit, row, result, actor)
    return result


def import_epss(
    session: Session, audit: ServerAuditLog, actor: str, path: Path, *, bundle: str | None = None
) -> ImportResult:
    snapshot = read_epss(path)
    row = _start(session, "epss", str(path), snapshot.source.sha256 if snapshot.source else None, actor, bundle)
    result = ImportResult("epss", row.id)
    values = {
        s.cve_id: {"probability": s.probability, "percentile": s.percentile, "score_date": snapshot.score_date}
        for s in snapshot.scores
    }
    _upsert_by_cve(session, EpssRecord, values, result)
    _finish(session, audit, row, result, actor)
    return result


def import_endoflife(
    session: Session, audit: ServerAuditLog, actor: str, path: Path, *, bundle: str | None = None
) -> ImportResult:
    """endoflife.date product files (``products/<name>.md``): one file or a folder of them (SM-4)."""
    files = sorted(path.glob("*.md")) if path.is_dir() else [path]
    row = _start(session, "endoflife", str(path), None, actor, bundle)
    result = ImportResult("endoflife", row.id)
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise FeedTransportError(f"{f}: cannot read: {e}") from e
        product = parse_product(text, source=str(f))  # raises naming the file and field
        sha = hashlib.sha256(text.encode()).hexdigest()
        old = session.get(LifecycleProduct, product.product)
        if old is None:
            session.add(LifecycleProduct(product=product.product, text=text, sha256=sha, import_id=row.id))
            result.added += 1
        elif old.sha256 != sha:
            old.text, old.sha256, old.import_id = text, sha, row.id
            result.updated += 1
        else:
            result.unchanged += 1
    _finish(session, audit, row, result, actor)
    return result


def import_feed(
    session: Session,
    audit: ServerAuditLog,
    actor: str,
    feed: str,
    path: Path,
    *,
    bundle: str | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    if feed == "osv":
        return import_osv(session, audit, actor, path, bundle=bundle, progress=progress)
    if feed == "nvd":
        return import_nvd(session, audit, actor, path, bundle=bundle, progress=progress)
    if feed == "kev":
        return import_kev(session, audit, actor, path, bundle=bundle)
    if feed == "epss":
        return import_epss(session, audit, actor, path, bundle=bundle)
    if feed == "endoflife":
        return import_endoflife(session, audit, actor, path, bundle=bundle)
    raise UserInputError(f"unknown feed {feed!r}; one of {', '.join(FEEDS)}")


# -- offline bundles -----------------------------------------------------------------------------------------


def _safe_member(name: str) -> str:
    parts = Path(name).parts
    if not name or name.startswith("/") or ".." in parts or "\\" in name:
        raise FeedBundleError(f"bundle member {name!r} has an unsafe path")
    return name


def write_bundle(
    out: Path, files: list[tuple[str, Path]], key: SigningKey, *, now: datetime | None = None
) -> dict[str, Any]:
    """Pack ``(feed, path)`` files into a signed tar bundle (folders are packed file by file)."""
    entries: list[dict[str, Any]] = []
    members: list[tuple[str, Path]] = []
    for feed, path in files:
        if feed not in FEEDS:
            raise UserInputError(f"unknown feed {feed!r}; one of {', '.join(FEEDS)}")
        sources = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        base = path.name
        for src in sources:
            rel = base if src == path else f"{base}/{src.relative_to(path).as_posix()}"
            name = _safe_member(f"{feed}/{rel}")
            entries.append({"feed": feed, "path": name, "root": f"{feed}/{base}", "sha256": sha256_file(src)})
            members.append((name, src))
    manifest = {
        "format": "medsec-feed-bundle/1",
        "created": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": entries,
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    signature = base64.b64encode(key.sign(manifest_bytes)) + b"\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as tar:
        for name, data in ((BUNDLE_MANIFEST, manifest_bytes), (BUNDLE_SIGNATURE, signature)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, src in members:
            tar.add(src, arcname=name, recursive=False)
    return manifest


def verify_bundle(path: Path, trusted: list[VerifyKey], into: Path) -> dict[str, Any]:
    """Check the manifest signature and every file digest, extracting into ``into``; return the manifest."""
    if not trusted:
        raise FeedBundleError("no trusted bundle key configured (MEDSEC_FEED_BUNDLE_KEYS or --trust-key)")
    try:
        with tarfile.open(path, "r:") as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in (BUNDLE_MANIFEST, BUNDLE_SIGNATURE):
                if name not in members or not members[name].isfile():
                    raise FeedBundleError(f"{path.name}: {name} is missing")
            manifest_bytes = _read_member(tar, members[BUNDLE_MANIFEST])
            signature = base64.b64decode(_read_member(tar, members[BUNDLE_SIGNATURE]).strip(), validate=True)
            for key in trusted:
                try:
                    key.verify(signature, manifest_bytes)
                    break
                except SignatureError:
                    continue
            else:
                raise FeedBundleError(f"{path.name}: the manifest is not signed by a trusted bundle key")
            manifest: dict[str, Any] = json.loads(manifest_bytes)
            listed = {e["path"] for e in manifest["files"]}
            extra = set(members) - listed - {BUNDLE_MANIFEST, BUNDLE_SIGNATURE}
            if extra:
                raise FeedBundleError(f"{path.name}: files not in the signed manifest: {sorted(extra)[:3]}")
            for entry in manifest["files"]:
                name = _safe_member(entry["path"])
                member = members.get(name)
                if member is None or not member.isfile():
                    raise FeedBundleError(f"{path.name}: {name} is listed in the manifest but missing")
                data = _read_member(tar, member)
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise FeedBundleError(f"{path.name}: {name} does not match its SHA-256 in the signed manifest")
                target = into / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
    except (tarfile.TarError, OSError, ValueError, KeyError, TypeError) as e:
        raise FeedBundleError(f"{path}: not a readable feed bundle: {e}") from e
    return manifest


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_BUNDLE_MEMBER:
        raise FeedBundleError(f"bundle member {member.name} is over the size limit")
    f = tar.extractfile(member)
    if f is None:
        raise FeedBundleError(f"bundle member {member.name} is not a regular file")
    return f.read()


def import_bundle(
    session: Session,
    audit: ServerAuditLog,
    actor: str,
    path: Path,
    trusted: list[VerifyKey],
    *,
    progress: Progress | None = None,
) -> list[ImportResult]:
    """Verify a signed bundle, then import every feed in it inside the caller's one transaction."""
    bundle_sha = sha256_file(path)
    with tempfile.TemporaryDirectory(prefix="medsec-bundle-") as tmp:
        manifest = verify_bundle(path, trusted, Path(tmp))
        roots: dict[str, str] = {}
        for entry in manifest["files"]:
            roots.setdefault(entry["root"], entry["feed"])
        order = {f: i for i, f in enumerate(("endoflife", "nvd", "osv", "kev", "epss"))}
        results = []
        for root, feed in sorted(roots.items(), key=lambda item: (order[item[1]], item[0])):
            results.append(
                import_feed(session, audit, actor, feed, Path(tmp) / root, bundle=bundle_sha, progress=progress)
            )
    return results


# -- status ---------------------------------------------------------------------------------------------------


def feed_status(session: Session, stale_days: int, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Last import per feed, record counts, and whether the data is stale."""
    now = now or datetime.now(UTC)
    out = []
    counts = {
        "osv": session.scalar(select(func.count()).select_from(VulnRecord).where(VulnRecord.source == "osv")),
        "nvd": session.scalar(select(func.count()).select_from(VulnRecord).where(VulnRecord.source == "nvd")),
        "kev": session.scalar(select(func.count()).select_from(KevRecord)),
        "epss": session.scalar(select(func.count()).select_from(EpssRecord)),
        "endoflife": session.scalar(select(func.count()).select_from(LifecycleProduct)),
    }
    for feed in FEEDS:
        last = session.scalar(
            select(FeedImport).where(FeedImport.feed == feed).order_by(FeedImport.started_at.desc()).limit(1)
        )
        stale = last is None or now - last.started_at > timedelta(days=stale_days)
        out.append(
            {
                "feed": feed,
                "records": counts[feed] or 0,
                "last_import": last.started_at.isoformat() if last else None,
                "last_location": last.location if last else None,
                "stale": stale,
            }
        )
    return out


def stale_feeds(session: Session, stale_days: int) -> list[str]:
    return [s["feed"] for s in feed_status(session, stale_days) if s["stale"] and s["feed"] in ("osv", "nvd")]


def guess_feed(name: str) -> str:
    """The feed a sync entry belongs to, from its configured name (``osv-debian`` -> ``osv``)."""
    head = name.split("-", 1)[0]
    if head not in FEEDS:
        raise FeedFormatError(name, f"feed name must start with one of {', '.join(FEEDS)}")
    return head
