"""OSV records (schema 1.x): single JSON or YAML files, folders of them, and OSV.dev's per-ecosystem ``all.zip``.

The PyPA advisory database stores OSV as YAML. It is loaded with a resolver that keeps every scalar a string:
PyYAML would otherwise turn ``modified`` into a ``datetime`` (which then fails the schema's ``Z`` pattern when
written back) and an unquoted version such as ``1.10`` into the float ``1.1``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from medsec.vulns.errors import FeedRecordError, FeedTransportError
from medsec.vulns.feeds.source_files import MAX_RECORD_BYTES, handle_record_error, read_bounded, sha256_file
from medsec.vulns.model import (
    Advisory,
    AdvisoryId,
    Affected,
    AffectedPackage,
    AffectedRange,
    EventKind,
    RangeEvent,
    RangeType,
    Reference,
    Severity,
    Source,
)

_RECORD_SUFFIXES = (".json", ".yaml", ".yml")


class _StringLoader(yaml.SafeLoader):
    """SafeLoader without the int, float and timestamp resolvers: those scalars stay text."""


_StringLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag.rsplit(":", 1)[-1] not in {"int", "float", "timestamp"}]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _Fields:
    """Typed access to one record's fields; every failure names the file, record and field path."""

    def __init__(self, file: str, record: str | None) -> None:
        self.file = file
        self.record = record

    def error(self, path: str, problem: str) -> FeedRecordError:
        return FeedRecordError(self.file, self.record, path, problem)

    def obj(self, value: object, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(path, f"must be an object, not {type(value).__name__}")
        return value

    def opt_obj(self, parent: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        value = parent.get(key)
        return {} if value is None else self.obj(value, path)

    def text(self, parent: Mapping[str, Any], key: str, path: str) -> str:
        if key not in parent or parent[key] is None:
            raise self.error(path, "missing")
        value = parent[key]
        if not isinstance(value, str):
            raise self.error(path, f"must be a string, not {type(value).__name__}")
        return value

    def opt_text(self, parent: Mapping[str, Any], key: str, path: str) -> str | None:
        return None if parent.get(key) is None else self.text(parent, key, path)

    def items(self, parent: Mapping[str, Any], key: str, path: str) -> list[Any]:
        value = parent.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(path, f"must be a list, not {type(value).__name__}")
        return value

    def texts(self, parent: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
        values = self.items(parent, key, path)
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise self.error(f"{path}[{i}]", f"must be a string, not {type(v).__name__}")
        return tuple(values)


def _severity(f: _Fields, parent: Mapping[str, Any], path: str) -> tuple[Severity, ...]:
    out = []
    for i, raw in enumerate(f.items(parent, "severity", path)):
        item = f.obj(raw, f"{path}[{i}]")
        out.append(
            Severity(type=f.text(item, "type", f"{path}[{i}].type"), score=f.text(item, "score", f"{path}[{i}].score"))
        )
    return tuple(out)


def _range(f: _Fields, raw: object, path: str) -> AffectedRange:
    item = f.obj(raw, path)
    type_text = f.text(item, "type", f"{path}.type")
    try:
        range_type = RangeType(type_text)
    except ValueError:
        raise f.error(f"{path}.type", f"unknown range type {type_text!r}") from None
    events = []
    for j, raw_event in enumerate(f.items(item, "events", f"{path}.events")):
        epath = f"{path}.events[{j}]"
        event = f.obj(raw_event, epath)
        # OSV schema: ranges[].events[]: exactly one of introduced, fixed, last_affected, limit.
        kinds = [k for k in EventKind if k.value in event]
        if len(kinds) != 1:
            raise f.error(epath, "must hold exactly one of introduced, fixed, last_affected, limit")
        events.append(RangeEvent(kinds[0], f.text(event, kinds[0].value, f"{epath}.{kinds[0].value}")))
    if not any(e.kind is EventKind.INTRODUCED for e in events):
        raise f.error(f"{path}.events", "has no introduced event")
    repo = f.opt_text(item, "repo", f"{path}.repo")
    if range_type is RangeType.GIT and not repo:
        raise f.error(f"{path}.repo", "missing (required for GIT ranges)")
    return AffectedRange(range_type, tuple(events), repo)


def _affected(f: _Fields, raw: object, path: str) -> Affected:
    item = f.obj(raw, path)
    package = None
    if item.get("package") is not None:
        pkg = f.obj(item["package"], f"{path}.package")
        package = AffectedPackage(
            ecosystem=f.text(pkg, "ecosystem", f"{path}.package.ecosystem"),
            name=f.text(pkg, "name", f"{path}.package.name"),
            purl=f.opt_text(pkg, "purl", f"{path}.package.purl"),
        )
    return Affected(
        package=package,
        ranges=tuple(
            _range(f, r, f"{path}.ranges[{k}]") for k, r in enumerate(f.items(item, "ranges", f"{path}.ranges"))
        ),
        versions=f.texts(item, "versions", f"{path}.versions"),
        severity=_severity(f, item, f"{path}.severity"),
        ecosystem_specific=f.opt_obj(item, "ecosystem_specific", f"{path}.ecosystem_specific"),
        database_specific=f.opt_obj(item, "database_specific", f"{path}.database_specific"),
    )


def parse_osv_record(data: object, *, file: str, source: Source | None = None) -> Advisory:
    """Check and convert one decoded OSV record; raises :class:`FeedRecordError` naming the bad field."""
    record_id = data.get("id") if isinstance(data, Mapping) else None
    f = _Fields(file, record_id if isinstance(record_id, str) else None)
    rec = f.obj(data, "record")
    references = []
    for i, raw in enumerate(f.items(rec, "references", "references")):
        ref = f.obj(raw, f"references[{i}]")
        references.append(
            Reference(f.text(ref, "type", f"references[{i}].type"), f.text(ref, "url", f"references[{i}].url"))
        )
    return Advisory(
        id=AdvisoryId(f.text(rec, "id", "id")),
        modified=f.text(rec, "modified", "modified"),
        published=f.opt_text(rec, "published", "published"),
        withdrawn=f.opt_text(rec, "withdrawn", "withdrawn"),
        aliases=f.texts(rec, "aliases", "aliases"),
        upstream=f.texts(rec, "upstream", "upstream"),
        related=f.texts(rec, "related", "related"),
        summary=f.opt_text(rec, "summary", "summary"),
        details=f.opt_text(rec, "details", "details"),
        severity=_severity(f, rec, "severity"),
        affected=tuple(_affected(f, a, f"affected[{i}]") for i, a in enumerate(f.items(rec, "affected", "affected"))),
        references=tuple(references),
        database_specific=f.opt_obj(rec, "database_specific", "database_specific"),
        schema_version=f.opt_text(rec, "schema_version", "schema_version"),
        source=source,
    )


def _decode(data: bytes, name: str) -> list[object]:
    """The records in one file: a record, a list of records, or an OSV API ``{"vulns": [...]}`` answer."""
    try:
        if name.endswith((".yaml", ".yml")):
            loaded = yaml.load(data.decode("utf-8"), Loader=_StringLoader)  # noqa: S506 - safe loader subclass
        else:
            loaded = json.loads(data)
    except (ValueError, yaml.YAMLError) as e:
        raise FeedRecordError(name, None, "", f"cannot be decoded: {e}") from e
    if isinstance(loaded, Mapping) and "id" not in loaded and isinstance(loaded.get("vulns"), list):
        return list(loaded["vulns"])
    if isinstance(loaded, list):
        return loaded
    return [loaded]


def _records(data: bytes, name: str, source: Source, errors: list[FeedRecordError] | None) -> Iterator[Advisory]:
    try:
        records = _decode(data, name)
    except FeedRecordError as e:
        handle_record_error(e, errors)
        return
    for record in records:
        try:
            yield parse_osv_record(record, file=name, source=source)
        except FeedRecordError as e:
            handle_record_error(e, errors)


def read_osv_file(
    path: Path, *, errors: list[FeedRecordError] | None = None, fetched: datetime | None = None
) -> Iterator[Advisory]:
    """Advisories in one ``.json``/``.yaml`` file. ``errors``: see :mod:`medsec.vulns.feeds`."""
    data = read_bounded(path, MAX_RECORD_BYTES)
    source = Source("osv", str(path), fetched, hashlib.sha256(data).hexdigest())
    yield from _records(data, path.name, source, errors)


def read_osv_zip(
    path: Path, *, errors: list[FeedRecordError] | None = None, fetched: datetime | None = None
) -> Iterator[Advisory]:
    """Advisories in an OSV.dev ``<ecosystem>/all.zip``, one member at a time, never extracted to disk."""
    archive_digest = sha256_file(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise FeedTransportError(f"{path}: not a readable zip archive: {e}") from e
    with archive:
        for info in archive.infolist():
            if info.is_dir() or not info.filename.endswith(_RECORD_SUFFIXES):
                continue
            label = f"{path.name}!/{info.filename}"
            if info.file_size > MAX_RECORD_BYTES:
                handle_record_error(
                    FeedRecordError(label, None, "", f"is {info.file_size} bytes, over the record limit"), errors
                )
                continue
            try:
                with archive.open(info) as member:
                    data = member.read(MAX_RECORD_BYTES + 1)
            except (OSError, zipfile.BadZipFile, EOFError) as e:
                handle_record_error(FeedRecordError(label, None, "", f"cannot be read from the archive: {e}"), errors)
                continue
            if len(data) > MAX_RECORD_BYTES:
                handle_record_error(FeedRecordError(label, None, "", "inflates beyond the record limit"), errors)
                continue
            source = Source("osv", f"{path}!/{info.filename}", fetched, archive_digest)
            yield from _records(data, label, source, errors)


def read_osv_directory(
    path: Path, *, errors: list[FeedRecordError] | None = None, fetched: datetime | None = None
) -> Iterator[Advisory]:
    """Advisories in every record file and ``.zip`` below ``path``, in sorted path order."""
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        if child.suffix == ".zip":
            yield from read_osv_zip(child, errors=errors, fetched=fetched)
        elif child.name.endswith(_RECORD_SUFFIXES):
            yield from read_osv_file(child, errors=errors, fetched=fetched)


def read_osv(
    path: Path, *, errors: list[FeedRecordError] | None = None, fetched: datetime | None = None
) -> Iterator[Advisory]:
    """Advisories from a record file, an ``all.zip`` or a folder."""
    if path.is_dir():
        return read_osv_directory(path, errors=errors, fetched=fetched)
    if path.suffix == ".zip":
        return read_osv_zip(path, errors=errors, fetched=fetched)
    return read_osv_file(path, errors=errors, fetched=fetched)
